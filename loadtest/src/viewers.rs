//! The read side of a viral post, for `bench`: how many viewers of one
//! count the api serves against an in-memory echo of the same contract,
//! what those reads cost PostgreSQL, whether readers slow the Likes, how
//! soon a Like shows in its post's count, and what a reader sees while
//! PostgreSQL is away.
//!
//! The readers are `../shared/grpc-ceiling`'s client (`reads --kind
//! count`: 64 callers over 8 connections, each keeping one GetLikeCount of
//! the hot post outstanding), the one its read ceiling is measured with;
//! where that tool is missing, the phases that need it report nothing.

use crate::{
    ceiling::{run_shared, shared_ceiling},
    processes::Services,
    report::Latency,
};
use likes_proto::pb::{GetLikeCountRequest, LikeRequest};
use likes_testkit::{
    commits::CommitCounter, free_port, process::ServiceProcess, proxy::FaultProxy,
};
use serde::{Deserialize, Serialize};
use std::{path::Path, time::Duration};
use tokio::time::Instant;

/// What the shared tool's readers did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedReads {
    pub reads_per_s: f64,
    pub p99_ms: f64,
    /// Calls that failed, by gRPC code.
    pub errors: u64,
}

/// `../shared/grpc-ceiling/run.sh reads --kind <kind>` against `target`
/// for `seconds` on the posts of the shared tool's spike `run_id`: `count`
/// reads its hot post, `feed` and `summaries` read feed pages of 50 of its
/// posts (51 calls a page, or one GetLikeSummaries). `reads_per_s` counts
/// reads or pages.
pub fn shared_reads(target: &str, run_id: &str, seconds: u32, kind: &str) -> Option<SharedReads> {
    #[derive(Deserialize)]
    struct Line {
        reads_per_s: f64,
        p99_ms: f64,
        #[serde(default)]
        errors: std::collections::BTreeMap<String, u64>,
    }
    let duration = seconds.to_string();
    let args = [
        "reads",
        "--target",
        target,
        "--kind",
        kind,
        "--concurrency",
        "64",
        "--connections",
        "8",
        "--duration",
        &duration,
        "--run-id",
        run_id,
    ];
    let (_, stdout) = run_shared("grpc-ceiling", &args)?;
    let line: Line = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())?;
    Some(SharedReads {
        reads_per_s: line.reads_per_s,
        p99_ms: line.p99_ms,
        errors: line.errors.values().sum(),
    })
}

/// The read ceiling: `run.sh --reads`, the same readers against the
/// shared echo server (median of three trials).
pub fn echo_reads() -> Option<f64> {
    shared_ceiling("grpc-ceiling", &["--reads"])
}

/// Reads of `kind` ([`shared_reads`]) for `seconds`, and the PostgreSQL
/// transactions of the services' database meanwhile, per read.
pub async fn reads_and_their_cost(
    services: &Services,
    run_id: &str,
    seconds: u32,
    kind: &'static str,
) -> anyhow::Result<Option<(SharedReads, f64)>> {
    let mut commits = CommitCounter::connect(&services.env.settings.database.url).await?;
    let before = commits.settled(Duration::from_secs(30)).await?;
    let target = services.api_addr();
    let run_id = run_id.to_owned();
    let reads =
        tokio::task::spawn_blocking(move || shared_reads(&target, &run_id, seconds, kind)).await?;
    let after = commits.settled(Duration::from_secs(30)).await?;
    Ok(reads.map(|reads| {
        let total = reads.reads_per_s * f64::from(seconds);
        let per_read = after.saturating_sub(before) as f64 / total.max(1.0);
        (reads, per_read)
    }))
}

/// Starts the shared readers on `target` for `seconds` in a thread of
/// their own; join it for what they did.
pub fn readers_in_background(
    target: String,
    run_id: String,
    seconds: u32,
) -> std::thread::JoinHandle<Option<SharedReads>> {
    std::thread::spawn(move || shared_reads(&target, &run_id, seconds, "count"))
}

