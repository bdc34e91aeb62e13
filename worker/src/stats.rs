//! Counters of what a worker did, shared with whoever wants to read them
//! (tests, the load generator, logs).

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters since the worker started.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Batches committed (one database transaction each).
    pub batches: AtomicU64,
    /// Events in committed batches.
    pub events: AtomicU64,
    /// Messages sent to the dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// Batches handed back to the queue (nack with requeue).
    pub requeued_batches: AtomicU64,
}

impl WorkerStats {
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }

    pub fn requeued_batches(&self) -> u64 {
        self.requeued_batches.load(Ordering::Relaxed)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
