//! Consuming an event queue with manual acks: the worker's side of the
//! queue. A subscription sets confirms on (for the copies the worker sends
//! to the dead-letter queue), a prefetch, and registers the consumer; a
//! batch is then settled with one `multiple` ack, or handed back with one
//! `multiple` nack that requeues it.

use lapin::{
    Channel, Consumer,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicQosOptions, ConfirmSelectOptions,
    },
    types::FieldTable,
};

/// Subscribes to `queue` on `channel` with `prefetch` unacked deliveries at
/// most. Once it returns the broker has registered the consumer and
/// deliveries flow.
pub async fn subscribe(channel: &Channel, queue: &str, prefetch: u16) -> lapin::Result<Consumer> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Acks every delivery of `channel` up to and including `tag`.
pub async fn ack_through(channel: &Channel, tag: u64) -> lapin::Result<()> {
    channel
        .basic_ack(tag, BasicAckOptions { multiple: true })
        .await
}

/// Hands every unacked delivery of `channel` up to and including `tag` back
/// to the queue.
pub async fn requeue_through(channel: &Channel, tag: u64) -> lapin::Result<()> {
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

/// Stops the deliveries of the consumer `tag`; what was prefetched but not
/// settled goes back to the queue when the channel closes.
pub async fn cancel(channel: &Channel, tag: &str) -> lapin::Result<()> {
    channel
        .basic_cancel(tag.into(), BasicCancelOptions::default())
        .await
}
