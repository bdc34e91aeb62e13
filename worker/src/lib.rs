//! The likes worker: consumes like events from RabbitMQ, writes them to
//! PostgreSQL in batches (one statement per batch) and acks each batch once
//! it is committed.
//!
//! `main.rs` only loads settings and calls [`Worker::build`] and
//! [`Worker::run_until_stopped`], so tests start exactly this code.

pub mod batcher;
pub mod consumer;
pub mod error;
pub mod event;
pub mod stats;
pub mod writer;

use anyhow::Context;
use error::WorkerError;
use likes_common::Settings;
use likes_queue::backoff::Reconnect;
use likes_service::telemetry::health::{self, Health, Probe, ReadinessReporter};
use stats::WorkerStats;
use std::{sync::Arc, time::Duration};
use tokio_util::sync::CancellationToken;
use writer::Writer;

/// A worker connected to PostgreSQL, ready to consume.
#[derive(Debug)]
pub struct Worker {
    settings: Settings,
    pool: likes_db::PgPool,
    writer: Writer,
    stats: Arc<WorkerStats>,
}

impl Worker {
    /// Connects to PostgreSQL (creating and migrating the database if needed).
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let pool = likes_db::connect(&settings.database)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {}", settings.database.url))?;
        Ok(Self {
            writer: Writer::new(pool.clone(), &settings.worker),
            pool,
            settings: settings.clone(),
            stats: Arc::default(),
        })
    }

    /// What this worker has done so far.
    pub fn stats(&self) -> Arc<WorkerStats> {
        Arc::clone(&self.stats)
    }

    /// Connects to RabbitMQ, declares the topology and consumes until
    /// `shutdown` is cancelled; the batch in hand is then written and acked
    /// and the channel and connection closed. A lost connection is re-opened
    /// with capped exponential backoff; unacked messages of the lost channel
    /// are redelivered by the broker, and writing them again is harmless.
    ///
    /// The worker is ready (`/readyz`) while it consumes every queue it
    /// should, and `likes_amqp_connected{role="worker"}` is 1 then, 0 before
    /// the first connection and while reconnecting.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let amqp_settings = &self.settings.amqp;
        let readiness = Health::process().register("worker", "connecting to RabbitMQ");
        metrics::gauge!("likes_amqp_connected", "role" => "worker").set(0.0);
        // The first connection fails loudly: a wrong URL should stop startup.
        let mut session = Some(
            likes_queue::connect(amqp_settings, "likes-worker")
                .await
                .with_context(|| format!("connecting to RabbitMQ at {}", amqp_settings.url))?,
        );
        let mut backoff = Reconnect::new();
        likes_db::spawn_pool_gauges(self.pool.clone(), shutdown.clone());
        loop {
            let connection = match session.take() {
                Some(connection) => connection,
                None => match likes_queue::connect(amqp_settings, "likes-worker").await {
                    Ok(connection) => connection,
                    Err(error) => {
                        let delay = backoff.next_delay();
                        readiness.not_ready("cannot reach RabbitMQ; retrying");
                        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot reach RabbitMQ");
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(delay) => continue,
                        }
                    }
                },
            };
            let started = tokio::time::Instant::now();
            match self.consume_on(&connection, &readiness, &shutdown).await {
                Ok(()) => break,
                // Not a broker outage: another shard layout's queues exist.
                Err(WorkerError::Topology(
                    error @ likes_queue::TopologyError::ShardsChanged { .. },
                )) => {
                    likes_queue::close(&connection, "refused").await;
                    return Err(error.into());
                }
                Err(error) if shutdown.is_cancelled() => {
                    tracing::warn!(%error, "RabbitMQ failed while stopping");
                    break;
                }
                Err(error) => {
                    if started.elapsed() > Duration::from_secs(10) {
                        backoff = Reconnect::new();
                    }
                    let delay = backoff.next_delay();
                    metrics::counter!("likes_amqp_reconnects_total", "role" => "worker")
                        .increment(1);
                    readiness.not_ready("lost RabbitMQ; reconnecting");
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "lost RabbitMQ; reconnecting");
                    likes_queue::close(&connection, "reconnecting").await;
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        tracing::info!(
            batches = self.stats.batches(),
            events = self.stats.events(),
            "likes-worker stopped"
        );
        Ok(())
    }

    /// One session on one connection: declare, consume every shard of
    /// `worker.shards` on a channel of its own, then close cleanly. The
    /// first shard to fail ends the session (the others' unacked messages
    /// come back when the connection closes). Ready from the moment every
    /// shard's consumer is registered until the session ends.
    async fn consume_on(
        &self,
        connection: &likes_queue::Connection,
        readiness: &ReadinessReporter,
        shutdown: &CancellationToken,
    ) -> Result<(), WorkerError> {
        likes_queue::declare_topology(connection, &self.settings.amqp).await?;
        let shards = self
            .settings
            .consumed_shards()
            .expect("settings were validated at load");
        let queues: Vec<String> = shards
            .iter()
            .map(|&shard| likes_queue::shard_queue(&self.settings.amqp, shard))
            .collect();
        let session = shutdown.child_token();
        let _stop_gauges = session.clone().drop_guard();
        tokio::spawn(report_queue_depth(
            connection.create_channel().await?,
            queues.clone(),
            session,
        ));
        let mut channels = Vec::with_capacity(queues.len());
        for _ in &queues {
            channels.push(connection.create_channel().await?);
        }
        let counts = likes_queue::counts::Publisher::new(connection, &self.settings.amqp);
        let consumers = futures_util::future::try_join_all(
            channels
                .iter()
                .zip(&queues)
                .map(|(channel, queue)| consumer::subscribe(channel, queue, &self.settings)),
        )
        .await?;
        metrics::gauge!("likes_amqp_connected", "role" => "worker").set(1.0);
        readiness.ready();
        let consumed =
            futures_util::future::try_join_all(channels.iter().zip(consumers).zip(&queues).map(
                |((channel, consumer), queue)| {
                    consumer::consume(
                        channel,
                        consumer,
                        queue,
                        &self.settings,
                        &self.writer,
                        &counts,
                        &self.stats,
                        shutdown,
                    )
                },
            ))
            .await;
        metrics::gauge!("likes_amqp_connected", "role" => "worker").set(0.0);
        readiness.not_ready(if shutdown.is_cancelled() {
            "stopping"
        } else {
            "lost RabbitMQ; reconnecting"
        });
        consumed?;
        for channel in channels {
            channel.close(200, "shutdown".into()).await?;
        }
        connection.close(200, "shutdown".into()).await?;
        Ok(())
    }
}

