//! The adaptive batch size end to end: the target moves from batch to
//! batch, and every like must still be written exactly once.

use likes_common::config::BatchMode;
use likes_testkit::{
    TestEnv, eventually,
    load::{check_exactly, like_all, pairs},
};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn adaptive_batches_write_five_thousand_likes_exactly_once() -> anyhow::Result<()> {
    const LIKES: usize = 5_000;
    const MIN: usize = 10;
    const MAX: usize = 1_000;
    let mut env = TestEnv::new();
    env.settings.worker.batch_mode = BatchMode::Adaptive;
    env.settings.worker.batch_min_size = MIN;
    env.settings.worker.batch_size = MAX;
    env.settings.validate()?;
    let api = env.spawn_api().await?;
    let worker = env.spawn_worker().await?;
    let clients = [
        api.client.clone(),
        api.new_client().await?,
        api.new_client().await?,
        api.new_client().await?,
    ];

    let outcome = like_all(
        &clients,
        pairs("adaptive", LIKES, 7),
        64,
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(outcome.acknowledged.len(), LIKES);
    eventually(
        Duration::from_secs(60),
        "every like to be committed",
        || async { Ok((worker.stats.events() >= LIKES as u64).then_some(())) },
    )
    .await?;

    let mut db = env.db().await?;
    check_exactly(&mut db, &outcome.acknowledged).await?;
    let stats = &worker.stats;
    assert_eq!(stats.requeued_batches(), 0);
    assert_eq!(stats.dead_lettered(), 0);
    assert!(
        (MIN as u64..=MAX as u64).contains(&stats.batch_target()),
        "target {} out of bounds",
        stats.batch_target()
    );
    // Under this load the batches fill, so the target must have grown from
    // the minimum: a mean above it shows the sizes did change.
    let mean = stats.events() as f64 / stats.batches() as f64;
    assert!(
        mean > MIN as f64,
        "{} events in {} batches: the target never grew",
        stats.events(),
        stats.batches()
    );
    assert_eq!(
        env.queue_depth(&env.settings.amqp.queue).await?,
        0,
        "all acked, none left"
    );
    worker.stop().await?;
    Ok(())
}
