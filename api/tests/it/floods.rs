//! Floods of HTTP/2 streams that never finish, against the api binary: its
//! memory (VmRSS) stays bounded, other callers are still served, the excess
//! is refused, and memory comes back once the connections close.

use crate::{ONE_AT_A_TIME, like, spawn_api_process};
use bytes::{BufMut, Bytes, BytesMut};
use likes_proto::pb::like_service_client::LikeServiceClient;
use likes_testkit::{TestEnv, eventually, http2, process::rss};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::time::Instant;

pub(crate) const MIB: u64 = 1024 * 1024;
/// The bound on the api's memory during a flood.
const RSS_BOUND: u64 = 150 * MIB;
/// How far above its idle level the api may stay once the flood is gone:
/// the allocator keeps some freed pages (measured +13 to +25 MiB after 800
/// half-sent bodies of 200 kB); a leak of the flood would be 160 MiB.
const SETTLED_ABOVE_IDLE: u64 = 32 * MIB;

/// Samples a process's VmRSS every 20 ms until stopped; keeps the peak.
pub(crate) struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub(crate) fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
            async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(now) = rss(pid) {
                        peak.fetch_max(now, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Self { peak, stop, task }
    }

    pub(crate) async fn peak(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak.load(Ordering::Relaxed)
    }
}

/// A normal Like on a connection of its own, and how long it took.
async fn timed_like(
    client: &mut LikeServiceClient<tonic::transport::Channel>,
    user: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    like(client, user)
        .await
        .map_err(|s| anyhow::anyhow!("a normal Like during the flood failed: {s:?}"))?;
    Ok(started.elapsed())
}

