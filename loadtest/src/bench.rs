//! `likes-loadtest bench` (`make bench`): every figure of BENCHMARKS.md from
//! one run on this machine, with the ceilings measured right before, so the
//! figures read as ratios (the machine is shared and noisy; absolute rates
//! drift). The api and the worker run as separate processes with their
//! default settings ([`Services`]). The raw results go to `--out` as JSON
//! (one [`BenchResults`], and each phase's [`Report`]), the markdown summary
//! ([`summary`]) to stdout and `summary.md`.
//!
//! Phases, in order: the pipe ceilings (one like per message, 16 packed),
//! the gRPC echo ceiling, then against the processes the default spike, a
//! lone sequential caller, the open loop at half the spike's rate, ten times
//! the spike's volume and the direct baseline; on fresh processes 1000
//! callers (peak RSS) followed by the read benchmark; on fresh processes
//! ListLikers and the product pages' spike arms ([`pages`]); on fresh
//! processes with quorum queues the spike again. `--quick` scales every
//! phase down; `--arms-only N` runs only the spike arms.

use crate::{
    Options, ProgressView, Report,
    ceiling::{self, Ceiling, GrpcOptions, SharedSpike, pipe::Pipe, pipe::QueueKind},
    pages,
    processes::{Services, counter_total},
    viewers::{self, SharedReads},
};
use anyhow::Context;
use clap::Args;
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use std::{fmt::Write as _, path::PathBuf};

/// Options of `likes-loadtest bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchOptions {
    /// Shorten every phase for a quick check (a tenth of the likes, one
    /// trial per ceiling); its figures are not the benchmark's.
    #[arg(long)]
    pub quick: bool,
    /// Scale every phase's volume by this (default 1, or 0.1 with --quick).
    #[arg(long, hide = true)]
    pub scale: Option<f64>,
    /// Where the JSON results and summary.md go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Folder of the likes-api, likes-worker and likes-loadtest binaries
    /// (default: this binary's).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Do not run ../shared/ceiling and ../shared/grpc-ceiling for a
    /// cross-check even where they are present (--quick never runs them).
    #[arg(long)]
    pub no_cross_check: bool,
    /// Run only the product pages' spike arms (with and without the likers
    /// index, with the watchers), this many interleaved trials each, to
    /// settle their ratios; results in `arms.json` and `arms.md`.
    #[arg(long, value_name = "TRIALS")]
    pub arms_only: Option<u32>,
}

/// Everything one `bench` run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResults {
    /// The volume scale (1 for the real benchmark).
    pub scale: f64,
    pub pipe: Ceiling,
    pub packed_pipe: Ceiling,
    pub echo: Ceiling,
    /// The default spike against the processes: the median of its trials.
    pub spike: Report,
    /// Likes per broker message during that spike, from the api's counters.
    pub spike_likes_per_message: Option<f64>,
    /// Every spike trial's end-to-end likes/s, in the order they ran.
    #[serde(default)]
    pub spike_trials: Vec<f64>,
    /// The same spike from `../shared/grpc-ceiling`'s own client against the
    /// same processes, every trial (empty where the tool is not there): read
    /// against its echo, the same client at both ends.
    #[serde(default)]
    pub shared_client_spikes: Vec<SharedSpike>,
    /// One caller, one Like at a time.
    pub lone: Report,
    pub open_loop: Report,
    /// Ten times the spike's volume.
    pub tenfold: Report,
    pub baseline: Report,
    /// 1000 concurrent callers on fresh processes.
    pub crowd: Report,
    pub crowd_api_peak_rss_mib: Option<f64>,
    pub crowd_worker_peak_rss_mib: Option<f64>,
    /// The read side of the viral post (needs `../shared/grpc-ceiling`).
    #[serde(default)]
    pub viewers: Option<Viewers>,
    /// From a Like's OK to its post's count showing it, idle service.
    #[serde(default)]
    pub freshness_us: Option<crate::report::Latency>,
    /// A second api with its database link cut.
    #[serde(default)]
    pub outage: Option<viewers::Outage>,
    /// A feed page in one call against 51 (needs `../shared/grpc-ceiling`).
    #[serde(default)]
    pub feed: Option<pages::Feed>,
    /// ListLikers deep in a long list.
    #[serde(default)]
    pub likers: Option<pages::Likers>,
    /// The spike without the likers index, with it, and with watchers.
    #[serde(default)]
    pub spike_arms: Option<pages::SpikeArms>,
    /// The spike on quorum queues (the median of as many trials).
    pub quorum: Report,
    pub quorum_likes_per_message: Option<f64>,
    #[serde(default)]
    pub quorum_trials: Vec<f64>,
    /// The queue kind of the default settings (the spike's).
    pub queue: String,
}

