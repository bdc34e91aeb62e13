//! ListLikers' page tokens: where the next page starts (the last liker's
//! time and user id), bound to the post, opaque to callers. A token is the
//! hex of: a version byte, a hash of the post id, the time, the user id,
//! and a check over all of it, so a token that was cut, changed, or made
//! for another post is refused. The check is not a secret: a forged token
//! could only start a page at some position of the same public list.

use crate::error::ApiError;
use likes_common::ids::PostId;
use likes_db::repository::LikerCursor;

const VERSION: u8 = 1;
/// Version, post hash, time, check.
const FIXED_BYTES: usize = 1 + 8 + 8 + 8;

/// FNV-1a, 64 bit, from `seed`: stable across versions and platforms.
fn fnv(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(seed, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// Seeds the check apart from the post hash.
const CHECK_SEED: u64 = FNV_OFFSET ^ 0x6c69_6b65_7273; // "likers"

/// The token of the page that starts after `last` on `post`.
pub fn encode(post: &PostId, last: &LikerCursor) -> String {
    let mut bytes = Vec::with_capacity(FIXED_BYTES + last.user_id.len());
    bytes.push(VERSION);
    bytes.extend_from_slice(&fnv(FNV_OFFSET, post.as_str().as_bytes()).to_be_bytes());
    bytes.extend_from_slice(&last.event_at_micros.to_be_bytes());
    bytes.extend_from_slice(last.user_id.as_bytes());
    let check = fnv(CHECK_SEED, &bytes);
    bytes.extend_from_slice(&check.to_be_bytes());
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the page of `token` starts on `post`; `None` for the first page.
pub fn decode(post: &PostId, token: &str) -> Result<Option<LikerCursor>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bytes = hex(token).ok_or(ApiError::PageToken("not a token"))?;
    if bytes.len() < FIXED_BYTES || bytes[0] != VERSION {
        return Err(ApiError::PageToken("not a token"));
    }
    let (body, check) = bytes.split_at(bytes.len() - 8);
    if fnv(CHECK_SEED, body).to_be_bytes() != check {
        return Err(ApiError::PageToken("changed or cut"));
    }
    let word = |at: usize| -> [u8; 8] {
        body[at..at + 8]
            .try_into()
            .expect("the length was checked above")
    };
    if u64::from_be_bytes(word(1)) != fnv(FNV_OFFSET, post.as_str().as_bytes()) {
        return Err(ApiError::PageToken("made for another post"));
    }
    let user_id =
        String::from_utf8(body[17..].to_vec()).map_err(|_| ApiError::PageToken("not a token"))?;
    Ok(Some(LikerCursor {
        event_at_micros: i64::from_be_bytes(word(9)),
        user_id,
    }))
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(id: &str) -> PostId {
        PostId::parse(id.to_owned()).expect("valid")
    }

    #[test]
    fn a_token_leads_back_to_its_cursor_on_its_post_only() {
        let cursor = LikerCursor {
            event_at_micros: 1_765_000_000_123_456,
            user_id: "user-ü-7".into(),
        };
        let token = encode(&post("p1"), &cursor);
        assert_eq!(decode(&post("p1"), &token).expect("valid"), Some(cursor));
        assert_eq!(decode(&post("p1"), "").expect("first page"), None);
        assert!(matches!(
            decode(&post("p2"), &token),
            Err(ApiError::PageToken("made for another post"))
        ));
    }

    #[test]
    fn a_changed_cut_or_made_up_token_is_refused() {
        let token = encode(
            &post("p"),
            &LikerCursor {
                event_at_micros: 42,
                user_id: "u".into(),
            },
        );
        let mut changed = token.clone().into_bytes();
        changed[20] = if changed[20] == b'0' { b'1' } else { b'0' };
        let changed = String::from_utf8(changed).expect("hex");
        for bad in [
            changed.as_str(),
            &token[..token.len() - 2],
            &token[..10],
            "zz",
            "not a token",
            "00",
        ] {
            assert!(decode(&post("p"), bad).is_err(), "{bad}");
        }
    }
}
