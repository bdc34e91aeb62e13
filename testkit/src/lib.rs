//! Test support for the likes service (unpublished).
//!
//! Every test gets a [`TestEnv`]: its own PostgreSQL database and its own
//! queue names, with random suffixes, removed when the env is dropped, so
//! tests run in parallel against the real RabbitMQ and PostgreSQL on
//! localhost and leave nothing behind. [`TestEnv::spawn_api`] and
//! [`TestEnv::spawn_worker`] start the real api and worker code in-process.

mod cleanup;
pub mod cluster;
pub mod commits;
pub mod faults;
pub mod http2;
pub mod load;
pub mod otlp;
pub mod pg_cluster;
pub mod process;
pub mod proxy;
mod running;
pub mod tls_proxy;
pub mod tools;
pub mod verify;

pub use running::{RunningApi, RunningWorker};

use anyhow::Context;
use diesel_async::AsyncPgConnection;
use likes_common::{Settings, config::SecretUrl};
use likes_proto::events::LikeEvent;
use likes_queue::{BasicProperties, Channel, Connection, codec};
use std::{future::Future, net::SocketAddr, time::Duration};
use tokio::time::Instant;

/// One test's (or load run's) private database and queues, and settings
/// pointing at them.
#[derive(Debug)]
pub struct TestEnv {
    pub settings: Settings,
    id: String,
}

impl TestEnv {
    /// Settings from the committed defaults (the local RabbitMQ and
    /// PostgreSQL), a pool of 4 connections, fresh names (see [`TestEnv::on`]).
    /// Tests build their settings in code: the environment does not reach them.
    pub fn new() -> Self {
        likes_service::telemetry::init_for_tests();
        let mut settings = Settings::defaults();
        settings.database.pool_size = std::num::NonZeroU32::new(4).expect("4 is not 0");
        Self::on(settings).expect("the committed default database url names a database")
    }

