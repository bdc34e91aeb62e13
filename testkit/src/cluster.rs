//! A real RabbitMQ cluster for tests: three (or more) nodes of the
//! installed `rabbitmq-server`, started beside the machine's own broker and
//! never touching it.
//!
//! Each node gets a name of its own (`rc1-<id>@localhost`, …), an AMQP
//! port and an Erlang distribution port picked free at start (both on
//! 127.0.0.1 only), and its own directory under a temporary one
//! (`$TMPDIR/likes-cluster-<id>/rcN`) holding its config file (the listener,
//! and for all but the first node the first node as peer to join), an empty
//! enabled-plugins file (so no management or Prometheus plugin binds its
//! fixed port), its data, logs and pid file; the scripts read an empty
//! `rabbitmq-env.conf` of the cluster's instead of
//! `/etc/rabbitmq/rabbitmq-env.conf` and the node name it sets. Run as root, the nodes and `rabbitmqctl` run as
//! the `rabbitmq` user with its Erlang cookie (`/var/lib/rabbitmq`), as the
//! packaged scripts do; run as anyone else, as that user with their own
//! cookie. The first node boots alone; the others join it by peer
//! discovery (classic config) as they boot.
//!
//! Dropping the [`Cluster`] stops every node (`rabbitmqctl stop`, then
//! SIGKILL by pid for any that lingers) and removes the directory. A test
//! process killed before it can drop the cluster leaves a watchdog behind:
//! a small shell loop, in a process group of its own, that waits for the
//! test process to end, then kills the nodes it started (by the pids in
//! their pid files, and only processes whose environment names this
//! cluster's directory) and removes the directory. As a last resort,
//! [`Cluster::start`] removes such directories whose owner is gone.
//!
//! A node costs about 100 MB and a few seconds of CPU to start: start one
//! cluster per test binary and share it (see `testkit/tests/cluster`).

