//! Samples the run every 250 ms — requests sent and acknowledged, likes
//! persisted, queue depth — for the peak queue depth, and
//! draws the live progress bar from the same samples.

use crate::{broker::QueueProbe, driver::Live, probe::Probe};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use likes_worker::stats::WorkerStats;
use std::{sync::Arc, time::Duration};
use tokio::{sync::oneshot, task::JoinHandle, time::Instant};

/// Time between two samples.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Whether to draw the progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressView {
    Bar,
    Hidden,
}

/// Where the persisted count comes from.
#[derive(Debug)]
pub enum Persisted {
    /// Events in batches the in-process worker committed.
    Worker(Arc<WorkerStats>),
    /// The run's counters summed, its liked pairs (a running api's workers
    /// are out of reach). Not its rows in `likes`: counting those scans
    /// every row of the run, in the measured database, every sample (35 ms
    /// of PostgreSQL CPU at 150,000 rows, every 250 ms), while the counters
    /// are one row per post. With Unlikes in the run it is the net count.
    Counters {
        probe: Box<Probe>,
        like_pattern: String,
    },
    /// Written before the answer (the direct baseline): the acknowledged count.
    Acknowledged,
}

impl Persisted {
    async fn read(&mut self, live: &Live) -> Option<u64> {
        match self {
            Self::Worker(stats) => Some(stats.events()),
            Self::Counters {
                probe,
                like_pattern,
            } => match probe.counted(like_pattern).await {
                Ok(counted) => u64::try_from(counted).ok(),
                Err(error) => {
                    tracing::debug!(%error, "cannot read the run's counters");
                    None
                }
            },
            Self::Acknowledged => Some(live.acknowledged()),
        }
    }
}

/// One look at the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Since the load started.
    pub at: Duration,
    pub sent: u64,
    pub acknowledged: u64,
    /// Persisted so far (see [`Persisted`]); carried over when unreadable.
    pub persisted: u64,
    /// Ready messages in the event queue, if known.
    pub queue_depth: Option<u32>,
}

/// The running sampler.
#[derive(Debug)]
pub struct Monitor {
    bar: ProgressBar,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Vec<Sample>>,
}

impl Monitor {
    /// Starts sampling; `total` is the number of requests, if fixed.
    pub fn start(
        label: &str,
        view: ProgressView,
        total: Option<u64>,
        live: Arc<Live>,
        persisted: Persisted,
        queue: Option<QueueProbe>,
        started: Instant,
    ) -> Self {
        let bar = progress_bar(label, view, total);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(sample(
            bar.clone(),
            live,
            persisted,
            queue,
            started,
            stopped,
        ));
        Self { bar, stop, task }
    }

    /// Shows that the load is over and the run waits for persistence.
    pub fn draining(&self) {
        self.bar.set_prefix("draining");
    }

    /// Takes a last sample, stops, clears the bar and returns the samples.
    pub async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(());
        let samples = self
            .task
            .await
            .expect("the sampler does not panic: it only reads counters");
        self.bar.finish_and_clear();
        samples
    }
}

fn progress_bar(label: &str, view: ProgressView, total: Option<u64>) -> ProgressBar {
    if view == ProgressView::Hidden {
        return ProgressBar::hidden();
    }
    let template = match total {
        Some(_) => "{prefix:>8} {elapsed_precise} [{bar:30}] {pos}/{len} sent · {msg}",
        None => "{prefix:>8} {elapsed_precise} {pos} sent · {msg}",
    };
    let style = ProgressStyle::with_template(template)
        .expect("the template is a valid constant")
        .progress_chars("=> ");
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr_with_hz(4));
    bar.set_style(style);
    bar.set_prefix(label.to_owned());
    bar
}

async fn sample(
    bar: ProgressBar,
    live: Arc<Live>,
    mut persisted: Persisted,
    mut queue: Option<QueueProbe>,
    started: Instant,
    mut stopped: oneshot::Receiver<()>,
) -> Vec<Sample> {
    let mut samples: Vec<Sample> = Vec::new();
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let last = tokio::select! {
            _ = ticks.tick() => false,
            _ = &mut stopped => true,
        };
        let queue_depth = match queue.as_mut() {
            Some(queue) => queue.depth().await,
            None => None,
        };
        let carried = samples.last().map_or(0, |s| s.persisted);
        let now = Sample {
            at: started.elapsed(),
            sent: live.sent(),
            acknowledged: live.acknowledged(),
            persisted: persisted.read(&live).await.unwrap_or(carried),
            queue_depth,
        };
        samples.push(now);
        bar.set_position(now.sent);
        bar.set_message(format!(
            "ok {} · failed {} · persisted {} · queue {}",
            now.acknowledged,
            live.failed(),
            now.persisted,
            now.queue_depth
                .map_or_else(|| "?".to_owned(), |d| d.to_string()),
        ));
        if last {
            break;
        }
    }
    if let Some(queue) = queue {
        queue.close().await;
    }
    samples
}
