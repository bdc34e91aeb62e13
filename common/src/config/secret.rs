//! Secrets among the settings (a token, URLs with a password): masked
//! wherever settings are shown or logged, revealed only to hand the
//! settings to a child process.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A secret such as a token: `Debug` and `Display` never show it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the code that checks it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Masked like `Debug`: settings are serialized to be shown, except inside
/// [`super::Settings::to_env`].
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if REVEAL.get() || self.0.is_empty() {
            return serializer.serialize_str(&self.0);
        }
        serializer.serialize_str(MASK)
    }
}

thread_local! {
    /// Set while [`revealed`] runs: secrets serialize as they are.
    static REVEAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with secrets serializing as they are, not masked: for
/// [`super::Settings::to_env`] only.
pub(super) fn revealed<T>(f: impl FnOnce() -> T) -> T {
    struct Revealed;
    impl Drop for Revealed {
        fn drop(&mut self) {
            REVEAL.set(false);
        }
    }
    REVEAL.set(true);
    let _revealed = Revealed;
    f()
}

/// What a secret, or a URL's password, is shown as.
const MASK: &str = "***";

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// A URL that may carry a password: `Debug` and `Display` mask it, so settings
/// can be logged. [`SecretUrl::expose`] gives the real URL to the client library.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for the client library only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.0.is_empty() && !self.0.contains("://") {
            // libpq's keyword/value form: the password's value is masked; a
            // string that does not parse is masked whole, as it could hide one.
            return match super::conninfo::parse(&self.0) {
                Ok(pairs) if pairs.iter().any(|(keyword, _)| keyword == "password") => {
                    f.write_str(&super::conninfo::render(pairs.iter().map(|(k, v)| {
                        (k.as_str(), if k == "password" { MASK } else { v.as_str() })
                    })))
                }
                Ok(_) => f.write_str(&self.0),
                Err(_) => f.write_str(MASK),
            };
        }
        // A list of URLs (a cluster's nodes, separated by commas; read
        // replicas, by spaces) is masked URL by URL.
        let masked: Vec<String> = self
            .0
            .split(' ')
            .map(|urls| {
                let masked: Vec<String> = urls.split(',').map(redact_password).collect();
                masked.join(",")
            })
            .collect();
        f.write_str(&masked.join(" "))
    }
}

/// Masked like `Display`: settings are serialized to be shown.
impl Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if REVEAL.get() {
            return serializer.serialize_str(&self.0);
        }
        serializer.collect_str(self)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// `scheme://user:secret@host/..` → `scheme://user:***@host/..`.
fn redact_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[scheme_end..]
        .find('/')
        .map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    match authority[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &authority[..colon],
            &url[scheme_end + at..]
        ),
        None => url.to_owned(),
    }
}
