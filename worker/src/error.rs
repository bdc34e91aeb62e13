//! Errors that stop a worker's consumer loop.

/// What ended the consumer loop abnormally.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The broker connection or channel failed; the caller may reconnect.
    #[error("RabbitMQ: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker ended the consumer (queue deleted, channel or connection closed).
    #[error("the broker ended the consumer")]
    ConsumerEnded,
}
