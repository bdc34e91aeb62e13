//! Committed transactions of a database, as `pg_stat_database` reports
//! them: what a read or a batch costs PostgreSQL, for tests and the load
//! test alike.

use anyhow::Context;
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Text},
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use likes_common::config::SecretUrl;
use std::{fmt, time::Duration};
use tokio::time::Instant;

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
        let (server, database) = crate::split_database_url(url.expose())
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

    /// The count once every busy backend has reported: PostgreSQL 15
    /// sessions flush their statistics at most once a second, so wait until
    /// the count has not moved for a while (at most `limit`).
    pub async fn settled(&mut self, limit: Duration) -> anyhow::Result<u64> {
        self.quiet_for(Duration::from_millis(1500), limit).await
    }

    /// The count once every backend has reported, even one that went idle
    /// right after a flush: such a session reports the rest after
    /// PostgreSQL's idle interval (10 s), so wait for 11 s of quiet. Exact
    /// for counting a few statements; autovacuum may still add some.
    pub async fn idle(&mut self) -> anyhow::Result<u64> {
        self.quiet_for(Duration::from_secs(11), Duration::from_secs(60))
            .await
    }

    async fn quiet_for(&mut self, quiet: Duration, limit: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + limit;
        let mut last = self.read().await?;
        let mut since = Instant::now();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.read().await?;
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                break;
            }
        }
        Ok(last)
    }
}
