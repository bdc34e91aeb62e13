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
use likes_common::{Settings, amqp};
use stats::WorkerStats;
use std::sync::Arc;
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
    /// and the channel and connection closed.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let amqp_settings = &self.settings.amqp;
        let connection = amqp::connect(amqp_settings, "likes-worker")
            .await
            .with_context(|| format!("connecting to RabbitMQ at {}", amqp_settings.url))?;
        let channel = connection.create_channel().await?;
        amqp::declare_topology(&channel, amqp_settings)
            .await
            .context("declaring the queues")?;
        let result = consumer::consume(
            &channel,
            &self.settings,
            &self.writer,
            &self.stats,
            &shutdown,
        )
        .await;
        let _ = channel.close(200, "shutdown".into()).await;
        let _ = connection.close(200, "shutdown".into()).await;
        result.context("consuming")?;
        tracing::info!(
            batches = self.stats.batches(),
            events = self.stats.events(),
            "likes-worker stopped"
        );
        Ok(())
    }
}
