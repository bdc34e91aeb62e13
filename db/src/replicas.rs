//! Reads on streaming replicas (`database.read_urls`): the api's reads go to
//! a replica that is up and not lagging, round robin, and to the primary
//! when none is.
//!
//! A background check (every [`check_interval`]) samples the primary's WAL
//! position, then asks each replica how far it has replayed: a replica that
//! has replayed what the primary had written at time T is at most `now - T`
//! behind, whether or not anything is being written (PostgreSQL's
//! `pg_last_xact_replay_timestamp()` alone would call an idle replica
//! stale). A replica that does not answer, or lags more than
//! `database.max_replica_lag_ms`, is skipped until a check finds it good
//! again; so is one whose checkout just failed. A replica that is no longer
//! in recovery (promoted) lags nothing. While the primary cannot be
//! sampled, replicas that answer stay usable: better a read that may be a
//! little stale than none.
//!
//! Metrics: `likes_db_replica_lag_seconds{replica}`,
//! `likes_db_replica_usable{replica}` and `likes_db_reads_total{target}`
//! (`primary` or the replica's address).

use crate::{DbError, PgPool, checkout, pool};
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Bool, Nullable},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures_util::future::BoxFuture;
use likes_common::config::DatabaseSettings;
use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often replicas are checked for a lag bound of `max_lag`: four
/// times per bound, between 100 ms and 1 s.
pub fn check_interval(max_lag: Duration) -> Duration {
    (max_lag / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
}

/// Where reads go: see the module documentation.
#[derive(Debug, Clone)]
pub struct ReadPools {
    primary: PgPool,
    primary_reads: metrics::Counter,
    replicas: Arc<[Replica]>,
    next: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct Replica {
    pool: PgPool,
    usable: AtomicBool,
    reads: metrics::Counter,
    lag: metrics::Gauge,
    usable_gauge: metrics::Gauge,
}

impl Replica {
    fn set_usable(&self, usable: bool) {
        self.usable.store(usable, Ordering::Relaxed);
        self.usable_gauge.set(if usable { 1.0 } else { 0.0 });
    }
}

impl ReadPools {
    /// Reads on `primary` and on every replica of `settings.read_urls`
    /// (none: the primary only). Replica pools connect in the background:
    /// a replica down at start is skipped, not fatal. Replicas are not used
    /// before the first check finds them good ([`ReadPools::spawn_checks`]).
    pub fn new(primary: PgPool, settings: &DatabaseSettings) -> Result<Self, DbError> {
        let replicas = settings
            .read_urls()
            .map(|url| {
                let pool = pool::build_unchecked(url, settings)?;
                let label = crate::tls::server_label(url);
                Ok(Replica {
                    pool,
                    usable: AtomicBool::new(false),
                    reads: metrics::counter!("likes_db_reads_total", "target" => label.clone()),
                    lag: metrics::gauge!("likes_db_replica_lag_seconds", "replica" => label.clone()),
                    usable_gauge: metrics::gauge!("likes_db_replica_usable", "replica" => label),
                })
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        Ok(Self {
            replicas: replicas.into(),
            ..Self::primary_only(primary)
        })
    }

    /// Every read on `primary`.
    pub fn primary_only(primary: PgPool) -> Self {
        Self {
            primary,
            primary_reads: metrics::counter!("likes_db_reads_total", "target" => "primary"),
            replicas: Arc::new([]),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The primary's pool.
    pub fn primary(&self) -> &PgPool {
        &self.primary
    }

    /// Runs the read `query` (owning what it reads with, borrowing only the
    /// connection) on a usable replica, in turn, else on the
    /// primary. A replica that fails it for a reason that may pass (down,
    /// unreachable) is skipped from then on until a check finds it good,
    /// and the read runs again on the primary: a replica that dies costs
    /// its callers nothing. A busy replica pool is an overload, answered
    /// as one.
    pub async fn read<T, F>(&self, query: F) -> Result<T, DbError>
    where
        T: Send,
        F: for<'c> Fn(&'c mut AsyncPgConnection) -> BoxFuture<'c, Result<T, DbError>> + Send + Sync,
    {
        if let Some(replica) = self.pick() {
            let read = async {
                let mut conn = checkout(&replica.pool).await?;
                query(&mut conn).await
            }
            .await;
            match read {
                Ok(value) => {
                    replica.reads.increment(1);
                    return Ok(value);
                }
                Err(DbError::PoolBusy) => return Err(DbError::PoolBusy),
                Err(error) if error.is_transient() => {
                    tracing::warn!(%error, "a read replica failed a read; reading from the primary");
                    replica.set_usable(false);
                }
                Err(error) => return Err(error),
            }
        }
        self.primary_reads.increment(1);
        // A connection found closed (the primary restarted or failed over)
        // is dropped by the pool: the next one may be good, so try again at
        // once, up to once per connection the pool may hold.
        let mut broken = 0;
        loop {
            let mut conn = checkout(&self.primary).await?;
            match query(&mut conn).await {
                Err(error) if error.is_broken_connection() && broken < self.primary.max_size() => {
                    broken += 1;
                }
                done => return done,
            }
        }
    }

    /// The next usable replica, round robin.
    fn pick(&self) -> Option<&Replica> {
        let count = self.replicas.len();
        (0..count)
            .map(|_| &self.replicas[self.next.fetch_add(1, Ordering::Relaxed) % count])
            .find(|replica| AtomicBool::load(&replica.usable, Ordering::Relaxed))
    }

    /// Checks the replicas every [`check_interval`] of `max_lag` until
    /// `stop` is cancelled (nothing to do without replicas).
    pub fn spawn_checks(&self, max_lag: Duration, stop: CancellationToken) {
        if self.replicas.is_empty() {
            return;
        }
        let reads = self.clone();
        tokio::spawn(async move {
            let mut history = History::new(max_lag);
            let mut ticker = tokio::time::interval(check_interval(max_lag));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = ticker.tick() => reads.check(&mut history, max_lag).await,
                }
            }
        });
    }

    async fn check(&self, history: &mut History, max_lag: Duration) {
        let primary = match primary_position(&self.primary).await {
            Ok(position) => {
                history.record(Instant::now(), position);
                true
            }
            Err(error) => {
                tracing::debug!(%error, "cannot sample the primary's WAL position");
                false
            }
        };
        for replica in self.replicas.iter() {
            let usable = match replay_position(&replica.pool).await {
                Ok(Replayed::NotInRecovery) => {
                    replica.lag.set(0.0);
                    true
                }
                Ok(Replayed::Upto(position)) if primary => {
                    let lag = history.lag(Instant::now(), position);
                    replica.lag.set(lag.as_secs_f64());
                    lag <= max_lag
                }
                Ok(Replayed::Upto(_)) => true,
                Err(error) => {
                    tracing::debug!(%error, "a replica did not answer its check");
                    false
                }
            };
            if usable != AtomicBool::load(&replica.usable, Ordering::Relaxed) {
                tracing::info!(
                    usable,
                    "read replica {}",
                    if usable { "in use" } else { "skipped" }
                );
            }
            replica.set_usable(usable);
        }
    }
}

/// The primary's WAL positions at recent times.
#[derive(Debug)]
struct History {
    samples: VecDeque<(Instant, i64)>,
    keep: Duration,
}

impl History {
    fn new(max_lag: Duration) -> Self {
        Self {
            samples: VecDeque::new(),
            keep: max_lag.saturating_mul(4).max(Duration::from_secs(1)),
        }
    }

    fn record(&mut self, at: Instant, position: i64) {
        self.samples.push_back((at, position));
        while self.samples.len() > 1
            && self
                .samples
                .front()
                .is_some_and(|(then, _)| at.saturating_duration_since(*then) > self.keep)
        {
            self.samples.pop_front();
        }
    }

    /// How far behind a replica that replayed up to `replayed` is at
    /// `now`: since the newest sample it has all of; as far back as the
    /// history goes when it has none of them.
    fn lag(&self, now: Instant, replayed: i64) -> Duration {
        let covered = self
            .samples
            .iter()
            .rev()
            .find(|(_, position)| *position <= replayed)
            .or(self.samples.front())
            .map_or(now, |(at, _)| *at);
        now.saturating_duration_since(covered)
    }
}

#[derive(QueryableByName)]
struct Position {
    #[diesel(sql_type = BigInt)]
    position: i64,
}

async fn primary_position(pool: &PgPool) -> Result<i64, DbError> {
    let mut conn = checkout(pool).await?;
    let found: Position =
        diesel::sql_query("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8 AS position")
            .get_result(&mut conn)
            .await?;
    Ok(found.position)
}

enum Replayed {
    NotInRecovery,
    Upto(i64),
}

async fn replay_position(pool: &PgPool) -> Result<Replayed, DbError> {
    #[derive(QueryableByName)]
    struct Replay {
        #[diesel(sql_type = Bool)]
        recovering: bool,
        #[diesel(sql_type = Nullable<BigInt>)]
        position: Option<i64>,
    }
    let mut conn = checkout(pool).await?;
    let found: Replay = diesel::sql_query(
        "SELECT pg_is_in_recovery() AS recovering,
                (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8 AS position",
    )
    .get_result(&mut conn)
    .await?;
    Ok(match (found.recovering, found.position) {
        (true, Some(position)) => Replayed::Upto(position),
        (true, None) => Replayed::Upto(0),
        (false, _) => Replayed::NotInRecovery,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_lags_since_the_newest_position_it_has_replayed() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut history = History::new(Duration::from_secs(1));
        history.record(at(0), 100);
        history.record(at(250), 200);
        history.record(at(500), 200);
        history.record(at(750), 300);
        let now = at(1000);
        assert_eq!(history.lag(now, 300), Duration::from_millis(250));
        assert_eq!(history.lag(now, 250), Duration::from_millis(500));
        assert_eq!(history.lag(now, 100), Duration::from_millis(1000));
        // Behind everything kept: at least as far back as the history goes.
        assert_eq!(history.lag(now, 50), Duration::from_millis(1000));
    }

    #[test]
    fn an_idle_primary_leaves_a_caught_up_replica_without_lag() {
        let start = Instant::now();
        let mut history = History::new(Duration::from_secs(1));
        for ms in [0, 250, 500] {
            history.record(start + Duration::from_millis(ms), 100);
        }
        assert_eq!(
            history.lag(start + Duration::from_millis(500), 100),
            Duration::ZERO
        );
    }

    #[test]
    fn old_samples_are_dropped_but_never_the_last() {
        let start = Instant::now();
        let mut history = History::new(Duration::from_millis(100));
        history.record(start, 1);
        history.record(start + Duration::from_secs(10), 2);
        assert_eq!(history.samples.len(), 1);
        history.record(start + Duration::from_secs(20), 3);
        assert_eq!(history.samples.len(), 1);
    }

    #[test]
    fn checks_run_four_times_per_bound_within_limits() {
        assert_eq!(
            check_interval(Duration::from_secs(1)),
            Duration::from_millis(250)
        );
        assert_eq!(
            check_interval(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
        assert_eq!(
            check_interval(Duration::from_secs(60)),
            Duration::from_secs(1)
        );
    }
}
