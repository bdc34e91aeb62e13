//! The real binaries as child processes, for faults only a process can have:
//! SIGKILL mid-batch, SIGTERM and its exit code.

use likes_common::Settings;
use std::{
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};
use tokio::time::Instant;

/// A child process running a likes binary with a test's settings.
#[derive(Debug)]
pub struct ServiceProcess {
    child: Child,
}

impl ServiceProcess {
    /// Starts `binary` with `settings` passed as `LIKES__*` variables.
    pub fn spawn(binary: &Path, settings: &Settings) -> anyhow::Result<Self> {
        let child = command(binary, settings).spawn()?;
        Ok(Self { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no flush, no ack, no goodbye.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Sends SIGTERM and waits up to `deadline` for the process to exit.
    pub async fn terminate(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < until,
                "still running {deadline:?} after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A command running `binary` with `settings` as `LIKES__*` variables.
pub fn command(binary: &Path, settings: &Settings) -> Command {
    let mut command = Command::new(binary);
    command
        .envs(env_of(settings))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null());
    command
}

/// The settings that differ between tests, as environment variables.
fn env_of(settings: &Settings) -> Vec<(&'static str, String)> {
    let w = &settings.worker;
    vec![
        ("LIKES__AMQP__URL", settings.amqp.url.expose().to_owned()),
        ("LIKES__AMQP__QUEUE", settings.amqp.queue.clone()),
        (
            "LIKES__AMQP__DEAD_LETTER_QUEUE",
            settings.amqp.dead_letter_queue.clone(),
        ),
        (
            "LIKES__AMQP__QUEUE_TYPE",
            settings.amqp.queue_type.as_str().to_owned(),
        ),
        (
            "LIKES__AMQP__CLASSIC_QUEUE_VERSION",
            settings.amqp.classic_queue_version.to_string(),
        ),
        (
            "LIKES__DATABASE__URL",
            settings.database.url.expose().to_owned(),
        ),
        (
            "LIKES__DATABASE__POOL_SIZE",
            settings.database.pool_size.to_string(),
        ),
        ("LIKES__API__LISTEN", settings.api.listen.to_string()),
        (
            "LIKES__API__METRICS_LISTEN",
            settings.api.metrics_listen.clone(),
        ),
        ("LIKES__WORKER__METRICS_LISTEN", w.metrics_listen.clone()),
        ("LIKES__WORKER__BATCH_SIZE", w.batch_size.to_string()),
        (
            "LIKES__WORKER__BATCH_MAX_WAIT_MS",
            w.batch_max_wait_ms.to_string(),
        ),
        ("LIKES__WORKER__PREFETCH", w.prefetch.to_string()),
        (
            "LIKES__WORKER__RETRY_BUDGET_MS",
            w.retry_budget_ms.to_string(),
        ),
    ]
}
