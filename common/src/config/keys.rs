//! Which names are settings: the strict half of loading.
//!
//! The `config` crate takes any key of a file and any `LIKES__*` variable and
//! drops what no field reads, so a typo in a deployment changes nothing and
//! says nothing. Here every key of the settings file and every `LIKES__*`
//! variable is checked against `config/default.toml`, which lists every
//! setting (the docs test holds it to the README), and an unknown one is
//! reported by the name the operator wrote, with the nearest setting.

use std::{fmt, path::PathBuf};

/// A key of the settings file or a `LIKES__*` variable that is no setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownSetting {
    /// Where the name was written.
    pub source: SettingSource,
    /// The name as written: a dotted key (`worker.batch_siz`) in a file, the
    /// variable's name (`LIKES__WORKER__BATCH_SIZ`) in the environment.
    pub name: String,
    /// The nearest setting, spelt the same way, when one is close.
    pub suggestion: Option<String>,
}

/// Where an unknown name came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingSource {
    File(PathBuf),
    Environment,
}

impl fmt::Display for UnknownSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            SettingSource::File(path) => {
                write!(f, "{}: {} is not a setting", path.display(), self.name)?
            }
            SettingSource::Environment => write!(f, "{} is not a setting", self.name)?,
        }
        if let Some(suggestion) = &self.suggestion {
            write!(f, "; did you mean {suggestion}?")?;
        }
        Ok(())
    }
}

/// The prefix of setting variables: `LIKES__SECTION__KEY`. `LIKES_CONFIG`,
/// with one underscore, names the file and is no setting.
const ENV_PREFIX: &str = "likes__";
const ENV_SEPARATOR: &str = "__";
/// `LIKES_` with one underscore: the start of a misspelt setting variable
/// when `__` follows later in the name.
const MISSPELT_PREFIX: &str = "likes_";

/// The dotted keys of every setting (`worker.batch_size`), from the defaults.
#[derive(Debug)]
pub(super) struct KnownKeys(Vec<String>);

impl KnownKeys {
    pub(super) fn of(defaults: &::config::Map<String, ::config::Value>) -> Self {
        let mut keys = Vec::new();
        leaf_keys("", defaults, &mut keys);
        keys.sort();
        Self(keys)
    }

    #[cfg(test)]
    pub(super) fn into_keys(self) -> Vec<String> {
        self.0
    }

    /// The keys of a settings file that are no setting, as dotted keys.
    pub(super) fn unknown_in_file(
        &self,
        path: &std::path::Path,
        file: &::config::Map<String, ::config::Value>,
    ) -> Vec<UnknownSetting> {
        let mut keys = Vec::new();
        leaf_keys("", file, &mut keys);
        keys.sort();
        keys.into_iter()
            .filter(|key| !self.0.contains(key))
            .map(|key| UnknownSetting {
                source: SettingSource::File(path.to_owned()),
                suggestion: self.nearest(&key).map(str::to_owned),
                name: key,
            })
            .collect()
    }

    /// The `LIKES__*` variables among `names` that are no setting. Matched
    /// as the `config` crate matches them: case-insensitively, `__` between
    /// section and key. A name with one underscore after `LIKES` and `__`
    /// further on (`LIKES_WORKER__BATCH_SIZE`) is a misspelt setting too,
    /// which the `config` crate would skip; `LIKES_CONFIG` is not.
    pub(super) fn unknown_in_env(
        &self,
        names: impl IntoIterator<Item = String>,
    ) -> Vec<UnknownSetting> {
        let mut unknown: Vec<UnknownSetting> = names
            .into_iter()
            .filter_map(|name| {
                let lower = name.to_lowercase();
                let (rest, prefixed) = match lower.strip_prefix(ENV_PREFIX) {
                    Some(rest) => (rest, true),
                    None => (
                        lower
                            .strip_prefix(MISSPELT_PREFIX)
                            .filter(|rest| rest.contains(ENV_SEPARATOR))?,
                        false,
                    ),
                };
                let key = rest.replace(ENV_SEPARATOR, ".");
                (!prefixed || !self.0.contains(&key)).then(|| UnknownSetting {
                    source: SettingSource::Environment,
                    suggestion: self.nearest(&key).map(variable_of),
                    name,
                })
            })
            .collect();
        unknown.sort_by(|a, b| a.name.cmp(&b.name));
        unknown
    }

    /// The setting nearest to `key`: the fewest edits (Damerau–Levenshtein),
    /// if few for the key's length, or one with the same name in another
    /// section (`api.batch_size` → `worker.batch_size`).
    fn nearest(&self, key: &str) -> Option<&str> {
        let leaf = |k: &str| k.rsplit('.').next().unwrap_or(k).to_owned();
        self.0
            .iter()
            .map(|known| (strsim::damerau_levenshtein(key, known), known))
            .filter(|(distance, known)| *distance <= typo_budget(known) || leaf(known) == leaf(key))
            .min_by_key(|(distance, _)| *distance)
            .map(|(_, known)| known.as_str())
    }
}

/// Edits still counted as a typo of `key`: about one per five characters,
/// at least one and at most four, so a short key does not draw every other.
fn typo_budget(key: &str) -> usize {
    (key.chars().count() / 5).clamp(1, 4)
}

/// `worker.batch_size` → `LIKES__WORKER__BATCH_SIZE`.
pub(super) fn variable_of(key: &str) -> String {
    format!(
        "{}{}",
        ENV_PREFIX.to_uppercase(),
        key.replace('.', ENV_SEPARATOR).to_uppercase()
    )
}

/// Every key with a value that is not a table, dotted, into `out`.
fn leaf_keys(prefix: &str, table: &::config::Map<String, ::config::Value>, out: &mut Vec<String>) {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match &value.kind {
            ::config::ValueKind::Table(inner) => leaf_keys(&key, inner, out),
            _ => out.push(key),
        }
    }
}
