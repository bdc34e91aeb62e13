//! TLS to `amqps://` nodes: the CA certificates and client certificate of
//! `amqp.tls_*`, and errors that say which node's certificate was refused.
//!
//! lapin does the handshake itself (rustls with the ring provider, trusting
//! the system's roots plus `amqp.tls_ca_file`, and checking the host name);
//! this module only reads the files, refusing ones that hold nothing usable
//! (lapin would skip an unparsable CA silently and then blame the broker),
//! and rewords a refused certificate so that the log line and the startup
//! error name the node and the setting to fix.

use lapin::{
    tcp::{OwnedIdentity, OwnedTLSConfig},
    uri::AMQPUri,
};
use likes_common::config::{AmqpSettings, SecretUrl};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::io;

/// Whether `url` (one node of `amqp.url`) connects over TLS.
pub fn is_tls(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("amqps://"))
}

/// The TLS configuration of `amqp.tls_*`, read from the files now (so a
/// reconnect picks up renewed certificates). Fails naming the setting and
/// the file when one cannot be read or holds no certificate or key.
pub fn tls_config(settings: &AmqpSettings) -> io::Result<OwnedTLSConfig> {
    let cert_chain = if settings.tls_ca_file.is_empty() {
        None
    } else {
        let pem = read("amqp.tls_ca_file", &settings.tls_ca_file)?;
        certificates("amqp.tls_ca_file", &settings.tls_ca_file, pem.as_bytes())?;
        Some(pem)
    };
    let identity = if settings.tls_client_cert_file.is_empty() {
        None
    } else {
        let cert = read("amqp.tls_client_cert_file", &settings.tls_client_cert_file)?;
        certificates(
            "amqp.tls_client_cert_file",
            &settings.tls_client_cert_file,
            cert.as_bytes(),
        )?;
        let key = read("amqp.tls_client_key_file", &settings.tls_client_key_file)?;
        PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|error| {
            invalid(format!(
                "amqp.tls_client_key_file {}: no PEM private key ({error})",
                settings.tls_client_key_file
            ))
        })?;
        Some(OwnedIdentity::PKCS8 {
            pem: cert.into_bytes(),
            key: key.into_bytes(),
        })
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

fn read(setting: &str, path: &str) -> io::Result<String> {
    std::fs::read_to_string(path).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot read {setting} {path}: {error}"),
        )
    })
}

/// Checks that `pem` holds at least one certificate, all of them parsable.
fn certificates(setting: &str, path: &str, pem: &[u8]) -> io::Result<()> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(format!("{setting} {path}: unreadable PEM ({error})")))?;
    if certs.is_empty() {
        return Err(invalid(format!(
            "{setting} {path}: no PEM certificate in it"
        )));
    }
    Ok(())
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// `error` from connecting to `url`, reworded when the TLS handshake failed:
/// which node (`host:port`), and, when its certificate was refused, that it
/// is not trusted and which settings decide that.
pub fn explain(url: &str, error: lapin::Error) -> lapin::Error {
    let lapin::ErrorKind::IOError(io_error) = error.kind() else {
        return error;
    };
    let Some(tls_error) = io_error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return error;
    };
    let node = node_address(url);
    let message = match tls_error {
        rustls::Error::InvalidCertificate(_) => format!(
            "TLS to RabbitMQ at {node} failed: the broker's certificate is not trusted \
             ({tls_error}); it must be signed by a CA of the system or of amqp.tls_ca_file, \
             and name the host of amqp.url"
        ),
        rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired
            | rustls::AlertDescription::BadCertificate
            | rustls::AlertDescription::UnknownCA
            | rustls::AlertDescription::CertificateUnknown,
        ) => format!(
            "TLS to RabbitMQ at {node} failed: the broker refused our client certificate or its \
             absence ({tls_error}); see amqp.tls_client_cert_file and amqp.tls_client_key_file"
        ),
        _ => format!("TLS to RabbitMQ at {node} failed: {tls_error}"),
    };
    io::Error::new(io::ErrorKind::InvalidData, message).into()
}

/// `host:port` of one node's URL (the masked URL if it does not parse).
pub fn node_address(url: &str) -> String {
    match url.parse::<AMQPUri>() {
        Ok(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
        Err(_) => SecretUrl::new(url).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use likes_common::Settings;

    #[test]
    fn amqps_urls_are_tls() {
        assert!(is_tls("amqps://u:p@mq.example/%2f"));
        assert!(is_tls("AMQPS://mq.example"));
        assert!(!is_tls("amqp://127.0.0.1:5672/%2f"));
        assert!(!is_tls("amqp"));
    }

    #[test]
    fn a_node_is_named_by_host_and_port() {
        assert_eq!(
            node_address("amqps://u:p@mq.example/%2f"),
            "mq.example:5671"
        );
        assert_eq!(node_address("amqp://127.0.0.1:5673/%2f"), "127.0.0.1:5673");
    }

    #[test]
    fn no_tls_files_mean_system_roots_and_no_client_certificate() {
        let config = tls_config(&Settings::defaults().amqp).expect("nothing to read");
        assert_eq!(config, OwnedTLSConfig::default());
    }

    #[test]
    fn unusable_tls_files_are_refused_naming_the_setting() {
        let dir = std::env::temp_dir().join(format!("likes-queue-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let mut settings = Settings::defaults().amqp;
        settings.tls_ca_file = empty.to_string_lossy().into_owned();
        let error = tls_config(&settings).expect_err("no certificate in it");
        assert!(error.to_string().contains("amqp.tls_ca_file"), "{error}");
        settings.tls_ca_file = dir.join("missing.pem").to_string_lossy().into_owned();
        let error = tls_config(&settings).expect_err("no such file");
        assert!(
            error.to_string().contains("cannot read amqp.tls_ca_file"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).expect("remove temp dir");
    }
}
