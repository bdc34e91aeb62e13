//! `likes-api`: loads settings, starts telemetry, serves until SIGINT/SIGTERM.

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
    if std::env::args().any(|arg| arg == "--health-check") {
        return likes_api::health_check(&settings).await;
    }
    telemetry::init(settings.log.format, "info");
    telemetry::serve_metrics(&settings.api.metrics_listen, "LIKES__API__METRICS_LISTEN")?;
    tracing::debug!(?settings, "settings loaded");
    let listener = tokio::net::TcpListener::bind(settings.api.listen)
        .await
        .with_context(|| format!("binding {}", settings.api.listen))?;
    let app = likes_api::Application::build(&settings, listener).await?;
    let token = CancellationToken::new();
    shutdown::cancel_on_signal(token.clone());
    app.run_until_stopped(token).await
}
