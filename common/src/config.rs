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

mod keys;

pub use keys::{SettingSource, UnknownSetting};
use serde::{Deserialize, Serialize};
use std::{
    fmt,
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
    /// Defaults, then the file named by `LIKES_CONFIG` (if set), then `LIKES__*`
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
        let mut builder = ::config::Config::builder().add_source(defaults_source());
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
        struct Revealed;
        impl Drop for Revealed {
            fn drop(&mut self) {
                REVEAL.set(false);
            }
        }
        REVEAL.set(true);
        let revealed = Revealed;
        let value = toml::Value::try_from(self);
        drop(revealed);
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
}

impl DatabaseSettings {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
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
/// [`Settings::to_env`].
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if REVEAL.get() || self.0.is_empty() {
            return serializer.serialize_str(&self.0);
        }
        serializer.serialize_str(MASK)
    }
}

thread_local! {
    /// Set while [`Settings::to_env`] serializes: secrets as they are.
    static REVEAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
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
        // A comma-separated list of URLs (a cluster's nodes) is masked URL by URL.
        let masked: Vec<String> = self.0.split(',').map(redact_password).collect();
        f.write_str(&masked.join(","))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_validate() {
        let s = Settings::defaults();
        s.validate().expect("defaults are valid");
        assert_eq!(s.amqp.queue, "likes.events");
        assert_eq!(s.amqp.dead_letter_queue, "likes.dead");
        assert_eq!(s.worker.batch_size.get(), 500);
        assert_eq!(s.worker.batch_max_wait_ms, 50);
        assert_eq!(s.worker.prefetch(), 1000);
        assert_eq!(s.api.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(s.amqp.tls_ca_file, "");
        assert_eq!(s.database.tls_ca_file, "");
        assert_eq!(s.telemetry.otlp_endpoint, "", "tracing is off by default");
        assert_eq!(s.telemetry.sample_ratio, 1.0);
    }

    #[test]
    fn an_amqp_client_certificate_needs_its_key() {
        let mut s = Settings::defaults();
        s.amqp.tls_client_cert_file = "client.pem".into();
        let err = s.validate().expect_err("a certificate without its key");
        assert!(
            err.to_string().contains("amqp.tls_client_key_file"),
            "{err}"
        );
        s.amqp.tls_client_cert_file.clear();
        s.amqp.tls_client_key_file = "client.key".into();
        assert!(s.validate().is_err(), "a key without its certificate");
        s.amqp.tls_client_cert_file = "client.pem".into();
        s.validate().expect("both");
    }

    #[test]
    fn sample_ratio_is_a_share() {
        let mut s = Settings::defaults();
        for ratio in [0.0, 0.01, 1.0] {
            s.telemetry.sample_ratio = ratio;
            s.validate().expect("a share");
        }
        for ratio in [-0.1, 1.5, f64::NAN] {
            s.telemetry.sample_ratio = ratio;
            let err = s.validate().expect_err("not a share");
            assert!(err.to_string().contains("telemetry.sample_ratio"), "{err}");
        }
    }

    #[test]
    fn environment_overrides_defaults() {
        let env = [
            ("LIKES__WORKER__BATCH_SIZE", "1000"),
            ("LIKES__WORKER__BATCH_MAX_WAIT_MS", "20"),
            ("LIKES__AMQP__QUEUE", "q.events"),
            ("LIKES__AMQP__QUEUE_TYPE", "quorum"),
            ("LIKES__API__LISTEN", "0.0.0.0:6000"),
            ("LIKES__LOG__FORMAT", "json"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let s = Settings::load_from(None, Some(env)).expect("valid overrides");
        assert_eq!(s.worker.batch_size.get(), 1000);
        assert_eq!(s.worker.batch_max_wait_ms, 20);
        assert_eq!(s.worker.prefetch(), 2000);
        assert_eq!(s.amqp.queue, "q.events");
        assert_eq!(s.amqp.queue_type, QueueType::Quorum);
        assert_eq!(s.api.listen.port(), 6000);
        assert_eq!(s.log.format, LogFormat::Json);
        assert_eq!(s.amqp.dead_letter_queue, "likes.dead");
    }

    #[test]
    fn a_worker_consumes_every_shard_or_the_listed_ones() {
        let mut s = Settings::defaults();
        assert_eq!(s.consumed_shards().expect("default"), vec![0]);
        s.amqp.shards = 4;
        assert_eq!(s.consumed_shards().expect("all"), vec![0, 1, 2, 3]);
        s.worker.shards = " 2, 0,2".into();
        assert_eq!(s.consumed_shards().expect("listed"), vec![2, 0]);
        s.worker.shards = "4".into();
        let err = s.validate().expect_err("shard 4 of 4");
        assert!(err.to_string().contains("worker.shards"), "{err}");
        s.worker.shards = "one".into();
        assert!(s.validate().is_err());
        s.worker.shards.clear();
        s.amqp.shards = 0;
        let err = s.validate().expect_err("no shard");
        assert!(err.to_string().contains("amqp.shards"), "{err}");
    }

    #[test]
    fn zero_is_refused_where_it_would_mean_nothing_works() {
        for (variable, key) in [
            ("LIKES__WORKER__BATCH_SIZE", "batch_size"),
            ("LIKES__DATABASE__POOL_SIZE", "pool_size"),
            (
                "LIKES__API__MAX_CONCURRENT_REQUESTS",
                "max_concurrent_requests",
            ),
            ("LIKES__API__COUNT_CACHE_TTL_MS", "count_cache_ttl_ms"),
        ] {
            let env = [(variable.to_owned(), "0".to_owned())]
                .into_iter()
                .collect();
            let err = Settings::load_from(None, Some(env)).expect_err("zero");
            assert!(err.to_string().contains("nonzero"), "{key}: {err}");
        }
    }

    #[test]
    fn batch_size_is_read_from_the_environment() {
        let env = [("LIKES__WORKER__BATCH_SIZE", "2000")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let s = Settings::load_from(None, Some(env)).expect("valid overrides");
        assert_eq!(s.worker.batch_size.get(), 2000);
        assert_eq!(s.worker.prefetch(), 4000);
    }

    #[test]
    fn passwords_are_masked_when_shown() {
        let url = SecretUrl::new("amqp://guest:s3cret@host:5672/%2f");
        assert_eq!(url.to_string(), "amqp://guest:***@host:5672/%2f");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(url.expose(), "amqp://guest:s3cret@host:5672/%2f");
        assert_eq!(format!("{:?}", Secret::new("t0ken")), "\"***\"");
        assert_eq!(
            SecretUrl::new("postgres://postgres@127.0.0.1/likes").to_string(),
            "postgres://postgres@127.0.0.1/likes"
        );
        assert_eq!(
            SecretUrl::new("amqp://u:p1@a/%2f,amqp://u:p2@b/%2f").to_string(),
            "amqp://u:***@a/%2f,amqp://u:***@b/%2f"
        );
    }

    fn env_of(pairs: &[(&str, &str)]) -> ::config::Map<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A settings file of this test's own under the temporary directory.
    fn settings_file(test: &str, text: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("likes-config-{test}-{}.toml", std::process::id()));
        std::fs::write(&path, text).expect("writing a settings file");
        path
    }

    fn unknown_of(err: ConfigError) -> Vec<UnknownSetting> {
        match err {
            ConfigError::Unknown(unknown) => unknown,
            other => panic!("expected unknown settings, got {other}"),
        }
    }

    #[test]
    fn a_misspelt_variable_is_refused_with_the_nearest_setting() {
        let env = env_of(&[("LIKES__WORKER__BATCH_SIZ", "10")]);
        let err = Settings::load_from(None, Some(env)).expect_err("a typo");
        assert_eq!(
            err.to_string(),
            "LIKES__WORKER__BATCH_SIZ is not a setting; did you mean LIKES__WORKER__BATCH_SIZE?"
        );
        assert_eq!(
            unknown_of(err),
            vec![UnknownSetting {
                source: SettingSource::Environment,
                name: "LIKES__WORKER__BATCH_SIZ".into(),
                suggestion: Some("LIKES__WORKER__BATCH_SIZE".into()),
            }]
        );
    }

    #[test]
    fn an_unknown_key_in_the_file_is_refused_naming_the_file() {
        let path = settings_file(
            "unknown-key",
            "[worker]\nbatch_size = 100\nbatch_max_wait = 20\n",
        );
        let err = Settings::load_from(Some(path.clone()), Some(env_of(&[]))).expect_err("a typo");
        std::fs::remove_file(&path).expect("removing the settings file");
        assert_eq!(
            err.to_string(),
            format!(
                "{}: worker.batch_max_wait is not a setting; did you mean worker.batch_max_wait_ms?",
                path.display()
            )
        );
    }

    #[test]
    fn a_name_far_from_every_setting_gets_no_suggestion() {
        let env = env_of(&[("LIKES__WORKER__FLUX_CAPACITOR", "1")]);
        let err = Settings::load_from(None, Some(env)).expect_err("no such setting");
        assert_eq!(
            err.to_string(),
            "LIKES__WORKER__FLUX_CAPACITOR is not a setting"
        );
        let path = settings_file("far-key", "[cache]\nttl_ms = 5\n");
        let err =
            Settings::load_from(Some(path.clone()), Some(env_of(&[]))).expect_err("no such key");
        std::fs::remove_file(&path).expect("removing the settings file");
        assert_eq!(unknown_of(err)[0].suggestion, None);
    }

    #[test]
    fn a_setting_in_the_wrong_section_or_none_suggests_its_section() {
        let env = env_of(&[
            ("LIKES__API__BATCH_SIZE", "10"),
            ("LIKES__POOL_SIZE", "4"),
            ("LIKES__WORKER_SHARDS", "4"),
        ]);
        let err = Settings::load_from(None, Some(env)).expect_err("misplaced");
        let suggestions: Vec<_> = unknown_of(err)
            .into_iter()
            .map(|u| (u.name, u.suggestion))
            .collect();
        assert_eq!(
            suggestions,
            vec![
                (
                    "LIKES__API__BATCH_SIZE".into(),
                    Some("LIKES__WORKER__BATCH_SIZE".into())
                ),
                (
                    "LIKES__POOL_SIZE".into(),
                    Some("LIKES__DATABASE__POOL_SIZE".into())
                ),
                (
                    "LIKES__WORKER_SHARDS".into(),
                    Some("LIKES__WORKER__SHARDS".into())
                ),
            ]
        );
    }

    #[test]
    fn one_underscore_after_likes_is_a_misspelt_setting_unless_no_double_follows() {
        let env = env_of(&[
            ("LIKES_DATABASE__URL", "postgres://elsewhere/likes"),
            ("LIKES_CONFIG", "/etc/likes.toml"),
            ("LIKES_HOME", "/srv/likes"),
        ]);
        let err = Settings::load_from(None, Some(env)).expect_err("one underscore");
        assert_eq!(
            err.to_string(),
            "LIKES_DATABASE__URL is not a setting; did you mean LIKES__DATABASE__URL?"
        );
    }

    #[test]
    fn every_unknown_name_is_reported_at_once_file_first() {
        let path = settings_file("every-unknown", "[amqp]\nqueue_typ = \"quorum\"\n");
        let env = env_of(&[
            ("LIKES__LOG__FROMAT", "json"),
            ("LIKES__AMQP__URI", "amqp://x"),
        ]);
        let err = Settings::load_from(Some(path.clone()), Some(env)).expect_err("three typos");
        std::fs::remove_file(&path).expect("removing the settings file");
        let names: Vec<_> = unknown_of(err).into_iter().map(|u| u.name).collect();
        assert_eq!(
            names,
            ["amqp.queue_typ", "LIKES__AMQP__URI", "LIKES__LOG__FROMAT"]
        );
    }

    #[test]
    fn valid_file_and_variables_still_override_and_other_variables_are_ignored() {
        let path = settings_file(
            "valid",
            "[worker]\nbatch_size = 100\n[amqp]\nqueue = \"from.file\"\n",
        );
        let env = env_of(&[
            ("LIKES__AMQP__QUEUE", "from.env"),
            // As the config crate reads them: any case.
            ("likes__worker__batch_max_wait_ms", "7"),
            // Not settings: the file's variable, and one underscore.
            ("LIKES_CONFIG", "/elsewhere.toml"),
            ("LIKES_HOME", "/srv"),
            ("PATH", "/usr/bin"),
            // What Kubernetes injects into every pod for a Service named
            // likes-api (service links): never settings, never refused.
            ("LIKES_API_SERVICE_HOST", "10.0.0.7"),
            ("LIKES_API_SERVICE_PORT_GRPC", "50051"),
            ("LIKES_API_PORT", "tcp://10.0.0.7:50051"),
            ("LIKES_API_PORT_50051_TCP_PROTO", "tcp"),
        ]);
        let s = Settings::load_from(Some(path.clone()), Some(env)).expect("valid overrides");
        std::fs::remove_file(&path).expect("removing the settings file");
        assert_eq!(s.worker.batch_size.get(), 100);
        assert_eq!(s.worker.batch_max_wait_ms, 7);
        assert_eq!(s.amqp.queue, "from.env");
    }

    #[test]
    fn the_shown_settings_mask_secrets_and_load_back_as_a_file() {
        let env = env_of(&[
            ("LIKES__AMQP__URL", "amqp://guest:s3cret@rabbit:5672/%2f"),
            ("LIKES__API__AUTH_TOKEN", "t0ken"),
            ("LIKES__WORKER__BATCH_SIZE", "42"),
        ]);
        let s = Settings::load_from(None, Some(env)).expect("valid overrides");
        let shown = s.to_toml().expect("settings are TOML");
        assert!(
            shown.contains("url = \"amqp://guest:***@rabbit:5672/%2f\""),
            "{shown}"
        );
        assert!(shown.contains("auth_token = \"***\""), "{shown}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("t0ken"),
            "{shown}"
        );

        // Pasted back as a file it gives the same settings, and its keys are
        // exactly the settings.
        let path = settings_file("shown", &shown);
        let again = Settings::load_from(Some(path.clone()), Some(env_of(&[])));
        std::fs::remove_file(&path).expect("removing the settings file");
        let again = again.expect("the shown settings load");
        assert_eq!(again.to_toml().expect("settings are TOML"), shown);
        use ::config::Source as _;
        let keys_of = |source: ::config::File<_, _>| {
            keys::KnownKeys::of(&source.collect().expect("TOML")).into_keys()
        };
        assert_eq!(
            keys_of(::config::File::from_str(&shown, ::config::FileFormat::Toml)),
            keys_of(defaults_source())
        );
    }
}
