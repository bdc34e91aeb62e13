//! Decodes and checks queued messages. The queue is not only fed by the api
//! (anyone with access can publish to it), so every field is checked again
//! here; a message that fails is poison and is dead-lettered, never retried.

use likes_common::ids::{IdError, PostId, UserId};
use likes_db::{Action, LikeChange};
use likes_proto::pb::{LikeEvent, like_event};
use prost::Message;
use uuid::Uuid;

/// Why a message can never be written.
#[derive(Debug, thiserror::Error)]
pub enum PoisonReason {
    #[error("not a protobuf LikeEvent: {0}")]
    Undecodable(#[from] prost::DecodeError),
    #[error("event_id {0:?} is not a UUID")]
    EventId(String),
    #[error("post_id {0}")]
    PostId(IdError),
    #[error("user_id {0}")]
    UserId(IdError),
    #[error("action {0} is neither LIKE nor UNLIKE")]
    Action(i32),
}

/// Decodes a message body into a change to apply.
pub fn decode(body: &[u8]) -> Result<LikeChange, PoisonReason> {
    let event = LikeEvent::decode(body)?;
    let action = match like_event::Action::try_from(event.action) {
        Ok(like_event::Action::Like) => Action::Like,
        Ok(like_event::Action::Unlike) => Action::Unlike,
        _ => return Err(PoisonReason::Action(event.action)),
    };
    Ok(LikeChange {
        event_id: Uuid::parse_str(&event.event_id)
            .map_err(|_| PoisonReason::EventId(event.event_id.clone()))?,
        post_id: PostId::parse(event.post_id).map_err(PoisonReason::PostId)?,
        user_id: UserId::parse(event.user_id).map_err(PoisonReason::UserId)?,
        action,
        occurred_at_micros: event.occurred_at_micros,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: like_event::Action) -> LikeEvent {
        LikeEvent {
            event_id: Uuid::now_v7().to_string(),
            post_id: "p".into(),
            user_id: "u".into(),
            action: action.into(),
            occurred_at_micros: 1,
        }
    }

    #[test]
    fn decodes_a_like_and_an_unlike() {
        let like = decode(&event(like_event::Action::Like).encode_to_vec()).expect("valid");
        assert_eq!(like.action, Action::Like);
        let unlike = decode(&event(like_event::Action::Unlike).encode_to_vec()).expect("valid");
        assert_eq!(unlike.action, Action::Unlike);
    }

    #[test]
    fn garbage_and_invalid_fields_are_poison() {
        assert!(matches!(
            decode(b"\xff\xff\xff garbage"),
            Err(PoisonReason::Undecodable(_))
        ));
        let unspecified = event(like_event::Action::Unspecified).encode_to_vec();
        assert!(matches!(decode(&unspecified), Err(PoisonReason::Action(0))));
        let mut bad_id = event(like_event::Action::Like);
        bad_id.event_id = "nope".into();
        assert!(matches!(
            decode(&bad_id.encode_to_vec()),
            Err(PoisonReason::EventId(_))
        ));
        let mut empty_post = event(like_event::Action::Like);
        empty_post.post_id.clear();
        assert!(matches!(
            decode(&empty_post.encode_to_vec()),
            Err(PoisonReason::PostId(IdError::Empty))
        ));
    }
}
