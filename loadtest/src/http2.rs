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
//! counts as failed.

use hyper::{body::Incoming, client::conn::http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::{
    pin::Pin,
    task::{Context, Poll},
};
use tonic::{
    body::Body,
    codegen::http::{Request, Response},
};

/// One HTTP/2 connection to the api, usable as a tonic client's transport.
#[derive(Debug, Clone)]
pub struct Connection {
    sender: http2::SendRequest<Body>,
}

impl Connection {
    /// Opens a connection to `authority` (`host:port`) and spawns the task
    /// that drives it.
    pub async fn open(authority: &str) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(authority).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "the HTTP/2 connection to the api ended");
            }
        });
        Ok(Self { sender })
    }
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

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        Box::pin(self.sender.send_request(request))
    }
}
