//! Sends the workload: `concurrency` senders, each taking the next request
//! from the [`Ledger`], sending it and recording the answer and its latency.
//!
//! Closed loop, a sender sends its next request as soon as the previous one
//! is answered. Open loop (`--rate`), each request has a due time; a sender
//! waits for it and the latency is counted from the due time, not from when
//! the request actually left, so a stalled server shows in the percentiles
//! instead of quietly slowing the load (no coordinated omission).

use crate::{
    baseline, http2,
    scenario::{Answer, Call, KindCounts, Ledger, Names},
};
use hdrhistogram::Histogram;
use likes_db::{Action, PgPool};
use likes_proto::pb::{LikeRequest, UnlikeRequest, like_service_client::LikeServiceClient};
use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::{task::JoinSet, time::Instant};
use tonic::codegen::http::Uri;

/// A request with no answer after this long counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Highest latency the histograms track: longer ones are clamped to it.
const MAX_LATENCY_MICROS: u64 = 3_600_000_000;

/// Where requests go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// The api over gRPC, spread over several HTTP/2 connections.
    Grpc(Vec<LikeServiceClient<http2::Connection>>),
    /// Straight into PostgreSQL, one transaction per request (the baseline).
    Direct(PgPool),
}

/// Load-test clients of the api at `addr` (`host:port`, or a URI such as
/// `http://host:port`), each on a plaintext HTTP/2 connection of its own.
pub async fn connect(
    addr: &str,
    connections: usize,
) -> anyhow::Result<Vec<LikeServiceClient<http2::Connection>>> {
    connect_with(addr, connections, &http2::Access::default()).await
}

/// [`connect`], as `access` says: over TLS (then `addr` may say
/// `https://`), with a bearer token.
pub async fn connect_with(
    addr: &str,
    connections: usize,
    access: &http2::Access,
) -> anyhow::Result<Vec<LikeServiceClient<http2::Connection>>> {
    let scheme = if access.is_tls() { "https" } else { "http" };
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("{scheme}://{addr}")
    };
    let origin: Uri = uri.parse()?;
    anyhow::ensure!(
        origin.scheme_str() == Some(scheme),
        "{uri}: the load generator speaks {scheme} here (TLS with https:// or --ca-file)"
    );
    let authority = origin
        .authority()
        .ok_or_else(|| anyhow::anyhow!("no host:port in the api address {uri}"))?
        .to_string();
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let connection = http2::Connection::open(&authority, access)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to the api at {uri}: {e}"))?;
        clients.push(LikeServiceClient::with_origin(connection, origin.clone()));
    }
    Ok(clients)
}

impl Sink {
    /// The api at `addr` over `connections` HTTP/2 connections
    /// ([`connect_with`]).
    pub async fn grpc(
        addr: &str,
        connections: usize,
        access: &http2::Access,
    ) -> anyhow::Result<Self> {
        Ok(Self::Grpc(connect_with(addr, connections, access).await?))
    }

    async fn send(&self, sender: usize, names: &Names, call: &Call) -> Result<(), String> {
        let post_id = names.post(call.post);
        let user_id = names.user(call.pair);
        match self {
            Self::Grpc(clients) => {
                let mut client = clients[sender % clients.len()].clone();
                let answer = match call.action {
                    Action::Like => client
                        .like(LikeRequest { post_id, user_id })
                        .await
                        .map(drop),
                    Action::Unlike => client
                        .unlike(UnlikeRequest { post_id, user_id })
                        .await
                        .map(drop),
                };
                answer.map_err(|status| format!("{:?}", status.code()))
            }
            Self::Direct(pool) => baseline::write(pool, &post_id, &user_id, call.action)
                .await
                .map_err(|error| {
                    tracing::debug!(%error, "direct write failed");
                    "database error".to_owned()
                }),
        }
    }
}

/// Counters the progress display and the sampler read while the load runs.
#[derive(Debug, Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub acknowledged: AtomicU64,
    pub failed: AtomicU64,
}

