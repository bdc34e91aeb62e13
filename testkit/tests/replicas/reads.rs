//! The api's reads on a streaming replica (`database.read_urls`): a read
//! storm that costs the primary nothing, a replica that lags past the
//! bound or stops and the reads that move to the primary meanwhile.

use crate::{database_name, env_on};
use likes_common::config::SecretUrl;
use likes_proto::pb::{GetLikeCountRequest, HasLikedRequest, LikeRequest};
use likes_testkit::{
    RunningApi, TestEnv,
    commits::CommitCounter,
    eventually,
    pg_cluster::{PgCluster, Replication},
};
use std::time::Duration;
use tokio::time::Instant;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A primary with one standby, autovacuum off on the primary (so its
/// transaction count is the service's alone), and an env whose api reads
/// from the standby with `max_lag_ms`.
async fn replicated(max_lag_ms: u64) -> anyhow::Result<(PgCluster, TestEnv)> {
    let cluster = PgCluster::start(1, Replication::Asynchronous).await?;
    cluster.sql(0, "ALTER SYSTEM SET autovacuum = off").await?;
    cluster.sql(0, "SELECT pg_reload_conf()").await?;
    let mut env = env_on(&cluster.url(0, "likes"))?;
    env.db().await?;
    let name = database_name(&env)?;
    env.settings.database.read_urls = SecretUrl::new(cluster.url(1, &name));
    env.settings.database.max_replica_lag_ms = max_lag_ms.try_into()?;
    Ok((cluster, env))
}

async fn like(api: &RunningApi, post: &str, user: &str) -> anyhow::Result<()> {
    let request = LikeRequest {
        post_id: post.into(),
        user_id: user.into(),
    };
    api.client.clone().like(request).await?;
    Ok(())
}

async fn has_liked(api: &RunningApi, post: &str, user: &str) -> Result<bool, tonic::Status> {
    let request = HasLikedRequest {
        post_id: post.into(),
        user_id: user.into(),
    };
    Ok(api
        .client
        .clone()
        .has_liked(request)
        .await?
        .into_inner()
        .liked)
}

/// Waits until HasLiked(`post`, `user`) says true.
async fn until_liked(api: &RunningApi, post: &str, user: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    eventually(Duration::from_secs(30), "the like to be read", || async {
        Ok(has_liked(api, post, user).await?.then_some(()))
    })
    .await?;
    Ok(started.elapsed())
}

/// The primary's transactions over a window, and at most how many the
/// api's replica checks (one small query on the primary each) made in it.
struct PrimaryCost {
    transactions: u64,
    checks: u64,
}

/// The cost on the primary of `reads`, between two idle points.
async fn primary_cost<F: Future<Output = anyhow::Result<()>>>(
    env: &TestEnv,
    reads: F,
) -> anyhow::Result<PrimaryCost> {
    let mut commits = CommitCounter::connect(&env.settings.database.url).await?;
    let before = commits.idle().await?;
    let started = Instant::now();
    reads.await?;
    let after = commits.idle().await?;
    let interval = likes_db::replicas::check_interval(env.settings.database.max_replica_lag());
    let checks = (started.elapsed().as_secs_f64() / interval.as_secs_f64()).ceil() as u64 + 2;
    Ok(PrimaryCost {
        transactions: after - before,
        checks,
    })
}

pub async fn a_read_storm_on_a_replica_costs_the_primary_nothing() -> anyhow::Result<()> {
    // A long bound: few checks on the primary to tell from the reads.
    let (_cluster, env) = replicated(10_000).await?;
    let api = RunningApi::spawn_with(&env.settings).await?;
    let _worker = env.spawn_worker_with(&env.settings).await?;
    for user in 0..20 {
        like(&api, "p", &format!("u{user}")).await?;
    }
    until_liked(&api, "p", "u19").await?;

    // 64 readers for 10 s: counts of posts never read before (each a
    // query) and viewer states (each a query).
    let mut clients = vec![api.client.clone()];
    for _ in 1..8 {
        clients.push(api.new_client().await?);
    }
    let storm = async {
        let until = Instant::now() + Duration::from_secs(10);
        let readers = (0..64).map(|reader| {
            let mut client = clients[reader % clients.len()].clone();
            tokio::spawn(async move {
                let mut reads = 0u64;
                while Instant::now() < until {
                    let cold = GetLikeCountRequest {
                        post_id: format!("cold-{reader}-{reads}"),
                    };
                    anyhow::ensure!(client.get_like_count(cold).await?.into_inner().count == 0);
                    let state = HasLikedRequest {
                        post_id: "p".into(),
                        user_id: format!("u{}", reads % 40),
                    };
                    let liked = client.has_liked(state).await?.into_inner().liked;
                    anyhow::ensure!(liked == (reads % 40 < 20), "a wrong viewer state");
                    reads += 2;
                }
                anyhow::Ok(reads)
            })
        });
        let mut total = 0;
        for reader in futures_util::future::join_all(readers).await {
            total += reader??;
        }
        eprintln!("the storm: {total} reads");
        anyhow::ensure!(total >= 2_000, "only {total} reads");
        Ok(())
    };
    let cost = primary_cost(&env, storm).await?;
    eprintln!(
        "primary transactions during the storm: {} (at most {} replica checks)",
        cost.transactions, cost.checks
    );
    assert!(
        cost.transactions <= cost.checks,
        "the storm reached the primary: {} transactions, {} checks",
        cost.transactions,
        cost.checks
    );
    Ok(())
}

pub async fn a_lagging_replica_is_skipped_until_it_catches_up() -> anyhow::Result<()> {
    let (cluster, env) = replicated(500).await?;
    let api = RunningApi::spawn_with(&env.settings).await?;
    let _worker = env.spawn_worker_with(&env.settings).await?;
    like(&api, "p", "before").await?;
    until_liked(&api, "p", "before").await?;

    cluster.sql(1, "SELECT pg_wal_replay_pause()").await?;
    like(&api, "p", "during").await?;
    // The replica never shows it; the primary does, once the replica is
    // skipped: past the bound, within a check or two.
    let took = until_liked(&api, "p", "during").await?;
    eprintln!("a Like was read {took:?} after its OK with the replica paused");
    assert!(took < Duration::from_secs(5), "{took:?}");

    cluster.sql(1, "SELECT pg_wal_replay_resume()").await?;
    // Caught up and checked again: reads leave the primary.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reads = async {
        for i in 0..200 {
            anyhow::ensure!(has_liked(&api, "p", "during").await?, "read {i}");
        }
        Ok(())
    };
    let cost = primary_cost(&env, reads).await?;
    assert!(
        cost.transactions <= cost.checks,
        "reads stayed on the primary: {} transactions, {} checks",
        cost.transactions,
        cost.checks
    );
    Ok(())
}

pub async fn a_stopped_replica_moves_reads_to_the_primary() -> anyhow::Result<()> {
    let (cluster, env) = replicated(1_000).await?;
    let api = RunningApi::spawn_with(&env.settings).await?;
    let _worker = env.spawn_worker_with(&env.settings).await?;
    like(&api, "p", "u1").await?;
    until_liked(&api, "p", "u1").await?;

    cluster.crash(1).await?;
    // Every read still answers, the first ones included (their replica
    // connections broke under them), and the api stays SERVING.
    let until = Instant::now() + Duration::from_secs(3);
    let mut reads = 0;
    while Instant::now() < until {
        assert!(has_liked(&api, "p", "u1").await?, "read {reads}");
        reads += 1;
    }
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", api.addr))?
        .connect()
        .await?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await?
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);
    eprintln!("{reads} reads with the replica stopped, all answered");
    Ok(())
}
