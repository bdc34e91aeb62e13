//! Connecting: creating the database if missing, running the embedded
//! migrations and building the bb8 pool, behind a small circuit breaker
//! (see [`crate::circuit`]) so that checkouts during an outage fail fast.
//! Every connection is opened by [`crate::tls::establish`], so all of them
//! follow the URL's `sslmode` and `database.tls_ca_file`.

use crate::{
    DbError,
    circuit::{Admit, Circuit},
};
use diesel::migration::MigrationSource;
use diesel::{OptionalExtension, QueryableByName, sql_types::Text};
use diesel_async::{
    AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl,
    pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, bb8::Pool},
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::FutureExt;
use likes_common::config::DatabaseSettings;
use std::{sync::Arc, time::Duration};
use tokio_util::sync::CancellationToken;

/// The connection pool both binaries use: bb8, and the circuit that knows
/// whether the database was reachable a moment ago.
#[derive(Debug, Clone)]
pub struct PgPool {
    pool: Pool<AsyncPgConnection>,
    circuit: Arc<Circuit>,
    max_size: u32,
}

impl PgPool {
    /// The most connections the pool opens.
    pub fn max_size(&self) -> u32 {
        self.max_size
    }

    /// Connections open and idle.
    pub fn state(&self) -> bb8::State {
        self.pool.state()
    }

    /// Whether every connection the pool may have is open: a checkout that
    /// timed out then waited for one of them to be handed back (a
    /// connection handed back sits idle for a moment before a waiter takes
    /// it, so idle connections say nothing here). Connections that break
    /// are dropped, so in an outage fewer are open.
    fn is_busy(&self) -> bool {
        self.pool.state().connections >= self.max_size
    }
}

/// A connection borrowed from a [`PgPool`].
pub type PooledConnection<'a> =
    diesel_async::pooled_connection::bb8::PooledConnection<'a, AsyncPgConnection>;

/// Borrows a connection, waiting at most the pool's connect timeout; fails
/// at once with [`DbError::Unavailable`] while the circuit is open (the
/// database was unreachable moments ago), or as soon as a connection attempt
/// fails during the wait.
pub async fn checkout(pool: &PgPool) -> Result<PooledConnection<'_>, DbError> {
    let circuit = &pool.circuit;
    let admitted = circuit.admit();
    if admitted == Admit::Refuse {
        return Err(DbError::Unavailable);
    }
    let mut trial = TrialGuard {
        circuit,
        armed: admitted == Admit::Trial,
    };
    let mut failures = circuit.watch_failures();
    failures.mark_unchanged();
    let got = tokio::select! {
        biased;
        got = pool.pool.get() => got,
        _ = failures.changed() => {
            // The failure that woke us has opened the circuit already.
            trial.armed = false;
            return Err(DbError::Unavailable);
        }
    };
    match got {
        Ok(conn) => {
            trial.armed = false;
            circuit.succeeded(admitted);
            Ok(conn)
        }
        // Every connection is open and was in use all along: the pool is
        // busy, not the database down. An overload must not open the
        // circuit (which would fail every checkout for a while); a trial
        // checkout that met it hands the trial on (the guard).
        Err(bb8::RunError::TimedOut) if pool.is_busy() => Err(DbError::PoolBusy),
        Err(error) => {
            trial.armed = false;
            circuit.failed();
            Err(error.into())
        }
    }
}

/// Hands the trial on if a trial checkout is dropped before its outcome.
struct TrialGuard<'a> {
    circuit: &'a Circuit,
    armed: bool,
}

impl Drop for TrialGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.circuit.trial_abandoned();
        }
    }
}

/// bb8 reports each failed connection attempt here: it opens the circuit,
/// whose log line then says why the attempt failed.
#[derive(Debug, Clone)]
struct CircuitSink(Arc<Circuit>);

