//! Faults in the middle of a load: each test ends by checking every
//! acknowledged like against PostgreSQL and the counter invariant.

use likes_common::config::{QueueType, SecretUrl};
use likes_proto::pb::LikeRequest;
use likes_testkit::{
    TestEnv, eventually,
    faults::{RefusedPublishes, amqp_connections, close_amqp_connections},
    load::{check_exactly, like_all, pairs, timed_likes},
    proxy::FaultProxy,
};
use std::time::Duration;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

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

#[tokio::test(flavor = "multi_thread")]
async fn a_thirty_second_database_outage_loses_nothing_and_dead_letters_nothing()
-> anyhow::Result<()> {
    let mut env = TestEnv::new();
    // A quorum queue dead-letters a message on its 21st delivery: an outage
    // handled by nack-and-requeue (a redelivery every few milliseconds)
    // would use that up in a second and dead-letter healthy likes.
    env.settings.amqp.queue_type = QueueType::Quorum;
    let api = env.spawn_api().await?;
    let proxy = FaultProxy::start("127.0.0.1:5432".parse()?).await?;
    let worker_settings = env.settings_with_database_at(proxy.addr())?;
    let worker = env.spawn_worker_with(&worker_settings).await?;

    let clients = vec![api.client.clone(), api.new_client().await?];
    let first = like_all(
        &clients,
        pairs("before", 500, 5),
        16,
        Duration::from_secs(10),
    )
    .await?;
    eventually(
        Duration::from_secs(30),
        "the first likes to be written",
        || {
            let stats = worker.stats.clone();
            async move { Ok((stats.events() >= 500).then_some(())) }
        },
    )
    .await?;

    proxy.cut();
    let outage_started = tokio::time::Instant::now();
    // Likes keep being accepted while the database is away.
    let during = like_all(
        &clients,
        pairs("during", 1_500, 5),
        16,
        Duration::from_secs(10),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(outage_started.elapsed())).await;
    assert_eq!(
        worker.stats.events(),
        500,
        "nothing can be written during the outage"
    );
    proxy.restore();

    let mut acknowledged = first.acknowledged;
    acknowledged.extend(during.acknowledged);
    env.wait_for_stored_pairs(2_000, Duration::from_secs(60))
        .await?;
    let mut db = env.db().await?;
    check_exactly(&mut db, &acknowledged).await?;
    assert_eq!(
        env.queue_depth(&env.settings.amqp.dead_letter_queue)
            .await?,
        0,
        "nothing dead-lettered"
    );
    assert_eq!(worker.stats.dead_lettered(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_that_stops_answering_holds_a_batch_no_longer_than_the_retry_budget()
-> anyhow::Result<()> {
    let mut env = TestEnv::new();
    env.settings.worker.retry_budget_ms = 2_000;
    let api = env.spawn_api().await?;
    let proxy = FaultProxy::start("127.0.0.1:5432".parse()?).await?;
    let worker = env
        .spawn_worker_with(&env.settings_with_database_at(proxy.addr())?)
        .await?;
    like(&api, "before", None).await?;
    env.wait_for_count("p", 1, Duration::from_secs(20)).await?;

    // PostgreSQL takes the statement and never answers (bytes held, the
    // connection open): the batch goes back to the queue once the retry
    // budget is spent, instead of waiting for an answer forever.
    proxy.stall();
    like(&api, "stalled", None).await?;
    let started = tokio::time::Instant::now();
    eventually(Duration::from_secs(10), "the batch handed back", || {
        let stats = worker.stats.clone();
        async move { Ok((stats.requeued_batches() >= 1).then_some(())) }
    })
    .await?;
    let held = started.elapsed();
    assert!(
        held < Duration::from_millis(3_500),
        "held the batch {held:?} with a 2 s retry budget"
    );

    proxy.restore();
    env.wait_for_count("p", 2, Duration::from_secs(30)).await?;
    let mut db = env.db().await?;
    let acknowledged =
        [("p", "before"), ("p", "stalled")].map(|(p, u)| (p.to_owned(), u.to_owned()));
    check_exactly(&mut db, &acknowledged).await?;
    Ok(())
}

/// An env whose api reaches RabbitMQ through a fault proxy.
async fn api_behind_proxy(
    confirm_timeout_ms: u64,
) -> anyhow::Result<(TestEnv, FaultProxy, likes_testkit::RunningApi)> {
    let mut env = TestEnv::new();
    env.settings.api.confirm_timeout_ms = confirm_timeout_ms;
    let proxy = FaultProxy::start("127.0.0.1:5672".parse()?).await?;
    let api_settings = env.settings_with_broker_at(proxy.addr());
    let api = likes_testkit::RunningApi::spawn_with(&api_settings).await?;
    Ok((env, proxy, api))
}

async fn like(
    api: &likes_testkit::RunningApi,
    user: &str,
    timeout: Option<Duration>,
) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(LikeRequest {
        post_id: "p".into(),
        user_id: user.into(),
    });
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    api.client.clone().like(request).await.map(|_| ())
}

async fn health(api: &likes_testkit::RunningApi) -> anyhow::Result<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", api.addr))?
        .connect()
        .await?;
    let mut client = HealthClient::new(channel);
    let reply = client
        .check(HealthCheckRequest {
            service: "likes.v1.LikeService".into(),
        })
        .await?;
    Ok(reply.into_inner().status())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_stops_confirming_answers_every_caller_within_the_confirm_timeout()
-> anyhow::Result<()> {
    let (env, proxy, api) = api_behind_proxy(1_500).await?;
    like(&api, "before", None).await?;

    // The broker stops answering without blocking anyone: no confirm comes
    // back. 64 callers keep calling for 4 s: each call waits at most the
    // confirm timeout from its own start, whatever was unconfirmed ahead
    // of it (before, a call waited behind the stalled message first).
    proxy.stall();
    let answers = timed_likes(
        &api.client,
        "stalled",
        "p",
        64,
        Duration::from_secs(4),
        Duration::from_secs(10),
    )
    .await;
    let slowest = answers.iter().map(|a| a.took).max().unwrap_or_default();
    assert!(answers.len() >= 64, "{} answers", answers.len());
    for answer in &answers {
        let status = answer.answer.as_ref().expect_err("no confirm, no OK");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    assert!(
        slowest <= Duration::from_millis(2_000),
        "a caller waited {slowest:?} with a 1.5 s confirm timeout"
    );

    // A caller's own, shorter deadline is honoured too.
    let started = tokio::time::Instant::now();
    let status = like(&api, "deadline", Some(Duration::from_millis(200)))
        .await
        .expect_err("no confirm within the deadline");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );

    proxy.restore();
    eventually(Duration::from_secs(15), "Like to succeed again", || async {
        Ok(like(&api, "after", None).await.ok())
    })
    .await?;
    drop(env);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_refuses_messages_gets_unavailable_and_a_new_connection() -> anyhow::Result<()>
{
    let env = TestEnv::new();
    let api = env.spawn_api().await?;
    like(&api, "before", None).await?;
    let name = format!("likes-api {}", env.settings.amqp.queue);
    let first = amqp_connections(&name)?;
    assert_eq!(first.len(), 1, "the api's one connection: {first:?}");

    // The queue refuses every message: each caller gets UNAVAILABLE, none
    // OK, and the api replaces the connection the refusals came on (after
    // a quorum queue's leader is lost, RabbitMQ 3.10 can go on refusing a
    // channel's publishes for seconds while a new channel is served).
    let refused = RefusedPublishes::on(&env.settings.amqp.queue)?;
    let status = eventually(Duration::from_secs(10), "a refused Like", || async {
        Ok(like(&api, "refused", None).await.err())
    })
    .await?;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("refused"), "{status:?}");
    for i in 0..20 {
        let status = like(&api, &format!("refused-{i}"), None)
            .await
            .expect_err("a refused message is never OK");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    let replaced = eventually(Duration::from_secs(10), "a new api connection", || async {
        let now = amqp_connections(&name)?;
        Ok((now.len() == 1 && now != first).then_some(now))
    })
    .await?;
    // Refusals go on while the policy stands, and cost at most one
    // reconnection a second, not one per message.
    let window = tokio::time::Instant::now();
    let mut refusals = 0;
    while window.elapsed() < Duration::from_secs(2) {
        if like(&api, &format!("still-refused-{refusals}"), None)
            .await
            .is_err()
        {
            refusals += 1;
        }
    }
    assert!(refusals >= 10, "{refusals} refusals in 2 s");
    let reconnects = amqp_connections(&name)?;
    assert!(
        reconnects.len() == 1,
        "one connection at a time: {reconnects:?}"
    );

    drop(refused);
    eventually(Duration::from_secs(10), "Like to succeed again", || async {
        Ok(like(&api, "after", None).await.ok())
    })
    .await?;
    assert_ne!(amqp_connections(&name)?, first, "{replaced:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn while_the_broker_is_unreachable_like_fails_fast_and_health_is_not_serving()
-> anyhow::Result<()> {
    let (_env, proxy, api) = api_behind_proxy(5_000).await?;
    like(&api, "before", None).await?;
    assert_eq!(health(&api).await?, ServingStatus::Serving);

    proxy.cut();
    eventually(
        Duration::from_secs(5),
        "health to report NOT_SERVING",
        || async { Ok((health(&api).await? == ServingStatus::NotServing).then_some(())) },
    )
    .await?;
    let started = tokio::time::Instant::now();
    let status = like(&api, "during", None)
        .await
        .expect_err("no broker, no OK");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let details = tonic_types::StatusExt::get_error_details(&status);
    assert_eq!(
        details.retry_info().and_then(|r| r.retry_delay),
        Some(Duration::from_secs(1)),
        "UNAVAILABLE says when a retry is worth it: {status:?}"
    );
    assert_eq!(
        details.error_info().map(|i| i.reason.as_str()),
        Some("BROKER_UNREACHABLE")
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "UNAVAILABLE should be immediate, took {:?}",
        started.elapsed()
    );

    proxy.restore();
    eventually(
        Duration::from_secs(15),
        "health to report SERVING again",
        || async { Ok((health(&api).await? == ServingStatus::Serving).then_some(())) },
    )
    .await?;
    like(&api, "after", None).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn when_a_broker_node_is_lost_api_and_worker_move_to_the_next_one() -> anyhow::Result<()> {
    let mut env = TestEnv::new();
    env.settings.api.confirm_timeout_ms = 1_000;
    // Two "nodes": two proxies to the one local broker.
    let first = FaultProxy::start("127.0.0.1:5672".parse()?).await?;
    let second = FaultProxy::start("127.0.0.1:5672".parse()?).await?;
    // Only the services go through the proxies; the env keeps the direct
    // URL so its cleanup can still delete the queues after the proxies die.
    let mut settings = env.settings.clone();
    settings.amqp.url = SecretUrl::new(format!(
        "amqp://guest:guest@{}/%2f,amqp://guest:guest@{}/%2f",
        first.addr(),
        second.addr()
    ));
    let api = likes_testkit::RunningApi::spawn_with(&settings).await?;
    let _worker = env.spawn_worker_with(&settings).await?;
    let clients = vec![api.client.clone()];
    let before = like_all(
        &clients,
        pairs("node-a", 200, 3),
        8,
        Duration::from_secs(10),
    )
    .await?;

    first.cut();
    let after = like_all(
        &clients,
        pairs("node-b", 200, 3),
        8,
        Duration::from_secs(30),
    )
    .await?;
    let mut acknowledged = before.acknowledged;
    acknowledged.extend(after.acknowledged);
    env.wait_for_stored_pairs(400, Duration::from_secs(30))
        .await?;
    let mut db = env.db().await?;
    check_exactly(&mut db, &acknowledged).await?;
    Ok(())
}
