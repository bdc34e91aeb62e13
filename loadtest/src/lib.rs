//! Load generator for the likes service (unpublished).
//!
//! [`run`] starts the api and a worker in-process from the loaded settings
//! (`config/default.toml`, `LIKES_CONFIG`, `LIKES__*`), on a fresh database
//! and fresh queues on the servers they name (through
//! `likes_testkit::TestEnv::on`, removed afterwards), or
//! uses a running api (`--target`), sends a celebrity-post workload, waits
//! until every acknowledged request is persisted, and returns a [`Report`]:
//! throughput, latency, drain time, queue depth, database transactions per
//! like, and a verification of PostgreSQL against what was acknowledged.
//! With `--baseline direct` it runs the same workload again, written straight
//! into PostgreSQL one transaction per request, and compares.
//!
//! `main.rs` only parses the options, calls [`run`] and prints the report,
//! so the integration tests run exactly this code.

pub mod baseline;
pub mod bench;
pub mod broker;
pub mod ceiling;
pub mod driver;
pub mod http2;
pub mod monitor;
pub mod options;
pub mod pages;
pub mod probe;
pub mod processes;
pub mod procfs;
pub mod report;
pub mod scenario;
pub mod viewers;

pub use monitor::ProgressView;
pub use options::{Baseline, Options};
pub use report::Report;

use anyhow::Context;
use broker::QueueProbe;
use driver::{Live, LoadOutcome, Sink};
use hdrhistogram::Histogram;
use likes_common::{
    Settings,
    config::{SecretUrl, WorkerSettings},
};
use likes_testkit::TestEnv;
use likes_testkit::commits::CommitCounter;
use likes_testkit::verify::{Stored, Verification};
use likes_worker::stats::WorkerStats;
use monitor::{Monitor, Persisted, Sample};
use probe::Probe;
use report::{Comparison, Latency, ProcessCpu, Scenario, SystemReport, WorkerSummary};
use scenario::{Expectation, Ledger, Names, Stop, Workload};
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::time::Instant;

/// Longest wait for `pg_stat_database` to settle before and after a run.
const STATS_SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// Runs the load test the options describe and reports it. An error means
/// the test could not run; a failed verification is in the report.
pub async fn run(options: &Options, view: ProgressView) -> anyhow::Result<Report> {
    options.validate()?;
    let seed = options
        .seed
        .unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let workload = Workload {
        stop: options.duration.map_or(Stop::After(options.likes), |secs| {
            Stop::Elapsed(Duration::from_secs(secs))
        }),
        rate: options.rate,
        posts: options.posts,
        hot_fraction: options.hot_fraction,
        duplicate_fraction: options.duplicate_fraction,
        unlike_fraction: options.unlike_fraction,
        seed,
    };
    let (pipeline, worker_settings) = match &options.target {
        None => in_process(options, &workload, view).await?,
        Some(target) => (against(target, options, &workload, view).await?, None),
    };
    let baseline = match options.baseline {
        Some(Baseline::Direct) => Some(direct(options, &workload, view).await?),
        None => None,
    };
    let comparison = baseline.as_ref().map(|b| Comparison::of(&pipeline, b));
    let worker_settings = worker_settings.as_ref();
    Ok(Report {
        scenario: Scenario {
            target: options
                .target
                .clone()
                .unwrap_or_else(|| "in-process".to_owned()),
            requests: options.duration.is_none().then_some(options.likes),
            duration_s: options.duration,
            concurrency: options.concurrency,
            connections: options.connections(),
            posts: options.posts,
            hot_fraction: options.hot_fraction,
            duplicate_fraction: options.duplicate_fraction,
            unlike_fraction: options.unlike_fraction,
            rate: options.rate,
            batch_size: worker_settings.map(|w| usize::from(w.batch_size.get())),
            batch_max_wait_ms: worker_settings.map(|w| w.batch_max_wait_ms),
            seed,
        },
        pipeline,
        baseline,
        comparison,
        // Read last: the peak of the whole run.
        process_peak_rss_mib: procfs::peak_rss_mib("self"),
    })
}

/// What one measurement runs against.
struct System {
    label: &'static str,
    sink: Sink,
    database: SecretUrl,
    persisted: PersistedSource,
    queue: Option<QueueProbe>,
    pool_size: Option<u32>,
}

enum PersistedSource {
    Worker(Arc<WorkerStats>),
    Counters,
    Acknowledged,
}

type WorkerSettingsUsed = Option<WorkerSettings>;

/// The loaded settings (`LIKES_CONFIG`, `LIKES__*`) with a fresh database
/// and fresh queues on the servers they name, removed when dropped.
fn fresh_env() -> anyhow::Result<TestEnv> {
    TestEnv::on(Settings::load().context("loading the settings")?)
}