use anyhow::Context;
use std::{
    collections::HashSet,
    fmt, fs,
    os::unix::{
        fs::{MetadataExt, chown},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};
use tokio::time::Instant;

/// Name prefix of the directories this fixture creates under `$TMPDIR`.
const DIR_PREFIX: &str = "likes-cluster-";
/// Marker file in such a directory: the pid of the test process owning it.
const OWNER_FILE: &str = "owner.pid";
/// Longest wait for a node to boot (three boot at once on two cores).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest any `rabbitmqctl` command may take.
const CTL_TIMEOUT: Duration = Duration::from_secs(90);
/// Pause between polls that run `rabbitmqctl`: each run is a new Erlang VM
/// costing most of a second of CPU, so back-to-back polls would take a
/// core from the test they observe.
pub const CTL_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Kills the nodes and removes the directory once the test process `$1` is
/// gone. `$2` is the cluster directory; a pid is only killed if its
/// environment names that directory, so a recycled pid is never hit.
const WATCHDOG: &str = r#"
owner=$1; dir=$2
while kill -0 "$owner" 2>/dev/null; do sleep 1; done
for f in "$dir"/*/pid; do
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  grep -qzF "RABBITMQ_MNESIA_BASE=$dir/" "/proc/$pid/environ" 2>/dev/null && kill -9 "$pid"
done
rm -rf "$dir"
"#;

/// The installed RabbitMQ's scripts.
#[derive(Debug, Clone)]
pub struct Installation {
    bin: PathBuf,
}

impl Installation {
    /// The directory holding `rabbitmq-server` and `rabbitmqctl` as the
    /// real scripts: `/usr/lib/rabbitmq/bin` of the Debian package (whose
    /// `/usr/sbin` entries are wrappers that switch user and log to
    /// `/var/log`), else the first directory on `PATH` holding them.
    /// `None` when RabbitMQ is not installed.
    pub fn find() -> Option<Self> {
        let packaged = PathBuf::from("/usr/lib/rabbitmq/bin");
        let on_path = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .unwrap_or_default();
        std::iter::once(packaged)
            .chain(on_path)
            .find(|dir| {
                ["rabbitmq-server", "rabbitmqctl", "rabbitmq-queues"]
                    .iter()
                    .all(|script| {
                        // The Debian wrapper is a symlink to
                        // rabbitmq-script-wrapper: not the script itself.
                        fs::canonicalize(dir.join(script))
                            .is_ok_and(|real| real.file_name() == Some(script.as_ref()))
                    })
            })
            .map(|bin| Self { bin })
    }

    fn script(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }
}

/// Which user the nodes run as, and the home holding its Erlang cookie.
#[derive(Debug, Clone)]
struct RunAs {
    ids: Option<(u32, u32)>,
    home: PathBuf,
    /// An empty `rabbitmq-env.conf`, read instead of the machine's.
    conf_env_file: PathBuf,
}

impl RunAs {
    /// As root: the `rabbitmq` user, as the packaged scripts do (Erlang
    /// then finds the cookie the packaged CLI uses). Otherwise: ourselves.
    fn detect(conf_env_file: PathBuf) -> anyhow::Result<Self> {
        let root = fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        if root && let Some((uid, gid, home)) = passwd_entry("rabbitmq")? {
            return Ok(Self {
                ids: Some((uid, gid)),
                home,
                conf_env_file,
            });
        }
        let home = std::env::var_os("HOME").context("HOME is not set")?;
        Ok(Self {
            ids: None,
            home: home.into(),
            conf_env_file,
        })
    }

    /// Makes `path` the nodes' own (they write their data under it).
    fn own(&self, path: &Path) -> anyhow::Result<()> {
        if let Some((uid, gid)) = self.ids {
            chown(path, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", path.display()))?;
        }
        Ok(())
    }

    fn apply(&self, command: &mut Command) {
        if let Some((uid, gid)) = self.ids {
            command.uid(uid).gid(gid);
        }
        command
            .env_clear()
            .env("HOME", &self.home)
            .env("RABBITMQ_CONF_ENV_FILE", &self.conf_env_file)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LANG", "C.UTF-8")
            .env("LC_ALL", "C.UTF-8");
    }
}

/// uid, gid and home of `user` from `/etc/passwd`.
pub(crate) fn passwd_entry(user: &str) -> anyhow::Result<Option<(u32, u32, PathBuf)>> {
    let passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 6 && fields[0] == user {
            return Ok(Some((
                fields[2].parse()?,
                fields[3].parse()?,
                PathBuf::from(fields[5]),
            )));
        }
    }
    Ok(None)
}

/// A client connection, as `rabbitmqctl list_connections` shows it.
#[derive(Debug, Clone)]
pub struct ClientConnection {
    /// The node it is connected to.
    pub node: usize,
    client_properties: String,
}

impl ClientConnection {
    /// Whether the client named the connection `name` (`likes-api <queue>`).
    pub fn is_named(&self, name: &str) -> bool {
        self.client_properties.contains(&format!("\"{name}\""))
    }
}

/// Where a node stands, as far as this fixture made it stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// VM and broker up.
    Running,
    /// VM up, broker app stopped (`stop_app`): no listener, not a Raft member.
    AppStopped,
    /// VM stopped or killed.
    Down,
}

#[derive(Debug)]
struct Node {
    name: String,
    amqp_port: u16,
    dist_port: u16,
    dir: PathBuf,
    server: Option<Child>,
    state: NodeState,
}

impl Node {
    fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }
}

/// A RabbitMQ cluster of nodes on 127.0.0.1; stopped and removed on drop.
pub struct Cluster {
    installation: Installation,
    run_as: RunAs,
    dir: PathBuf,
    nodes: Vec<Node>,
    watchdog: Option<Child>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.dir)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts `size` nodes, clusters them with the first, and waits until
    /// all run. Takes 15 to 30 seconds for three nodes on two cores.
    pub async fn start(installation: Installation, size: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(size >= 1, "a cluster has at least one node");
        remove_abandoned(&std::env::temp_dir());
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{id}"));
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::write(dir.join(OWNER_FILE), std::process::id().to_string())?;
        let run_as = RunAs::detect(dir.join("rabbitmq-env.conf"))?;
        fs::write(&run_as.conf_env_file, "")?;
        run_as.own(&dir)?;
        let mut cluster = Self {
            installation,
            run_as,
            watchdog: None,
            nodes: Vec::with_capacity(size),
            dir,
        };
        cluster.watchdog = Some(cluster.spawn_watchdog()?);
        let mut ports = HashSet::new();
        let first = format!("rc1-{id}@localhost");
        for n in 1..=size {
            let (amqp_port, dist_port) = (fresh_port(&mut ports)?, fresh_port(&mut ports)?);
            let name = format!("rc{n}-{id}@localhost");
            // The others find the first by peer discovery and join it as
            // they boot: no second boot, as `join_cluster` would need.
            let join = (n > 1).then_some(first.as_str());
            let node = cluster.prepare_node(name, amqp_port, dist_port, join)?;
            cluster.nodes.push(node);
        }
        cluster.spawn_server(0)?;
        cluster.await_boot(0).await?;
        for node in 1..size {
            cluster.spawn_server(node)?;
        }
        for node in 1..size {
            cluster.await_boot(node).await?;
        }
        cluster.await_running_nodes(size).await?;
        Ok(cluster)
    }

    /// The directory holding every node's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// A cluster always has nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Erlang node name of `node` (0-based), e.g. `rc1-1a2b3c4d@localhost`.
    pub fn name(&self, node: usize) -> &str {
        &self.nodes[node].name
    }

    /// AMQP URL of `node` (guest/guest, default vhost).
    pub fn url(&self, node: usize) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f",
            self.nodes[node].amqp_port
        )
    }

    /// Every node's URL, comma-separated, for `amqp.url`.
    pub fn urls(&self) -> String {
        (0..self.len())
            .map(|node| self.url(node))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn state(&self, node: usize) -> NodeState {
        self.nodes[node].state
    }

    /// `rabbitmqctl stop_app`: the broker stops (connections closed,
    /// listener gone, its queue replicas stop), the VM stays up.
    pub async fn stop_app(&mut self, node: usize) -> anyhow::Result<()> {
        self.ctl(node, &["stop_app"]).await?;
        self.nodes[node].state = NodeState::AppStopped;
        Ok(())
    }

    /// `rabbitmqctl start_app`, then waits until the broker runs.
    pub async fn start_app(&mut self, node: usize) -> anyhow::Result<()> {
        self.ctl(node, &["start_app"]).await?;
        self.ctl(node, &["await_startup"]).await?;
        self.nodes[node].state = NodeState::Running;
        Ok(())
    }

    /// SIGKILL of the node's Erlang VM: no goodbye to clients or peers.
    pub async fn kill(&mut self, node: usize) -> anyhow::Result<()> {
        let pid = self.beam_pid(node)?;
        signal(pid, "KILL")?;
        self.await_server_exit(node).await?;
        Ok(())
    }

    /// A clean stop of the node's VM (`rabbitmqctl stop`).
    pub async fn stop(&mut self, node: usize) -> anyhow::Result<()> {
        let pid_file = self.nodes[node].pid_file();
        self.ctl(node, &["stop", &pid_file.to_string_lossy()])
            .await?;
        self.await_server_exit(node).await
    }

    /// Boots a node that is down, on its data: it rejoins the cluster.
    pub async fn boot(&mut self, node: usize) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.nodes[node].state == NodeState::Down,
            "{} is not down",
            self.nodes[node].name
        );
        self.spawn_server(node)?;
        self.await_boot(node).await
    }

    /// Brings every node back to running (after a test that failed half-way).
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        for node in 0..self.len() {
            match self.nodes[node].state {
                NodeState::Running => {}
                NodeState::AppStopped => self.start_app(node).await?,
                NodeState::Down => self.boot(node).await?,
            }
        }
        self.await_running_nodes(self.len()).await
    }

    /// Waits until stopping `node` would leave every quorum queue with a
    /// majority (`rabbitmq-queues check_if_node_is_quorum_critical`): the
    /// check before each step of a rolling restart.
    pub async fn await_quorum_safe(&self, node: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let checked = self
                .run(
                    "rabbitmq-queues",
                    &[
                        "-n",
                        &self.nodes[node].name,
                        "check_if_node_is_quorum_critical",
                    ],
                )
                .await;
            match checked {
                Ok(_) => return Ok(()),
                Err(error) if Instant::now() >= deadline => {
                    return Err(error.context(format!(
                        "{} still quorum critical after {timeout:?}",
                        self.nodes[node].name
                    )));
                }
                Err(_) => tokio::time::sleep(CTL_POLL_INTERVAL).await,
            }
        }
    }

    /// The node hosting the leader of quorum queue `queue`, if it has one.
    pub async fn queue_leader(&self, queue: &str) -> anyhow::Result<Option<usize>> {
        let via = self.running_node()?;
        let listing = self
            .ctl(
                via,
                &["-q", "list_queues", "name", "leader", "--formatter", "json"],
            )
            .await?;
        let queues: Vec<serde_json::Value> =
            serde_json::from_str(&listing).context("list_queues output")?;
        Ok(queues
            .iter()
            .find(|q| q["name"] == queue)
            .and_then(|q| q["leader"].as_str())
            .and_then(|leader| self.node_named(leader)))
    }

    /// Every client connection to the cluster, with the node it is on.
    pub async fn connections(&self) -> anyhow::Result<Vec<ClientConnection>> {
        let via = self.running_node()?;
        // The table output, not JSON: only it spells a pid with its node,
        // <rc1-1a2b3c4d@localhost.1673.12.0>.
        let listing = self
            .ctl(
                via,
                &[
                    "-q",
                    "list_connections",
                    "--no-table-headers",
                    "pid",
                    "client_properties",
                ],
            )
            .await?;
        Ok(listing
            .lines()
            .filter_map(|line| {
                let (pid, properties) = line.split_once('\t')?;
                let node = self.node_named(pid.trim_start_matches('<').split('.').next()?)?;
                Some(ClientConnection {
                    node,
                    client_properties: properties.to_owned(),
                })
            })
            .collect())
    }

    /// `rabbitmqctl args…` against a running node; its output.
    pub async fn rabbitmqctl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.ctl(self.running_node()?, args).await
    }

    fn node_named(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    fn running_node(&self) -> anyhow::Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.state == NodeState::Running)
            .context("no node of the cluster is running")
    }

    /// Creates the node's directory and files.
    fn prepare_node(
        &self,
        name: String,
        amqp_port: u16,
        dist_port: u16,
        join: Option<&str>,
    ) -> anyhow::Result<Node> {
        let short = name.split('-').next().unwrap_or("rc");
        let dir = self.dir.join(short);
        fs::create_dir(&dir)?;
        let mut config = format!("listeners.tcp.local = 127.0.0.1:{amqp_port}\n");
        if let Some(first) = join {
            config.push_str(&format!(
                "cluster_formation.peer_discovery_backend = classic_config\n\
                 cluster_formation.classic_config.nodes.1 = {first}\n"
            ));
        }
        let files = [
            ("rabbitmq.conf", config),
            ("advanced.config", "[].\n".to_owned()),
            ("enabled_plugins", "[].\n".to_owned()),
        ];
        for (file, text) in files {
            fs::write(dir.join(file), text)?;
            self.run_as.own(&dir.join(file))?;
        }
        self.run_as.own(&dir)?;
        Ok(Node {
            name,
            amqp_port,
            dist_port,
            dir,
            server: None,
            state: NodeState::Down,
        })
    }

    /// The environment of a node's scripts: everything under its directory.
    fn node_env(&self, node: &Node) -> Vec<(&'static str, String)> {
        let at = |file: &str| node.dir.join(file).to_string_lossy().into_owned();
        vec![
            ("RABBITMQ_NODENAME", node.name.clone()),
            ("RABBITMQ_DIST_PORT", node.dist_port.to_string()),
            ("RABBITMQ_CONFIG_FILE", at("rabbitmq.conf")),
            ("RABBITMQ_CONFIG_FILES", at("conf.d")),
            ("RABBITMQ_ADVANCED_CONFIG_FILE", at("advanced.config")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", at("enabled_plugins")),
            ("RABBITMQ_MNESIA_BASE", at("mnesia")),
            ("RABBITMQ_LOG_BASE", at("log")),
            ("RABBITMQ_PID_FILE", at("pid")),
            ("RABBITMQ_PLUGINS_EXPAND_DIR", at("plugins")),
            // Distribution on loopback only, like the AMQP listener.
            (
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}".to_owned(),
            ),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".to_owned()),
        ]
    }

    fn spawn_server(&mut self, index: usize) -> anyhow::Result<()> {
        let node = &self.nodes[index];
        let _ = fs::remove_file(node.pid_file());
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("console.log"))?;
        self.run_as.own(&node.dir.join("console.log"))?;
        let mut command = Command::new(self.installation.script("rabbitmq-server"));
        self.run_as.apply(&mut command);
        command
            .envs(self.node_env(node))
            .current_dir(&node.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", node.name))?;
        self.nodes[index].server = Some(child);
        Ok(())
    }

    /// `rabbitmqctl wait <pid file>`: until the broker runs on the node.
    async fn await_boot(&mut self, node: usize) -> anyhow::Result<()> {
        let pid_file = self.nodes[node].pid_file().to_string_lossy().into_owned();
        let timeout = BOOT_TIMEOUT.as_secs().to_string();
        self.ctl(node, &["wait", &pid_file, "--timeout", &timeout])
            .await
            .with_context(|| format!("{} did not boot", self.nodes[node].name))?;
        self.nodes[node].state = NodeState::Running;
        Ok(())
    }

    async fn await_server_exit(&mut self, index: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let node = &mut self.nodes[index];
        if let Some(server) = node.server.as_mut() {
            while server.try_wait()?.is_none() {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{} still running a minute after it was stopped",
                    node.name
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        node.server = None;
        node.state = NodeState::Down;
        // A stale pid could be recycled; nothing may kill it later.
        let _ = fs::remove_file(node.pid_file());
        Ok(())
    }

    /// Waits until the first running node counts `expected` running nodes.
    async fn await_running_nodes(&self, expected: usize) -> anyhow::Result<()> {
        let via = self.running_node()?;
        crate::eventually_every(
            CTL_POLL_INTERVAL,
            Duration::from_secs(60),
            &format!("{expected} running cluster nodes"),
            || async {
                let status = self
                    .ctl(via, &["-q", "cluster_status", "--formatter", "json"])
                    .await?;
                let status: serde_json::Value =
                    serde_json::from_str(&status).context("cluster_status output")?;
                let running = status["running_nodes"].as_array().map_or(0, Vec::len);
                Ok((running == expected).then_some(()))
            },
        )
        .await
    }

    fn beam_pid(&self, node: usize) -> anyhow::Result<u32> {
        let pid_file = self.nodes[node].pid_file();
        let pid = fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {}", pid_file.display()))?;
        Ok(pid.trim().parse()?)
    }

    /// `rabbitmqctl -n <node> args…`, as the nodes' user; stdout.
    async fn ctl(&self, node: usize, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", self.nodes[node].name.as_str()];
        full.extend_from_slice(args);
        self.run("rabbitmqctl", &full).await
    }

    async fn run(&self, script: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut command = Command::new(self.installation.script(script));
        self.run_as.apply(&mut command);
        command
            .current_dir(&self.dir)
            .args(args)
            .stdin(Stdio::null());
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(true);
        let output = tokio::time::timeout(CTL_TIMEOUT, command.output())
            .await
            .with_context(|| format!("{script} {args:?} took over {CTL_TIMEOUT:?}"))?
            .with_context(|| format!("running {script}"))?;
        anyhow::ensure!(
            output.status.success(),
            "{script} {args:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn spawn_watchdog(&self) -> anyhow::Result<Child> {
        spawn_watchdog(WATCHDOG, "likes-cluster-watchdog", &self.dir)
    }
}

/// Starts `script` (sh) as `name` with this process's pid and `dir`: it
/// waits for this process to end, however it ends, then stops what runs
/// from `dir` and removes it.
pub(crate) fn spawn_watchdog(script: &str, name: &str, dir: &Path) -> anyhow::Result<Child> {
    Command::new("sh")
        .args(["-c", script, name])
        .arg(std::process::id().to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a Ctrl-C that stops the tests does not
        // stop the cleanup.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {name}"))
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Clean stops, all at once, then SIGKILL for whatever is left.
        let stops: Vec<Child> = self
            .nodes
            .iter()
            .filter(|n| n.state != NodeState::Down)
            .filter_map(|node| {
                let mut command = Command::new(self.installation.script("rabbitmqctl"));
                self.run_as.apply(&mut command);
                command
                    .current_dir(&self.dir)
                    .args(["-n", &node.name, "stop"])
                    .arg(node.pid_file())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                command.spawn().ok()
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for mut stop in stops {
            while matches!(stop.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = stop.kill();
            let _ = stop.wait();
        }
        for node in &mut self.nodes {
            if let Some(mut server) = node.server.take() {
                if matches!(server.try_wait(), Ok(None)) {
                    kill_beam(&node.pid_file(), &self.dir);
                    let _ = server.kill();
                }
                let _ = server.wait();
            }
        }
        if let Err(error) = fs::remove_dir_all(&self.dir) {
            eprintln!("cannot remove {}: {error}", self.dir.display());
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

/// A port free a moment ago and not handed out before.
pub(crate) fn fresh_port(taken: &mut HashSet<u16>) -> anyhow::Result<u16> {
    for _ in 0..100 {
        let port = crate::free_port()?;
        if taken.insert(port) {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port found")
}

fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// SIGKILL for the VM named in `pid_file`, if that process is one of the
/// nodes of the cluster in `dir` (its environment says so).
fn kill_beam(pid_file: &Path, dir: &Path) {
    let Some(pid) = fs::read_to_string(pid_file)
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
    else {
        return;
    };
    let marker = format!("RABBITMQ_MNESIA_BASE={}/", dir.display());
    let ours = fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
        environ
            .split(|b| *b == 0)
            .any(|var| var.starts_with(marker.as_bytes()))
    });
    if ours {
        let _ = signal(pid, "KILL");
    }
}

/// Removes the directories (and kills the nodes) of clusters whose test
/// process died without cleaning up and without its watchdog.
fn remove_abandoned(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let ours = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(DIR_PREFIX));
        let Ok(owner) = fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue;
        };
        if !ours || Path::new(&format!("/proc/{}", owner.trim())).exists() {
            continue;
        }
        if let Ok(nodes) = fs::read_dir(&dir) {
            for node in nodes.flatten() {
                kill_beam(&node.path().join("pid"), &dir);
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
