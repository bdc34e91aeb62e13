//! Publishes like events to RabbitMQ, many per message, and answers each
//! caller once the broker confirmed the message that carries its event.
//!
//! Like and Unlike hand their event to a packer task, which publishes every
//! event waiting as one `LikeEventBatch` envelope while a lane (an
//! unconfirmed slot on a confirm channel) is free: group commit with no
//! timer, so a lone Like is published at once and under load each message
//! carries what arrived during the previous confirm. The broker's per-message
//! cost, not its per-like cost, is then what a spike pays.
//!
//! A caller is answered OK only after the broker acked its message; a nack,
//! a return, a lost or blocked connection, or the confirm timeout (counted
//! from the call, not from its message) answers it with an error. A caller
//! that gave up is left out of any later message. A supervisor keeps the
//! link up: it reconnects with backoff and replaces a link that broke or
//! that the broker refused on ([`Link`]); the link's state lives in one
//! `watch` ([`LinkState`]) that callers and the health service read.
//!
//! With tracing on, a message carrying traced calls is published in a
//! `publish` span linked to them, whose context rides in its headers.

use futures_util::{FutureExt, StreamExt, future::BoxFuture, stream::FuturesUnordered};
use likes_common::config::{AmqpSettings, ApiSettings};
use likes_proto::pb::LikeEvent;
use likes_queue::{
    Channel, Connection, ConnectionEvent, PublishError, backoff::Reconnect, codec,
    publish_confirmed,
};
use likes_service::telemetry::otel::{self, Context};
use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::{
    sync::{CancellationToken, DropGuard},
    task::TaskTracker,
};
use tracing::Instrument;

/// How often the supervisor also checks that the link is still up. lapin
/// reports a lost socket and missed heartbeats as connection events (and a
/// failed publish reports itself), but a close the broker initiates
/// (`rabbitmqctl close_connection`, a node stopping) only changes the
/// connection's status, with no event: without this an idle api would stay
/// ready on a dead link until its next Like.
const LINK_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// A link the broker refused a message on (a nack) is replaced, but not
/// before it is this old: a broker that refuses every message (say, a
/// queue over its length limit) costs one reconnection a second, not one
/// per message.
const REFUSED_LINK_MIN_AGE: Duration = Duration::from_secs(1);

/// How messages are packed, from the api settings.
#[derive(Debug, Clone, Copy)]
pub struct Packing {
    pub channels: usize,
    /// Event queues (`amqp.shards`): a message holds the events of one.
    pub shards: u16,
    pub unconfirmed_per_channel: usize,
    pub max_events: usize,
    pub max_bytes: usize,
    /// How long a caller waits for its event's confirm, from the moment it
    /// hands the event over; also the most a message holds its lane.
    pub confirm_timeout: Duration,
}

/// Confirm channels the api publishes on. Fewer channels let the broker
/// confirm more messages per ack frame: 1 or 2 measured about 4% faster
/// than 4 on the 2-core development machine (BENCHMARKS.md); more can help
/// a broker with many cores, where each channel is a process of its own.
const CHANNELS: usize = 2;

/// Messages each channel keeps unconfirmed: one, so that what arrives
/// during a confirm packs into the next message (2 and 4 measured no
/// faster, and packed fewer likes per message).
const UNCONFIRMED_PER_CHANNEL: usize = 1;

/// Most events in one message: what 64 callers send during a slow confirm
/// fits several times over, and a message stays far below the broker's
/// frame size.
const MAX_EVENTS_PER_MESSAGE: usize = 256;

/// Most bytes of events in one message (events of the largest ids are
/// about 300 bytes).
const MAX_MESSAGE_BYTES: usize = 128 * 1024;

impl Packing {
    pub fn from_settings(settings: &ApiSettings, amqp: &AmqpSettings) -> Self {
        Self {
            channels: CHANNELS,
            shards: amqp.shards,
            unconfirmed_per_channel: UNCONFIRMED_PER_CHANNEL,
            max_events: MAX_EVENTS_PER_MESSAGE,
            max_bytes: MAX_MESSAGE_BYTES,
            confirm_timeout: settings.confirm_timeout(),
        }
    }
}

/// The answer a caller waits for.
type Answer = Result<(), PublishError>;

/// An event handed to the packer, and where to send its answer.
#[derive(Debug)]
struct Pending {
    event: LikeEvent,
    answer: oneshot::Sender<Answer>,
    /// The caller's span, when tracing is on and it is sampled.
    trace: Option<Context>,
}

