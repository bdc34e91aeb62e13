use futures_util::{StreamExt, stream};
use likes_proto::pb::{
    GetLikeCountRequest, GetLikeCountsRequest, HasLikedRequest, LikeRequest, UnlikeRequest,
};
use likes_testkit::{TestEnv, eventually, verify};
use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread")]
async fn a_like_is_stored_counted_and_reported() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let api = env.spawn_api().await?;
    let _worker = env.spawn_worker().await?;
    let mut client = api.client.clone();

    let reply = client
        .like(LikeRequest {
            post_id: "p1".into(),
            user_id: "u1".into(),
        })
        .await?
        .into_inner();
    assert_eq!(uuid::Uuid::parse_str(&reply.event_id)?.get_version_num(), 7);

    let count = eventually(Duration::from_secs(5), "the like to be counted", || {
        let mut client = client.clone();
        async move {
            let count = client
                .get_like_count(GetLikeCountRequest {
                    post_id: "p1".into(),
                })
                .await?
                .into_inner()
                .count;
            Ok((count == 1).then_some(count))
        }
    })
    .await?;
    assert_eq!(count, 1);
    let liked = client
        .has_liked(HasLikedRequest {
            post_id: "p1".into(),
            user_id: "u1".into(),
        })
        .await?
        .into_inner()
        .liked;
    assert!(liked);
    let mut db = env.db().await?;
    assert_eq!(verify::stored_state(&mut db, "p1", "u1").await?, Some(true));
    assert_eq!(verify::counter_mismatches(&mut db).await?, 0);

    let never = client
        .get_like_count(GetLikeCountRequest {
            post_id: "never-liked".into(),
        })
        .await?
        .into_inner();
    assert_eq!(never.count, 0);
    assert_eq!(never.post_id, "never-liked");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_likes_with_duplicates_are_counted_exactly_in_few_transactions()
