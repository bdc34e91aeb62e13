//! Shards: more than one event queue, routed by post id.

use crate::event;
use likes_proto::events::like_event::Action;
use likes_testkit::{
    TestEnv,
    load::{check_exactly, like_all},
};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn with_four_shards_every_shard_carries_likes_and_two_workers_count_them_exactly()
-> anyhow::Result<()> {
    const LIKES: usize = 20_000;
    let mut env = TestEnv::new();
    env.settings.amqp.shards = 4;
    let api = env.spawn_api().await?;
    // Half the likes on one hot post, the rest over 200 posts.
    let pairs: Vec<(String, String)> = (0..LIKES)
        .map(|i| {
            let post = if i % 2 == 0 {
                "hot".to_owned()
            } else {
                format!("post-{}", i % 200)
            };
            (post, format!("user-{i}"))
        })
        .collect();
    let clients = vec![api.client.clone(), api.new_client().await?];
    // No worker yet: the likes wait in their shards' queues.
    let outcome = like_all(&clients, pairs, 128, Duration::from_secs(30)).await?;
    assert_eq!(outcome.acknowledged.len(), LIKES);
    let queues = likes_queue::event_queues(&env.settings.amqp);
    assert_eq!(queues.len(), 4);
    let hot_queue = likes_queue::shard_queue(&env.settings.amqp, likes_queue::shard_of("hot", 4));
    let mut depths = Vec::new();
    for queue in &queues {
        depths.push(env.queue_depth(queue).await?);
    }
    eprintln!("messages per shard {queues:?}: {depths:?} (hot post in {hot_queue})");
    assert!(
        depths.iter().all(|&d| d > 0),
        "every shard used: {depths:?}"
    );

    let first = env.spawn_worker().await?;
    let second = env.spawn_worker().await?;
    env.wait_for_stored_pairs(LIKES, Duration::from_secs(60))
        .await?;
    let mut db = env.db().await?;
    check_exactly(&mut db, &outcome.acknowledged).await?;
    for queue in &queues {
        env.wait_for_queue_depth(queue, 0, Duration::from_secs(10))
            .await?;
    }
    let events = first.stats.events() + second.stats.events();
    assert_eq!(events, LIKES as u64, "each like written once");
    assert_eq!(
        first.stats.dead_lettered() + second.stats.dead_lettered(),
        0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_number_of_shards_is_refused_while_the_old_queues_hold_likes()
-> anyhow::Result<()> {
    let mut env = TestEnv::new();
    // The one-shard layout, with a like waiting in `<queue>`.
    let (connection, channel) = env.amqp().await?;
    env.publish_event(&channel, &event("p", "u", Action::Like, 1))
        .await?;
    let mut four = env.settings.amqp.clone();
    four.shards = 4;
    let refused = likes_queue::declare_topology(&connection, &four)
        .await
        .expect_err("the unsharded queue holds a like");
    let message = refused.to_string();
    assert!(message.contains(&env.settings.amqp.queue), "{message}");
    assert!(message.contains("drain-and-switch"), "{message}");
    // The api refuses to start on it, saying so, and so does the worker.
    let mut sharded = env.settings.clone();
    sharded.amqp.shards = 4;
    let error = likes_testkit::RunningApi::spawn_with(&sharded)
        .await
        .expect_err("the api must not start on another layout");
    assert!(
        format!("{error:#}").contains("drain-and-switch"),
        "{error:#}"
    );
    let worker = env.spawn_worker_with(&sharded).await?;
    let ended = tokio::time::timeout(Duration::from_secs(10), worker.ended())
        .await?
        .expect_err("the worker must stop on another layout");
    assert!(
        format!("{ended:#}").contains("drain-and-switch"),
        "{ended:#}"
    );

    // Drained by a worker of the old layout, the switch goes through and
    // the empty old queue is gone.
    let old_worker = env.spawn_worker().await?;
    env.wait_for_stored_pairs(1, Duration::from_secs(10))
        .await?;
    old_worker.stop().await?;
    likes_queue::declare_topology(&connection, &four).await?;
    assert!(
        env.queue_depth(&env.settings.amqp.queue).await.is_err(),
        "deleted"
    );
    // Going from four back to two finds a like in `<queue>.2`.
    env.settings.amqp.shards = 4;
    let third = likes_queue::shard_queue(&four, 2);
    let waiting = event("p", "v", Action::Like, 2);
    likes_queue::publish_confirmed(
        &channel,
        &third,
        &prost::Message::encode_to_vec(&waiting),
        likes_queue::codec::event_properties(&waiting.event_id),
    )
    .await?;
    let mut two = four.clone();
    two.shards = 2;
    let refused = likes_queue::declare_topology(&connection, &two)
        .await
        .expect_err("a like waits in the third shard");
    assert!(refused.to_string().contains(&third), "{refused}");
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}