/// What the publisher got confirmed since it started: for whoever holds the
/// api (tests, the load test); the same counts are Prometheus metrics.
#[derive(Debug, Default)]
pub struct PublishStats {
    messages: AtomicU64,
    events: AtomicU64,
}

impl PublishStats {
    /// Broker messages confirmed.
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    /// Events in confirmed messages.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    fn confirmed(&self, events: usize) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(events as u64, Ordering::Relaxed);
        metrics::counter!("likes_publish_messages_total").increment(1);
        metrics::counter!("likes_publish_events_total").increment(events as u64);
    }
}

/// The current link and whether the broker blocks it: the one place the
/// publisher keeps its link's state. Callers read it to publish, the
/// health service follows it.
#[derive(Debug, Clone, Default)]
pub struct LinkState {
    link: Option<Arc<Link>>,
    /// The broker's reason, while it blocks the current link.
    blocked: Option<Arc<str>>,
}

/// Where the link stands, for health reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkStatus {
    Up,
    Down,
    /// Connected, but the broker reads nothing from it (a resource alarm).
    Blocked(Arc<str>),
}

impl LinkState {
    pub fn status(&self) -> LinkStatus {
        match (&self.link, &self.blocked) {
            (None, _) => LinkStatus::Down,
            (Some(_), Some(reason)) => LinkStatus::Blocked(Arc::clone(reason)),
            (Some(_), None) => LinkStatus::Up,
        }
    }
}

/// The api's link to RabbitMQ, kept up by a supervisor task.
#[derive(Debug)]
pub struct Publisher {
    state: watch::Sender<LinkState>,
    broken: Arc<Notify>,
    stats: Arc<PublishStats>,
    confirm_timeout: Duration,
    /// The supervisor, each link's packer and event follower.
    tasks: TaskTracker,
}

impl Publisher {
    /// Connects once (so a misconfigured broker fails startup loudly), then
    /// starts the supervisor that reconnects until `shutdown` is cancelled.
    pub async fn start(
        settings: AmqpSettings,
        packing: Packing,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, PublishError> {
        let publisher = Arc::new(Self {
            state: watch::Sender::new(LinkState::default()),
            broken: Arc::new(Notify::new()),
            stats: Arc::new(PublishStats::default()),
            confirm_timeout: packing.confirm_timeout,
            tasks: TaskTracker::new(),
        });
        let link = publisher.open(&settings, packing).await?;
        publisher.replace(Some(link));
        publisher
            .tasks
            .spawn(Arc::clone(&publisher).supervise(settings, packing, shutdown));
        Ok(publisher)
    }

    /// What was confirmed so far.
    pub fn stats(&self) -> Arc<PublishStats> {
        Arc::clone(&self.stats)
    }

    /// Follows the link's state.
    pub fn subscribe(&self) -> watch::Receiver<LinkState> {
        self.state.subscribe()
    }

    /// Queues `event` for the next message and returns once the broker
    /// confirmed the message that carries it; or, at the latest, once the
    /// confirm timeout has passed since this call, whatever was in flight
    /// before it. A blocked link fails the call at once, and so does a link
    /// that becomes blocked while the call waits.
    pub async fn publish(&self, event: LikeEvent) -> Result<(), PublishError> {
        let mut state = self.state.subscribe();
        let link = {
            let current = state.borrow_and_update();
            if let Some(reason) = &current.blocked {
                return Err(PublishError::Blocked(reason.to_string()));
            }
            current.link.clone().ok_or(PublishError::NotConnected)?
        };
        let (answer, answered) = oneshot::channel();
        let trace = otel::current();
        link.events
            .send(Pending {
                event,
                answer,
                trace,
            })
            .map_err(|_| PublishError::NotConnected)?;
        drop(link);
        // Whichever comes first; leaving drops `answered`, so an event not
        // yet packed is left out of the next message.
        tokio::select! {
            biased;
            // A packer that ended without answering lost its link.
            answer = answered => answer.unwrap_or(Err(PublishError::NotConnected)),
            reason = blocked(&mut state) => Err(PublishError::Blocked(reason)),
            () = tokio::time::sleep(self.confirm_timeout) => {
                Err(PublishError::ConfirmTimeout(self.confirm_timeout))
            }
        }
    }

    /// Installs `link` (or none), unblocked, and updates the gauges.
    fn replace(&self, link: Option<Arc<Link>>) -> Option<Arc<Link>> {
        let connected = link.is_some();
        let old = self.state.send_replace(LinkState {
            link,
            blocked: None,
        });
        metrics::gauge!("likes_amqp_connected", "role" => "api")
            .set(f64::from(u8::from(connected)));
        metrics::gauge!("likes_amqp_blocked").set(0.0);
        old.link
    }

    /// Records that the broker blocked (`Some(reason)`) or unblocked the
    /// link `id`, if it is still the current one.
    fn set_blocked(&self, id: u64, blocked: Option<Arc<str>>) {
        let changed = self.state.send_if_modified(|state| {
            let current = state.link.as_ref().is_some_and(|link| link.id == id);
            if current && state.blocked != blocked {
                state.blocked.clone_from(&blocked);
                return true;
            }
            false
        });
        if changed {
            metrics::gauge!("likes_amqp_blocked").set(f64::from(u8::from(blocked.is_some())));
        }
    }

    async fn open(
        self: &Arc<Self>,
        settings: &AmqpSettings,
        packing: Packing,
    ) -> Result<Arc<Link>, PublishError> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let connection = likes_queue::connect(settings, "likes-api").await?;
        let events = likes_queue::connection_events(&connection);
        let mut channels = Vec::with_capacity(packing.channels);
        for _ in 0..packing.channels {
            channels.push(likes_queue::confirm_channel(&connection).await?);
        }
        likes_queue::declare_topology(&connection, settings).await?;
        let (sender, waiting) = mpsc::unbounded_channel();
        let refused = Arc::new(AtomicBool::new(false));
        let sink = BrokerSink {
            channels: channels.clone(),
            queues: likes_queue::event_queues(settings),
            broken: Arc::clone(&self.broken),
            refused: Arc::clone(&refused),
        };
        self.tasks.spawn(pack(
            waiting,
            packing,
            Arc::clone(&self.stats),
            move |lane, shard, events, calls| sink.publish(lane, shard, events, calls),
        ));
        let closed = CancellationToken::new();
        self.tasks
            .spawn(Arc::clone(self).follow(id, events, closed.clone()));
        Ok(Arc::new(Link {
            id,
            connection,
            channels,
            refused,
            opened: Instant::now(),
            events: sender,
            _closed: closed.drop_guard(),
        }))
    }

