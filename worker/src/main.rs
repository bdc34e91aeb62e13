//! `likes-worker`: parses its command line, loads settings, starts
//! telemetry, consumes until SIGINT/SIGTERM, then flushes its batch and
//! exits 0.

/// mimalloc: the request path allocates many small, short-lived buffers
/// (protobuf, HTTP/2 frames, AMQP frames); glibc's malloc cost about 10% of
/// the CPU in profiles of `make loadtest`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand, error::ErrorKind};
use likes_common::{
    Settings,
    cli::{self, ConfigArgs},
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
    settings: ConfigArgs,
    /// Exit 0 if the worker's metrics endpoint (worker.metrics_listen)
    /// answers GET /healthz: alive, whatever the broker does (for container
    /// health checks); starts no worker.
    #[arg(long)]
    health_check: bool,
    /// With --health-check: ask GET /readyz instead, exit 0 only while the
    /// worker consumes every queue of worker.shards.
    #[arg(long, requires = "health_check")]
    ready: bool,
    /// With --health-check: the process id of the worker to check; without
    /// it, the one likes-worker process in this PID namespace.
    #[arg(long, value_name = "N", requires = "health_check")]
    pid: Option<u32>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the settings in effect as TOML (secrets masked) and exit; exit 2
    /// with the error if they are invalid.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.health_check && cli.command.is_some() {
        // Not `args_conflicts_with_subcommands`: that refuses `--config` too.
        Cli::command()
            .error(
                ErrorKind::ArgumentConflict,
                "--health-check cannot be used with a command",
            )
            .exit();
    }
    let settings = match cli.settings.load() {
        Ok(settings) => settings,
        Err(err) => return cli::settings_failure(&err),
    };
    if let Some(Command::CheckConfig) = cli.command {
        return cli.settings.check_config("likes-worker", &settings);
    }
    let mode = if cli.health_check {
        Mode::HealthCheck {
            pid: cli.pid,
            ready: cli.ready,
        }
    } else {
        Mode::Work
    };
    let outcome = likes_common::runtime::block_on(run(settings, mode))
        .context("starting the tokio runtime")
        .and_then(|outcome| outcome);
    cli::exit_code(outcome)
}

/// What the process is started for.
#[derive(Debug)]
enum Mode {
    Work,
    HealthCheck { pid: Option<u32>, ready: bool },
}

async fn run(settings: Settings, mode: Mode) -> anyhow::Result<()> {
    match mode {
        Mode::HealthCheck { pid, ready: false } => {
            return likes_worker::health_check(&settings, pid).await;
        }
        Mode::HealthCheck { pid, ready: true } => {
            return likes_worker::readiness_check(&settings, pid).await;
        }
        Mode::Work => {}
    }
    let traces = telemetry::otel::Traces::start(&settings.telemetry, "likes-worker", 1.0)?;
    // Every batch is traced: there are few, and each may carry traced calls.
    telemetry::init_with(settings.log.format, "info", traces.as_ref());
    telemetry::serve_metrics(
        &settings.worker.metrics_listen,
        "LIKES__WORKER__METRICS_LISTEN",
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
