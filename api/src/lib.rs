//! The likes api: a tonic server for `likes.v1.LikeService` with health and
//! reflection. Like/Unlike become persistent messages on RabbitMQ, answered
//! OK only once the broker confirmed them; counts are read from PostgreSQL.
//!
//! `main.rs` only loads settings and calls [`Application::build`] and
//! [`Application::run_until_stopped`], so tests start exactly this code.

pub mod admission;
pub mod auth;
pub mod connections;
pub mod counts;
pub mod deadline;
pub mod error;
pub mod pages;
pub mod protocol;
pub mod publisher;
pub mod service;
pub mod trace_context;
pub mod validate;
pub mod watch;

use admission::{Admission, AdmissionLayer};
use anyhow::Context;
use auth::Auth;
use counts::CountCache;
use deadline::DeadlineLayer;
use likes_common::Settings;
use likes_common::config::{AmqpSettings, ApiSettings};
use likes_proto::{FILE_DESCRIPTOR_SET, pb::like_service_server::LikeServiceServer};
use likes_service::telemetry::health::{self, Health, Probe, ReadinessReporter};
use protocol::GrpcOnlyLayer;
use publisher::{LinkState, LinkStatus, Packing, Publisher};
use service::LikeApi;
use std::{net::SocketAddr, sync::Arc};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::{
    Code,
    codegen::http,
    service::interceptor::InterceptedService,
    transport::{Certificate, Identity, ServerTlsConfig},
};
use tonic_health::server::HealthReporter;
use tower::util::MapResponseLayer;

/// Streams one HTTP/2 connection may have open at once (advertised as
/// SETTINGS_MAX_CONCURRENT_STREAMS): hyper's own default, which tonic's
/// builder removes unless set; without it one connection could open any
/// number of header-only streams. A client opening more gets them refused
/// (REFUSED_STREAM) before any of their bytes are kept.
pub const MAX_CONCURRENT_STREAMS: u32 = 200;

/// Largest request metadata (SETTINGS_MAX_HEADER_LIST_SIZE): far above
/// what gRPC's own headers, a token and trace context need. Larger fails
/// the call (HTTP 431); beyond 4 times this h2 closes the connection.
pub const MAX_HEADER_LIST_BYTES: u32 = 32 * 1024;

/// Largest request message: GetLikeCounts with 1000 ids of 128 bytes is
/// about 131 KiB. Larger ones get RESOURCE_EXHAUSTED.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// A built api, bound to its listener, ready to serve.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    publisher: Arc<Publisher>,
    /// Stops the publisher's reconnect loop once the server has drained.
    publisher_stop: CancellationToken,
    /// The api's part in the process's `/readyz`.
    readiness: ReadinessReporter,
    reads: likes_db::ReadPools,
    max_replica_lag: std::time::Duration,
    counts: CountCache,
    subscription: counts::Subscription,
    amqp: AmqpSettings,
    settings: ApiSettings,
    tls: Option<ServerTlsConfig>,
}

impl Application {
    /// Connects to RabbitMQ (declaring the topology) and PostgreSQL (creating
    /// the database and migrating it) and takes `listener` to serve on.
    pub async fn build(settings: &Settings, listener: TcpListener) -> anyhow::Result<Self> {
        let local_addr = listener.local_addr().context("reading the bound address")?;
        let tls = tls_config(&settings.api)?;
        // The series exists from the start, not only once the link changed.
        metrics::gauge!("likes_amqp_connected", "role" => "api").set(0.0);
        let health = Health::process();
        health.set_grpc_listen(settings.api.listen.to_string());
        let readiness = health.register("api", "starting: not serving gRPC yet");
        let publisher_stop = CancellationToken::new();
        let publisher = Publisher::start(
            settings.amqp.clone(),
            Packing::from_settings(&settings.api, &settings.amqp),
            publisher_stop.clone(),
        )
        .await
        .with_context(|| format!("connecting to RabbitMQ at {}", settings.amqp.url))?;
        let pool = likes_db::connect(&settings.database)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {}", settings.database.url))?;
        let reads = likes_db::ReadPools::new(pool, &settings.database)
            .context("setting up the read replicas of database.read_urls")?;
        let counts = CountCache::new(reads.clone(), &settings.api);
        // Subscribed before serving, so no count is cached before the
        // subscription that keeps it current.
        metrics::gauge!("likes_count_subscription_up").set(0.0);
        let subscription = counts::Subscription::open(&settings.amqp)
            .await
            .with_context(|| {
                format!("subscribing to the count changes at {}", settings.amqp.url)
            })?;
        Ok(Self {
            listener,
            local_addr,
            publisher,
            publisher_stop,
            readiness,
            reads,
            max_replica_lag: settings.database.max_replica_lag(),
            counts,
            subscription,
            amqp: settings.amqp.clone(),
            settings: settings.api.clone(),
            tls,
        })
    }

