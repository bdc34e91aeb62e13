//! What travels on the event queue, and how to tell its two kinds apart.
//!
//! | kind | content type | body | message id |
//! |---|---|---|---|
//! | one event | `application/x-protobuf` (or none) | `likes.events.v1.LikeEvent` | the event id |
//! | envelope | `application/x-protobuf; proto=likes.events.v1.LikeEventBatch` | `likes.events.v1.LikeEventBatch` | the envelope's own UUIDv7 |
//!
//! Until 0.2.0 the messages were `likes.v1.LikeEvent` and
//! `likes.v1.LikeEventBatch`, with the same fields: an envelope marked with
//! the old name ([`LEGACY_ENVELOPE_CONTENT_TYPE`]) is still read as one, so
//! messages in flight during an upgrade are written like any other.
//!
//! The api publishes envelopes: every event waiting while its previous
//! message awaited a confirm goes into the next one. Single events come from
//! `likes-dlq replay`, from messages queued before envelopes existed, and
//! from other producers; the worker reads both kinds, interleaved in one
//! queue. A message whose content type is not the envelope's is read as one
//! event, so producers that set no content type keep working. Every message
//! is persistent (delivery mode 2).
//!
//! Headers the service sets on dead letters: [`REASON_HEADER`] (why),
//! [`QUEUE_HEADER`] (where it came from), [`ENVELOPE_HEADER`] (the envelope an
//! event was taken out of) and, on replay, [`REPLAYS_HEADER`]. When tracing
//! is on, the api's envelopes carry W3C trace context
//! ([`TRACEPARENT_HEADER`], and `tracestate` when set), written and read
//! through [`HeaderInjector`] and [`HeaderExtractor`]; without tracing a
//! message has no headers at all.

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable},
};
use likes_proto::events::{LikeEvent, LikeEventBatch};
use prost::Message;

/// Content type of a message holding one `LikeEvent`.
pub const EVENT_CONTENT_TYPE: &str = "application/x-protobuf";
/// Content type of a message holding a `LikeEventBatch` envelope.
pub const ENVELOPE_CONTENT_TYPE: &str =
    "application/x-protobuf; proto=likes.events.v1.LikeEventBatch";
/// Content type of an envelope published before 0.2.0, when the message
/// lived in the public `likes.v1` package.
pub const LEGACY_ENVELOPE_CONTENT_TYPE: &str =
    "application/x-protobuf; proto=likes.v1.LikeEventBatch";

/// Header on every dead letter: why it can never be written.
pub const REASON_HEADER: &str = "x-likes-error";
/// Header on every dead letter: the event queue it was taken from.
pub const QUEUE_HEADER: &str = "x-likes-queue";
/// Header on a dead-lettered event taken out of an envelope: the envelope's
/// message id.
pub const ENVELOPE_HEADER: &str = "x-likes-envelope";
/// Header counting how often a dead letter was replayed.
pub const REPLAYS_HEADER: &str = "x-likes-replays";

/// Header of W3C trace context: the `traceparent` of the span that
/// published the message (<https://www.w3.org/TR/trace-context/>).
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Writes propagated fields (`traceparent`, `tracestate`) into a message's
/// headers table, as long strings.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut FieldTable);

impl opentelemetry::propagation::Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0
            .insert(key.into(), AMQPValue::LongString(value.into()));
    }
}

/// Reads propagated fields from a message's headers table; a value that is
/// not a string (or not UTF-8) reads as absent.
#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a FieldTable);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(value) => std::str::from_utf8(value.as_bytes()).ok(),
            AMQPValue::ShortString(value) => Some(value.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(|key| key.as_str()).collect()
    }
}

/// The two kinds of message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One `LikeEvent`.
    Event,
    /// A `LikeEventBatch` of any number of events.
    Envelope,
}

impl Kind {
    /// The kind a message says it is, by its content type.
    pub fn of(properties: &BasicProperties) -> Self {
        match properties.content_type() {
            Some(content_type)
                if [ENVELOPE_CONTENT_TYPE, LEGACY_ENVELOPE_CONTENT_TYPE]
                    .contains(&content_type.as_str()) =>
            {
                Self::Envelope
            }
            _ => Self::Event,
        }
    }
}

/// A message's events, in the order they were packed.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub kind: Kind,
    pub events: Vec<LikeEvent>,
}

