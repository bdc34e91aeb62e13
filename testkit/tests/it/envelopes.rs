//! Many likes per broker message: the api packs concurrent likes into
//! envelopes, the worker reads envelopes and single events alike, and poison
//! is isolated per event.

use crate::event;
use diesel_async::RunQueryDsl;
use likes_proto::events::like_event::Action;
use likes_queue::codec::{self, ENVELOPE_HEADER, EVENT_CONTENT_TYPE, LEGACY_ENVELOPE_CONTENT_TYPE};
use likes_testkit::{
    TestEnv, eventually,
    load::{check_exactly, like_all, pairs},
    verify::{self, Expectation},
};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_concurrent_likes_share_far_fewer_messages_and_count_exactly()
-> anyhow::Result<()> {
    const LIKES: usize = 10_000;
    let env = TestEnv::new();
    let api = env.spawn_api().await?;
    let worker = env.spawn_worker().await?;
    let clients = vec![
        api.client.clone(),
        api.new_client().await?,
        api.new_client().await?,
        api.new_client().await?,
    ];
    let outcome = like_all(
        &clients,
        pairs("packed", LIKES, 7),
        256,
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(outcome.acknowledged.len(), LIKES);

    let messages = api.publish_stats.messages();
    let events = api.publish_stats.events();
    eprintln!(
        "{events} likes in {messages} broker messages ({:.1} per message)",
        events as f64 / messages as f64
    );
    assert_eq!(events, LIKES as u64, "every OK'd like was confirmed once");
    assert!(
        messages * 8 <= events,
        "{messages} messages for {events} likes: too little packing"
    );
    env.wait_for_stored_pairs(LIKES, Duration::from_secs(60))
        .await?;
    let mut db = env.db().await?;
    check_exactly(&mut db, &outcome.acknowledged).await?;
    assert_eq!(worker.stats.events(), LIKES as u64);
    assert_eq!(worker.stats.dead_lettered(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_of_single_events_and_envelopes_interleaved_drains_exactly() -> anyhow::Result<()> {
    let mut env = TestEnv::new();
    env.settings.worker.batch_size = 50.try_into()?;
    let (_conn, channel) = env.amqp().await?;
    let mut expected = Vec::new();
    let mut at = 0;
    // 60 messages: one event, then envelopes of 1 to 40 events, in turn.
    for round in 0..30_usize {
        at += 1;
        let user = format!("single-{round}");
        env.publish_event(&channel, &event("p-single", &user, Action::Like, at))
            .await?;
        expected.push(("p-single".to_owned(), user));
        let events: Vec<_> = (0..(round % 40) + 1)
            .map(|i| {
                at += 1;
                let user = format!("packed-{round}-{i}");
                expected.push((format!("p-{}", i % 3), user.clone()));
                event(&format!("p-{}", i % 3), &user, Action::Like, at)
            })
            .collect();
        env.publish_envelope(&channel, &events).await?;
    }
    // An Unlike in an envelope after its Like in a single message.
    env.publish_envelope(
        &channel,
        &[event("p-single", "single-0", Action::Unlike, at + 1)],
    )
    .await?;

    let worker = env.spawn_worker().await?;
    env.wait_for_stored_pairs(expected.len(), Duration::from_secs(30))
        .await?;
    env.wait_for_queue_depth(&env.settings.amqp.queue, 0, Duration::from_secs(10))
        .await?;
    let pool = env.pool().await?;
    eventually(Duration::from_secs(10), "the last Unlike", || async {
        let mut conn = likes_db::checkout(&pool).await?;
        let state = verify::stored_state(&mut conn, "p-single", "single-0").await?;
        Ok((state == Some(false)).then_some(()))
    })
    .await?;
    let expected: Vec<_> = expected
        .into_iter()
        .map(|(post, user)| {
            let state = if post == "p-single" && user == "single-0" {
                Expectation::Unliked
            } else {
                Expectation::Liked
            };
            (post, user, state)
        })
        .collect();
    let mut db = env.db().await?;
    verify::check_states(&mut db, &expected).await?;
    assert_eq!(worker.stats.dead_lettered(), 0);
    Ok(())
}

/// An upgrade from 0.1.0 with messages in flight: the queue still holds
/// envelopes that the old api marked `likes.v1.LikeEventBatch` when the new
/// api starts publishing `likes.events.v1.LikeEventBatch`; the new worker
/// writes both, each event once.
#[tokio::test(flavor = "multi_thread")]
async fn envelopes_marked_with_the_old_type_name_are_written_beside_new_ones() -> anyhow::Result<()>
{
    const OLD: usize = 20;
    const PER_ENVELOPE: usize = 25;
    const NEW: usize = 300;
    let env = TestEnv::new();
    let (_conn, channel) = env.amqp().await?;
    let mut expected = Vec::new();
    for envelope in 0..OLD {
        let events: Vec<_> = (0..PER_ENVELOPE)
            .map(|i| {
                let user = format!("old-{envelope}-{i}");
                expected.push(("upgrade".to_owned(), user.clone()));
                event(
                    "upgrade",
                    &user,
                    Action::Like,
                    (envelope * PER_ENVELOPE + i) as i64,
                )
            })
            .collect();
        let properties = codec::envelope_properties(&uuid::Uuid::now_v7().to_string())
            .with_content_type(LEGACY_ENVELOPE_CONTENT_TYPE.into());
        env.publish_with(&channel, &codec::encode_envelope(&events), properties)
            .await?;
    }
    let api = env.spawn_api().await?;
    let outcome = like_all(
        std::slice::from_ref(&api.client),
        pairs("upgrade-new", NEW, 3),
        64,
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(outcome.acknowledged.len(), NEW);

    let worker = env.spawn_worker().await?;
    env.wait_for_stored_pairs(OLD * PER_ENVELOPE + NEW, Duration::from_secs(30))
        .await?;
    let expected: Vec<_> = expected
        .into_iter()
        .chain(outcome.acknowledged)
        .map(|(post, user)| (post, user, Expectation::Liked))
        .collect();
    let mut db = env.db().await?;
    verify::check_states(&mut db, &expected).await?;
    assert_eq!(worker.stats.events(), (OLD * PER_ENVELOPE + NEW) as u64);
    assert_eq!(worker.stats.dead_lettered(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_the_database_refuses_inside_an_envelope_is_dead_lettered_alone()
-> anyhow::Result<()> {
    let mut env = TestEnv::new();
    env.settings.worker.batch_max_wait_ms = 200;
    let mut db = env.db().await?;
    // Stands for any row the database refuses every time.
    diesel::sql_query("ALTER TABLE likes ADD CONSTRAINT refuse_poison CHECK (user_id <> 'poison')")
        .execute(&mut db)
        .await?;
    let (_conn, channel) = env.amqp().await?;
    let mut events: Vec<_> = (0..99)
        .map(|i| event("p", &format!("u{i}"), Action::Like, i))
        .collect();
    let poison = event("p", "poison", Action::Like, 50);
    events.insert(50, poison.clone());
    let envelope = env.publish_envelope(&channel, &events).await?;

    let letters = crate::worker_sets_one_poison_aside(&env, &mut db, 99).await?;
    let letter = &letters[0];
    assert_eq!(letter.message_id.as_deref(), Some(poison.event_id.as_str()));
    let reason = letter.reason.as_deref().unwrap_or_default();
    assert!(reason.contains("refuse_poison"), "reason: {reason:?}");
    let header = |name: &str| {
        letter
            .headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    assert_eq!(header(ENVELOPE_HEADER), Some(envelope.as_str()));
    assert_eq!(letter.content_type.as_deref(), Some(EVENT_CONTENT_TYPE));
    assert!(
        letter
            .event
            .as_deref()
            .is_some_and(|e| e.starts_with("p/poison Like")),
        "a single event: {:?}",
        letter.event
    );
    assert_eq!(
        env.queue_depth(&env.settings.amqp.queue).await?,
        0,
        "the envelope is acked"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn events_with_invalid_ids_inside_an_envelope_are_dead_lettered_alone() -> anyhow::Result<()>
{
    let env = TestEnv::new();
    let (_conn, channel) = env.amqp().await?;
    let events = vec![
        event("p", "a", Action::Like, 1),
        event("", "no-post", Action::Like, 2),
        event("p", "b", Action::Like, 3),
        event("p", "c\u{0}", Action::Like, 4),
    ];
    let envelope = env.publish_envelope(&channel, &events).await?;
    let worker = env.spawn_worker().await?;
    let dead = &env.settings.amqp.dead_letter_queue;
    env.wait_for_queue_depth(dead, 2, Duration::from_secs(10))
        .await?;
    env.wait_for_stored_pairs(2, Duration::from_secs(10))
        .await?;
    let mut db = env.db().await?;
    assert_eq!(verify::stored_count(&mut db, "p").await?, 2);
    assert_eq!(worker.stats.dead_lettered(), 2);
    for letter in env.dead_letters().await? {
        let named = letter
            .headers
            .iter()
            .any(|(key, value)| key == ENVELOPE_HEADER && *value == envelope);
        assert!(named, "{letter:?}");
        let reason = letter.reason.unwrap_or_default();
        assert!(
            reason.contains("post_id") || reason.contains("user_id"),
            "{reason}"
        );
    }
    Ok(())
}
