//! Typed settings, loaded once in `main` and passed down.
//!
//! Defaults live in `config/default.toml` (compiled into the binaries), an
//! optional file (the binaries' `--config FILE`, else the one named by
//! `LIKES_CONFIG`) overrides them, and environment variables
//! `LIKES__<SECTION>__<KEY>` override both. The keys are a contract with
//! deployments: `docs/configuration.md` lists each with its default (a test
//! holds it to `config/default.toml`). Loading is strict: a key of the file
//! or a `LIKES__*` variable that is no setting stops the start with
//! [`ConfigError::Unknown`], naming it and the nearest setting.

pub mod conninfo;
mod keys;
mod otel_env;
mod secret;

pub use keys::{SettingSource, UnknownSetting};
pub use secret::{Secret, SecretUrl};
use serde::{Deserialize, Serialize};
use std::{
    net::SocketAddr,
    num::{NonZeroU16, NonZeroU32, NonZeroU64, NonZeroUsize},
    path::PathBuf,
    time::Duration,
};

const DEFAULTS: &str = include_str!("../../config/default.toml");

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read settings: {0}")]
    Load(#[from] ::config::ConfigError),
    /// Keys of the file or `LIKES__*` variables that are no setting, each
    /// with the nearest setting when one is close.
    #[error("{}", list(.0))]
    Unknown(Vec<UnknownSetting>),
    #[error("invalid setting {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    /// The settings cannot be written as TOML (an integer beyond TOML's
    /// 64-bit signed range).
    #[error("cannot show the settings as TOML: {0}")]
    Show(#[from] toml::ser::Error),
}

fn list(unknown: &[UnknownSetting]) -> String {
    let items: Vec<String> = unknown.iter().map(ToString::to_string).collect();
    items.join("; ")
}

/// Every setting of the service. It serializes with secrets masked (see
/// [`Secret`], [`SecretUrl`]): for showing, never for handing on.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Settings {
    pub log: LogSettings,
    pub telemetry: TelemetrySettings,
    pub api: ApiSettings,
    pub amqp: AmqpSettings,
    pub database: DatabaseSettings,
    pub worker: WorkerSettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LogSettings {
    pub format: LogFormat,
}

/// Trace export (see `telemetry::otel`). Serialize: `check-config` prints
/// the settings in effect (on main since the command-line change).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct TelemetrySettings {
    /// OTLP/gRPC endpoint of a collector, e.g. `http://127.0.0.1:4317`;
    /// empty turns tracing off.
    pub otlp_endpoint: String,
    /// Share of api calls traced, 0.0 to 1.0 (the worker traces every batch).
    pub sample_ratio: f64,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    pub metrics_listen: String,
    pub confirm_timeout_ms: u64,
    /// Calls of each class (writes; reads and the rest) admitted at once.
    pub max_concurrent_requests: NonZeroUsize,
    pub tls_cert_file: String,
    pub tls_key_file: String,
    pub tls_client_ca_file: String,
    pub auth_token: Secret,
    pub auth_all_services: bool,
    /// A cached count not refreshed by a pushed change is reloaded after
    /// this long: the freshness bound when pushes are lost.
    pub count_cache_ttl_ms: NonZeroU64,
    /// While PostgreSQL cannot be read, a cached count is still served up
    /// to this long past its expiry.
    pub count_max_stale_ms: u64,
    /// A WatchLikeCounts stream sends at most one change per post this often.
    pub watch_min_interval_ms: NonZeroU64,
    /// WatchLikeCounts streams served at once; past it, RESOURCE_EXHAUSTED.
    pub max_watch_streams: usize,
    /// A client connection gets GOAWAY this long after it opened (0: never).
    pub max_connection_age_ms: u64,
    /// ... and is closed this long after that if still open.
    pub max_connection_age_grace_ms: u64,
    /// HTTP/2 keepalive pings to clients this often (0: none) ...
    pub keepalive_interval_ms: u64,
    /// ... and a connection whose ping goes unanswered this long is closed.
    pub keepalive_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AmqpSettings {
    pub url: SecretUrl,
    pub queue: String,
    pub dead_letter_queue: String,
    /// Fanout exchange the workers publish count changes to, for the apis.
    pub counts_exchange: String,
    pub queue_type: QueueType,
    /// Event queues the likes are spread over by post id (1: one queue
    /// named `queue`; K > 1: `queue.0` … `queue.K-1`).
    pub shards: u16,
    /// PEM file of the CA certificates trusted for `amqps://` nodes, besides
    /// the system's roots; empty: the system's roots alone.
    pub tls_ca_file: String,
    /// PEM certificate (chain) and PEM private key presented to `amqps://` nodes
    /// that ask for one; both empty: none.
    pub tls_client_cert_file: String,
    pub tls_client_key_file: String,
}

/// RabbitMQ queue type of the event queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    Classic,
    Quorum,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct DatabaseSettings {
    pub url: SecretUrl,
    pub pool_size: NonZeroU32,
    pub connect_timeout_ms: u64,
    /// PEM file of the CA certificates `sslmode=verify-ca`/`verify-full`
    /// verify the server against; empty: the system's roots.
    pub tls_ca_file: String,
    /// Streaming replicas the api reads from, separated by spaces; empty:
    /// every read on `url`.
    pub read_urls: SecretUrl,
    pub max_replica_lag_ms: NonZeroU64,
    /// Create the database and run pending migrations at start; false:
    /// only check that none is pending (`likes-admin migrate` runs them).
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WorkerSettings {
    pub metrics_listen: String,
    /// Shards this worker consumes: empty for all, else e.g. `0,2`.
    pub shards: String,
    /// Events per batch.
    pub batch_size: NonZeroU16,
    pub batch_max_wait_ms: u64,
    pub retry_budget_ms: u64,
}

impl Settings {
    /// Defaults, then OpenTelemetry's `OTEL_*` variables (see `otel_env`),
    /// then the file named by `LIKES_CONFIG` (if set), then `LIKES__*`
    /// environment variables. For the binaries' `main`.
    pub fn load() -> Result<Self, ConfigError> {
        let file = std::env::var_os("LIKES_CONFIG").map(PathBuf::from);
        Self::load_from(file, None)
    }

    /// [`Settings::load`] with the file given, and the environment given as a
    /// map instead of read from the process (`None` reads the process
    /// environment). A key of the file or a `LIKES__*` variable that is no
    /// setting is refused with [`ConfigError::Unknown`].
    pub fn load_from(
        file: Option<PathBuf>,
        env: Option<::config::Map<String, String>>,
    ) -> Result<Self, ConfigError> {
        use ::config::Source as _;
        let known = keys::KnownKeys::of(&defaults_source().collect()?);
        let mut unknown = Vec::new();
        let var = |name: &str| match &env {
            Some(map) => map.get(name).cloned(),
            None => std::env::var(name).ok(),
        };
        let mut builder = ::config::Config::builder()
            .add_source(defaults_source())
            .add_source(::config::File::from_str(
                &otel_env::settings(var)?,
                ::config::FileFormat::Toml,
            ));
        if let Some(path) = file {
            let source = ::config::File::from(path.clone());
            unknown.extend(known.unknown_in_file(&path, &source.collect()?));
            builder = builder.add_source(source);
        }
        let names: Vec<String> = match &env {
            Some(map) => map.keys().cloned().collect(),
            // Names that are not Unicode are skipped, as the config crate does.
            None => std::env::vars_os()
                .filter_map(|(name, _)| name.into_string().ok())
                .collect(),
        };
        unknown.extend(known.unknown_in_env(names));
        if !unknown.is_empty() {
            return Err(ConfigError::Unknown(unknown));
        }
        let settings: Self = builder
            .add_source(
                ::config::Environment::with_prefix("LIKES")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .source(env),
            )
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The settings as a TOML settings file, secrets masked as `***`: what
    /// `check-config` prints.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// Every setting as a `LIKES__SECTION__KEY` variable, secrets revealed:
    /// for handing these settings to a child process (the tests start the
    /// binaries so), never for showing. Every setting is included, so a new
    /// one reaches the child without a list to keep.
    pub fn to_env(&self) -> Result<Vec<(String, String)>, ConfigError> {
        let value = secret::revealed(|| toml::Value::try_from(self));
        let mut vars = Vec::new();
        let sections = value?;
        for (section, keys) in sections.as_table().into_iter().flatten() {
            for (key, value) in keys.as_table().into_iter().flatten() {
                let text = match value {
                    toml::Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                let name = format!("LIKES__{section}__{key}").to_uppercase();
                vars.push((name, text));
            }
        }
        Ok(vars)
    }

    /// The committed defaults alone, ignoring the environment: what tests start
    /// from before setting fields in code.
    pub fn defaults() -> Self {
        ::config::Config::builder()
            .add_source(defaults_source())
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("config/default.toml is valid: it is compiled in and covered by tests")
    }

    /// Checks what serde and the types cannot: relations between settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.api.tls_cert_file.is_empty() != self.api.tls_key_file.is_empty() {
            return Err(invalid(
                "api.tls_cert_file",
                "api.tls_cert_file and api.tls_key_file go together",
            ));
        }
        if !self.api.tls_client_ca_file.is_empty() && self.api.tls_cert_file.is_empty() {
            return Err(invalid(
                "api.tls_client_ca_file",
                "mutual TLS needs api.tls_cert_file and api.tls_key_file",
            ));
        }
        if self.amqp.shards == 0 || self.amqp.shards > MAX_SHARDS {
            return Err(invalid(
                "amqp.shards",
                format!("must be between 1 and {MAX_SHARDS}"),
            ));
        }
        if self.amqp.tls_client_cert_file.is_empty() != self.amqp.tls_client_key_file.is_empty() {
            return Err(invalid(
                "amqp.tls_client_cert_file",
                "amqp.tls_client_cert_file and amqp.tls_client_key_file go together",
            ));
        }
        self.consumed_shards()?;
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            return Err(invalid(
                "telemetry.sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        Ok(())
    }
}

/// Most shards a deployment may have.
pub const MAX_SHARDS: u16 = 256;

impl Settings {
    /// The shards this worker consumes, from `worker.shards`: every shard
    /// when it is empty.
    pub fn consumed_shards(&self) -> Result<Vec<u16>, ConfigError> {
        let all = self.amqp.shards;
        let listed = self.worker.shards.trim();
        if listed.is_empty() {
            return Ok((0..all).collect());
        }
        let mut shards = Vec::new();
        for item in listed.split(',') {
            let shard: u16 = item.trim().parse().map_err(|_| {
                invalid(
                    "worker.shards",
                    format!("{item:?} is not a shard number (a comma-separated list such as 0,2)"),
                )
            })?;
            if shard >= all {
                return Err(invalid(
                    "worker.shards",
                    format!(
                        "shard {shard} does not exist: amqp.shards is {all} (shards 0 to {})",
                        all - 1
                    ),
                ));
            }
            if !shards.contains(&shard) {
                shards.push(shard);
            }
        }
        Ok(shards)
    }
}

fn defaults_source() -> ::config::File<::config::FileSourceString, ::config::FileFormat> {
    ::config::File::from_str(DEFAULTS, ::config::FileFormat::Toml)
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

impl ApiSettings {
    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_millis(self.confirm_timeout_ms)
    }

    pub fn count_cache_ttl(&self) -> Duration {
        Duration::from_millis(self.count_cache_ttl_ms.get())
    }

    pub fn count_max_stale(&self) -> Duration {
        Duration::from_millis(self.count_max_stale_ms)
    }

    pub fn watch_min_interval(&self) -> Duration {
        Duration::from_millis(self.watch_min_interval_ms.get())
    }
}

impl DatabaseSettings {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// Each URL of `read_urls`.
    pub fn read_urls(&self) -> impl Iterator<Item = &str> {
        self.read_urls.expose().split_whitespace()
    }

    pub fn max_replica_lag(&self) -> Duration {
        Duration::from_millis(self.max_replica_lag_ms.get())
    }
}

impl WorkerSettings {
    pub fn batch_max_wait(&self) -> Duration {
        Duration::from_millis(self.batch_max_wait_ms)
    }

    /// Deliveries the broker may push unacked: twice the batch size, so a
    /// batch fills even when every message holds one event, and the next
    /// batch streams in while one is written.
    pub fn prefetch(&self) -> u16 {
        self.batch_size.get().saturating_mul(2)
    }

    pub fn retry_budget(&self) -> Duration {
        Duration::from_millis(self.retry_budget_ms)
    }
}

#[cfg(test)]
mod tests;
