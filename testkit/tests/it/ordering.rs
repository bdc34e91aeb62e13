use crate::event;
use likes_proto::events::like_event::Action;
use likes_testkit::{TestEnv, eventually, verify};
use std::time::Duration;

/// Waits until an event for the pair has been written.
async fn wait_for_pair(pool: &likes_db::PgPool, post: &str, user: &str) -> anyhow::Result<()> {
    eventually(
        Duration::from_secs(10),
        &format!("{post}/{user} to be written"),
        || async {
            let mut conn = likes_db::checkout(pool).await?;
            Ok(verify::stored_state(&mut conn, post, user)
                .await?
                .map(|_| ()))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_older_like_written_after_a_newer_unlike_stays_unliked() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let (_conn, channel) = env.amqp().await?;
    let _worker = env.spawn_worker().await?;
    let mut db = env.db().await?;
    let pool = env.pool().await?;

    // The user liked at t=1000 and unliked at t=2000, but the Like was
    // requeued and reaches the database after the Unlike.
    env.publish_event(&channel, &event("p", "u", Action::Unlike, 2_000))
        .await?;
    wait_for_pair(&pool, "p", "u").await?;
    env.publish_event(&channel, &event("p", "u", Action::Like, 1_000))
        .await?;
    env.publish_event(&channel, &event("sentinel", "u", Action::Like, 3_000))
        .await?;
    wait_for_pair(&pool, "sentinel", "u").await?;

    assert_eq!(verify::stored_state(&mut db, "p", "u").await?, Some(false));
    assert_eq!(verify::stored_count(&mut db, "p").await?, 0);
    assert_eq!(verify::counter_mismatches(&mut db).await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_with_several_events_for_one_pair_applies_the_last() -> anyhow::Result<()> {
    let mut env = TestEnv::new();
    env.settings.worker.batch_size = 100.try_into()?;
    env.settings.worker.batch_max_wait_ms = 1_000;
    let (_conn, channel) = env.amqp().await?;
    // Queued before the worker starts, so they arrive as one batch.
    let events = [
        event("p", "u1", Action::Like, 10),
        event("p", "u1", Action::Unlike, 20),
        event("p", "u1", Action::Like, 30),
        event("p", "u2", Action::Like, 10),
        event("p", "u2", Action::Unlike, 20),
        // Out of order within the batch: the Unlike at 50 is the last word.
        event("p", "u3", Action::Unlike, 50),
        event("p", "u3", Action::Like, 40),
        // Exact duplicates of one event (a redelivery inside one batch).
        event("q", "u1", Action::Like, 10),
    ];
    for e in &events {
        env.publish_event(&channel, e).await?;
    }
    env.publish_event(&channel, &events[7]).await?;

    let worker = env.spawn_worker().await?;
    let mut db = env.db().await?;
    eventually(Duration::from_secs(10), "the batch to be written", || {
        let stats = worker.stats.clone();
        async move { Ok((stats.events() == 9).then_some(())) }
    })
    .await?;

    assert_eq!(worker.stats.batches(), 1, "all events in one batch");
    assert_eq!(verify::stored_state(&mut db, "p", "u1").await?, Some(true));
    assert_eq!(verify::stored_state(&mut db, "p", "u2").await?, Some(false));
    assert_eq!(verify::stored_state(&mut db, "p", "u3").await?, Some(false));
    assert_eq!(verify::stored_count(&mut db, "p").await?, 1);
    assert_eq!(verify::stored_count(&mut db, "q").await?, 1);
    assert_eq!(verify::counter_mismatches(&mut db).await?, 0);
    Ok(())
}
