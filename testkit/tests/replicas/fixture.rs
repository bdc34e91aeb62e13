//! The fixture's own promise: a test process killed mid-way leaves no
//! PostgreSQL server running and no directory behind. This binary, run
//! again with [`HELPER_VAR`] set, plays the test process that gets killed.

use likes_testkit::process::alive;
use likes_testkit::{
    eventually,
    pg_cluster::{PgCluster, Replication},
};
use std::{path::PathBuf, process::ExitCode, time::Duration};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Set on the child: start a primary and a standby, print the directory
/// and the postmasters' pids, wait.
const HELPER_VAR: &str = "LIKES_PG_ORPHAN_HELPER";

pub fn is_orphan_helper() -> bool {
    std::env::var_os(HELPER_VAR).is_some()
}

/// The killed test process: starts a cluster, prints its directory, then
/// waits to be killed (at most ten minutes).
pub fn orphan_helper() -> ExitCode {
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        match PgCluster::start(1, Replication::Asynchronous).await {
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

pub async fn a_killed_test_process_leaves_no_server_behind() -> anyhow::Result<()> {
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
    let postmasters: Vec<u32> = ["n0", "n1"]
        .iter()
        .map(|node| {
            let pid_file = std::fs::read_to_string(dir.join(node).join("postmaster.pid"))?;
            Ok(pid_file.lines().next().unwrap_or_default().trim().parse()?)
        })
        .collect::<anyhow::Result<_>>()?;
    assert!(
        postmasters.iter().all(|pid| alive(*pid)),
        "both servers run"
    );

    helper.start_kill()?;
    helper.wait().await?;
    eventually(
        Duration::from_secs(30),
        "the orphaned servers to stop and their directory to go",
        || {
            let (dir, postmasters) = (dir.clone(), postmasters.clone());
            async move {
                let gone = !dir.exists() && !postmasters.iter().any(|pid| alive(*pid));
                Ok(gone.then_some(()))
            }
        },
    )
    .await
}
