//! The packer: the events callers hand over, packed into broker messages
//! while a lane is free, and each caller answered with its message's
//! outcome. Pure logic over a `publish` function, so its tests need no
//! broker.

use super::{Answer, Packing, Pending, PublishStats};
use futures_util::{StreamExt, future::BoxFuture, stream::FuturesUnordered};
use likes_proto::events::LikeEvent;
use likes_queue::{PublishError, codec};
use likes_service::telemetry::otel::{self, Context};
use std::{collections::VecDeque, sync::Arc, time::Duration};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// The packer: takes waiting events from `waiting`, sorts them by shard,
/// publishes each shard's through `publish(lane, shard, events, calls)` (whose
/// future resolves with the broker's confirm) while a lane (a slot on a
/// channel) is free, and answers every caller of a message with its
/// outcome. A message holds the events of one shard; shards take turns for
/// free lanes, so a hot shard does not starve the others. Ends when every
/// sender is gone and every message is answered.
pub(super) async fn pack<F>(
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
    use futures_util::FutureExt;
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
