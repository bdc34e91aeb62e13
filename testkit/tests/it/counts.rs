//! Counts served from memory: one query for many concurrent readers, kept
//! current by the workers' pushes (newer versions only), converging when
//! pushes are lost, served stale while PostgreSQL is away, and a read storm
//! that costs the writes nothing.

use likes_api::counts::CountCache;
use likes_common::ids::PostId;
use likes_proto::events::CountChange;
use likes_proto::pb::{
    GetLikeCountRequest, HasLikedRequest, LikeRequest, like_service_client::LikeServiceClient,
};
use likes_testkit::{
    RunningApi, TestEnv, eventually,
    load::{check_exactly, like_all, pairs},
    proxy::FaultProxy,
};
use std::time::Duration;
use tokio::time::Instant;
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

async fn count(client: &LikeServiceClient<Channel>, post: &str) -> Result<i64, tonic::Status> {
    let reply = client
        .clone()
        .get_like_count(GetLikeCountRequest {
            post_id: post.into(),
        })
        .await?;
    Ok(reply.into_inner().count)
}

async fn like(client: &LikeServiceClient<Channel>, post: &str, user: &str) -> anyhow::Result<()> {
    client
        .clone()
        .like(LikeRequest {
            post_id: post.into(),
            user_id: user.into(),
        })
        .await?;
    Ok(())
}

