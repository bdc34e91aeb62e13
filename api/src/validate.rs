//! Turns request fields into domain ids, naming the field that is wrong.

use crate::error::ApiError;
use likes_common::ids::{PostId, UserId};

/// Most post ids one GetLikeCounts call may ask for.
pub const MAX_POST_IDS: usize = 1000;

pub fn post_id(field: &'static str, raw: String) -> Result<PostId, ApiError> {
    PostId::parse(raw).map_err(|source| ApiError::InvalidId {
        field,
        index: None,
        source,
    })
}

pub fn user_id(field: &'static str, raw: String) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|source| ApiError::InvalidId {
        field,
        index: None,
        source,
    })
}

/// Validates a (post_id, user_id) request pair.
pub fn pair(post: String, user: String) -> Result<(PostId, UserId), ApiError> {
    Ok((post_id("post_id", post)?, user_id("user_id", user)?))
}

/// Validates the ids of a GetLikeCounts call; duplicates are allowed.
pub fn post_ids(raw: Vec<String>) -> Result<Vec<PostId>, ApiError> {
    if raw.len() > MAX_POST_IDS {
        return Err(ApiError::TooManyIds {
            count: raw.len(),
            max: MAX_POST_IDS,
        });
    }
    raw.into_iter()
        .enumerate()
        .map(|(index, id)| {
            PostId::parse(id).map_err(|source| ApiError::InvalidId {
                field: "post_ids",
                index: Some(index),
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn invalid_ids_map_to_invalid_argument_naming_the_field() {
        let status = tonic::Status::from(pair("p".into(), String::new()).expect_err("empty"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "user_id must not be empty");

        let status = tonic::Status::from(pair("a\u{7}".into(), "u".into()).expect_err("bell"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().starts_with("post_id "),
            "{}",
            status.message()
        );
    }

    #[test]
    fn more_than_a_thousand_post_ids_are_refused() {
        assert!(post_ids(vec!["p".into(); MAX_POST_IDS]).is_ok());
        let status =
            tonic::Status::from(post_ids(vec!["p".into(); MAX_POST_IDS + 1]).expect_err("1001"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("1001"), "{}", status.message());
    }
}
