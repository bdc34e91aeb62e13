//! What every crate of the likes service shares: the typed settings and the
//! domain ids. Small on purpose: `likes-db` and `likes-queue` build on it
//! and compile nothing else of the binaries' (telemetry, the health server
//! and the command line are `likes-service`).

pub mod config;
pub mod ids;
pub mod time;

pub use config::Settings;
