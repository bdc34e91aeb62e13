//! The fixture's own promise: a test process killed mid-way leaves no node
//! running and no directory behind. This binary, run again with
//! [`HELPER_VAR`] set, plays the test process that gets killed.

use likes_testkit::process::alive;
use likes_testkit::{cluster::Cluster, eventually};
use std::{path::PathBuf, process::ExitCode, time::Duration};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Set on the child: start a one-node cluster, print its directory, wait.
const HELPER_VAR: &str = "LIKES_CLUSTER_ORPHAN_HELPER";

pub fn is_orphan_helper() -> bool {
    std::env::var_os(HELPER_VAR).is_some()
}

/// The killed test process: starts a one-node cluster, prints its
/// directory, then waits to be killed (at most ten minutes).
pub fn orphan_helper() -> ExitCode {
    let Some(installation) = likes_testkit::cluster::Installation::find() else {
        return ExitCode::FAILURE;
    };
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        match Cluster::start(installation, 1).await {
            Ok(cluster) => {
                println!("{}", cluster.dir().display());
                tokio::time::sleep(Duration::from_secs(600)).await;
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("helper cannot start its cluster: {error:?}");
                ExitCode::FAILURE
            }
        }
    })
}

pub async fn a_killed_test_process_leaves_no_node_behind() -> anyhow::Result<()> {
    crate::installation().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut helper = tokio::process::Command::new(std::env::current_exe()?)
        .env(HELPER_VAR, "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = helper.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let dir = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await??
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("the helper ended without starting its cluster"))?;
    let beam: u32 = std::fs::read_to_string(dir.join("rc1").join("pid"))?
        .trim()
        .parse()?;
    assert!(alive(beam), "the node runs");

    helper.start_kill()?;
    helper.wait().await?;
    eventually(
        Duration::from_secs(30),
        "the orphaned node to be killed and its directory removed",
        || {
            let dir = dir.clone();
            async move {
                let gone = !dir.exists() && !alive(beam);
                Ok(gone.then_some(()))
            }
        },
    )
    .await
}
