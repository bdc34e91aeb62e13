//! `likes-loadtest bench-batch` (`make bench-batch`): the worker's batch
//! size swept over two workloads, as a markdown table. Every point is a
//! `likes-loadtest --json` process of its own (api and worker in-process,
//! fresh database and queues), so its peak RSS is its own; that RSS covers
//! the load generator and the api too, an upper bound on the worker's
//! memory. The JSON reports, each point's log and `summary.md` go to
//! `<out>/<date-time>/`.

use crate::Report;
use anyhow::Context;
use clap::Args;
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// Options of `likes-loadtest bench-batch`.
#[derive(Debug, Clone, Args)]
pub struct BatchOptions {
    /// Requests per point.
    #[arg(long, default_value_t = 30_000)]
    pub likes: u64,
    /// Fixed batch sizes to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10,50,100,250,500,1000,2500,5000"
    )]
    pub sizes: Vec<usize>,
    /// Workloads: hot (every like on one post) and spread (likes over
    /// 100,000 posts).
    #[arg(long, value_delimiter = ',', default_value = "hot,spread")]
    pub workloads: Vec<Workload>,
    /// Workload seed, the same for every point.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where the results go (a folder per run is made inside).
    #[arg(long, default_value = "target/bench-batch")]
    pub out: PathBuf,
    /// Folder of the likes-loadtest binary (default: this one's).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// The two workloads of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    Hot,
    Spread,
}

impl Workload {
    fn args(self) -> &'static [&'static str] {
        match self {
            Self::Hot => &["--hot-fraction", "1.0"],
            Self::Spread => &["--posts", "100000", "--hot-fraction", "0"],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Hot => "hot",
            Self::Spread => "spread",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::Hot => "one hot post (--hot-fraction 1.0)",
            Self::Spread => "likes over 100,000 posts (--posts 100000 --hot-fraction 0)",
        }
    }
}

/// The file name of one point: workload and batch size.
fn point_name(workload: Workload, size: usize) -> String {
    format!("{}-batch-{size:05}", workload.name())
}

/// A point's outcome: its report, if the run left one.
#[derive(Debug, Clone)]
pub struct Measured {
    /// The batch size.
    pub size: usize,
    pub report: Option<Report>,
}

/// Runs the sweep; `Ok(false)` if a point failed or did not verify.
pub async fn run(options: &BatchOptions) -> anyhow::Result<bool> {
    let bin_dir = match &options.bin_dir {
        Some(dir) => dir.clone(),
        None => crate::ceiling::own_bin_dir()?,
    };
    let stamp = std::process::Command::new("date")
        .arg("+%Y%m%d-%H%M%S")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "run".into());
    let out = options.out.join(stamp);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let total = options.sizes.len() * options.workloads.len();
    eprintln!(
        "bench-batch: {total} points of {} requests, results in {}",
        options.likes,
        out.display()
    );
    let mut all_ok = true;
    let mut tables = Vec::new();
    let mut done = 0;
    for &workload in &options.workloads {
        let mut measured = Vec::new();
        for &size in &options.sizes {
            done += 1;
            let name = point_name(workload, size);
            eprint!("[{done:2}/{total}] {name:<22} ");
            let (report, ok) = run_point(&bin_dir, &out, &name, options, workload, size)?;
            all_ok &= ok;
            eprintln!(
                "{}",
                report
                    .as_ref()
                    .and_then(|r| r.pipeline.persisted_per_s)
                    .map_or_else(|| "no rate".to_owned(), |r| format!("{r:.0} persisted/s"))
            );
            measured.push(Measured { size, report });
        }
        tables.push((workload, measured));
    }
    let mut text = format!(
        "Batch size sweep: {} requests per point, seed {}.\n\n",
        options.likes, options.seed
    );
    for (workload, measured) in &tables {
        text.push_str(&table(*workload, measured));
    }
    std::fs::write(out.join("summary.md"), &text)?;
    print!("{text}");
    Ok(all_ok)
}

/// One point as a process of its own; its JSON report in `<name>.json`,
/// its stderr in `<name>.log`.
fn run_point(
    bin_dir: &Path,
    out: &Path,
    name: &str,
    options: &BatchOptions,
    workload: Workload,
    size: usize,
) -> anyhow::Result<(Option<Report>, bool)> {
    let log = std::fs::File::create(out.join(format!("{name}.log")))?;
    let output = Command::new(bin_dir.join("likes-loadtest"))
        .args(["--json", "--likes", &options.likes.to_string()])
        .args(["--seed", &options.seed.to_string()])
        .args(workload.args())
        .args(["--batch-size", &size.to_string()])
        .stdin(Stdio::null())
        .stderr(log)
        .output()
        .context("starting likes-loadtest")?;
    std::fs::write(out.join(format!("{name}.json")), &output.stdout)?;
    let report: Option<Report> = serde_json::from_slice(&output.stdout).ok();
    match output.status.code() {
        Some(0) => {}
        Some(1) => eprint!("VERIFICATION FAILED "),
        _ => eprint!("FAILED ({}, see {name}.log) ", output.status),
    }
    Ok((report, output.status.success()))
}

/// The markdown table of one workload.
pub fn table(workload: Workload, measured: &[Measured]) -> String {
    let rate = |m: &Measured| m.report.as_ref().and_then(|r| r.pipeline.persisted_per_s);
    let best = measured
        .iter()
        .filter_map(|m| Some((m.size, rate(m)?)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    let mut s = format!("### {}: {}\n\n", workload.name(), workload.title());
    s.push_str(
        "| batch | persisted/s | of best | flush p99 ms | mean batch | batches | peak RSS MiB |\n",
    );
    s.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for m in measured {
        let label = if best.is_some_and(|b| b.0 == m.size) {
            format!("**{}**", m.size)
        } else {
            m.size.to_string()
        };
        let Some(report) = &m.report else {
            let _ = writeln!(s, "| {label} | failed to run (see the .log) | | | | | |");
            continue;
        };
        let p = &report.pipeline;
        let share = rate(m).zip(best).map(|(r, b)| r / b.1);
        let worker = p.worker;
        let _ = writeln!(
            s,
            "| {label} | {}{} | {} | {} | {} | {} | {} |",
            rate(m).map_or_else(|| "not all persisted".to_owned(), |r| format!("{r:.0}")),
            if p.verification.passed() {
                ""
            } else {
                " (verification FAILED)"
            },
            share.map_or_else(|| "-".to_owned(), |x| format!("{:.0}%", x * 100.0)),
            worker.and_then(|w| w.flush_latency_us).map_or_else(
                || "-".to_owned(),
                |l| format!("{:.1}", l.p99 as f64 / 1000.0)
            ),
            worker.map_or_else(|| "-".to_owned(), |w| format!("{:.0}", w.mean_batch_size)),
            worker.map_or_else(|| "-".to_owned(), |w| w.batches.to_string()),
            report
                .process_peak_rss_mib
                .map_or_else(|| "-".to_owned(), |m| format!("{m:.0}"))
        );
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_named_by_workload_and_size() {
        assert_eq!(point_name(Workload::Hot, 50), "hot-batch-00050");
        assert_eq!(point_name(Workload::Spread, 5000), "spread-batch-05000");
    }

    #[test]
    fn a_point_without_a_report_is_marked_failed() {
        let text = table(
            Workload::Hot,
            &[Measured {
                size: 10,
                report: None,
            }],
        );
        assert!(
            text.contains("| 10 | failed to run (see the .log) |"),
            "{text}"
        );
    }
}