    /// Follows what the broker says about link `id` until it is dropped:
    /// blocked and unblocked into the state, a failure to the supervisor.
    async fn follow(
        self: Arc<Self>,
        id: u64,
        mut events: impl futures_util::Stream<Item = ConnectionEvent> + Unpin,
        closed: CancellationToken,
    ) {
        loop {
            let event = tokio::select! {
                () = closed.cancelled() => return,
                event = events.next() => event,
            };
            match event {
                None => return,
                Some(ConnectionEvent::Blocked(reason)) => {
                    tracing::warn!(
                        %reason,
                        "RabbitMQ blocks publishing (a resource alarm): Likes are answered \
                         UNAVAILABLE until it unblocks"
                    );
                    self.set_blocked(id, Some(reason.into()));
                }
                Some(ConnectionEvent::Unblocked) => {
                    tracing::info!("RabbitMQ unblocked publishing");
                    self.set_blocked(id, None);
                }
                Some(ConnectionEvent::Failed(error)) => {
                    tracing::debug!(%error, "the RabbitMQ connection failed");
                    self.broken.notify_one();
                }
            }
        }
    }

    /// Watches the link; when it breaks, drops it and reconnects with capped
    /// exponential backoff. On shutdown, closes the link.
    async fn supervise(
        self: Arc<Self>,
        settings: AmqpSettings,
        packing: Packing,
        shutdown: CancellationToken,
    ) {
        loop {
            // Wait for the current link to break.
            loop {
                let up = self
                    .state
                    .borrow()
                    .link
                    .as_ref()
                    .is_some_and(|link| link.is_up());
                if !up {
                    break;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = self.broken.notified() => {}
                    () = tokio::time::sleep(LINK_CHECK_INTERVAL) => {}
                }
            }
            if let Some(old) = self.replace(None) {
                if old.was_refused() {
                    tracing::warn!("the broker refused a message (nack); replacing the connection");
                } else {
                    tracing::warn!("lost the RabbitMQ connection; reconnecting");
                }
                old.close().await;
            }
            let mut backoff = Reconnect::new();
            loop {
                match self.open(&settings, packing).await {
                    Ok(link) => {
                        self.replace(Some(link));
                        metrics::counter!("likes_amqp_reconnects_total", "role" => "api")
                            .increment(1);
                        tracing::info!("reconnected to RabbitMQ");
                        break;
                    }
                    Err(error) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot reach RabbitMQ");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
    }

    /// Closes the link and lets the publisher's tasks end; `stop` (the
    /// token `start` was given) must be cancelled, and the calls in flight
    /// answered, before this is called (the server drains them first). Each
    /// step takes at most a second: a packer may still wait for
    /// confirms of messages whose callers have all been answered, and
    /// nobody needs those.
    pub async fn close(&self) {
        if let Some(link) = self.replace(None) {
            link.close().await;
        }
        self.tasks.close();
        if tokio::time::timeout(likes_queue::topology::CLOSE_TIMEOUT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::debug!("leaving publisher tasks that wait for unneeded confirms");
        }
    }
}

/// The broker's reason once the link in `state` is blocked; never if the
/// publisher is gone.
async fn blocked(state: &mut watch::Receiver<LinkState>) -> String {
    let reason = match state.wait_for(|state| state.blocked.is_some()).await {
        Ok(state) => state.blocked.as_deref().map(str::to_owned),
        Err(_closed) => None,
    };
    match reason {
        Some(reason) => reason,
        None => std::future::pending().await,
    }
}

/// One connection, its confirm channels, and the packer publishing on them.
///
/// A nack condemns the link. RabbitMQ nacks a publish only when the queue
/// could not take it, and after a quorum queue's leader was lost (3.10: its
/// node killed) a channel can go on being refused for many seconds while a
/// new channel is not: the old channel's queue client holds on to where
/// the leader was. So a refused link is replaced, like a broken one.
#[derive(Debug)]
struct Link {
    id: u64,
    connection: Connection,
    channels: Vec<Channel>,
    /// Set when the broker nacked a message published on this link.
    refused: Arc<AtomicBool>,
    opened: Instant,
    /// To the packer; when the last link handle is dropped, the packer
    /// publishes what is left, waits for its confirms and ends.
    events: mpsc::UnboundedSender<Pending>,
    /// Ends the link's event follower when the link is dropped.
    _closed: DropGuard,
}

impl Link {
    fn is_up(&self) -> bool {
        let condemned = self.was_refused() && self.opened.elapsed() >= REFUSED_LINK_MIN_AGE;
        !condemned
            && self.connection.status().connected()
            && self.channels.iter().all(|c| c.status().connected())
    }

    fn was_refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    async fn close(&self) {
        likes_queue::close(&self.connection, "shutdown").await;
    }
}

/// Publishes envelopes on the link's channels.
struct BrokerSink {
    channels: Vec<Channel>,
    /// The event queue of each shard.
    queues: Vec<String>,
    broken: Arc<Notify>,
    refused: Arc<AtomicBool>,
}

impl BrokerSink {
    /// `calls`: the traced callers among those of `events` (empty when
    /// tracing is off, and then the message gets no span and no header).
    fn publish(
        &self,
        lane: usize,
        shard: u16,
        events: Vec<LikeEvent>,
        calls: Vec<Context>,
    ) -> BoxFuture<'static, Answer> {
        let channel = self.channels[lane].clone();
        let queue = self.queues[usize::from(shard)].clone();
        let broken = Arc::clone(&self.broken);
        let refused = Arc::clone(&self.refused);
        let body = codec::encode_envelope(&events);
        let mut properties = codec::envelope_properties(&uuid::Uuid::now_v7().to_string());
        let span = if calls.is_empty() {
            tracing::Span::none()
        } else {
            let span = tracing::info_span!(
                parent: None,
                "publish",
                messaging.destination.name = %queue,
                messaging.batch.message_count = events.len(),
                messaging.traced_calls = calls.len(),
                outcome = tracing::field::Empty,
            );
            otel::follow_calls(&span, &calls);
            let mut headers = likes_queue::FieldTable::default();
            otel::inject(&span, &mut codec::HeaderInjector(&mut headers));
            properties = properties.with_headers(headers);
            span
        };
        let traced = span.clone();
        async move {
            let outcome = publish_confirmed(&channel, &queue, &body, properties).await;
            traced.record(
                "outcome",
                outcome
                    .as_ref()
                    .map_or_else(PublishError::caller_reason, |()| "confirmed"),
            );
            match &outcome {
                Err(PublishError::Broker(_)) => broken.notify_one(),
                Err(PublishError::Nacked) => {
                    refused.store(true, Ordering::Relaxed);
                    broken.notify_one();
                }
                _ => {}
            }
            outcome
        }
        .instrument(span)
        .boxed()
    }
}

/// The packer: takes waiting events from `waiting`, sorts them by shard,
/// publishes each shard's through `publish(lane, shard, events, calls)` (whose
/// future resolves with the broker's confirm) while a lane (a slot on a
/// channel) is free, and answers every caller of a message with its
/// outcome. A message holds the events of one shard; shards take turns for
/// free lanes, so a hot shard does not starve the others. Ends when every
/// sender is gone and every message is answered.
async fn pack<F>(
    mut waiting: mpsc::UnboundedReceiver<Pending>,
    packing: Packing,
    stats: Arc<PublishStats>,
    mut publish: F,
) where
    F: FnMut(usize, u16, Vec<LikeEvent>, Vec<Context>) -> BoxFuture<'static, Answer>,
{
    let per_lane = packing.unconfirmed_per_channel.max(1);
    let mut unconfirmed = vec![0_usize; packing.channels.max(1)];
    let mut in_flight = FuturesUnordered::new();
    let shards = packing.shards.max(1);
    let mut buffers = Buffers::new(shards);
    let mut open = true;
    loop {
        while let Ok(pending) = waiting.try_recv() {
            buffers.push(pending);
        }
        while let Some(lane) = (0..unconfirmed.len())
            .filter(|&lane| unconfirmed[lane] < per_lane)
            .min_by_key(|&lane| unconfirmed[lane])
        {
            let Some(Message {
                shard,
                events,
                answers,
                calls,
            }) = buffers.next_message(&packing)
            else {
                break;
            };
            unconfirmed[lane] += 1;
            let confirmed = publish(lane, shard, events, calls);
            let timeout = packing.confirm_timeout;
            let started = Instant::now();
            let count = answers.len();
            let stats = Arc::clone(&stats);
            in_flight.push(async move {
                let outcome = match tokio::time::timeout(timeout, confirmed).await {
                    Ok(outcome) => outcome,
                    Err(_elapsed) => Err(PublishError::ConfirmTimeout(timeout)),
                };
                record(&outcome, count, started.elapsed(), &stats);
                (lane, answers, outcome)
            });
        }
        tokio::select! {
            biased;
            Some((lane, answers, outcome)) = in_flight.next() => {
                unconfirmed[lane] -= 1;
                answer_all(answers, &outcome);
            }
            pending = waiting.recv(), if open => match pending {
                Some(pending) => buffers.push(pending),
                None => open = false,
            },
            else => break,
        }
    }
}

/// The contents of the next broker message.
struct Message {
    shard: u16,
    events: Vec<LikeEvent>,
    answers: Vec<oneshot::Sender<Answer>>,
    /// The traced callers (empty when tracing is off; at most
    /// `otel::MAX_LINKS`, as more could not be linked).
    calls: Vec<Context>,
}

/// Events waiting for a message, shard by shard, in arrival order.
struct Buffers {
    shards: Vec<VecDeque<Pending>>,
    /// The shard whose turn it is to fill the next free lane.
    turn: usize,
}

impl Buffers {
    fn new(shards: u16) -> Self {
        Self {
            shards: (0..shards).map(|_| VecDeque::new()).collect(),
            turn: 0,
        }
    }

    fn push(&mut self, pending: Pending) {
        let shards = u16::try_from(self.shards.len()).expect("at most u16::MAX shards");
        let shard = likes_queue::shard_of(&pending.event.post_id, shards);
        self.shards[usize::from(shard)].push_back(pending);
    }

    /// The next message: the events at the front of the next shard that has
    /// any, within the bounds; callers that already gave up are left out.
    fn next_message(&mut self, packing: &Packing) -> Option<Message> {
        for _ in 0..self.shards.len() {
            let shard = self.turn;
            self.turn = (self.turn + 1) % self.shards.len();
            let buffer = &mut self.shards[shard];
            let mut events = Vec::new();
            let mut answers = Vec::new();
            let mut calls = Vec::new();
            let mut bytes = 0;
            while let Some(pending) = buffer.pop_front() {
                if pending.answer.is_closed() {
                    continue;
                }
                let len = codec::event_len_in_envelope(&pending.event);
                if !events.is_empty() && bytes + len > packing.max_bytes {
                    buffer.push_front(pending);
                    break;
                }
                bytes += len;
                events.push(pending.event);
                answers.push(pending.answer);
                if let Some(call) = pending.trace
                    && calls.len() < otel::MAX_LINKS
                {
                    calls.push(call);
                }
                if events.len() >= packing.max_events {
                    break;
                }
            }
            if !events.is_empty() {
                let shard = u16::try_from(shard).expect("at most u16::MAX shards");
                return Some(Message {
                    shard,
                    events,
                    answers,
                    calls,
                });
            }
        }
        None
    }
}

fn answer_all(answers: Vec<oneshot::Sender<Answer>>, outcome: &Answer) {
    for answer in answers {
        // A caller whose deadline passed no longer listens.
        let _ = answer.send(outcome.clone());
    }
}

/// `likes_publish_confirm_seconds{outcome}` per message, and on a confirm
/// `likes_publish_messages_total` and `likes_publish_events_total`, whose
/// ratio is the mean number of likes per broker message.
fn record(outcome: &Answer, events: usize, waited: Duration, stats: &PublishStats) {
    let label = if outcome.is_ok() {
        "confirmed"
    } else {
        "failed"
    };
    metrics::histogram!("likes_publish_confirm_seconds", "outcome" => label)
        .record(waited.as_secs_f64());
    if outcome.is_ok() {
        stats.confirmed(events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Messages the packer published: (lane, event ids), and the confirms
    /// a test resolves by hand.
    #[derive(Default)]
    struct Broker {
        published: Mutex<Vec<(usize, u16, Vec<String>)>>,
        /// Traced callers handed over with each message.
        traced: Mutex<Vec<usize>>,
        confirms: Mutex<Vec<oneshot::Sender<Answer>>>,
    }

    impl Broker {
        fn sink(
            self: &Arc<Self>,
        ) -> impl FnMut(usize, u16, Vec<LikeEvent>, Vec<Context>) -> BoxFuture<'static, Answer> + use<>
        {
            let broker = Arc::clone(self);
            move |lane, shard, events, calls| {
                broker.traced.lock().expect("test lock").push(calls.len());
                let ids = events.into_iter().map(|e| e.event_id).collect();
                broker
                    .published
                    .lock()
                    .expect("test lock")
                    .push((lane, shard, ids));
                let (confirm, confirmed) = oneshot::channel();
                broker.confirms.lock().expect("test lock").push(confirm);
                async move { confirmed.await.unwrap_or(Err(PublishError::NotConnected)) }.boxed()
            }
        }

        fn sizes(&self) -> Vec<usize> {
            let published = self.published.lock().expect("test lock");
            published.iter().map(|(_, _, ids)| ids.len()).collect()
        }

        /// Confirms (or fails) the oldest unconfirmed message.
        fn confirm_next(&self, outcome: Answer) {
            let confirm = self.confirms.lock().expect("test lock").remove(0);
            let _ = confirm.send(outcome);
        }
    }

    fn packing() -> Packing {
        Packing {
            channels: 1,
            shards: 1,
            unconfirmed_per_channel: 1,
            max_events: 256,
            max_bytes: 128 * 1024,
            confirm_timeout: Duration::from_secs(5),
        }
    }

    fn event(n: usize) -> LikeEvent {
        LikeEvent {
            event_id: format!("e{n}"),
            post_id: "p".into(),
            user_id: format!("u{n}"),
            action: 1,
            occurred_at_micros: 1,
        }
    }

    fn start(packing: Packing) -> (Arc<Broker>, mpsc::UnboundedSender<Pending>) {
        let broker = Arc::new(Broker::default());
        let (events, waiting) = mpsc::unbounded_channel();
        tokio::spawn(pack(waiting, packing, Arc::default(), broker.sink()));
        (broker, events)
    }

    fn send(events: &mpsc::UnboundedSender<Pending>, n: usize) -> oneshot::Receiver<Answer> {
        let (answer, answered) = oneshot::channel();
        events
            .send(Pending {
                event: event(n),
                answer,
                trace: None,
            })
            .expect("packer running");
        answered
    }

    /// Lets the packer task run until it waits again.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_event_is_published_at_once() {
        let (broker, events) = start(packing());
        let started = Instant::now();
        let answered = send(&events, 1);
        settle().await;
        assert_eq!(broker.sizes(), vec![1], "published without waiting");
        assert_eq!(started.elapsed(), Duration::ZERO, "no timer");
        broker.confirm_next(Ok(()));
        assert!(answered.await.expect("answered").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn events_arriving_during_an_unconfirmed_publish_share_the_next_message() {
        let (broker, events) = start(packing());
        let first = send(&events, 0);
        settle().await;
        let waiting: Vec<_> = (1..=10).map(|n| send(&events, n)).collect();
        settle().await;
        assert_eq!(
            broker.sizes(),
            vec![1],
            "the ten wait for the first confirm"
        );
        broker.confirm_next(Ok(()));
        settle().await;
        assert_eq!(broker.sizes(), vec![1, 10], "the ten share one message");
        assert!(first.await.expect("answered").is_ok());
        broker.confirm_next(Ok(()));
        for answered in waiting {
            assert!(answered.await.expect("answered").is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn messages_stay_within_the_event_and_byte_bounds() {
        let bounded = Packing {
            max_events: 4,
            max_bytes: 3 * codec::event_len_in_envelope(&event(10)),
            ..packing()
        };
        let (broker, events) = start(bounded);
        let first = send(&events, 0);
        settle().await;
        let waiting: Vec<_> = (10..20).map(|n| send(&events, n)).collect();
        settle().await;
        for _ in 0..5 {
            broker.confirm_next(Ok(()));
            settle().await;
        }
        // Ten waiting events of equal size, three fit the byte bound.
        assert_eq!(broker.sizes(), vec![1, 3, 3, 3, 1]);
        let loose = Packing {
            max_events: 4,
            ..packing()
        };
        let (broker, events) = start(loose);
        let _first = send(&events, 0);
        settle().await;
        let _waiting: Vec<_> = (10..20).map(|n| send(&events, n)).collect();
        settle().await;
        for _ in 0..4 {
            broker.confirm_next(Ok(()));
            settle().await;
        }
        assert_eq!(broker.sizes(), vec![1, 4, 4, 2]);
        drop((first, waiting));
    }

    #[tokio::test(start_paused = true)]
    async fn unconfirmed_messages_are_bounded_per_channel() {
        let two_by_two = Packing {
            channels: 2,
            unconfirmed_per_channel: 2,
            ..packing()
        };
        let (broker, events) = start(two_by_two);
        // One event at a time: each is published alone while a slot is free.
        let mut answers = Vec::new();
        for n in 0..6 {
            answers.push(send(&events, n));
            settle().await;
        }
        let published = broker.published.lock().expect("test lock").clone();
        let lanes: Vec<usize> = published.iter().map(|(lane, _, _)| *lane).collect();
        assert_eq!(lanes.len(), 4, "two unconfirmed on each of two channels");
        assert_eq!(
            lanes.iter().filter(|&&lane| lane == 0).count(),
            2,
            "{lanes:?}"
        );
        // The two that found no free slot share the next message.
        broker.confirm_next(Ok(()));
        settle().await;
        assert_eq!(broker.sizes(), vec![1, 1, 1, 1, 2]);
        drop(answers);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_or_late_confirm_answers_every_caller_of_the_message_with_an_error() {
        let (broker, events) = start(packing());
        let first = send(&events, 0);
        settle().await;
        let nacked: Vec<_> = (1..4).map(|n| send(&events, n)).collect();
        settle().await;
        broker.confirm_next(Ok(()));
        settle().await;
        broker.confirm_next(Err(PublishError::Nacked));
        assert!(first.await.expect("answered").is_ok());
        for answered in nacked {
            assert!(matches!(
                answered.await.expect("answered"),
                Err(PublishError::Nacked)
            ));
        }
        // A confirm that never comes: the timeout answers, never OK.
        let late = send(&events, 9);
        settle().await;
        let started = Instant::now();
        let outcome = late.await.expect("answered");
        assert!(
            matches!(outcome, Err(PublishError::ConfirmTimeout(_))),
            "{outcome:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_holds_the_events_of_one_shard_and_shards_take_turns() {
        let sharded = Packing {
            shards: 4,
            ..packing()
        };
        let (broker, events) = start(sharded);
        let send_post = |n: usize, post: &str| {
            let (answer, answered) = oneshot::channel();
            let mut event = event(n);
            event.post_id = post.into();
            events
                .send(Pending {
                    event,
                    answer,
                    trace: None,
                })
                .expect("packer running");
            answered
        };
        let mut answers = vec![send_post(0, "warm")];
        settle().await;
        let posts: Vec<String> = (1..=40).map(|i| format!("post-{i}")).collect();
        for (i, post) in posts.iter().enumerate() {
            answers.push(send_post(i + 1, post));
        }
        settle().await;
        for _ in 0..5 {
            broker.confirm_next(Ok(()));
            settle().await;
        }
        let published = broker.published.lock().expect("test lock").clone();
        let shards: Vec<u16> = published[1..].iter().map(|(_, shard, _)| *shard).collect();
        let mut each = shards.clone();
        each.sort_unstable();
        assert_eq!(
            each,
            vec![0, 1, 2, 3],
            "one message per shard, in turn: {shards:?}"
        );
        for (_, shard, ids) in &published[1..] {
            for id in ids {
                let n: usize = id[1..].parse().expect("e<n>");
                let post = &posts[n - 1];
                assert_eq!(likes_queue::shard_of(post, 4), *shard, "{post}");
            }
        }
        let packed: usize = published[1..].iter().map(|(_, _, ids)| ids.len()).sum();
        assert_eq!(packed, 40);
        drop(answers);
    }

    #[tokio::test(start_paused = true)]
    async fn traced_callers_ride_with_their_message_up_to_the_link_limit() {
        let (broker, events) = start(packing());
        let _first = send(&events, 0);
        settle().await;
        let mut answers = Vec::new();
        for n in 1..=200 {
            let (answer, answered) = oneshot::channel();
            events
                .send(Pending {
                    event: event(n),
                    answer,
                    // Every other caller traced: 100 of 200.
                    trace: (n % 2 == 0).then(Context::new),
                })
                .expect("packer running");
            answers.push(answered);
        }
        for n in 201..=400 {
            let (answer, answered) = oneshot::channel();
            let trace = Some(Context::new());
            events
                .send(Pending {
                    event: event(n),
                    answer,
                    trace,
                })
                .expect("packer running");
            answers.push(answered);
        }
        settle().await;
        broker.confirm_next(Ok(()));
        settle().await;
        assert_eq!(broker.sizes(), vec![1, 256]);
        // 100 traced of the first 200, then 56 of the next: capped at 128.
        assert_eq!(
            *broker.traced.lock().expect("test lock"),
            vec![0, otel::MAX_LINKS]
        );
        broker.confirm_next(Ok(()));
        settle().await;
        assert_eq!(broker.sizes(), vec![1, 256, 144]);
        // 144 traced callers: capped again.
        assert_eq!(
            *broker.traced.lock().expect("test lock"),
            vec![0, otel::MAX_LINKS, otel::MAX_LINKS]
        );
        drop(answers);
    }

    #[tokio::test(start_paused = true)]
    async fn callers_that_gave_up_are_left_out_of_the_next_message() {
        let (broker, events) = start(packing());
        let _first = send(&events, 0);
        settle().await;
        let kept = send(&events, 1);
        let gave_up = send(&events, 2);
        drop(gave_up);
        settle().await;
        broker.confirm_next(Ok(()));
        settle().await;
        let published = broker.published.lock().expect("test lock").clone();
        assert_eq!(published[1].2, vec!["e1".to_owned()]);
        drop(kept);
    }

    #[tokio::test(start_paused = true)]
    async fn the_packer_ends_once_its_senders_are_gone_and_every_caller_is_answered() {
        let broker = Arc::new(Broker::default());
        let (events, waiting) = mpsc::unbounded_channel();
        let stats = Arc::new(PublishStats::default());
        let packer = tokio::spawn(pack(waiting, packing(), Arc::clone(&stats), broker.sink()));
        let answered = send(&events, 0);
        drop(events);
        settle().await;
        assert!(!packer.is_finished(), "a message is still unconfirmed");
        broker.confirm_next(Ok(()));
        assert!(answered.await.expect("answered").is_ok());
        packer.await.expect("the packer ends cleanly");
        assert_eq!((stats.messages(), stats.events()), (1, 1));
    }
}
