//! Command-line options of the load generator.

use clap::{Parser, ValueEnum};
use std::time::Duration;

/// Drives the likes api with a celebrity-post workload, reports throughput,
/// latency and database cost, and verifies every acknowledged like in
/// PostgreSQL. Exits non-zero when verification finds a difference.
#[derive(Debug, Clone, Parser)]
#[command(name = "likes-loadtest", version)]
pub struct Options {
    /// Requests to send: first Likes, duplicate Likes and Unlikes together.
    #[arg(long, default_value_t = 100_000, conflicts_with = "duration")]
    pub likes: u64,

    /// Send for this many seconds instead of a fixed number of requests.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,

    /// Requests in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,

    /// Requests in flight per HTTP/2 connection: the load uses
    /// ceil(concurrency / this) connections.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub per_connection: u32,

    /// Posts besides the celebrity post that share the rest of the likes.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub posts: u32,

    /// Share of new likes that go to the one celebrity post.
    #[arg(long, default_value_t = 0.9, value_parser = fraction)]
    pub hot_fraction: f64,

    /// Share of requests that repeat the Like of an earlier acknowledged pair.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub duplicate_fraction: f64,

    /// Share of requests that Unlike an earlier pair, sent after its Like got OK.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub unlike_fraction: f64,

    /// Open loop: start this many requests per second on a fixed schedule
    /// (still at most --concurrency in flight). Default: closed loop.
    #[arg(long, value_name = "N", value_parser = positive_rate)]
    pub rate: Option<f64>,

    /// Print the report as one JSON object on stdout (hides the progress bar).
    #[arg(long)]
    pub json: bool,

    /// Also run the same workload written straight into PostgreSQL, one
    /// transaction per request, and compare.
    #[arg(long, value_enum, value_name = "MODE")]
    pub baseline: Option<Baseline>,

    /// Events per batch of the in-process worker (worker.batch_size).
    #[arg(long, conflicts_with = "target")]
    pub batch_size: Option<std::num::NonZeroU16>,

    /// Longest wait of a batch's oldest event in the in-process worker
    /// (worker.batch_max_wait_ms).
    #[arg(long, value_name = "MS", conflicts_with = "target")]
    pub batch_max_wait_ms: Option<u64>,

    /// Use a running api instead of starting one (and a worker) in-process;
    /// `https://HOST:PORT` for an api that serves TLS.
    #[arg(long, value_name = "HOST:PORT")]
    pub target: Option<String>,

    /// PEM file of the CAs that sign the --target api's certificate (TLS,
    /// even without https://); default with https://: the system's roots.
    #[arg(long, value_name = "FILE", requires = "target")]
    pub ca_file: Option<std::path::PathBuf>,

    /// Bearer token every call to the --target api carries
    /// (`api.auth_token`); better given in the environment than on the
    /// command line.
    #[arg(
        long,
        env = "LIKES_LOADTEST_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        requires = "target"
    )]
    pub token: Option<String>,

    /// Database the --target api's workers write to, for verification.
    /// Default: the configured database.url.
    #[arg(long, value_name = "URL", requires = "target")]
    pub database_url: Option<String>,

    /// Event queue of the --target api, whose depth is sampled.
    /// Default: the configured amqp.queue.
    #[arg(long, value_name = "NAME", requires = "target")]
    pub queue: Option<String>,

    /// Longest wait, after the last request, for everything acknowledged to
    /// be persisted.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub drain_timeout: u64,

    /// Seed of the workload's random choices (default: a random one).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Name this run's posts `lt-<ID>-hot`, `lt-<ID>-p1` … (default: a
    /// random ID), so another client can watch them while the load runs.
    /// 1 to 32 ASCII letters and digits, new to the database.
    #[arg(long, value_name = "ID", value_parser = run_id, conflicts_with = "baseline")]
    pub run_id: Option<String>,

    /// Also report the CPU a process uses per acknowledged request, from the
    /// first request to the last one committed (repeat the flag; the load
    /// generator's own is always reported).
    #[arg(long = "cpu-of", value_name = "NAME=PID", value_parser = named_pid)]
    pub cpu_of: Vec<(String, u32)>,

    /// Also report the CPU of every process named `postgres` on this
    /// machine (the server, its backends and workers) per acknowledged
    /// request, as `postgres`.
    #[arg(long)]
    pub cpu_of_postgres: bool,
}

