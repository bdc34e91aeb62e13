//! Fault injection for tests: closing broker connections with RabbitMQ's own
//! tools, a TCP proxy that cuts and restores a link, real processes to kill.

use anyhow::Context;
use std::process::Command;

/// Closes every RabbitMQ connection whose client-given name contains
/// `needle` (connection names carry the queue name, unique per test), as an
/// operator or a broker restart would. Returns how many were closed.
pub fn close_amqp_connections(needle: &str) -> anyhow::Result<usize> {
    let listing = Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .context("running rabbitmqctl list_connections")?;
    anyhow::ensure!(
        listing.status.success(),
        "rabbitmqctl list_connections failed"
    );
    let text = String::from_utf8_lossy(&listing.stdout);
    let mut closed = 0;
    for line in text.lines().filter(|l| l.contains(needle)) {
        let Some(pid) = line.split_whitespace().next() else {
            continue;
        };
        let status = Command::new("rabbitmqctl")
            .args(["-q", "close_connection", pid, "closed by a fault test"])
            .status()
            .context("running rabbitmqctl close_connection")?;
        if status.success() {
            closed += 1;
        }
    }
    Ok(closed)
}
