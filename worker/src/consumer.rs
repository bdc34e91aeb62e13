//! The consumer loop: deliveries → batches of events → one write → one ack.
//!
//! Deliveries come with prefetch (by default twice the batch size in
//! messages, so a batch fills even when every message holds one event, and
//! the next batch streams in while one is written) and manual acks. A message
//! is an envelope of many events or a single event (`likes_queue::codec`);
//! each is decoded as it arrives, and a batch closes once its messages hold
//! `worker.batch_size` events (a message is never split). Each batch is
//! settled before the next is collected, so one `multiple=true` ack on its
//! highest delivery tag covers exactly the batch, and a message is acked
//! only once every event in it is committed or dead-lettered.
//!
//! Poison is handled per event, not per message: a message that does not
//! decode goes to the dead-letter queue whole; an event whose ids break the
//! rules, or that the database refuses, goes there alone (its envelope's
//! other events are written), as a single-event message naming the envelope
//! it came from.
//!
//! With tracing on, each batch's `batch` span links to the `publish` span
//! of every message in it that carries W3C trace context in its headers
//! (at most `otel::MAX_LINKS`), and through those to the calls they
//! carry; a `receive` span per message, in its publisher's trace, links
//! back. With tracing off no header is read and no span added.

use crate::{
    batcher::{BatchEnd, next_batch},
    error::WorkerError,
    event,
    stats::WorkerStats,
    writer::{Isolated, Writer},
};
use futures_util::StreamExt;
use likes_common::config::{AmqpSettings, Settings};
use likes_db::LikeChange;
use likes_proto::events::LikeEvent;
use likes_queue::{
    Channel, Consumer, Delivery, PublishError,
    codec::{self, Decoded, Kind},
    consume, dead_letters,
};
use likes_service::telemetry::otel;
use std::sync::Arc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

/// A delivery and what its body decoded to.
struct Incoming {
    delivery: Delivery,
    decoded: Result<Decoded, prost::DecodeError>,
}

impl Incoming {
    fn decode(delivery: Delivery) -> Self {
        let decoded = codec::decode(&delivery.properties, &delivery.data);
        Self { delivery, decoded }
    }

    /// Events it counts for in a batch (an undecodable or empty message
    /// still takes a place).
    fn events(&self) -> usize {
        self.decoded
            .as_ref()
            .map_or(1, |decoded| decoded.events.len().max(1))
    }
}

/// Subscribes to the event queue `queue` (one shard) on `channel`: confirms
/// on (for the copies sent to the dead-letter queue), prefetch, and a
/// consumer the broker registered. Once it returns, deliveries flow.
pub async fn subscribe(
    channel: &Channel,
    queue: &str,
    settings: &Settings,
) -> Result<Consumer, WorkerError> {
    Ok(consume::subscribe(channel, queue, settings.worker.prefetch()).await?)
}

/// Consumes the deliveries of `consumer` (from [`subscribe`] on `channel`)
/// until `shutdown` is cancelled (then flushes, commits and acks the
/// current batch) or the channel fails.
#[allow(clippy::too_many_arguments)]
pub async fn consume(
    channel: &Channel,
    consumer: Consumer,
    queue: &str,
    settings: &Settings,
    writer: &Writer,
    counts: &likes_queue::counts::Publisher<'_>,
    stats: &Arc<WorkerStats>,
    shutdown: &CancellationToken,
) -> Result<(), WorkerError> {
    let worker = &settings.worker;
    let tag = consumer.tag();
    let mut incoming = consumer.map(|delivery| delivery.map(Incoming::decode));
    let settler = Settler {
        channel,
        queue,
        writer,
        counts,
        stats,
        settings: &settings.amqp,
        shutdown,
    };
    tracing::info!(
        queue,
        batch.size = worker.batch_size.get(),
        batch.max_wait_ms = worker.batch_max_wait_ms,
        prefetch = worker.prefetch(),
        "consuming"
    );
    let mut broken = None;
    loop {
        let batch = next_batch(
            &mut incoming,
            usize::from(worker.batch_size.get()),
            worker.batch_max_wait(),
            shutdown,
            |item| item.as_ref().map_or(0, Incoming::events),
        )
        .await;
        let mut messages = Vec::with_capacity(batch.items.len());
        for item in batch.items {
            match item {
                Ok(message) => messages.push(message),
                Err(error) => broken = Some(error),
            }
        }
        if !messages.is_empty() {
            let span = info_span!(
                "batch",
                batch.messages = messages.len(),
                batch.linked_messages = tracing::field::Empty,
            );
            let receipts = if otel::enabled() {
                follow_messages(&span, &messages)
            } else {
                Vec::new()
            };
            settler.settle(messages).instrument(span).await?;
            drop(receipts);
        }
        if let Some(error) = broken {
            return Err(error.into());
        }
        match batch.end {
            BatchEnd::Shutdown => break,
            BatchEnd::StreamEnded => return Err(WorkerError::ConsumerEnded),
            BatchEnd::Full | BatchEnd::Waited => {}
        }
    }
    // Stop deliveries; anything prefetched but not in a batch is requeued by
    // the broker when the channel closes.
    if let Err(error) = consume::cancel(channel, tag.as_str()).await {
        tracing::debug!(%error, "cancelling the consumer");
    }
    Ok(())
}

