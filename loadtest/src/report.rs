//! The final report: what was measured for the pipeline (and the baseline),
//! as text for people or as one JSON object for scripts.

use crate::scenario::KindCounts;
use hdrhistogram::Histogram;
use likes_testkit::verify::Verification;
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, fmt};

/// Everything one run measured and verified.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: Scenario,
    pub pipeline: SystemReport,
    pub baseline: Option<SystemReport>,
    pub comparison: Option<Comparison>,
    /// Peak resident memory of the load test process at the end of the run
    /// (`VmHWM`). In-process it holds the load generator, the api and the
    /// worker (and the baseline's pool, if any): an upper bound on the
    /// worker's own memory. `None` without procfs.
    pub process_peak_rss_mib: Option<f64>,
}

impl Report {
    /// Whether every verification passed.
    pub fn passed(&self) -> bool {
        self.pipeline.verification.passed()
            && self
                .baseline
                .as_ref()
                .is_none_or(|b| b.verification.passed())
    }
}

/// The options the run used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scenario {
    /// `in-process`, or the address of the running api.
    pub target: String,
    pub requests: Option<u64>,
    pub duration_s: Option<u64>,
    pub concurrency: u32,
    pub connections: usize,
    pub posts: u32,
    pub hot_fraction: f64,
    pub duplicate_fraction: f64,
    pub unlike_fraction: f64,
    pub rate: Option<f64>,
    pub batch_size: Option<usize>,
    pub batch_max_wait_ms: Option<u64>,
    pub seed: u64,
}

/// What one system (the pipeline, or the direct baseline) did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SystemReport {
    /// `pipeline` or `direct`.
    pub system: String,
    pub sent: u64,
    /// Answered OK.
    pub acknowledged: u64,
    /// Answered with an error or not within the call timeout; left out of
    /// the expectations.
    pub failed: u64,
    pub kinds: KindCounts,
    pub errors: BTreeMap<String, u64>,
    /// First request sent to last answer received.
    pub load_s: f64,
    /// Acknowledged requests (Likes and Unlikes) per second of load.
    pub accepted_per_s: f64,
    pub like_latency_us: Latency,
    pub unlike_latency_us: Option<Latency>,
    /// Acknowledged requests per second from the first request to the last
    /// of them committed; `None` if they were not all persisted in time.
    pub persisted_per_s: Option<f64>,
    /// From the last answer to the last acknowledged request committed.
    pub drain_ms: Option<u64>,
    pub peak_queue_depth: Option<u32>,
    /// Transactions committed in the database during the run (from
    /// `pg_stat_database.xact_commit`, less the load generator's own).
    pub transactions: Option<u64>,
    /// `transactions` per acknowledged request.
    pub transactions_per_like: Option<f64>,
    pub worker: Option<WorkerSummary>,
    /// Connections of the baseline's pool.
    pub pool_size: Option<u32>,
    /// CPU of the load generator and of the processes named by `--cpu-of`,
    /// from the first request to the last one committed.
    #[serde(default)]
    pub process_cpu: BTreeMap<String, ProcessCpu>,
    pub verification: Verification,
}

/// CPU one process used during a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProcessCpu {
    /// User plus system seconds.
    pub cpu_s: f64,
    /// Microseconds per acknowledged request.
    pub us_per_like: f64,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    /// `None` for an empty histogram.
    pub fn of(histogram: &Histogram<u64>) -> Option<Self> {
        (!histogram.is_empty()).then(|| Self {
            count: histogram.len(),
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            mean: histogram.mean(),
        })
    }

    fn empty() -> Self {
        Self {
            count: 0,
            p50: 0,
            p90: 0,
            p99: 0,
            p999: 0,
            max: 0,
            mean: 0.0,
        }
    }

    /// [`Latency::of`], all zeros when empty.
    pub fn of_or_empty(histogram: &Histogram<u64>) -> Self {
        Self::of(histogram).unwrap_or_else(Self::empty)
    }
}

/// What the in-process worker's counters say.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WorkerSummary {
    /// Batches committed, one transaction each.
    pub batches: u64,
    pub events: u64,
    pub mean_batch_size: f64,
    /// Batch transactions per acknowledged request.
    pub batches_per_like: f64,
    pub dead_lettered: u64,
    pub requeued_batches: u64,
    /// Batch close to ack, of the batches acked during the run; `None`
    /// when there were none.
    pub flush_latency_us: Option<Latency>,
}

