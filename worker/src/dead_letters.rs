//! Inspecting and replaying the dead-letter queue, for `likes-dlq`.
//!
//! Messages are fetched with `basic.get` and held unacked while the command
//! works, so each one is seen once per run; those not replayed are handed
//! back (nack with requeue) at the end and stay in the dead-letter queue.

use crate::event::decode;
use lapin::{
    BasicProperties, Channel, Confirmation,
    message::BasicGetMessage,
    options::{
        BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use likes_common::config::AmqpSettings;

/// Header the worker sets on every message it dead-letters: why.
pub const REASON_HEADER: &str = "x-likes-error";
/// Header counting how often a message was replayed.
pub const REPLAYS_HEADER: &str = "x-likes-replays";

/// One dead letter, as shown to an operator.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message_id: Option<String>,
    pub reason: Option<String>,
    pub replays: u32,
    pub body_len: usize,
    /// `post/user ACTION @micros`, when the body decodes.
    pub event: Option<String>,
    /// Every header, rendered.
    pub headers: Vec<(String, String)>,
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayOutcome {
    pub replayed: u32,
    pub kept: u32,
}

/// Up to `limit` dead letters, oldest first, left in the queue.
pub async fn list(
    channel: &Channel,
    settings: &AmqpSettings,
    limit: u32,
) -> lapin::Result<Vec<DeadLetter>> {
    let available = depth(channel, &settings.dead_letter_queue).await?;
    let mut seen = Vec::new();
    let mut last_tag = None;
    for _ in 0..available.min(limit) {
        let Some(message) = get(channel, &settings.dead_letter_queue).await? else {
            break;
        };
        last_tag = Some(message.delivery.delivery_tag);
        seen.push(describe(&message));
    }
    if let Some(tag) = last_tag {
        requeue_through(channel, tag).await?;
    }
    Ok(seen)
}

/// Moves dead letters back to the event queue: those whose message id is
/// `only` (or all when `None`), at most `limit`. Each copy carries its
/// replay count; the original is acked only after the broker confirmed the
/// copy, so nothing is lost if the command dies half way.
pub async fn replay(
    channel: &Channel,
    settings: &AmqpSettings,
    only: Option<&str>,
    limit: u32,
) -> lapin::Result<ReplayOutcome> {
    let available = depth(channel, &settings.dead_letter_queue).await?;
    let mut outcome = ReplayOutcome::default();
    let mut last_kept = None;
    for _ in 0..available {
        let Some(message) = get(channel, &settings.dead_letter_queue).await? else {
            break;
        };
        let tag = message.delivery.delivery_tag;
        let id = message
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str());
        let wanted = only.is_none_or(|only| id == Some(only));
        if !wanted || outcome.replayed >= limit {
            outcome.kept += 1;
            last_kept = Some(tag);
            continue;
        }
        let replays = describe(&message).replays + 1;
        let mut headers = message
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        headers.insert(REPLAYS_HEADER.into(), AMQPValue::LongUInt(replays));
        let properties: BasicProperties = message
            .delivery
            .properties
            .clone()
            .with_delivery_mode(2)
            .with_headers(headers);
        let confirm = channel
            .basic_publish(
                "".into(),
                settings.queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &message.delivery.data,
                properties,
            )
            .await?
            .await?;
        if matches!(confirm, Confirmation::Ack(None)) {
            channel
                .basic_ack(tag, BasicAckOptions { multiple: false })
                .await?;
            outcome.replayed += 1;
        } else {
            outcome.kept += 1;
            last_kept = Some(tag);
        }
    }
    if let Some(tag) = last_kept {
        requeue_through(channel, tag).await?;
    }
    Ok(outcome)
}

async fn depth(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::durable().passive(),
            FieldTable::default(),
        )
        .await?;
    Ok(declared.message_count())
}

async fn get(channel: &Channel, queue: &str) -> lapin::Result<Option<BasicGetMessage>> {
    channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
}

/// Hands back every message still held, up to `tag`.
async fn requeue_through(channel: &Channel, tag: u64) -> lapin::Result<()> {
    channel
        .basic_nack(
            tag,
            BasicNackOptions {
                multiple: true,
                requeue: true,
            },
        )
        .await
}

fn describe(message: &BasicGetMessage) -> DeadLetter {
    let properties = &message.delivery.properties;
    let headers: Vec<(String, String)> = properties
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .map(|(k, v)| (k.to_string(), render(v)))
                .collect()
        })
        .unwrap_or_default();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    DeadLetter {
        message_id: properties.message_id().as_ref().map(|s| s.to_string()),
        reason: header(REASON_HEADER),
        replays: header(REPLAYS_HEADER)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        body_len: message.delivery.data.len(),
        event: decode(&message.delivery.data).ok().map(|c| {
            format!(
                "{}/{} {:?} @{}",
                c.post_id, c.user_id, c.action, c.occurred_at_micros
            )
        }),
        headers,
    }
}

fn render(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => s.to_string(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}
