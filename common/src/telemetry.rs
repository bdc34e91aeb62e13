//! Logs through `tracing` (filtered by `RUST_LOG`, as text or JSON lines) and
//! Prometheus metrics through the `metrics` facade.

use crate::config::LogFormat;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::net::SocketAddr;
use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber for a binary: lines on stderr, filtered by
/// `RUST_LOG` or else `default_filter` (e.g. `info`).
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// For tests: quiet unless `TEST_LOG` is set, then like [`init`]. Safe to call
/// from every test; only the first call installs a subscriber.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_none() {
        return;
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics_listen {0:?} is not host:port")]
    Address(String),
    #[error("cannot start the metrics endpoint: {0}")]
    Exporter(#[from] metrics_exporter_prometheus::BuildError),
    #[error("cannot read metrics from {addr}: {source}")]
    Fetch {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics endpoint {addr} answered {status}")]
    Status { addr: String, status: String },
}

/// GET `http://<addr>/metrics`: the Prometheus text of a running binary.
/// Used by health checks and tests; plain HTTP/1.0, as the exporter serves.
pub async fn fetch_metrics(addr: &str) -> Result<String, MetricsError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = |source| MetricsError::Fetch {
        addr: addr.to_owned(),
        source,
    };
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(fetch)?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(fetch)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.map_err(fetch)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        return Err(MetricsError::Status {
            addr: addr.to_owned(),
            status: status.to_owned(),
        });
    }
    Ok(body.to_owned())
}

/// The value of the sample `name{labels}` (labels exactly as exposed, or
/// `None` for a metric without labels) in a Prometheus text body.
pub fn sample(body: &str, name: &str, labels: Option<&str>) -> Option<f64> {
    let key = match labels {
        Some(labels) => format!("{name}{{{labels}}}"),
        None => name.to_owned(),
    };
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            line.strip_prefix(key.as_str())?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
}

/// Serves Prometheus metrics at `http://<listen>/metrics` from the process's
/// global recorder; an empty `listen` turns metrics off. Call once, from
/// `main`, inside the runtime. Durations are histograms in seconds.
pub fn serve_metrics(listen: &str) -> Result<(), MetricsError> {
    if listen.is_empty() {
        return Ok(());
    }
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| MetricsError::Address(listen.to_owned()))?;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full("likes_batch_size".into()),
            &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0],
        )?
        .install()?;
    Ok(())
}
