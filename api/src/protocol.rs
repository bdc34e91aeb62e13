//! What the gRPC over HTTP/2 protocol asks of a request before any service
//! sees it: a content type of `application/grpc` (or `application/grpc+proto`,
//! with optional parameters). Anything else is answered HTTP 415
//! (Unsupported Media Type), so that a non-gRPC client cannot mistake a
//! gRPC error (HTTP 200) for success, and the request is not handled.

use futures_util::future::Either;
use std::{
    future::{Ready, ready},
    task::{Context, Poll},
};
use tonic::{
    body::Body,
    codegen::http::{HeaderMap, Request, Response, StatusCode, header},
};
use tower::{Layer, Service};

/// Answers HTTP 415 to requests that are not gRPC.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcOnlyLayer;

impl<S> Layer<S> for GrpcOnlyLayer {
    type Service = GrpcOnly<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcOnly { inner }
    }
}

/// The service behind a [`GrpcOnlyLayer`].
#[derive(Debug, Clone)]
pub struct GrpcOnly<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for GrpcOnly<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if is_grpc(request.headers()) {
            return Either::Left(self.inner.call(request));
        }
        metrics::counter!("likes_requests_refused_total", "reason" => "content_type").increment(1);
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        Either::Right(ready(Ok(response)))
    }
}

/// `application/grpc` or `application/grpc+proto`, each optionally followed
/// by `;` and parameters (case-insensitive, as media types are).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let media_type = value.split(';').next().unwrap_or_default().trim();
    media_type.eq_ignore_ascii_case("application/grpc")
        || media_type.eq_ignore_ascii_case("application/grpc+proto")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codegen::http::HeaderValue;

    fn with(content_type: Option<&'static str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = content_type {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn only_grpc_content_types_are_grpc() {
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc; charset=utf-8",
            "Application/GRPC",
        ] {
            assert!(is_grpc(&with(Some(grpc))), "{grpc}");
        }
        for other in [
            "application/json",
            "text/plain",
            "application/grpc+json",
            "application/grpc-web",
            "application/grpcx",
            "",
        ] {
            assert!(!is_grpc(&with(Some(other))), "{other}");
        }
        assert!(!is_grpc(&with(None)));
    }
}
