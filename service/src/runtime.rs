//! The tokio runtime the binaries run on: tokio's multi-threaded runtime
//! with the LIFO slot turned off.
//!
//! By default a task woken by a running task is polled next (the LIFO slot).
//! A broker confirm (or a burst of responses) wakes many request tasks at
//! once; each one writes its HTTP/2 response and wakes its connection's
//! task, which then jumps the queue and flushes that one response alone: one
//! `writev` and one wake-up of the peer per call. Without the slot the
//! connection task waits behind the other woken requests and flushes their
//! responses together. In the default load test that took `writev` calls
//! from 2.2 to 0.9 per like, context switches down 16%, and likes/s up about
//! 6% (interleaved A/B, BENCHMARKS.md).
//!
//! The switch is in tokio's unstable API, enabled for this workspace by
//! `.cargo/config.toml`. Built without it (a RUSTFLAGS variable replaces
//! that file's flags) the runtime keeps tokio's default scheduling, and the
//! crate's build script prints a warning saying so.

use tokio::runtime::{Builder, Runtime};

/// Builds the runtime a binary's `main` blocks on.
pub fn build() -> std::io::Result<Runtime> {
    let mut builder = Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

/// Builds the runtime and runs a binary's async `main` on it to the end.
pub fn block_on<F: Future>(main: F) -> std::io::Result<F::Output> {
    Ok(build()?.block_on(main))
}

#[cfg(test)]
mod tests {
    #[test]
    fn builds_a_runtime() {
        let answer = super::block_on(async { 40 + 2 }).expect("a runtime");
        assert_eq!(answer, 42);
    }
}
