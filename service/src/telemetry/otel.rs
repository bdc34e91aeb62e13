//! Traces: the `tracing` spans of the binaries (one per RPC, one per
//! published message, one per batch) exported over OTLP/gRPC, and W3C trace
//! context carried across the queue so a like's trace reaches the batch
//! that wrote it.
//!
//! Off unless `telemetry.otlp_endpoint` is set. Off, [`Traces::start`]
//! returns `None`, no OpenTelemetry layer is installed, [`enabled`] is
//! false and the hot path does nothing more than read that flag: no
//! context is captured, no span is added, no header is written or read.
//!
//! On, a batch span processor exports in the background (spans are queued
//! and dropped, never waited for, when the collector is slow or down) and
//! [`Traces::shutdown`] flushes what is queued when the binary stops.
//!
//! Across the queue, one broker message carries many calls (the api packs
//! them) and one batch many messages, so a parent/child chain cannot
//! follow a call from end to end. What connects them (see the README's
//! "Tracing"):
//!
//! - the api's `publish` span of a message is a child of the first traced
//!   call it carries; it and each other call link to one another;
//! - the message's headers carry the `publish` span's W3C context
//!   (`traceparent`, and `tracestate` when set);
//! - the worker's `batch` span links to the `publish` span of each message
//!   in the batch, and a `receive` span per message, a child of its
//!   `publish` span, links back to the batch.
//!
//! So a backend that shows links (Jaeger, Tempo) leads from any call to its
//! batch (call → `publish` → `receive` → `batch`) and from a batch to every
//! call. Links are bounded by [`MAX_LINKS`] per span (OpenTelemetry's
//! default limit, which the SDK enforces too): a batch of 500 events, or of
//! 500 single-event messages, costs at most that many links, `receive`
//! spans and allocations, however large the batch, and a message carrying
//! more traced calls than that connects only the first [`MAX_LINKS`]. One link per message
//! rather than per call keeps the batch's count at its messages (~25 at
//! full load), not its events (500).

use likes_common::config::TelemetrySettings;
pub use opentelemetry::{
    Context,
    context::{FutureExt as _, WithContext},
    trace::SpanContext,
};
use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracer, SdkTracerProvider, SpanExporter},
};
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};

/// Most links one span carries: a `publish` span's to its calls, a
/// `batch` span's to its messages. OpenTelemetry's default span limit; past
/// it the SDK would drop links anyway, so they are not even collected.
pub const MAX_LINKS: usize = 128;

/// Whether a trace pipeline is installed in this process. Read on the hot
/// path instead of asking the subscriber, which costs a lookup per call.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// True once the subscriber exports traces (see [`crate::telemetry::init_with`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Why traces could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot set up the OTLP exporter for telemetry.otlp_endpoint {endpoint:?}: {source}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// An installed trace pipeline: a tracer provider with a batch span
/// processor. Keep it until the end of `main` and call
/// [`Traces::shutdown`] there, or the spans still queued are lost.
#[derive(Debug, Clone)]
pub struct Traces {
    provider: SdkTracerProvider,
}

/// The resource spans are reported under: `service.name` from
/// `OTEL_SERVICE_NAME` or else `service`, `service.version` of this build,
/// and whatever `OTEL_RESOURCE_ATTRIBUTES` adds (the SDK's detectors read
/// both variables).
fn resource(service: &'static str) -> Resource {
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|name| !name.trim().is_empty());
    let builder = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    if named {
        builder.build()
    } else {
        builder.with_service_name(service).build()
    }
}

impl Traces {
    /// The pipeline for `service` (`likes-api`, `likes-worker`), exporting to
    /// `telemetry.otlp_endpoint` over OTLP/gRPC, tracing `sample_ratio` of the
    /// traces that start here (a span with a traced parent is traced too);
    /// `None` when the endpoint is empty. Call inside the tokio runtime: the
    /// exporter's tonic channel runs on it.
    pub fn start(
        settings: &TelemetrySettings,
        service: &'static str,
        sample_ratio: f64,
    ) -> Result<Option<Self>, TraceError> {
        let endpoint = settings.otlp_endpoint.trim();
        if endpoint.is_empty() {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|source| TraceError::Exporter {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        Ok(Some(Self::with_exporter(exporter, service, sample_ratio)))
    }

    /// The pipeline around `exporter`.
    fn with_exporter(
        exporter: impl SpanExporter + 'static,
        service: &'static str,
        sample_ratio: f64,
    ) -> Self {
        let sampler = if sample_ratio >= 1.0 {
            Sampler::AlwaysOn
        } else {
            Sampler::TraceIdRatioBased(sample_ratio)
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(sampler)))
            .with_max_links_per_span(MAX_LINKS as u32)
            .with_resource(resource(service))
            .build();
        Self { provider }
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans of this
    /// pipeline ([`crate::telemetry::init_with`] installs it; tests that
    /// want no log lines compose it with a filter of their own). Building it
    /// turns [`enabled`] on: call it only to install it.
    pub fn layer<S>(&self) -> OpenTelemetryLayer<S, SdkTracer>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        ENABLED.store(true, Ordering::Relaxed);
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("likes"))
    }

    /// Exports every finished span now; blocks until the exporter answered.
    /// Call from a blocking thread (`spawn_blocking`), not a runtime worker.
    pub fn force_flush(&self) -> Result<(), opentelemetry_sdk::error::OTelSdkError> {
        self.provider.force_flush()
    }