/// Scans of `like_counts` (by index or not) in the test's database, once
/// PostgreSQL has reported every backend's: a read of counts scans it once.
/// (The database's transaction count would do, but autovacuum's visits to a
/// new database add a few transactions of their own at any moment.)
async fn like_counts_scans(env: &TestEnv) -> anyhow::Result<i64> {
    #[derive(diesel::QueryableByName)]
    struct Scans {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        scans: i64,
    }
    use diesel_async::RunQueryDsl;
    let mut db = env.db().await?;
    let mut last = -1;
    let mut since = Instant::now();
    // A session that flushed its statistics less than a second before it
    // went idle reports the rest after PostgreSQL's idle interval (10 s).
    while since.elapsed() < Duration::from_secs(11) {
        let now = diesel::sql_query(
            "SELECT (coalesce(seq_scan, 0) + coalesce(idx_scan, 0))::int8 AS scans
             FROM pg_stat_user_tables WHERE relname = 'like_counts'",
        )
        .get_result::<Scans>(&mut db)
        .await?
        .scans;
        if now != last {
            last = now;
            since = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(last)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_concurrent_reads_of_a_cold_post_cost_one_query() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let api = env.spawn_api().await?;
    let before = like_counts_scans(&env).await?;

    let mut clients = vec![api.client.clone()];
    for _ in 1..8 {
        clients.push(api.new_client().await?);
    }
    let reads = (0..1_000).map(|i| {
        let client = clients[i % clients.len()].clone();
        tokio::spawn(async move { count(&client, "cold").await })
    });
    for read in futures_util::future::join_all(reads).await {
        assert_eq!(read??, 0);
    }

    let after = like_counts_scans(&env).await?;
    assert_eq!(after - before, 1, "1,000 concurrent reads of one post");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_like_reaches_a_cached_count_by_a_push_within_the_freshness_bound() -> anyhow::Result<()>
{
    let mut env = TestEnv::new();
    // Nothing cached expires during the test: a count can only move by a push.
    env.settings.api.count_cache_ttl_ms = 600_000.try_into()?;
    let api = env.spawn_api().await?;
    let _worker = env.spawn_worker().await?;
    assert_eq!(count(&api.client, "p").await?, 0);

    for expected in 1..=3 {
        like(&api.client, "p", &format!("u{expected}")).await?;
        let liked = Instant::now();
        eventually(Duration::from_secs(10), "the pushed count", || async {
            Ok((count(&api.client, "p").await? == expected).then_some(()))
        })
        .await?;
        let took = liked.elapsed();
        let bound = env.settings.worker.batch_max_wait() + Duration::from_millis(500);
        assert!(took <= bound, "count {expected} showed after {took:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_out_of_order_never_replace_a_newer_count() -> anyhow::Result<()> {
    let mut env = TestEnv::new();
    env.settings.api.count_cache_ttl_ms = 600_000.try_into()?;
    let cache = CountCache::new(
        likes_db::ReadPools::primary_only(env.pool().await?),
        &env.settings.api,
    );
    let post = PostId::parse("p")?;
    let change = |count, version| CountChange {
        post_id: "p".into(),
        count,
        version,
    };
    cache
        .apply(vec![change(5, 5), change(3, 3), change(4, 4)])
        .await;
    assert_eq!(cache.count(&post).await?, 5, "the newest of three");
    cache.apply(vec![change(2, 5), change(1, 1)]).await;
    assert_eq!(
        cache.count(&post).await?,
        5,
        "same or older versions ignored"
    );
    cache.apply(vec![change(6, 6)]).await;
    assert_eq!(cache.count(&post).await?, 6);
    // A post the database never counted reads 0 at version 0: any push wins.
    let other = PostId::parse("q")?;
    assert_eq!(cache.count(&other).await?, 0);
    cache
        .apply(vec![CountChange {
            post_id: "q".into(),
            count: 1,
            version: 1,
        }])
        .await;
    assert_eq!(cache.count(&other).await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_racing_on_a_hot_post_and_two_shards_leave_every_cached_count_exact()
-> anyhow::Result<()> {
    for shards in [1, 2] {
        let mut env = TestEnv::new();
        env.settings.api.count_cache_ttl_ms = 600_000.try_into()?;
        env.settings.amqp.shards = shards;
        env.settings.worker.batch_size = 50.try_into()?;
        let api = env.spawn_api().await?;
        let mut workers = Vec::new();
        for shard in 0..2 {
            let mut settings = env.settings.clone();
            if shards == 2 {
                settings.worker.shards = shard.to_string();
            }
            workers.push(env.spawn_worker_with(&settings).await?);
        }
        // Five posts cached at 0 before any like: only pushes move them.
        let posts: Vec<String> = (0..5).map(|i| format!("post-{i}")).collect();
        for post in &posts {
            assert_eq!(count(&api.client, post).await?, 0);
        }
        let clients = vec![api.client.clone(), api.new_client().await?];
        // 90% of them on post-0, from 32 callers: both workers write it.
        let mut sent = pairs(&format!("hot-{shards}"), 2_700, 1);
        sent.extend(pairs(&format!("rest-{shards}"), 300, 5));
        let outcome = like_all(&clients, sent, 32, Duration::from_secs(30)).await?;
        env.wait_for_stored_pairs(3_000, Duration::from_secs(60))
            .await?;
        let mut db = env.db().await?;
        check_exactly(&mut db, &outcome.acknowledged).await?;
        for post in &posts {
            let stored = likes_testkit::verify::stored_count(&mut db, post).await?;
            eventually(
                Duration::from_secs(10),
                &format!("{post}'s cached count"),
                || async { Ok((count(&api.client, post).await? == stored).then_some(())) },
            )
            .await?;
        }
        drop(workers);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_pushes_lost_counts_converge_within_the_ttl_and_resubscribing_clears_the_cache()
-> anyhow::Result<()> {
    let env = TestEnv::new();
    let writer = env.spawn_api().await?;
    let _worker = env.spawn_worker().await?;
    // Two reading apis whose broker links run through a proxy: one with a
    // long TTL, one with a short one.
    let proxy = FaultProxy::start("127.0.0.1:5672".parse()?).await?;
    let mut settings = env.settings.clone();
    settings.amqp.url =
        likes_common::config::SecretUrl::new(format!("amqp://guest:guest@{}/%2f", proxy.addr()));
    settings.api.count_cache_ttl_ms = 600_000.try_into()?;
    let long = RunningApi::spawn_with(&settings).await?;
    settings.api.count_cache_ttl_ms = 1_000.try_into()?;
    let short = RunningApi::spawn_with(&settings).await?;
    for reader in [&long, &short] {
        assert_eq!(count(&reader.client, "p").await?, 0);
    }

    // Their links cut: the push of this like reaches neither.
    proxy.cut();
    like(&writer.client, "p", "u1").await?;
    env.wait_for_count("p", 1, Duration::from_secs(20)).await?;
    let stored = Instant::now();
    eventually(
        Duration::from_secs(5),
        "the short TTL to expire",
        || async { Ok((count(&short.client, "p").await? == 1).then_some(())) },
    )
    .await?;
    assert!(stored.elapsed() < Duration::from_millis(2_500));
    assert_eq!(
        count(&long.client, "p").await?,
        0,
        "within its TTL, the count that missed its push"
    );

    // Subscribed again, the api forgets what it may have missed.
    proxy.restore();
    eventually(
        Duration::from_secs(10),
        "the resubscribed api's count",
        || async { Ok((count(&long.client, "p").await? == 1).then_some(())) },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_postgresql_unreachable_cached_counts_are_served_stale_and_cold_reads_fail_fast()
-> anyhow::Result<()> {
    let mut env = TestEnv::new();
    env.settings.api.count_cache_ttl_ms = 300.try_into()?;
    let proxy = FaultProxy::start("127.0.0.1:5432".parse()?).await?;
    let settings = env.settings_with_database_at(proxy.addr())?;
    let api = RunningApi::spawn_with(&settings).await?;
    let worker = env.spawn_worker().await?;
    like(&api.client, "hot", "u1").await?;
    env.wait_for_count("hot", 1, Duration::from_secs(20))
        .await?;
    eventually(Duration::from_secs(5), "the hot count cached", || async {
        Ok((count(&api.client, "hot").await? == 1).then_some(()))
    })
    .await?;

    proxy.cut();
    // Past the TTL, with nothing to reload from: the cached count, stale.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..5 {
        assert_eq!(count(&api.client, "hot").await?, 1);
    }
    for i in 0..5 {
        let started = Instant::now();
        let status = count(&api.client, &format!("cold-{i}"))
            .await
            .expect_err("nothing cached, nothing to read from");
        let took = started.elapsed();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(
            status
                .get_error_details()
                .error_info()
                .map(|i| i.reason.as_str()),
            Some("DATABASE_UNAVAILABLE")
        );
        assert!(
            took < Duration::from_millis(200),
            "a cold read took {took:?}"
        );
    }
    // Likes are still taken: they wait in the queue, not in the database.
    like(&api.client, "hot", "u2").await?;

    proxy.restore();
    env.wait_for_count("hot", 2, Duration::from_secs(30))
        .await?;
    eventually(Duration::from_secs(5), "the exact count again", || async {
        Ok((count(&api.client, "hot").await.ok() == Some(2)).then_some(()))
    })
    .await?;
    drop(worker);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_storm_on_a_small_pool_is_refused_as_overload_and_never_costs_a_like()
-> anyhow::Result<()> {
    let mut env = TestEnv::new();
    env.settings.database.pool_size = 2.try_into()?;
    env.settings.database.connect_timeout_ms = 100;
    env.settings.api.max_concurrent_requests = 100.try_into()?;
    let api = env.spawn_api().await?;
    let _worker = env.spawn_worker().await?;
    let mut clients = vec![api.client.clone()];
    for _ in 1..4 {
        clients.push(api.new_client().await?);
    }

    // 200 readers of viewer states (each a query) for 3 s, and Likes meanwhile.
    let until = Instant::now() + Duration::from_secs(3);
    let readers = (0..200).map(|i| {
        let mut client = clients[i % clients.len()].clone();
        tokio::spawn(async move {
            let mut codes = Vec::new();
            while Instant::now() < until {
                let read = client
                    .has_liked(HasLikedRequest {
                        post_id: format!("post-{}", i % 7),
                        user_id: format!("viewer-{i}"),
                    })
                    .await;
                match read {
                    Ok(_) => codes.push(Code::Ok),
                    Err(status) => {
                        if status.code() == Code::ResourceExhausted {
                            let reason = status
                                .get_error_details()
                                .error_info()
                                .map(|i| i.reason.clone());
                            assert_eq!(reason.as_deref(), Some("OVERLOADED"), "{status:?}");
                        }
                        codes.push(status.code());
                    }
                }
            }
            codes
        })
    });
    let readers: Vec<_> = readers.collect();
    let likes = like_all(
        &[api.new_client().await?],
        pairs("storm", 300, 3),
        8,
        Duration::ZERO,
    )
    .await?;
    let mut codes = Vec::new();
    for reader in readers {
        codes.extend(reader.await?);
    }
    assert_eq!(likes.retried, 0, "every Like answered OK at once");
    let refused = codes
        .iter()
        .filter(|c| **c == Code::ResourceExhausted)
        .count();
    let served = codes.iter().filter(|c| **c == Code::Ok).count();
    let other: Vec<_> = codes
        .iter()
        .filter(|c| !matches!(c, Code::Ok | Code::ResourceExhausted))
        .collect();
    let first_other = other.first();
    assert!(
        other.is_empty(),
        "only OK or RESOURCE_EXHAUSTED: {} others, first {:?}",
        other.len(),
        first_other
    );
    assert!(
        refused > 0 && served > 0,
        "{served} served, {refused} refused"
    );
    // The circuit stayed closed: the next read is served at once.
    let started = Instant::now();
    api.client
        .clone()
        .has_liked(HasLikedRequest {
            post_id: "p".into(),
            user_id: "after".into(),
        })
        .await?;
    assert!(started.elapsed() < Duration::from_millis(100));
    env.wait_for_stored_pairs(300, Duration::from_secs(30))
        .await?;
    let mut db = env.db().await?;
    check_exactly(&mut db, &likes.acknowledged).await?;
    Ok(())
}
