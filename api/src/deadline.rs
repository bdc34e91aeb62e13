//! The caller's deadline (`grpc-timeout`), ended as DEADLINE_EXCEEDED.
//!
//! tonic's server wraps every call in its own timer for `grpc-timeout`,
//! outside the layers added with `Server::layer`, and answers its expiry
//! with CANCELLED ("Timeout expired"): to gRPC callers that reads as "you
//! cancelled", and retry policies skip it. This layer, inside tonic's,
//! ends the call [`MARGIN`] earlier with DEADLINE_EXCEEDED. Its timer is
//! due at least one tick of tokio's millisecond timer wheel before tonic's,
//! and tonic polls the call (this layer) before its own timer, so this
//! layer's answer always wins. A call that fails earlier for its own
//! reason, such as the broker's confirm timeout (UNAVAILABLE), keeps it.

use pin_project_lite::pin_project;
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio::time::Sleep;
use tonic::{
    Status,
    body::Body,
    codegen::http::{HeaderMap, Request, Response},
};
use tower::{Layer, Service};

/// How much earlier than the caller's deadline the call is ended: two ticks
/// of tokio's timer, so the setup time between tonic's timer and this one
/// can never bring them onto the same tick.
pub const MARGIN: Duration = Duration::from_millis(2);

/// Ends calls with DEADLINE_EXCEEDED when their `grpc-timeout` passes.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline { inner }
    }
}

/// The service behind a [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for Deadline<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let timer = grpc_timeout(request.headers())
            .map(|timeout| tokio::time::sleep(timeout.saturating_sub(MARGIN)));
        DeadlineFuture {
            inner: self.inner.call(request),
            timer,
        }
    }
}

pin_project! {
    /// A call's response, or DEADLINE_EXCEEDED once its deadline passed.
    #[derive(Debug)]
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        timer: Option<Sleep>,
    }
}

impl<F, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(response) = this.inner.poll(cx) {
            return Poll::Ready(response);
        }
        let Some(timer) = this.timer.as_pin_mut() else {
            return Poll::Pending;
        };
        ready!(timer.poll(cx));
        metrics::counter!("likes_deadlines_exceeded_total").increment(1);
        Poll::Ready(Ok(Status::deadline_exceeded(
            "the caller's deadline (grpc-timeout) passed before the call completed",
        )
        .into_http()))
    }
}

/// The `grpc-timeout` of a request, as the gRPC over HTTP/2 protocol spells
/// it: at most 8 digits and a unit (H, M, S, m, u, n). A malformed value is
/// ignored, as tonic ignores it.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codegen::http::HeaderValue;

    fn parsed(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", HeaderValue::from_str(value).expect("ascii"));
        grpc_timeout(&headers)
    }

    #[test]
    fn parses_the_protocols_timeout_units() {
        assert_eq!(parsed("300m"), Some(Duration::from_millis(300)));
        assert_eq!(parsed("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parsed("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parsed("5M"), Some(Duration::from_secs(300)));
        assert_eq!(parsed("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parsed("10n"), Some(Duration::from_nanos(10)));
        assert_eq!(parsed("123456789m"), None, "more than 8 digits");
        assert_eq!(parsed("m"), None);
        assert_eq!(parsed("-1m"), None);
        assert_eq!(parsed("10x"), None);
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_still_running_at_its_deadline_ends_deadline_exceeded() {
        let mut service = DeadlineLayer.layer(tower::service_fn(|_: Request<Body>| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
        }));
        let mut request = Request::new(Body::empty());
        request
            .headers_mut()
            .insert("grpc-timeout", HeaderValue::from_static("300m"));
        let started = tokio::time::Instant::now();
        let response = service.call(request).await.expect("infallible");
        assert_eq!(started.elapsed(), Duration::from_millis(298));
        let status = Status::from_header_map(response.headers()).expect("trailers-only");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    }
}