    /// `base` (say, `Settings::load()`, so `LIKES__*` reach a load run) with a
    /// fresh database `likes_test_<id>` on the same PostgreSQL server, fresh
    /// queues `likes.test.<id>.*` on the same broker, the api on an ephemeral
    /// port and no metrics endpoints. Dropping the env removes them.
    pub fn on(base: Settings) -> anyhow::Result<Self> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let mut settings = base;
        let url = settings.database.url.expose();
        let (server, name) = split_database_url(url)
            .with_context(|| format!("reading {}", settings.database.url))?;
        // What follows the name (`?sslmode=…`) is kept.
        let rest = &url[server.len() + 1 + name.len()..];
        settings.database.url = SecretUrl::new(format!("{server}/likes_test_{id}{rest}"));
        settings.amqp.queue = format!("likes.test.{id}.events");
        settings.amqp.dead_letter_queue = format!("likes.test.{id}.dead");
        settings.amqp.counts_exchange = format!("likes.test.{id}.counts");
        settings.api.listen = "127.0.0.1:0".parse().expect("literal address");
        // In-process services record into the process's global recorder;
        // only binaries serve metrics (tests that scrape pick free ports).
        settings.api.metrics_listen = String::new();
        settings.worker.metrics_listen = String::new();
        Ok(Self { settings, id })
    }

    /// The random suffix of this env's names.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Starts the real api on an ephemeral port.
    pub async fn spawn_api(&self) -> anyhow::Result<RunningApi> {
        RunningApi::spawn(&self.settings).await
    }

    /// Starts the real worker with this env's settings.
    pub async fn spawn_worker(&self) -> anyhow::Result<RunningWorker> {
        RunningWorker::spawn(&self.settings).await
    }

    /// Starts the real worker with settings derived from this env's (for
    /// instance with its database behind a [`proxy::FaultProxy`]).
    pub async fn spawn_worker_with(&self, settings: &Settings) -> anyhow::Result<RunningWorker> {
        RunningWorker::spawn(settings).await
    }

    /// A direct connection to this env's database (created and migrated).
    pub async fn db(&self) -> anyhow::Result<AsyncPgConnection> {
        let url = self.settings.database.url.expose();
        let ca_file = &self.settings.database.tls_ca_file;
        likes_db::ensure_database(url, ca_file).await?;
        likes_db::run_migrations(url, ca_file).await?;
        Ok(likes_db::establish(url, ca_file).await?)
    }

    /// A pool on this env's database (created and migrated), for polling.
    pub async fn pool(&self) -> anyhow::Result<likes_db::PgPool> {
        Ok(likes_db::connect(&self.settings.database).await?)
    }

    /// Waits until at least `pairs` (post, user) pairs are stored: the
    /// usual end of a load before checking it.
    pub async fn wait_for_stored_pairs(
        &self,
        pairs: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let pool = self.pool().await?;
        let want = i64::try_from(pairs)?;
        eventually(timeout, &format!("{pairs} pairs to be stored"), || async {
            let mut conn = likes_db::checkout(&pool).await?;
            Ok((verify::stored_pairs(&mut conn).await? >= want).then_some(()))
        })
        .await
    }

    /// Waits until the database holds exactly `expected` (see
    /// [`verify::check_states`]), failing with the last difference found.
    pub async fn wait_for_states(
        &self,
        expected: &[(String, String, verify::Expectation)],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let pool = self.pool().await?;
        let last = std::sync::Mutex::new(None);
        let waited = eventually(
            timeout,
            "the database to hold what was answered",
            || async {
                let mut conn = likes_db::checkout(&pool).await?;
                match verify::check_states(&mut conn, expected).await {
                    Ok(()) => Ok(Some(())),
                    Err(error) => {
                        *last.lock().expect("never poisoned") = Some(error);
                        Ok(None)
                    }
                }
            },
        )
        .await;
        let last = last.into_inner().expect("never poisoned");
        waited.map_err(|timeout| last.unwrap_or(timeout))
    }

    /// Waits until `post`'s counter reads exactly `likes`.
    pub async fn wait_for_count(
        &self,
        post: &str,
        likes: i64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let pool = self.pool().await?;
        eventually(
            timeout,
            &format!("{likes} likes of {post} stored"),
            || async {
                let mut conn = likes_db::checkout(&pool).await?;
                Ok((verify::stored_count(&mut conn, post).await? == likes).then_some(()))
            },
        )
        .await
    }

    /// Waits until `queue` holds exactly `messages` ready messages.
    pub async fn wait_for_queue_depth(
        &self,
        queue: &str,
        messages: u32,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        eventually(
            timeout,
            &format!("{messages} messages ready in {queue}"),
            || async { Ok((self.queue_depth(queue).await? == messages).then_some(())) },
        )
        .await
    }

    /// This env's settings with PostgreSQL reached through `addr` (say, a
    /// [`proxy::FaultProxy`] in front of it), the same database.
    pub fn settings_with_database_at(&self, addr: SocketAddr) -> anyhow::Result<Settings> {
        let (_, name) = split_database_url(self.settings.database.url.expose())?;
        let mut settings = self.settings.clone();
        settings.database.url = SecretUrl::new(format!("postgres://postgres@{addr}/{name}"));
        Ok(settings)
    }

    /// This env's settings with RabbitMQ reached through `addr` (say, a
    /// [`proxy::FaultProxy`] in front of the local broker).
    pub fn settings_with_broker_at(&self, addr: SocketAddr) -> Settings {
        let mut settings = self.settings.clone();
        settings.amqp.url = SecretUrl::new(format!("amqp://guest:guest@{addr}/%2f"));
        settings
    }

    /// A channel with this env's queues declared and confirms on.
    pub async fn amqp(&self) -> anyhow::Result<(Connection, Channel)> {
        let connection = likes_queue::connect(&self.settings.amqp, "likes-test").await?;
        let channel = likes_queue::confirm_channel(&connection).await?;
        likes_queue::declare_topology(&connection, &self.settings.amqp).await?;
        Ok((connection, channel))
    }

    /// Publishes raw bytes to the event queue, as a producer other than the
    /// api could, and waits for the confirm.
    pub async fn publish_raw(&self, channel: &Channel, body: &[u8]) -> anyhow::Result<()> {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(codec::EVENT_CONTENT_TYPE.into());
        self.publish_with(channel, body, properties).await
    }

    /// Publishes `body` with `properties` to the event queue and waits for
    /// the confirm.
    pub async fn publish_with(
        &self,
        channel: &Channel,
        body: &[u8],
        properties: BasicProperties,
    ) -> anyhow::Result<()> {
        likes_queue::publish_confirmed(channel, &self.settings.amqp.queue, body, properties)
            .await
            .context("publishing a test message")
    }

    /// Publishes a [`LikeEvent`] built by the test as a single-event
    /// message, as `likes-dlq replay` and producers other than the api do.
    pub async fn publish_event(&self, channel: &Channel, event: &LikeEvent) -> anyhow::Result<()> {
        use prost::Message;
        let properties = codec::event_properties(&event.event_id);
        self.publish_with(channel, &event.encode_to_vec(), properties)
            .await
    }

    /// Publishes `events` as one envelope, as the api does, and returns the
    /// envelope's message id.
    pub async fn publish_envelope(
        &self,
        channel: &Channel,
        events: &[LikeEvent],
    ) -> anyhow::Result<String> {
        let id = uuid::Uuid::now_v7().to_string();
        let properties = codec::envelope_properties(&id);
        self.publish_with(channel, &codec::encode_envelope(events), properties)
            .await?;
        Ok(id)
    }

    /// Takes every ready message off `queue` (acked: they are gone), in
    /// queue order, over one connection.
    pub async fn take_messages(&self, queue: &str) -> anyhow::Result<Vec<likes_queue::Delivery>> {
        let connection = likes_queue::connect(&self.settings.amqp, "likes-test-take").await?;
        let channel = connection.create_channel().await?;
        let mut messages = Vec::new();
        while let Some(message) = channel
            .basic_get(
                queue.into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .with_context(|| format!("reading from {queue}"))?
        {
            messages.push(message.delivery);
        }
        let _ = connection.close(200, "done".into()).await;
        Ok(messages)
    }

    /// The events of [`Self::take_messages`], in queue order: one message
    /// may hold many.
    pub async fn take_events(&self, queue: &str) -> anyhow::Result<Vec<LikeEvent>> {
        let mut events = Vec::new();
        for message in self.take_messages(queue).await? {
            events.extend(codec::decode(&message.properties, &message.data)?.events);
        }
        Ok(events)
    }

    /// What the dead-letter queue holds (left in place).
    pub async fn dead_letters(&self) -> anyhow::Result<Vec<likes_queue::dead_letters::DeadLetter>> {
        let (connection, channel) = self.amqp().await?;
        let letters =
            likes_queue::dead_letters::list(&channel, &self.settings.amqp, u32::MAX).await?;
        let _ = connection.close(200, "done".into()).await;
        Ok(letters)
    }

    /// Messages ready in `queue` (passive declare).
    pub async fn queue_depth(&self, queue: &str) -> anyhow::Result<u32> {
        let connection = likes_queue::connect(&self.settings.amqp, "likes-test-depth").await?;
        let channel = connection.create_channel().await?;
        let depth = likes_queue::queue_depth(&channel, queue)
            .await
            .with_context(|| format!("queue {queue} does not exist"))?;
        let _ = connection.close(200, "done".into()).await;
        Ok(depth)
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        cleanup::remove(&self.settings);
    }
}

