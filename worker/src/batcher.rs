//! Collects deliveries into batches: a batch ends when it is full (its items
//! weigh the target size it was called with: events, as one message may
//! hold many), when its oldest item has waited `max_wait`, or when shutdown
//! is requested. The last item may carry a batch past its target by less
//! than one message's events.
//!
//! The clock starts at the first item, not at the call: an idle queue costs
//! nothing, a lone like is written about `max_wait` after it arrived, and a
//! spike fills whole batches long before the deadline.

use futures_util::{Stream, StreamExt};
use std::time::Duration;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

/// Why a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchEnd {
    /// Its items weigh at least `size`.
    Full,
    /// Its first item has waited `max_wait`.
    Waited,
    /// The stream ended (e.g. the consumer was cancelled or the channel closed).
    StreamEnded,
    /// Shutdown was requested; the batch holds what had arrived.
    Shutdown,
}

/// A batch and why it ended. May be empty only when it did not end `Full`
/// or `Waited`.
#[derive(Debug)]
pub struct Batch<T> {
    pub items: Vec<T>,
    pub end: BatchEnd,
}

/// Waits for the next batch from `stream` whose items, weighed by `weight`,
/// reach `size` (the current target).
pub async fn next_batch<S>(
    stream: &mut S,
    size: usize,
    max_wait: Duration,
    shutdown: &CancellationToken,
    weight: impl Fn(&S::Item) -> usize,
) -> Batch<S::Item>
where
    S: Stream + Unpin,
{
    let mut items = Vec::new();
    let first = tokio::select! {
        biased;
        () = shutdown.cancelled() => return Batch { items, end: BatchEnd::Shutdown },
        item = stream.next() => item,
    };
    let Some(first) = first else {
        return Batch {
            items,
            end: BatchEnd::StreamEnded,
        };
    };
    let mut weighed = weight(&first);
    items.push(first);
    let deadline = Instant::now() + max_wait;
    while weighed < size {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Batch { items, end: BatchEnd::Shutdown },
            item = stream.next() => match item {
                Some(item) => {
                    weighed += weight(&item);
                    items.push(item);
                }
                None => return Batch { items, end: BatchEnd::StreamEnded },
            },
            () = sleep_until(deadline) => return Batch { items, end: BatchEnd::Waited },
        }
    }
    Batch {
        items,
        end: BatchEnd::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::UnboundedReceiverStream;

    fn channel() -> (mpsc::UnboundedSender<u32>, UnboundedReceiverStream<u32>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, UnboundedReceiverStream::new(rx))
    }

    /// The next batch of up to `size` items of one event each, no shutdown.
    async fn next(
        rx: &mut UnboundedReceiverStream<u32>,
        size: usize,
        wait: Duration,
    ) -> Batch<u32> {
        next_batch(rx, size, wait, &CancellationToken::new(), |_| 1).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_is_returned_at_once() {
        let (tx, mut rx) = channel();
        for i in 0..7 {
            tx.send(i).expect("receiver alive");
        }
        let start = Instant::now();
        let batch = next(&mut rx, 5, Duration::from_millis(50)).await;
        assert_eq!(batch.end, BatchEnd::Full);
        assert_eq!(batch.items, vec![0, 1, 2, 3, 4]);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_item_is_flushed_after_max_wait_from_its_arrival() {
        let (tx, mut rx) = channel();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            tx.send(1).expect("receiver alive");
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(tx);
        });
        let start = Instant::now();
        let batch = next(&mut rx, 500, Duration::from_millis(50)).await;
        assert_eq!(batch.end, BatchEnd::Waited);
        assert_eq!(batch.items, vec![1]);
        // Idle time before the first item does not count against it.
        assert_eq!(start.elapsed(), Duration::from_millis(10_050));
    }

    #[tokio::test(start_paused = true)]
    async fn items_arriving_before_the_deadline_join_the_batch() {
        let (tx, mut rx) = channel();
        tokio::spawn(async move {
            for i in 0..3 {
                tx.send(i).expect("receiver alive");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let batch = next(&mut rx, 500, Duration::from_millis(50)).await;
        assert_eq!(batch.end, BatchEnd::Waited);
        assert_eq!(batch.items, vec![0, 1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn items_are_weighed_by_the_events_they_hold() {
        let (tx, mut rx) = channel();
        for events in [200, 1, 250, 100, 7] {
            tx.send(events).expect("receiver alive");
        }
        let weigh = |events: &u32| *events as usize;
        let shutdown = CancellationToken::new();
        let wait = Duration::from_millis(50);
        let batch = next_batch(&mut rx, 500, wait, &shutdown, weigh).await;
        assert_eq!(batch.end, BatchEnd::Full);
        assert_eq!(
            batch.items,
            vec![200, 1, 250, 100],
            "551 events, one message past"
        );
        let batch = next_batch(&mut rx, 500, wait, &shutdown, weigh).await;
        assert_eq!(batch.end, BatchEnd::Waited);
        assert_eq!(batch.items, vec![7]);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_returns_what_has_arrived() {
        let (tx, mut rx) = channel();
        tx.send(1).expect("receiver alive");
        let shutdown = CancellationToken::new();
        let cancel = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            cancel.cancel();
        });
        let batch = next_batch(&mut rx, 500, Duration::from_secs(60), &shutdown, |_| 1).await;
        assert_eq!(batch.end, BatchEnd::Shutdown);
        assert_eq!(batch.items, vec![1]);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_stream_ends_the_batch() {
        let (tx, mut rx) = channel();
        tx.send(1).expect("receiver alive");
        drop(tx);
        let batch = next(&mut rx, 500, Duration::from_secs(60)).await;
        assert_eq!(batch.end, BatchEnd::StreamEnded);
        assert_eq!(batch.items, vec![1]);
    }
}
