//! The consumer loop: deliveries → batches → one write → one ack.
//!
//! Deliveries come with prefetch (at least one batch, by default two, so the
//! next batch streams in while one is written) and manual acks. Each batch is
//! settled before the next is collected, so one `multiple=true` ack on its
//! highest delivery tag covers exactly the batch.

use crate::{
    batcher::{BatchEnd, next_batch},
    error::WorkerError,
    event::decode,
    stats::WorkerStats,
    writer::{WriteError, Writer},
};
use lapin::{
    Channel,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicQosOptions, BasicRejectOptions,
    },
    types::FieldTable,
};
use likes_common::config::Settings;
use likes_db::LikeChange;
use std::sync::Arc;
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
    tracing::info!(
        queue = %settings.amqp.queue,
        batch.size = worker.batch_size,
        batch.max_wait_ms = worker.batch_max_wait_ms,
        prefetch = worker.effective_prefetch(),
        "consuming"
    );
    let mut broken = None;
    loop {
        let batch = next_batch(
            &mut consumer,
            worker.batch_size,
            worker.batch_max_wait(),
            shutdown,
        )
        .await;
        let mut deliveries = Vec::with_capacity(batch.items.len());
        for item in batch.items {
            match item {
                Ok(delivery) => deliveries.push(delivery),
                Err(error) => broken = Some(error),
            }
        }
        if !deliveries.is_empty() {
            let span = info_span!("batch", batch.size = deliveries.len());
            settle(channel, deliveries, writer, stats, shutdown)
                .instrument(span)
                .await?;
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

/// Dead-letters poison, writes the rest, then acks or requeues it.
async fn settle(
    channel: &Channel,
    deliveries: Vec<Delivery>,
    writer: &Writer,
    stats: &WorkerStats,
    shutdown: &CancellationToken,
) -> Result<(), WorkerError> {
    let started = Instant::now();
    let size = deliveries.len();
    let mut changes: Vec<LikeChange> = Vec::with_capacity(size);
    let mut last_good_tag = None;
    for delivery in &deliveries {
        match decode(&delivery.data) {
            Ok(change) => {
                changes.push(change);
                last_good_tag = Some(delivery.delivery_tag);
            }
            Err(reason) => {
                tracing::warn!(
                    delivery.tag = delivery.delivery_tag,
                    message.id = ?delivery.properties.message_id(),
                    %reason,
                    "dead-lettering a message that can never be written"
                );
                channel
                    .basic_reject(delivery.delivery_tag, BasicRejectOptions { requeue: false })
                    .await?;
                WorkerStats::add(&stats.dead_lettered, 1);
            }
        }
    }
    let Some(last_tag) = last_good_tag else {
        return Ok(());
    };
    match writer.write(&changes, shutdown).await {
        Ok(outcome) => {
            channel
                .basic_ack(last_tag, BasicAckOptions { multiple: true })
                .await?;
            WorkerStats::add(&stats.batches, 1);
            WorkerStats::add(&stats.events, changes.len() as u64);
            tracing::info!(
                batch.size = size,
                batch.pairs = outcome.pairs,
                rows.changed = outcome.rows_changed,
                counters.changed = outcome.counters_changed,
                duration_ms = started.elapsed().as_millis() as u64,
                "batch written"
            );
        }
        Err(error) => {
            tracing::warn!(%error, batch.size = size, "batch failed; requeueing it");
            channel
                .basic_nack(
                    last_tag,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await?;
            WorkerStats::add(&stats.requeued_batches, 1);
            if let WriteError::Permanent(_) = error {
                // The retry loop did not pace this one: pause before the
                // redelivery so a bad batch cannot spin the database.
                tokio::select! {
                    () = tokio::time::sleep(writer.max_backoff()) => {}
                    () = shutdown.cancelled() => {}
                }
            }
        }
    }
    Ok(())
}
