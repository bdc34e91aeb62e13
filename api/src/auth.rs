//! Who may call: an optional bearer token and, under mutual TLS, a client
//! certificate, checked by a tonic interceptor before the service runs.
//! Callers without them get UNAUTHENTICATED; the token is never logged.

use std::sync::Arc;
use subtle::ConstantTimeEq;
use tonic::{Request, Status, service::Interceptor};

/// The credentials a call must carry; requires nothing when built `open`.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// `Bearer <token>`, the whole expected header value.
    expected_header: Option<Arc<[u8]>>,
    require_client_cert: bool,
}

impl Auth {
    pub fn new(token: &str, require_client_cert: bool) -> Self {
        Self {
            expected_header: (!token.is_empty())
                .then(|| format!("Bearer {token}").into_bytes().into()),
            require_client_cert,
        }
    }

    /// Requires nothing.
    pub fn open() -> Self {
        Self::default()
    }
}

impl Interceptor for Auth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(expected) = &self.expected_header {
            let given = request
                .metadata()
                .get("authorization")
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            // Constant time, so timing does not reveal a matching prefix.
            if !bool::from(given.ct_eq(expected)) {
                return Err(Status::unauthenticated(
                    "missing or wrong bearer token (metadata \"authorization: Bearer <token>\")",
                ));
            }
        }
        if self.require_client_cert && request.peer_certs().is_none_or(|certs| certs.is_empty()) {
            return Err(Status::unauthenticated("a client certificate is required"));
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn with_header(value: &str) -> Request<()> {
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert("authorization", value.parse().expect("ascii"));
        request
    }

    #[test]
    fn a_token_is_required_when_configured() {
        let mut auth = Auth::new("s3cret", false);
        assert!(auth.call(with_header("Bearer s3cret")).is_ok());
        let refused = auth
            .call(with_header("Bearer wrong"))
            .expect_err("wrong token");
        assert_eq!(refused.code(), Code::Unauthenticated);
        assert!(auth.call(Request::new(())).is_err());
        assert!(!refused.message().contains("s3cret"));
    }

    #[test]
    fn open_requires_nothing() {
        assert!(Auth::open().call(Request::new(())).is_ok());
    }

    #[test]
    fn a_client_certificate_is_required_under_mutual_tls() {
        let refused = Auth::new("", true)
            .call(Request::new(()))
            .expect_err("no certificate");
        assert_eq!(refused.code(), Code::Unauthenticated);
    }
}
