//! PostgreSQL past one server, on real local clusters (testkit
//! `pg_cluster`: a primary and streaming standbys from the installed
//! PostgreSQL 15, beside the machine's own server): reads on a replica,
//! a lagging or stopped replica, a failover under load with a synchronous
//! standby, and what one with an asynchronous standby loses. Each test
//! starts a cluster of its own; they run one at a time.
//!
//! Where PostgreSQL 15's binaries are not installed, every test is
//! reported ignored with the reason; `make test` (`--include-ignored`)
//! runs them anyway, and there a missing PostgreSQL fails them.

mod failover;
mod fixture;
mod reads;

use libtest_mimic::{Arguments, Failed, Trial};
use likes_common::{Settings, config::SecretUrl};
use likes_testkit::{TestEnv, pg_cluster::PgCluster};
use std::{future::Future, pin::Pin, process::ExitCode};

type Body = fn() -> Pin<Box<dyn Future<Output = anyhow::Result<()>>>>;

fn main() -> ExitCode {
    if fixture::is_orphan_helper() {
        return fixture::orphan_helper();
    }
    let mut args = Arguments::from_args();
    // One at a time: each runs a cluster and a load on two cores.
    args.test_threads = Some(1);
    let tests: [(&str, Body); 6] = [
        (
            "fixture::a_killed_test_process_leaves_no_server_behind",
            || Box::pin(fixture::a_killed_test_process_leaves_no_server_behind()),
        ),
        (
            "reads::a_read_storm_on_a_replica_costs_the_primary_nothing",
            || Box::pin(reads::a_read_storm_on_a_replica_costs_the_primary_nothing()),
        ),
        (
            "reads::a_lagging_replica_is_skipped_until_it_catches_up",
            || Box::pin(reads::a_lagging_replica_is_skipped_until_it_catches_up()),
        ),
        (
            "reads::a_stopped_replica_moves_reads_to_the_primary",
            || Box::pin(reads::a_stopped_replica_moves_reads_to_the_primary()),
        ),
        (
            "failover::a_synchronous_standby_promoted_under_load_loses_no_like",
            || Box::pin(failover::a_synchronous_standby_promoted_under_load_loses_no_like()),
        ),
        (
            "failover::an_asynchronous_standby_cut_off_loses_what_it_missed",
            || Box::pin(failover::an_asynchronous_standby_cut_off_loses_what_it_missed()),
        ),
    ];
    let missing = PgCluster::installed().is_none();
    if missing {
        eprintln!(
            "ignored: PostgreSQL 15's binaries are not installed (apt-get install \
             postgresql-15); --include-ignored runs the tests anyway, and they fail"
        );
    }
    let trials = tests
        .into_iter()
        .map(|(name, body)| Trial::test(name, move || run(body())).with_ignored_flag(missing))
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// Runs a test body on a runtime of its own, so nothing it spawned
/// outlives it.
fn run(body: impl Future<Output = anyhow::Result<()>>) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("building a runtime: {e}")))?;
    runtime
        .block_on(body)
        .map_err(|error| Failed::from(format!("{error:#}")))
}

/// A test env whose database lives on `cluster`: `url` names the server(s)
/// (the database name is the env's own).
fn env_on(url: &str) -> anyhow::Result<TestEnv> {
    likes_service::telemetry::init_for_tests();
    let mut base = Settings::defaults();
    base.database.url = SecretUrl::new(url);
    base.database.pool_size = 4.try_into()?;
    TestEnv::on(base)
}

/// The env's database name.
fn database_name(env: &TestEnv) -> anyhow::Result<String> {
    let (_, name) = likes_testkit::split_database_url(env.settings.database.url.expose())?;
    Ok(name.to_owned())
}
