//! The service on a real three-node RabbitMQ cluster (testkit `cluster`):
//! node loss under load, and shards. One cluster is started for the whole binary, on
//! first use, shared by the tests, which run one at a time (each heals the
//! cluster first), and stopped and removed when the binary ends.
//!
//! Where `rabbitmq-server` is not installed, every test is reported ignored
//! with the reason; `make test` (`--include-ignored`) runs them anyway, and
//! there a missing RabbitMQ fails them.
//!
//! `cargo test -p likes-testkit --test cluster` (2½ to 4½ minutes on two
//! cores; each test prints what callers saw).

mod fixture;
mod node_loss;
mod shards;

use libtest_mimic::{Arguments, Failed, Trial};
use likes_testkit::cluster::{Cluster, Installation};
use std::{
    future::Future,
    pin::Pin,
    process::ExitCode,
    sync::{Arc, Mutex},
};

type Shared = Arc<Mutex<Option<Cluster>>>;
type Scenario =
    for<'a> fn(&'a mut Cluster) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + 'a>>;

fn main() -> ExitCode {
    if fixture::is_orphan_helper() {
        return fixture::orphan_helper();
    }
    let mut args = Arguments::from_args();
    // One scenario at a time: each owns the cluster while it runs.
    args.test_threads = Some(1);
    let shared: Shared = Arc::default();
    let scenarios: [(&str, Scenario); 4] = [
        (
            "node_loss::stopping_the_broker_on_the_node_in_use_loses_no_like",
            |cluster| Box::pin(node_loss::survive(cluster, node_loss::Fault::StopApp)),
        ),
        (
            "node_loss::killing_the_vm_of_the_node_in_use_loses_no_like",
            |cluster| Box::pin(node_loss::survive(cluster, node_loss::Fault::Kill)),
        ),
        (
            "node_loss::a_rolling_restart_of_every_node_loses_no_like",
            |cluster| {
                Box::pin(node_loss::survive(
                    cluster,
                    node_loss::Fault::RollingRestart,
                ))
            },
        ),
        (
            "shards::four_quorum_shards_spread_their_leaders_and_count_exactly",
            |cluster| Box::pin(shards::four_quorum_shards(cluster)),
        ),
    ];
    let missing = Installation::find().is_none();
    if missing {
        eprintln!(
            "ignored: rabbitmq-server is not installed (apt-get install rabbitmq-server); \
             --include-ignored runs the tests anyway, and they fail"
        );
    }
    let mut trials: Vec<Trial> = scenarios
        .into_iter()
        .map(|(name, scenario)| {
            let shared = Arc::clone(&shared);
            Trial::test(name, move || on_the_cluster(&shared, scenario))
        })
        .collect();
    trials.push(Trial::test(
        "fixture::a_test_process_killed_mid_way_leaves_no_node_behind",
        || run(fixture::a_killed_test_process_leaves_no_node_behind()),
    ));
    let trials = trials
        .into_iter()
        .map(|trial| trial.with_ignored_flag(missing))
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    let cluster = shared.lock().map(|mut c| c.take()).unwrap_or_default();
    if let Some(cluster) = cluster {
        let dir = cluster.dir().to_owned();
        drop(cluster);
        if dir.exists() {
            eprintln!("the cluster's directory {} outlived it", dir.display());
            return ExitCode::FAILURE;
        }
    }
    conclusion.exit_code()
}

/// Runs `scenario` on the shared cluster, starting it on first use.
fn on_the_cluster(shared: &Shared, scenario: Scenario) -> Result<(), Failed> {
    let installation = installation()?;
    let mut guard = shared
        .lock()
        .map_err(|_| Failed::from("an earlier test panicked holding the cluster"))?;
    run(async move {
        if guard.is_none() {
            let started = tokio::time::Instant::now();
            let cluster = Cluster::start(installation, 3).await?;
            eprintln!(
                "cluster of {} nodes up in {:.1} s",
                cluster.len(),
                started.elapsed().as_secs_f64()
            );
            *guard = Some(cluster);
        }
        let cluster = guard.as_mut().expect("set just above");
        scenario(cluster).await
    })
}

/// The installed RabbitMQ; a test that runs without it fails.
pub fn installation() -> Result<Installation, Failed> {
    Installation::find()
        .ok_or_else(|| "rabbitmq-server is not installed (apt-get install rabbitmq-server)".into())
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
