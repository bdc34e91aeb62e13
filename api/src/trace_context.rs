//! Continues a caller's trace: with tracing on (`telemetry.otlp_endpoint`),
//! a request whose metadata carries W3C trace context (`traceparent`,
//! `tracestate`) is handled with that context attached, so its RPC span
//! (`Like`, `GetLikeCount`, ...) is a child of the caller's span instead
//! of the root of a new trace. Off, a request costs one atomic load here.

use futures_util::future::Either;
use likes_service::telemetry::otel::{self, WithContext};
use std::task::{Context, Poll};
use tonic::codegen::http::Request;
use tower::{Layer, Service};

/// Attaches each request's remote trace context while it is handled.
#[derive(Debug, Clone, Copy, Default)]
pub struct RemoteParentLayer;

impl<S> Layer<S> for RemoteParentLayer {
    type Service = RemoteParent<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RemoteParent { inner }
    }
}

/// See [`RemoteParentLayer`].
#[derive(Debug, Clone)]
pub struct RemoteParent<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for RemoteParent<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, WithContext<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match otel::remote_parent(request.headers()) {
            None => Either::Left(self.inner.call(request)),
            Some(parent) => {
                // Attached while the handler's future is made too: a span
                // opened there (rather than at its first poll) also gets it.
                let _attached = parent.clone().attach();
                Either::Right(otel::in_context(parent, self.inner.call(request)))
            }
        }
    }
}