/// Links the (not yet entered) batch span to the span that published each
/// of `messages`, as named by its headers' W3C trace context, and returns
/// a `receive` span per such message: a child of its `publish` span (so in
/// the trace of the call that published it), linked back to the batch,
/// open until the batch is settled. One link per message, not per event: a
/// message's `publish` span links on to its calls, and one message can hold
/// hundreds of events. At most `otel::MAX_LINKS` of either.
fn follow_messages(batch: &tracing::Span, messages: &[Incoming]) -> Vec<tracing::Span> {
    let publishers: Vec<otel::SpanContext> = messages
        .iter()
        .filter_map(|message| {
            let headers = message.delivery.properties.headers().as_ref()?;
            Some(otel::extract(&codec::HeaderExtractor(headers)))
        })
        .filter(otel::SpanContext::is_valid)
        .take(otel::MAX_LINKS)
        .collect();
    let linked = otel::link_all(batch, publishers.iter().cloned());
    batch.record("batch.linked_messages", linked);
    let batch_context = otel::span_context(batch);
    publishers
        .into_iter()
        .map(|publisher| {
            let receive = tracing::info_span!(parent: None, "receive");
            otel::set_remote_parent(&receive, publisher);
            otel::link_all(&receive, [batch_context.clone()]);
            receive
        })
        .collect()
}

/// Settles one batch on one channel.
struct Settler<'a> {
    channel: &'a Channel,
    /// The shard's queue the batch came from.
    queue: &'a str,
    writer: &'a Writer,
    /// Where the new counts go after each batch.
    counts: &'a likes_queue::counts::Publisher<'a>,
    stats: &'a WorkerStats,
    settings: &'a AmqpSettings,
    shutdown: &'a CancellationToken,
}

