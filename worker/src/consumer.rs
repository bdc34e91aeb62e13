//! The consumer loop: deliveries → batches → one write → one ack.
//!
//! Deliveries come with prefetch (at least one batch, by default two, so the
//! next batch streams in while one is written) and manual acks. Each batch is
//! settled before the next is collected, so one `multiple=true` ack on its
//! highest delivery tag covers exactly the batch.
//!
//! Each batch aims at the target of [`BatchSizing`]: `worker.batch_size`, or
//! in adaptive mode a size tuned after every committed batch. Prefetch stays
//! sized for `worker.batch_size`, the largest target, so it never cuts a
//! batch short. The adaptive state lives as long as one broker session: a
//! reconnect starts again from `worker.batch_min_size`.

use crate::{
    adaptive::BatchSizing,
    batcher::{BatchEnd, next_batch},
    dead_letters,
    error::WorkerError,
    event::decode,
    stats::WorkerStats,
    writer::{WriteError, Writer},
};
use lapin::{
    Channel, Confirmation,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    },
    types::{AMQPValue, FieldTable},
};
use likes_common::config::{AmqpSettings, Settings};
use likes_db::LikeChange;
use std::{ops::Range, sync::Arc, time::Duration};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

/// Consumes from the event queue on `channel` until `shutdown` is cancelled
/// (then flushes, commits and acks the current batch) or the channel fails.
pub async fn consume(
    channel: &Channel,
    settings: &Settings,
    writer: &Writer,
    stats: &Arc<WorkerStats>,
    shutdown: &CancellationToken,
) -> Result<(), WorkerError> {
    let worker = &settings.worker;
    // Confirms for the copies sent to the dead-letter queue.
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel
        .basic_qos(worker.effective_prefetch(), BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            settings.amqp.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let tag = consumer.tag();
    let settler = Settler {
        channel,
        writer,
        stats,
        settings: &settings.amqp,
        shutdown,
    };
    let mut sizing = BatchSizing::from_settings(worker);
    stats.batch_target_set(sizing.target());
    tracing::info!(
        queue = %settings.amqp.queue,
        batch.mode = worker.batch_mode.as_str(),
        batch.size = worker.batch_size,
        batch.min_size = worker.batch_min_size,
        batch.max_wait_ms = worker.batch_max_wait_ms,
        flush.budget_ms = worker.flush_budget_ms,
        prefetch = worker.effective_prefetch(),
        "consuming"
    );
    let mut broken = None;
    loop {
        let target = sizing.target();
        let batch = next_batch(&mut consumer, target, worker.batch_max_wait(), shutdown).await;
        let mut deliveries = Vec::with_capacity(batch.items.len());
        for item in batch.items {
            match item {
                Ok(delivery) => deliveries.push(delivery),
                Err(error) => broken = Some(error),
            }
        }
        if !deliveries.is_empty() {
            let size = deliveries.len();
            let span = info_span!("batch", batch.size = size);
            let settled = settler.settle(deliveries, target).instrument(span).await?;
            // Only a committed batch measures the database; a requeued one
            // measured an outage and the retry budget.
            if let Settled::Acked { flush } = settled {
                let next = sizing.observe(size, flush, batch.end);
                if next != target {
                    stats.batch_target_set(next);
                }
            }
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
    if let Err(error) = channel
        .basic_cancel(tag, BasicCancelOptions::default())
        .await
    {
        tracing::debug!(%error, "cancelling the consumer");
    }
    Ok(())
}

/// How a batch was settled.
#[derive(Debug, Clone, Copy)]
enum Settled {
    /// Committed (or dead-lettered) and acked, `flush` after it closed.
    Acked { flush: Duration },
    /// Handed back to the queue.
    Requeued,
}

/// Settles one batch on one channel.
struct Settler<'a> {
    channel: &'a Channel,
    writer: &'a Writer,
    stats: &'a WorkerStats,
    settings: &'a AmqpSettings,
    shutdown: &'a CancellationToken,
}

impl Settler<'_> {
    /// Dead-letters poison, writes the rest (isolating messages the database
    /// refuses), then acks the batch, or requeues it when the database stays
    /// unavailable. `target` is the size the batch aimed at, for the log.
    async fn settle(
        &self,
        deliveries: Vec<Delivery>,
        target: usize,
    ) -> Result<Settled, WorkerError> {
        let started = Instant::now();
        let size = deliveries.len();
        let last_tag = deliveries
            .iter()
            .map(|d| d.delivery_tag)
            .max()
            .expect("settle is called with at least one delivery");
        // Parallel vectors, so a slice of changes goes to the writer as it is.
        let mut decoded: Vec<&Delivery> = Vec::with_capacity(size);
        let mut changes: Vec<LikeChange> = Vec::with_capacity(size);
        for delivery in &deliveries {
            match decode(&delivery.data) {
                Ok(change) => {
                    decoded.push(delivery);
                    changes.push(change);
                }
                Err(reason) => self.dead_letter(delivery, &reason.to_string()).await?,
            }
        }
        match self.write_isolating(&decoded, &changes).await {
            Ok(tally) => {
                // Every delivery is now committed or dead-lettered.
                self.channel
                    .basic_ack(last_tag, BasicAckOptions { multiple: true })
                    .await?;
                let flush = started.elapsed();
                self.stats.batch_acked(size, flush);
                tracing::info!(
                    batch.size = size,
                    batch.target = target,
                    batch.pairs = tally.pairs,
                    batch.statements = tally.statements,
                    rows.changed = tally.rows_changed,
                    counters.changed = tally.counters_changed,
                    duration_ms = flush.as_millis() as u64,
                    "batch written"
                );
                Ok(Settled::Acked { flush })
            }
            Err(error) => {
                tracing::warn!(%error, batch.size = size, "batch failed; requeueing it");
                // Parts already committed come back too; writing them again
                // changes nothing, as every write is idempotent.
                self.channel
                    .basic_nack(
                        last_tag,
                        BasicNackOptions {
                            multiple: true,
                            requeue: true,
                        },
                    )
                    .await?;
                self.stats.batch_requeued();
                Ok(Settled::Requeued)
            }
        }
    }

    /// Writes `changes` (decoded from `deliveries`, index for index); when
    /// the database refuses a slice for good, splits it in halves until the
    /// refused messages stand alone, writes the rest and dead-letters those.
    /// One statement when all is well.
    async fn write_isolating(
        &self,
        deliveries: &[&Delivery],
        changes: &[LikeChange],
    ) -> Result<Tally, WriteError> {
        let mut tally = Tally::default();
        let mut pending: Vec<Range<usize>> = Vec::with_capacity(8);
        pending.push(0..changes.len());
        while let Some(range) = pending.pop() {
            if range.is_empty() {
                continue;
            }
            let changes = &changes[range.clone()];
            match self.writer.write(changes, self.shutdown).await {
                Ok(outcome) => {
                    self.stats
                        .statement_committed(changes.len(), outcome.rows_changed);
                    tally.add(&outcome);
                }
                Err(WriteError::Permanent(error)) if range.len() == 1 => {
                    self.dead_letter(deliveries[range.start], &error.to_string())
                        .await
                        .map_err(WriteError::DeadLetter)?;
                }
                Err(WriteError::Permanent(error)) => {
                    tracing::warn!(%error, slice.size = range.len(), "the database refuses part of a batch; splitting it");
                    let middle = range.start + range.len() / 2;
                    pending.push(middle..range.end);
                    pending.push(range.start..middle);
                }
                Err(error) => return Err(error),
            }
        }
        Ok(tally)
    }

    /// Publishes a copy of `delivery` to the dead-letter queue with the
    /// reason in the `x-likes-error` header and waits for the confirm; the
    /// original is then settled by the batch's ack.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), lapin::Error> {
        tracing::warn!(
            delivery.tag = delivery.delivery_tag,
            message.id = ?delivery.properties.message_id(),
            %reason,
            "dead-lettering a message that can never be written"
        );
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(
            dead_letters::REASON_HEADER.into(),
            AMQPValue::LongString(reason.into()),
        );
        headers.insert(
            "x-likes-queue".into(),
            AMQPValue::LongString(self.settings.queue.as_str().into()),
        );
        let properties = delivery
            .properties
            .clone()
            .with_delivery_mode(2)
            .with_headers(headers);
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.settings.dead_letter_queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &delivery.data,
                properties,
            )
            .await?
            .await?;
        if !matches!(confirm, Confirmation::Ack(None)) {
            return Err(lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
                lapin::ChannelState::Error,
                "dead-letter publish not confirmed",
            )));
        }
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
}

impl Tally {
    fn add(&mut self, outcome: &likes_db::WriteOutcome) {
        self.statements += 1;
        self.pairs += outcome.pairs;
        self.rows_changed += outcome.rows_changed;
        self.counters_changed += outcome.counters_changed;
    }
}