impl<E: std::fmt::Display> bb8::ErrorSink<E> for CircuitSink {
    fn sink(&self, error: E) {
        self.0.failed_because(Some(&error));
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<E>> {
        Box::new(self.clone())
    }
}

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// How long the circuit stays open after a failed connection: checkouts
/// fail at once meanwhile instead of each waiting the connect timeout, and
/// then one trial goes through. Short, since a read failed for nothing
/// costs a caller a retry, and long enough to spare a database that is
/// coming back a storm of connections.
pub const CIRCUIT_OPEN: Duration = Duration::from_millis(500);

/// Any 64-bit key, the same in every process: serialises concurrent migration
/// runs (an api and a worker starting together) on a session advisory lock.
pub const MIGRATION_LOCK_KEY: i64 = 0x6c69_6b65_735f_6d69; // "likes_mi"

/// How often a process waiting for another's migrations asks for the lock.
const MIGRATION_LOCK_POLL: Duration = Duration::from_millis(100);

/// Publishes the pool's use as `likes_db_pool_connections{state}` (`idle`,
/// `in_use`) every second until `stop` is cancelled.
pub fn spawn_pool_gauges(pool: PgPool, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let state = pool.state();
            let idle = f64::from(state.idle_connections);
            let open = f64::from(state.connections);
            metrics::gauge!("likes_db_pool_connections", "state" => "idle").set(idle);
            metrics::gauge!("likes_db_pool_connections", "state" => "in_use").set(open - idle);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
}

/// Creates the database if needed and runs migrations (or, without
/// `migrate_on_start`, checks that none is pending), and returns a pool.
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, DbError> {
    let url = settings.url.expose();
    let tls_ca_file = settings.tls_ca_file.as_str();
    if settings.migrate_on_start {
        ensure_database(url, tls_ca_file).await?;
        run_migrations(url, tls_ca_file).await?;
    } else {
        check_migrated(url, tls_ca_file).await?;
    }
    let (builder, manager, circuit) = pool_parts(url, settings);
    let pool = builder
        .build(manager)
        .await
        .map_err(|e| DbError::Pool(e.to_string()))?;
    Ok(PgPool {
        pool,
        circuit,
        max_size: settings.pool_size.get(),
    })
}

/// A pool on `url` (a read replica) with the pool settings of `settings`,
/// connecting in the background: a server down now is not an error.
pub fn build_unchecked(url: &str, settings: &DatabaseSettings) -> Result<PgPool, DbError> {
    // Checked here, as `connect` checks the primary's by connecting.
    crate::tls::Target::parse(url).map_err(|e| DbError::Pool(e.to_string()))?;
    let (builder, manager, circuit) = pool_parts(url, settings);
    Ok(PgPool {
        pool: builder.build_unchecked(manager),
        circuit,
        max_size: settings.pool_size.get(),
    })
}

type Manager = AsyncDieselConnectionManager<AsyncPgConnection>;

fn pool_parts(
    url: &str,
    settings: &DatabaseSettings,
) -> (bb8::Builder<Manager>, Manager, Arc<Circuit>) {
    let mut config = ManagerConfig::default();
    let ca_file = settings.tls_ca_file.clone();
    config.custom_setup = Box::new(move |url| {
        let url = url.to_owned();
        let ca_file = ca_file.clone();
        async move { crate::tls::establish(&url, &ca_file).await }.boxed()
    });
    let manager = Manager::new_with_config(url, config);
    let open = metrics::gauge!("likes_db_circuit_open", "server" => crate::tls::server_label(url));
    let circuit = Arc::new(Circuit::new(CIRCUIT_OPEN).reporting_to(open));
    let builder = Pool::builder()
        .max_size(settings.pool_size.get())
        // No `SELECT 1` before every checkout: it would double the
        // transactions a batch costs. A broken connection fails its query,
        // the error is retried, and bb8 drops the connection
        // (`has_broken`), so the next checkout gets a fresh one.
        .test_on_check_out(false)
        // Every connection open from the start and kept open: no spike
        // waits for connections to be set up, and a checkout that times
        // out with all of them in use is the pool being busy, not the
        // database being away (see `checkout`).
        .min_idle(Some(settings.pool_size.get()))
        .connection_timeout(settings.connect_timeout())
        .error_sink(Box::new(CircuitSink(Arc::clone(&circuit))));
    (builder, manager, circuit)
}

#[derive(QueryableByName)]
struct Exists {
    #[diesel(sql_type = Text)]
    #[allow(dead_code)]
    datname: String,
}

/// Creates the database named in `url` (either form, see
/// [`crate::tls::Target`]) unless it exists, connecting to the `postgres`
/// maintenance database of the same server (with the same parameters, so the
/// same TLS) to do so.
pub async fn ensure_database(url: &str, tls_ca_file: &str) -> Result<(), DbError> {
    let target = crate::tls::Target::parse(url)?;
    let name = target
        .dbname()
        .ok_or_else(|| DbError::InvalidUrl {
            url: likes_common::config::SecretUrl::new(url).to_string(),
            reason: "no database name (dbname)",
        })?
        .to_owned();
    let mut conn = target.with_dbname("postgres").connect(tls_ca_file).await?;
    let found = diesel::sql_query("SELECT datname FROM pg_database WHERE datname = $1")
        .bind::<Text, _>(&name)
        .get_result::<Exists>(&mut conn)
        .await
        .optional()?;
    if found.is_some() {
        return Ok(());
    }
    let create = format!("CREATE DATABASE {}", quote_identifier(&name));
    match diesel::sql_query(create).execute(&mut conn).await {
        Ok(_) => Ok(()),
        // Another process created it between our check and our CREATE: the
        // loser sees "already exists" or, mid-race, a unique violation on
        // pg_database's name index.
        Err(diesel::result::Error::DatabaseError(kind, info))
            if info.message().contains("already exists")
                || matches!(kind, diesel::result::DatabaseErrorKind::UniqueViolation) =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

diesel::define_sql_function! {
    /// Takes the session advisory lock `key` if free; whether it did.
    fn pg_try_advisory_lock(key: diesel::sql_types::BigInt) -> diesel::sql_types::Bool;
}

/// Runs the embedded migrations that have not run yet, one process at a
/// time; the versions it ran.
pub async fn run_migrations(url: &str, tls_ca_file: &str) -> Result<Vec<String>, DbError> {
    let mut conn = crate::tls::establish(url, tls_ca_file).await?;
    // Asked for again and again, not waited for in one statement: a
    // statement waiting holds a snapshot, and `CREATE INDEX CONCURRENTLY`
    // in the holder's migrations waits for every older snapshot, so the two
    // would deadlock.
    loop {
        let locked = diesel::select(pg_try_advisory_lock(MIGRATION_LOCK_KEY))
            .get_result::<bool>(&mut conn)
            .await?;
        if locked {
            break;
        }
        tokio::time::sleep(MIGRATION_LOCK_POLL).await;
    }
    // The harness drives the async connection with `block_in_place`, which
    // needs the multi-threaded runtime; both binaries and the tests use it.
    let mut harness = AsyncMigrationHarness::new(conn);
    let applied: Vec<String> = harness
        .run_pending_migrations(MIGRATIONS)
        .map_err(|e| DbError::Migration(e.to_string()))?
        .iter()
        .map(ToString::to_string)
        .collect();
    if !applied.is_empty() {
        tracing::info!(migrations.applied = ?applied, "database migrated");
    }
    // Dropping the connection ends the session and releases the lock.
    drop(harness.into_inner());
    Ok(applied)
}

#[derive(QueryableByName)]
struct AppliedVersion {
    #[diesel(sql_type = Text)]
    version: String,
}

/// Fails with [`DbError::NotMigrated`] unless every embedded migration has
/// run. Reads diesel's bookkeeping table only (no `CREATE`, which diesel's
/// own harness would try), so a role that cannot change the schema can.
pub async fn check_migrated(url: &str, tls_ca_file: &str) -> Result<(), DbError> {
    let mut conn = crate::tls::establish(url, tls_ca_file).await?;
    let applied: Vec<AppliedVersion> =
        diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
            .load(&mut conn)
            .await
            .map_err(|error| match error {
                diesel::result::Error::DatabaseError(_, ref info)
                    if info.message().contains("does not exist") =>
                {
                    DbError::NotMigrated {
                        pending: vec!["all".to_owned()],
                    }
                }
                other => other.into(),
            })?;
    let applied: std::collections::HashSet<String> =
        applied.into_iter().map(|row| row.version).collect();
    let pending: Vec<String> = MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .map_err(|e| DbError::Migration(e.to_string()))?
        .iter()
        .map(|migration| migration.name().version().to_string())
        .filter(|version| !applied.contains(version))
        .collect();
    if pending.is_empty() {
        Ok(())
    } else {
        Err(DbError::NotMigrated { pending })
    }
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_identifier("likes"), "\"likes\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }
}
