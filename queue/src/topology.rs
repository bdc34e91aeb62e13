//! Connecting to RabbitMQ and declaring the topology. Declaring is
//! idempotent, so every process does it at start and the order in which they
//! start does not matter.
//!
//! Topology: durable event queues whose dead letters go through the default
//! exchange to one durable dead-letter queue (default `likes.dead`), and
//! the fanout exchange of count changes (default `likes.counts`, see
//! [`crate::counts`]). With
//! `amqp.shards = 1` there is one event queue, named `amqp.queue` (default
//! `likes.events`); with K shards there are K, `<queue>.0` … `<queue>.K-1`,
//! and a like goes to the shard of its post id ([`shard_of`]), so one post's
//! likes share a queue. Each shard queue has a single active consumer
//! (`x-single-active-consumer`): one worker at a time writes a shard's posts,
//! so a hot post's counter row is not fought over, and the other workers
//! consuming it wait as hot standbys. Quorum shard queues place their leaders
//! with `x-queue-leader-locator = balanced`, spreading them over the nodes.
//!
//! Messages are published to the default exchange with the queue name as
//! routing key, so no exchange needs declaring, and no broker plugin (the
//! consistent-hash exchange would need one) is involved.

use crate::tls;
use lapin::{
    Channel, Connection, ConnectionProperties,
    options::{QueueDeclareOptions, QueueDeleteOptions},
    runtime::default_runtime,
    types::{AMQPValue, FieldTable},
};
use likes_common::config::{AmqpSettings, QueueType, SecretUrl};

/// Opens a connection named after its role and queue (`likes-api
/// likes.events`), as shown in the management UI and `rabbitmqctl`.
///
/// `amqp.url` may list several comma-separated URLs, the nodes of a
/// cluster: they are tried in order and the first that answers is used, so
/// when a node is lost, the reconnect moves on to the next one. `amqps://`
/// nodes are reached over TLS with the certificates of `amqp.tls_*` (see
/// [`crate::tls`]); a refused certificate fails that node with an error
/// naming it, like an unreachable one. A TLS file that cannot be used fails
/// the whole call: no node could be reached with it.
pub async fn connect(settings: &AmqpSettings, role: &str) -> lapin::Result<Connection> {
    let name = format!("{role} {}", settings.queue);
    let mut tls_config = None;
    let mut last_error = None;
    for url in node_urls(settings.url.expose()) {
        let properties = ConnectionProperties::default().with_connection_name(name.as_str().into());
        let attempt = if tls::is_tls(url) {
            let config = match &tls_config {
                Some(config) => Clone::clone(config),
                None => tls_config.insert(tls::tls_config(settings)?).clone(),
            };
            Connection::connect_with_config(url, properties, config, default_runtime()?).await
        } else {
            Connection::connect(url, properties).await
        };
        match attempt.map_err(|error| tls::explain(url, error)) {
            Ok(connection) => return Ok(connection),
            Err(error) => {
                tracing::warn!(node = %SecretUrl::new(url), %error, "RabbitMQ node unreachable");
                last_error = Some(error);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| {
        lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
            lapin::ConnectionState::Error,
        ))
    }))
}

/// How long [`close`] waits for the broker to answer.
pub const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Closes `connection` (and its channels), waiting at most [`CLOSE_TIMEOUT`]
/// for the broker's answer: a connection that failed, or that the broker
/// blocks (it then reads nothing, not even a close), may never answer, and
/// an unbounded close held reconnects and shutdowns for as long. Past it the
/// connection is dropped unclosed; the broker cleans up after a dead socket.
pub async fn close(connection: &Connection, reason: &str) {
    match tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, reason.into())).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "closing the AMQP connection"),
        Err(_elapsed) => tracing::debug!("no answer to closing the AMQP connection; dropping it"),
    }
}

/// What the broker says about a connection outside its channels' traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// `connection.blocked`: a memory or disk alarm; the broker reads
    /// nothing more from this connection until it unblocks it. Sent once
    /// the connection publishes during the alarm.
    Blocked(String),
    /// `connection.unblocked`: the alarm cleared.
    Unblocked,
    /// The connection failed (closed by the broker, socket lost, missed
    /// heartbeats).
    Failed(String),
}