/// The pipeline relative to the direct baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Pipeline accepted/s over baseline accepted/s.
    pub accepted_ratio: f64,
    /// Pipeline persisted/s over baseline persisted/s.
    pub persisted_ratio: Option<f64>,
    /// Pipeline transactions per like over baseline's.
    pub transactions_per_like_ratio: Option<f64>,
    /// Pipeline Like p99 over baseline's.
    pub like_p99_ratio: f64,
}

impl Comparison {
    pub fn of(pipeline: &SystemReport, baseline: &SystemReport) -> Self {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        Self {
            accepted_ratio: ratio(pipeline.accepted_per_s, baseline.accepted_per_s),
            persisted_ratio: pipeline
                .persisted_per_s
                .zip(baseline.persisted_per_s)
                .map(|(a, b)| ratio(a, b)),
            transactions_per_like_ratio: pipeline
                .transactions_per_like
                .zip(baseline.transactions_per_like)
                .map(|(a, b)| ratio(a, b)),
            like_p99_ratio: ratio(
                pipeline.like_latency_us.p99 as f64,
                baseline.like_latency_us.p99 as f64,
            ),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.scenario;
        let amount = match (s.requests, s.duration_s) {
            (_, Some(secs)) => format!("{secs} s of requests"),
            (Some(n), None) => format!("{n} requests"),
            (None, None) => "requests".to_owned(),
        };
        let pace = s.rate.map_or_else(
            || "closed loop".to_owned(),
            |r| format!("open loop at {r} req/s"),
        );
        writeln!(
            f,
            "likes load test — {amount}, {pace}, concurrency {} over {} connections, target {}",
            s.concurrency, s.connections, s.target
        )?;
        writeln!(
            f,
            "workload: {:.0}% on one celebrity post, rest over {} posts; {:.0}% duplicates, {:.0}% unlikes; seed {}",
            s.hot_fraction * 100.0,
            s.posts,
            s.duplicate_fraction * 100.0,
            s.unlike_fraction * 100.0,
            s.seed
        )?;
        if let (Some(size), Some(wait)) = (s.batch_size, s.batch_max_wait_ms) {
            writeln!(f, "worker: batch size {size}, max wait {wait} ms")?;
        }
        writeln!(f)?;

        let systems: Vec<&SystemReport> = std::iter::once(&self.pipeline)
            .chain(&self.baseline)
            .collect();
        let mut table = Table::new(&systems);
        table.row("requests sent", |r| r.sent.to_string());
        table.row("  first likes / duplicates / unlikes", |r| {
            format!(
                "{} / {} / {}",
                r.kinds.fresh, r.kinds.duplicate, r.kinds.unlike
            )
        });
        table.row("acknowledged (OK)", |r| r.acknowledged.to_string());
        table.row("failed", |r| {
            if r.errors.is_empty() {
                r.failed.to_string()
            } else {
                let codes: Vec<String> = r.errors.iter().map(|(c, n)| format!("{c} {n}")).collect();
                format!("{} ({})", r.failed, codes.join(", "))
            }
        });
        table.row("load time", |r| format!("{:.2} s", r.load_s));
        table.row("accepted/s", |r| format!("{:.0}", r.accepted_per_s));
        table.row("Like latency p50", |r| ms(r.like_latency_us.p50));
        table.row("Like latency p90", |r| ms(r.like_latency_us.p90));
        table.row("Like latency p99", |r| ms(r.like_latency_us.p99));
        table.row("Like latency p99.9", |r| ms(r.like_latency_us.p999));
        table.row("Like latency max", |r| ms(r.like_latency_us.max));
        table.row("persisted/s (end to end)", |r| {
            r.persisted_per_s
                .map_or_else(|| "not all persisted".to_owned(), |p| format!("{p:.0}"))
        });
        table.row("drain after last request", |r| {
            r.drain_ms
                .map_or_else(|| "-".to_owned(), |d| format!("{d} ms"))
        });
        table.row("peak queue depth", |r| {
            r.peak_queue_depth
                .map_or_else(|| "-".to_owned(), |d| d.to_string())
        });
        table.row("database transactions", |r| {
            r.transactions
                .map_or_else(|| "-".to_owned(), |t| t.to_string())
        });
        table.row("transactions per like", |r| {
            r.transactions_per_like
                .map_or_else(|| "-".to_owned(), |t| format!("{t:.4}"))
        });
        table.row("worker batches", |r| {
            r.worker
                .map_or_else(|| "-".to_owned(), |w| w.batches.to_string())
        });
        table.row("mean batch size", |r| {
            r.worker
                .map_or_else(|| "-".to_owned(), |w| format!("{:.1}", w.mean_batch_size))
        });
        table.row("batch transactions per like", |r| {
            r.worker
                .map_or_else(|| "-".to_owned(), |w| format!("{:.4}", w.batches_per_like))
        });
        table.row("flush latency p50", |r| {
            r.worker
                .and_then(|w| w.flush_latency_us)
                .map_or_else(|| "-".to_owned(), |l| ms(l.p50))
        });
        table.row("flush latency p99", |r| {
            r.worker
                .and_then(|w| w.flush_latency_us)
                .map_or_else(|| "-".to_owned(), |l| ms(l.p99))
        });
        table.row("dead-lettered", |r| {
            r.worker
                .map_or_else(|| "-".to_owned(), |w| w.dead_lettered.to_string())
        });
        let mut processes: Vec<&String> =
            systems.iter().flat_map(|s| s.process_cpu.keys()).collect();
        processes.sort();
        processes.dedup();
        for name in processes {
            table.row(&format!("CPU per like: {name}"), |r| {
                r.process_cpu
                    .get(name)
                    .map_or_else(|| "-".to_owned(), |c| format!("{:.1} µs", c.us_per_like))
            });
        }
        write!(f, "{table}")?;
        if let Some(rss) = self.process_peak_rss_mib {
            writeln!(
                f,
                "peak RSS of this process: {rss:.0} MiB (load generator, api and worker together)"
            )?;
        }

        if let Some(c) = &self.comparison {
            writeln!(f)?;
            writeln!(
                f,
                "pipeline vs direct: {:.1}x accepted/s, {} persisted/s, {} transactions per like, {:.2}x Like p99",
                c.accepted_ratio,
                c.persisted_ratio
                    .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}x")),
                c.transactions_per_like_ratio
                    .map_or_else(|| "-".to_owned(), |r| format!("{r:.4}x")),
                c.like_p99_ratio
            )?;
        }

        for system in &systems {
            writeln!(f)?;
            write_verification(f, system)?;
        }
        Ok(())
    }
}

