//! The RabbitMQ boundary of the likes service, both ends of the queue: the
//! api publishes through it, the worker consumes and dead-letters through
//! it, `likes-dlq` inspects through it. The service's crates speak AMQP only
//! through it (the test kit and the load test also use lapin directly, to
//! inspect and to break things).
//!
//! - [`topology`]: connecting over the node list, declaring the queues
//!   (one per shard), routing a post to its shard, reading a queue's depth.
//! - [`codec`]: the two kinds of message on the event queue (one
//!   `LikeEvent`, or a `LikeEventBatch` envelope of many), their properties
//!   and the header names the service sets.
//! - [`confirm`]: publishing one persistent message and waiting for the
//!   broker's confirm.
//! - [`consume`]: subscribing to an event queue, acking and requeueing.
//! - [`counts`]: the count changes workers push to every api.
//! - [`dead_letters`]: moving what can never be written to the dead-letter
//!   queue, and listing and replaying it.
//! - [`backoff`]: the capped exponential backoff between reconnects.
//! - [`tls`]: the certificates of `amqps://` nodes and the errors naming
//!   a node whose certificate was refused.

pub mod backoff;
pub mod codec;
pub mod confirm;
pub mod consume;
pub mod counts;
pub mod dead_letters;
pub mod tls;
pub mod topology;

pub use confirm::{PublishError, confirm_channel, publish_confirmed};
pub use lapin::{
    BasicProperties, Channel, Connection, Consumer, Error as AmqpError, message::Delivery,
    types::FieldTable,
};
pub use topology::{
    ConnectionEvent, TopologyError, close, connect, connection_events, declare_topology,
    delete_topology, event_queues, queue_consumers, queue_depth, shard_of, shard_queue,
};
