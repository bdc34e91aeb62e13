//! A TLS-terminating proxy in front of the local RabbitMQ or PostgreSQL, for
//! testing the services' TLS links against the real servers (which speak
//! plaintext here): it accepts TLS with a certificate of a throwaway CA
//! ([`TestPki`]) and forwards the decrypted bytes to the upstream.
//!
//! PostgreSQL negotiates TLS inside its own protocol: the client sends an
//! SSLRequest (8 bytes: length 8, code 80877103) on the plain connection and
//! starts the handshake once the server answers `S`. The proxy answers that
//! itself and strips the request, so the upstream sees a plain startup; a
//! client that starts without it (`sslmode=disable`) is forwarded as is and
//! counted as plaintext.

use anyhow::Context;
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// PostgreSQL's SSLRequest code (1234 << 16 | 5679).
const SSL_REQUEST_CODE: u32 = 80_877_103;

/// A throwaway CA, a server certificate it signed and a client certificate
/// it signed, as PEM files in a temporary directory removed on drop.
#[derive(Debug)]
pub struct TestPki {
    dir: PathBuf,
    pub ca_file: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client_cert_file: String,
    pub client_key_file: String,
    ca_pem: String,
}

impl TestPki {
    /// A CA and certificates whose server one names `server_names` (DNS
    /// names or IP addresses, such as `127.0.0.1`).
    pub fn generate(server_names: &[&str]) -> anyhow::Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own: two test CAs must not look like one (a
        // certificate of the other would fail as a bad signature instead
        // of an unknown issuer).
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("likes test CA {}", uuid::Uuid::new_v4()),
        );
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let server_key = KeyPair::generate()?;
        let names: Vec<String> = server_names.iter().map(|&n| n.to_owned()).collect();
        let server_cert = CertificateParams::new(names)?.signed_by(&server_key, &issuer)?;
        let client_key = KeyPair::generate()?;
        let client_cert = CertificateParams::new(vec!["likes-test-client".to_owned()])?
            .signed_by(&client_key, &issuer)?;

        let dir = std::env::temp_dir().join(format!("likes-pki-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let write = |name: &str, pem: &str| -> anyhow::Result<String> {
            let path = dir.join(name);
            std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
            Ok(path.to_string_lossy().into_owned())
        };
        Ok(Self {
            ca_file: write("ca.pem", &ca_cert.pem())?,
            client_cert_file: write("client.pem", &client_cert.pem())?,
            client_key_file: write("client.key", &client_key.serialize_pem())?,
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            ca_pem: ca_cert.pem(),
            dir,
        })
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the proxy's upstream speaks, which decides how TLS starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// AMQP: TLS from the first byte (`amqps://`).
    Amqp,
    /// PostgreSQL: an SSLRequest first, answered `S`, then TLS.
    Postgres,
}

/// Whether the proxy asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    /// Refuses the handshake unless the client shows a certificate signed
    /// by the proxy's CA.
    Required,
}

/// A running TLS proxy on 127.0.0.1; stops on drop.
#[derive(Debug)]
pub struct TlsProxy {
    addr: SocketAddr,
    counts: Arc<Counts>,
    stop: CancellationToken,
}

#[derive(Debug, Default)]
struct Counts {
    tls: AtomicUsize,
    plaintext: AtomicUsize,
    client_certificates: AtomicUsize,
}

impl TlsProxy {
    /// Listens on an ephemeral port of 127.0.0.1, serving `pki`'s server
    /// certificate, and forwards to `upstream`.
    pub async fn start(
        upstream: SocketAddr,
        kind: Upstream,
        pki: &TestPki,
        client_auth: ClientAuth,
    ) -> anyhow::Result<Self> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(pki, client_auth)?));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            upstream,
            kind,
            acceptor,
            Arc::clone(&counts),
            stop.clone(),
        ));
        Ok(Self { addr, counts, stop })
    }

    /// The address services should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections that completed a TLS handshake.
    pub fn tls_sessions(&self) -> usize {
        self.counts.tls.load(Ordering::SeqCst)
    }

    /// PostgreSQL connections that started without an SSLRequest.
    pub fn plaintext_sessions(&self) -> usize {
        self.counts.plaintext.load(Ordering::SeqCst)
    }

    /// TLS sessions in which the client showed a certificate.
    pub fn client_certificates(&self) -> usize {
        self.counts.client_certificates.load(Ordering::SeqCst)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn server_config(pki: &TestPki, client_auth: ClientAuth) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(pki.server_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes())?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Required => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
                roots.add(cert?)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    Ok(builder.with_single_cert(certs, key)?)
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    kind: Upstream,
    acceptor: TlsAcceptor,
    counts: Arc<Counts>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else {
            continue;
        };
        let acceptor = acceptor.clone();
        let counts = Arc::clone(&counts);
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = serve(client, upstream, kind, acceptor, counts) => {}
            }
        });
    }
}

/// One client connection: the PostgreSQL preamble if any, the handshake,
/// then bytes both ways until either side closes. A failed handshake just
/// drops the connection (the client reports it).
async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    kind: Upstream,
    acceptor: TlsAcceptor,
    counts: Arc<Counts>,
) {
    let _ = client.set_nodelay(true);
    if kind == Upstream::Postgres {
        let mut first = [0u8; 8];
        if client.read_exact(&mut first).await.is_err() {
            return;
        }
        let length = u32::from_be_bytes([first[0], first[1], first[2], first[3]]);
        let code = u32::from_be_bytes([first[4], first[5], first[6], first[7]]);
        if length != 8 || code != SSL_REQUEST_CODE {
            counts.plaintext.fetch_add(1, Ordering::SeqCst);
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            if server.write_all(&first).await.is_err() {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            return;
        }
        if client.write_all(b"S").await.is_err() {
            return;
        }
    }
    let Ok(mut tls) = acceptor.accept(client).await else {
        return;
    };
    counts.tls.fetch_add(1, Ordering::SeqCst);
    if tls.get_ref().1.peer_certificates().is_some() {
        counts.client_certificates.fetch_add(1, Ordering::SeqCst);
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
}
