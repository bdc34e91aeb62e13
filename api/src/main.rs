//! `likes-api`: parses its command line, loads settings, starts telemetry,
//! serves until SIGINT/SIGTERM.

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

/// The gRPC front door of the likes service: makes each Like and Unlike
/// durable in RabbitMQ and serves the counts from PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "likes-api", version, after_help = cli::SETTINGS_HELP)]
struct Cli {
    #[command(flatten)]
    service: ServiceArgs,
    #[command(subcommand)]
    command: Option<ServiceCommand>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (settings, start) = match cli.service.start::<Cli>("likes-api", cli.command.as_ref()) {
        Ok(started) => started,
        Err(done) => return done,
    };
    let outcome = likes_service::runtime::block_on(run(settings, start))
        .context("starting the tokio runtime")
        .and_then(|outcome| outcome);
    cli::exit_code(outcome)
}

async fn run(settings: Settings, start: Start) -> anyhow::Result<()> {
    match start {
        Start::HealthCheck { ready: false } => return likes_api::health_check(&settings).await,
        Start::HealthCheck { ready: true } => return likes_api::readiness_check(&settings).await,
        Start::Serve => {}
    }
    let traces = telemetry::otel::Traces::start(
        &settings.telemetry,
        "likes-api",
        settings.telemetry.sample_ratio,
    )?;
    telemetry::init_with(settings.log.format, "info", traces.as_ref());
    telemetry::serve_metrics(
        &settings.api.metrics_listen,
        "LIKES__API__METRICS_LISTEN",
        telemetry::catalog::Role::Api,
    )?;
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
