//! Count changes, from the workers to every api: after each committed
//! batch a worker publishes the new count of every post it changed (one
//! `likes.events.v1.CountChanges` message) to the fanout exchange
//! `amqp.counts_exchange`; each api reads them through a queue of its own
//! (server-named, exclusive, auto-delete) to keep its count cache current.
//!
//! Best effort by design: messages are transient, published without a
//! confirm and consumed without acks, and an api's queue keeps at most
//! [`QUEUE_MAX_MESSAGES`] (dropping the oldest). A lost change costs an api
//! freshness until its cache entry expires, never a wrong count: every
//! change carries its post's version, so an older change never replaces a
//! newer count.

use futures_util::{Stream, StreamExt};
use lapin::{
    BasicProperties, Channel, Connection, ExchangeKind,
    options::{
        BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use likes_common::config::AmqpSettings;
use likes_proto::events::{CountChange, CountChanges};
use prost::Message;

/// Content type of a counts message.
pub const CONTENT_TYPE: &str = "application/x-protobuf; proto=likes.events.v1.CountChanges";

/// Most messages an api's counts queue holds; past it the broker drops the
/// oldest. An api that falls this far behind reads newer changes first, and
/// what it dropped its cache's expiry makes up for.
pub const QUEUE_MAX_MESSAGES: u32 = 10_000;

/// Declares the counts exchange (durable fanout; idempotent).
pub async fn declare_exchange(channel: &Channel, settings: &AmqpSettings) -> lapin::Result<()> {
    channel
        .exchange_declare(
            settings.counts_exchange.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Publishes count changes on a channel of its own (not in confirm mode),
/// opened on first use and again once the broker closed it: RabbitMQ closes
/// a channel that publishes to a missing exchange, so a deleted exchange is
/// declared again by the next publish.
#[derive(Debug)]
pub struct Publisher<'a> {
    connection: &'a Connection,
    settings: &'a AmqpSettings,
    channel: tokio::sync::Mutex<Option<Channel>>,
}

impl<'a> Publisher<'a> {
    pub fn new(connection: &'a Connection, settings: &'a AmqpSettings) -> Self {
        Self {
            connection,
            settings,
            channel: tokio::sync::Mutex::new(None),
        }
    }

    /// Publishes `changes`, transient, without waiting for the broker.
    pub async fn publish(&self, changes: Vec<CountChange>) -> lapin::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let channel = {
            let mut current = self.channel.lock().await;
            match current.as_ref() {
                Some(channel) if channel.status().connected() => channel.clone(),
                _ => {
                    let channel = self.connection.create_channel().await?;
                    declare_exchange(&channel, self.settings).await?;
                    current.insert(channel).clone()
                }
            }
        };
        publish(&channel, self.settings, changes).await
    }
}

/// Publishes `changes` to the counts exchange, transient and without
/// waiting for anything: `channel` should not be in confirm mode.
async fn publish(
    channel: &Channel,
    settings: &AmqpSettings,
    changes: Vec<CountChange>,
) -> lapin::Result<()> {
    let body = CountChanges { changes }.encode_to_vec();
    channel
        .basic_publish(
            settings.counts_exchange.as_str().into(),
            "".into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default()
                .with_delivery_mode(1)
                .with_content_type(CONTENT_TYPE.into()),
        )
        .await?;
    Ok(())
}

/// Subscribes to the counts exchange on a channel of its own of
/// `connection`: once this returns, every change published reaches the
/// stream, in order. Messages that do not decode are skipped (logged).
/// The stream ends, or yields an error, when the channel or connection
/// fails.
pub async fn subscribe(
    connection: &Connection,
    settings: &AmqpSettings,
) -> lapin::Result<impl Stream<Item = lapin::Result<Vec<CountChange>>> + Send + Unpin + 'static> {
    let channel = connection.create_channel().await?;
    declare_exchange(&channel, settings).await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-max-length".into(),
        AMQPValue::LongUInt(QUEUE_MAX_MESSAGES),
    );
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            settings.counts_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(consumer
        .filter_map(|delivery| {
            std::future::ready(match delivery {
                Err(error) => Some(Err(error)),
                Ok(delivery) => match CountChanges::decode(delivery.data.as_slice()) {
                    Ok(changes) => Some(Ok(changes.changes)),
                    Err(error) => {
                        tracing::warn!(%error, "skipping a counts message that does not decode");
                        None
                    }
                },
            })
        })
        .boxed())
}