/// Decodes a message of either kind.
pub fn decode(properties: &BasicProperties, body: &[u8]) -> Result<Decoded, prost::DecodeError> {
    let kind = Kind::of(properties);
    let events = match kind {
        Kind::Event => vec![LikeEvent::decode(body)?],
        Kind::Envelope => LikeEventBatch::decode(body)?.events,
    };
    Ok(Decoded { kind, events })
}

/// The body of an envelope holding `events`.
pub fn encode_envelope(events: &[LikeEvent]) -> Vec<u8> {
    let mut body = Vec::with_capacity(envelope_len(events));
    for event in events {
        prost::encoding::message::encode(1, event, &mut body);
    }
    body
}

/// The encoded size of an envelope holding `events`.
pub fn envelope_len(events: &[LikeEvent]) -> usize {
    events.iter().map(event_len_in_envelope).sum()
}

/// What one event adds to an envelope's size: its field key, its length
/// prefix and itself.
pub fn event_len_in_envelope(event: &LikeEvent) -> usize {
    let len = event.encoded_len();
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Properties of a message holding one event.
pub fn event_properties(event_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(EVENT_CONTENT_TYPE.into())
        .with_message_id(event_id.into())
}

/// Properties of an envelope with message id `envelope_id`.
pub fn envelope_properties(envelope_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ENVELOPE_CONTENT_TYPE.into())
        .with_message_id(envelope_id.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u32) -> LikeEvent {
        LikeEvent {
            event_id: format!("id-{n}"),
            post_id: format!("p{n}"),
            user_id: format!("u{n}"),
            action: 1,
            occurred_at_micros: i64::from(n),
        }
    }

    #[test]
    fn an_envelope_round_trips_its_events_in_order() {
        let events: Vec<_> = (0..300).map(event).collect();
        let body = encode_envelope(&events);
        assert_eq!(body.len(), envelope_len(&events));
        assert_eq!(
            body,
            LikeEventBatch {
                events: events.clone()
            }
            .encode_to_vec(),
            "the same bytes prost writes for the message"
        );
        let decoded = decode(&envelope_properties("e"), &body).expect("decodes");
        assert_eq!(decoded.kind, Kind::Envelope);
        assert_eq!(decoded.events, events);
    }

    #[test]
    fn an_envelope_marked_with_the_old_type_name_is_read_as_one() {
        let events: Vec<_> = (0..3).map(event).collect();
        let legacy = BasicProperties::default()
            .with_content_type(LEGACY_ENVELOPE_CONTENT_TYPE.into())
            .with_message_id("e".into());
        let decoded = decode(&legacy, &encode_envelope(&events)).expect("decodes");
        assert_eq!(decoded.kind, Kind::Envelope);
        assert_eq!(decoded.events, events);
    }

    #[test]
    fn a_single_event_is_read_with_or_without_a_content_type() {
        let one = event(7);
        let body = one.encode_to_vec();
        for properties in [event_properties("id-7"), BasicProperties::default()] {
            let decoded = decode(&properties, &body).expect("decodes");
            assert_eq!(decoded.kind, Kind::Event);
            assert_eq!(decoded.events, vec![one.clone()]);
        }
    }

    #[test]
    fn garbage_does_not_decode_as_either_kind() {
        let garbage = b"\xff\xff\xff garbage";
        assert!(decode(&event_properties("x"), garbage).is_err());
        assert!(decode(&envelope_properties("x"), garbage).is_err());
    }

    #[test]
    fn trace_headers_are_written_and_read_as_strings() {
        use opentelemetry::propagation::{Extractor, Injector};
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut headers = FieldTable::default();
        HeaderInjector(&mut headers).set(TRACEPARENT_HEADER, parent.to_owned());
        assert!(matches!(
            headers.inner().get(TRACEPARENT_HEADER),
            Some(AMQPValue::LongString(_))
        ));
        headers.insert("x-number".into(), AMQPValue::LongUInt(7));
        let read = HeaderExtractor(&headers);
        assert_eq!(read.get(TRACEPARENT_HEADER), Some(parent));
        assert_eq!(read.get("x-number"), None, "not a string");
        assert_eq!(read.get("tracestate"), None);
        assert_eq!(read.keys(), vec![TRACEPARENT_HEADER, "x-number"]);
    }

    #[test]
    fn properties_mark_the_kinds_apart_and_are_persistent() {
        let single = event_properties("a");
        let envelope = envelope_properties("b");
        assert_eq!(Kind::of(&single), Kind::Event);
        assert_eq!(Kind::of(&envelope), Kind::Envelope);
        for properties in [single, envelope] {
            assert_eq!(*properties.delivery_mode(), Some(2));
        }
    }
}
