//! The likes worker: consumes like events from RabbitMQ, writes them to
//! PostgreSQL in batches (one statement per batch) and acks each batch once
//! it is committed.
//!
//! `main.rs` only loads settings and calls [`Worker::build`] and
//! [`Worker::run_until_stopped`], so tests start exactly this code.

pub mod batcher;
pub mod consumer;
pub mod dead_letters;
pub mod error;
pub mod event;
pub mod stats;
pub mod writer;

use anyhow::Context;
use backon::{BackoffBuilder, ExponentialBuilder};
use error::WorkerError;
use likes_common::{Settings, amqp};
use stats::WorkerStats;
use std::{sync::Arc, time::Duration};
use tokio_util::sync::CancellationToken;
use writer::Writer;

/// A worker connected to PostgreSQL, ready to consume.
#[derive(Debug)]
pub struct Worker {
    settings: Settings,
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
            writer: Writer::new(pool, &settings.worker),
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
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let amqp_settings = &self.settings.amqp;
        // The first connection fails loudly: a wrong URL should stop startup.
        let mut session = Some(
            amqp::connect(amqp_settings, "likes-worker")
                .await
                .with_context(|| format!("connecting to RabbitMQ at {}", amqp_settings.url))?,
        );
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times();
        let mut delays = backoff.build();
        loop {
            let connection = match session.take() {
                Some(connection) => connection,
                None => match amqp::connect(amqp_settings, "likes-worker").await {
                    Ok(connection) => connection,
                    Err(error) => {
                        let delay = delays.next().unwrap_or(Duration::from_secs(5));
                        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot reach RabbitMQ");
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(delay) => continue,
                        }
                    }
                },
            };
            let started = tokio::time::Instant::now();
            match self.consume_on(&connection, &shutdown).await {
                Ok(()) => break,
                Err(error) if shutdown.is_cancelled() => {
                    tracing::warn!(%error, "RabbitMQ failed while stopping");
                    break;
                }
                Err(error) => {
                    if started.elapsed() > Duration::from_secs(10) {
                        delays = backoff.build();
                    }
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "lost RabbitMQ; reconnecting");
                    let _ = connection.close(200, "reconnecting".into()).await;
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

    /// One session on one connection: declare, consume, then close cleanly.
    async fn consume_on(
        &self,
        connection: &lapin::Connection,
        shutdown: &CancellationToken,
    ) -> Result<(), WorkerError> {
        let channel = connection.create_channel().await?;
        amqp::declare_topology(&channel, &self.settings.amqp).await?;
        consumer::consume(
            &channel,
            &self.settings,
            &self.writer,
            &self.stats,
            shutdown,
        )
        .await?;
        channel.close(200, "shutdown".into()).await?;
        connection.close(200, "shutdown".into()).await?;
        Ok(())
    }
}
