//! `likes-loadtest ceiling …`: what this machine allows at best, measured by
//! the project's own code, so the service's figures read as fractions of it.
//!
//! - `ceiling pipe`: RabbitMQ and PostgreSQL alone ([`pipe`]), one like per
//!   message or `--per-message N` packed in a `LikeEventBatch`;
//! - `ceiling grpc`: the load test's client against an in-memory echo
//!   service in a process of its own ([`echo`]).
//!
//! Each runs `--trials` times (default 3) and reports the median, as
//! `../shared/ceiling` and `../shared/grpc-ceiling` do; where those tools are
//! present (the development machines), [`shared_ceiling`] runs them for a
//! cross-check.

pub mod echo;
pub mod pipe;

use crate::{
    driver::{self, Live, Sink},
    scenario::{Expectation, Ledger, Names, Stop, Workload},
};
use anyhow::Context;
use clap::{Args, Subcommand};
use likes_proto::pb::GetLikeCountsRequest;
use pipe::{Pipe, QueueKind};
use serde::{Deserialize, Serialize};
use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
};
use tokio::time::Instant;

/// `likes-loadtest ceiling …`.
#[derive(Debug, Clone, Subcommand)]
pub enum CeilingCommand {
    /// RabbitMQ + PostgreSQL alone: publish with confirms, consume, write in
    /// batches, ack (like ../shared/ceiling e2e and e2e-packed).
    Pipe(PipeOptions),
    /// The load test's client against an in-memory echo LikeService in a
    /// process of its own (like ../shared/grpc-ceiling).
    Grpc(GrpcOptions),
    /// Only the echo server, printing its address (what `ceiling grpc` starts).
    EchoServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

#[derive(Debug, Clone, Args)]
pub struct PipeOptions {
    #[arg(long, default_value_t = 200_000)]
    pub likes: u64,
    /// Likes per database batch.
    #[arg(long, default_value_t = 1000)]
    pub batch: u64,
    /// Likes per broker message (more than 1: packed in a LikeEventBatch).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub per_message: u64,
    /// classic (version 1), classic2 or quorum. Default: the queue the
    /// service's settings declare.
    #[arg(long)]
    pub queue: Option<QueueKind>,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub trials: u32,
}

#[derive(Debug, Clone, Args)]
pub struct GrpcOptions {
    #[arg(long, default_value_t = 100_000)]
    pub likes: u64,
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    #[arg(long, default_value_t = 8)]
    pub per_connection: u32,
    #[arg(long, default_value_t = 0.9)]
    pub hot_fraction: f64,
    #[arg(long, default_value_t = 1000)]
    pub posts: u32,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub trials: u32,
    /// Where the likes-loadtest binary that serves the echo is (default:
    /// this one's folder).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// HTTP/2 connections of a spike: its callers, `per_connection` to each.
fn connections(options: &GrpcOptions) -> usize {
    options.concurrency.div_ceil(options.per_connection) as usize
}

/// The middle one of `items` by `rate` (of an even count, the upper of the
/// two middle ones); `None` when there are none.
pub fn median_by<T>(items: impl IntoIterator<Item = T>, rate: impl Fn(&T) -> f64) -> Option<T> {
    let mut sorted: Vec<T> = items.into_iter().collect();
    sorted.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
    let middle = sorted.len() / 2;
    (middle < sorted.len()).then(|| sorted.swap_remove(middle))
}

/// One ceiling, measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ceiling {
    /// The case, named as the shared tools name it.
    pub case: String,
    /// Median over the trials: likes per second (end to end for the pipe,
    /// answered for the echo).
    pub per_s: f64,
    pub trials: Vec<f64>,
    /// Broker CPU per like (pipe), median trial's.
    pub broker_us_per_like: Option<f64>,
    /// The same case measured by the shared tool, when it ran.
    pub shared_per_s: Option<f64>,
}

impl Ceiling {
    fn of(case: String, mut trials: Vec<(f64, Option<f64>)>) -> Self {
        trials.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (per_s, broker_us_per_like) = trials[trials.len() / 2];
        Self {
            case,
            per_s,
            trials: trials.iter().map(|t| t.0).collect(),
            broker_us_per_like,
            shared_per_s: None,
        }
    }

