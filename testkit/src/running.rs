//! The real api and worker, started in-process on the test's runtime.

use likes_common::Settings;
use likes_proto::pb::like_service_client::LikeServiceClient;
use likes_worker::stats::WorkerStats;
use std::{net::SocketAddr, sync::Arc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// An api serving on an ephemeral port; stopped on drop.
#[derive(Debug)]
pub struct RunningApi {
    pub addr: SocketAddr,
    pub client: LikeServiceClient<Channel>,
    /// Broker messages and events the api got confirmed.
    pub publish_stats: Arc<likes_api::publisher::PublishStats>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl RunningApi {
    /// Starts an api with these settings (most tests use [`crate::TestEnv::spawn_api`]).
    pub async fn spawn_with(settings: &Settings) -> anyhow::Result<Self> {
        Self::spawn(settings).await
    }

    /// Starts a TLS api (whose plaintext client would not connect) and
    /// returns its address; it runs until the test's runtime ends.
    pub async fn spawn_tls(settings: &Settings) -> anyhow::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(settings.api.listen).await?;
        let app = likes_api::Application::build(settings, listener).await?;
        let addr = app.local_addr();
        tokio::spawn(app.run_until_stopped(CancellationToken::new()));
        Ok(addr)
    }

    pub(crate) async fn spawn(settings: &Settings) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(settings.api.listen).await?;
        let app = likes_api::Application::build(settings, listener).await?;
        let addr = app.local_addr();
        let publish_stats = app.publish_stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let client = LikeServiceClient::connect(format!("http://{addr}")).await?;
        Ok(Self {
            addr,
            client,
            publish_stats,
            shutdown,
            task: Some(task),
        })
    }

    /// A new client on a connection of its own.
    pub async fn new_client(&self) -> anyhow::Result<LikeServiceClient<Channel>> {
        Ok(LikeServiceClient::connect(format!("http://{}", self.addr)).await?)
    }

    /// Graceful stop: waits for in-flight calls and reports how it ended.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A worker consuming the test's queue; stopped on drop.
#[derive(Debug)]
pub struct RunningWorker {
    pub stats: Arc<WorkerStats>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl RunningWorker {
    pub(crate) async fn spawn(settings: &Settings) -> anyhow::Result<Self> {
        let worker = likes_worker::Worker::build(settings).await?;
        let stats = worker.stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker.run_until_stopped(shutdown.clone()));
        Ok(Self {
            stats,
            shutdown,
            task: Some(task),
        })
    }

    /// Waits for the worker to end by itself (it ends only on an error it
    /// does not retry) and reports how it ended.
    pub async fn ended(mut self) -> anyhow::Result<()> {
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }

    /// Graceful stop: flushes, commits and acks the batch in hand.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match self.task.take() {
            Some(task) => task.await?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
