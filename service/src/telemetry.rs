//! Logs through `tracing` (filtered by `RUST_LOG`, as text or JSON lines) and
//! Prometheus metrics through the `metrics` facade, served by a small HTTP/1
//! endpoint of our own (so that a taken port is a warning, not an exit),
//! which also answers the health probes `/healthz` and `/readyz` (see
//! [`health`]).

pub mod catalog;
pub mod health;

use bytes::Bytes;
use health::Health;
use http_body_util::Full;
use likes_common::config::LogFormat;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tracing_subscriber::{EnvFilter, fmt};

pub mod otel;

/// Installs the global subscriber for a binary: lines on stderr, filtered by
/// `RUST_LOG` or else `default_filter` (e.g. `info`).
pub fn init(format: LogFormat, default_filter: &str) {
    init_with(format, default_filter, None);
}

/// [`init`], and with `traces` the spans (as filtered) are exported too.
pub fn init_with(format: LogFormat, default_filter: &str, traces: Option<&otel::Traces>) {
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .finish()
            .with(traces.map(otel::Traces::layer))
            .init(),
        LogFormat::Json => builder
            .json()
            .event_format(WithTraceIds(fmt::format().json().flatten_event(true)))
            .finish()
            .with(traces.map(otel::Traces::layer))
            .init(),
    }
}

/// A JSON event format that begins each line written inside a traced span
/// with its `trace_id` and `span_id` (lowercase hex, as in W3C
/// `traceparent`), so a log line leads to its trace.
#[derive(Debug)]
struct WithTraceIds<F>(F);

impl<S, N, F> fmt::FormatEvent<S, N> for WithTraceIds<F>
where
    F: fmt::FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &fmt::FmtContext<'_, S, N>,
        mut writer: fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use opentelemetry::trace::TraceContextExt as _;
        let traced = otel::enabled()
            .then(|| ctx.lookup_current())
            .flatten()
            .and_then(|span| {
                tracing::dispatcher::get_default(|dispatch| {
                    tracing_opentelemetry::get_otel_context(&span.id(), dispatch)
                })
            })
            .map(|context| context.span().span_context().clone())
            .filter(opentelemetry::trace::SpanContext::is_valid);
        let Some(ids) = traced else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0
            .format_event(ctx, fmt::format::Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{}\",\"span_id\":\"{}\",{rest}",
                ids.trace_id(),
                ids.span_id()
            ),
            None => writer.write_str(&line),
        }
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

/// Why the metrics endpoint could not start, or a client could not read it
/// (metrics or a health probe).
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics_listen {0:?} is not host:port")]
    Address(String),
    #[error("cannot set up metrics: {0}")]
    Exporter(#[from] metrics_exporter_prometheus::BuildError),
    #[error("cannot reach the metrics endpoint {addr}: {source}")]
    Fetch {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics endpoint {addr} answered {status}")]
    Status { addr: String, status: String },
}

/// GET `http://<addr>/metrics`: the Prometheus text of a running binary.
/// Used by tests and the load test; plain HTTP/1.0, as the exporter serves.
pub async fn fetch_metrics(addr: &str) -> Result<String, MetricsError> {
    let answer = http_get(addr, "/metrics").await?;
    if answer.status != 200 {
        return Err(MetricsError::Status {
            addr: addr.to_owned(),
            status: answer.status_line,
        });
    }
    Ok(answer.body)
}

/// An HTTP answer of the metrics endpoint.
#[derive(Debug)]
pub(crate) struct HttpAnswer {
    status: u16,
    status_line: String,
    /// Names in lowercase.
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpAnswer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// GET `http://<addr><path>` over HTTP/1.0 (the server closes the
/// connection after its answer, so reading to the end is the whole answer).
pub(crate) async fn http_get(addr: &str, path: &str) -> Result<HttpAnswer, MetricsError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = |source| MetricsError::Fetch {
        addr: addr.to_owned(),
        source,
    };
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(fetch)?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(fetch)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.map_err(fetch)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default().to_owned();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect();
    Ok(HttpAnswer {
        status,
        status_line,
        headers,
        body: body.to_owned(),
    })
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

/// Records metrics in the process's global Prometheus recorder and serves
/// them at `http://<listen>/metrics`, with the health probes `/healthz` and
/// `/readyz` of [`Health::process`]; an empty `listen` turns all of it off.
/// `setting` names the variable that sets `listen`
/// (`LIKES__API__METRICS_LISTEN`, ...), for the warning below; `role`'s
/// counters start at 0 ([`catalog::register_counters`]). Call once,
/// from `main`, inside the runtime. Durations are histograms in seconds.
///
/// Besides the binary's own metrics (described by [`catalog`]), the
/// endpoint exports `likes_build_info{version}` (always 1),
/// `likes_process_id`, and the process metrics of `metrics-process` (CPU
/// seconds, resident memory, open file descriptors, threads, ...), read
/// from the OS at each scrape.
///
/// When `listen` cannot be bound (say, another worker on this host took the
/// default port), the process logs a warning naming the address and
/// `setting`, keeps recording, and runs on without an endpoint: a second
/// process on one host must not fail to start over its metrics. The
/// process id on every answer tells health checks whose endpoint they read.
pub fn serve_metrics(
    listen: &str,
    setting: &str,
    role: catalog::Role,
) -> Result<MetricsEndpoint, MetricsError> {
    if listen.is_empty() {
        return Ok(MetricsEndpoint::Off);
    }
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| MetricsError::Address(listen.to_owned()))?;
    let handle = install_recorder()?;
    catalog::describe_all();
    catalog::register_counters(role);
    let process = metrics_process::Collector::default();
    process.describe();
    metrics::gauge!("likes_process_id").set(f64::from(std::process::id()));
    metrics::gauge!("likes_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
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
    let endpoint = Endpoint {
        metrics: handle,
        process,
        health: Health::process(),
    };
    tokio::spawn(serve(listener, Arc::new(endpoint)));
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

/// What the endpoint serves.
#[derive(Debug)]
struct Endpoint {
    metrics: PrometheusHandle,
    /// Collected at each scrape, so the values are those of the scrape.
    process: metrics_process::Collector,
    health: Arc<Health>,
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
            Matcher::Full("likes_batch_events".into()),
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

/// A small HTTP/1 server: `GET /metrics`, `/healthz` and `/readyz`.
async fn serve(listener: tokio::net::TcpListener, endpoint: Arc<Endpoint>) {
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
        let endpoint = Arc::clone(&endpoint);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&request, &endpoint);
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

fn respond<B>(request: &hyper::Request<B>, endpoint: &Endpoint) -> hyper::Response<Full<Bytes>> {
    use hyper::StatusCode;
    let get = request.method() == hyper::Method::GET;
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" if get => {
            endpoint.process.collect();
            (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                endpoint.metrics.render(),
            )
        }
        "/healthz" if get => (StatusCode::OK, "text/plain", "live\n".to_owned()),
        "/readyz" if get => match endpoint.health.readiness() {
            Ok(()) => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
            Err(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {reason}\n"),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; this endpoint serves /metrics, /healthz and /readyz\n".to_owned(),
        ),
    };
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    headers.insert(
        health::PROCESS_ID_HEADER,
        hyper::header::HeaderValue::from(std::process::id()),
    );
    if let Some(listen) = endpoint.health.grpc_listen()
        && let Ok(value) = hyper::header::HeaderValue::from_str(&listen)
    {
        headers.insert(health::GRPC_LISTEN_HEADER, value);
    }
    response
}
