//! Publishing one persistent message and waiting for the broker's confirm:
//! the only way anything in this service puts a message on a queue.
//!
//! Messages go to the default exchange with the queue name as routing key and
//! `mandatory` set, so a message that cannot be routed (its queue was deleted)
//! comes back as a return instead of vanishing, and counts as not stored.
//! The channel must be in confirm mode.

use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use std::time::Duration;

/// Why a message may not be stored; in every case publishing it again is
/// safe, as every write downstream is idempotent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to the broker")]
    NotConnected,
    /// The broker blocked the connection (`connection.blocked`: a memory or
    /// disk alarm); it reads nothing from publishers until it unblocks.
    #[error("the broker blocks publishing: {0}")]
    Blocked(String),
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("no publisher confirm within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("the broker could not route the message to queue {0}")]
    Unroutable(String),
    #[error(transparent)]
    Topology(#[from] std::sync::Arc<crate::TopologyError>),
}

impl From<crate::TopologyError> for PublishError {
    fn from(error: crate::TopologyError) -> Self {
        Self::Topology(std::sync::Arc::new(error))
    }
}

impl PublishError {
    /// A short reason safe to show callers: no addresses, no credentials.
    pub fn caller_reason(&self) -> &'static str {
        match self {
            Self::NotConnected | Self::Broker(_) => "message broker unreachable",
            Self::Blocked(_) => "message broker blocks publishing (resource alarm)",
            Self::ConfirmTimeout(_) => "message broker did not confirm in time",
            Self::Nacked => "message broker refused the message",
            Self::Unroutable(_) | Self::Topology(_) => "event queue missing",
        }
    }
}

/// Opens a channel on `connection` in confirm mode.
pub async fn confirm_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Publishes `body` to `queue` and returns once the broker confirmed that it
/// stored it (for a persistent message in a durable queue: on disk, or on a
/// quorum of nodes).
pub async fn publish_confirmed(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), PublishError> {
    let confirmation = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await?
        .await?;
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_returned)) => Err(PublishError::Unroutable(queue.to_owned())),
        // NotRequested cannot happen on a channel in confirm mode; treat it
        // as a refusal rather than claim the message is stored.
        Confirmation::Nack(_) | Confirmation::NotRequested => Err(PublishError::Nacked),
    }
}
