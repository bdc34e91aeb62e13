//! WatchLikeCounts: one task per stream sends each post's current count,
//! then the changes the count cache applies, coalesced: after each send the
//! task waits out `api.watch_min_interval_ms` without listening, then sends
//! the latest count of every post that changed meanwhile (or waits for the
//! next change). At most one message per post per interval, and a hot
//! post's streams wake once per interval each, however many batches the
//! workers push. What a stream holds is bounded by its posts: the latest
//! pending count of each, and an outgoing buffer of one message per post; a
//! client that reads slowly makes the task skip values (the latest wins),
//! never buffer more. A stream whose api (re)subscribed to the pushes reads
//! every count again, and so does every stream once per
//! `api.count_cache_ttl_ms`: a count is never staler on a stream than on a
//! read. When the api stops, each stream ends with UNAVAILABLE, so its
//! client resubscribes to another api.

use crate::counts::CountCache;
use likes_common::ids::PostId;
use likes_proto::pb::LikeCountChange;
use std::{collections::HashMap, time::Duration};
use tokio::{
    sync::{OwnedSemaphorePermit, mpsc},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// What a stream sends.
pub type Sent = Result<LikeCountChange, Status>;

/// One stream's watch.
#[derive(Debug)]
pub struct Watch {
    pub cache: CountCache,
    /// Distinct posts, in the order asked.
    pub posts: Vec<PostId>,
    pub interval: Duration,
    pub shutdown: CancellationToken,
    /// Its place among the api's streams, given back when it ends.
    pub permit: OwnedSemaphorePermit,
}

impl Watch {
    /// Starts the stream's task; what it sends comes out of the receiver.
    pub fn start(self) -> mpsc::Receiver<Sent> {
        let (out, sent) = mpsc::channel(self.posts.len().max(1) + 1);
        tokio::spawn(self.run(out));
        sent
    }

    async fn run(self, out: mpsc::Sender<Sent>) {
        // Followed before the first read, so no change falls in between.
        let mut followed = self.cache.watch(&self.posts);
        let mut last_sent: HashMap<String, i64> = HashMap::with_capacity(self.posts.len());
        let mut pending: HashMap<String, i64> = HashMap::with_capacity(self.posts.len());
        match self.cache.counts(&self.posts).await {
            Ok(counts) => pending.extend(counts),
            Err(error) => {
                let status: Status = crate::error::ApiError::from(error).into();
                let _ = out.send(Err(status)).await;
                return;
            }
        }
        flush(&out, &mut pending, &mut last_sent);
        // A push lost on its way (transient messages) would leave a quiet
        // post's count unsent: every cache TTL the stream reads its counts
        // again, as a read would, so it is as fresh as GetLikeCount.
        let mut next_refresh = Instant::now() + self.cache.ttl();
        loop {
            // At most one message per post per interval.
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = out.closed() => break,
                () = tokio::time::sleep(self.interval) => {}
            }
            // Nothing held back by a slow reader: wait for something new.
            if pending.is_empty() {
                tokio::select! {
                    () = self.shutdown.cancelled() => break,
                    () = out.closed() => break,
                    () = followed.changed() => {}
                    () = tokio::time::sleep_until(next_refresh) => {}
                }
            }
            let changes = followed.take_changes();
            pending.extend(changes.counts);
            if changes.resync || Instant::now() >= next_refresh {
                // Counts may have moved unseen: read them all again.
                next_refresh = Instant::now() + self.cache.ttl();
                if let Ok(counts) = self.cache.counts(&self.posts).await {
                    pending.extend(counts);
                }
            }
            flush(&out, &mut pending, &mut last_sent);
        }
        if self.shutdown.is_cancelled() {
            let _ = out.try_send(Err(Status::unavailable(
                "the api is stopping; resubscribe to another",
            )));
        }
        drop(self.permit);
    }
}

/// Sends each pending count that differs from the last one sent for its
/// post, as far as the outgoing buffer takes them; what does not fit stays
/// pending, to be replaced by a newer count or sent after the next interval.
fn flush(
    out: &mpsc::Sender<Sent>,
    pending: &mut HashMap<String, i64>,
    last_sent: &mut HashMap<String, i64>,
) {
    let posts: Vec<String> = pending.keys().cloned().collect();
    for post in posts {
        let count = pending[&post];
        if last_sent.get(&post) == Some(&count) {
            pending.remove(&post);
            continue;
        }
        let change = LikeCountChange {
            post_id: post.clone(),
            count,
        };
        match out.try_send(Ok(change)) {
            Ok(()) => {
                pending.remove(&post);
                last_sent.insert(post, count);
            }
            // The client reads slowly: it gets the latest later.
            Err(mpsc::error::TrySendError::Full(_)) => return,
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}
