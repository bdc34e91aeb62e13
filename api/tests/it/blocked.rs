//! A broker that blocks publishing (a memory alarm): callers are answered
//! within the confirm timeout and, once the connection is blocked, at once
//! with `BROKER_BLOCKED`; readiness says so; after the alarm the api serves
//! again on the same connection, and every OK'd Like is stored once.

use crate::{ONE_AT_A_TIME, api_process, like};
use likes_proto::pb::LikeRequest;
use likes_testkit::{
    TestEnv, eventually,
    faults::MemoryAlarm,
    load::{expected_states, timed_likes},
    sample, scrape, verify, wait_for_readiness,
};
use std::time::Duration;
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test(flavor = "multi_thread")]
async fn under_a_memory_alarm_sixty_four_callers_are_each_answered_within_the_confirm_timeout()
-> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut env = TestEnv::new();
    env.settings.api.confirm_timeout_ms = 1_500;
    let api = env.spawn_api().await?;
    let _worker = env.spawn_worker().await?;
    let client = api.client.clone();
    let warm = timed_likes(
        &client,
        "before",
        "p",
        1,
        Duration::ZERO,
        Duration::from_secs(10),
    )
    .await;
    assert!(warm.iter().all(|a| a.answer.is_ok()), "{warm:?}");

    let alarm = MemoryAlarm::raise()?;
    let answers = timed_likes(
        &client,
        "alarm",
        "p",
        64,
        Duration::from_secs(3),
        Duration::from_secs(10),
    )
    .await;
    drop(alarm);

    let slowest = answers.iter().map(|a| a.took).max().unwrap_or_default();
    assert!(
        slowest <= Duration::from_millis(2_000),
        "a caller waited {slowest:?} with a 1.5 s confirm timeout"
    );
    for answer in &answers {
        if let Err(status) = &answer.answer {
            assert!(
                matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
                "{status:?}"
            );
        }
    }
    let mut all = warm;
    all.extend(answers);
    all.extend(
        timed_likes(
            &client,
            "after",
            "p",
            8,
            Duration::from_secs(2),
            Duration::from_secs(10),
        )
        .await,
    );
    assert!(
        all.iter().rev().take(8).all(|a| a.answer.is_ok()),
        "Likes OK again after the alarm"
    );
    env.wait_for_states(&expected_states(&all), Duration::from_secs(30))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blocked_connection_is_answered_at_once_and_serves_again_when_unblocked()
-> anyhow::Result<()> {
    let _alone = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new();
    let (_api, mut client, settings) = api_process(&env, env.settings.clone(), true).await?;
    let _worker = env.spawn_worker().await?;
    let metrics = settings.api.metrics_listen.clone();
    wait_for_readiness(&metrics, true, Duration::from_secs(20)).await?;
    like(&mut client, "before").await?;
    let mut sent = vec!["before".to_owned()];

    let alarm = MemoryAlarm::raise()?;
    // RabbitMQ blocks a connection once it publishes during the alarm.
    let _ = like(&mut client, "trigger").await;
    sent.push("trigger".to_owned());
    let answer = wait_for_readiness(&metrics, false, Duration::from_secs(10)).await?;
    assert!(answer.text.contains("blocks publishing"), "{answer:?}");
    let body = scrape(&metrics).await?;
    assert_eq!(
        sample(&body, "likes_amqp_blocked", None),
        Some(1.0),
        "{body}"
    );

    let started = tokio::time::Instant::now();
    let status = client
        .like(LikeRequest {
            post_id: "p".into(),
            user_id: "while-blocked".into(),
        })
        .await
        .expect_err("a blocked broker takes nothing");
    let took = started.elapsed();
    sent.push("while-blocked".to_owned());
    assert!(took < Duration::from_millis(100), "answered after {took:?}");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let details = status.get_error_details();
    assert_eq!(
        details.error_info().map(|i| i.reason.as_str()),
        Some("BROKER_BLOCKED"),
        "{status:?}"
    );
    assert!(details.retry_info().is_some(), "{status:?}");

    drop(alarm);
    let unblocked = tokio::time::Instant::now();
    eventually(Duration::from_secs(2), "Likes OK after the alarm", || {
        let mut client = client.clone();
        async move { Ok(like(&mut client, "after").await.ok()) }
    })
    .await?;
    sent.push("after".to_owned());
    wait_for_readiness(&metrics, true, Duration::from_secs(2)).await?;
    assert!(unblocked.elapsed() < Duration::from_secs(4));
    let body = scrape(&metrics).await?;
    assert_eq!(
        sample(&body, "likes_amqp_blocked", None),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "likes_amqp_reconnects_total", Some("role=\"api\"")),
        Some(0.0),
        "served again without reconnecting: {body}"
    );

    // "before" and "after" were OK'd; the others may or may not be stored.
    let expected: Vec<_> = sent
        .iter()
        .map(|user| {
            let state = if user == "before" || user == "after" {
                verify::Expectation::Liked
            } else {
                verify::Expectation::Uncertain
            };
            ("p".to_owned(), user.clone(), state)
        })
        .collect();
    env.wait_for_states(&expected, Duration::from_secs(30))
        .await
}
