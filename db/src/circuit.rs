//! A small circuit breaker in front of the pool, so that calls during a
//! database outage fail at once instead of each waiting the pool's full
//! `connect_timeout_ms`.
//!
//! The pool reports every failed connection attempt (bb8's error sink) and
//! every checkout that timed out: the circuit then *opens* for
//! [`crate::pool::CIRCUIT_OPEN`], and checkouts fail at once with
//! [`DbError::Unavailable`](crate::DbError::Unavailable) (UNAVAILABLE to an
//! api caller). Once that time has passed, exactly one checkout goes through
//! as a trial while the others still fail at once; its success closes the
//! circuit, its failure opens it again. A checkout waiting for a connection
//! also ends at once when a connection attempt fails meanwhile, rather than
//! sitting out the timeout.

use std::{sync::Mutex, time::Duration};
use tokio::{sync::watch, time::Instant};

/// The breaker's state, shared by the pool's error sink and every checkout.
#[derive(Debug)]
pub(crate) struct Circuit {
    open_for: Duration,
    state: Mutex<State>,
    /// Counts failures; checkouts that wait watch it.
    failures: watch::Sender<u64>,
    /// `likes_db_circuit_open`: 1 from opening until closed again.
    open_gauge: metrics::Gauge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// Open time over; one trial checkout is under way.
    Trial,
}

/// What a checkout may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Go ahead.
    Pass,
    /// Go ahead as the one trial of a half-open circuit.
    Trial,
    /// Fail at once: the database was found down moments ago.
    Refuse,
}

impl Circuit {
    /// A closed circuit that opens for `open_for` after a failure; a zero
    /// duration never opens.
    pub(crate) fn new(open_for: Duration) -> Self {
        Self {
            open_for,
            state: Mutex::new(State::Closed),
            failures: watch::Sender::new(0),
            open_gauge: metrics::Gauge::noop(),
        }
    }

    /// Reports the circuit's state to `gauge` (1 open, 0 closed).
    pub(crate) fn reporting_to(mut self, gauge: metrics::Gauge) -> Self {
        gauge.set(0.0);
        self.open_gauge = gauge;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn admit(&self) -> Admit {
        let mut state = self.lock();
        match *state {
            State::Closed => Admit::Pass,
            State::Open { until } if Instant::now() < until => Admit::Refuse,
            State::Open { .. } => {
                *state = State::Trial;
                Admit::Trial
            }
            State::Trial => Admit::Refuse,
        }
    }

    /// A connection attempt or a checkout failed: open (again).
    pub(crate) fn failed(&self) {
        self.failed_because(None);
    }

    /// [`Circuit::failed`], with the connection attempt's error for the
    /// log line that opening the circuit writes (say, a refused TLS
    /// certificate, which would otherwise show nowhere after startup).
    pub(crate) fn failed_because(&self, reason: Option<&dyn std::fmt::Display>) {
        if self.open_for.is_zero() {
            if let Some(reason) = reason {
                tracing::warn!(error = %reason, "cannot open a PostgreSQL connection");
            }
            return;
        }
        {
            let mut state = self.lock();
            if *state == State::Closed {
                match reason {
                    Some(reason) => tracing::warn!(
                        open_ms = self.open_for.as_millis() as u64,
                        error = %reason,
                        "cannot reach PostgreSQL; failing checkouts at once for a while"
                    ),
                    None => tracing::warn!(
                        open_ms = self.open_for.as_millis() as u64,
                        "cannot reach PostgreSQL; failing checkouts at once for a while"
                    ),
                }
            }
            *state = State::Open {
                until: Instant::now() + self.open_for,
            };
            self.open_gauge.set(1.0);
        }
        self.failures.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A checkout got a connection: the database answers.
    pub(crate) fn succeeded(&self, admitted: Admit) {
        let mut state = self.lock();
        if admitted == Admit::Trial || *state == State::Trial {
            if *state != State::Closed {
                tracing::info!("PostgreSQL reachable again");
            }
            *state = State::Closed;
            self.open_gauge.set(0.0);
        }
    }

    /// The trial checkout ended without an outcome (it was cancelled):
    /// let the next checkout try.
    pub(crate) fn trial_abandoned(&self) {
        let mut state = self.lock();
        if *state == State::Trial {
            *state = State::Open {
                until: Instant::now(),
            };
        }
    }

    /// Follows the failure count, to end a wait when a connection fails.
    pub(crate) fn watch_failures(&self) -> watch::Receiver<u64> {
        self.failures.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn after_a_failure_checkouts_are_refused_then_one_trial_goes_through() {
        let circuit = Circuit::new(Duration::from_millis(500));
        assert_eq!(circuit.admit(), Admit::Pass);
        circuit.failed();
        assert_eq!(circuit.admit(), Admit::Refuse);
        tokio::time::advance(Duration::from_millis(499)).await;
        assert_eq!(circuit.admit(), Admit::Refuse);
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(circuit.admit(), Admit::Trial);
        // Only one trial at a time.
        assert_eq!(circuit.admit(), Admit::Refuse);
        // The trial fails: open again for the full time.
        circuit.failed();
        tokio::time::advance(Duration::from_millis(499)).await;
        assert_eq!(circuit.admit(), Admit::Refuse);
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(circuit.admit(), Admit::Trial);
        circuit.succeeded(Admit::Trial);
        assert_eq!(circuit.admit(), Admit::Pass);
        assert_eq!(circuit.admit(), Admit::Pass);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_trial_lets_the_next_checkout_try() {
        let circuit = Circuit::new(Duration::from_millis(100));
        circuit.failed();
        tokio::time::advance(Duration::from_millis(101)).await;
        assert_eq!(circuit.admit(), Admit::Trial);
        circuit.trial_abandoned();
        assert_eq!(circuit.admit(), Admit::Trial);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_open_time_never_opens() {
        let circuit = Circuit::new(Duration::ZERO);
        circuit.failed();
        assert_eq!(circuit.admit(), Admit::Pass);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_announced_to_waiting_checkouts() {
        let circuit = Circuit::new(Duration::from_millis(100));
        let mut failures = circuit.watch_failures();
        failures.mark_unchanged();
        circuit.failed();
        assert!(failures.has_changed().expect("sender alive"));
    }
}
