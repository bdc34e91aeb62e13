//! The load test's own use of the AMQP client, in one place: the event
//! queue's depth (through `likes-queue`), and the ceiling's bare publisher
//! with a window of confirms and its consumer, which measure what RabbitMQ
//! can do without the service's code and so talk to lapin directly.

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, PublisherConfirm,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueuePurgeOptions,
    },
    types::FieldTable,
};
use likes_common::config::AmqpSettings;
use std::{collections::VecDeque, time::Duration};

/// Messages ready in the event queue, over a connection of its own.
#[derive(Debug)]
pub struct QueueProbe {
    settings: AmqpSettings,
    link: Option<(Connection, Channel)>,
}

impl QueueProbe {
    pub fn new(settings: &AmqpSettings) -> Self {
        Self {
            settings: settings.clone(),
            link: None,
        }
    }

    /// Ready messages (not those delivered and unacked), or `None` if the
    /// broker could not tell; the next call reconnects.
    pub async fn depth(&mut self) -> Option<u32> {
        match self.try_depth().await {
            Ok(depth) => Some(depth),
            Err(error) => {
                tracing::debug!(%error, "cannot read the queue depth");
                self.link = None;
                None
            }
        }
    }

    async fn try_depth(&mut self) -> anyhow::Result<u32> {
        if self.link.is_none() {
            let connection = likes_queue::connect(&self.settings, "likes-loadtest-depth").await?;
            let channel = connection.create_channel().await?;
            self.link = Some((connection, channel));
        }
        let (_, channel) = self.link.as_ref().expect("connected just above");
        let mut ready = 0;
        for queue in likes_queue::event_queues(&self.settings) {
            ready += likes_queue::queue_depth(channel, &queue).await?;
        }
        Ok(ready)
    }

    /// Closes the connection, if open.
    pub async fn close(mut self) {
        if let Some((connection, _)) = self.link.take() {
            let _ = connection.close(200, "done".into()).await;
        }
    }
}

/// Declares the event queue of `settings` (as the service does), purged.
pub async fn declare_purged(
    connection: &Connection,
    channel: &Channel,
    settings: &AmqpSettings,
) -> anyhow::Result<()> {
    likes_queue::declare_topology(connection, settings).await?;
    channel
        .queue_purge(settings.queue.as_str().into(), QueuePurgeOptions::default())
        .await?;
    Ok(())
}

/// A connection with one channel.
pub async fn open(settings: &AmqpSettings, role: &str) -> anyhow::Result<(Connection, Channel)> {
    let connection = likes_queue::connect(settings, role).await?;
    let channel = connection.create_channel().await?;
    Ok((connection, channel))
}

/// Publishes `bodies` as persistent messages to `queue`, keeping at most
/// `in_flight` unconfirmed, and fails on a nack. Returns the messages sent.
pub async fn publish_confirmed(
    channel: &Channel,
    queue: &str,
    bodies: impl Iterator<Item = Vec<u8>>,
    in_flight: usize,
) -> anyhow::Result<u64> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(likes_queue::codec::EVENT_CONTENT_TYPE.into());
    let mut pending: VecDeque<PublisherConfirm> = VecDeque::with_capacity(in_flight + 1);
    let mut sent = 0;
    for body in bodies {
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                properties.clone(),
            )
            .await?;
        pending.push_back(confirm);
        sent += 1;
        if pending.len() >= in_flight {
            let oldest = pending.pop_front().expect("the window is not empty");
            anyhow::ensure!(oldest.await?.is_ack(), "the broker nacked a message");
        }
    }
    while let Some(confirm) = pending.pop_front() {
        anyhow::ensure!(confirm.await?.is_ack(), "the broker nacked a message");
    }
    Ok(sent)
}

/// A consumer with manual acks and `prefetch` unacked deliveries.
#[derive(Debug)]
pub struct Consumer {
    consumer: lapin::Consumer,
}

impl Consumer {
    pub async fn start(channel: &Channel, queue: &str, prefetch: u16) -> anyhow::Result<Self> {
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                "likes-loadtest-ceiling".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self { consumer })
    }

    /// The next delivery, or `None` if none came within `wait`.
    pub async fn next(&mut self, wait: Duration) -> anyhow::Result<Option<Delivery>> {
        match tokio::time::timeout(wait, self.consumer.next()).await {
            Ok(Some(delivery)) => Ok(Some(delivery?)),
            Ok(None) => anyhow::bail!("the broker closed the consumer"),
            Err(_) => Ok(None),
        }
    }
}

/// Acks `delivery` and every earlier one on its channel.
pub async fn ack_up_to(delivery: &Delivery) -> anyhow::Result<()> {
    delivery.ack(BasicAckOptions { multiple: true }).await?;
    Ok(())
}
