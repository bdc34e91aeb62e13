//! What `/proc` says about a process: the CPU it used and its peak memory,
//! for the cost per like of the api, the worker and the broker. Linux only;
//! elsewhere every figure is `None`.

use std::process::Command;

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU seconds process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// User plus system CPU seconds every live process whose command name is
/// `command` has used so far (what exited meanwhile is not counted).
pub fn cpu_seconds_of_command(command: &str) -> Option<f64> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let total = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| command_name(*pid).as_deref() == Some(command))
        .filter_map(cpu_seconds)
        .sum();
    Some(total)
}

/// Peak resident set size (`VmHWM`) of process `pid` (or `self`), in MiB.
pub fn peak_rss_mib(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// The command name of process `pid`.
fn command_name(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim().to_owned())
}

/// The pid of the local RabbitMQ node, as the node itself tells it
/// (`rabbitmqctl eval 'os:getpid().'`), so neither `rabbitmqctl`'s own
/// Erlang VM nor another node on the machine is taken for it. `None` when
/// there is no `rabbitmqctl`, it may not talk to the node, or the answer is
/// not a local `beam.smp`.
pub fn broker_pid() -> Option<u32> {
    let output = Command::new("rabbitmqctl")
        .args(["eval", "os:getpid()."])
        .output()
        .ok()?;
    if !output.status.success() {
        tracing::debug!(
            stderr = %String::from_utf8_lossy(&output.stderr),
            "rabbitmqctl cannot tell the broker's pid"
        );
        return None;
    }
    let pid: u32 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .trim_matches('"')
        .parse()
        .ok()?;
    (command_name(pid)? == "beam.smp").then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_cpu_and_memory() {
        let pid = std::process::id();
        let before = cpu_seconds(pid).expect("procfs");
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_seconds(pid).expect("procfs") >= before);
        assert!(peak_rss_mib("self").is_some_and(|mib| mib > 1.0));
        assert!(cpu_seconds(u32::MAX).is_none());
    }
}