/// How the baseline writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Baseline {
    /// Each request in its own PostgreSQL transaction: its likes row and its
    /// post's counter row.
    Direct,
}

impl Options {
    /// Checks what clap cannot: relations between options.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.duplicate_fraction + self.unlike_fraction <= 1.0,
            "--duplicate-fraction plus --unlike-fraction must not exceed 1"
        );
        anyhow::ensure!(
            self.duration.is_some() || self.likes > 0,
            "--likes must be at least 1"
        );
        Ok(())
    }

    /// The HTTP/2 connections the load is spread over.
    /// How the --target api is reached: TLS with https:// or a CA file,
    /// and the token.
    pub fn access(&self) -> anyhow::Result<crate::http2::Access> {
        let https = self
            .target
            .as_deref()
            .is_some_and(|t| t.starts_with("https://"));
        crate::http2::Access::new(
            https || self.ca_file.is_some(),
            self.ca_file.as_deref(),
            self.token.as_deref(),
        )
    }

    pub fn connections(&self) -> usize {
        self.concurrency.div_ceil(self.per_connection) as usize
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout)
    }
}

fn fraction(raw: &str) -> Result<f64, String> {
    let value: f64 = raw.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not between 0 and 1"))
    }
}

fn run_id(raw: &str) -> Result<String, String> {
    if (1..=32).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(raw.to_owned())
    } else {
        Err(format!("{raw:?} is not 1 to 32 ASCII letters and digits"))
    }
}

fn named_pid(raw: &str) -> Result<(String, u32), String> {
    let (name, pid) = raw
        .split_once('=')
        .ok_or_else(|| format!("{raw:?} is not NAME=PID"))?;
    let pid = pid.parse().map_err(|e| format!("{pid:?}: {e}"))?;
    Ok((name.to_owned(), pid))
}

fn positive_rate(raw: &str) -> Result<f64, String> {
    let value: f64 = raw.parse().map_err(|e| format!("{e}"))?;
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(format!(
            "{value} is not a positive number of requests per second"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_ones() {
        let options = Options::parse_from(["likes-loadtest"]);
        assert_eq!(options.likes, 100_000);
        assert_eq!(options.concurrency, 64);
        assert_eq!(options.connections(), 8);
        assert_eq!(options.posts, 1000);
        assert!((options.hot_fraction - 0.9).abs() < f64::EPSILON);
        assert!(options.rate.is_none() && options.target.is_none());
        options.validate().expect("defaults are valid");
    }

    #[test]
    fn a_run_id_is_letters_and_digits() {
        for bad in ["", "a_b", "a%", "é", &"x".repeat(33)] {
            assert!(
                Options::try_parse_from(["x", "--run-id", bad]).is_err(),
                "{bad:?}"
            );
        }
        let options = Options::parse_from(["x", "--run-id", "Bench42"]);
        assert_eq!(options.run_id.as_deref(), Some("Bench42"));
    }

    #[test]
    fn fractions_outside_zero_to_one_are_refused() {
        assert!(Options::try_parse_from(["x", "--hot-fraction", "1.5"]).is_err());
        let options = Options::parse_from([
            "x",
            "--duplicate-fraction",
            "0.6",
            "--unlike-fraction",
            "0.6",
        ]);
        assert!(options.validate().is_err());
    }

    #[test]
    fn duration_replaces_likes_and_database_url_needs_target() {
        assert!(Options::try_parse_from(["x", "--likes", "5", "--duration", "3"]).is_err());
        assert!(Options::try_parse_from(["x", "--database-url", "postgres://h/d"]).is_err());
        assert!(Options::try_parse_from(["x", "--target", "h:1", "--batch-size", "9"]).is_err());
        assert!(
            Options::try_parse_from(["x", "--target", "h:1", "--batch-max-wait-ms", "5"]).is_err()
        );
    }

    #[test]
    fn cpu_of_takes_named_pids() {
        let options = Options::parse_from(["x", "--cpu-of", "api=12", "--cpu-of", "broker=7"]);
        assert_eq!(
            options.cpu_of,
            [("api".to_owned(), 12), ("broker".to_owned(), 7)]
        );
        assert!(Options::try_parse_from(["x", "--cpu-of", "api"]).is_err());
    }
}