-> anyhow::Result<()> {
    const LIKES: usize = 10_000;
    const POSTS: usize = 5;
    let env = TestEnv::new();
    let api = env.spawn_api().await?;
    let worker = env.spawn_worker().await?;

    // Every 7th request repeats an earlier (post, user) pair.
    let requests: Vec<(String, String)> = (0..LIKES)
        .map(|i| {
            let n = if i % 7 == 6 { i - 3 } else { i };
            (format!("post-{}", n % POSTS), format!("user-{n}"))
        })
        .collect();
    let mut expected: HashMap<String, i64> = HashMap::new();
    for pair in requests.iter().collect::<HashSet<_>>() {
        *expected.entry(pair.0.clone()).or_default() += 1;
    }

    let clients = [
        api.client.clone(),
        api.new_client().await?,
        api.new_client().await?,
        api.new_client().await?,
    ];
    let results: Vec<_> = stream::iter(requests.into_iter().enumerate())
        .map(|(i, (post_id, user_id))| {
            let mut client = clients[i % clients.len()].clone();
            async move { client.like(LikeRequest { post_id, user_id }).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for result in results {
        result?;
    }

    let post_ids: Vec<String> = (0..POSTS).map(|p| format!("post-{p}")).collect();
    let mut client = api.client.clone();
    let counts = eventually(Duration::from_secs(60), "all likes to be counted", || {
        let mut client = client.clone();
        let post_ids = post_ids.clone();
        let expected = expected.clone();
        async move {
            let counts = client
                .get_like_counts(GetLikeCountsRequest { post_ids })
                .await?
                .into_inner()
                .counts;
            Ok((counts.values().sum::<i64>() == expected.values().sum::<i64>()).then_some(counts))
        }
    })
    .await?;
    assert_eq!(counts.into_iter().collect::<HashMap<_, _>>(), expected);

    let mut db = env.db().await?;
    assert_eq!(verify::counter_mismatches(&mut db).await?, 0);
    assert_eq!(
        verify::stored_pairs(&mut db).await?,
        expected.values().sum::<i64>()
    );
    let batches = worker.stats.batches();
    assert_eq!(
        worker.stats.events(),
        LIKES as u64,
        "every event written once"
    );
    assert!(
        batches <= (LIKES / 50) as u64,
        "{batches} transactions for {LIKES} likes; at most {} allowed",
        LIKES / 50
    );
    // Still exact after more reads: nothing is counted twice on redelivery.
    let again = client
        .get_like_count(GetLikeCountRequest {
            post_id: "post-0".into(),
        })
        .await?
        .into_inner()
        .count;
    assert_eq!(again, expected["post-0"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unlike_after_like_leaves_post_unliked_and_count_down() -> anyhow::Result<()> {
    let env = TestEnv::new();
    let api = env.spawn_api().await?;
    let _worker = env.spawn_worker().await?;
    let mut client = api.client.clone();
    for user in ["a", "b"] {
        client
            .like(LikeRequest {
                post_id: "p".into(),
                user_id: user.into(),
            })
            .await?;
    }
    wait_for_count(&api, "p", 2).await?;
    client
        .unlike(UnlikeRequest {
            post_id: "p".into(),
            user_id: "a".into(),
        })
        .await?;
    wait_for_count(&api, "p", 1).await?;
    let liked = client
        .has_liked(HasLikedRequest {
            post_id: "p".into(),
            user_id: "a".into(),
        })
        .await?
        .into_inner()
        .liked;
    assert!(!liked);
    // Unliking again, or unliking a pair never liked, changes nothing.
    client
        .unlike(UnlikeRequest {
            post_id: "p".into(),
            user_id: "a".into(),
        })
        .await?;
    client
        .unlike(UnlikeRequest {
            post_id: "p".into(),
            user_id: "never".into(),
        })
        .await?;
    client
        .like(LikeRequest {
            post_id: "sentinel".into(),
            user_id: "a".into(),
        })
        .await?;
    wait_for_count(&api, "sentinel", 1).await?;
    let mut db = env.db().await?;
    assert_eq!(verify::stored_count(&mut db, "p").await?, 1);
    assert_eq!(verify::counter_mismatches(&mut db).await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lone_like_is_written_within_the_batch_wait() -> anyhow::Result<()> {
    let mut env = TestEnv::new();
    env.settings.worker.batch_max_wait_ms = 200;
    let api = env.spawn_api().await?;
    let _worker = env.spawn_worker().await?;
    let mut db = env.db().await?;
    let mut client = api.client.clone();
    // Warm up connections so the measurement is the batcher's wait.
    client
        .like(LikeRequest {
            post_id: "warm".into(),
            user_id: "u".into(),
        })
        .await?;
    wait_for_count(&api, "warm", 1).await?;

    let started = Instant::now();
    client
        .like(LikeRequest {
            post_id: "lone".into(),
            user_id: "u".into(),
        })
        .await?;
    loop {
        if verify::stored_state(&mut db, "lone", "u").await? == Some(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let waited = started.elapsed();
    // batch_max_wait (200 ms) plus a margin for a loaded machine; a batcher
    // that waited for a full batch of 500 would never write it.
    assert!(
        waited < Duration::from_millis(200 + 800),
        "written after {waited:?}"
    );
    Ok(())
}

pub async fn wait_for_count(
    api: &likes_testkit::RunningApi,
    post: &str,
    want: i64,
) -> anyhow::Result<()> {
    eventually(
        Duration::from_secs(10),
        &format!("{post} to reach count {want}"),
        || {
            let mut client = api.client.clone();
            let post_id = post.to_owned();
            async move {
                let count = client
                    .get_like_count(GetLikeCountRequest { post_id })
                    .await?
                    .into_inner()
                    .count;
                Ok((count == want).then_some(()))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn likes_flow_through_classic_and_quorum_queues_alike() -> anyhow::Result<()> {
    use likes_common::config::QueueType;
    for queue_type in [QueueType::Classic, QueueType::Quorum] {
        let mut env = TestEnv::new();
        env.settings.amqp.queue_type = queue_type;
        let api = env.spawn_api().await?;
        let _worker = env.spawn_worker().await?;
        let label = queue_type.as_str();
        let outcome = likes_testkit::load::like_all(
            std::slice::from_ref(&api.client),
            likes_testkit::load::pairs(label, 500, 4),
            16,
            Duration::from_secs(10),
        )
        .await?;
        wait_for_count(&api, "post-0", 125).await?;
        for post in ["post-1", "post-2", "post-3"] {
            wait_for_count(&api, post, 125).await?;
        }
        let mut db = env.db().await?;
        likes_testkit::load::check_exactly(&mut db, &outcome.acknowledged).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn classic_queues_are_declared_with_storage_version_2() -> anyhow::Result<()> {
    use lapin::{
        options::QueueDeclareOptions,
        types::{AMQPValue, FieldTable},
    };
    let env = TestEnv::new();
    // Declares the queues, as version 2.
    let (connection, channel) = env.amqp().await?;
    let mut version_1 = FieldTable::default();
    version_1.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    version_1.insert("x-queue-version".into(), AMQPValue::LongInt(1));
    let refused = channel
        .queue_declare(
            env.settings.amqp.dead_letter_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            version_1,
        )
        .await
        .expect_err("RabbitMQ refuses to redeclare a version 2 queue as version 1");
    assert!(refused.to_string().contains("x-queue-version"), "{refused}");
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// Tracing is off by default: no pipeline starts without an OTLP endpoint
/// (and this binary installs none), and the api's messages carry no trace
/// context, no headers at all.
#[tokio::test(flavor = "multi_thread")]
async fn without_an_otlp_endpoint_nothing_is_traced_and_messages_carry_no_headers()
-> anyhow::Result<()> {
    use likes_service::telemetry::otel;
    let env = TestEnv::new();
    assert!(env.settings.telemetry.otlp_endpoint.is_empty());
    let traces = otel::Traces::start(&env.settings.telemetry, "likes-api", 1.0)?;
    assert!(traces.is_none(), "nothing to export to");
    assert!(!otel::enabled());
    let api = env.spawn_api().await?;
    let clients = [api.client.clone()];
    for answer in likes_testkit::load::likes_at_once(&clients, "p-untraced", 50).await {
        answer?;
    }
    let mut messages = 0;
    for message in env.take_messages(&env.settings.amqp.queue).await? {
        assert_eq!(message.properties.headers(), &None, "message {messages}");
        messages += 1;
    }
    assert_eq!(messages, api.publish_stats.messages());
    Ok(())
}
