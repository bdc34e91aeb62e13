//! Publishes like events to RabbitMQ and waits for the broker's confirm.
//!
//! A small, fixed set of channels in confirm mode is opened once and shared
//! by all requests (round robin); each channel carries many unconfirmed
//! publishes at once, so a request costs one frame and one wait, never a
//! channel of its own. Messages are persistent, `mandatory` (an unroutable
//! message comes back instead of silently vanishing), and typed
//! `application/x-protobuf` with the event id as message id.

use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use likes_common::{amqp, config::AmqpSettings};
use likes_proto::{LIKE_EVENT_CONTENT_TYPE, pb::LikeEvent};
use prost::Message;
use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

/// Why an event may not be stored; in every case the caller may retry.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("no publisher confirm within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("the broker could not route the message to queue {0}")]
    Unroutable(String),
}

impl PublishError {
    /// A short reason safe to show callers: no addresses, no credentials.
    pub fn caller_reason(&self) -> &'static str {
        match self {
            Self::Broker(_) => "message broker unreachable",
            Self::ConfirmTimeout(_) => "message broker did not confirm in time",
            Self::Nacked => "message broker refused the message",
            Self::Unroutable(_) => "event queue missing",
        }
    }
}

/// The api's link to RabbitMQ.
#[derive(Debug)]
pub struct Publisher {
    connection: Connection,
    channels: Vec<Channel>,
    next_channel: AtomicUsize,
    queue: String,
    confirm_timeout: Duration,
}

impl Publisher {
    /// Connects, declares the topology and opens `channels` confirm channels.
    pub async fn connect(
        settings: &AmqpSettings,
        channels: usize,
        confirm_timeout: Duration,
    ) -> Result<Self, PublishError> {
        let connection = amqp::connect(settings, "likes-api").await?;
        let mut opened = Vec::with_capacity(channels);
        for _ in 0..channels {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            opened.push(channel);
        }
        amqp::declare_topology(&opened[0], settings).await?;
        Ok(Self {
            connection,
            channels: opened,
            next_channel: AtomicUsize::new(0),
            queue: settings.queue.clone(),
            confirm_timeout,
        })
    }

    /// Publishes `event` and returns once the broker confirmed it stored it.
    pub async fn publish(&self, event: &LikeEvent) -> Result<(), PublishError> {
        let payload = event.encode_to_vec();
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(LIKE_EVENT_CONTENT_TYPE.into())
            .with_message_id(event.event_id.as_str().into());
        let channel =
            &self.channels[self.next_channel.fetch_add(1, Ordering::Relaxed) % self.channels.len()];
        let confirmed = async {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &payload,
                    properties,
                )
                .await?;
            confirm.await
        };
        match tokio::time::timeout(self.confirm_timeout, confirmed).await {
            Err(_elapsed) => Err(PublishError::ConfirmTimeout(self.confirm_timeout)),
            Ok(Err(error)) => Err(error.into()),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_returned)))) => {
                Err(PublishError::Unroutable(self.queue.clone()))
            }
            // NotRequested cannot happen on a channel in confirm mode; treat
            // it as a refusal rather than claim the message is stored.
            Ok(Ok(Confirmation::Nack(_) | Confirmation::NotRequested)) => Err(PublishError::Nacked),
        }
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Closes the channels and the connection; confirms still awaited by
    /// in-flight requests must have arrived before this is called.
    pub async fn close(&self) {
        for channel in &self.channels {
            let _ = channel.close(200, "shutdown".into()).await;
        }
        if let Err(error) = self.connection.close(200, "shutdown".into()).await {
            tracing::debug!(%error, "closing the AMQP connection");
        }
    }
}
