//! WatchLikeCounts streams whose clients stop reading while every post
//! they watch changes: the api holds at most a bounded backlog per stream
//! (the latest count per post, then HTTP/2's window), so its memory levels
//! off; when the clients read again, they get the latest counts.

use crate::{
    ONE_AT_A_TIME,
    floods::{MIB, RssSampler},
    spawn_api_process,
};
use likes_proto::pb::{
    LikeRequest, WatchLikeCountsRequest, like_service_client::LikeServiceClient,
};
use likes_testkit::{TestEnv, process::rss, verify::stored_count};
use std::{collections::HashMap, sync::Arc, time::Duration};
use tokio::time::Instant;
use tonic::{Streaming, transport::Channel};

const POSTS: usize = 100;
const STREAMS: usize = 200;
/// How long the clients do not read, while the likes keep coming.
const PAUSE: Duration = Duration::from_secs(10);
/// The most the api may grow over the second half of the pause. A stream
/// that kept every change would grow it by about 5 MB a second here (200
/// streams, 100 posts each, four changes a second each).
const LEVELLED_OFF: u64 = 8 * MIB;
/// The bound on the api's memory throughout (BENCHMARKS.md's bar for 1000
/// watchers).
const RSS_BOUND: u64 = 200 * MIB;

fn post(i: usize) -> String {
    format!("post-{i}")
}

/// Likes random posts from 8 callers until `until`, each Like by a new user.
async fn like_until(client: LikeServiceClient<Channel>, until: Instant) -> anyhow::Result<u64> {
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let callers = (0..8).map(|caller| {
        let (mut client, sent) = (client.clone(), Arc::clone(&sent));
        tokio::spawn(async move {
            let mut n = 0usize;
            while Instant::now() < until {
                n += 1;
                let request = LikeRequest {
                    post_id: post((n * 7 + caller * 13) % POSTS),
                    user_id: format!("u{caller}-{n}"),
                };
                client.like(request).await?;
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            anyhow::Ok(())
        })
    });
    for caller in futures_util::future::join_all(callers).await {
        caller??;
    }
    Ok(sent.load(std::sync::atomic::Ordering::Relaxed))
}

/// Reads `stream` until every post's `latest` count is its `want`ed one.
async fn read_until(
    stream: &mut Streaming<likes_proto::pb::LikeCountChange>,
    latest: &mut HashMap<String, i64>,
    want: &HashMap<String, i64>,
) -> anyhow::Result<()> {
    while latest != want {
        let change = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("the stream ended"))?;
        latest.insert(change.post_id, change.count);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn watchers_that_stop_reading_during_a_spike_hold_no_backlog_then_get_the_latest_counts()
-> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut env = TestEnv::new();
    let (api, client) = spawn_api_process(&mut env).await?;
    let _worker = env.spawn_worker().await?;
    let endpoint = format!("http://{}", env.settings.api.listen);
    let posts: Vec<String> = (0..POSTS).map(post).collect();
    let zero: HashMap<String, i64> = posts.iter().map(|p| (p.clone(), 0)).collect();

    // 100 streams a connection, each reading its first counts, then not.
    let mut streams = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS / 100 {
        let channel = LikeServiceClient::connect(endpoint.clone()).await?;
        for _ in 0..100 {
            let request = WatchLikeCountsRequest {
                post_ids: posts.clone(),
            };
            let mut stream = channel
                .clone()
                .watch_like_counts(request)
                .await?
                .into_inner();
            let mut latest = HashMap::new();
            read_until(&mut stream, &mut latest, &zero).await?;
            streams.push((stream, latest));
        }
    }
    let idle = api.rss_bytes()?;
    let sampler = RssSampler::start(api.pid());
    let load = tokio::spawn(like_until(client, Instant::now() + PAUSE));
    tokio::time::sleep(PAUSE / 2).await;
    let halfway = rss(api.pid())?;
    let likes = load.await??;
    let end = rss(api.pid())?;
    let peak = sampler.peak().await;
    eprintln!(
        "{likes} likes over {} posts while {STREAMS} streams did not read: api idle {} MiB, halfway {} MiB, end {} MiB, peak {} MiB",
        POSTS,
        idle / MIB,
        halfway / MIB,
        end / MIB,
        peak / MIB
    );
    assert!(
        likes >= 2 * POSTS as u64,
        "every post changed: {likes} likes"
    );
    assert!(
        end <= halfway + LEVELLED_OFF,
        "the api kept growing: {} MiB halfway, {} MiB at the end",
        halfway / MIB,
        end / MIB
    );
    assert!(peak < RSS_BOUND, "the api grew to {} MiB", peak / MIB);

    // Reading again, each stream gets to the written counts.
    let mut db = env.db().await?;
    let written_by = Instant::now() + Duration::from_secs(30);
    let want = loop {
        let mut counts = HashMap::new();
        for post in &posts {
            counts.insert(post.clone(), stored_count(&mut db, post).await?);
        }
        if counts.values().sum::<i64>() == i64::try_from(likes)? {
            break counts;
        }
        anyhow::ensure!(
            Instant::now() < written_by,
            "the likes were not all written in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // All at once, as clients do: a stream left unread holds its
    // connection's HTTP/2 window, which the others on it need.
    let want = Arc::new(want);
    let readers = streams.into_iter().map(|(mut stream, mut latest)| {
        let want = Arc::clone(&want);
        tokio::spawn(async move { read_until(&mut stream, &mut latest, &want).await })
    });
    for reader in futures_util::future::join_all(readers).await {
        reader??;
    }
    Ok(())
}
