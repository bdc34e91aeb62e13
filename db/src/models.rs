//! Domain values the repository reads and writes.

use likes_common::ids::{PostId, UserId};
use uuid::Uuid;

/// What a user did to a post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Like,
    Unlike,
}

/// One Like or Unlike to apply: the decoded queue event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LikeChange {
    pub event_id: Uuid,
    pub post_id: PostId,
    pub user_id: UserId,
    pub action: Action,
    pub occurred_at_micros: i64,
}

impl LikeChange {
    /// The order in which events of one pair take effect: the last one wins.
    pub fn order_key(&self) -> (i64, Uuid) {
        (self.occurred_at_micros, self.event_id)
    }
}

/// A post's count as stored, with the version of its last change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VersionedCount {
    pub count: i64,
    /// Grows by one with every change of the count; 0 for a post whose
    /// count never changed.
    pub version: i64,
}

/// A post's count after a batch changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountChange {
    pub post_id: String,
    pub count: VersionedCount,
}

/// What writing one batch changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteOutcome {
    /// Distinct (post, user) pairs in the batch after folding repeats.
    pub pairs: usize,
    /// Pairs whose stored state was inserted or replaced by a newer event.
    pub rows_changed: i64,
    /// Counter rows inserted or updated.
    pub counters_changed: i64,
    /// The new count of each post whose count changed.
    pub counts: Vec<CountChange>,
}