impl Live {
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// What happened while the load ran.
#[derive(Debug)]
pub struct LoadOutcome {
    pub started: Instant,
    /// When the last answer came back.
    pub finished: Instant,
    pub sent: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub kinds: KindCounts,
    /// Failed requests by gRPC code (or "timeout", "database error").
    pub errors: BTreeMap<String, u64>,
    /// Latency of Likes (first and duplicate), in microseconds.
    pub like_latency: Histogram<u64>,
    /// Latency of Unlikes, in microseconds.
    pub unlike_latency: Histogram<u64>,
}

/// Per-sender tallies, merged at the end so senders share no locks for them.
struct Tally {
    like_latency: Histogram<u64>,
    unlike_latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            like_latency: latency_histogram(),
            unlike_latency: latency_histogram(),
            errors: BTreeMap::new(),
        }
    }
}

/// An empty histogram of microseconds, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3)
        .expect("constant bounds: 1 <= low, high >= 2 * low, 3 significant digits")
}

/// Sends the whole workload with `concurrency` senders and returns once every
/// request is answered; `started` is the epoch of the schedule and latencies.
pub async fn drive(
    sink: Sink,
    ledger: Arc<Mutex<Ledger>>,
    names: Names,
    live: Arc<Live>,
    concurrency: usize,
    started: Instant,
) -> LoadOutcome {
    let sink = Arc::new(sink);
    let names = Arc::new(names);
    let mut senders = JoinSet::new();
    for sender in 0..concurrency {
        let sink = Arc::clone(&sink);
        let ledger = Arc::clone(&ledger);
        let names = Arc::clone(&names);
        let live = Arc::clone(&live);
        senders.spawn(async move {
            send_until_done(sender, &sink, &ledger, &names, &live, started).await
        });
    }
    let mut tally = Tally::new();
    let mut finished = started;
    while let Some(joined) = senders.join_next().await {
        let (done, last_answer) =
            joined.expect("a sender does not panic: it only sends and counts");
        finished = finished.max(last_answer);
        tally
            .like_latency
            .add(&done.like_latency)
            .expect("histograms with the same bounds add up");
        tally
            .unlike_latency
            .add(&done.unlike_latency)
            .expect("histograms with the same bounds add up");
        for (code, n) in done.errors {
            *tally.errors.entry(code).or_default() += n;
        }
    }
    let kinds = ledger
        .lock()
        .expect("the ledger lock is never held across a panic")
        .issued();
    LoadOutcome {
        started,
        finished,
        sent: live.sent(),
        acknowledged: live.acknowledged(),
        failed: live.failed(),
        kinds,
        errors: tally.errors,
        like_latency: tally.like_latency,
        unlike_latency: tally.unlike_latency,
    }
}

async fn send_until_done(
    sender: usize,
    sink: &Sink,
    ledger: &Mutex<Ledger>,
    names: &Names,
    live: &Live,
    started: Instant,
) -> (Tally, Instant) {
    let mut tally = Tally::new();
    let mut last_answer = started;
    loop {
        let next = ledger
            .lock()
            .expect("the ledger lock is never held across a panic")
            .next(started.elapsed());
        let Some(call) = next else {
            return (tally, last_answer);
        };
        let begin = match call.due {
            Some(due) => {
                let due = started + due;
                tokio::time::sleep_until(due).await;
                due
            }
            None => Instant::now(),
        };
        live.sent.fetch_add(1, Ordering::Relaxed);
        let answer = match tokio::time::timeout(CALL_TIMEOUT, sink.send(sender, names, &call)).await
        {
            Ok(answer) => answer,
            Err(_) => Err("timeout".to_owned()),
        };
        last_answer = Instant::now();
        let micros =
            u64::try_from(last_answer.duration_since(begin).as_micros()).unwrap_or(u64::MAX);
        let histogram = match call.action {
            Action::Like => &mut tally.like_latency,
            Action::Unlike => &mut tally.unlike_latency,
        };
        histogram.saturating_record(micros.max(1));
        let answer = match answer {
            Ok(()) => {
                live.acknowledged.fetch_add(1, Ordering::Relaxed);
                Answer::Acknowledged
            }
            Err(code) => {
                live.failed.fetch_add(1, Ordering::Relaxed);
                *tally.errors.entry(code).or_default() += 1;
                Answer::Failed
            }
        };
        ledger
            .lock()
            .expect("the ledger lock is never held across a panic")
            .complete(&call, answer);
    }
}
