//! What both likes binaries share: typed settings, telemetry, shutdown
//! signalling, the domain ids and the RabbitMQ topology.

pub mod amqp;
pub mod config;
pub mod ids;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;

pub use config::Settings;
