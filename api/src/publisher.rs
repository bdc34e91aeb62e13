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

mod packer;

use futures_util::{FutureExt, StreamExt, future::BoxFuture};
use likes_common::config::{AmqpSettings, ApiSettings};
use likes_proto::events::LikeEvent;
use likes_queue::{
    Channel, Connection, ConnectionEvent, PublishError, backoff::Reconnect, codec,
    publish_confirmed,
};
use likes_service::telemetry::otel::{self, Context};
use packer::pack;
use std::{
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
