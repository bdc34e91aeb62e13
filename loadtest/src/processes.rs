//! `likes-api` and `likes-worker` as separate processes, as they are
//! deployed, for `bench`: the loaded settings (so their defaults, and any
//! `LIKES__*` of the caller) with a fresh database, fresh queues and free
//! ports. Stopped with SIGTERM, and their database and queues removed, when
//! [`Services::stop`] runs or the value is dropped.

use crate::ceiling::pipe::QueueKind;
use anyhow::Context;
use likes_common::Settings;
use likes_testkit::{TestEnv, eventually, free_port, process::ServiceProcess};
use std::{path::Path, time::Duration};

/// How long the processes get to start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running api and worker.
#[derive(Debug)]
pub struct Services {
    pub env: TestEnv,
    api: ServiceProcess,
    worker: ServiceProcess,
}

impl Services {
    /// Starts the worker, waits for its metrics endpoint, then the api, and
    /// waits until it answers.
    pub async fn start(bin_dir: &Path, queue: Option<QueueKind>) -> anyhow::Result<Self> {
        let mut env = TestEnv::on(Settings::load().context("loading the settings")?)?;
        if let Some(queue) = queue {
            queue.apply(&mut env.settings.amqp);
        }
        env.settings.api.listen = format!("127.0.0.1:{}", free_port()?).parse()?;
        env.settings.api.metrics_listen = format!("127.0.0.1:{}", free_port()?);
        env.settings.worker.metrics_listen = format!("127.0.0.1:{}", free_port()?);
        let worker = ServiceProcess::spawn(&bin_dir.join("likes-worker"), &env.settings)
            .context("starting likes-worker")?;
        let metrics = env.settings.worker.metrics_listen.clone();
        eventually(START_TIMEOUT, "the worker to serve metrics", || async {
            Ok(likes_service::telemetry::fetch_metrics(&metrics).await.ok())
        })
        .await?;
        let api = ServiceProcess::spawn(&bin_dir.join("likes-api"), &env.settings)
            .context("starting likes-api")?;
        let addr = env.settings.api.listen.to_string();
        eventually(START_TIMEOUT, "the api to answer", || async {
            let Ok(mut clients) = crate::driver::connect(&addr, 1).await else {
                return Ok(None);
            };
            let answer = clients[0]
                .get_like_count(likes_proto::pb::GetLikeCountRequest {
                    post_id: "bench-probe".into(),
                })
                .await;
            Ok(answer.ok())
        })
        .await?;
        Ok(Self { env, api, worker })
    }

    pub fn api_addr(&self) -> String {
        self.env.settings.api.listen.to_string()
    }

    pub fn api_pid(&self) -> u32 {
        self.api.pid()
    }

    pub fn worker_pid(&self) -> u32 {
        self.worker.pid()
    }

    /// The api's Prometheus text.
    pub async fn api_metrics(&self) -> anyhow::Result<String> {
        Ok(likes_service::telemetry::fetch_metrics(&self.env.settings.api.metrics_listen).await?)
    }

    /// Load test options against these processes (the defaults otherwise):
    /// their database and queue, and the CPU of both (and of `broker`, if
    /// known).
    pub fn target_options(&self, broker: Option<u32>) -> crate::Options {
        use clap::Parser;
        let mut options = crate::Options::parse_from(["likes-loadtest"]);
        options.target = Some(self.api_addr());
        options.database_url = Some(self.env.settings.database.url.expose().to_owned());
        options.queue = Some(self.env.settings.amqp.queue.clone());
        options.cpu_of = vec![
            ("api".to_owned(), self.api_pid()),
            ("worker".to_owned(), self.worker_pid()),
        ];
        options
            .cpu_of
            .extend(broker.map(|pid| ("broker".to_owned(), pid)));
        options.cpu_of_postgres = true;
        options
    }

    /// SIGTERM to the api, then the worker (each exits 0 after finishing
    /// its work in hand); the env's database and queues go with `self`.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let api = self.api.terminate(Duration::from_secs(30)).await?;
        let worker = self.worker.terminate(Duration::from_secs(30)).await?;
        anyhow::ensure!(
            api.success() && worker.success(),
            "api exited {api}, worker {worker}"
        );
        Ok(())
    }
}

/// The sum of every sample of the counter `name` (any labels) in
/// Prometheus text; `None` when there is none.
pub fn counter_total(metrics: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_over_their_labels() {
        let text = "# TYPE likes_publish_events_total counter\n\
                    likes_publish_events_total{channel=\"0\"} 30\n\
                    likes_publish_events_total{channel=\"1\"} 12\n\
                    likes_publish_events_total_other 5\n\
                    likes_publish_messages_total 3\n";
        assert_eq!(
            counter_total(text, "likes_publish_events_total"),
            Some(42.0)
        );
        assert_eq!(
            counter_total(text, "likes_publish_messages_total"),
            Some(3.0)
        );
        assert_eq!(counter_total(text, "likes_missing_total"), None);
    }
}