/// On an idle service: `likes` times, one Like, then GetLikeCount of its
/// post every millisecond until the count shows it; how long each took
/// from the Like's OK.
pub async fn freshness(target: &str, post: &str, likes: u32) -> anyhow::Result<Latency> {
    let mut client = crate::driver::connect(target, 1).await?.remove(0);
    let mut latency = crate::driver::latency_histogram();
    let read = GetLikeCountRequest {
        post_id: post.to_owned(),
    };
    let start = client
        .get_like_count(read.clone())
        .await?
        .into_inner()
        .count;
    for i in 0..likes {
        client
            .like(LikeRequest {
                post_id: post.to_owned(),
                user_id: format!("fresh-{i}"),
            })
            .await?;
        let liked = Instant::now();
        let want = start + i64::from(i) + 1;
        loop {
            let count = client
                .get_like_count(read.clone())
                .await?
                .into_inner()
                .count;
            if count >= want {
                break;
            }
            anyhow::ensure!(
                liked.elapsed() < Duration::from_secs(30),
                "Like {i} did not show in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let micros = u64::try_from(liked.elapsed().as_micros()).unwrap_or(u64::MAX);
        latency.saturating_record(micros.max(1));
    }
    Ok(Latency::of_or_empty(&latency))
}

/// What a reader saw while PostgreSQL was unreachable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outage {
    /// Reads of the cached hot count, past its expiry, answered with it.
    pub hot_served: u32,
    pub hot_reads: u32,
    /// How long reads of posts never cached took to fail.
    pub cold_fail_us: Latency,
}

/// A second api of `services`' deployment whose database link runs through
/// a fault proxy: reads `hot` (cached), cuts the link, and once the entry
/// has expired reads it again and reads posts it never cached.
pub async fn outage(bin_dir: &Path, services: &Services, hot: &str) -> anyhow::Result<Outage> {
    let proxy = FaultProxy::start("127.0.0.1:5432".parse()?).await?;
    let mut settings = services.env.settings_with_database_at(proxy.addr())?;
    settings.api.listen = format!("127.0.0.1:{}", free_port()?).parse()?;
    settings.api.metrics_listen = String::new();
    let _api = ServiceProcess::spawn(&bin_dir.join("likes-api"), &settings)?;
    let target = settings.api.listen.to_string();
    let mut client = likes_testkit::eventually(
        Duration::from_secs(60),
        "the outage api to answer",
        || async {
            let Ok(mut clients) = crate::driver::connect(&target, 1).await else {
                return Ok(None);
            };
            let read = clients[0]
                .get_like_count(GetLikeCountRequest {
                    post_id: hot.to_owned(),
                })
                .await;
            Ok(read.ok().map(|_| clients.remove(0)))
        },
    )
    .await?;
    proxy.cut();
    tokio::time::sleep(settings.api.count_cache_ttl() + Duration::from_millis(200)).await;
    let hot_reads = 20;
    let mut hot_served = 0;
    for _ in 0..hot_reads {
        let read = client
            .get_like_count(GetLikeCountRequest {
                post_id: hot.to_owned(),
            })
            .await;
        if let Err(status) = &read {
            eprintln!("  outage: the hot read failed: {status:?}");
        }
        hot_served += u32::from(read.is_ok());
    }
    let mut cold = crate::driver::latency_histogram();
    for i in 0..20 {
        let started = Instant::now();
        let read = client
            .get_like_count(GetLikeCountRequest {
                post_id: format!("never-cached-{i}"),
            })
            .await;
        anyhow::ensure!(
            read.is_err(),
            "a cold read succeeded with the database away"
        );
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        cold.saturating_record(micros.max(1));
    }
    proxy.restore();
    Ok(Outage {
        hot_served,
        hot_reads,
        cold_fail_us: Latency::of_or_empty(&cold),
    })
}