/// The api and a worker in-process, on a fresh database and fresh queues.
async fn in_process(
    options: &Options,
    workload: &Workload,
    view: ProgressView,
) -> anyhow::Result<(SystemReport, WorkerSettingsUsed)> {
    let mut env = fresh_env()?;
    if let Some(size) = options.batch_size {
        env.settings.worker.batch_size = size;
    }
    if let Some(wait) = options.batch_max_wait_ms {
        env.settings.worker.batch_max_wait_ms = wait;
    }
    // The generator's connections do not reconnect after a GOAWAY (see
    // `http2`), and a long run would outlive the api's connection age.
    env.settings.api.max_connection_age_ms = 0;
    env.settings.validate()?;
    let api = env.spawn_api().await.context("starting the api")?;
    let worker = env.spawn_worker().await.context("starting the worker")?;
    let system = System {
        label: "pipeline",
        sink: Sink::grpc(
            &api.addr.to_string(),
            options.connections(),
            &Default::default(),
        )
        .await?,
        database: env.settings.database.url.clone(),
        persisted: PersistedSource::Worker(Arc::clone(&worker.stats)),
        queue: Some(QueueProbe::new(&env.settings.amqp)),
        pool_size: None,
    };
    let measured = measure(system, options, workload, view).await;
    if let Err(error) = api.stop().await {
        tracing::warn!(%error, "the api did not stop cleanly");
    }
    if let Err(error) = worker.stop().await {
        tracing::warn!(%error, "the worker did not stop cleanly");
    }
    Ok((measured?, Some(env.settings.worker.clone())))
}

/// A running api at `target`; its database and queue from the options, else
/// from the settings.
async fn against(
    target: &str,
    options: &Options,
    workload: &Workload,
    view: ProgressView,
) -> anyhow::Result<SystemReport> {
    let settings = Settings::load().context("loading the settings")?;
    let database = options
        .database_url
        .clone()
        .map_or_else(|| settings.database.url.clone(), SecretUrl::new);
    let mut amqp = settings.amqp;
    if let Some(queue) = &options.queue {
        amqp.queue.clone_from(queue);
    }
    let system = System {
        label: "pipeline",
        sink: Sink::grpc(target, options.connections(), &options.access()?).await?,
        database,
        persisted: PersistedSource::Counters,
        queue: Some(QueueProbe::new(&amqp)),
        pool_size: None,
    };
    measure(system, options, workload, view).await
}

/// The baseline: the same workload written straight into a fresh database.
async fn direct(
    options: &Options,
    workload: &Workload,
    view: ProgressView,
) -> anyhow::Result<SystemReport> {
    let env = fresh_env()?;
    // Declared so that the env's cleanup finds the queues it deletes.
    let (connection, _channel) = env.amqp().await?;
    let _ = connection.close(200, "done".into()).await;
    let (pool, size) = baseline::pool(env.settings.database.url.expose(), options.concurrency)
        .await
        .context("connecting the baseline's pool")?;
    let system = System {
        label: "direct",
        sink: Sink::Direct(pool),
        database: env.settings.database.url.clone(),
        persisted: PersistedSource::Acknowledged,
        queue: None,
        pool_size: Some(size),
    };
    measure(system, options, workload, view).await
}

/// Counter values of an in-process worker, and its flush times so far.
#[derive(Debug, Clone)]
struct WorkerCounts {
    batches: u64,
    events: u64,
    dead_lettered: u64,
    requeued_batches: u64,
    flush_micros: Histogram<u64>,
}

impl WorkerCounts {
    fn of(stats: &WorkerStats) -> Self {
        Self {
            batches: stats.batches(),
            events: stats.events(),
            dead_lettered: stats.dead_lettered(),
            requeued_batches: stats.requeued_batches(),
            flush_micros: stats.flush_micros(),
        }
    }
}

