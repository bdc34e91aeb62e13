//! Publishes like events to RabbitMQ and waits for the broker's confirm.
//!
//! A small, fixed set of channels in confirm mode is opened per connection
//! and shared by all requests (round robin); each channel carries many
//! unconfirmed publishes at once, so a request costs one frame and one wait,
//! never a channel of its own. Messages are persistent, `mandatory` (an
//! unroutable message comes back instead of silently vanishing), and typed
//! `application/x-protobuf` with the event id as message id.
//!
//! A supervisor task owns the connection: it connects with capped
//! exponential backoff, declares the topology, and replaces the link when the
//! connection or a channel dies. Meanwhile `publish` fails at once with
//! [`PublishError::NotConnected`] (UNAVAILABLE to the caller), and
//! [`Publisher::connected`] reports the state for the health service.
//! Publishes whose confirm never arrives fail with a broker error or the
//! confirm timeout; none is ever answered OK without a confirm.

use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use likes_common::{amqp, config::AmqpSettings};
use likes_proto::{LIKE_EVENT_CONTENT_TYPE, pb::LikeEvent};
use prost::Message;
use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// How often the supervisor checks that the link is still up.
const LINK_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// Why an event may not be stored; in every case the caller may retry.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to the broker")]
    NotConnected,
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
            Self::NotConnected | Self::Broker(_) => "message broker unreachable",
            Self::ConfirmTimeout(_) => "message broker did not confirm in time",
            Self::Nacked => "message broker refused the message",
            Self::Unroutable(_) => "event queue missing",
        }
    }
}

/// One connection and its confirm channels.
#[derive(Debug)]
struct Link {
    connection: Connection,
    channels: Vec<Channel>,
    next_channel: AtomicUsize,
}

impl Link {
    async fn open(settings: &AmqpSettings, channels: usize) -> lapin::Result<Self> {
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
        })
    }

    fn is_up(&self) -> bool {
        self.connection.status().connected() && self.channels.iter().all(|c| c.status().connected())
    }

    fn channel(&self) -> &Channel {
        let i = self.next_channel.fetch_add(1, Ordering::Relaxed);
        &self.channels[i % self.channels.len()]
    }

    async fn close(&self) {
        for channel in &self.channels {
            let _ = channel.close(200, "shutdown".into()).await;
        }
        if let Err(error) = self.connection.close(200, "shutdown".into()).await {
            tracing::debug!(%error, "closing the AMQP connection");
        }
    }
}

/// The api's link to RabbitMQ, kept up by a supervisor task.
#[derive(Debug)]
pub struct Publisher {
    link: RwLock<Option<Arc<Link>>>,
    broken: Notify,
    connected: watch::Sender<bool>,
    queue: String,
    confirm_timeout: Duration,
}

impl Publisher {
    /// Connects once (so a misconfigured broker fails startup loudly), then
    /// starts the supervisor that reconnects until `shutdown` is cancelled.
    pub async fn start(
        settings: AmqpSettings,
        channels: usize,
        confirm_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, PublishError> {
        let link = Link::open(&settings, channels).await?;
        let publisher = Arc::new(Self {
            link: RwLock::new(Some(Arc::new(link))),
            broken: Notify::new(),
            connected: watch::Sender::new(true),
            queue: settings.queue.clone(),
            confirm_timeout,
        });
        tokio::spawn(Arc::clone(&publisher).supervise(settings, channels, shutdown));
        Ok(publisher)
    }

    /// Follows the connection state: `true` while publishing can succeed.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.subscribe()
    }

    /// Publishes `event` and returns once the broker confirmed it stored it.
    pub async fn publish(&self, event: &LikeEvent) -> Result<(), PublishError> {
        let link = self.current().ok_or(PublishError::NotConnected)?;
        let payload = event.encode_to_vec();
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(LIKE_EVENT_CONTENT_TYPE.into())
            .with_message_id(event.event_id.as_str().into());
        let channel = link.channel();
        let confirmed = async {
            channel
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
                .await?
                .await
        };
        let started = tokio::time::Instant::now();
        let outcome = match tokio::time::timeout(self.confirm_timeout, confirmed).await {
            Err(_elapsed) => Err(PublishError::ConfirmTimeout(self.confirm_timeout)),
            Ok(Err(error)) => {
                self.broken.notify_one();
                Err(error.into())
            }
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_returned)))) => {
                Err(PublishError::Unroutable(self.queue.clone()))
            }
            // NotRequested cannot happen on a channel in confirm mode; treat
            // it as a refusal rather than claim the message is stored.
            Ok(Ok(Confirmation::Nack(_) | Confirmation::NotRequested)) => Err(PublishError::Nacked),
        };
        let label = if outcome.is_ok() {
            "confirmed"
        } else {
            "failed"
        };
        metrics::histogram!("likes_publish_confirm_seconds", "outcome" => label)
            .record(started.elapsed().as_secs_f64());
        outcome
    }

    fn current(&self) -> Option<Arc<Link>> {
        self.link
            .read()
            .expect("the link lock is never held across a panic")
            .clone()
    }

    fn replace(&self, link: Option<Arc<Link>>) -> Option<Arc<Link>> {
        let connected = link.is_some();
        let old = std::mem::replace(
            &mut *self
                .link
                .write()
                .expect("the link lock is never held across a panic"),
            link,
        );
        self.connected.send_replace(connected);
        metrics::gauge!("likes_amqp_connected", "role" => "api")
            .set(f64::from(u8::from(connected)));
        old
    }

    /// Watches the link; when it breaks, drops it and reconnects with capped
    /// exponential backoff. On shutdown, closes the link.
    async fn supervise(
        self: Arc<Self>,
        settings: AmqpSettings,
        channels: usize,
        shutdown: CancellationToken,
    ) {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times();
        loop {
            // Wait for the current link to break.
            loop {
                let up = self.current().is_some_and(|link| link.is_up());
                if !up {
                    break;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = self.broken.notified() => {}
                    () = tokio::time::sleep(LINK_CHECK_INTERVAL) => {}
                }
            }
            if let Some(old) = self.replace(None) {
                tracing::warn!("lost the RabbitMQ connection; reconnecting");
                old.close().await;
            }
            let mut delays = backoff.build();
            loop {
                match Link::open(&settings, channels).await {
                    Ok(link) => {
                        self.replace(Some(Arc::new(link)));
                        metrics::counter!("likes_amqp_reconnects_total", "role" => "api")
                            .increment(1);
                        tracing::info!("reconnected to RabbitMQ");
                        break;
                    }
                    Err(error) => {
                        let delay = delays.next().unwrap_or(Duration::from_secs(5));
                        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot reach RabbitMQ");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
    }

    /// Closes the link; confirms still awaited by in-flight requests must
    /// have arrived before this is called.
    pub async fn close(&self) {
        if let Some(link) = self.replace(None) {
            link.close().await;
        }
    }
}
