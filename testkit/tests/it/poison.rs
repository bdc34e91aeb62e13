use crate::event;
use diesel_async::RunQueryDsl;
use likes_proto::events::like_event::Action;
use likes_testkit::{TestEnv, verify};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn garbage_goes_to_the_dead_letter_queue_and_likes_around_it_are_written()
-> anyhow::Result<()> {
    let env = TestEnv::new();
    let (_conn, channel) = env.amqp().await?;
    // Queued before the worker starts so good and bad share batches.
    env.publish_event(&channel, &event("p", "before", Action::Like, 1))
        .await?;
    env.publish_raw(&channel, b"\xde\xad\xbe\xef not protobuf")
        .await?;
    env.publish_event(&channel, &event("p", "between", Action::Like, 2))
        .await?;
    // Decodes, but breaks the id rules the api enforces.
    env.publish_event(&channel, &event("", "nobody", Action::Like, 3))
        .await?;
    env.publish_event(&channel, &event("p", "after", Action::Like, 4))
        .await?;

    let worker = env.spawn_worker().await?;
    let mut db = env.db().await?;
    let dead = &env.settings.amqp.dead_letter_queue;
    env.wait_for_queue_depth(dead, 2, Duration::from_secs(10))
        .await?;
    env.wait_for_count("p", 3, Duration::from_secs(10)).await?;
    assert_eq!(worker.stats.dead_lettered(), 2);
    assert_eq!(
        env.queue_depth(&env.settings.amqp.queue).await?,
        0,
        "nothing left behind"
    );
    assert_eq!(verify::counter_mismatches(&mut db).await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_the_database_always_refuses_is_isolated_and_dead_lettered_with_its_reason()
-> anyhow::Result<()> {
    let mut env = TestEnv::new();
    env.settings.worker.batch_size = 100.try_into()?;
    env.settings.worker.batch_max_wait_ms = 500;
    let mut db = env.db().await?;
    // Stands for any row the database refuses every time.
    diesel::sql_query("ALTER TABLE likes ADD CONSTRAINT refuse_poison CHECK (user_id <> 'poison')")
        .execute(&mut db)
        .await?;
    let (_conn, channel) = env.amqp().await?;
    for i in 0..20 {
        env.publish_event(&channel, &event("p", &format!("u{i}"), Action::Like, i))
            .await?;
        if i == 7 {
            env.publish_event(&channel, &event("p", "poison", Action::Like, 100))
                .await?;
        }
    }

    let letters = crate::worker_sets_one_poison_aside(&env, &mut db, 20).await?;
    let reason = letters[0].reason.clone().unwrap_or_default();
    assert!(
        reason.contains("refuse_poison"),
        "reason header: {reason:?}"
    );
    Ok(())
}