/// `likes-worker --health-check [--pid N]`: succeeds while the worker
/// process N is live: its metrics endpoint (`worker.metrics_listen`; an
/// unspecified address means this host) answers `GET /healthz` with 200.
///
/// Liveness, not readiness: container runtimes run this check, and some
/// (Docker Swarm, an autoheal sidecar) replace a container that fails it. A
/// worker waiting out a broker outage reconnects by itself; replacing it
/// would not bring the broker back. Whether it consumes is `/readyz` (see
/// [`readiness_check`]), and `likes_amqp_connected{role="worker"}`.
///
/// It never reports another process's health as this one's: every answer
/// of the endpoint names the serving process (`likes-process-id` header),
/// and the check fails unless that is the worker it checks. Without
/// `--pid`, that worker is the one `likes-worker` process in this PID
/// namespace (a container's, or the host's) other than health checks; with
/// none or several, the check fails and says to pass `--pid`. A worker whose
/// metrics address was taken (it warned at start) serves no endpoint, so its
/// check fails: give each worker on one host its own
/// `LIKES__WORKER__METRICS_LISTEN`.
pub async fn health_check(settings: &Settings, pid: Option<u32>) -> anyhow::Result<()> {
    check(settings, pid, Probe::Live).await
}

/// Like [`health_check`], but asks `/readyz`: succeeds while the worker
/// consumes every queue of `worker.shards`. `--health-check --ready`.
pub async fn readiness_check(settings: &Settings, pid: Option<u32>) -> anyhow::Result<()> {
    check(settings, pid, Probe::Ready).await
}

/// How long a check waits for the endpoint's answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

async fn check(settings: &Settings, pid: Option<u32>, probe: Probe) -> anyhow::Result<()> {
    let listen = &settings.worker.metrics_listen;
    anyhow::ensure!(
        !listen.is_empty(),
        "the health check needs worker.metrics_listen"
    );
    let mut addr: std::net::SocketAddr = listen.parse().context("worker.metrics_listen")?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let pid = match pid {
        Some(pid) => pid,
        None => the_one_worker()?,
    };
    let answer = health::probe(&addr.to_string(), probe, CHECK_TIMEOUT).await?;
    anyhow::ensure!(
        answer.process_id == Some(pid),
        "the metrics endpoint {addr} belongs to process {}, not to likes-worker {pid} \
         (was its LIKES__WORKER__METRICS_LISTEN taken at start?)",
        answer
            .process_id
            .map_or_else(|| "unknown".to_owned(), |p| p.to_string())
    );
    anyhow::ensure!(
        answer.ok,
        "{} of likes-worker {pid}: {}",
        probe.path(),
        answer.text
    );
    Ok(())
}

/// The id of the one process of this program (by its name in
/// `/proc/*/comm`) in this PID namespace that is not a health check.
fn the_one_worker() -> anyhow::Result<u32> {
    let me = std::process::id();
    let name = std::fs::read_to_string("/proc/self/comm").context("reading /proc/self/comm")?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let Some(pid) = entry
            .ok()
            .and_then(|e| e.file_name().to_str()?.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let same_name =
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm == name);
        let checking = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            cmdline
                .split(|&b| b == 0)
                .any(|arg| arg == b"--health-check")
        });
        if same_name && !checking {
            found.push(pid);
        }
    }
    match found.as_slice() {
        [pid] => Ok(*pid),
        [] => anyhow::bail!("no {} process runs here", name.trim()),
        pids => anyhow::bail!(
            "{} {} processes run here (pids {pids:?}); say which to check with --pid",
            pids.len(),
            name.trim()
        ),
    }
}

/// Publishes the ready messages of the queues this worker consumes as
/// `likes_queue_depth` every two seconds, on a channel of its own, until
/// `stop` is cancelled.
async fn report_queue_depth(
    channel: likes_queue::Channel,
    queues: Vec<String>,
    stop: CancellationToken,
) {
    loop {
        let mut depth = 0_u64;
        for queue in &queues {
            match likes_queue::queue_depth(&channel, queue).await {
                Ok(ready) => depth += u64::from(ready),
                Err(error) => {
                    tracing::debug!(%error, "reading the queue depth");
                    return;
                }
            }
        }
        metrics::gauge!("likes_queue_depth").set(depth as f64);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}
