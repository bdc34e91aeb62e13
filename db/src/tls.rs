//! Opening one PostgreSQL connection, over TLS as the URL's `sslmode` says,
//! the way libpq reads it:
//!
//! | `sslmode` | TLS | certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | when the server offers it | not checked |
//! | `require` | always, or fail | not checked |
//! | `verify-ca` | always, or fail | signed by a trusted CA |
//! | `verify-full` | always, or fail | signed by a trusted CA and naming the host |
//!
//! The trusted CAs are those of `database.tls_ca_file`, or the system's
//! roots when it is empty. tokio-postgres knows only the first three modes,
//! so the two verifying ones reach it as `require` with a verifying rustls
//! configuration (ring provider). Every connection of the process goes
//! through [`establish`]: the pool's, the migrations' and the one that
//! creates the database.

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use std::{error::Error as StdError, sync::Arc};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    /// The mode tokio-postgres is given: it checks no certificate itself.
    fn for_tokio_postgres(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require | Self::VerifyCa | Self::VerifyFull => "require",
        }
    }
}

/// The `sslmode` of `url` (libpq's default `prefer` without one) and the URL
/// as tokio-postgres reads it.
pub fn ssl_mode(url: &str) -> Result<(SslMode, String), ConnectionError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((SslMode::Prefer, url.to_owned()));
    };
    let mut mode = SslMode::Prefer;
    let mut params = Vec::new();
    for param in query.split('&') {
        match param.split_once('=') {
            Some(("sslmode", value)) => {
                mode = SslMode::parse(value).ok_or_else(|| {
                    ConnectionError::InvalidConnectionUrl(format!(
                        "sslmode={value}: expected disable, prefer, require, verify-ca or \
                         verify-full"
                    ))
                })?;
                params.push(format!("sslmode={}", mode.for_tokio_postgres()));
            }
            _ => params.push(param.to_owned()),
        }
    }
    Ok((mode, format!("{base}?{}", params.join("&"))))
}

/// Opens a connection to `url`, with TLS as its `sslmode` says, verifying
/// against `tls_ca_file` (PEM; empty: the system's roots) where it asks to.
/// A refused certificate fails with an error naming the server and saying
/// it was not trusted.
pub async fn establish(url: &str, tls_ca_file: &str) -> Result<AsyncPgConnection, ConnectionError> {
    let (mode, url) = ssl_mode(url)?;
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| ConnectionError::InvalidConnectionUrl(e.to_string()))?;
    let server = server_address(&config);
    let failed = |error: tokio_postgres::Error| {
        ConnectionError::BadConnection(explain(&server, mode, &error))
    };
    if mode == SslMode::Disable {
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(failed)?;
        return AsyncPgConnection::try_from_client_and_connection(client, connection).await;
    }
    let tls = MakeRustlsConnect::new(client_config(mode, tls_ca_file)?);
    let (client, connection) = config.connect(tls).await.map_err(failed)?;
    AsyncPgConnection::try_from_client_and_connection(client, connection).await
}

/// `host:port` of the (first) server of `config`.
/// `host:port` of the servers `url` names (comma-separated when it names
/// several), without credentials: for metric labels and log lines.
pub fn server_label(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(config) => server_address(&config),
        Err(_) => "unparsable".to_owned(),
    }
}

fn server_address(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let servers: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                tokio_postgres::config::Host::Tcp(host) => host.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            // One port for all hosts, or one each (libpq's rule).
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    if servers.is_empty() {
        "localhost:5432".to_owned()
    } else {
        servers.join(",")
    }
}

fn explain(server: &str, mode: SslMode, error: &tokio_postgres::Error) -> String {
    match rustls_cause(error) {
        Some(refused @ rustls::Error::InvalidCertificate(_)) => {
            let trusted = match mode {
                SslMode::VerifyFull => {
                    "it must be signed by a CA of database.tls_ca_file (or of the system when \
                     that is empty) and name the host of database.url"
                }
                _ => {
                    "it must be signed by a CA of database.tls_ca_file (or of the system when \
                     that is empty)"
                }
            };
            format!(
                "TLS to PostgreSQL at {server} failed: the server's certificate is not trusted \
                 ({refused}); {trusted}"
            )
        }
        Some(other) => format!("TLS to PostgreSQL at {server} failed: {other}"),
        None => format!("PostgreSQL at {server}: {error}"),
    }
}

