//! Every `likes_` metric the binaries export, with its kind, unit and help
//! text. [`describe_all`] hands them to the recorder when metrics start, so
//! each metric an endpoint exports has its `# HELP` line; the names follow
//! Prometheus conventions (base units in the name, `_total` on counters).
//!
//! One list for both binaries: the exporter prints a description only for a
//! metric that has been recorded, so the api's endpoint shows no worker
//! metric. This is the one description of each metric: the table of
//! `docs/operations.md` is this list rendered, and a test holds both it and
//! the metrics the sources record to the list.

use metrics::Unit;

/// What kind of metric a [`Metric`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Which binary exports a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Api,
    Worker,
    Both,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Worker => "worker",
            Self::Both => "both",
        }
    }
}

/// One exported metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub role: Role,
    /// Its labels, by name.
    pub labels: &'static [&'static str],
    pub kind: Kind,
    /// `None` for a state (a 0/1 gauge, an id) rather than a quantity.
    pub unit: Option<Unit>,
    pub help: &'static str,
    /// For a counter with one label, every value it takes; empty when the
    /// values are open (a method, a server) or the label is `role`.
    pub values: &'static [&'static str],
}

const fn metric(
    name: &'static str,
    role: Role,
    labels: &'static [&'static str],
    kind: Kind,
    unit: Option<Unit>,
    help: &'static str,
) -> Metric {
    Metric {
        name,
        role,
        labels,
        kind,
        unit,
        help,
        values: &[],
    }
}

impl Metric {
    /// This metric with the closed set of its one label's `values`.
    const fn values(self, values: &'static [&'static str]) -> Self {
        Self { values, ..self }
    }
}

use Kind::{Counter, Gauge, Histogram};
use Role::{Api, Both, Worker};

const COUNT: Option<Unit> = Some(Unit::Count);
const SECONDS: Option<Unit> = Some(Unit::Seconds);

/// Every `likes_` metric of the api and the worker. The process metrics
/// (`process_cpu_seconds_total`, ...) are described by `metrics-process`.
pub const METRICS: &[Metric] = &[
    metric(
        "likes_rpc_requests_total",
        Api,
        &["method", "code"],
        Counter,
        COUNT,
        "LikeService calls answered, by method and gRPC status code.",
    ),
    metric(
        "likes_rpc_duration_seconds",
        Api,
        &["method"],
        Histogram,
        SECONDS,
        "Time to answer a LikeService call, in seconds, by method.",
    ),
    metric(
        "likes_publish_confirm_seconds",
        Api,
        &["outcome"],
        Histogram,
        SECONDS,
        "Time from publishing a broker message to its confirm or failure, in seconds, by outcome.",
    ),
    metric(
        "likes_publish_messages_total",
        Api,
        &[],
        Counter,
        COUNT,
        "Broker messages published and confirmed.",
    ),
    metric(
        "likes_publish_events_total",
        Api,
        &[],
        Counter,
        COUNT,
        "Like and Unlike events in confirmed broker messages.",
    ),
    metric(
        "likes_requests_refused_total",
        Api,
        &["reason"],
        Counter,
        COUNT,
        "Calls refused before any handler ran, by reason: concurrency, stalled_body, body_bytes, content_type.",
    )
    .values(&["concurrency", "stalled_body", "body_bytes", "content_type"]),
    metric(
        "likes_deadlines_exceeded_total",
        Api,
        &[],
        Counter,
        COUNT,
        "Calls ended with DEADLINE_EXCEEDED by the caller's deadline.",
    ),
    metric(
        "likes_amqp_blocked",
        Api,
        &[],
        Gauge,
        None,
        "1 while RabbitMQ blocks the api's publishing connection (a memory or disk alarm), else 0.",
    ),
    metric(
        "likes_count_cache_lookups_total",
        Api,
        &["result"],
        Counter,
        COUNT,
        "Posts looked up in the count cache, by result: hit (fresh), miss (loaded or failed), stale (served past expiry while PostgreSQL could not be read).",
    )
    .values(&["hit", "miss", "stale"]),
    metric(
        "likes_count_cache_loads_total",
        Api,
        &[],
        Counter,
        COUNT,
        "Queries loading counts into the cache (concurrent misses of one post load once).",
    ),
    metric(
        "likes_count_pushes_total",
        Api,
        &["outcome"],
        Counter,
        COUNT,
        "Count changes pushed by the workers, by outcome: applied, or stale (the cache held a newer version).",
    )
    .values(&["applied", "stale"]),
    metric(
        "likes_count_cache_entries",
        Api,
        &[],
        Gauge,
        COUNT,
        "Posts in the count cache (approximate).",
    ),
    metric(
        "likes_count_subscription_up",
        Api,
        &[],
        Gauge,
        None,
        "1 while the api follows the count changes the workers push, else 0 (counts then expire after api.count_cache_ttl_ms).",
    ),
    metric(
        "likes_batches_total",
        Worker,
        &[],
        Counter,
        COUNT,
        "Write statements committed, one database transaction each.",
    ),
    metric(
        "likes_events_written_total",
        Worker,
        &[],
        Counter,
        COUNT,
        "Events in committed write statements.",
    ),
    metric(
        "likes_rows_written_total",
        Worker,
        &[],
        Counter,
        COUNT,
        "Rows of the likes table inserted or changed.",
    ),
    metric(
        "likes_batch_events",
        Worker,
        &[],
        Histogram,
        COUNT,
        "Events per acked batch.",
    ),
    metric(
        "likes_batch_flush_seconds",
        Worker,
        &[],
        Histogram,
        SECONDS,
        "Time from a batch's close to its ack, in seconds.",
    ),
    metric(
        "likes_batches_acked_total",
        Worker,
        &[],
        Counter,
        COUNT,
        "Batches acked once committed (one ack of all their messages each).",
    ),
    metric(
        "likes_batches_requeued_total",
        Worker,
        &[],
        Counter,
        COUNT,
        "Batches handed back to the queue (nack with requeue) after their retry budget.",
    ),
    metric(
        "likes_dead_lettered_total",
        Worker,
        &[],
        Counter,
        COUNT,
        "Messages sent to the dead-letter queue.",
    ),
    metric(
        "likes_write_retries_total",
        Worker,
        &[],
        Counter,
        COUNT,
        "Failed batch writes retried in place.",
    ),
    metric(
        "likes_count_messages_total",
        Worker,
        &["outcome"],
        Counter,
        COUNT,
        "Count-change messages pushed to the apis after committed batches, by outcome: published or failed.",
    )
    .values(&["published", "failed"]),
    metric(
        "likes_queue_depth",
        Worker,
        &[],
        Gauge,
        COUNT,
        "Ready messages in the event queues this worker consumes.",
    ),
    metric(
        "likes_amqp_connected",
        Both,
        &["role"],
        Gauge,
        None,
        "1 while the broker link is up (api: it can publish; worker: it consumes), else 0, by role.",
    ),
    metric(
        "likes_amqp_reconnects_total",
        Both,
        &["role"],
        Counter,
        COUNT,
        "Broker reconnections after a lost link, by role.",
    ),
    metric(
        "likes_db_pool_connections",
        Both,
        &["state"],
        Gauge,
        COUNT,
        "PostgreSQL pool connections, by state: idle or in_use.",
    ),
    metric(
        "likes_db_circuit_open",
        Both,
        &["server"],
        Gauge,
        None,
        "1 while the pool to a PostgreSQL server (host:port) fails checkouts at once because connecting failed moments ago, else 0.",
    ),
    metric(
        "likes_db_reads_total",
        Api,
        &["target"],
        Counter,
        COUNT,
        "Reads that needed PostgreSQL, by where they ran: primary, or a read replica's host:port.",
    ),
    metric(
        "likes_db_replica_lag_seconds",
        Api,
        &["replica"],
        Gauge,
        SECONDS,
        "How far each read replica is behind the primary, as of the last check.",
    ),
    metric(
        "likes_db_replica_usable",
        Api,
        &["replica"],
        Gauge,
        None,
        "1 while a read replica answers and lags at most database.max_replica_lag_ms, else 0.",
    ),
    metric(
        "likes_process_id",
        Both,
        &[],
        Gauge,
        None,
        "Id of the process serving this endpoint, so a health check can tell whose it reads.",
    ),
    metric(
        "likes_build_info",
        Both,
        &["version"],
        Gauge,
        None,
        "Always 1; the version label names the running build.",
    ),
];