/// A port on 127.0.0.1 that was free a moment ago, for a child process
/// that must listen on a known address.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// GET `http://addr/metrics`, the Prometheus text format.
pub async fn scrape(addr: &str) -> anyhow::Result<String> {
    Ok(likes_service::telemetry::fetch_metrics(addr).await?)
}

use likes_service::telemetry::catalog::{Role, counters_at_start};
pub use likes_service::telemetry::sample;

/// Asserts what a scrape of a freshly started, connected process shows:
/// `likes_amqp_connected{role}` 1, every counter of [`counters_at_start`],
/// `likes_build_info` of this version, process metrics (resident memory
/// above 1 MB), and `# HELP` for every `likes_` metric.
pub fn assert_started_metrics(body: &str, role: Role) {
    assert_eq!(
        sample(
            body,
            "likes_amqp_connected",
            Some(&format!("role=\"{}\"", role.as_str()))
        ),
        Some(1.0),
        "{body}"
    );
    for (name, label) in counters_at_start(role) {
        let label = label.map(|(key, value)| format!("{key}=\"{value}\""));
        assert!(
            sample(body, name, label.as_deref()).is_some(),
            "{name}{{{}}} is exported from the start: {body}",
            label.as_deref().unwrap_or("")
        );
    }
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        sample(body, "likes_build_info", Some(&version)),
        Some(1.0),
        "{body}"
    );
    assert!(
        sample(body, "process_resident_memory_bytes", None).is_some_and(|rss| rss > 1e6),
        "{body}"
    );
    assert_eq!(metrics_without_help(body), Vec::<String>::new(), "{body}");
}

