//! Logging through `tracing`, filtered by `RUST_LOG`.

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber for a binary: human-readable lines on
/// stderr, filtered by `RUST_LOG` or else `default_filter` (e.g. `info`).
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// For tests: quiet unless `TEST_LOG` is set, then like [`init`]. Safe to call
/// from every test; only the first call installs a subscriber.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_none() {
        return;
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = fmt().with_env_filter(filter).with_test_writer().try_init();
}
