//! A real PostgreSQL primary with streaming standbys for tests, from the
//! installed PostgreSQL's binaries, beside the machine's own server and
//! never touching it or its configuration.
//!
//! Everything lives under a temporary directory of its own
//! (`$TMPDIR/likes-pg-<id>/`): one data directory per node (`n0`, the
//! primary, then the standbys), each on a port picked free at start,
//! listening on 127.0.0.1 only, without a Unix socket. The primary is made
//! by `initdb` (trust authentication, `wal_level=replica`, and a
//! replication line in its own `pg_hba.conf`); each standby by
//! `pg_basebackup -R` from it, as a hot standby. Run as root, every command
//! runs as the `postgres` user (PostgreSQL refuses root); run as anyone
//! else, as that user.
//!
//! Dropping the [`PgCluster`] stops every node (immediate shutdown) and
//! removes the directory. A test process killed before it can drop the
//! cluster leaves a watchdog behind, in a process group of its own, that
//! waits for the test process to end, then stops the postmasters it finds
//! in the directory (only processes whose command line names it) and
//! removes the directory.

use crate::cluster::{fresh_port, passwd_entry};
use anyhow::Context;
use std::{
    collections::HashSet,
    fs,
    net::SocketAddr,
    os::unix::{fs::chown, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};
use tokio::time::Instant;

/// Name prefix of the directories this fixture creates under `$TMPDIR`.
const DIR_PREFIX: &str = "likes-pg-";
/// The PostgreSQL major version the fixture uses.
const VERSION: &str = "15";

/// Stops the postmasters under `$2` once the test process `$1` is gone,
/// then removes the directory. A pid is only signalled if its command line
/// names the directory, so a recycled pid is never hit.
const WATCHDOG: &str = r#"
owner=$1; dir=$2
while kill -0 "$owner" 2>/dev/null; do sleep 1; done
ours() { tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$dir/"; }
for sig in QUIT KILL; do
  for f in "$dir"/*/postmaster.pid; do
    [ -f "$f" ] || continue
    pid=$(head -n 1 "$f")
    ours "$pid" && kill -$sig "$pid"
  done
  sleep 2
done
rm -rf "$dir"
"#;

/// How a standby replicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    /// The primary's commits wait for a standby to have the WAL
    /// (`synchronous_standby_names = '*'`).
    Synchronous,
    /// The primary's commits do not wait.
    Asynchronous,
}

/// One node of the cluster.
#[derive(Debug)]
struct Node {
    port: u16,
    data: PathBuf,
}

/// See the module documentation.
#[derive(Debug)]
pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    ids: Option<(u32, u32)>,
    nodes: Vec<Node>,
    watchdog: Option<Child>,
}

impl PgCluster {
    /// The installed PostgreSQL 15's binaries, if `initdb` is there.
    pub fn installed() -> Option<PathBuf> {
        let bin = PathBuf::from(format!("/usr/lib/postgresql/{VERSION}/bin"));
        bin.join("initdb").exists().then_some(bin)
    }

    /// A primary and `standbys` standbys, streaming, the primary's commits
    /// waiting for them or not as `replication` says.
    pub async fn start(standbys: usize, replication: Replication) -> anyhow::Result<Self> {
        let bin = Self::installed().context("no PostgreSQL 15 binaries (initdb) installed")?;
        let cluster = tokio::task::spawn_blocking(move || Self::create(bin, standbys)).await??;
        cluster.await_streaming(standbys).await?;
        if replication == Replication::Synchronous {
            cluster
                .sql(0, "ALTER SYSTEM SET synchronous_standby_names = '*'")
                .await?;
            cluster.sql(0, "SELECT pg_reload_conf()").await?;
            cluster.await_synchronous().await?;
        }
        Ok(cluster)
    }

    fn create(bin: PathBuf, standbys: usize) -> anyhow::Result<Self> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{id}"));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let root = nix_is_root();
        let ids = if root {
            let (uid, gid, _) =
                passwd_entry("postgres")?.context("no postgres user to run PostgreSQL as")?;
            Some((uid, gid))
        } else {
            None
        };
        if let Some((uid, gid)) = ids {
            chown(&dir, Some(uid), Some(gid))?;
        }
        let mut cluster = Self {
            dir,
            bin,
            ids,
            nodes: Vec::new(),
            watchdog: None,
        };
        cluster.watchdog = Some(cluster.spawn_watchdog()?);
        let mut taken = HashSet::new();
        let primary = cluster.node_dir(0);
        let port = fresh_port(&mut taken)?;
        cluster.run(
            "initdb",
            &[
                "-D",
                path(&primary)?,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        )?;
        append(
            &primary.join("postgresql.conf"),
            &format!(
                "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n\
                 wal_level = replica\nmax_wal_senders = 10\nhot_standby = on\nfsync = off\n\
                 shared_buffers = 32MB\nmax_connections = 100\nwal_keep_size = 256MB\n"
            ),
        )?;
        append(
            &primary.join("pg_hba.conf"),
            "\nhost replication all 127.0.0.1/32 trust\n",
        )?;
        cluster.nodes.push(Node {
            port,
            data: primary,
        });
        cluster.pg_ctl(0, &["start"])?;
        for index in 1..=standbys {
            let data = cluster.node_dir(index);
            let port = fresh_port(&mut taken)?;
            let primary_port = cluster.nodes[0].port.to_string();
            cluster.run(
                "pg_basebackup",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &primary_port,
                    "-U",
                    "postgres",
                    "-D",
                    path(&data)?,
                    "-R",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "--no-sync",
                ],
            )?;
            // The copied configuration names the primary's port: the last
            // setting wins.
            append(&data.join("postgresql.conf"), &format!("\nport = {port}\n"))?;
            cluster.nodes.push(Node { port, data });
            cluster.pg_ctl(index, &["start"])?;
        }
        Ok(cluster)
    }

    /// The directory holding every node's data and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The nodes: the primary first (as started; after a promotion, see
    /// which is which by asking).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The address of node `node`.
    pub fn addr(&self, node: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.nodes[node].port))
    }

    /// The URL of `database` on node `node`.
    pub fn url(&self, node: usize, database: &str) -> String {
        format!("postgres://postgres@{}/{database}", self.addr(node))
    }

    /// Runs `statement` on node `node`'s `postgres` database.
    pub async fn sql(&self, node: usize, statement: &str) -> anyhow::Result<()> {
        use diesel_async::{AsyncConnection, RunQueryDsl};
        let mut conn =
            diesel_async::AsyncPgConnection::establish(&self.url(node, "postgres")).await?;
        diesel::sql_query(statement)
            .execute(&mut conn)
            .await
            .with_context(|| format!("{statement} on node {node}"))?;
        Ok(())
    }

    /// Stops node `node` at once, as a crash would (`pg_ctl stop -m
    /// immediate`).
    pub async fn crash(&self, node: usize) -> anyhow::Result<()> {
        self.pg_ctl_async(node, &["stop", "-m", "immediate"]).await
    }

    /// Starts node `node` again.
    pub async fn start_node(&self, node: usize) -> anyhow::Result<()> {
        self.pg_ctl_async(node, &["start"]).await
    }

    /// Promotes standby `node` to a primary and waits until it is one.
    pub async fn promote(&self, node: usize) -> anyhow::Result<()> {
        self.pg_ctl_async(node, &["promote"]).await
    }

    /// Points standby `node`'s replication at `addr` (say, a fault proxy
    /// in front of the primary); its WAL receiver reconnects there.
    pub async fn replicate_from(&self, node: usize, addr: SocketAddr) -> anyhow::Result<()> {
        self.sql(
            node,
            &format!(
                "ALTER SYSTEM SET primary_conninfo = 'host={} port={} user=postgres'",
                addr.ip(),
                addr.port()
            ),
        )
        .await?;
        self.sql(node, "SELECT pg_reload_conf()").await
    }

    async fn await_streaming(&self, standbys: usize) -> anyhow::Result<()> {
        self.await_replication("streaming standbys", standbys, "state = 'streaming'")
            .await
    }

    async fn await_synchronous(&self) -> anyhow::Result<()> {
        self.await_replication("a synchronous standby", 1, "sync_state = 'sync'")
            .await
    }

    /// Waits until the primary sees at least `least` replication
    /// connections matching `condition`.
    async fn await_replication(
        &self,
        what: &str,
        least: usize,
        condition: &str,
    ) -> anyhow::Result<()> {
        use diesel_async::{AsyncConnection, RunQueryDsl};
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = diesel_async::AsyncPgConnection::establish(&self.url(0, "postgres")).await?;
        let query = format!("SELECT count(*) AS n FROM pg_stat_replication WHERE {condition}");
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let found: Count = diesel::sql_query(&query).get_result(&mut conn).await?;
            if usize::try_from(found.n).unwrap_or(0) >= least {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < until, "no {what} after 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn node_dir(&self, node: usize) -> PathBuf {
        self.dir.join(format!("n{node}"))
    }

    fn pg_ctl(&self, node: usize, args: &[&str]) -> anyhow::Result<()> {
        let data = &self.nodes[node].data;
        let log = self.dir.join(format!("n{node}.log"));
        let mut all = vec!["-D", path(data)?, "-l", path(&log)?, "-w", "-t", "60"];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all).map(drop)
    }

    async fn pg_ctl_async(&self, node: usize, args: &[&str]) -> anyhow::Result<()> {
        tokio::task::block_in_place(|| self.pg_ctl(node, args))
    }

    /// Runs `program` of the installation as the cluster's user; its
    /// standard output.
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut command = Command::new(self.bin.join(program));
        command
            .args(args)
            .current_dir(&self.dir)
            .env("LANG", "C.UTF-8")
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.ids {
            command.uid(uid).gid(gid);
        }
        let output = command
            .output()
            .with_context(|| format!("running {program}"))?;
        anyhow::ensure!(
            output.status.success(),
            "{program} {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn spawn_watchdog(&self) -> anyhow::Result<Child> {
        crate::cluster::spawn_watchdog(WATCHDOG, "likes-pg-watchdog", &self.dir)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        for node in 0..self.nodes.len() {
            if self.nodes[node].data.join("postmaster.pid").exists() {
                let _ = self.pg_ctl(node, &["stop", "-m", "immediate"]);
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

fn nix_is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn path(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

fn append(file: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(file)
        .with_context(|| format!("opening {}", file.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}
