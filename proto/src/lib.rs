//! The gRPC and queue contract of the likes service, generated from
//! `proto/likes/v1/likes.proto` at build time.
//!
//! `pb` holds the messages, the `LikeService` server and client, and the
//! `LikeEvent` / `LikeEventBatch` messages that travel through RabbitMQ (their
//! wire format on the queue is `likes-queue`'s codec). [`FILE_DESCRIPTOR_SET`] is what
//! server reflection serves, so grpcurl works without the .proto file.

pub mod codec;

/// Generated code for package `likes.v1`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod pb {
    tonic::include_proto!("likes.v1");
}

/// Generated code for package `likes.events.v1`: what the service's own
/// processes tell each other (the count changes workers push to the apis).
#[allow(missing_debug_implementations, clippy::all)]
pub mod events {
    tonic::include_proto!("likes.events.v1");
}

/// Encoded `FileDescriptorSet` of `likes.proto`, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("likes_descriptor");
