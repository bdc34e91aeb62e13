//! The real binaries as child processes, for faults only a process can have:
//! SIGKILL mid-batch, SIGTERM and its exit code.

use likes_common::Settings;
use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;

/// A child process running a likes binary with a test's settings.
#[derive(Debug)]
pub struct ServiceProcess {
    child: Child,
    /// What the process wrote to stderr, when spawned with [`Self::spawn_logged`].
    stderr: Option<Arc<Mutex<String>>>,
}

impl ServiceProcess {
    /// Starts `binary` with `settings` passed as `LIKES__*` variables.
    pub fn spawn(binary: &Path, settings: &Settings) -> anyhow::Result<Self> {
        let child = command(binary, settings).spawn()?;
        Ok(Self {
            child,
            stderr: None,
        })
    }

    /// Like [`Self::spawn`], keeping what the process logs (stderr) for
    /// [`Self::logs`]; the lines are passed on to this process's stderr.
    pub fn spawn_logged(binary: &Path, settings: &Settings) -> anyhow::Result<Self> {
        Self::spawn_logged_command(command(binary, settings))
    }

    /// [`Self::spawn_logged`] of a [`command`] the caller added to (other
    /// variables, say).
    pub fn spawn_logged_command(mut command: Command) -> anyhow::Result<Self> {
        let mut child = command.stderr(Stdio::piped()).spawn()?;
        let pipe = child.stderr.take().expect("stderr is piped");
        let logs = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { return };
                let _ = writeln!(std::io::stderr(), "{line}");
                let mut logs = sink.lock().expect("log buffer lock");
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        Ok(Self {
            child,
            stderr: Some(logs),
        })
    }

    /// What the process logged so far (empty unless spawned with
    /// [`Self::spawn_logged`]).
    pub fn logs(&self) -> String {
        self.stderr
            .as_ref()
            .map(|logs| logs.lock().expect("log buffer lock").clone())
            .unwrap_or_default()
    }

    /// Resident memory of the process (VmRSS in /proc), in bytes.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        rss(self.pid())
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no flush, no ack, no goodbye.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Sends SIGTERM and waits up to `deadline` for the process to exit.
    pub async fn terminate(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < until,
                "still running {deadline:?} after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A command running `binary` with `settings` as `LIKES__*` variables.
pub fn command(binary: &Path, settings: &Settings) -> Command {
    let mut command = Command::new(binary);
    command
        .envs(env_of(settings))
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null());
    command
}

/// The settings that differ from the defaults, as `LIKES__*` variables:
/// every one of them (a new setting reaches the child with no list to
/// keep), and only them (so a settings file the test hands the child still
/// decides the rest).
fn env_of(settings: &Settings) -> Vec<(String, String)> {
    let all = |s: &Settings| {
        s.to_env()
            .expect("settings built in code are representable as TOML")
    };
    let defaults = all(&Settings::defaults());
    all(settings)
        .into_iter()
        .filter(|var| !defaults.contains(var))
        .collect()
}

/// Runs `command` to its end with stdout and stderr captured, killing it if
/// it runs past `deadline`: for a binary that should exit at once (`--help`,
/// `check-config`, a refused start), so that one that runs on fails the
/// test instead of hanging it.
pub fn output_within(
    mut command: Command,
    deadline: Duration,
) -> anyhow::Result<std::process::Output> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    // Read in a thread, so a full pipe never stalls the child.
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match outcome.recv_timeout(deadline) {
        Ok(output) => Ok(output?),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            anyhow::bail!("{command:?} still ran after {deadline:?}")
        }
    }
}

/// `binary` run as an operator runs it from a shell, for command-line tests:
/// `settings` as `LIKES__*` variables and no `LIKES_CONFIG` of the caller's.
pub fn cli_command(binary: &Path, settings: &Settings) -> Command {
    let mut command = self::command(binary, settings);
    command.env_remove("LIKES_CONFIG");
    command
}

/// What a command-line run printed, and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// What it printed on stdout, if it exited 0; else an error with what it
    /// printed on both streams.
    pub fn succeeded(self) -> anyhow::Result<String> {
        let Self {
            status,
            stdout,
            stderr,
        } = self;
        anyhow::ensure!(status.success(), "exited with {status}:\n{stdout}{stderr}");
        Ok(stdout)
    }
}

/// Runs a command that should exit at once ([`output_within`] 30 s) and
/// returns its output as text.
pub fn run_cli(command: Command) -> anyhow::Result<CliOutput> {
    let output = output_within(command, Duration::from_secs(30))?;
    Ok(CliOutput {
        status: output.status,
        stdout: String::from_utf8(output.stdout)?,
        stderr: String::from_utf8(output.stderr)?,
    })
}

/// `binary --health-check ARGS` with `settings`, as a container runtime runs
/// it: whether it passed, and what it said on stderr.
pub fn health_check(
    binary: &Path,
    settings: &Settings,
    args: &[&str],
) -> anyhow::Result<(bool, String)> {
    let mut command = cli_command(binary, settings);
    command.arg("--health-check").args(args);
    let output = run_cli(command)?;
    Ok((output.status.success(), output.stderr))
}

/// Writes a settings file of `name`'s own (unique to this test process) in
/// the system's temporary directory and returns its path.
pub fn settings_file(name: &str, text: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::temp_dir().join(format!("likes-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// VmRSS of process `pid` (its resident memory), in bytes.
pub fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?
        .parse()?;
    Ok(kib * 1024)
}

/// Whether `pid` is a live process (a zombie is not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // pid (comm) state …: the state follows the last ')'.
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}