    /// What the publisher got confirmed (messages and the events in them).
    pub fn publish_stats(&self) -> Arc<publisher::PublishStats> {
        self.publisher.stats()
    }

    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` is cancelled, then stops accepting calls,
    /// lets those in flight finish (with their confirms) and closes AMQP.
    ///
    /// The gRPC health service and `/readyz` say SERVING / ready while the
    /// broker link is up and the server is not stopping.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        // Held to the end, so `/readyz` says "stopping" until the process exits.
        let readiness = Arc::new(self.readiness);
        tokio::spawn(report_health(
            health.clone(),
            Arc::clone(&readiness),
            self.publisher.subscribe(),
            shutdown.clone(),
        ));
        likes_db::spawn_pool_gauges(self.reads.primary().clone(), shutdown.clone());
        self.reads
            .spawn_checks(self.max_replica_lag, shutdown.clone());
        let follower = tokio::spawn(counts::follow_pushes(
            self.counts.clone(),
            self.amqp.clone(),
            self.subscription,
            self.publisher_stop.clone(),
        ));
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let api = LikeApi::new(
            Arc::clone(&self.publisher),
            self.reads.clone(),
            self.counts.clone(),
            &self.settings,
            shutdown.clone(),
        );
        let admission = Arc::new(Admission::new(&self.settings));
        let auth = Auth::new(
            self.settings.auth_token.expose(),
            !self.settings.tls_client_ca_file.is_empty(),
        );
        let open_auth = if self.settings.auth_all_services {
            auth.clone()
        } else {
            Auth::open()
        };

        tracing::info!(listen = %self.local_addr, "likes-api serving");
        let stopping = {
            let health = health.clone();
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                set_not_serving(&health).await;
                tracing::info!("likes-api stopping: finishing calls in flight");
            }
        };
        let lifetime = connections::Lifetime::of(&self.settings);
        let mut server = tonic::transport::Server::builder()
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            .http2_keepalive_interval(lifetime.keepalive_interval)
            .http2_keepalive_timeout(Some(lifetime.keepalive_timeout));
        if let Some(age) = lifetime.max_age {
            // The grace is the socket's (connections::Aged), not tonic's.
            server = server.max_connection_age(age);
        }
        if let Some(tls) = self.tls {
            server = server.tls_config(tls).context("configuring TLS")?;
        }
        // Outermost first: protocol check, caller's deadline, admission.
        server
            .layer(GrpcOnlyLayer)
            .layer(DeadlineLayer)
            .layer(AdmissionLayer::new(admission))
            .layer(MapResponseLayer::new(size_limit_is_resource_exhausted))
            .layer(trace_context::RemoteParentLayer)
            .add_service(InterceptedService::new(health_service, open_auth.clone()))
            .add_service(InterceptedService::new(reflection_v1, open_auth.clone()))
            .add_service(InterceptedService::new(reflection_v1alpha, open_auth))
            .add_service(InterceptedService::new(
                LikeServiceServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES),
                auth,
            ))
            .serve_with_incoming_shutdown(lifetime.bound(incoming(self.listener)), stopping)
            .await
            .context("serving gRPC")?;
        self.publisher_stop.cancel();
        self.publisher.close().await;
        let _ = follower.await;
        tracing::info!("likes-api stopped");
        drop(readiness);
        Ok(())
    }
}

/// `likes-api --health-check`: succeeds while the api is live: its metrics
/// endpoint (`api.metrics_listen`; an unspecified address means this host)
/// answers `GET /healthz` with 200. For container health checks; needs
/// nothing but the binary, and works whatever TLS or credentials the gRPC
/// port asks for.
///
/// Liveness, not readiness: container runtimes run this check, and some
/// (Docker Swarm, an autoheal sidecar) replace a container that fails it.
/// An api whose broker link is down answers UNAVAILABLE and reconnects by
/// itself; replacing it would not bring the broker back. Whether it can
/// publish is `/readyz` (see [`readiness_check`]) and the gRPC health
/// service.
///
/// It never reports another api's health as this one's: the endpoint's
/// answers name the gRPC address their api serves (`likes-grpc-listen`),
/// and the check fails unless that is `api.listen`. An api whose metrics
/// address was taken (it warned at start) serves no endpoint, so its check
/// fails: give each api on one host its own `LIKES__API__METRICS_LISTEN`.
pub async fn health_check(settings: &Settings) -> anyhow::Result<()> {
    check(settings, Probe::Live).await
}

/// Like [`health_check`], but asks `/readyz`: succeeds while the api's
/// broker link is up and it serves gRPC. `--health-check --ready`.
pub async fn readiness_check(settings: &Settings) -> anyhow::Result<()> {
    check(settings, Probe::Ready).await
}

/// How long a check waits for the endpoint's answer.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

async fn check(settings: &Settings, probe: Probe) -> anyhow::Result<()> {
    let listen = &settings.api.metrics_listen;
    anyhow::ensure!(
        !listen.is_empty(),
        "the health check needs api.metrics_listen (LIKES__API__METRICS_LISTEN)"
    );
    let mut addr: SocketAddr = listen.parse().context("api.metrics_listen")?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let answer = health::probe(&addr.to_string(), probe, CHECK_TIMEOUT).await?;
    let ours = settings.api.listen.to_string();
    anyhow::ensure!(
        answer.grpc_listen.as_deref() == Some(ours.as_str()),
        "the metrics endpoint {addr} belongs to the api serving {} (process {}), \
         not to the one on {ours} (was its LIKES__API__METRICS_LISTEN taken at start?)",
        answer.grpc_listen.as_deref().unwrap_or("nothing"),
        answer
            .process_id
            .map_or_else(|| "unknown".to_owned(), |p| p.to_string())
    );
    anyhow::ensure!(answer.ok, "{} of likes-api: {}", probe.path(), answer.text);
    Ok(())
}

/// tonic refuses a request over `max_decoding_message_size` with
/// OUT_OF_RANGE; to callers that is RESOURCE_EXHAUSTED ("too large"), so the
/// status is rewritten. Such a refusal is a trailers-only response, with the
/// status in the headers; the service itself never answers OUT_OF_RANGE.
fn size_limit_is_resource_exhausted(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let out_of_range = (Code::OutOfRange as i32).to_string();
    if headers
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes() == out_of_range.as_bytes())
    {
        let exhausted = (Code::ResourceExhausted as i32).to_string();
        if let Ok(value) = http::HeaderValue::from_str(&exhausted) {
            headers.insert("grpc-status", value);
        }
    }
    response
}

/// TLS from the configured PEM files; `None` serves plaintext. With a client
/// CA, client certificates are requested and verified, and the auth
/// interceptor refuses LikeService calls that came without one.
fn tls_config(settings: &ApiSettings) -> anyhow::Result<Option<ServerTlsConfig>> {
    if settings.tls_cert_file.is_empty() {
        return Ok(None);
    }
    let read = |path: &str| std::fs::read(path).with_context(|| format!("reading TLS file {path}"));
    let identity = Identity::from_pem(
        read(&settings.tls_cert_file)?,
        read(&settings.tls_key_file)?,
    );
    let mut tls = ServerTlsConfig::new().identity(identity);
    if !settings.tls_client_ca_file.is_empty() {
        tls = tls
            .client_ca_root(Certificate::from_pem(read(&settings.tls_client_ca_file)?))
            .client_auth_optional(true);
    }
    Ok(Some(tls))
}

/// Reflection serves every message the server sends: the contract, the
/// health service, and the `google.rpc` status and error details (with the
/// `google.protobuf` files they import, as tonic-types ships them), so
/// grpcurl and other reflection clients decode a BadRequest, ErrorInfo or
/// RetryInfo instead of showing raw bytes.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// SERVING and ready while the broker link is up and unblocked,
/// NOT_SERVING and not ready (with the reason) while it is down or blocked
/// or the server is stopping: Like cannot succeed without the broker. The
/// only writer of `readiness`, so "stopping" is final.
async fn report_health(
    health: HealthReporter,
    readiness: Arc<ReadinessReporter>,
    mut link: tokio::sync::watch::Receiver<LinkState>,
    shutdown: CancellationToken,
) {
    loop {
        let status = link.borrow_and_update().status();
        match status {
            LinkStatus::Up => {
                readiness.ready();
                health.set_serving::<LikeServiceServer<LikeApi>>().await;
                health
                    .set_service_status("", tonic_health::ServingStatus::Serving)
                    .await;
            }
            LinkStatus::Down => {
                readiness.not_ready("not connected to RabbitMQ");
                set_not_serving(&health).await;
            }
            LinkStatus::Blocked(reason) => {
                readiness.not_ready(&format!("RabbitMQ blocks publishing ({reason})"));
                set_not_serving(&health).await;
            }
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            changed = link.changed() => if changed.is_err() { break },
        }
    }
    readiness.not_ready("stopping");
}

async fn set_not_serving(health: &HealthReporter) {
    health.set_not_serving::<LikeServiceServer<LikeApi>>().await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
}

/// The api's accepted connections, with `TCP_NODELAY` set on each. tonic
/// ignores its own `tcp_nodelay` setting for a listener passed in, and with
/// Nagle's algorithm on, a response written while the previous one is still
/// unacknowledged waits for the caller's delayed ACK: up to 40 ms on Linux,
/// for a call that otherwise takes a few.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port on localhost");
        let addr = listener.local_addr().expect("bound");
        let mut incoming = super::incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connects");
        let accepted = incoming
            .next()
            .await
            .expect("a connection")
            .expect("accepted");
        assert!(accepted.nodelay().expect("readable option"));
    }
}
