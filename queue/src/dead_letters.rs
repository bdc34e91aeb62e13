//! The dead-letter queue: what the worker moves there, and how `likes-dlq`
//! lists and replays it.
//!
//! A dead letter is always a copy published to the dead-letter queue and
//! confirmed before the original is acked, so nothing is lost if a process
//! dies half way (at worst a message is both dead-lettered and still queued,
//! and writing it twice changes nothing). A whole message that cannot be
//! decoded is copied as it is; an event that can never be written is copied
//! alone, as a single-event message, even when it came in an envelope (then
//! [`ENVELOPE_HEADER`] names the envelope), so that replaying it touches
//! nothing but that event.
//!
//! `likes-dlq` fetches with `basic.get` and holds what it fetched unacked
//! while it works, so each message is seen once per run; those not replayed
//! are handed back (nack with requeue) at the end and stay in the queue.

use crate::{
    PublishError,
    codec::{self, ENVELOPE_HEADER, Kind, QUEUE_HEADER, REASON_HEADER, REPLAYS_HEADER},
    publish_confirmed, queue_depth,
};
use lapin::{
    BasicProperties, Channel,
    message::{BasicGetMessage, Delivery},
    options::{BasicAckOptions, BasicGetOptions},
    types::{AMQPValue, FieldTable},
};
use likes_common::config::AmqpSettings;
use likes_proto::events::{LikeEvent, like_event};
use prost::Message;

/// Copies a whole message taken from `queue` to the dead-letter queue, with
/// `reason`, and waits for the confirm; the caller then settles the original.
pub async fn dead_letter_message(
    channel: &Channel,
    settings: &AmqpSettings,
    queue: &str,
    delivery: &Delivery,
    reason: &str,
) -> Result<(), PublishError> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    mark(&mut headers, queue, reason);
    let properties = delivery
        .properties
        .clone()
        .with_delivery_mode(2)
        .with_headers(headers);
    publish_confirmed(
        channel,
        &settings.dead_letter_queue,
        &delivery.data,
        properties,
    )
    .await
}

/// Publishes `event`, taken from `queue`, alone to the dead-letter queue as
/// a single-event message, with `reason` and, when it came in one, the
/// envelope's id.
pub async fn dead_letter_event(
    channel: &Channel,
    settings: &AmqpSettings,
    queue: &str,
    event: &LikeEvent,
    envelope_id: Option<&str>,
    reason: &str,
) -> Result<(), PublishError> {
    let mut headers = FieldTable::default();
    mark(&mut headers, queue, reason);
    if let Some(envelope_id) = envelope_id {
        headers.insert(
            ENVELOPE_HEADER.into(),
            AMQPValue::LongString(envelope_id.into()),
        );
    }
    let properties = codec::event_properties(&event.event_id).with_headers(headers);
    publish_confirmed(
        channel,
        &settings.dead_letter_queue,
        &event.encode_to_vec(),
        properties,
    )
    .await
}

fn mark(headers: &mut FieldTable, queue: &str, reason: &str) {
    headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
    headers.insert(QUEUE_HEADER.into(), AMQPValue::LongString(queue.into()));
}

/// One dead letter, as shown to an operator.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message_id: Option<String>,
    pub content_type: Option<String>,
    pub reason: Option<String>,
    pub replays: u32,
    pub body_len: usize,
    /// `post/user ACTION @micros`, or the number of events of an envelope,
    /// when the body decodes.
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
) -> Result<Vec<DeadLetter>, PublishError> {
    let available = queue_depth(channel, &settings.dead_letter_queue).await?;
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
        crate::consume::requeue_through(channel, tag).await?;
    }
    Ok(seen)
}

/// Moves dead letters back to the event queue: those whose message id is
/// `only` (or all when `None`), at most `limit`. Each goes to the shard it
/// came from (its [`QUEUE_HEADER`]) while that is one of today's shards,
/// else to its post's shard. Each copy carries its replay count; the
/// original is acked only after the broker confirmed the copy.
pub async fn replay(
    channel: &Channel,
    settings: &AmqpSettings,
    only: Option<&str>,
    limit: u32,
) -> Result<ReplayOutcome, PublishError> {
    let available = queue_depth(channel, &settings.dead_letter_queue).await?;
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
        let queue = replay_queue(settings, &message.delivery);
        match publish_confirmed(channel, &queue, &message.delivery.data, properties).await {
            Ok(()) => {
                channel
                    .basic_ack(tag, BasicAckOptions { multiple: false })
                    .await?;
                outcome.replayed += 1;
            }
            Err(PublishError::Nacked | PublishError::Unroutable(_)) => {
                outcome.kept += 1;
                last_kept = Some(tag);
            }
            Err(error) => return Err(error),
        }
    }
    if let Some(tag) = last_kept {
        crate::consume::requeue_through(channel, tag).await?;
    }
    Ok(outcome)
}

/// Where a dead letter goes back to.
fn replay_queue(settings: &AmqpSettings, delivery: &Delivery) -> String {
    let shards = crate::event_queues(settings);
    let from = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(QUEUE_HEADER).map(render));
    if let Some(from) = from.filter(|from| shards.contains(from)) {
        return from;
    }
    let shard = codec::decode(&delivery.properties, &delivery.data)
        .ok()
        .and_then(|decoded| decoded.events.first().cloned())
        .map_or(0, |event| crate::shard_of(&event.post_id, settings.shards));
    crate::shard_queue(settings, shard)
}

async fn get(channel: &Channel, queue: &str) -> lapin::Result<Option<BasicGetMessage>> {
    channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
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
        content_type: properties.content_type().as_ref().map(|s| s.to_string()),
        reason: header(REASON_HEADER),
        replays: header(REPLAYS_HEADER)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        body_len: message.delivery.data.len(),
        event: codec::decode(properties, &message.delivery.data)
            .ok()
            .map(|decoded| match (decoded.kind, decoded.events.as_slice()) {
                (Kind::Event, [event]) => summary(event),
                (_, events) => format!("envelope of {} events", events.len()),
            }),
        headers,
    }
}

/// `post/user LIKE @micros`.
fn summary(event: &LikeEvent) -> String {
    let action = like_event::Action::try_from(event.action)
        .map_or_else(|_| format!("action {}", event.action), |a| format!("{a:?}"));
    format!(
        "{}/{} {} @{}",
        event.post_id, event.user_id, action, event.occurred_at_micros
    )
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
