//! End-to-end tests: the real api and worker against the real RabbitMQ and
//! PostgreSQL on localhost, each test with its own database and queues.

mod counts;
mod database_url;
mod envelopes;
mod faults;
mod feeds;
mod grpcurl;
mod ordering;
mod pipeline;
mod poison;
mod prometheus;
mod protocol;
mod recount;
mod run_script;
mod security;
mod shards;
mod tls;
mod validation;

use likes_proto::events::{LikeEvent, like_event::Action};
use uuid::Uuid;

/// Starts a worker on `env` and waits until post `p` counts `likes` and one
/// message is dead-lettered: the poison's, with nothing of it stored and
/// every counter right. The dead letters, for what they say.
pub async fn worker_sets_one_poison_aside(
    env: &likes_testkit::TestEnv,
    db: &mut diesel_async::AsyncPgConnection,
    likes: i64,
) -> anyhow::Result<Vec<likes_queue::dead_letters::DeadLetter>> {
    use likes_testkit::verify;
    use std::time::Duration;
    let worker = env.spawn_worker().await?;
    env.wait_for_count("p", likes, Duration::from_secs(20))
        .await?;
    let dead = &env.settings.amqp.dead_letter_queue;
    env.wait_for_queue_depth(dead, 1, Duration::from_secs(10))
        .await?;
    assert_eq!(worker.stats.dead_lettered(), 1);
    assert_eq!(verify::stored_state(db, "p", "poison").await?, None);
    assert_eq!(verify::counter_mismatches(db).await?, 0);
    env.dead_letters().await
}

/// An event as the api would publish it, at a chosen time.
pub fn event(post: &str, user: &str, action: Action, at_micros: i64) -> LikeEvent {
    LikeEvent {
        event_id: Uuid::now_v7().to_string(),
        post_id: post.into(),
        user_id: user.into(),
        action: action.into(),
        occurred_at_micros: at_micros,
    }
}