/// Describes every metric of [`METRICS`] to the installed recorder. Call
/// after installing it: descriptions given before go nowhere.
pub fn describe_all() {
    for metric in METRICS {
        metrics::with_recorder(|recorder| {
            let (name, help) = (metric.name.into(), metric.help.into());
            match metric.kind {
                Counter => recorder.describe_counter(name, metric.unit, help),
                Gauge => recorder.describe_gauge(name, metric.unit, help),
                Histogram => recorder.describe_histogram(name, metric.unit, help),
            }
        });
    }
}

/// The counters `role` (`Api` or `Worker`) exports whose series are known
/// at start, each with its one label and value if it has one: those without
/// labels, with the `role` label, or with a closed set of [`Metric::values`].
pub fn counters_at_start(role: Role) -> Vec<(&'static str, Option<(&'static str, &'static str)>)> {
    let ours =
        |metric: &&Metric| metric.kind == Counter && (metric.role == role || metric.role == Both);
    let mut series = Vec::new();
    for metric in METRICS.iter().filter(ours) {
        match metric.labels {
            [] => series.push((metric.name, None)),
            ["role"] => series.push((metric.name, Some(("role", role.as_str())))),
            [label] => series.extend(
                metric
                    .values
                    .iter()
                    .map(|&value| (metric.name, Some((*label, value)))),
            ),
            _ => {}
        }
    }
    series
}

/// Registers [`counters_at_start`] at 0, so each series exists from the
/// first scrape and `increase()` sees the first dead letter, retry or
/// failure instead of a series that appears at 1.
pub fn register_counters(role: Role) {
    for (name, label) in counters_at_start(role) {
        match label {
            None => metrics::counter!(name).increment(0),
            Some((key, value)) => metrics::counter!(name, key => value).increment(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let mut seen = std::collections::BTreeSet::new();
        for metric in METRICS {
            assert!(seen.insert(metric.name), "{} twice", metric.name);
            assert!(metric.name.starts_with("likes_"), "{}", metric.name);
            assert_eq!(
                metric.kind == Counter,
                metric.name.ends_with("_total"),
                "{}: counters, and only counters, end in _total",
                metric.name
            );
            if metric.unit == SECONDS {
                assert!(metric.name.ends_with("_seconds"), "{}", metric.name);
            }
            assert!(metric.help.ends_with('.'), "{}", metric.name);
        }
    }

    #[test]
    fn closed_label_values_belong_to_one_label_counters_and_their_help_names_them() {
        for metric in METRICS.iter().filter(|m| !m.values.is_empty()) {
            assert_eq!(metric.kind, Counter, "{}", metric.name);
            assert!(
                matches!(metric.labels, [label] if *label != "role"),
                "{}",
                metric.name
            );
            for value in metric.values {
                assert!(metric.help.contains(value), "{}: {value}", metric.name);
            }
        }
    }
}
