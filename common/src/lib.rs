//! What the likes binaries share: typed settings and the command line that
//! loads them, the domain ids,
//! telemetry, shutdown signalling and the tokio runtime. Nothing here talks
//! to RabbitMQ (that is `likes-queue`) or PostgreSQL (`likes-db`).

pub mod cli;
pub mod config;
pub mod ids;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;
pub mod time;

pub use config::Settings;