/// The read side of the viral post, after the default spike.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Viewers {
    /// The shared read ceiling: its readers against its echo server.
    pub echo_reads_per_s: Option<f64>,
    /// The same readers against the api, reading the spike's hot post.
    pub reads: SharedReads,
    /// PostgreSQL transactions of the api's database per read meanwhile.
    pub transactions_per_read: f64,
    /// The open-loop Like rate of the next two.
    pub like_rate: u32,
    /// Likes at that rate, alone.
    pub likes_alone: Report,
    /// Likes at that rate while the readers read.
    pub likes_with_readers: Report,
    /// What the readers did during those Likes.
    pub readers_during_likes: Option<SharedReads>,
}

/// The open-loop Like rate the readers' cost on the writes is read at.
const LIKE_RATE_UNDER_READERS: u32 = 3_000;

/// The default spike's likes at `scale`.
fn spike_likes(scale: f64) -> u64 {
    scaled(100_000, scale, 1_000)
}

fn scaled(n: u64, scale: f64, least: u64) -> u64 {
    ((n as f64 * scale).round() as u64).max(least)
}

/// Runs the load test against `services`, its options set by `shape`,
/// writing its report to `<out>/<name>.json`.
async fn phase(
    name: &str,
    services: &Services,
    broker: Option<u32>,
    shape: impl FnOnce(&mut Options),
    out: &std::path::Path,
) -> anyhow::Result<Report> {
    let mut options = services.target_options(broker);
    shape(&mut options);
    eprintln!("== {name}");
    let report = crate::run(&options, ProgressView::Hidden)
        .await
        .with_context(|| format!("the {name} phase"))?;
    std::fs::write(
        out.join(format!("{name}.json")),
        serde_json::to_string_pretty(&report)?,
    )?;
    if !report.passed() {
        eprintln!("{report}");
    }
    Ok(report)
}

/// Likes per broker message between two scrapes of the api's metrics.
fn likes_per_message(before: &str, after: &str) -> Option<f64> {
    let delta =
        |name| Some(counter_total(after, name)? - counter_total(before, name).unwrap_or(0.0));
    let events = delta("likes_publish_events_total")?;
    let messages = delta("likes_publish_messages_total")?;
    (messages > 0.0).then(|| events / messages)
}

/// The spike against `services`, with the api's likes per message.
async fn spike(
    name: &str,
    services: &Services,
    broker: Option<u32>,
    likes: u64,
    out: &std::path::Path,
) -> anyhow::Result<(Report, Option<f64>)> {
    let before = services.api_metrics().await.unwrap_or_default();
    let report = phase(name, services, broker, |o| o.likes = likes, out).await?;
    let after = services.api_metrics().await.unwrap_or_default();
    Ok((report, likes_per_message(&before, &after)))
}

/// The spike `trials` times against `services`, as the ceilings it is read
/// against are medians of as many trials: the median trial by end-to-end
/// rate (a trial that failed verification instead, so the failure is
/// reported), its likes per message, and every trial's rate in order.
async fn spikes(
    name: &str,
    services: &Services,
    broker: Option<u32>,
    likes: u64,
    trials: u32,
    out: &std::path::Path,
) -> anyhow::Result<(Report, Option<f64>, Vec<f64>)> {
    let mut runs = Vec::new();
    for trial in 1..=trials.max(1) {
        let name = if trials > 1 {
            format!("{name}-{trial}")
        } else {
            name.to_owned()
        };
        runs.push(spike(&name, services, broker, likes, out).await?);
    }
    let rates = runs
        .iter()
        .map(|(report, _)| rate(report).unwrap_or(0.0))
        .collect();
    let (report, likes_per_message) = match runs.iter().position(|(report, _)| !report.passed()) {
        Some(failed) => runs.swap_remove(failed),
        None => ceiling::median_by(runs, |(report, _)| rate(report).unwrap_or(0.0))
            .expect("at least one trial ran"),
    };
    Ok((report, likes_per_message, rates))
}

/// The read side after the default spike: the shared readers on the hot
/// post of the shared client's spike `run_id` (the echo's read ceiling
/// right before), then Likes at a fixed rate alone and with the readers.
async fn read_side(
    services: &Services,
    broker: Option<u32>,
    run_id: &str,
    scale: f64,
    out: &std::path::Path,
) -> anyhow::Result<Option<Viewers>> {
    eprintln!("== viewers: the shared read ceiling, then its readers on the api");
    let echo_reads_per_s = tokio::task::spawn_blocking(viewers::echo_reads).await?;
    let seconds = u32::try_from(scaled(10, scale, 2)).unwrap_or(10);
    let Some((reads, transactions_per_read)) =
        viewers::reads_and_their_cost(services, run_id, seconds, "count").await?
    else {
        return Ok(None);
    };
    let open = |o: &mut Options| {
        o.rate = Some(f64::from(LIKE_RATE_UNDER_READERS));
        o.duration = Some(u64::from(seconds));
    };
    let likes_alone = phase("likes-alone", services, broker, open, out).await?;
    // The readers start first and stop after the Likes.
    let readers =
        viewers::readers_in_background(services.api_addr(), run_id.to_owned(), seconds + 6);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let likes_with_readers = phase("likes-with-readers", services, broker, open, out).await?;
    let readers_during_likes =
        tokio::task::spawn_blocking(move || readers.join().ok().flatten()).await?;
    Ok(Some(Viewers {
        echo_reads_per_s,
        reads,
        transactions_per_read,
        like_rate: LIKE_RATE_UNDER_READERS,
        likes_alone,
        likes_with_readers,
        readers_during_likes,
    }))
}

