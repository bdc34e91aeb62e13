//! Reads while PostgreSQL is unreachable: answered UNAVAILABLE at once
//! (the pool's circuit), not after the pool's connect timeout each, and
//! served again once the database is back.

use likes_proto::pb::GetLikeCountRequest;
use likes_testkit::{RunningApi, TestEnv, eventually, proxy::FaultProxy};
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn reads_during_a_database_outage_are_answered_within_a_second_and_recover()
-> anyhow::Result<()> {
    let env = TestEnv::new();
    env.db().await?;
    let proxy = FaultProxy::start("127.0.0.1:5432".parse()?).await?;
    let settings = env.settings_with_database_at(proxy.addr())?;
    assert_eq!(settings.database.connect_timeout_ms, 5_000, "the default");
    let api = RunningApi::spawn_with(&settings).await?;
    let mut client = api.client.clone();
    let read = GetLikeCountRequest {
        post_id: "p".into(),
    };
    client.get_like_count(read.clone()).await?;

    proxy.cut();
    for i in 0..8 {
        let started = Instant::now();
        let status = client
            .get_like_count(read.clone())
            .await
            .expect_err("the database is unreachable");
        let took = started.elapsed();
        assert_eq!(status.code(), Code::Unavailable, "read {i}: {status:?}");
        assert!(took < Duration::from_secs(1), "read {i} took {took:?}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    proxy.restore();
    let started = Instant::now();
    eventually(Duration::from_secs(5), "reads to succeed again", || {
        let mut client = client.clone();
        let read = read.clone();
        async move { Ok(client.get_like_count(read).await.ok()) }
    })
    .await?;
    let recovered = started.elapsed();
    assert!(
        recovered < Duration::from_secs(2),
        "recovered after {recovered:?}"
    );
    Ok(())
}
