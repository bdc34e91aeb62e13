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
use likes_common::config::conninfo;
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

/// A `database.url` as the service connects with it: either of libpq's
/// forms (`postgres://…` URL, or `host=… dbname=…` keywords and values),
/// parsed by tokio-postgres, with the `sslmode` as libpq reads it (default
/// `prefer`).
#[derive(Debug, Clone)]
pub struct Target {
    mode: SslMode,
    config: tokio_postgres::Config,
}

impl Target {
    pub fn parse(url: &str) -> Result<Self, ConnectionError> {
        let (mode, for_tokio_postgres) = if conninfo::is_url(url) {
            rewrite_url_sslmode(url)?
        } else {
            rewrite_keyword_sslmode(url)?
        };
        let config = for_tokio_postgres
            .parse()
            .map_err(|e: tokio_postgres::Error| {
                ConnectionError::InvalidConnectionUrl(e.to_string())
            })?;
        Ok(Self { mode, config })
    }

    pub fn ssl_mode(&self) -> SslMode {
        self.mode
    }

    /// The database it names, if it names one.
    pub fn dbname(&self) -> Option<&str> {
        self.config.get_dbname()
    }

    /// The same servers, credentials and TLS, another database.
    pub fn with_dbname(mut self, name: &str) -> Self {
        self.config.dbname(name);
        self
    }

    /// `host:port` of its servers, without credentials.
    pub fn server_label(&self) -> String {
        server_address(&self.config)
    }

    /// Opens a connection, with TLS as the `sslmode` says, verifying against
    /// `tls_ca_file` (PEM; empty: the system's roots) where it asks to. A
    /// refused certificate fails with an error naming the server and saying
    /// it was not trusted.
    pub async fn connect(&self, tls_ca_file: &str) -> Result<AsyncPgConnection, ConnectionError> {
        let server = self.server_label();
        let failed = |error: tokio_postgres::Error| {
            ConnectionError::BadConnection(explain(&server, self.mode, &error))
        };
        if self.mode == SslMode::Disable {
            let (client, connection) = self
                .config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(failed)?;
            return AsyncPgConnection::try_from_client_and_connection(client, connection).await;
        }
        let tls = MakeRustlsConnect::new(client_config(self.mode, tls_ca_file)?);
        let (client, connection) = self.config.connect(tls).await.map_err(failed)?;
        AsyncPgConnection::try_from_client_and_connection(client, connection).await
    }
}

fn parse_mode(value: &str) -> Result<SslMode, ConnectionError> {
    SslMode::parse(value).ok_or_else(|| {
        ConnectionError::InvalidConnectionUrl(format!(
            "sslmode={value}: expected disable, prefer, require, verify-ca or verify-full"
        ))
    })
}

/// The `sslmode` of a URL, and the URL with a mode tokio-postgres knows.
fn rewrite_url_sslmode(url: &str) -> Result<(SslMode, String), ConnectionError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((SslMode::Prefer, url.to_owned()));
    };
    let mut mode = SslMode::Prefer;
    let mut params = Vec::new();
    for param in query.split('&') {
        match param.split_once('=') {
            Some(("sslmode", value)) => {
                mode = parse_mode(value)?;
                params.push(format!("sslmode={}", mode.for_tokio_postgres()));
            }
            _ => params.push(param.to_owned()),
        }
    }
    Ok((mode, format!("{base}?{}", params.join("&"))))
}

/// The `sslmode` of a keyword/value string, and the string with a mode
/// tokio-postgres knows.
fn rewrite_keyword_sslmode(url: &str) -> Result<(SslMode, String), ConnectionError> {
    let mut pairs = conninfo::parse(url).map_err(ConnectionError::InvalidConnectionUrl)?;
    let mut mode = SslMode::Prefer;
    for (keyword, value) in &mut pairs {
        if keyword == "sslmode" {
            mode = parse_mode(value)?;
            *value = mode.for_tokio_postgres().to_owned();
        }
    }
    Ok((
        mode,
        conninfo::render(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
    ))
}

/// Opens a connection to `url` (see [`Target`]).
pub async fn establish(url: &str, tls_ca_file: &str) -> Result<AsyncPgConnection, ConnectionError> {
    Target::parse(url)?.connect(tls_ca_file).await
}

/// `host:port` of the servers `url` names (comma-separated when it names
/// several), without credentials: for metric labels and log lines.
pub fn server_label(url: &str) -> String {
    Target::parse(url).map_or_else(|_| "unparsable".to_owned(), |target| target.server_label())
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

    fn ssl_mode(url: &str) -> Result<(SslMode, String), ConnectionError> {
        rewrite_url_sslmode(url)
    }

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
    fn keyword_value_strings_are_read_like_urls() {
        let target = Target::parse(
            "host=db.example port=6432 user=likes password='a b' dbname=likes sslmode=verify-full",
        )
        .expect("parses");
        assert_eq!(target.ssl_mode(), SslMode::VerifyFull);
        assert_eq!(target.dbname(), Some("likes"));
        assert_eq!(target.server_label(), "db.example:6432");
        assert_eq!(target.config.get_password(), Some("a b".as_bytes()));
        assert_eq!(
            target.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let maintenance = target.with_dbname("postgres");
        assert_eq!(maintenance.dbname(), Some("postgres"));
        assert_eq!(maintenance.ssl_mode(), SslMode::VerifyFull);
        let url = Target::parse("postgresql://u@h:5433/likes?sslmode=disable").expect("url");
        assert_eq!(
            (url.ssl_mode(), url.dbname(), url.server_label().as_str()),
            (SslMode::Disable, Some("likes"), "h:5433")
        );
        for bad in ["host=db sslmode=allow", "host=db password='open", "host"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
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
