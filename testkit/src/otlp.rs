//! A tiny OTLP/gRPC trace receiver: what a collector would be to the
//! binaries' exporter, keeping every span it is sent in memory so a test
//! can follow a like's trace. It serves `opentelemetry.proto.collector.
//! trace.v1.TraceService` on 127.0.0.1 with the generated tonic server, so
//! the exporter under test speaks real OTLP over a real socket.

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value},
};
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};
use tokio_util::sync::CancellationToken;

/// A span as received, ids in lowercase hex (as `TraceId`'s `Display`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
    /// String, integer and boolean attributes, rendered as strings.
    pub attributes: Vec<(String, String)>,
    /// The attributes of the resource that sent it (`service.version` …).
    pub resource: Vec<(String, String)>,
}

impl ReceivedSpan {
    /// The value of attribute `key`, if set.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this span links to `other`.
    pub fn links_to(&self, other: &ReceivedSpan) -> bool {
        self.links
            .iter()
            .any(|(trace, span)| *trace == other.trace_id && *span == other.span_id)
    }

    /// Whether `other` is this span's parent.
    pub fn is_child_of(&self, other: &ReceivedSpan) -> bool {
        self.trace_id == other.trace_id && self.parent_span_id == other.span_id
    }
}

/// The receiver, serving until dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    /// Where it listens: the exporter's endpoint is `http://{addr}`.
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    requests: Arc<Mutex<usize>>,
    stop: CancellationToken,
}

impl OtlpReceiver {
    /// Starts serving on an ephemeral port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let collector = Collector::default();
        let spans = Arc::clone(&collector.spans);
        let requests = Arc::clone(&collector.requests);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    stopped.cancelled_owned(),
                )
                .await;
            if let Err(error) = served {
                tracing::warn!(%error, "the test OTLP receiver stopped");
            }
        });
        Ok(Self {
            addr,
            spans,
            requests,
            stop,
        })
    }

    /// The endpoint to export to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans
            .lock()
            .expect("no test panics holding it")
            .clone()
    }

    /// Export requests received so far (an empty flush sends none).
    pub fn requests(&self) -> usize {
        *self.requests.lock().expect("no test panics holding it")
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Debug, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    requests: Arc<Mutex<usize>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource: Vec<(String, String)> = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .filter_map(attribute)
                .collect();
            let service = resource
                .iter()
                .find(|(key, _)| key == "service.name")
                .map(|(_, value)| value.clone())
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(ReceivedSpan {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        links: span
                            .links
                            .iter()
                            .map(|link| (hex(&link.trace_id), hex(&link.span_id)))
                            .collect(),
                        attributes: span.attributes.iter().filter_map(attribute).collect(),
                        resource: resource.clone(),
                    });
                }
            }
        }
        *self.requests.lock().expect("no test panics holding it") += 1;
        self.spans
            .lock()
            .expect("no test panics holding it")
            .extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attribute(kv: &KeyValue) -> Option<(String, String)> {
    Some((kv.key.clone(), render(kv.value.as_ref())?))
}

fn render(value: Option<&AnyValue>) -> Option<String> {
    match value?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
