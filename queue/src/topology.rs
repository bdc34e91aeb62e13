//! Connecting to RabbitMQ and declaring the topology. Declaring is
//! idempotent, so every process does it at start and the order in which they
//! start does not matter.
//!
//! Topology: a durable event queue (default `likes.events`) whose dead
//! letters go through the default exchange to a durable dead-letter queue
//! (default `likes.dead`). Messages are published to the default exchange
//! with the queue name as routing key, so no exchange needs declaring.

use lapin::{
    Channel, Connection, ConnectionProperties,
    options::{QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable},
};
use likes_common::config::{AmqpSettings, QueueType, SecretUrl};

/// Opens a connection named after its role and queue (`likes-api
/// likes.events`), as shown in the management UI and `rabbitmqctl`.
///
/// `amqp.url` may list several comma-separated URLs, the nodes of a
/// cluster: they are tried in order and the first that answers is used, so
/// when a node is lost, the reconnect moves on to the next one.
pub async fn connect(settings: &AmqpSettings, role: &str) -> lapin::Result<Connection> {
    let name = format!("{role} {}", settings.queue);
    let mut last_error = None;
    for url in node_urls(settings.url.expose()) {
        let properties = ConnectionProperties::default().with_connection_name(name.as_str().into());
        match Connection::connect(url, properties).await {
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

/// The URLs of `amqp.url`, split on commas.
pub fn node_urls(urls: &str) -> impl Iterator<Item = &str> {
    urls.split(',').map(str::trim).filter(|url| !url.is_empty())
}

/// Declares the dead-letter queue, then the event queue that dead-letters into
/// it. Redeclaring with the same arguments is harmless; with different ones
/// the broker refuses (PRECONDITION_FAILED), which is reported, not hidden.
pub async fn declare_topology(channel: &Channel, settings: &AmqpSettings) -> lapin::Result<()> {
    channel
        .queue_declare(
            settings.dead_letter_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            queue_type_arguments(settings),
        )
        .await?;
    let mut arguments = queue_type_arguments(settings);
    if settings.queue_type == QueueType::Quorum {
        arguments.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongUInt(settings.delivery_limit),
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
    channel
        .queue_declare(
            settings.queue.as_str().into(),
            QueueDeclareOptions::durable(),
            arguments,
        )
        .await?;
    Ok(())
}

/// Deletes the event queue and the dead-letter queue with whatever they
/// hold: for tests and benchmarks that made their own.
pub async fn delete_topology(channel: &Channel, settings: &AmqpSettings) -> lapin::Result<()> {
    for queue in [&settings.queue, &settings.dead_letter_queue] {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    Ok(())
}

/// Messages ready in `queue` (not those delivered and unacked), by a passive
/// declare: fails if the queue does not exist, and then closes `channel`.
pub async fn queue_depth(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable().passive(),
            FieldTable::default(),
        )
        .await?;
    Ok(declared.message_count())
}

/// The queue type, and for classic queues their storage version: version 2
/// writes less per persistent message than version 1 (the default before
/// RabbitMQ 3.13), which the broker, the busiest part of every like, feels.
fn queue_type_arguments(settings: &AmqpSettings) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(settings.queue_type.as_str().into()),
    );
    if settings.queue_type == QueueType::Classic {
        arguments.insert(
            "x-queue-version".into(),
            AMQPValue::LongInt(i32::from(settings.classic_queue_version)),
        );
    }
    arguments
}

#[cfg(test)]
mod tests {
    use super::node_urls;

    #[test]
    fn a_url_list_is_split_on_commas() {
        let urls: Vec<_> = node_urls("amqp://a:5672/%2f, amqp://b:5672/%2f,,").collect();
        assert_eq!(urls, ["amqp://a:5672/%2f", "amqp://b:5672/%2f"]);
        assert_eq!(node_urls("amqp://only").count(), 1);
    }
}
