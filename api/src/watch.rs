//! WatchLikeCounts: one task per stream sends each post's current count,
//! then the changes the count cache applies, coalesced. Each tick of
//! `api.watch_min_interval_ms` sends, per post, the latest count not sent
//! yet: at most one message per post per interval. What a stream holds is
//! bounded by its posts: the latest pending count of each, and an outgoing
//! buffer of one message per post; a client that reads slowly makes the
//! task skip values (the latest wins), never buffer more. A stream that
//! falls behind the cache's updates, or whose api (re)subscribed to the
//! pushes, reads every count again, and so does every stream once per
//! `api.count_cache_ttl_ms`: a count is never staler on a stream than on a
//! read. When the api stops, each stream ends
//! with UNAVAILABLE, so its client resubscribes to another api.

use crate::counts::{CountCache, CountUpdate};
use likes_common::ids::PostId;
use likes_proto::pb::LikeCountChange;
use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};
use tokio::sync::{OwnedSemaphorePermit, broadcast::error::RecvError, mpsc};
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
        let watched: HashSet<&str> = self.posts.iter().map(PostId::as_str).collect();
        // Subscribed before the first read, so no change falls in between.
        let mut updates = self.cache.subscribe();
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
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A push lost on its way (transient messages) would leave a quiet
        // post's count unsent: every cache TTL the stream reads its counts
        // again, as a read would, so it is as fresh as GetLikeCount.
        let mut refresh = tokio::time::interval(self.cache.ttl());
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        refresh.reset();
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    let _ = out.try_send(Err(Status::unavailable(
                        "the api is stopping; resubscribe to another",
                    )));
                    break;
                }
                () = out.closed() => break,
                update = updates.recv() => match update {
                    Ok(CountUpdate::Changed(changes)) => {
                        for (post, count) in changes.iter() {
                            if watched.contains(post.as_str()) {
                                pending.insert(post.clone(), *count);
                            }
                        }
                    }
                    Ok(CountUpdate::Resync) | Err(RecvError::Lagged(_)) => {
                        // Counts may have moved unseen: read them all again.
                        if let Ok(counts) = self.cache.counts(&self.posts).await {
                            pending.extend(counts);
                        }
                    }
                    Err(RecvError::Closed) => break,
                },
                _ = ticker.tick(), if !pending.is_empty() => {
                    flush(&out, &mut pending, &mut last_sent);
                }
                _ = refresh.tick() => {
                    if let Ok(counts) = self.cache.counts(&self.posts).await {
                        pending.extend(counts);
                    }
                }
            }
        }
        drop(self.permit);
    }
}

/// Sends each pending count that differs from the last one sent for its
/// post, as far as the outgoing buffer takes them; what does not fit stays
/// pending, to be replaced by a newer count or sent at the next tick.
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
