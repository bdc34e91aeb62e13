//! Writes a batch to PostgreSQL, retrying in place while the failure looks
//! transient.
//!
//! A failing batch stays unacked and is retried here with capped exponential
//! backoff for at most `retry_budget`, rather than nacked and redelivered at
//! once: redelivery in a loop would hammer a database that is down, and on a
//! quorum queue every requeue counts towards `x-delivery-limit`, which would
//! dead-letter healthy likes during an outage. The budget keeps the messages
//! well inside RabbitMQ's consumer timeout.

use backon::{BackoffBuilder, ExponentialBuilder};
use likes_common::config::WorkerSettings;
use likes_db::{DbError, LikeChange, PgPool, WriteOutcome, repository};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The backoff between attempts: starts here, doubles, with jitter...
const RETRY_INITIAL: Duration = Duration::from_millis(100);
/// ... up to this: a database back after an outage waits at most this long
/// for the next attempt.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The least time an attempt gets, even when the budget is nearly spent.
const MIN_ATTEMPT: Duration = Duration::from_millis(100);

/// Why a batch was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Still failing after the retry budget, or shutdown came first: the
    /// batch should go back to the queue.
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: DbError },
    /// Fails the same way every time.
    #[error("permanent database error: {0}")]
    Permanent(DbError),
}

/// Writes batches through the pool.
#[derive(Debug, Clone)]
pub struct Writer {
    pool: PgPool,
    backoff: ExponentialBuilder,
    retry_budget: Duration,
}

impl Writer {
    pub fn new(pool: PgPool, settings: &WorkerSettings) -> Self {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(RETRY_INITIAL)
            .with_max_delay(RETRY_MAX)
            .with_jitter()
            .without_max_times();
        Self {
            pool,
            backoff,
            retry_budget: settings.retry_budget(),
        }
    }

    /// Writes `changes` in one statement, retrying transient failures until
    /// the budget is spent or `shutdown` is cancelled.
    pub async fn write(
        &self,
        changes: &[LikeChange],
        shutdown: &CancellationToken,
    ) -> Result<WriteOutcome, WriteError> {
        let started = Instant::now();
        let mut delays = self.backoff.build();
        let mut attempts = 0;
        loop {
            attempts += 1;
            // An attempt gets what is left of the budget: a database that
            // takes the statement and never answers (a stalled network)
            // must not hold the batch past it.
            let left = self
                .retry_budget
                .saturating_sub(started.elapsed())
                .max(MIN_ATTEMPT);
            let attempt = tokio::time::timeout(left, self.attempt(changes)).await;
            let error = match attempt {
                Ok(Ok(outcome)) => return Ok(outcome),
                Ok(Err(error)) if !error.is_transient() => {
                    return Err(WriteError::Permanent(error));
                }
                Ok(Err(error)) => error,
                Err(_elapsed) => DbError::TimedOut(left),
            };
            let delay = delays.next().unwrap_or(self.retry_budget);
            if shutdown.is_cancelled() || started.elapsed() + delay > self.retry_budget {
                return Err(WriteError::GaveUp {
                    attempts,
                    last: error,
                });
            }
            metrics::counter!("likes_write_retries_total").increment(1);
            tracing::warn!(
                %error,
                attempt = attempts,
                retry_in_ms = delay.as_millis() as u64,
                "batch write failed; retrying"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    async fn attempt(&self, changes: &[LikeChange]) -> Result<WriteOutcome, DbError> {
        let mut conn = likes_db::checkout(&self.pool).await?;
        repository::write_batch(&mut conn, changes).await
    }
}
