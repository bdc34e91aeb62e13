//! Shards: more than one event queue, routed by post id.

use likes_testkit::{
    TestEnv, eventually,
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
        eventually(Duration::from_secs(10), "every shard drained", || async {
            Ok((env.queue_depth(queue).await? == 0).then_some(()))
        })
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
async fn a_changed_number_of_shards_is_refused_until_the_old_queues_are_gone() -> anyhow::Result<()>
{
    let mut env = TestEnv::new();
    // Declares the one-shard layout: queue `<queue>`.
    let (connection, _channel) = env.amqp().await?;
    let mut four = env.settings.amqp.clone();
    four.shards = 4;
    let refused = likes_queue::declare_topology(&connection, &four)
        .await
        .expect_err("an unsharded queue exists");
    let message = refused.to_string();
    assert!(message.contains(&env.settings.amqp.queue), "{message}");
    assert!(message.contains("drain-and-switch"), "{message}");
    // The api refuses to start on it, saying so.
    let mut sharded = env.settings.clone();
    sharded.amqp.shards = 4;
    let error = likes_testkit::RunningApi::spawn_with(&sharded)
        .await
        .expect_err("the api must not start on another layout");
    assert!(
        format!("{error:#}").contains("drain-and-switch"),
        "{error:#}"
    );

    // Drained and deleted, the new layout is declared.
    let channel = connection.create_channel().await?;
    likes_queue::delete_topology(&channel, &env.settings.amqp).await?;
    likes_queue::declare_topology(&connection, &four).await?;
    // Going back from four to two finds `<queue>.2`.
    let mut two = four.clone();
    two.shards = 2;
    let refused = likes_queue::declare_topology(&connection, &two)
        .await
        .expect_err("a fourth-shard queue exists");
    assert!(
        refused
            .to_string()
            .contains(&format!("{}.2", env.settings.amqp.queue))
    );
    // So the env's cleanup removes the four shard queues.
    env.settings.amqp.shards = 4;
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}
