//! Looking at the system under load without disturbing what is measured:
//! the measured database through a connection that counts its own
//! statements, and that database's committed transactions from
//! `pg_stat_database`, read from the `postgres` database so the reading
//! itself is not counted. (The queue depth is in [`crate::broker`].)

use crate::scenario::{Ledger, Names, RunExpectations};
use anyhow::Context;
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Text},
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use likes_common::config::SecretUrl;
use likes_testkit::verify::{self, Scope, Stored, Verification};
use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::time::Instant;

/// A connection to the measured database that counts the statements it
/// runs: each is a transaction of its own (autocommit), which the
/// transactions-per-like figure must not charge to the system.
pub struct Probe {
    conn: AsyncPgConnection,
    own: Arc<AtomicU64>,
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probe")
            .field("own", &self.own)
            .finish_non_exhaustive()
    }
}

impl Probe {
    /// Connects; `own` is shared by every probe of one measurement.
    pub async fn connect(url: &SecretUrl, own: Arc<AtomicU64>) -> anyhow::Result<Self> {
        let conn = AsyncPgConnection::establish(url.expose())
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(Self { conn, own })
    }

    /// The connection, for exactly one statement.
    pub fn statement(&mut self) -> &mut AsyncPgConnection {
        self.own.fetch_add(1, Ordering::Relaxed);
        &mut self.conn
    }

    /// Rows of this run in `likes`, and how many of them are liked.
    pub async fn stored(&mut self, like_pattern: &str) -> anyhow::Result<Stored> {
        verify::stored(self.statement(), Scope::Posts(like_pattern)).await
    }

    /// The run's counters summed: its liked pairs, from one row per post
    /// (cheap at any volume, unlike [`Probe::stored`]).
    pub async fn counted(&mut self, like_pattern: &str) -> anyhow::Result<i64> {
        verify::counted(self.statement(), Scope::Posts(like_pattern)).await
    }

    /// Verifies the run's rows against its ledger (one transaction).
    pub async fn verify(&mut self, ledger: &Ledger, names: &Names) -> anyhow::Result<Verification> {
        let expected = RunExpectations { ledger, names };
        verify::verify(
            self.statement(),
            Scope::Posts(&names.like_pattern()),
            &expected,
        )
        .await
    }
}

#[derive(QueryableByName)]
struct Commits {
    #[diesel(sql_type = BigInt)]
    xact_commit: i64,
}

/// Committed transactions of one database, from `pg_stat_database`.
pub struct CommitCounter {
    conn: AsyncPgConnection,
    database: String,
}

impl fmt::Debug for CommitCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommitCounter")
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl CommitCounter {
    /// Connects to the `postgres` database of the server `url` names.
    pub async fn connect(url: &SecretUrl) -> anyhow::Result<Self> {
        let (server, database) = likes_db::split_database_url(url.expose())
            .with_context(|| format!("reading the database name of {url}"))?;
        let conn = AsyncPgConnection::establish(&format!("{server}/postgres"))
            .await
            .with_context(|| format!("connecting to the postgres database next to {url}"))?;
        Ok(Self {
            conn,
            database: database.to_owned(),
        })
    }

    /// The database's committed transactions as the statistics show them now.
    pub async fn read(&mut self) -> anyhow::Result<u64> {
        let row: Commits = diesel::sql_query(
            "SELECT coalesce(sum(xact_commit), 0)::int8 AS xact_commit
             FROM pg_stat_database WHERE datname = $1",
        )
        .bind::<Text, _>(&self.database)
        .get_result(&mut self.conn)
        .await?;
        Ok(u64::try_from(row.xact_commit).unwrap_or(0))
    }

    /// The count once every backend has reported: PostgreSQL 15 sessions
    /// flush their statistics at most once a second, so wait until the count
    /// has not moved for a while (at most `limit`).
    pub async fn settled(&mut self, limit: Duration) -> anyhow::Result<u64> {
        const QUIET: Duration = Duration::from_millis(1500);
        let deadline = Instant::now() + limit;
        let mut last = self.read().await?;
        let mut since = Instant::now();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.read().await?;
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= QUIET {
                break;
            }
        }
        Ok(last)
    }
}