impl Settler<'_> {
    /// Dead-letters poison, writes the rest (isolating events the database
    /// refuses), then acks the batch, or requeues it when the database stays
    /// unavailable.
    async fn settle(&self, messages: Vec<Incoming>) -> Result<(), WorkerError> {
        let started = Instant::now();
        let last_tag = messages
            .iter()
            .map(|m| m.delivery.delivery_tag)
            .max()
            .expect("settle is called with at least one message");
        let mut events = 0;
        let mut deliveries = Vec::with_capacity(messages.len());
        // Parallel vectors: each change, and the delivery and event it came
        // from, so a slice of changes goes to the writer as it is and a
        // refused one is dead-lettered as it was decoded.
        let mut changes: Vec<LikeChange> = Vec::new();
        let mut sources: Vec<(usize, LikeEvent)> = Vec::new();
        for (index, Incoming { delivery, decoded }) in messages.into_iter().enumerate() {
            match decoded {
                Err(error) => {
                    events += 1;
                    let reason = format!("not a LikeEvent or LikeEventBatch: {error}");
                    self.dead_letter_message(&delivery, &reason).await?;
                }
                Ok(Decoded { kind, events: held }) => {
                    events += held.len();
                    changes.reserve(held.len());
                    for held in held {
                        match event::validate(&held) {
                            Ok(change) => {
                                changes.push(change);
                                sources.push((index, held));
                            }
                            Err(reason) => {
                                self.dead_letter(&delivery, kind, &held, &reason.to_string())
                                    .await?;
                            }
                        }
                    }
                }
            }
            deliveries.push(delivery);
        }
        match self.writer.write_isolating(&changes, self.shutdown).await {
            Ok(Isolated { written, refused }) => {
                let mut tally = Tally::default();
                for (size, outcome) in written {
                    self.stats.statement_committed(size, outcome.rows_changed);
                    tally.add(outcome);
                }
                for (change, error) in refused {
                    let (origin, event) = &sources[change];
                    let delivery = &deliveries[*origin];
                    self.dead_letter(
                        delivery,
                        Kind::of(&delivery.properties),
                        event,
                        &error.to_string(),
                    )
                    .await?;
                }
                // Every event is now committed or dead-lettered.
                consume::ack_through(self.channel, last_tag).await?;
                let flush = started.elapsed();
                self.stats.batch_acked(events, flush);
                tracing::info!(
                    batch.size = events,
                    batch.messages = deliveries.len(),
                    batch.pairs = tally.pairs,
                    batch.statements = tally.statements,
                    rows.changed = tally.rows_changed,
                    counters.changed = tally.counters_changed,
                    duration_ms = flush.as_millis() as u64,
                    "batch written"
                );
                self.push_counts(tally.counts).await;
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, batch.size = events, "batch failed; requeueing it");
                // Parts already committed, and copies already dead-lettered,
                // come back too; writing them again changes nothing, as every
                // write is idempotent.
                consume::requeue_through(self.channel, last_tag).await?;
                self.stats.batch_requeued();
                Ok(())
            }
        }
    }

    /// Tells the apis the new counts of the batch's posts. Best effort: a
    /// lost message costs the apis freshness until their cache entries
    /// expire, never a wrong count.
    async fn push_counts(&self, counts: Vec<likes_db::CountChange>) {
        if counts.is_empty() {
            return;
        }
        let changes = counts
            .into_iter()
            .map(|change| likes_proto::events::CountChange {
                post_id: change.post_id,
                count: change.count.count,
                version: change.count.version,
            })
            .collect();
        let outcome = match self.counts.publish(changes).await {
            Ok(()) => "published",
            Err(error) => {
                tracing::debug!(%error, "cannot push count changes");
                "failed"
            }
        };
        metrics::counter!("likes_count_messages_total", "outcome" => outcome).increment(1);
    }

    /// Dead-letters one event of `delivery`: the message itself when it
    /// holds only that event, else the event alone.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        kind: Kind,
        event: &LikeEvent,
        reason: &str,
    ) -> Result<(), PublishError> {
        match kind {
            Kind::Event => self.dead_letter_message(delivery, reason).await,
            Kind::Envelope => {
                let envelope = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.as_str());
                tracing::warn!(
                    event.id = %event.event_id,
                    envelope.id = ?envelope,
                    %reason,
                    "dead-lettering an event that can never be written"
                );
                dead_letters::dead_letter_event(
                    self.channel,
                    self.settings,
                    self.queue,
                    event,
                    envelope,
                    reason,
                )
                .await?;
                self.stats.dead_lettered_one();
                Ok(())
            }
        }
    }

    /// Copies `delivery` to the dead-letter queue with the reason and waits
    /// for the confirm; the original is then settled by the batch's ack.
    async fn dead_letter_message(
        &self,
        delivery: &Delivery,
        reason: &str,
    ) -> Result<(), PublishError> {
        tracing::warn!(
            delivery.tag = delivery.delivery_tag,
            message.id = ?delivery.properties.message_id(),
            %reason,
            "dead-lettering a message that can never be written"
        );
        dead_letters::dead_letter_message(
            self.channel,
            self.settings,
            self.queue,
            delivery,
            reason,
        )
        .await?;
        self.stats.dead_lettered_one();
        Ok(())
    }
}

/// What the statements of one batch changed.
#[derive(Debug, Default)]
struct Tally {
    statements: u32,
    pairs: usize,
    rows_changed: i64,
    counters_changed: i64,
    /// The new counts, in the order written (a post split over two
    /// statements appears twice; its versions tell which is newer).
    counts: Vec<likes_db::CountChange>,
}

impl Tally {
    fn add(&mut self, outcome: likes_db::WriteOutcome) {
        self.statements += 1;
        self.pairs += outcome.pairs;
        self.rows_changed += outcome.rows_changed;
        self.counters_changed += outcome.counters_changed;
        self.counts.extend(outcome.counts);
    }
}
