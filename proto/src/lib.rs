//! The gRPC and queue contract of the likes service, generated at build time.
//!
//! `pb` is the public API (`proto/likes/v1/likes.proto`): its messages and
//! the `LikeService` server and client. `events` holds what the service's
//! processes tell each other: the `LikeEvent` / `LikeEventBatch` messages
//! that travel through RabbitMQ (their wire format on the queue is
//! `likes-queue`'s codec) and the count changes workers push.
//! [`FILE_DESCRIPTOR_SET`] is what server reflection serves (the public API
//! only), so grpcurl works without the .proto file.

pub mod codec;

/// Generated code for package `likes.v1`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod pb {
    tonic::include_proto!("likes.v1");
}

/// Generated code for package `likes.events.v1`: what the service's own
/// processes tell each other (the events on the queue, the count changes
/// workers push to the apis).
#[allow(missing_debug_implementations, clippy::all)]
pub mod events {
    tonic::include_proto!("likes.events.v1");
}

/// Encoded `FileDescriptorSet` of `likes.proto`, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("likes_descriptor");