/// The rustls error somewhere in `error`'s causes (behind an `io::Error`,
/// whose `source` skips the error it wraps).
fn rustls_cause<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(found) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(found);
        }
        current = error.source();
    }
    None
}

/// The rustls configuration of a TLS `mode`.
fn client_config(mode: SslMode, tls_ca_file: &str) -> Result<ClientConfig, ConnectionError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectionError::BadConnection(format!("TLS setup: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            Arc::new(UncheckedCertificate(provider))
        }
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(roots(tls_ca_file)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| ConnectionError::BadConnection(format!("TLS setup: {e}")))?;
            if mode == SslMode::VerifyCa {
                Arc::new(AnyHostName(webpki))
            } else {
                webpki
            }
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The CAs of `tls_ca_file`, or the system's roots when it is empty.
fn roots(tls_ca_file: &str) -> Result<RootCertStore, ConnectionError> {
    let mut roots = RootCertStore::empty();
    if tls_ca_file.is_empty() {
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            return Err(ConnectionError::BadConnection(format!(
                "TLS to PostgreSQL: no system root certificate could be loaded ({:?}); set \
                 database.tls_ca_file",
                native.errors
            )));
        }
        return Ok(roots);
    }
    let unusable = |reason: String| {
        ConnectionError::BadConnection(format!("database.tls_ca_file {tls_ca_file}: {reason}"))
    };
    let pem = std::fs::read(tls_ca_file).map_err(|e| unusable(format!("cannot read it: {e}")))?;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| unusable(format!("unreadable PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| unusable(format!("not a CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(unusable("no PEM certificate in it".to_owned()));
    }
    Ok(roots)
}

/// `prefer` and `require`: encrypt without checking who answers, as libpq
/// does in these modes. The handshake's signatures are still verified, so
/// the server holds the key of the certificate it showed.
#[derive(Debug)]
struct UncheckedCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for UncheckedCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA, whatever host the
/// certificate names. webpki checks the name only once the chain is
/// trusted, so a name error means the chain passed.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_read_and_the_verifying_ones_reach_tokio_postgres_as_require() {
        let (mode, url) = ssl_mode("postgres://u@h/likes").expect("no query");
        assert_eq!(
            (mode, url.as_str()),
            (SslMode::Prefer, "postgres://u@h/likes")
        );
        let (mode, url) =
            ssl_mode("postgres://u@h/likes?application_name=x&sslmode=verify-full").expect("ok");
        assert_eq!(mode, SslMode::VerifyFull);
        assert_eq!(
            url,
            "postgres://u@h/likes?application_name=x&sslmode=require"
        );
        let (mode, url) = ssl_mode("postgres://u@h/likes?sslmode=verify-ca").expect("ok");
        assert_eq!(
            (mode, url.as_str()),
            (SslMode::VerifyCa, "postgres://u@h/likes?sslmode=require")
        );
        let (mode, _) = ssl_mode("postgres://u@h/likes?sslmode=disable").expect("ok");
        assert_eq!(mode, SslMode::Disable);
        let error = ssl_mode("postgres://u@h/likes?sslmode=allow").expect_err("not supported");
        assert!(error.to_string().contains("sslmode=allow"), "{error}");
    }

    #[test]
    fn the_server_is_named_by_host_and_port() {
        let config: tokio_postgres::Config = "postgres://u@db.example/likes".parse().expect("url");
        assert_eq!(server_address(&config), "db.example:5432");
        let config: tokio_postgres::Config =
            "postgres://u@127.0.0.1:6432/likes".parse().expect("url");
        assert_eq!(server_address(&config), "127.0.0.1:6432");
    }

    #[test]
    fn an_unusable_ca_file_is_refused_naming_the_setting() {
        let missing = std::env::temp_dir().join("likes-db-tls-missing-ca.pem");
        let error = roots(&missing.to_string_lossy()).expect_err("no such file");
        assert!(
            error.to_string().contains("database.tls_ca_file"),
            "{error}"
        );
    }
}
