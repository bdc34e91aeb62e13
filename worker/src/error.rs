//! Errors that stop a worker's consumer loop.

/// What ended the consumer loop abnormally.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The broker connection or channel failed; the caller may reconnect.
    #[error("RabbitMQ: {0}")]
    Broker(#[from] likes_queue::AmqpError),
    /// A message that can never be written could not be moved to the
    /// dead-letter queue; the batch stays unacked and comes back.
    #[error("cannot dead-letter a message: {0}")]
    DeadLetter(#[from] likes_queue::PublishError),
    /// The queues could not be declared (or belong to another shard layout).
    #[error(transparent)]
    Topology(#[from] likes_queue::TopologyError),
    /// The broker ended the consumer (queue deleted, channel or connection closed).
    #[error("the broker ended the consumer")]
    ConsumerEnded,
}