/// The hottest post of the processes' database.
async fn hottest_post(services: &Services) -> anyhow::Result<String> {
    #[derive(diesel::QueryableByName)]
    struct Post {
        #[diesel(sql_type = Text)]
        post_id: String,
    }
    let mut db = AsyncPgConnection::establish(services.env.settings.database.url.expose()).await?;
    let post: Post =
        diesel::sql_query("SELECT post_id FROM like_counts ORDER BY count DESC, post_id LIMIT 1")
            .get_result(&mut db)
            .await?;
    Ok(post.post_id)
}

/// The product pages' spike arms ([`pages::spike_arms`]) against `services`:
/// the default spike, 1000 watchers (both scaled).
async fn spike_arms(
    services: &Services,
    broker: Option<u32>,
    scale: f64,
    trials: u32,
    out: &std::path::Path,
) -> anyhow::Result<pages::SpikeArms> {
    let spike_likes = spike_likes(scale);
    let watchers = u32::try_from(scaled(1_000, scale, 100)).unwrap_or(1_000);
    let arm = |run: String| async move {
        phase(
            &format!("arm-{run}"),
            services,
            broker,
            |o| {
                o.likes = spike_likes;
                o.run_id = Some(run.clone());
            },
            out,
        )
        .await
    };
    pages::spike_arms(services, trials, watchers, arm).await
}

/// `bench --arms-only N`: only [`spike_arms`], N trials, on fresh processes.
async fn arms_only(
    bin_dir: &std::path::Path,
    queue: QueueKind,
    broker: Option<u32>,
    scale: f64,
    trials: u32,
    out: &std::path::Path,
) -> anyhow::Result<bool> {
    let services = Services::start(bin_dir, None).await?;
    let arms = spike_arms(&services, broker, scale, trials, out).await?;
    services.stop().await?;
    std::fs::write(out.join("arms.json"), serde_json::to_string_pretty(&arms)?)?;
    let mut text = format!(
        "# likes spike arms\n\n{}\n\n| Spike arms | Measured |\n|---|---|\n",
        run_line(queue.as_str(), scale)
    );
    pages::arms_summary(&mut text, &arms);
    std::fs::write(out.join("arms.md"), &text)?;
    print!("{text}");
    Ok(arms.verified)
}

