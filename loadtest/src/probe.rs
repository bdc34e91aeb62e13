//! Looking at the system under load without disturbing what is measured:
//! the measured database through a connection that counts its own
//! statements (its committed transactions come from
//! `likes_testkit::commits`; the queue depth is in [`crate::broker`]).

use crate::scenario::{Ledger, Names, RunExpectations};
use anyhow::Context;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use likes_common::config::SecretUrl;
use likes_testkit::verify::{self, Scope, Stored, Verification};
use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

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
