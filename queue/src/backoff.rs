//! The backoff between attempts to reach the broker, shared by every
//! reconnect loop: from 100 ms, doubling, capped at 5 s, with jitter so that
//! many processes that lost one node do not all knock on the next at once.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::time::Duration;

/// Longest wait between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// The delays between reconnect attempts, without end.
#[derive(Debug)]
pub struct Reconnect {
    delays: backon::ExponentialBackoff,
}

impl Reconnect {
    pub fn new() -> Self {
        let delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(MAX_DELAY)
            .with_jitter()
            .without_max_times()
            .build();
        Self { delays }
    }

    /// How long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(MAX_DELAY)
    }
}

impl Default for Reconnect {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let mut backoff = Reconnect::new();
        let first = backoff.next_delay();
        assert!(first <= Duration::from_millis(200), "{first:?}");
        let later: Vec<_> = (0..20).map(|_| backoff.next_delay()).collect();
        assert!(later.iter().all(|d| *d <= MAX_DELAY * 2), "{later:?}");
        assert!(later.last().is_some_and(|d| *d >= MAX_DELAY), "{later:?}");
    }
}
