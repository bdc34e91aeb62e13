//! Fault injection for tests: closing broker connections with RabbitMQ's own
//! tools, a TCP proxy that cuts and restores a link, real processes to kill.

use anyhow::Context;
use std::process::Command;

/// `rabbitmqctl` for the broker the tests use: the host's own when it is on
/// the `PATH` (the broker runs on this machine), else the one inside the
/// `rabbitmq` service of `docker-compose.yml` (`make services` started the
/// broker with docker compose), through `docker compose exec`. The
/// arguments are the same either way. Where neither runs, the test fails
/// saying so: nothing here is skipped.
pub fn rabbitmqctl() -> Command {
    rabbitmqctl_with(std::env::var_os("PATH"))
}

fn rabbitmqctl_with(path: Option<std::ffi::OsString>) -> Command {
    let on_path = path.is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("rabbitmqctl").is_file())
    });
    if on_path {
        return Command::new("rabbitmqctl");
    }
    let compose_file = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
    let mut command = Command::new("docker");
    command.args([
        "compose",
        "-f",
        compose_file,
        "exec",
        "-T",
        "rabbitmq",
        "rabbitmqctl",
    ]);
    command
}

/// The pids of the RabbitMQ connections whose client-given name contains
/// `needle` (connection names carry the queue name, unique per test).
pub fn amqp_connections(needle: &str) -> anyhow::Result<Vec<String>> {
    let listing = rabbitmqctl()
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .context("running rabbitmqctl list_connections")?;
    anyhow::ensure!(
        listing.status.success(),
        "rabbitmqctl list_connections failed"
    );
    Ok(String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// Closes every RabbitMQ connection whose client-given name contains
/// `needle`, as an operator or a broker restart would. Returns how many
/// were closed.
pub fn close_amqp_connections(needle: &str) -> anyhow::Result<usize> {
    let mut closed = 0;
    for pid in amqp_connections(needle)? {
        let status = rabbitmqctl()
            .args(["-q", "close_connection", &pid, "closed by a fault test"])
            .status()
            .context("running rabbitmqctl close_connection")?;
        if status.success() {
            closed += 1;
        }
    }
    Ok(closed)
}

/// A policy that makes the broker refuse (nack) every message published to
/// one queue, for the life of the guard: `max-length` 0 with `overflow`
/// `reject-publish`, as a queue full to its limit would. Scoped to that
/// queue's name, so tests in parallel are not touched; dropping the guard
/// clears the policy.
#[derive(Debug)]
pub struct RefusedPublishes {
    policy: String,
}

impl RefusedPublishes {
    pub fn on(queue: &str) -> anyhow::Result<Self> {
        let policy = format!("refuse-{queue}");
        let pattern = format!("^{}$", queue.replace('.', "\\."));
        let status = rabbitmqctl()
            .args([
                "-q",
                "set_policy",
                "--apply-to",
                "queues",
                "--priority",
                "100",
            ])
            .args([
                &policy,
                &pattern,
                r#"{"max-length":0,"overflow":"reject-publish"}"#,
            ])
            .status()
            .context("running rabbitmqctl set_policy")?;
        anyhow::ensure!(status.success(), "set_policy {policy} failed");
        Ok(Self { policy })
    }
}

impl Drop for RefusedPublishes {
    fn drop(&mut self) {
        let cleared = rabbitmqctl()
            .args(["-q", "clear_policy", &self.policy])
            .status();
        if !cleared.is_ok_and(|s| s.success()) {
            eprintln!("could not clear the RabbitMQ policy {}", self.policy);
        }
    }
}

/// RabbitMQ's memory alarm, raised for the life of the guard: the broker
/// blocks every publishing connection (flow control), as when it runs out of
/// memory. Broker-wide, so only for tests that run alone in their binary.
/// Dropping the guard restores the watermark that was set before.
#[derive(Debug)]
pub struct MemoryAlarm {
    previous: String,
}

impl MemoryAlarm {
    pub fn raise() -> anyhow::Result<Self> {
        let output = rabbitmqctl()
            .args([
                "-q",
                "eval",
                "vm_memory_monitor:get_vm_memory_high_watermark().",
            ])
            .output()
            .context("reading the memory watermark")?;
        anyhow::ensure!(output.status.success(), "rabbitmqctl eval failed");
        let previous = String::from_utf8(output.stdout)?.trim().to_owned();
        set_watermark(&["0.0000001"])?;
        Ok(Self { previous })
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        // `0.4`, or `{absolute,1073741824}` when set in bytes.
        let absolute = self
            .previous
            .strip_prefix("{absolute,")
            .and_then(|rest| rest.strip_suffix('}'));
        let restored = match absolute {
            Some(bytes) => set_watermark(&["absolute", bytes]),
            None => set_watermark(&[self.previous.as_str()]),
        };
        if let Err(error) = restored {
            eprintln!(
                "could not restore RabbitMQ's memory watermark {}: {error}",
                self.previous
            );
        }
    }
}

fn set_watermark(args: &[&str]) -> anyhow::Result<()> {
    let status = rabbitmqctl()
        .args(["-q", "set_vm_memory_high_watermark"])
        .args(args)
        .status()
        .context("running rabbitmqctl set_vm_memory_high_watermark")?;
    anyhow::ensure!(
        status.success(),
        "set_vm_memory_high_watermark {args:?} failed"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbitmqctl_is_the_hosts_or_the_compose_brokers() {
        let bin = tempfile::tempdir().expect("temp dir");
        std::fs::write(bin.path().join("rabbitmqctl"), "").expect("a stand-in");
        let host = rabbitmqctl_with(Some(bin.path().as_os_str().to_owned()));
        assert_eq!(host.get_program(), "rabbitmqctl");
        let empty = tempfile::tempdir().expect("temp dir");
        let compose = rabbitmqctl_with(Some(empty.path().as_os_str().to_owned()));
        assert_eq!(compose.get_program(), "docker");
        let args: Vec<_> = compose.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(args[0], "compose");
        assert!(args[2].ends_with("/docker-compose.yml"), "{args:?}");
        assert_eq!(args[3..], ["exec", "-T", "rabbitmq", "rabbitmqctl"]);
    }
}
