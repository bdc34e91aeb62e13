//! The load generator's gRPC transport: hyper's HTTP/2 connection, without
//! tonic's `Channel` in front of it.
//!
//! tonic's `Channel` puts a `tower` buffer before the connection: every call
//! is queued to a background task and its answer comes back through a
//! oneshot, one more task wake-up per request. The load generator shares the
//! machine's two cores with the system it measures, so what it spends is
//! taken from the figures; it talks to hyper's connection-level HTTP/2
//! client directly instead. A `SendRequest` is a cheap clone that
//! multiplexes streams on its connection by itself. There is no reconnect:
//! a broken connection fails the requests still to come, which the report
//! counts as failed. An api that serves TLS or asks for a bearer token is
//! reached with an [`Access`].

use hyper::{body::Incoming, client::conn::http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use std::{
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tonic::{
    body::Body,
    codegen::http::{HeaderValue, Request, Response, header::AUTHORIZATION},
};

/// How to reach a secured api: TLS, and the bearer token every call carries.
#[derive(Debug, Clone, Default)]
pub struct Access {
    tls: Option<Arc<rustls::ClientConfig>>,
    authorization: Option<HeaderValue>,
}

impl Access {
    /// TLS when `tls` (trusting the CAs of `ca_file`, or the system's roots
    /// without one), and `token` on every call when given.
    pub fn new(tls: bool, ca_file: Option<&Path>, token: Option<&str>) -> anyhow::Result<Self> {
        let tls = tls.then(|| client_config(ca_file)).transpose()?;
        let authorization = token
            .map(|token| HeaderValue::from_str(&format!("Bearer {token}")))
            .transpose()
            .map_err(|_| anyhow::anyhow!("the token is not a valid header value"))?
            .map(|mut value| {
                value.set_sensitive(true);
                value
            });
        Ok(Self { tls, authorization })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

fn client_config(ca_file: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots.add(cert?)?;
            }
            anyhow::ensure!(!roots.is_empty(), "no certificate in {}", path.display());
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// One HTTP/2 connection to the api, usable as a tonic client's transport.
#[derive(Debug, Clone)]
pub struct Connection {
    sender: http2::SendRequest<Body>,
    authorization: Option<HeaderValue>,
}

impl Connection {
    /// Opens a connection to `authority` (`host:port`) as `access` says and
    /// spawns the task that drives it.
    pub async fn open(authority: &str, access: &Access) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(authority).await?;
        stream.set_nodelay(true)?;
        let builder = http2::Builder::new(TokioExecutor::new());
        let sender = match &access.tls {
            None => drive(builder.handshake(TokioIo::new(stream)).await?),
            Some(config) => {
                let host = authority
                    .rsplit_once(':')
                    .map_or(authority, |(host, _)| host)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let name = ServerName::try_from(host.to_owned())?;
                let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(name, stream)
                    .await?;
                drive(builder.handshake(TokioIo::new(stream)).await?)
            }
        };
        Ok(Self {
            sender,
            authorization: access.authorization.clone(),
        })
    }
}

/// Spawns the task that drives a handshaken connection; its sender.
fn drive<C>((sender, connection): (http2::SendRequest<Body>, C)) -> http2::SendRequest<Body>
where
    C: Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "the HTTP/2 connection to the api ended");
        }
    });
    sender
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<Incoming>, hyper::Error>> + Send>>;

impl tower::Service<Request<Body>> for Connection {
    type Response = Response<Incoming>;
    type Error = hyper::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        if let Some(authorization) = &self.authorization {
            request
                .headers_mut()
                .insert(AUTHORIZATION, authorization.clone());
        }
        Box::pin(self.sender.send_request(request))
    }
}
