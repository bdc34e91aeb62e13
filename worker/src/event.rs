//! Checks queued events against the rules. The queue is not only fed by the
//! api (anyone with access can publish to it), so every field is checked
//! again here; an event that fails is poison and is dead-lettered, never
//! retried. Decoding a message into its events is the queue codec's
//! (`likes_queue::codec`).

use likes_common::ids::{self, IdError, PostId, UserId};
use likes_db::{Action, LikeChange};
use likes_proto::events::{LikeEvent, like_event};
use uuid::Uuid;

/// Why an event can never be written.
#[derive(Debug, thiserror::Error)]
pub enum PoisonReason {
    #[error("event_id {0:?} is not a UUID")]
    EventId(String),
    #[error("post_id {0}")]
    PostId(IdError),
    #[error("user_id {0}")]
    UserId(IdError),
    #[error("action {0} is neither LIKE nor UNLIKE")]
    Action(i32),
}

/// The change an event asks for, or why it is poison. The event itself is
/// left to the caller, who dead-letters it as it came if it is poison or
/// the database refuses its change.
pub fn validate(event: &LikeEvent) -> Result<LikeChange, PoisonReason> {
    let (action, event_id) = check(event)?;
    Ok(LikeChange {
        event_id,
        post_id: PostId::parse(event.post_id.clone()).expect("post_id was checked above"),
        user_id: UserId::parse(event.user_id.clone()).expect("user_id was checked above"),
        action,
        occurred_at_micros: event.occurred_at_micros,
    })
}

fn check(event: &LikeEvent) -> Result<(Action, Uuid), PoisonReason> {
    let action = match like_event::Action::try_from(event.action) {
        Ok(like_event::Action::Like) => Action::Like,
        Ok(like_event::Action::Unlike) => Action::Unlike,
        _ => return Err(PoisonReason::Action(event.action)),
    };
    let event_id = Uuid::parse_str(&event.event_id)
        .map_err(|_| PoisonReason::EventId(event.event_id.clone()))?;
    ids::check(&event.post_id).map_err(PoisonReason::PostId)?;
    ids::check(&event.user_id).map_err(PoisonReason::UserId)?;
    Ok((action, event_id))
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
    fn a_like_and_an_unlike_are_valid() {
        let like = event(like_event::Action::Like);
        let change = validate(&like).expect("valid");
        assert_eq!(change.action, Action::Like);
        assert_eq!(change.event_id.to_string(), like.event_id);
        assert_eq!(
            (change.post_id.as_str(), change.user_id.as_str()),
            ("p", "u")
        );
        let unlike = validate(&event(like_event::Action::Unlike)).expect("valid");
        assert_eq!(unlike.action, Action::Unlike);
    }

    #[test]
    fn invalid_fields_are_poison() {
        let unspecified = event(like_event::Action::Unspecified);
        assert!(matches!(
            validate(&unspecified).expect_err("no action"),
            PoisonReason::Action(0)
        ));
        let mut bad_id = event(like_event::Action::Like);
        bad_id.event_id = "nope".into();
        assert!(matches!(
            validate(&bad_id).expect_err("bad id"),
            PoisonReason::EventId(_)
        ));
        let mut empty_post = event(like_event::Action::Like);
        empty_post.post_id.clear();
        assert!(matches!(
            validate(&empty_post).expect_err("empty post"),
            PoisonReason::PostId(IdError::Empty)
        ));
        let mut control = event(like_event::Action::Like);
        control.user_id = "a\u{7}b".into();
        assert!(matches!(
            validate(&control).expect_err("control character"),
            PoisonReason::UserId(IdError::ControlCharacter(7))
        ));
    }
}