/// Waits until the api's memory is back within `SETTLED_ABOVE_IDLE` of `idle`.
async fn memory_settles(pid: u32, idle: u64) -> anyhow::Result<u64> {
    eventually(
        Duration::from_secs(15),
        "the api's memory to return near its idle level",
        || async move {
            let now = rss(pid)?;
            Ok((now <= idle + SETTLED_ABOVE_IDLE).then_some(now))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_thousand_header_only_streams_are_refused_past_the_stream_limit()
-> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut env = TestEnv::new();
    let (api, mut client) = spawn_api_process(&mut env).await?;
    like(&mut client, "warm").await?;
    let idle = api.rss_bytes()?;
    let sampler = RssSampler::start(api.pid());

    let flood = http2::header_only_flood(
        env.settings.api.listen,
        "/likes.v1.LikeService/Like",
        30_000,
    )
    .await?;
    // Everything past the 200 streams the connection may have open is
    // refused; the 200 wait for bodies that never come.
    let report = eventually(
        Duration::from_secs(20),
        "29,800 streams to be refused",
        || {
            let report = flood.report();
            async move { Ok((report.refused >= 29_800 || report.goaway).then_some(report)) }
        },
    )
    .await
    .map_err(|e| e.context(format!("last report: {:?}", flood.report())))?;
    let mut other =
        LikeServiceClient::connect(format!("http://{}", env.settings.api.listen)).await?;
    let took = timed_like(&mut other, "during-header-flood").await?;
    let peak = sampler.peak().await;

    assert_eq!(report.max_concurrent_streams, Some(200), "{report:?}");
    assert!(!report.goaway, "the connection was closed: {report:?}");
    assert_eq!(report.refused, 29_800, "{report:?}");
    assert!(took < Duration::from_secs(1), "a normal Like took {took:?}");
    assert!(
        peak < RSS_BOUND,
        "the api grew to {} MiB (idle {} MiB)",
        peak / MIB,
        idle / MIB
    );

    drop(flood);
    let settled = memory_settles(api.pid(), idle).await?;
    eprintln!(
        "header-only flood: idle {} MiB, peak {} MiB, settled {} MiB, {report:?}",
        idle / MIB,
        peak / MIB,
        settled / MIB
    );
    Ok(())
}

/// A gRPC message prefix announcing `len` bytes, and `sent` bytes of it.
fn half_a_message(len: u32, sent: usize) -> Bytes {
    let mut data = BytesMut::with_capacity(5 + sent);
    data.put_u8(0);
    data.put_u32(len);
    data.put_bytes(0x0a, sent);
    data.freeze()
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_hundred_half_sent_bodies_are_held_to_the_limits_and_others_are_still_served()
-> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut env = TestEnv::new();
    env.settings.api.max_concurrent_requests = 64.try_into()?;
    let (api, mut client) = spawn_api_process(&mut env).await?;
    like(&mut client, "warm").await?;
    let idle = api.rss_bytes()?;
    let sampler = RssSampler::start(api.pid());

    let addr = env.settings.api.listen;
    let (flood, driver) = http2::connect(addr).await?;
    let refused = Arc::new(AtomicU64::new(0));
    let other_answers = Arc::new(AtomicU64::new(0));
    let sender = tokio::spawn({
        let (refused, other_answers) = (Arc::clone(&refused), Arc::clone(&other_answers));
        async move {
            let mut held = Vec::new();
            for _ in 0..800 {
                let mut ready = flood.clone().ready().await?;
                let request =
                    http2::request(addr, "/likes.v1.LikeService/Like", Some("application/grpc"));
                let (response, mut body) = ready.send_request(request, false)?;
                // 100 KiB of a 200,000-byte message: within the windows. A
                // refused stream may already be reset (the refusal is
                // answered at HEADERS), which fails the send: that is fine.
                let _ = body.send_data(half_a_message(200_000, 100 * 1024), false);
                let (refused, other_answers) = (Arc::clone(&refused), Arc::clone(&other_answers));
                tokio::spawn(async move {
                    if let Ok(response) = response.await {
                        let code = http2::grpc_status_of(response.headers());
                        let counter = if code == Some(tonic::Code::ResourceExhausted as i32) {
                            &refused
                        } else {
                            &other_answers
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                });
                held.push(body);
            }
            anyhow::Ok(held)
        }
    });
    // 64 bodies hold the places; the other 736 are refused at once.
    eventually(Duration::from_secs(20), "736 streams to be refused", || {
        let refused = refused.load(Ordering::Relaxed);
        async move { Ok((refused >= 736).then_some(())) }
    })
    .await
    .map_err(|e| {
        e.context(format!(
            "{} refused, {} other answers",
            refused.load(Ordering::Relaxed),
            other_answers.load(Ordering::Relaxed)
        ))
    })?;
    let held = tokio::time::timeout(Duration::from_secs(20), sender).await???;
    // Past the grace, a new caller takes the place of a stalled body.
    tokio::time::sleep(likes_api::admission::REQUEST_BODY_GRACE + Duration::from_millis(100)).await;
    let mut other = LikeServiceClient::connect(format!("http://{addr}")).await?;
    let took = timed_like(&mut other, "during-body-flood").await?;
    let took_again = timed_like(&mut other, "during-body-flood-2").await?;
    let peak = sampler.peak().await;

    assert!(took < Duration::from_secs(1), "a normal Like took {took:?}");
    assert!(
        took_again < Duration::from_secs(1),
        "a second Like took {took_again:?}"
    );
    assert_eq!(
        other_answers.load(Ordering::Relaxed),
        0,
        "flood streams are refused or wait; none is handled"
    );
    assert!(
        peak < RSS_BOUND,
        "the api grew to {} MiB (idle {} MiB)",
        peak / MIB,
        idle / MIB
    );

    drop(held);
    driver.abort();
    let settled = memory_settles(api.pid(), idle).await?;
    eprintln!(
        "half-sent bodies: idle {} MiB, peak {} MiB, settled {} MiB, refused {}",
        idle / MIB,
        peak / MIB,
        settled / MIB,
        refused.load(Ordering::Relaxed)
    );
    // Unharmed: a normal Like still works.
    like(&mut client, "after-body-flood").await?;
    Ok(())
}
