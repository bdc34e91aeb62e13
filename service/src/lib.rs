//! What the likes binaries share around the service itself: the command
//! line that loads the settings, telemetry (logs, traces, the metrics
//! endpoint with its health probes and the metrics catalog), shutdown
//! signalling and the tokio runtime. Nothing here talks to RabbitMQ
//! (`likes-queue`) or PostgreSQL (`likes-db`).

pub mod cli;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;
