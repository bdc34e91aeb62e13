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
use std::{future::Future, ops::Range, time::Duration};
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
        // Pooled connections found closed, each retried at once: after a
        // restart or failover every idle connection is dead, and waiting a
        // growing backoff per dead connection would pause the writes for
        // seconds with a good server there.
        let mut broken = 0;
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
            let delay = if error.is_broken_connection() && broken < self.pool.max_size() {
                broken += 1;
                Duration::ZERO
            } else {
                delays.next().unwrap_or(self.retry_budget)
            };
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

    /// Writes `changes`; when the database refuses a slice for good, splits
    /// it in halves until the refused changes stand alone, and writes the
    /// rest. One statement when all is well. A transient failure that
    /// outlasts the retry budget ends it: the batch goes back to the queue.
    pub async fn write_isolating(
        &self,
        changes: &[LikeChange],
        shutdown: &CancellationToken,
    ) -> Result<Isolated, WriteError> {
        isolate(changes.len(), |range| self.write(&changes[range], shutdown)).await
    }

    async fn attempt(&self, changes: &[LikeChange]) -> Result<WriteOutcome, DbError> {
        let mut conn = likes_db::checkout(&self.pool).await?;
        repository::write_batch(&mut conn, changes).await
    }
}

/// What a batch's statements wrote, and the changes the database refused
/// for good (by index) with its reason.
#[derive(Debug, Default)]
pub struct Isolated {
    /// One per statement committed, with how many changes it wrote.
    pub written: Vec<(usize, WriteOutcome)>,
    pub refused: Vec<(usize, DbError)>,
}

/// The splitting of [`Writer::write_isolating`], over `len` changes written
/// by `write` a range at a time.
async fn isolate<F, Fut>(len: usize, mut write: F) -> Result<Isolated, WriteError>
where
    F: FnMut(Range<usize>) -> Fut,
    Fut: Future<Output = Result<WriteOutcome, WriteError>>,
{
    let mut isolated = Isolated::default();
    let mut pending: Vec<Range<usize>> = Vec::with_capacity(8);
    pending.push(0..len);
    while let Some(range) = pending.pop() {
        if range.is_empty() {
            continue;
        }
        match write(range.clone()).await {
            Ok(outcome) => isolated.written.push((range.len(), outcome)),
            Err(WriteError::Permanent(error)) if range.len() == 1 => {
                isolated.refused.push((range.start, error));
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
    Ok(isolated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> WriteError {
        WriteError::Permanent(DbError::Migration("refused".into()))
    }

    #[tokio::test]
    async fn refused_changes_are_split_out_and_the_rest_is_written_in_few_statements() {
        let bad = [3, 4, 17];
        let mut statements = Vec::new();
        let isolated = isolate(20, |range: Range<usize>| {
            statements.push(range.clone());
            let refuses = bad.iter().any(|b| range.contains(b));
            async move {
                if refuses {
                    Err(refused())
                } else {
                    Ok(WriteOutcome::default())
                }
            }
        })
        .await
        .expect("only permanent refusals");
        let mut refused: Vec<usize> = isolated.refused.iter().map(|(i, _)| *i).collect();
        refused.sort_unstable();
        assert_eq!(refused, bad);
        let written: usize = isolated.written.iter().map(|(n, _)| n).sum();
        assert_eq!(written, 17, "every other change written once");
        assert!(statements.len() < 20, "{statements:?}");
        assert_eq!(statements[0], 0..20, "one statement first");
    }

    #[tokio::test]
    async fn a_batch_without_refusals_is_one_statement_and_a_lasting_outage_ends_it() {
        let isolated = isolate(500, |_| async { Ok(WriteOutcome::default()) })
            .await
            .expect("written");
        assert_eq!(isolated.written.len(), 1);
        let gave_up = isolate(500, |_| async {
            Err(WriteError::GaveUp {
                attempts: 3,
                last: DbError::Unavailable,
            })
        })
        .await;
        assert!(matches!(gave_up, Err(WriteError::GaveUp { .. })));
    }
}