/// The events of `connection` from now on (events before the call are not
/// kept, so take it right after connecting).
pub fn connection_events(
    connection: &Connection,
) -> impl futures_util::Stream<Item = ConnectionEvent> + Send + Unpin + 'static {
    use futures_util::StreamExt;
    connection
        .events_listener()
        .filter_map(|event| {
            std::future::ready(match event {
                lapin::Event::ConnectionBlocked(reason) => Some(ConnectionEvent::Blocked(reason)),
                lapin::Event::ConnectionUnblocked => Some(ConnectionEvent::Unblocked),
                lapin::Event::Error(error) => Some(ConnectionEvent::Failed(error.to_string())),
                _ => None,
            })
        })
        .boxed()
}

/// The URLs of `amqp.url`, split on commas.
pub fn node_urls(urls: &str) -> impl Iterator<Item = &str> {
    urls.split(',').map(str::trim).filter(|url| !url.is_empty())
}

/// Why the topology could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("RabbitMQ refused the topology: {0}")]
    Broker(#[from] lapin::Error),
    #[error(
        "amqp.shards is {shards}, but queue {found} of another shard layout still holds \
         messages or has consumers; changing the number of shards needs the drain-and-switch \
         steps of the README (stop the apis, let the old workers drain the old queues, stop \
         them, then start everything with the new amqp.shards)"
    )]
    ShardsChanged { shards: u16, found: String },
}

/// The event queues, shard by shard.
pub fn event_queues(settings: &AmqpSettings) -> Vec<String> {
    (0..settings.shards)
        .map(|shard| shard_queue(settings, shard))
        .collect()
}

/// The event queue of `shard`: `amqp.queue` itself when there is one shard.
pub fn shard_queue(settings: &AmqpSettings, shard: u16) -> String {
    if settings.shards <= 1 {
        settings.queue.clone()
    } else {
        format!("{}.{shard}", settings.queue)
    }
}

/// The shard of a post: FNV-1a (64 bit) of its id, modulo the shards. Fixed
/// forever, so every api (whatever its version) routes a post alike.
pub fn shard_of(post_id: &str, shards: u16) -> u16 {
    if shards <= 1 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in post_id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    u16::try_from(hash % u64::from(shards)).expect("below shards, a u16")
}

/// Declares the dead-letter queue, then the event queues that dead-letter
/// into it, after checking that no queue of another shard layout exists.
/// Redeclaring with the same arguments is harmless; with different ones the
/// broker refuses (PRECONDITION_FAILED), which is reported, not hidden.
pub async fn declare_topology(
    connection: &Connection,
    settings: &AmqpSettings,
) -> Result<(), TopologyError> {
    refuse_other_layouts(connection, settings).await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_declare(
            settings.dead_letter_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            queue_type_arguments(settings),
        )
        .await?;
    for queue in event_queues(settings) {
        declare_event_queue(&channel, settings, &queue).await?;
    }
    crate::counts::declare_exchange(&channel, settings).await?;
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// The event queues another shard layout would have that this one does
/// not: with one shard `<queue>.0`, with K shards `<queue>` and `<queue>.K`
/// (left by a larger K). Each is deleted if it is empty and has no consumer
/// (a layout fully drained and stopped is switched without ceremony; a
/// missing queue deletes fine too), and refused otherwise: its likes must
/// be drained by workers of its own layout first. Deleting rather than
/// probing with a passive declare also keeps RabbitMQ from closing a channel
/// (and lapin from logging an error) for the usual case, a queue that does
/// not exist.
async fn refuse_other_layouts(
    connection: &Connection,
    settings: &AmqpSettings,
) -> Result<(), TopologyError> {
    let others = if settings.shards <= 1 {
        vec![format!("{}.0", settings.queue)]
    } else {
        vec![
            settings.queue.clone(),
            format!("{}.{}", settings.queue, settings.shards),
        ]
    };
    for other in others {
        let channel = connection.create_channel().await?;
        let deleted = channel
            .queue_delete(
                other.as_str().into(),
                QueueDeleteOptions {
                    if_unused: true,
                    if_empty: true,
                    ..QueueDeleteOptions::default()
                },
            )
            .await;
        match deleted {
            Ok(_) => {
                let _ = channel.close(200, "checked".into()).await;
            }
            Err(error) if is_precondition_failed(&error) => {
                return Err(TopologyError::ShardsChanged {
                    shards: settings.shards,
                    found: other,
                });
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// RabbitMQ's 406, which `queue.delete` with `if-empty` / `if-unused`
/// answers for a queue that holds messages or has consumers.
fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406)
}

async fn declare_event_queue(
    channel: &Channel,
    settings: &AmqpSettings,
    queue: &str,
) -> lapin::Result<()> {
    let mut arguments = queue_type_arguments(settings);
    if settings.queue_type == QueueType::Quorum {
        arguments.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongUInt(DELIVERY_LIMIT),
        );
    }
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(settings.dead_letter_queue.as_str().into()),
    );
    if settings.shards > 1 {
        arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        if settings.queue_type == QueueType::Quorum {
            arguments.insert(
                "x-queue-leader-locator".into(),
                AMQPValue::LongString("balanced".into()),
            );
        }
    }
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments)
        .await?;
    Ok(())
}

