//! The example clients (Rust, and Python with stubs from grpcio-tools)
//! against the real service: the token, a broker outage each rides out by
//! honouring RetryInfo, their feed page, and a refusal without the token.

use likes_common::config::Secret;
use likes_testkit::{RunningApi, TestEnv, proxy::FaultProxy, tools};
use std::{path::Path, process::Output, time::Duration};
use tokio::process::Command;

const TOKEN: &str = "example-token";

/// An api that wants [`TOKEN`] with its broker behind a proxy, and a worker.
struct Service {
    env: TestEnv,
    proxy: FaultProxy,
    api: RunningApi,
    _worker: likes_testkit::RunningWorker,
}

impl Service {
    async fn start() -> anyhow::Result<Self> {
        let mut env = TestEnv::new();
        env.settings.api.auth_token = Secret::new(TOKEN);
        let proxy = FaultProxy::start("127.0.0.1:5672".parse()?).await?;
        let api = RunningApi::spawn_with(&env.settings_with_broker_at(proxy.addr())).await?;
        let _worker = env.spawn_worker().await?;
        Ok(Self {
            env,
            proxy,
            api,
            _worker,
        })
    }

    /// Runs `client` (liking p1 and p2 as u1) while the broker is away for
    /// its first 1.5 s; checks it retried, printed the page, and that both
    /// likes are stored.
    async fn ride_out_an_outage(&self, mut client: Command) -> anyhow::Result<()> {
        self.proxy.cut();
        let run = client
            .args(["--user", "u1", "p1", "p2"])
            .env("LIKES_TOKEN", TOKEN)
            .kill_on_drop(true)
            .output();
        let restore = async {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            self.proxy.restore();
        };
        let (output, ()) =
            tokio::join!(tokio::time::timeout(Duration::from_secs(60), run), restore);
        let output = output??;
        let (stdout, stderr) = texts(&output);
        assert!(output.status.success(), "{stdout}{stderr}");
        let retries: u32 = stderr
            .lines()
            .find_map(|line| line.strip_prefix("liked 2 posts, "))
            .and_then(|rest| rest.strip_suffix(" retries"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{stderr}"));
        assert!(retries >= 1, "it rode out the outage by retrying: {stderr}");
        // A line a post; the counts trail the writes, so 0 or 1.
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{stdout}");
        for (line, post) in lines.iter().zip(["p1", "p2"]) {
            let fresh = format!("{post} 1 liked");
            let trailing = format!("{post} 0 not-liked");
            assert!(*line == fresh || *line == trailing, "{line}");
        }
        self.env
            .wait_for_count("p1", 1, Duration::from_secs(20))
            .await?;
        self.env
            .wait_for_count("p2", 1, Duration::from_secs(20))
            .await
    }

    /// Runs `client` without the token: it must fail, saying why.
    async fn refused_without_the_token(&self, mut client: Command) -> anyhow::Result<()> {
        let output = client
            .args(["--user", "u2", "p1"])
            .env_remove("LIKES_TOKEN")
            .kill_on_drop(true)
            .output()
            .await?;
        let (stdout, stderr) = texts(&output);
        assert!(!output.status.success(), "{stdout}");
        assert!(stderr.contains("bearer token"), "{stderr}");
        Ok(())
    }
}

fn texts(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rust_example_retries_through_an_outage_and_prints_the_feed_page() -> anyhow::Result<()>
{
    let service = Service::start().await?;
    let rust = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_likes-example"));
        command.args(["--addr", &format!("http://{}", service.api.addr)]);
        command
    };
    service.ride_out_an_outage(rust()).await?;
    service.refused_without_the_token(rust()).await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs grpcio-tools and grpcio-status from `make tools`; `make test` runs it"]
async fn the_python_example_retries_through_an_outage_and_prints_the_feed_page()
-> anyhow::Result<()> {
    let python = tools::require("python");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // The stubs, generated from the contract as the example's docstring says.
    let stubs = tempfile::tempdir()?;
    let generated = Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root.join("proto/proto"))
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .arg("likes/v1/likes.proto")
        .output()
        .await?;
    assert!(generated.status.success(), "{:?}", texts(&generated));
    let service = Service::start().await?;
    let client = || {
        let mut command = Command::new(&python);
        command
            .arg(root.join("examples/python/client.py"))
            .args(["--addr", &service.api.addr.to_string()])
            .env("PYTHONPATH", stubs.path());
        command
    };
    service.ride_out_an_outage(client()).await?;
    service.refused_without_the_token(client()).await
}
