//! TLS to RabbitMQ (`amqps://`) and PostgreSQL (`sslmode`), through
//! TLS-terminating proxies in front of the real local servers.
//!
//! The test env's own settings stay plaintext (its cleanup goes around the
//! proxies); the services get settings pointing at the proxies.

use likes_common::{Settings, config::SecretUrl};
use likes_proto::pb::{GetLikeCountRequest, LikeRequest};
use likes_testkit::{
    RunningApi, TestEnv, eventually,
    tls_proxy::{ClientAuth, TestPki, TlsProxy, Upstream},
    verify,
};
use std::{net::SocketAddr, time::Duration};

/// Longest a refused handshake may take to be reported: it must fail, not hang.
const FAILS_WITHIN: Duration = Duration::from_secs(15);

/// Both servers' certificates name the address the services dial.
const SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1"];

/// The plaintext broker and database of `env`, which the proxies forward to.
fn upstreams(env: &TestEnv) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let broker = likes_queue::tls::node_address(env.settings.amqp.url.expose()).parse()?;
    let (server, _) = likes_testkit::split_database_url(env.settings.database.url.expose())?;
    let host_port = server.rsplit('@').next().unwrap_or(server);
    let host_port = host_port.trim_start_matches("postgres://");
    Ok((broker, host_port.parse()?))
}

/// `env`'s settings with the broker behind `broker` (`amqps://`, trusting
/// `ca_file`) and the database behind `database` (`sslmode`, trusting `ca_file`).
fn over_tls(
    env: &TestEnv,
    broker: SocketAddr,
    database: SocketAddr,
    sslmode: &str,
    ca_file: &str,
) -> anyhow::Result<Settings> {
    let (_, name) = likes_testkit::split_database_url(env.settings.database.url.expose())?;
    let mut settings = env.settings.clone();
    settings.amqp.url = SecretUrl::new(format!("amqps://guest:guest@{broker}/%2f"));
    settings.amqp.tls_ca_file = ca_file.to_owned();
    settings.database.url = SecretUrl::new(format!(
        "postgres://postgres@{database}/{name}?sslmode={sslmode}"
    ));
    settings.database.tls_ca_file = ca_file.to_owned();
    Ok(settings)
}