    /// Flushes the spans still queued and stops the exporter, on a
    /// blocking thread so the runtime keeps serving the exporter's channel.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let stopped = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match stopped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "flushing traces at shutdown"),
            Err(error) => tracing::warn!(%error, "flushing traces at shutdown"),
        }
    }
}

/// The OpenTelemetry context of the current `tracing` span, when tracing
/// is on and that span is sampled (only a sampled span is worth a link or a
/// header); `None` at the cost of one atomic load when tracing is off.
pub fn current() -> Option<Context> {
    if !enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    cx.span().span_context().is_sampled().then_some(cx)
}

/// Makes `span` (not entered yet) the span of a message carrying `calls`:
/// a child of the first, linked to the others (at most [`MAX_LINKS`]), and
/// links each of the others (still open: they wait for the confirm) back
/// to it, so every call's trace shows the message that carried it.
pub fn follow_calls(span: &tracing::Span, calls: &[Context]) {
    let Some((first, rest)) = calls.split_first() else {
        return;
    };
    // Fails only without the layer, or once the span started: then it
    // stays a root, which loses the connection but nothing else.
    let _ = span.set_parent(first.clone());
    let rest = &rest[..rest.len().min(MAX_LINKS)];
    for call in rest {
        span.add_link(call.span().span_context().clone());
    }
    let message = span_context(span);
    if message.is_valid() {
        for call in rest {
            call.span().add_link(message.clone(), Vec::new());
        }
    }
}

/// The span context of `span`, starting it (so set its parent and links
/// first); invalid when it is not traced.
pub fn span_context(span: &tracing::Span) -> SpanContext {
    span.context().span().span_context().clone()
}

/// Makes `parent` (a context received from another process) the parent of
/// `span`, which must not have started.
pub fn set_remote_parent(span: &tracing::Span, parent: SpanContext) {
    let _ = span.set_parent(Context::new().with_remote_span_context(parent));
}

/// Links `span` (not entered yet) to each valid context of `linked`, at most
/// [`MAX_LINKS`]; returns how many it linked.
pub fn link_all(span: &tracing::Span, linked: impl IntoIterator<Item = SpanContext>) -> usize {
    let mut count = 0;
    for cx in linked
        .into_iter()
        .filter(SpanContext::is_valid)
        .take(MAX_LINKS)
    {
        span.add_link(cx);
        count += 1;
    }
    count
}

/// Writes the W3C trace context of `span` (`traceparent`, and `tracestate`
/// when set) into `carrier`; nothing when the span is not traced.
pub fn inject(span: &tracing::Span, carrier: &mut dyn Injector) {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, carrier);
    }
}

/// The span context a carrier's W3C headers name; invalid when there are
/// none or they do not parse.
pub fn extract(carrier: &dyn Extractor) -> SpanContext {
    TraceContextPropagator::new()
        .extract(carrier)
        .span()
        .span_context()
        .clone()
}

/// A caller's W3C trace context (`traceparent`, `tracestate`) from its
/// request headers (gRPC metadata), when tracing is on and the headers name
/// a valid one: attached while the request is handled, it becomes the
/// parent of the RPC's span, so the call continues the caller's trace.
/// `None` at the cost of one atomic load when tracing is off.
pub fn remote_parent(headers: &http::HeaderMap) -> Option<Context> {
    if !enabled() {
        return None;
    }
    let parent = extract(&HttpHeaders(headers));
    parent
        .is_valid()
        .then(|| Context::new().with_remote_span_context(parent))
}

/// `future` with `parent` attached whenever it is polled (and while it is
/// made, by [`Context::attach`] around the call that makes it): the spans
/// it opens without a `tracing` parent take `parent` as theirs.
pub fn in_context<F: std::future::Future>(parent: Context, future: F) -> WithContext<F> {
    future.with_context(parent)
}

/// [`Extractor`] over HTTP request headers.
struct HttpHeaders<'a>(&'a http::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn an_empty_endpoint_starts_no_pipeline() {
        let settings = likes_common::Settings::defaults().telemetry;
        assert!(settings.otlp_endpoint.is_empty());
        let traces = Traces::start(&settings, "likes-test", 1.0).expect("off is no error");
        assert!(traces.is_none(), "nothing to export to");
        assert!(!enabled(), "no layer was installed");
        assert!(current().is_none());
    }

    #[test]
    fn headers_round_trip_a_span_context_and_garbage_reads_as_none() {
        let mut carrier = HashMap::new();
        carrier.insert(
            "traceparent".to_owned(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        );
        let cx = extract(&carrier);
        assert!(cx.is_valid() && cx.is_sampled() && cx.is_remote());
        assert_eq!(
            cx.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(cx.span_id().to_string(), "b7ad6b7169203331");
        carrier.insert("traceparent".to_owned(), "nonsense".to_owned());
        assert!(!extract(&carrier).is_valid());
        assert!(!extract(&HashMap::<String, String>::new()).is_valid());
    }

    #[test]
    fn request_headers_name_the_caller_s_context() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        );
        let cx = extract(&HttpHeaders(&headers));
        assert_eq!(cx.span_id().to_string(), "b7ad6b7169203331");
        // Tracing is off in unit tests: nothing is read.
        assert!(remote_parent(&headers).is_none());
    }
}
