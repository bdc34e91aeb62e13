//! Shards on the cluster: quorum shard queues spread their leaders over the
//! nodes (`x-queue-leader-locator: balanced`), and four shards with two
//! workers carry a hot post and many others exactly.

use likes_common::config::{QueueType, SecretUrl};
use likes_testkit::{
    TestEnv,
    cluster::Cluster,
    load::{check_exactly, like_all},
};
use std::{collections::BTreeMap, time::Duration};

pub async fn four_quorum_shards(cluster: &mut Cluster) -> anyhow::Result<()> {
    const LIKES: usize = 20_000;
    cluster.heal().await?;
    let mut env = TestEnv::new();
    env.settings.amqp.url = SecretUrl::new(cluster.urls());
    env.settings.amqp.queue_type = QueueType::Quorum;
    env.settings.amqp.shards = 4;
    let api = env.spawn_api().await?;
    let first = env.spawn_worker().await?;
    let second = env.spawn_worker().await?;

    let mut leaders = BTreeMap::new();
    for queue in likes_queue::event_queues(&env.settings.amqp) {
        let leader = cluster
            .queue_leader(&queue)
            .await?
            .map(|node| cluster.name(node).to_owned());
        leaders.insert(queue, leader);
    }
    eprintln!("shard leaders: {leaders:#?}");
    let mut nodes: Vec<_> = leaders.values().flatten().collect();
    nodes.sort_unstable();
    nodes.dedup();
    anyhow::ensure!(
        leaders.values().all(Option::is_some) && nodes.len() >= 2,
        "all four shard leaders on one node (or missing), though every \
         declare went through the first node: {leaders:?}"
    );

    let pairs: Vec<(String, String)> = (0..LIKES)
        .map(|i| {
            let post = if i % 2 == 0 {
                "hot".to_owned()
            } else {
                format!("post-{}", i % 300)
            };
            (post, format!("user-{i}"))
        })
        .collect();
    let clients = vec![api.client.clone(), api.new_client().await?];
    let outcome = like_all(&clients, pairs, 128, Duration::from_secs(60)).await?;
    anyhow::ensure!(outcome.acknowledged.len() == LIKES);
    env.wait_for_stored_pairs(LIKES, Duration::from_secs(120))
        .await?;
    let mut db = env.db().await?;
    check_exactly(&mut db, &outcome.acknowledged).await?;
    let written = first.stats.events() + second.stats.events();
    anyhow::ensure!(written == LIKES as u64, "{written} events written");
    anyhow::ensure!(first.stats.dead_lettered() + second.stats.dead_lettered() == 0);
    eprintln!(
        "20,000 likes over four quorum shards: worker 1 wrote {}, worker 2 wrote {}",
        first.stats.events(),
        second.stats.events()
    );
    Ok(())
}
