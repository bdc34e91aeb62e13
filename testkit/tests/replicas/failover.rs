//! Writes that follow a failover: `database.url` lists the primary and the
//! standby with `target_session_attrs=read-write`, the primary crashes
//! under load and the standby is promoted. With a synchronous standby no
//! Like answered OK is lost or doubled; with an asynchronous one whose
//! replication was cut, what the old primary committed meanwhile is lost,
//! and the test says how much.

use crate::env_on;
use likes_proto::pb::LikeRequest;
use likes_testkit::{
    RunningApi, TestEnv, eventually,
    load::{Steady, check_exactly, like_all, like_steadily, pairs},
    pg_cluster::{PgCluster, Replication},
    proxy::FaultProxy,
};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Both nodes in one URL: whichever is writable is written to.
fn failover_url(cluster: &PgCluster) -> String {
    format!(
        "postgres://postgres@{},{}/likes?target_session_attrs=read-write",
        cluster.addr(0),
        cluster.addr(1)
    )
}

/// Pairs stored on node `node` of `cluster`, in `env`'s database.
async fn stored_on(cluster: &PgCluster, env: &TestEnv, node: usize) -> anyhow::Result<i64> {
    let (_, name) = likes_testkit::split_database_url(env.settings.database.url.expose())?;
    let mut conn = likes_db::establish(&cluster.url(node, name), "").await?;
    likes_testkit::verify::stored_pairs(&mut conn).await
}

pub async fn a_synchronous_standby_promoted_under_load_loses_no_like() -> anyhow::Result<()> {
    let cluster = PgCluster::start(1, Replication::Synchronous).await?;
    let env = env_on(&failover_url(&cluster))?;
    let api = RunningApi::spawn_with(&env.settings).await?;
    let _worker = env.spawn_worker_with(&env.settings).await?;

    let stop = CancellationToken::new();
    let steady = Steady {
        per_second: 2_000,
        ..Steady::default()
    };
    let load = tokio::spawn(like_steadily(
        vec![api.client.clone(), api.new_client().await?],
        "failover".to_owned(),
        steady,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = stored_on(&cluster, &env, 0).await?;
    cluster.crash(0).await?;
    let crashed = Instant::now();
    cluster.promote(1).await?;
    let promoted = crashed.elapsed();
    // Writes resume on the new primary: its count grows past what it had.
    let at_promotion = stored_on(&cluster, &env, 1).await?;
    let resumed = eventually(
        Duration::from_secs(60),
        "writes on the new primary",
        || async {
            Ok((stored_on(&cluster, &env, 1).await? > at_promotion).then(|| crashed.elapsed()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.cancel();
    let outcome = load.await??;
    eprintln!(
        "failover under {:.0} likes/s: {before} pairs stored before the crash; standby promoted \
         {:.1} s after it; writes paused {:.1} s; {} answers UNAVAILABLE, {} DEADLINE_EXCEEDED \
         (each retried), longest wait for an OK {:.1} s",
        outcome.per_second(),
        promoted.as_secs_f64(),
        resumed.as_secs_f64(),
        outcome.unavailable,
        outcome.deadline_exceeded,
        outcome.longest_wait.as_secs_f64()
    );

    // Dead pooled connections are retried at once, so the pause is the
    // promotion and one reconnection, not a backoff per dead connection.
    assert!(
        resumed < Duration::from_secs(5),
        "writes paused {resumed:?}"
    );
    env.wait_for_stored_pairs(outcome.acknowledged.len(), Duration::from_secs(60))
        .await?;
    check_exactly(&mut env.db().await?, &outcome.acknowledged).await?;
    assert!(
        env.dead_letters().await?.is_empty(),
        "nothing dead-lettered"
    );
    Ok(())
}

pub async fn an_asynchronous_standby_cut_off_loses_what_it_missed() -> anyhow::Result<()> {
    let cluster = PgCluster::start(1, Replication::Asynchronous).await?;
    // The standby replicates through a proxy the test can cut.
    let proxy = FaultProxy::start(cluster.addr(0)).await?;
    cluster.replicate_from(1, proxy.addr()).await?;
    let env = env_on(&failover_url(&cluster))?;
    let api = RunningApi::spawn_with(&env.settings).await?;
    let _worker = env.spawn_worker_with(&env.settings).await?;
    let clients = [api.client.clone()];

    let replicated = pairs("replicated", 500, 5);
    like_all(&clients, replicated.clone(), 32, Duration::from_secs(30)).await?;
    env.wait_for_stored_pairs(500, Duration::from_secs(30))
        .await?;
    eventually(
        Duration::from_secs(30),
        "the standby to have them",
        || async { Ok((stored_on(&cluster, &env, 1).await? == 500).then_some(())) },
    )
    .await?;

    proxy.cut();
    let missed = pairs("missed", 500, 5);
    like_all(&clients, missed.clone(), 32, Duration::from_secs(30)).await?;
    env.wait_for_stored_pairs(1_000, Duration::from_secs(30))
        .await?;
    cluster.crash(0).await?;
    cluster.promote(1).await?;

    // Everything answered OK was committed on the old primary; the new
    // one has only what reached it before the cut.
    let kept = stored_on(&cluster, &env, 1).await?;
    let lost = 1_000 - kept;
    eprintln!(
        "asynchronous standby cut off, then a failover: {lost} of 1000 Likes answered OK are \
         lost (every one committed while it was cut off)"
    );
    assert_eq!(lost, 500, "what the standby missed is lost, and only that");
    // The service carries on with the new primary.
    let request = LikeRequest {
        post_id: "after".into(),
        user_id: "u".into(),
    };
    api.client.clone().like(request).await?;
    eventually(
        Duration::from_secs(60),
        "writes on the new primary",
        || async { Ok((stored_on(&cluster, &env, 1).await? == kept + 1).then_some(())) },
    )
    .await?;
    Ok(())
}