/// Sends the workload to `system`, waits for persistence, verifies, reports.
async fn measure(
    system: System,
    options: &Options,
    workload: &Workload,
    view: ProgressView,
) -> anyhow::Result<SystemReport> {
    let names = options
        .run_id
        .as_deref()
        .map_or_else(Names::random, Names::of);
    let own = Arc::new(AtomicU64::new(0));
    // Every connection is opened before the first count of transactions:
    // opening one runs statements too.
    let mut probe = Probe::connect(&system.database, Arc::clone(&own)).await?;
    let worker_stats = match &system.persisted {
        PersistedSource::Worker(stats) => Some(Arc::clone(stats)),
        PersistedSource::Counters | PersistedSource::Acknowledged => None,
    };
    let persisted = match system.persisted {
        PersistedSource::Worker(stats) => Persisted::Worker(stats),
        PersistedSource::Counters => Persisted::Counters {
            probe: Box::new(Probe::connect(&system.database, Arc::clone(&own)).await?),
            like_pattern: names.like_pattern(),
        },
        PersistedSource::Acknowledged => Persisted::Acknowledged,
    };
    let direct_writes = matches!(persisted, Persisted::Acknowledged);
    let mut commits = CommitCounter::connect(&system.database).await?;
    let commits_before = commits.settled(STATS_SETTLE_LIMIT).await?;
    let own_before = own.load(Ordering::Relaxed);
    let worker_before = worker_stats.as_deref().map(WorkerCounts::of);

    let ledger = Arc::new(Mutex::new(Ledger::new(workload.clone())));
    let live = Arc::new(Live::default());
    let total = match workload.stop {
        Stop::After(n) => Some(n),
        Stop::Elapsed(_) => None,
    };
    let watched = watched_processes(options);
    let cpu_before = cpu_of(&watched);
    let started = Instant::now();
    let monitor = Monitor::start(
        system.label,
        view,
        total,
        Arc::clone(&live),
        persisted,
        system.queue,
        started,
    );
    let load = driver::drive(
        system.sink,
        Arc::clone(&ledger),
        names.clone(),
        Arc::clone(&live),
        options.concurrency as usize,
        started,
    )
    .await;
    monitor.draining();
    let ledger = Arc::into_inner(ledger)
        .expect("every sender has finished, so the ledger has one owner")
        .into_inner()
        .expect("the ledger lock is never held across a panic");
    let deadline = load.finished + options.drain_timeout();
    let events_wanted = worker_before
        .as_ref()
        .map(|before| before.events + load.acknowledged);
    let (persisted_at, verification) = settle(
        &mut probe,
        &ledger,
        &names,
        worker_stats.as_deref().zip(events_wanted),
        deadline,
    )
    .await?;
    let cpu_after = cpu_of(&watched);
    // Direct writes commit before they are answered.
    let persisted_at = persisted_at.map(|at| if direct_writes { load.finished } else { at });
    let samples = monitor.stop().await;

    let commits_after = commits.settled(STATS_SETTLE_LIMIT).await?;
    let own_during = own.load(Ordering::Relaxed) - own_before;
    let transactions = (commits_after - commits_before).saturating_sub(own_during);
    let worker = worker_stats
        .as_deref()
        .zip(worker_before)
        .map(|(stats, before)| {
            let after = WorkerCounts::of(stats);
            let batches = after.batches - before.batches;
            let events = after.events - before.events;
            // Only this run's flushes. The histogram only ever grows, so
            // this cannot fail; if it did, the worker's whole history is
            // still a fair, wider picture.
            let mut flushes = after.flush_micros.clone();
            if flushes.subtract(&before.flush_micros).is_err() {
                flushes.clone_from(&after.flush_micros);
            }
            WorkerSummary {
                batches,
                events,
                mean_batch_size: ratio(events, batches),
                batches_per_like: ratio(batches, load.acknowledged),
                dead_lettered: after.dead_lettered - before.dead_lettered,
                requeued_batches: after.requeued_batches - before.requeued_batches,
                flush_latency_us: Latency::of(&flushes),
            }
        });
    let process_cpu = watched
        .iter()
        .zip(cpu_before.iter().zip(&cpu_after))
        .filter_map(|((name, _), (before, after))| {
            let cpu_s = (*after)? - (*before)?;
            let us_per_like = cpu_s * 1e6 / load.acknowledged.max(1) as f64;
            Some((name.clone(), ProcessCpu { cpu_s, us_per_like }))
        })
        .collect();
    let mut report = system_report(
        system.label,
        &load,
        persisted_at,
        &samples,
        transactions,
        worker,
        system.pool_size,
        verification,
    );
    report.process_cpu = process_cpu;
    Ok(report)
}