#[tokio::test(flavor = "multi_thread")]
async fn likes_over_tls_to_the_broker_and_the_database_are_stored_and_counted_exactly()
-> anyhow::Result<()> {
    const POSTS: usize = 5;
    const USERS: usize = 40;
    let env = TestEnv::new();
    let (broker, database) = upstreams(&env)?;
    let pki = TestPki::generate(SERVER_NAMES)?;
    let amqps = TlsProxy::start(broker, Upstream::Amqp, &pki, ClientAuth::None).await?;
    let pg = TlsProxy::start(database, Upstream::Postgres, &pki, ClientAuth::None).await?;
    let settings = over_tls(&env, amqps.addr(), pg.addr(), "verify-full", &pki.ca_file)?;

    let api = RunningApi::spawn_with(&settings).await?;
    let _worker = env.spawn_worker_with(&settings).await?;
    let mut client = api.client.clone();
    for user in 0..USERS {
        for post in 0..POSTS {
            let request = LikeRequest {
                post_id: format!("post-{post}"),
                user_id: format!("user-{user}"),
            };
            client.like(request.clone()).await?;
            // Every third pair is liked twice: it still counts once.
            if user % 3 == 0 {
                client.like(request).await?;
            }
        }
    }
    for post in 0..POSTS {
        let post_id = format!("post-{post}");
        // Read back through the api, whose pool is on the TLS link too.
        eventually(Duration::from_secs(20), "the likes to be counted", || {
            let mut client = client.clone();
            let post_id = post_id.clone();
            async move {
                let count = client
                    .get_like_count(GetLikeCountRequest { post_id })
                    .await?
                    .into_inner()
                    .count;
                anyhow::ensure!(count <= USERS as i64, "{count} likes: more than the users");
                Ok((count == USERS as i64).then_some(()))
            }
        })
        .await?;
    }
    let mut db = env.db().await?;
    assert_eq!(verify::stored_pairs(&mut db).await?, (POSTS * USERS) as i64);
    assert_eq!(verify::counter_mismatches(&mut db).await?, 0);
    // Both links really went through the proxies, encrypted.
    assert!(
        amqps.tls_sessions() >= 2,
        "api and worker: {}",
        amqps.tls_sessions()
    );
    assert!(
        pg.tls_sessions() >= 2,
        "migrations and pools: {}",
        pg.tls_sessions()
    );
    assert_eq!(pg.plaintext_sessions(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_certificate_from_another_ca_fails_clearly_naming_the_node() -> anyhow::Result<()>
{
    let env = TestEnv::new();
    let (broker, _) = upstreams(&env)?;
    let pki = TestPki::generate(SERVER_NAMES)?;
    let other = TestPki::generate(SERVER_NAMES)?;
    let amqps = TlsProxy::start(broker, Upstream::Amqp, &pki, ClientAuth::None).await?;
    let mut settings = env.settings.clone();
    settings.amqp.url = SecretUrl::new(format!("amqps://guest:guest@{}/%2f", amqps.addr()));
    settings.amqp.tls_ca_file = other.ca_file.clone();

    let error = tokio::time::timeout(FAILS_WITHIN, likes_queue::connect(&settings.amqp, "t"))
        .await?
        .expect_err("a certificate of an untrusted CA");
    let message = error.to_string();
    assert!(message.contains(&amqps.addr().to_string()), "{message}");
    assert!(message.contains("certificate is not trusted"), "{message}");
    assert!(message.contains("amqp.tls_ca_file"), "{message}");

    // The api's startup fails with it too.
    let error = tokio::time::timeout(FAILS_WITHIN, RunningApi::spawn_with(&settings))
        .await?
        .expect_err("the api cannot reach its broker");
    let message = format!("{error:#}");
    assert!(message.contains(&amqps.addr().to_string()), "{message}");
    assert!(message.contains("certificate is not trusted"), "{message}");

    // With the right CA the same proxy is fine.
    settings.amqp.tls_ca_file = pki.ca_file.clone();
    let connection = likes_queue::connect(&settings.amqp, "t").await?;
    connection.close(200, "done".into()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_certificate_for_another_host_is_refused() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let (broker, _) = upstreams(&env)?;
    let pki = TestPki::generate(&["localhost"])?;
    let amqps = TlsProxy::start(broker, Upstream::Amqp, &pki, ClientAuth::None).await?;
    let mut settings = env.settings.clone();
    // The certificate names localhost, the URL 127.0.0.1.
    settings.amqp.url = SecretUrl::new(format!("amqps://guest:guest@{}/%2f", amqps.addr()));
    settings.amqp.tls_ca_file = pki.ca_file.clone();
    let error = tokio::time::timeout(FAILS_WITHIN, likes_queue::connect(&settings.amqp, "t"))
        .await?
        .expect_err("a certificate for another name");
    let message = error.to_string();
    assert!(message.contains(&amqps.addr().to_string()), "{message}");
    assert!(message.contains("certificate is not trusted"), "{message}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_asking_for_a_client_certificate_gets_the_configured_one() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let (broker, _) = upstreams(&env)?;
    let pki = TestPki::generate(SERVER_NAMES)?;
    let amqps = TlsProxy::start(broker, Upstream::Amqp, &pki, ClientAuth::Required).await?;
    let mut settings = env.settings.clone();
    settings.amqp.url = SecretUrl::new(format!("amqps://guest:guest@{}/%2f", amqps.addr()));
    settings.amqp.tls_ca_file = pki.ca_file.clone();

    let refused =
        tokio::time::timeout(FAILS_WITHIN, likes_queue::connect(&settings.amqp, "t")).await?;
    assert!(refused.is_err(), "no client certificate, no connection");
    assert_eq!(amqps.client_certificates(), 0);

    settings.amqp.tls_client_cert_file = pki.client_cert_file.clone();
    settings.amqp.tls_client_key_file = pki.client_key_file.clone();
    settings.validate()?;
    let connection = likes_queue::connect(&settings.amqp, "t").await?;
    likes_queue::declare_topology(&connection, &settings.amqp).await?;
    connection.close(200, "done".into()).await?;
    assert_eq!(amqps.client_certificates(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_certificate_from_another_ca_fails_clearly_naming_the_server()
-> anyhow::Result<()> {
    let env = TestEnv::new();
    let (broker, database) = upstreams(&env)?;
    let pki = TestPki::generate(SERVER_NAMES)?;
    let other = TestPki::generate(SERVER_NAMES)?;
    let pg = TlsProxy::start(database, Upstream::Postgres, &pki, ClientAuth::None).await?;
    let mut settings = over_tls(&env, broker, pg.addr(), "verify-full", &other.ca_file)?;
    settings.amqp = env.settings.amqp.clone();

    for sslmode in ["verify-full", "verify-ca"] {
        settings.database.url = SecretUrl::new(
            settings
                .database
                .url
                .expose()
                .replace("verify-full", sslmode),
        );
        let error = tokio::time::timeout(FAILS_WITHIN, likes_db::connect(&settings.database))
            .await?
            .expect_err("a certificate of an untrusted CA");
        let message = error.to_string();
        assert!(
            message.contains(&pg.addr().to_string()),
            "{sslmode}: {message}"
        );
        assert!(
            message.contains("certificate is not trusted"),
            "{sslmode}: {message}"
        );
        assert!(
            message.contains("database.tls_ca_file"),
            "{sslmode}: {message}"
        );
    }

    // The worker's startup fails with it too.
    let error = tokio::time::timeout(FAILS_WITHIN, env.spawn_worker_with(&settings))
        .await?
        .expect_err("the worker cannot reach its database");
    let message = format!("{error:#}");
    assert!(message.contains(&pg.addr().to_string()), "{message}");
    assert!(message.contains("certificate is not trusted"), "{message}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_full_checks_the_database_host_name_and_verify_ca_does_not() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let (broker, database) = upstreams(&env)?;
    // The certificate names localhost; the URL says 127.0.0.1.
    let pki = TestPki::generate(&["localhost"])?;
    let pg = TlsProxy::start(database, Upstream::Postgres, &pki, ClientAuth::None).await?;
    let settings = over_tls(&env, broker, pg.addr(), "verify-full", &pki.ca_file)?;
    let error = tokio::time::timeout(FAILS_WITHIN, likes_db::connect(&settings.database))
        .await?
        .expect_err("a certificate for another host");
    let message = error.to_string();
    assert!(message.contains(&pg.addr().to_string()), "{message}");
    assert!(message.contains("certificate is not trusted"), "{message}");
    assert!(message.contains("name the host"), "{message}");

    let settings = over_tls(&env, broker, pg.addr(), "verify-ca", &pki.ca_file)?;
    let pool = likes_db::connect(&settings.database).await?;
    let mut conn = likes_db::checkout(&pool).await?;
    assert_eq!(verify::stored_pairs(&mut conn).await?, 0);
    assert!(pg.tls_sessions() >= 3, "{}", pg.tls_sessions());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn require_and_prefer_encrypt_without_checking_and_disable_does_not_encrypt()
-> anyhow::Result<()> {
    let env = TestEnv::new();
    let (broker, database) = upstreams(&env)?;
    let pki = TestPki::generate(&["db.elsewhere.example"])?;
    let untrusted = TestPki::generate(SERVER_NAMES)?;
    let pg = TlsProxy::start(database, Upstream::Postgres, &pki, ClientAuth::None).await?;

    let mut sessions = 0;
    for sslmode in ["require", "prefer"] {
        let settings = over_tls(&env, broker, pg.addr(), sslmode, &untrusted.ca_file)?;
        let pool = likes_db::connect(&settings.database).await?;
        let mut conn = likes_db::checkout(&pool).await?;
        assert_eq!(verify::stored_pairs(&mut conn).await?, 0);
        assert!(
            pg.tls_sessions() > sessions,
            "{sessions} TLS sessions after {sslmode}"
        );
        sessions = pg.tls_sessions();
    }
    assert_eq!(pg.plaintext_sessions(), 0);

    let settings = over_tls(&env, broker, pg.addr(), "disable", "")?;
    let pool = likes_db::connect(&settings.database).await?;
    let mut conn = likes_db::checkout(&pool).await?;
    assert_eq!(verify::stored_pairs(&mut conn).await?, 0);
    assert!(pg.plaintext_sessions() >= 1);
    assert_eq!(pg.tls_sessions(), sessions, "disable never starts TLS");
    Ok(())
}