/// Runs the benchmark; `Ok(false)` when a verification failed.
pub async fn run(options: &BenchOptions) -> anyhow::Result<bool> {
    let scale = options
        .scale
        .unwrap_or(if options.quick { 0.1 } else { 1.0 });
    let trials = if options.quick || scale < 1.0 { 1 } else { 3 };
    let cross_check = !(options.no_cross_check || options.quick || scale < 1.0);
    let bin_dir = match &options.bin_dir {
        Some(dir) => dir.clone(),
        None => ceiling::own_bin_dir()?,
    };
    let out = &options.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let queue = QueueKind::of(&likes_common::Settings::load()?.amqp);
    let broker = crate::procfs::broker_pid();
    if broker.is_none() {
        eprintln!("bench: the broker's pid is unknown (rabbitmqctl eval); its CPU is not measured");
    }
    if let Some(trials) = options.arms_only {
        return arms_only(&bin_dir, queue, broker, scale, trials.max(1), out).await;
    }

    let pipe_likes = scaled(200_000, scale, 2_000);
    let mut pipes = Vec::new();
    for per_message in [1, 16] {
        let pipe = Pipe {
            batch: 1000,
            likes: pipe_likes,
            per_message,
            queue,
        };
        eprintln!("== ceiling: {pipe}");
        let mut measured = ceiling::measure_pipe(&pipe, trials).await?;
        if cross_check {
            measured.shared_per_s = ceiling::shared_ceiling("ceiling", &[&pipe.to_string()]);
        }
        eprintln!("{}", measured.result_line());
        pipes.push(measured);
    }
    let packed_pipe = pipes.pop().expect("two pipes");
    let pipe = pipes.pop().expect("two pipes");

    let spike_likes = spike_likes(scale);
    if cross_check {
        // Before our own echo, so ours runs right before the spike.
        eprintln!("== cross-check: ../shared/grpc-ceiling");
    }
    let shared_echo = cross_check
        .then(|| ceiling::shared_ceiling("grpc-ceiling", &[]))
        .flatten();
    eprintln!("== ceiling: grpc-echo");
    // The default spike's shape (the load test's defaults), for the echo and
    // for the shared client's spike against the api.
    let spike_shape = GrpcOptions {
        likes: spike_likes,
        concurrency: 64,
        per_connection: 8,
        hot_fraction: 0.9,
        posts: 1000,
        trials,
        bin_dir: Some(bin_dir.clone()),
    };
    let mut echo = ceiling::measure_grpc(&spike_shape).await?;
    echo.shared_per_s = shared_echo;
    eprintln!("{}", echo.result_line());

    let services = Services::start(&bin_dir, None).await?;
    let (spike_report, spike_likes_per_message, spike_trials) =
        spikes("spike", &services, broker, spike_likes, trials, out).await?;
    let mut shared_client_spikes = Vec::new();
    if cross_check && shared_echo.is_some() {
        eprintln!("== cross-check: ../shared/grpc-ceiling spike against the api");
        for trial in 1..=trials {
            let run_id = format!("bench-{}-{trial}", std::process::id());
            if let Some(spike) = ceiling::shared_spike(&services.api_addr(), &spike_shape, &run_id)
            {
                shared_client_spikes.push(spike);
            }
        }
    }
    let (viewers, feed) = match <[_]>::first(&shared_client_spikes) {
        Some(_) => {
            let run_id = format!("bench-{}-1", std::process::id());
            let viewers = read_side(&services, broker, &run_id, scale, out).await?;
            eprintln!("== feed pages: 51 calls, then one");
            let seconds = u32::try_from(scaled(10, scale, 2)).unwrap_or(10);
            (viewers, pages::feed(&services, &run_id, seconds).await?)
        }
        None => (None, None),
    };
    let lone = phase(
        "lone",
        &services,
        broker,
        |o| {
            o.likes = scaled(2_000, scale, 200);
            o.concurrency = 1;
            o.per_connection = 1;
        },
        out,
    )
    .await?;
    eprintln!("== freshness");
    let freshness_us = Some(
        viewers::freshness(
            &services.api_addr(),
            "fresh",
            u32::try_from(scaled(200, scale, 20)).unwrap_or(200),
        )
        .await?,
    );
    eprintln!("== outage");
    let hot = hottest_post(&services).await?;
    let outage = Some(viewers::outage(&bin_dir, &services, &hot).await?);
    let half_rate = spike_report
        .pipeline
        .persisted_per_s
        .unwrap_or(spike_report.pipeline.accepted_per_s)
        / 2.0;
    let open_loop = phase(
        "open-loop",
        &services,
        broker,
        |o| {
            o.rate = Some(half_rate.round());
            o.duration = Some(scaled(20, scale, 2));
        },
        out,
    )
    .await?;
    let tenfold = phase(
        "tenfold",
        &services,
        broker,
        |o| o.likes = spike_likes * 10,
        out,
    )
    .await?;
    let baseline = phase(
        "baseline",
        &services,
        broker,
        |o| {
            o.likes = scaled(20_000, scale, 500);
            o.baseline = Some(crate::Baseline::Direct);
        },
        out,
    )
    .await?;
    services.stop().await?;

    let services = Services::start(&bin_dir, None).await?;
    let crowd = phase(
        "crowd",
        &services,
        broker,
        |o| {
            o.likes = scaled(200_000, scale, 2_000);
            o.concurrency = 1000;
        },
        out,
    )
    .await?;
    let crowd_api_peak_rss_mib = crate::procfs::peak_rss_mib(&services.api_pid().to_string());
    let crowd_worker_peak_rss_mib = crate::procfs::peak_rss_mib(&services.worker_pid().to_string());
    services.stop().await?;

    let services = Services::start(&bin_dir, None).await?;
    eprintln!("== likers");
    let likers = scaled(100_000, scale, 1_000);
    let likers = Some(
        pages::likers(
            &services,
            likers,
            u32::try_from(likers / 200).unwrap_or(500),
            u32::try_from(scaled(1_000, scale, 100)).unwrap_or(1_000),
        )
        .await?,
    );
    // Their ratios are a few per cent wide, within the host's noise for
    // one round: three times the other phases' trials.
    let spike_arms = Some(spike_arms(&services, broker, scale, trials * 3, out).await?);
    services.stop().await?;

    let services = Services::start(&bin_dir, Some(QueueKind::Quorum)).await?;
    let (quorum, quorum_likes_per_message, quorum_trials) =
        spikes("quorum", &services, broker, spike_likes, trials, out).await?;
    services.stop().await?;

    let results = BenchResults {
        scale,
        pipe,
        packed_pipe,
        echo,
        spike: spike_report,
        spike_likes_per_message,
        spike_trials,
        shared_client_spikes,
        lone,
        open_loop,
        tenfold,
        baseline,
        crowd,
        crowd_api_peak_rss_mib,
        crowd_worker_peak_rss_mib,
        viewers,
        freshness_us,
        outage,
        feed,
        likers,
        spike_arms,
        quorum,
        quorum_likes_per_message,
        quorum_trials,
        queue: queue.as_str().to_owned(),
    };
    std::fs::write(
        out.join("bench.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let text = summary(&results);
    std::fs::write(out.join("summary.md"), &text)?;
    print!("{text}");
    Ok(all_passed(&results))
}

fn reports(r: &BenchResults) -> [(&'static str, &Report); 7] {
    [
        ("spike", &r.spike),
        ("lone", &r.lone),
        ("open loop", &r.open_loop),
        ("tenfold", &r.tenfold),
        ("baseline", &r.baseline),
        ("crowd", &r.crowd),
        ("quorum", &r.quorum),
    ]
}

fn all_passed(r: &BenchResults) -> bool {
    reports(r).iter().all(|(_, report)| report.passed()) && shared_counts_exact(r)
}

/// The shared tool's client found every count exact (or did not run).
fn shared_counts_exact(r: &BenchResults) -> bool {
    r.shared_client_spikes.iter().all(|t| t.counts_exact)
}

/// What a run was: its queue, its processes, its scale.
fn run_line(queue: &str, scale: f64) -> String {
    format!(
        "`make bench`: {queue} queue, api and worker as processes with their defaults{}.",
        if scale < 1.0 {
            format!(", every phase scaled by {scale} (a quick check, not the benchmark)")
        } else {
            String::new()
        }
    )
}

/// A whole number with thousands separators: 12,345.
pub(crate) fn n(x: f64) -> String {
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < -0.5 { format!("-{out}") } else { out }
}

fn ms(micros: u64) -> String {
    format!("{:.1} ms", micros as f64 / 1000.0)
}

fn rate(report: &Report) -> Option<f64> {
    report.pipeline.persisted_per_s
}

fn or_na(value: Option<String>) -> String {
    value.unwrap_or_else(|| "n/a".to_owned())
}

fn cpu(report: &Report, process: &str) -> Option<f64> {
    report
        .pipeline
        .process_cpu
        .get(process)
        .map(|c| c.us_per_like)
}

/// The read side's table: what was measured, as ratios where a ceiling
/// was measured beside it.
fn viewers_summary(s: &mut String, r: &BenchResults) {
    let _ = writeln!(s, "| Reads of the viral post | Measured |");
    let _ = writeln!(s, "|---|---|");
    if let Some(v) = &r.viewers {
        let echo = v.echo_reads_per_s;
        let _ = writeln!(
            s,
            "| GetLikeCount of the hot post, 64 readers: api / shared echo | {} / {} = **{}** (api p99 {:.1} ms, {} errors) |",
            n(v.reads.reads_per_s),
            or_na(echo.map(n)),
            or_na(echo.map(|e| format!("{:.2}", v.reads.reads_per_s / e))),
            v.reads.p99_ms,
            v.reads.errors
        );
        let _ = writeln!(
            s,
            "| PostgreSQL transactions per read meanwhile | **{:.4}** |",
            v.transactions_per_read
        );
        let alone = v.likes_alone.pipeline.like_latency_us.p99;
        let with = v.likes_with_readers.pipeline.like_latency_us.p99;
        let _ = writeln!(
            s,
            "| Like p99 at {}/s (open loop): with the 64 readers / alone | {} / {} = **{:.2}×** |",
            n(f64::from(v.like_rate)),
            ms(with),
            ms(alone),
            with as f64 / alone.max(1) as f64
        );
        if let Some(during) = &v.readers_during_likes {
            let _ = writeln!(
                s,
                "| … the readers meanwhile | {}/s, p99 {:.1} ms, {} errors |",
                n(during.reads_per_s),
                during.p99_ms,
                during.errors
            );
        }
    } else {
        let _ = writeln!(s, "| readers (`../shared/grpc-ceiling`) | not run |");
    }
    if let Some(fresh) = &r.freshness_us {
        let _ = writeln!(
            s,
            "| from a Like's OK to its count showing it, idle service ({} Likes): p50 / p99 | {} / **{}** |",
            fresh.count,
            ms(fresh.p50),
            ms(fresh.p99)
        );
    }
    if let Some(outage) = &r.outage {
        let _ = writeln!(
            s,
            "| PostgreSQL unreachable: cached hot count served / read; a cold read fails in p50 / max | {} / {}; {} / **{}** |",
            outage.hot_served,
            outage.hot_reads,
            ms(outage.cold_fail_us.p50),
            ms(outage.cold_fail_us.max)
        );
    }
    let _ = writeln!(s);
}

/// The markdown summary of a run: what was measured, as ratios to the
/// ceilings measured in the same run where there is one, then the ceilings
/// with the shared tools' figures beside them. Results only: what they
/// should be is for the issues and BENCHMARKS.md to say.
pub fn summary(r: &BenchResults) -> String {
    let mut s = String::new();
    let spike = &r.spike.pipeline;
    let e2e = rate(&r.spike);
    let e2e_text = or_na(e2e.map(n));
    let ratio = |per_s: f64| or_na(e2e.map(|e| format!("{:.2}", e / per_s)));
    let us = |x: Option<f64>| or_na(x.map(|us| format!("{us:.1} µs")));
    let _ = writeln!(s, "{}\n", run_line(&r.queue, r.scale));
    let mut row = |what: String, measured: String| {
        let _ = writeln!(s, "| {what} | {measured} |");
    };
    row("Writes: the default spike".into(), "Measured".into());
    row("---".into(), "---".into());
    row(
        "end-to-end likes/s / gRPC echo ceiling (our client)".into(),
        format!(
            "{e2e_text} / {} = **{}**",
            n(r.echo.per_s),
            ratio(r.echo.per_s)
        ),
    );
    if let Some(shared) = r.echo.shared_per_s {
        row(
            "… / `../shared/grpc-ceiling` echo (its client)".into(),
            format!("{e2e_text} / {} = **{}**", n(shared), ratio(shared)),
        );
    }
    for (label, pipe) in [
        ("packed pipe", &r.packed_pipe),
        ("per-message pipe", &r.pipe),
    ] {
        row(
            format!("… / {label} (`{}`)", pipe.case),
            format!("{e2e_text} / {} = **{}**", n(pipe.per_s), ratio(pipe.per_s)),
        );
    }
    let theirs = ceiling::median_by(&r.shared_client_spikes, |t| t.e2e_per_s);
    if let (Some(theirs), Some(shared)) = (theirs, r.echo.shared_per_s) {
        row(
            "like for like: the spike from `../shared/grpc-ceiling`'s client / its echo".into(),
            format!(
                "{} / {} = **{:.2}**",
                n(theirs.e2e_per_s),
                n(shared),
                theirs.e2e_per_s / shared
            ),
        );
    }
    row(
        "counts exact (every acknowledged like stored once)".into(),
        format!("**{}**", if r.spike.passed() { "yes" } else { "NO" }),
    );
    row(
        "CPU per like: broker / api / worker / PostgreSQL / load generator".into(),
        format!(
            "{} / {} / {} / {} / {}",
            us(cpu(&r.spike, "broker")),
            us(cpu(&r.spike, "api")),
            us(cpu(&r.spike, "worker")),
            us(cpu(&r.spike, "postgres")),
            us(cpu(&r.spike, "load generator"))
        ),
    );
    row(
        "likes per broker message".into(),
        or_na(r.spike_likes_per_message.map(|x| format!("{x:.1}"))),
    );
    row(
        "Like p50 / p99".into(),
        format!(
            "{} / **{}**",
            ms(spike.like_latency_us.p50),
            ms(spike.like_latency_us.p99)
        ),
    );
    row(
        format!(
            "Like p50, one sequential caller ({} Likes)",
            r.lone.pipeline.acknowledged
        ),
        ms(r.lone.pipeline.like_latency_us.p50),
    );
    let per_txn = spike.transactions_per_like.map(|t| 1.0 / t);
    row(
        "likes per database transaction".into(),
        or_na(per_txn.map(n)),
    );
    if let (Some(direct), Some(c)) = (&r.baseline.baseline, &r.baseline.comparison) {
        row(
            "pipeline vs direct (one transaction per like): throughput / transactions per like"
                .into(),
            format!(
                "{} / {} fewer (direct {}/s)",
                or_na(c.persisted_ratio.map(|x| format!("{x:.1}×"))),
                or_na(
                    c.transactions_per_like_ratio
                        .map(|x| format!("{}×", n(1.0 / x)))
                ),
                n(direct.accepted_per_s)
            ),
        );
    }
    let open = &r.open_loop.pipeline;
    row(
        format!(
            "Like p50 / p99 at half the spike's rate ({}/s, open loop)",
            n(open.accepted_per_s)
        ),
        format!(
            "{} / **{}**",
            ms(open.like_latency_us.p50),
            ms(open.like_latency_us.p99)
        ),
    );
    let tenfold = rate(&r.tenfold).zip(e2e).map(|(t, e)| t / e);
    row(
        format!(
            "end-to-end likes/s at {} vs {} likes",
            r.tenfold.pipeline.acknowledged, spike.acknowledged
        ),
        format!(
            "{} vs {e2e_text} = **{}**",
            or_na(rate(&r.tenfold).map(n)),
            or_na(tenfold.map(|x| format!("{:.0}%", x * 100.0)))
        ),
    );
    row(
        format!(
            "api / worker peak RSS, 1000 concurrent callers ({} likes/s)",
            n(r.crowd.pipeline.accepted_per_s)
        ),
        format!(
            "**{}** / {}",
            or_na(r.crowd_api_peak_rss_mib.map(|m| format!("{m:.0} MiB"))),
            or_na(r.crowd_worker_peak_rss_mib.map(|m| format!("{m:.0} MiB")))
        ),
    );
    let quorum = rate(&r.quorum);
    row(
        format!("{} vs quorum: end-to-end likes/s", r.queue),
        format!(
            "{e2e_text} vs {} = **{}**",
            or_na(quorum.map(n)),
            or_na(
                e2e.zip(quorum)
                    .map(|(e, q)| format!("quorum {:.2}×", q / e))
            )
        ),
    );
    row(
        "… broker CPU per like, Like p99, likes per message".into(),
        format!(
            "{} / {}, {} / {}, {} / {}",
            us(cpu(&r.spike, "broker")),
            us(cpu(&r.quorum, "broker")),
            ms(spike.like_latency_us.p99),
            ms(r.quorum.pipeline.like_latency_us.p99),
            or_na(r.spike_likes_per_message.map(|x| format!("{x:.1}"))),
            or_na(r.quorum_likes_per_message.map(|x| format!("{x:.1}")))
        ),
    );
    let _ = writeln!(s);
    viewers_summary(&mut s, r);
    pages::summary(
        &mut s,
        r.feed.as_ref(),
        r.likers.as_ref(),
        r.spike_arms.as_ref(),
    );
    let _ = writeln!(s);
    for (what, trials) in [
        ("default spike", &r.spike_trials),
        ("quorum spike", &r.quorum_trials),
    ] {
        if trials.len() > 1 {
            let rates: Vec<String> = trials.iter().map(|&x| n(x)).collect();
            let _ = writeln!(
                s,
                "{what}: median of {} trials, end-to-end likes/s {}\n",
                trials.len(),
                rates.join(" / ")
            );
        }
    }
    if let Some(theirs) = theirs {
        let rates: Vec<String> = r
            .shared_client_spikes
            .iter()
            .map(|t| n(t.e2e_per_s))
            .collect();
        let exact = shared_counts_exact(r);
        let _ = writeln!(
            s,
            "`../shared/grpc-ceiling spike` against the api: median of {} trials, end-to-end likes/s {}; counts {}; its client {:.1} µs per like (ours {})\n",
            rates.len(),
            rates.join(" / "),
            if exact {
                "exact in every trial"
            } else {
                "NOT exact"
            },
            theirs.client_us_per_like,
            us(cpu(&r.spike, "load generator"))
        );
    }
    let mut failed: Vec<&str> = reports(r)
        .iter()
        .filter(|(_, report)| !report.passed())
        .map(|(name, _)| *name)
        .collect();
    if !shared_counts_exact(r) {
        failed.push("the shared client's spike");
    }
    let _ = writeln!(
        s,
        "verification: {}\n",
        if failed.is_empty() {
            "every run passed (every acknowledged like stored exactly once, counts exact)"
                .to_owned()
        } else {
            format!("FAILED in {}", failed.join(", "))
        }
    );
    let _ = writeln!(
        s,
        "| ceiling | this project's (median) | ../shared (cross-check) | broker CPU per like |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for c in [&r.pipe, &r.packed_pipe, &r.echo] {
        let _ = writeln!(
            s,
            "| `{}` | {}/s | {} | {} |",
            c.case,
            n(c.per_s),
            or_na(c.shared_per_s.map(|x| format!("{}/s", n(x)))),
            us(c.broker_us_per_like)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Latency, ProcessCpu, Scenario, SystemReport};

    fn report(persisted: f64, p99: u64, cpu: &[(&str, f64)]) -> Report {
        let latency = Latency {
            count: 1000,
            p50: 2_000,
            p90: 5_000,
            p99,
            p999: p99,
            max: p99,
            mean: 2_500.0,
        };
        Report {
            scenario: Scenario {
                target: "127.0.0.1:1".into(),
                requests: Some(1000),
                duration_s: None,
                concurrency: 64,
                connections: 8,
                posts: 1000,
                hot_fraction: 0.9,
                duplicate_fraction: 0.0,
                unlike_fraction: 0.0,
                rate: None,
                batch_size: None,
                batch_max_wait_ms: None,
                seed: 1,
            },
            pipeline: SystemReport {
                system: "pipeline".into(),
                sent: 1000,
                acknowledged: 1000,
                failed: 0,
                kinds: Default::default(),
                errors: Default::default(),
                load_s: 1.0,
                accepted_per_s: persisted,
                like_latency_us: latency,
                unlike_latency_us: None,
                persisted_per_s: Some(persisted),
                drain_ms: Some(10),
                peak_queue_depth: Some(0),
                transactions: Some(5),
                transactions_per_like: Some(0.005),
                worker: None,
                pool_size: None,
                process_cpu: cpu
                    .iter()
                    .map(|(n, us)| {
                        (
                            (*n).to_owned(),
                            ProcessCpu {
                                cpu_s: us / 1000.0,
                                us_per_like: *us,
                            },
                        )
                    })
                    .collect(),
                verification: Default::default(),
            },
            baseline: None,
            comparison: None,
            process_peak_rss_mib: None,
        }
    }

    fn ceiling(case: &str, per_s: f64) -> Ceiling {
        Ceiling {
            case: case.into(),
            per_s,
            trials: vec![per_s],
            broker_us_per_like: None,
            shared_per_s: Some(per_s * 1.05),
        }
    }

    fn results() -> BenchResults {
        let spike = report(30_000.0, 12_000, &[("api", 20.0), ("broker", 10.5)]);
        BenchResults {
            scale: 1.0,
            pipe: ceiling("e2e:1000:200000:classic2", 20_000.0),
            packed_pipe: ceiling("e2e-packed:1000:200000:16:classic2", 80_000.0),
            echo: ceiling("grpc-echo", 60_000.0),
            spike: spike.clone(),
            spike_likes_per_message: Some(20.0),
            spike_trials: vec![29_000.0, 30_000.0, 31_000.0],
            shared_client_spikes: [26_000.0, 24_000.0, 25_000.0]
                .map(|e2e_per_s| SharedSpike {
                    e2e_per_s,
                    counts_exact: true,
                    client_us_per_like: e2e_per_s / 1000.0,
                })
                .to_vec(),
            lone: report(500.0, 3_000, &[]),
            open_loop: report(15_000.0, 20_000, &[]),
            tenfold: report(28_000.0, 12_000, &[]),
            baseline: spike.clone(),
            crowd: report(25_000.0, 90_000, &[]),
            crowd_api_peak_rss_mib: Some(60.0),
            crowd_worker_peak_rss_mib: Some(40.0),
            viewers: None,
            freshness_us: None,
            outage: None,
            feed: None,
            likers: None,
            spike_arms: None,
            quorum: report(33_000.0, 11_000, &[("broker", 9.0)]),
            quorum_likes_per_message: None,
            quorum_trials: Vec::new(),
            queue: "classic2".into(),
        }
    }

    #[test]
    fn the_summary_reads_its_figures_from_the_reports() {
        let text = summary(&results());
        assert!(text.contains("30,000 / 60,000 = **0.50** |"), "{text}");
        assert!(text.contains("30,000 / 80,000 = **0.38**"), "{text}");
        assert!(
            text.contains("| 10.5 µs / 20.0 µs / n/a / n/a / n/a |"),
            "{text}"
        );
        assert!(
            text.contains("| likes per broker message | 20.0 |"),
            "{text}"
        );
        assert!(text.contains("/ **12.0 ms** |"), "{text}");
        assert!(
            !text.contains("≥") && !text.contains("| ok |"),
            "results only: {text}"
        );
        assert!(text.contains("quorum 1.10×"), "{text}");
        assert!(text.contains("= **93%** |"), "{text}");
        assert!(
            text.contains("| `grpc-echo` | 60,000/s | 63,000/s |"),
            "{text}"
        );
        assert!(text.contains("verification: every run passed"), "{text}");
        assert!(
            text.contains(
                "default spike: median of 3 trials, end-to-end likes/s 29,000 / 30,000 / 31,000"
            ),
            "{text}"
        );
        assert!(!text.contains("quorum spike: median"), "{text}");
        assert!(
            text.contains("grpc-ceiling`'s client / its echo | 25,000 / 63,000 = **0.40** |"),
            "{text}"
        );
        assert!(
            text.contains(
                "against the api: median of 3 trials, end-to-end likes/s 26,000 / 24,000 / 25,000; \
                 counts exact in every trial; its client 25.0 µs per like (ours n/a)"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_failed_verification_and_missing_counters_are_said() {
        let mut r = results();
        r.spike_likes_per_message = None;
        r.quorum.pipeline.verification.missing = 3;
        r.shared_client_spikes[1].counts_exact = false;
        let text = summary(&r);
        assert!(
            text.contains("| likes per broker message | n/a |"),
            "{text}"
        );
        assert!(
            text.contains("verification: FAILED in quorum, the shared client's spike"),
            "{text}"
        );
        assert!(text.contains("counts NOT exact"), "{text}");
        assert!(!all_passed(&r));
        let json = serde_json::to_string(&r).expect("serializable");
        let back: BenchResults = serde_json::from_str(&json).expect("the report type reads back");
        assert_eq!(summary(&back), text);
    }
}
