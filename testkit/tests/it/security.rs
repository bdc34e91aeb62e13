//! Optional bearer token and (mutual) TLS on the gRPC server.

use likes_proto::pb::{LikeRequest, like_service_client::LikeServiceClient};
use likes_testkit::TestEnv;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tonic::{
    Code,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn like_request(token: Option<&str>) -> tonic::Request<LikeRequest> {
    let mut request = tonic::Request::new(LikeRequest {
        post_id: "p".into(),
        user_id: "u".into(),
    });
    if let Some(token) = token {
        let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("ascii token");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_token_configured_likes_need_it_and_health_stays_open() -> anyhow::Result<()> {
    let mut env = TestEnv::new();
    env.settings.api.auth_token = likes_common::config::Secret::new("t0ken-for-tests");
    let api = env.spawn_api().await?;
    let mut client = api.client.clone();

    let refused = client.like(like_request(None)).await.expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let refused = client
        .like(like_request(Some("wrong")))
        .await
        .expect_err("wrong token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(
        env.queue_depth(&env.settings.amqp.queue).await?,
        0,
        "nothing enqueued"
    );

    client.like(like_request(Some("t0ken-for-tests"))).await?;
    let channel = Channel::from_shared(format!("http://{}", api.addr))?
        .connect()
        .await?;
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await?;
    assert_eq!(health.into_inner().status, 1, "SERVING without a token");
    Ok(())
}

struct Pki {
    ca_pem: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> anyhow::Result<Pki> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let server_key = KeyPair::generate()?;
    let server_cert =
        CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&server_key, &issuer)?;
    let client_key = KeyPair::generate()?;
    let client_cert = CertificateParams::new(vec!["likes-test-client".to_owned()])?
        .signed_by(&client_key, &issuer)?;
    Ok(Pki {
        ca_pem: ca_cert.pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn under_mutual_tls_likes_need_a_client_certificate() -> anyhow::Result<()> {
    let pki = pki()?;
    let dir = std::env::temp_dir().join(format!("likes-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let write = |name: &str, pem: &str| -> anyhow::Result<String> {
        let path = dir.join(name);
        std::fs::write(&path, pem)?;
        Ok(path.to_string_lossy().into_owned())
    };
    let mut env = TestEnv::new();
    env.settings.api.tls_cert_file = write("server.pem", &pki.server_cert)?;
    env.settings.api.tls_key_file = write("server.key", &pki.server_key)?;
    env.settings.api.tls_client_ca_file = write("ca.pem", &pki.ca_pem)?;
    let api = likes_testkit::RunningApi::spawn_tls(&env.settings).await;
    std::fs::remove_dir_all(&dir)?;
    let addr = api?;

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    let endpoint = format!("https://localhost:{}", addr.port());

    let anonymous = Channel::from_shared(endpoint.clone())?
        .tls_config(tls.clone())?
        .connect()
        .await?;
    let refused = LikeServiceClient::new(anonymous)
        .like(like_request(None))
        .await
        .expect_err("no client certificate");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    let with_cert = Channel::from_shared(endpoint)?
        .tls_config(tls.identity(Identity::from_pem(&pki.client_cert, &pki.client_key)))?
        .connect()
        .await?;
    LikeServiceClient::new(with_cert)
        .like(like_request(None))
        .await?;
    assert_eq!(env.queue_depth(&env.settings.amqp.queue).await?, 1);
    Ok(())
}