fn write_verification(f: &mut fmt::Formatter<'_>, system: &SystemReport) -> fmt::Result {
    let v = &system.verification;
    let verdict = if v.passed() { "PASSED" } else { "FAILED" };
    writeln!(f, "verification ({}): {verdict}", system.system)?;
    write!(f, "{v}")
}

fn ms(micros: u64) -> String {
    format!("{:.2} ms", micros as f64 / 1000.0)
}

/// A text table: one row per metric, one column per system.
struct Table<'a> {
    systems: &'a [&'a SystemReport],
    rows: Vec<(String, Vec<String>)>,
}

impl<'a> Table<'a> {
    fn new(systems: &'a [&'a SystemReport]) -> Self {
        Self {
            systems,
            rows: Vec::new(),
        }
    }

    fn row(&mut self, name: &str, cell: impl Fn(&SystemReport) -> String) {
        let cells = self.systems.iter().map(|s| cell(s)).collect();
        self.rows.push((name.to_owned(), cells));
    }
}

impl fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name_width = self.rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        let widths: Vec<usize> = (0..self.systems.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|(_, cells)| cells[i].chars().count())
                    .chain([self.systems[i].system.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        write!(f, "{:name_width$}", "")?;
        for (system, width) in self.systems.iter().zip(&widths) {
            write!(f, "  {:>width$}", system.system)?;
        }
        writeln!(f)?;
        for (name, cells) in &self.rows {
            write!(f, "{name:name_width$}")?;
            for (cell, width) in cells.iter().zip(&widths) {
                write!(f, "  {cell:>width$}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
