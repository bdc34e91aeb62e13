//! Logs through `tracing` (filtered by `RUST_LOG`, as text or JSON lines) and
//! Prometheus metrics through the `metrics` facade, served by a small HTTP/1
//! endpoint of our own (so that a taken port is a warning, not an exit).

use crate::config::LogFormat;
use bytes::Bytes;
use http_body_util::Full;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::{net::SocketAddr, time::Duration};
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
    #[error("cannot set up metrics: {0}")]
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

/// The metric holding the id of the process serving an endpoint, so that a
/// health check can tell whose metrics it reads.
pub const PROCESS_ID_METRIC: &str = "likes_process_id";

/// Records metrics in the process's global Prometheus recorder and serves
/// them at `http://<listen>/metrics`; an empty `listen` turns metrics off.
/// `setting` names the variable that sets `listen`
/// (`LIKES__API__METRICS_LISTEN`, ...), for the warning below. Call once,
/// from `main`, inside the runtime. Durations are histograms in seconds.
///
/// When `listen` cannot be bound (say, another worker on this host took the
/// default port), the process logs a warning naming the address and
/// `setting`, keeps recording, and runs on without an endpoint: a second
/// process on one host must not fail to start over its metrics.
/// [`PROCESS_ID_METRIC`] tells health checks whose endpoint they read.
pub fn serve_metrics(listen: &str, setting: &str) -> Result<MetricsEndpoint, MetricsError> {
    if listen.is_empty() {
        return Ok(MetricsEndpoint::Off);
    }
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| MetricsError::Address(listen.to_owned()))?;
    let handle = install_recorder()?;
    metrics::gauge!(PROCESS_ID_METRIC).set(f64::from(std::process::id()));
    let listener = match bind(addr) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::warn!(
                address = %addr,
                setting,
                %error,
                "metrics endpoint not started: cannot listen on {addr} ({error}); \
                 metrics are still recorded. Set {setting} to a free address, or to \
                 empty to turn the endpoint off"
            );
            return Ok(MetricsEndpoint::Unbound(addr));
        }
    };
    tokio::spawn(serve(listener, handle));
    Ok(MetricsEndpoint::Serving(addr))
}

/// Where a process's metrics can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsEndpoint {
    /// `metrics_listen` is empty.
    Off,
    /// Serving at this address.
    Serving(SocketAddr),
    /// Recording, but this address could not be bound.
    Unbound(SocketAddr),
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

fn install_recorder() -> Result<PrometheusHandle, MetricsError> {
    let handle = PrometheusBuilder::new()
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
        .install_recorder()?;
    // What `PrometheusBuilder::install` would run: drains histogram samples
    // even when nobody scrapes.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// A small HTTP/1 server: `GET /metrics` renders the recorder.
async fn serve(listener: tokio::net::TcpListener, handle: PrometheusHandle) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, say: do not spin.
                tracing::debug!(%error, "accepting a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&request, &handle);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "serving a metrics connection");
            }
        });
    }
}

fn respond<B>(
    request: &hyper::Request<B>,
    handle: &PrometheusHandle,
) -> hyper::Response<Full<Bytes>> {
    let (status, content_type, body) =
        if request.method() == hyper::Method::GET && request.uri().path() == "/metrics" {
            (
                hyper::StatusCode::OK,
                "text/plain; version=0.0.4",
                handle.render(),
            )
        } else {
            (
                hyper::StatusCode::NOT_FOUND,
                "text/plain",
                "not found; metrics are at /metrics\n".to_owned(),
            )
        };
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
