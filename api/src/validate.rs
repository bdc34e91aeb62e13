//! Turns request fields into domain ids, naming the field that is wrong.

use crate::error::ApiError;
use likes_common::ids::{PostId, UserId};

/// Most post ids one GetLikeCounts call may ask for.
pub const MAX_POST_IDS: usize = 1000;

/// Most post ids of one feed page (GetLikeSummaries) or one stream
/// (WatchLikeCounts): a page of a feed, as other large likes services allow.
pub const MAX_PAGE_POSTS: usize = 100;

/// ListLikers' page size when the caller sets none, and the most it gets
/// (AIP-158: larger sizes are clamped, not refused).
pub const DEFAULT_LIKERS_PAGE: usize = 20;
pub const MAX_LIKERS_PAGE: usize = 100;

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
    post_ids_at_most(raw, MAX_POST_IDS)
}

/// Validates up to `max` post ids (`post_ids[i]` names a bad one).
pub fn post_ids_at_most(raw: Vec<String>, max: usize) -> Result<Vec<PostId>, ApiError> {
    if raw.len() > max {
        return Err(ApiError::TooManyIds {
            count: raw.len(),
            max,
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

/// The viewer of a feed page: none when empty.
pub fn viewer(raw: String) -> Result<Option<UserId>, ApiError> {
    if raw.is_empty() {
        return Ok(None);
    }
    user_id("viewer_id", raw).map(Some)
}

/// The page size ListLikers serves for a requested one.
pub fn likers_page_size(requested: i32) -> Result<usize, ApiError> {
    match usize::try_from(requested) {
        Err(_) => Err(ApiError::NegativePageSize(requested)),
        Ok(0) => Ok(DEFAULT_LIKERS_PAGE),
        Ok(size) => Ok(size.min(MAX_LIKERS_PAGE)),
    }
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

    #[test]
    fn a_page_size_defaults_clamps_and_refuses_negatives() {
        assert_eq!(likers_page_size(0).expect("default"), 20);
        assert_eq!(likers_page_size(7).expect("as asked"), 7);
        assert_eq!(likers_page_size(1_000).expect("clamped"), 100);
        assert!(likers_page_size(-1).is_err());
    }
}
