//! Post and user ids, parsed once at the edge so the rest of the code can rely
//! on them: 1 to 128 bytes of UTF-8 without control characters.
//!
//! The api parses request fields with them; the worker parses queued events
//! with them too, because the queue can hold messages the api never checked.

use std::fmt;

/// Longest id accepted, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("is {0} bytes long; the limit is {MAX_ID_BYTES}")]
    TooLong(usize),
    #[error("contains the control character U+{0:04X}")]
    ControlCharacter(u32),
}

/// Checks `raw` against the rules without taking it.
pub fn check(raw: &str) -> Result<(), IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty);
    }
    if raw.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong(raw.len()));
    }
    if let Some(c) = raw.chars().find(|c| c.is_control()) {
        return Err(IdError::ControlCharacter(u32::from(c)));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: impl Into<String>) -> Result<Self, IdError> {
                let raw = raw.into();
                check(&raw)?;
                Ok(Self(raw))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// Id of a post, as the calling service names it.
    PostId
);
id_type!(
    /// Id of a user, as the calling service names it.
    UserId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_and_boundary_ids() {
        assert!(PostId::parse("p1").is_ok());
        assert!(PostId::parse("x".repeat(MAX_ID_BYTES)).is_ok());
        assert!(UserId::parse("üser-😀").is_ok());
    }

    #[test]
    fn rejects_empty_long_and_control_characters() {
        assert_eq!(PostId::parse(""), Err(IdError::Empty));
        assert_eq!(
            PostId::parse("x".repeat(MAX_ID_BYTES + 1)),
            Err(IdError::TooLong(129))
        );
        // 43 four-byte characters: 43 chars but 172 bytes.
        assert_eq!(UserId::parse("😀".repeat(43)), Err(IdError::TooLong(172)));
        assert_eq!(UserId::parse("a\0b"), Err(IdError::ControlCharacter(0)));
        assert_eq!(UserId::parse("a\nb"), Err(IdError::ControlCharacter(10)));
        assert_eq!(
            UserId::parse("a\u{85}b"),
            Err(IdError::ControlCharacter(0x85))
        );
    }
}