    /// The shared tools' line, so the two read side by side.
    pub fn result_line(&self) -> String {
        let trials: Vec<String> = self.trials.iter().map(|t| format!("{t:.0}")).collect();
        let mut line = format!(
            "RESULT {} {:.0} {}",
            self.case,
            self.per_s,
            trials.join(",")
        );
        if let Some(us) = self.broker_us_per_like {
            line.push_str(&format!(" broker_us_per_like={us:.1}"));
        }
        if let Some(shared) = self.shared_per_s {
            line.push_str(&format!(" shared={shared:.0}"));
        }
        line
    }
}

/// Runs a `ceiling` subcommand and prints its result line.
pub async fn run(command: &CeilingCommand) -> anyhow::Result<()> {
    match command {
        CeilingCommand::Pipe(options) => {
            let queue = match options.queue {
                Some(queue) => queue,
                None => QueueKind::of(&likes_common::Settings::load()?.amqp),
            };
            let pipe = Pipe {
                batch: options.batch,
                likes: options.likes,
                per_message: options.per_message,
                queue,
            };
            println!(
                "{}",
                measure_pipe(&pipe, options.trials).await?.result_line()
            );
        }
        CeilingCommand::Grpc(options) => {
            println!("{}", measure_grpc(options).await?.result_line());
        }
        CeilingCommand::EchoServer { listen } => {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            println!("listening on {}", listener.local_addr()?);
            echo::serve(listener).await?;
        }
    }
    Ok(())
}

/// The pipe `pipe`, `trials` times, on a database and queue of its own
/// (from the loaded settings' servers, removed afterwards).
pub async fn measure_pipe(pipe: &Pipe, trials: u32) -> anyhow::Result<Ceiling> {
    let mut env = likes_testkit::TestEnv::on(likes_common::Settings::load()?)?;
    let bench = pipe::Bench::prepare(&mut env, pipe.queue).await?;
    let broker = crate::procfs::broker_pid();
    let mut results = Vec::new();
    for trial in 1..=trials {
        let t = bench
            .trial(pipe, broker)
            .await
            .with_context(|| format!("pipe {pipe}"))?;
        let rate = t.likes as f64 / t.seconds;
        eprintln!("  {pipe} trial {trial}: {rate:.0}/s");
        let broker_us = t.broker_cpu_s.map(|s| s * 1e6 / t.likes as f64);
        results.push((rate, broker_us));
    }
    Ok(Ceiling::of(pipe.to_string(), results))
}

/// An echo server process, killed when dropped.
#[derive(Debug)]
pub struct EchoProcess {
    child: Child,
    pub addr: SocketAddr,
}

impl EchoProcess {
    /// Starts `likes-loadtest ceiling echo-server` from `bin_dir`.
    pub fn start(bin_dir: &Path) -> anyhow::Result<Self> {
        let binary = bin_dir.join("likes-loadtest");
        let mut child = Command::new(&binary)
            .args(["ceiling", "echo-server"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("the echo server's stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("the echo server said {line:?}"))?;
        Ok(Self { child, addr })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The folder of this binary, where its siblings are.
pub fn own_bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().context("the binary's folder")?.to_path_buf())
}

/// The echo ceiling: the spike of `options`, `trials` times, against a
/// fresh echo process; every trial's counts must come back exact.
pub async fn measure_grpc(options: &GrpcOptions) -> anyhow::Result<Ceiling> {
    let bin_dir = match &options.bin_dir {
        Some(dir) => dir.clone(),
        None => own_bin_dir()?,
    };
    let echo = EchoProcess::start(&bin_dir)?;
    let connections = connections(options);
    let mut results = Vec::new();
    for trial in 1..=options.trials {
        let workload = Workload {
            stop: Stop::After(options.likes),
            rate: None,
            posts: options.posts,
            hot_fraction: options.hot_fraction,
            duplicate_fraction: 0.0,
            unlike_fraction: 0.0,
            seed: u64::from(trial),
        };
        let names = Names::random();
        let ledger = Arc::new(Mutex::new(Ledger::new(workload)));
        let sink = Sink::grpc(&echo.addr.to_string(), connections, &Default::default()).await?;
        let load = driver::drive(
            sink,
            Arc::clone(&ledger),
            names.clone(),
            Arc::new(Live::default()),
            options.concurrency as usize,
            Instant::now(),
        )
        .await;
        let ledger = Arc::into_inner(ledger)
            .expect("every sender has finished")
            .into_inner()
            .expect("the ledger lock is never held across a panic");
        check_echo_counts(&echo.addr, &ledger, &names).await?;
        let rate = load.acknowledged as f64 / (load.finished - load.started).as_secs_f64();
        eprintln!("  grpc-echo trial {trial}: {rate:.0}/s");
        results.push((rate, None));
    }
    Ok(Ceiling::of("grpc-echo".to_owned(), results))
}

/// The echo's counts must equal the acknowledged Likes per post.
async fn check_echo_counts(
    addr: &SocketAddr,
    ledger: &Ledger,
    names: &Names,
) -> anyhow::Result<()> {
    let mut expected: HashMap<String, i64> = HashMap::new();
    for pair in 0..ledger.pair_count() {
        if ledger.expectation(pair) == Some(Expectation::Liked) {
            let post = ledger.post_of(pair).expect("pairs come from the ledger");
            *expected.entry(names.post(post)).or_default() += 1;
        }
    }
    let mut client = driver::connect(&addr.to_string(), 1).await?.remove(0);
    let posts: Vec<String> = expected.keys().cloned().collect();
    for chunk in posts.chunks(1000) {
        let counts = client
            .get_like_counts(GetLikeCountsRequest {
                post_ids: chunk.to_vec(),
            })
            .await?
            .into_inner()
            .counts;
        for post in chunk {
            let (have, want) = (counts.get(post).copied().unwrap_or(0), expected[post]);
            anyhow::ensure!(
                have == want,
                "the echo counts {have} for {post}, not {want}"
            );
        }
    }
    Ok(())
}

/// `../shared/<tool>/run.sh ARGS`' median, when the tool is there (next to
/// this workspace): `None` when it is not, or it failed (said on stderr).
pub fn shared_ceiling(tool: &str, args: &[&str]) -> Option<f64> {
    let (succeeded, stdout) = run_shared(tool, args)?;
    if !succeeded {
        return None;
    }
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("RESULT"))
        .and_then(|rest| rest.split_whitespace().nth(1)?.parse().ok())
}

/// One run of `../shared/grpc-ceiling/run.sh spike` against a service: the
/// shared tool's own load client, the one its echo ceiling is measured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedSpike {
    /// Likes answered OK over first send to every count matching.
    pub e2e_per_s: f64,
    /// Every post's count equalled the Likes answered OK for it.
    pub counts_exact: bool,
    /// The client's own CPU per Like, microseconds.
    pub client_us_per_like: f64,
}

/// The shared tool's spike against the api at `target`, of the shape of
/// `spike` (its likes, callers, connections, hot fraction and posts: the
/// shape of our echo ceiling and our spike); `None` when the tool is not
/// there or did not report.
pub fn shared_spike(target: &str, spike: &GrpcOptions, run_id: &str) -> Option<SharedSpike> {
    let likes = spike.likes.to_string();
    let concurrency = spike.concurrency.to_string();
    let connections = connections(spike).to_string();
    let hot_fraction = spike.hot_fraction.to_string();
    let posts = spike.posts.to_string();
    let args = [
        "spike",
        "--target",
        target,
        "--likes",
        &likes,
        "--concurrency",
        &concurrency,
        "--connections",
        &connections,
        "--hot-fraction",
        &hot_fraction,
        "--posts",
        &posts,
        "--run-id",
        run_id,
    ];
    // Exit 1 says the counts were not exact; the line still tells the rest.
    let (_, stdout) = run_shared("grpc-ceiling", &args)?;
    parse_shared_spike(&stdout)
}

/// The last JSON line of the shared tool's `spike` output.
fn parse_shared_spike(stdout: &str) -> Option<SharedSpike> {
    #[derive(Deserialize)]
    struct Line {
        e2e_per_s: f64,
        counts_exact: bool,
        ok: f64,
        probe_cpu_s: f64,
    }
    let line: Line = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())?;
    Some(SharedSpike {
        e2e_per_s: line.e2e_per_s,
        counts_exact: line.counts_exact,
        client_us_per_like: line.probe_cpu_s * 1e6 / line.ok.max(1.0),
    })
}

/// Runs `../shared/<tool>/run.sh ARGS`: whether it exited 0, and its stdout;
/// `None` when the tool is not there or could not be started.
pub(crate) fn run_shared(tool: &str, args: &[&str]) -> Option<(bool, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared")
        .join(tool);
    let script = dir.join("run.sh");
    if !script.is_file() {
        return None;
    }
    eprintln!("  cross-check: {} {}", script.display(), args.join(" "));
    // From its own folder, so this workspace's .cargo/config.toml does not
    // reach its build: it stays as its authors built it.
    let output = Command::new(&script)
        .args(args)
        .current_dir(&dir)
        .env_remove("RUSTFLAGS")
        .stderr(Stdio::inherit())
        .output();
    match output {
        Ok(output) => {
            if !output.status.success() {
                eprintln!("  cross-check {tool} exited with {}", output.status);
            }
            Some((
                output.status.success(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
            ))
        }
        Err(error) => {
            eprintln!("  cross-check {tool} failed: {error}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_spike_is_read_from_its_last_json_line() {
        // As `../shared/grpc-ceiling/run.sh spike --target` printed it.
        let stdout = "warming up\n{\"mode\":\"spike\",\"likes\":100000,\"ok\":100000,\
            \"errors\":{},\"accepted_per_s\":17305.6,\"p50_ms\":3.399,\"p99_ms\":9.335,\
            \"e2e_per_s\":16993.3,\"drain_s\":0.111,\"counts_exact\":true,\
            \"mismatched_posts\":0,\"probe_cpu_s\":2.68}\n";
        assert_eq!(
            parse_shared_spike(stdout),
            Some(SharedSpike {
                e2e_per_s: 16993.3,
                counts_exact: true,
                client_us_per_like: 26.8,
            })
        );
        assert_eq!(parse_shared_spike("no json here\n"), None);
    }

    #[test]
    fn the_median_is_the_middle_by_rate_or_the_upper_middle() {
        assert_eq!(median_by([3.0, 1.0, 2.0], |x| *x), Some(2.0));
        assert_eq!(median_by([4.0, 1.0, 3.0, 2.0], |x| *x), Some(3.0));
        assert_eq!(median_by(Vec::<f64>::new(), |x| *x), None);
    }

    #[test]
    fn the_median_trial_is_reported() {
        let ceiling = Ceiling::of(
            "grpc-echo".into(),
            vec![(300.0, Some(3.0)), (100.0, Some(1.0)), (200.0, Some(2.0))],
        );
        assert_eq!(ceiling.per_s, 200.0);
        assert_eq!(ceiling.broker_us_per_like, Some(2.0));
        assert_eq!(ceiling.trials, [100.0, 200.0, 300.0]);
        assert_eq!(
            ceiling.result_line(),
            "RESULT grpc-echo 200 100,200,300 broker_us_per_like=2.0"
        );
    }
}
