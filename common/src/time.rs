//! Event time as the queue carries it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, as `LikeEvent.occurred_at_micros`
/// holds them: the api stamps each event with it, and last-writer-wins
/// orders by it.
pub fn now_micros() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
}