/// Whose CPU a run reports.
enum Watched {
    Pid(u32),
    /// Every process of this command name.
    Command(&'static str),
}

/// The load generator itself, the processes of `--cpu-of`, and with
/// `--cpu-of-postgres` every `postgres` process.
fn watched_processes(options: &Options) -> Vec<(String, Watched)> {
    std::iter::once(("load generator".to_owned(), std::process::id()))
        .chain(options.cpu_of.iter().cloned())
        .map(|(name, pid)| (name, Watched::Pid(pid)))
        .chain(
            options
                .cpu_of_postgres
                .then(|| ("postgres".to_owned(), Watched::Command("postgres"))),
        )
        .collect()
}

fn cpu_of(processes: &[(String, Watched)]) -> Vec<Option<f64>> {
    processes
        .iter()
        .map(|(_, watched)| match watched {
            Watched::Pid(pid) => procfs::cpu_seconds(*pid),
            Watched::Command(command) => procfs::cpu_seconds_of_command(command),
        })
        .collect()
}

/// Waits until everything acknowledged is persisted, or `deadline`, and
/// verifies. Returns when the last acknowledged request was seen committed
/// (`None` if not by the deadline) and the verification.
async fn settle(
    probe: &mut Probe,
    ledger: &Ledger,
    names: &Names,
    worker: Option<(&WorkerStats, u64)>,
    deadline: Instant,
) -> anyhow::Result<(Option<Instant>, Verification)> {
    // The in-process worker says when it committed the events: watch its
    // counter closely (it costs nothing) before touching the database.
    let mut counter_reached = None;
    if let Some((stats, wanted)) = worker {
        while stats.events() < wanted && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        counter_reached = (stats.events() >= wanted).then(Instant::now);
    }
    let poll = Duration::from_millis(20);
    let bounds = StoredBounds::of(ledger);
    let pattern = names.like_pattern();
    loop {
        let seen_at = Instant::now();
        // Without a worker's counter, the run's counters (one row per post)
        // say when to count the rows: counting `likes` scans every row of
        // the run, which a poll every 20 ms would turn into load.
        let counted_enough =
            worker.is_some() || bounds.admit_counted(probe.counted(&pattern).await?);
        if counted_enough && bounds.admit(probe.stored(&pattern).await?) {
            let verification = probe.verify(ledger, names).await?;
            if verification.passed() {
                return Ok((Some(counter_reached.unwrap_or(seen_at)), verification));
            }
            if Instant::now() >= deadline {
                return Ok((None, verification));
            }
        } else if Instant::now() >= deadline {
            return Ok((None, probe.verify(ledger, names).await?));
        }
        // The counter ran ahead of the database (a failed request that was
        // published after all): go by what the database shows.
        counter_reached = None;
        tokio::time::sleep(poll).await;
    }
}

/// What the run's rows may add up to once everything is persisted: exact
/// without failures, within the uncertain pairs' reach with them.
#[derive(Debug, Clone, Copy)]
struct StoredBounds {
    known: i64,
    liked: i64,
    uncertain: i64,
}

impl StoredBounds {
    fn of(ledger: &Ledger) -> Self {
        let mut bounds = Self {
            known: 0,
            liked: 0,
            uncertain: 0,
        };
        for pair in 0..ledger.pair_count() {
            match ledger.expectation(pair) {
                Some(Expectation::Liked) => {
                    bounds.known += 1;
                    bounds.liked += 1;
                }
                Some(Expectation::Unliked) => bounds.known += 1,
                Some(Expectation::Uncertain) | None => bounds.uncertain += 1,
            }
        }
        bounds
    }

    /// Whether the run's counters summed (its liked pairs) are in reach.
    fn admit_counted(&self, counted: i64) -> bool {
        (self.liked..=self.liked + self.uncertain).contains(&counted)
    }

    fn admit(&self, stored: Stored) -> bool {
        (self.known..=self.known + self.uncertain).contains(&stored.rows)
            && (self.liked..=self.liked + self.uncertain).contains(&stored.liked)
    }
}

#[allow(clippy::too_many_arguments)]
fn system_report(
    label: &str,
    load: &LoadOutcome,
    persisted_at: Option<Instant>,
    samples: &[Sample],
    transactions: u64,
    worker: Option<WorkerSummary>,
    pool_size: Option<u32>,
    verification: Verification,
) -> SystemReport {
    let load_s = (load.finished - load.started).as_secs_f64();
    let per_second = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    SystemReport {
        system: label.to_owned(),
        sent: load.sent,
        acknowledged: load.acknowledged,
        failed: load.failed,
        kinds: load.kinds,
        errors: load.errors.clone(),
        load_s,
        accepted_per_s: per_second(load.acknowledged, load_s),
        like_latency_us: Latency::of_or_empty(&load.like_latency),
        unlike_latency_us: Latency::of(&load.unlike_latency),
        persisted_per_s: persisted_at
            .map(|at| per_second(load.acknowledged, (at - load.started).as_secs_f64())),
        drain_ms: persisted_at.map(|at| {
            u64::try_from(at.saturating_duration_since(load.finished).as_millis())
                .unwrap_or(u64::MAX)
        }),
        peak_queue_depth: samples.iter().filter_map(|s| s.queue_depth).max(),
        transactions: Some(transactions),
        transactions_per_like: (load.acknowledged > 0)
            .then(|| ratio(transactions, load.acknowledged)),
        worker,
        pool_size,
        process_cpu: std::collections::BTreeMap::new(),
        verification,
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}
