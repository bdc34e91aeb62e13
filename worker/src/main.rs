//! `likes-worker`: parses its command line, loads settings, starts
//! telemetry, consumes until SIGINT/SIGTERM, then flushes its batch and
//! exits 0.

/// mimalloc: the request path allocates many small, short-lived buffers
/// (protobuf, HTTP/2 frames, AMQP frames); glibc's malloc cost about 10% of
/// the CPU in profiles of `make loadtest`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use anyhow::Context;
use clap::Parser;
use likes_common::Settings;
use likes_service::{
    cli::{self, ServiceArgs, ServiceCommand, Start},
    shutdown, telemetry,
};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Consumes like events from RabbitMQ and writes them to PostgreSQL in
/// batches.
#[derive(Debug, Parser)]
#[command(name = "likes-worker", version, after_help = cli::SETTINGS_HELP)]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
    /// With --health-check: the process id of the worker to check; without
    /// it, the one likes-worker process in this PID namespace.
    #[arg(long, value_name = "N", requires = "health_check")]
    pid: Option<u32>,
    #[command(subcommand)]
    command: Option<ServiceCommand>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (settings, start) = match cli
        .service
        .start::<Cli>("likes-worker", cli.command.as_ref())
    {
        Ok(started) => started,
        Err(done) => return done,
    };
    let outcome = likes_service::runtime::block_on(run(settings, start, cli.pid))
        .context("starting the tokio runtime")
        .and_then(|outcome| outcome);
    cli::exit_code(outcome)
}

async fn run(settings: Settings, start: Start, pid: Option<u32>) -> anyhow::Result<()> {
    match start {
        Start::HealthCheck { ready: false } => {
            return likes_worker::health_check(&settings, pid).await;
        }
        Start::HealthCheck { ready: true } => {
            return likes_worker::readiness_check(&settings, pid).await;
        }
        Start::Serve => {}
    }
    let traces = telemetry::otel::Traces::start(&settings.telemetry, "likes-worker", 1.0)?;
    // Every batch is traced: there are few, and each may carry traced calls.
    telemetry::init_with(settings.log.format, "info", traces.as_ref());
    telemetry::serve_metrics(
        &settings.worker.metrics_listen,
        "LIKES__WORKER__METRICS_LISTEN",
        telemetry::catalog::Role::Worker,
    )?;
    tracing::debug!(?settings, "settings loaded");
    let worker = likes_worker::Worker::build(&settings).await?;
    let token = CancellationToken::new();
    shutdown::cancel_on_signal(token.clone());
    let stopped = worker.run_until_stopped(token).await;
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    stopped
}