/// The `likes_` metrics of a Prometheus text body that have no `# HELP`
/// line, each named once.
pub fn metrics_without_help(body: &str) -> Vec<String> {
    let described: std::collections::BTreeSet<&str> = body
        .lines()
        .filter_map(|line| line.strip_prefix("# HELP ")?.split(' ').next())
        .collect();
    body.lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split(' ').next())
        .filter(|name| name.starts_with("likes_") && !described.contains(name))
        .map(str::to_owned)
        .collect()
}

/// Asks the health endpoint `probe` (`/healthz` or `/readyz`) of the
/// metrics listener at `addr`.
pub async fn probe(
    addr: &str,
    probe: likes_service::telemetry::health::Probe,
) -> anyhow::Result<likes_service::telemetry::health::ProbeAnswer> {
    Ok(likes_service::telemetry::health::probe(addr, probe, Duration::from_secs(5)).await?)
}

/// Polls `/readyz` of the metrics listener at `addr` until it says `ready`
/// (200) or not (503), as wanted, failing after `timeout`; the answer.
pub async fn wait_for_readiness(
    addr: &str,
    ready: bool,
    timeout: Duration,
) -> anyhow::Result<likes_service::telemetry::health::ProbeAnswer> {
    let what = format!(
        "/readyz at {addr} to answer {}",
        if ready { 200 } else { 503 }
    );
    eventually(timeout, &what, || async {
        let answer = probe(addr, likes_service::telemetry::health::Probe::Ready)
            .await
            .ok();
        Ok(answer.filter(|a| a.ok == ready))
    })
    .await
}

/// Polls `check` every 20 ms until it returns `Some`, failing after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    eventually_every(Duration::from_millis(20), timeout, what, check).await
}

/// [`eventually`], polling every `interval`: for checks that cost, such as
/// one running `rabbitmqctl` (a new Erlang VM, most of a second of CPU).
pub async fn eventually_every<T, F, Fut>(
    interval: Duration,
    timeout: Duration,
    what: &str,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(interval).await;
    }
}

/// `postgres://u@h:5432/likes?x=y` → (`postgres://u@h:5432`, `likes`): the
/// server part and the database name of a test's database URL (tests use
/// the URL form), both slices of `url`.
pub fn split_database_url(url: &str) -> anyhow::Result<(&str, &str)> {
    let authority_start = url.find("://").context("no scheme")? + 3;
    let slash = url[authority_start..]
        .find('/')
        .map(|i| authority_start + i)
        .context("no database name")?;
    let name = url[slash + 1..]
        .split(['?', '#'])
        .next()
        .unwrap_or_default();
    anyhow::ensure!(!name.is_empty(), "no database name");
    Ok((&url[..slash], name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_env_keeps_the_servers_and_takes_fresh_names() {
        let mut base = Settings::defaults();
        base.database.url = SecretUrl::new("postgres://u:pw@db.example:6432/likes?sslmode=require");
        base.amqp.url = SecretUrl::new("amqp://u:pw@mq.example:5673/%2f");
        let env = TestEnv::on(base).expect("a url with a database name");
        let url = env.settings.database.url.expose();
        let expected = format!(
            "postgres://u:pw@db.example:6432/likes_test_{}?sslmode=require",
            env.id()
        );
        assert_eq!(url, expected);
        assert_eq!(
            env.settings.amqp.url.expose(),
            "amqp://u:pw@mq.example:5673/%2f"
        );
        assert_eq!(
            env.settings.amqp.queue,
            format!("likes.test.{}.events", env.id())
        );
        // Dropping it would try to remove what it never made on servers
        // that do not exist.
        std::mem::forget(env);
    }
}
