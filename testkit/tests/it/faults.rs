//! Faults in the middle of a load: each test ends by checking every
//! acknowledged like against PostgreSQL and the counter invariant.

use likes_testkit::{
    TestEnv, eventually,
    faults::close_amqp_connections,
    load::{check_exactly, like_all, pairs},
};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn broker_connections_closed_mid_load_lose_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let api = env.spawn_api().await?;
    let worker = env.spawn_worker().await?;
    let clients = vec![api.client.clone(), api.new_client().await?];
    let load = tokio::spawn(like_all_owned(clients, pairs(env.id(), 4_000, 7)));

    // Once the load is flowing, close the api's and the worker's connections.
    eventually(Duration::from_secs(30), "the first batches", || {
        let stats = worker.stats.clone();
        async move { Ok((stats.events() > 300).then_some(())) }
    })
    .await?;
    let closed = close_amqp_connections(&env.settings.amqp.queue)?;
    assert!(
        closed >= 2,
        "closed {closed} connections; expected the api's and the worker's"
    );

    let outcome = load.await??;
    assert_eq!(outcome.acknowledged.len(), 4_000);
    let pool = env.pool().await?;
    eventually(
        Duration::from_secs(60),
        "every acknowledged like to be written",
        || async {
            let mut conn = likes_db::checkout(&pool).await?;
            let written = likes_testkit::verify::stored_pairs(&mut conn).await?;
            Ok((written >= 4_000).then_some(()))
        },
    )
    .await?;
    let mut db = env.db().await?;
    check_exactly(&mut db, &outcome.acknowledged).await?;
    Ok(())
}

async fn like_all_owned(
    clients: Vec<
        likes_proto::pb::like_service_client::LikeServiceClient<tonic::transport::Channel>,
    >,
    pairs: Vec<(String, String)>,
) -> anyhow::Result<likes_testkit::load::LoadOutcome> {
    like_all(&clients, pairs, 32, Duration::from_secs(60)).await
}
