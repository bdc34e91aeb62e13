//! End-to-end tests: the real api and worker against the real RabbitMQ and
//! PostgreSQL on localhost, each test with its own database and queues.

mod counts;
mod envelopes;
mod faults;
mod grpcurl;
mod ordering;
mod pipeline;
mod poison;
mod protocol;
mod run_script;
mod security;
mod shards;
mod tls;
mod validation;

use likes_proto::pb::{LikeEvent, like_event::Action};
use uuid::Uuid;

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
