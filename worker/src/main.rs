//! `likes-worker`: loads settings, starts telemetry, consumes until
//! SIGINT/SIGTERM, then flushes its batch and exits 0.

/// mimalloc: the request path allocates many small, short-lived buffers
/// (protobuf, HTTP/2 frames, AMQP frames); glibc's malloc cost about 10% of
/// the CPU in profiles of `make loadtest`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use anyhow::Context;
use likes_common::{Settings, shutdown, telemetry};
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    likes_common::runtime::block_on(run()).context("starting the tokio runtime")?
}

async fn run() -> anyhow::Result<()> {
    let settings = Settings::load().context("loading settings")?;
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|arg| arg == "--health-check") {
        let pid = likes_worker::pid_argument(&args)?;
        return likes_worker::health_check(&settings, pid).await;
    }
    telemetry::init(settings.log.format, "info");
    telemetry::serve_metrics(
        &settings.worker.metrics_listen,
        "LIKES__WORKER__METRICS_LISTEN",
    )?;
    tracing::debug!(?settings, "settings loaded");
    let worker = likes_worker::Worker::build(&settings).await?;
    let token = CancellationToken::new();
    shutdown::cancel_on_signal(token.clone());
    worker.run_until_stopped(token).await
}