/// Deletes the event queues, the dead-letter queue (with whatever they
/// hold) and the counts exchange: for tests and benchmarks that made their
/// own.
pub async fn delete_topology(channel: &Channel, settings: &AmqpSettings) -> lapin::Result<()> {
    let mut queues = event_queues(settings);
    queues.push(settings.dead_letter_queue.clone());
    for queue in queues {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    channel
        .exchange_delete(
            settings.counts_exchange.as_str().into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await
}

/// Messages ready in `queue` (not those delivered and unacked), by a passive
/// declare: fails if the queue does not exist, and then closes `channel`.
pub async fn queue_depth(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    Ok(passive_declare(channel, queue).await?.message_count())
}

/// Consumers subscribed to `queue` (passive declare, like [`queue_depth`]).
pub async fn queue_consumers(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    Ok(passive_declare(channel, queue).await?.consumer_count())
}

async fn passive_declare(channel: &Channel, queue: &str) -> lapin::Result<lapin::Queue> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable().passive(),
            FieldTable::default(),
        )
        .await
}

/// Classic queues' storage version (`x-queue-version`): version 2 writes
/// less per persistent message than version 1 (RabbitMQ 3.10's default),
/// which the broker, the busiest part of every like, feels: 0.84× the
/// likes/s with version 1 (BENCHMARKS.md). RabbitMQ refuses to redeclare a
/// queue with another version: a queue made as version 1 must be drained and
/// deleted first.
pub const CLASSIC_QUEUE_VERSION: i32 = 2;

/// Quorum queues' deliveries of one message before it is dead-lettered.
/// The worker retries failing batches in place, so an outage does not use
/// these up; only a message that keeps failing does.
pub const DELIVERY_LIMIT: u32 = 20;

/// The queue type, and for classic queues their storage version.
fn queue_type_arguments(settings: &AmqpSettings) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(settings.queue_type.as_str().into()),
    );
    if settings.queue_type == QueueType::Classic {
        arguments.insert(
            "x-queue-version".into(),
            AMQPValue::LongInt(CLASSIC_QUEUE_VERSION),
        );
    }
    arguments
}

#[cfg(test)]
mod tests {
    use super::{node_urls, shard_of};

    #[test]
    fn a_post_always_has_the_same_shard_and_posts_spread_over_all() {
        assert_eq!(shard_of("anything", 1), 0);
        // Fixed values: the hash must never change between versions.
        assert_eq!(shard_of("", 4), (0xcbf2_9ce4_8422_2325_u64 % 4) as u16);
        assert_eq!(shard_of("hot", 4), shard_of("hot", 4));
        let mut seen = [0_u32; 4];
        for i in 0..4000 {
            seen[usize::from(shard_of(&format!("post-{i}"), 4))] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }

    #[test]
    fn a_url_list_is_split_on_commas() {
        let urls: Vec<_> = node_urls("amqp://a:5672/%2f, amqp://b:5672/%2f,,").collect();
        assert_eq!(urls, ["amqp://a:5672/%2f", "amqp://b:5672/%2f"]);
        assert_eq!(node_urls("amqp://only").count(), 1);
    }
}
