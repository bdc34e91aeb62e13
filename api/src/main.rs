//! `likes-api`: parses its command line, loads settings, starts telemetry,
//! serves until SIGINT/SIGTERM.

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

/// The gRPC front door of the likes service: makes each Like and Unlike
/// durable in RabbitMQ and serves the counts from PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "likes-api", version, after_help = cli::SETTINGS_HELP)]
struct Cli {
    #[command(flatten)]
    settings: ConfigArgs,
    /// Exit 0 if this api's metrics endpoint (api.metrics_listen) answers
    /// GET /healthz: alive, whatever the broker does (for container health
    /// checks); starts no server.
    #[arg(long)]
    health_check: bool,
    /// With --health-check: ask GET /readyz instead, exit 0 only while the
    /// api is connected to RabbitMQ and serving.
    #[arg(long, requires = "health_check")]
    ready: bool,
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
        return cli.settings.check_config("likes-api", &settings);
    }
    let check = cli.health_check.then_some(cli.ready);
    let outcome = likes_common::runtime::block_on(run(settings, check))
        .context("starting the tokio runtime")
        .and_then(|outcome| outcome);
    cli::exit_code(outcome)
}

/// `check`: `None` serves; `Some(ready)` runs the health check (readiness
/// when `ready`) and exits.
async fn run(settings: Settings, check: Option<bool>) -> anyhow::Result<()> {
    match check {
        Some(false) => return likes_api::health_check(&settings).await,
        Some(true) => return likes_api::readiness_check(&settings).await,
        None => {}
    }
    let traces = telemetry::otel::Traces::start(
        &settings.telemetry,
        "likes-api",
        settings.telemetry.sample_ratio,
    )?;
    telemetry::init_with(settings.log.format, "info", traces.as_ref());
    telemetry::serve_metrics(&settings.api.metrics_listen, "LIKES__API__METRICS_LISTEN")?;
    tracing::debug!(?settings, "settings loaded");
    let listener = tokio::net::TcpListener::bind(settings.api.listen)
        .await
        .with_context(|| format!("binding {}", settings.api.listen))?;
    let app = likes_api::Application::build(&settings, listener).await?;
    let token = CancellationToken::new();
    shutdown::cancel_on_signal(token.clone());
    let stopped = app.run_until_stopped(token).await;
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    stopped
}
