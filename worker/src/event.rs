//! Checks queued events against the rules. The queue is not only fed by the
//! api (anyone with access can publish to it), so every field is checked
//! again here; an event that fails is poison and is dead-lettered, never
//! retried. Decoding a message into its events is the queue codec's
//! (`likes_queue::codec`).

use likes_common::ids::{self, IdError, PostId, UserId};
use likes_db::{Action, LikeChange};
use likes_proto::pb::{LikeEvent, like_event};
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

/// An event that breaks the rules, handed back whole for the dead-letter
/// queue.
#[derive(Debug)]
pub struct Poison {
    pub reason: PoisonReason,
    pub event: LikeEvent,
}

/// The change an event asks for, or why it is poison.
pub fn validate(event: LikeEvent) -> Result<LikeChange, Box<Poison>> {
    let (action, event_id) = match check(&event) {
        Ok(checked) => checked,
        Err(reason) => return Err(Box::new(Poison { reason, event })),
    };
    Ok(LikeChange {
        event_id,
        post_id: PostId::parse(event.post_id).expect("post_id was checked above"),
        user_id: UserId::parse(event.user_id).expect("user_id was checked above"),
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

/// The queue event a change came from, to dead-letter it alone.
pub fn to_event(change: &LikeChange) -> LikeEvent {
    let action = match change.action {
        Action::Like => like_event::Action::Like,
        Action::Unlike => like_event::Action::Unlike,
    };
    LikeEvent {
        event_id: change.event_id.to_string(),
        post_id: change.post_id.to_string(),
        user_id: change.user_id.to_string(),
        action: action.into(),
        occurred_at_micros: change.occurred_at_micros,
    }
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
    fn a_like_and_an_unlike_are_valid_and_convert_back() {
        let like = event(like_event::Action::Like);
        let change = validate(like.clone()).expect("valid");
        assert_eq!(change.action, Action::Like);
        assert_eq!(to_event(&change), like);
        let unlike = validate(event(like_event::Action::Unlike)).expect("valid");
        assert_eq!(unlike.action, Action::Unlike);
    }

    #[test]
    fn invalid_fields_are_poison_and_the_event_comes_back_whole() {
        let unspecified = event(like_event::Action::Unspecified);
        let poison = validate(unspecified.clone()).expect_err("no action");
        assert!(matches!(poison.reason, PoisonReason::Action(0)));
        assert_eq!(poison.event, unspecified);
        let mut bad_id = event(like_event::Action::Like);
        bad_id.event_id = "nope".into();
        assert!(matches!(
            validate(bad_id).expect_err("bad id").reason,
            PoisonReason::EventId(_)
        ));
        let mut empty_post = event(like_event::Action::Like);
        empty_post.post_id.clear();
        assert!(matches!(
            validate(empty_post).expect_err("empty post").reason,
            PoisonReason::PostId(IdError::Empty)
        ));
        let mut control = event(like_event::Action::Like);
        control.user_id = "a\u{7}b".into();
        assert!(matches!(
            validate(control).expect_err("control character").reason,
            PoisonReason::UserId(IdError::ControlCharacter(7))
        ));
    }
}
