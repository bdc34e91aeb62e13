//! What a worker did: atomic counters for whoever holds the worker (tests,
//! the load generator), and the same events as Prometheus metrics.
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `likes_batches_total` | counter | statements committed (one transaction each) |
//! | `likes_events_written_total` | counter | events in committed statements |
//! | `likes_rows_written_total` | counter | `likes` rows inserted or changed |
//! | `likes_batch_events` | histogram | events per acked batch |
//! | `likes_batch_flush_seconds` | histogram | time from a batch's close to its ack |
//! | `likes_batches_acked_total` / `likes_batches_requeued_total` | counter | batches acked / batches requeued (one ack or nack of all their messages each) |
//! | `likes_dead_lettered_total` | counter | messages sent to the dead-letter queue |
//! | `likes_write_retries_total` | counter | failed write attempts retried in place |
//! | `likes_amqp_reconnects_total{role}` | counter | broker reconnections |
//! | `likes_amqp_connected{role}` | gauge | 1 while connected |
//! | `likes_queue_depth` | gauge | ready messages in the event queue |
//! | `likes_db_pool_connections{state}` | gauge | pool connections, `idle` or `in_use` |
//!
//! Their help texts are in `likes_service::telemetry::catalog`.

use hdrhistogram::Histogram;
use std::{
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// Longest flush the histogram tells apart; longer ones count as this.
const MAX_FLUSH_MICROS: u64 = 3_600_000_000;

/// Counters since the worker started, and the flush times of acked batches.
#[derive(Debug)]
pub struct WorkerStats {
    batches: AtomicU64,
    events: AtomicU64,
    dead_lettered: AtomicU64,
    requeued_batches: AtomicU64,
    /// Microseconds. Two significant digits are plenty for a p99 and keep
    /// the histogram to a few KiB however long the worker runs, unlike a
    /// list of every flush.
    flush_micros: Mutex<Histogram<u64>>,
}

impl Default for WorkerStats {
    fn default() -> Self {
        Self {
            batches: AtomicU64::default(),
            events: AtomicU64::default(),
            dead_lettered: AtomicU64::default(),
            requeued_batches: AtomicU64::default(),
            flush_micros: Mutex::new(
                Histogram::new_with_bounds(1, MAX_FLUSH_MICROS, 2)
                    .expect("constant bounds: 1 <= low, high >= 2 * low, 2 significant digits"),
            ),
        }
    }
}

impl WorkerStats {
    /// Statements committed (one database transaction each).
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Events in committed statements.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Messages sent to the dead-letter queue.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }

    /// Batches handed back to the queue (nack with requeue).
    pub fn requeued_batches(&self) -> u64 {
        self.requeued_batches.load(Ordering::Relaxed)
    }

    /// A copy of the flush times (batch close to ack) of acked batches, in
    /// microseconds: for whoever holds the worker, e.g. for percentiles.
    pub fn flush_micros(&self) -> Histogram<u64> {
        self.flush_micros
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn statement_committed(&self, events: usize, rows_changed: i64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(events as u64, Ordering::Relaxed);
        metrics::counter!("likes_batches_total").increment(1);
        metrics::counter!("likes_events_written_total").increment(events as u64);
        metrics::counter!("likes_rows_written_total").increment(rows_changed.max(0) as u64);
    }

    pub(crate) fn batch_acked(&self, size: usize, flush: Duration) {
        metrics::counter!("likes_batches_acked_total").increment(1);
        metrics::histogram!("likes_batch_events").record(size as f64);
        metrics::histogram!("likes_batch_flush_seconds").record(flush.as_secs_f64());
        let micros = u64::try_from(flush.as_micros()).unwrap_or(u64::MAX).max(1);
        self.flush_micros
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .saturating_record(micros);
    }

    pub(crate) fn batch_requeued(&self) {
        self.requeued_batches.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("likes_batches_requeued_total").increment(1);
    }

    pub(crate) fn dead_lettered_one(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("likes_dead_lettered_total").increment(1);
    }
}
