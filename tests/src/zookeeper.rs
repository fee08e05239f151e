//! Real ZooKeeper servers (Debian package `zookeeper`, ZooKeeper 3.8), each
//! a JVM started straight from the packaged jars with a generated `zoo.cfg`.
//!
//! Ticks are short (`tickTime=200`, sessions down to 400 ms) so that session
//! expiry, which is what a ZooKeeper registry lives by, takes a second in a
//! test rather than the default tens of seconds.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{free_ports, require_binary, ChildGuard};

/// The packaged server jar; its manifest's `Class-Path` names every jar it
/// needs, so it is the whole classpath but for a logging backend.
const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
/// slf4j's console backend, installed with ZooKeeper's dependencies; without
/// it the server logs nothing, and a failed start would show no reason.
const SLF4J_SIMPLE_JAR: &str = "/usr/share/java/slf4j-simple.jar";
/// ZooKeeper's tick: the unit of its session timeouts and quorum limits.
pub const ZOOKEEPER_TICK: Duration = Duration::from_millis(200);
/// The shortest session a test server grants (two ticks, ZooKeeper's floor).
pub const ZOOKEEPER_MIN_SESSION_TIMEOUT: Duration = Duration::from_millis(400);
/// How long a (re)started server may take to serve: a JVM start on a loaded
/// two-core machine, plus an election for an ensemble member.
const START_DEADLINE: Duration = Duration::from_secs(90);

/// One ZooKeeper server: its client port, configuration and data directory
/// stay the same across restarts.
#[derive(Debug)]
pub struct ZooKeeperServer {
    /// `myid` of an ensemble member; 0 for a standalone server.
    id: usize,
    client_port: u16,
    config: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    process: Option<ChildGuard>,
    _dir: Option<TempDir>,
}

impl ZooKeeperServer {
    /// Starts a standalone server on a free loopback port with an empty data
    /// directory, and waits until it serves.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = TempDir::with_prefix("zookeeper-test-")?;
        let [client_port] = free_ports(1)?[..] else {
            unreachable!("free_ports returns as many ports as asked")
        };
        let mut server = Self::new(0, dir.path(), client_port, "")?;
        server._dir = Some(dir);
        server.spawn()?;
        server.wait_serving().await?;
        Ok(server)
    }

    /// Writes the member's `zoo.cfg` (and `myid`) under `dir`; `servers` is
    /// the ensemble's `server.N=` lines, empty for a standalone server.
    fn new(id: usize, dir: &Path, client_port: u16, servers: &str) -> anyhow::Result<Self> {
        let data_dir = dir.join(format!("zk{id}"));
        std::fs::create_dir_all(&data_dir)?;
        let config = dir.join(format!("zk{id}.cfg"));
        std::fs::write(
            &config,
            format!(
                "tickTime={tick}\n\
                 minSessionTimeout={min_session}\n\
                 maxSessionTimeout=60000\n\
                 # Quorum limits in ticks: 10 s to join and sync, 5 s of\n\
                 # follower silence, generous for a loaded machine.\n\
                 initLimit=50\n\
                 syncLimit=25\n\
                 dataDir={data}\n\
                 clientPort={client_port}\n\
                 clientPortAddress=127.0.0.1\n\
                 # The test's data only has to survive a process kill,\n\
                 # which the page cache does; fsync per write would slow\n\
                 # every test on a shared disk.\n\
                 forceSync=no\n\
                 preAllocSize=1024\n\
                 admin.enableServer=false\n\
                 4lw.commands.whitelist=ruok,srvr,mntr\n\
                 {servers}",
                tick = ZOOKEEPER_TICK.as_millis(),
                min_session = ZOOKEEPER_MIN_SESSION_TIMEOUT.as_millis(),
                data = data_dir.display(),
            ),
        )?;
        let server = Self {
            id,
            client_port,
            config,
            log: dir.join(format!("zk{id}.log")),
            data_dir,
            process: None,
            _dir: None,
        };
        server.write_myid()?;
        Ok(server)
    }

    fn write_myid(&self) -> anyhow::Result<()> {
        if self.id != 0 {
            std::fs::write(self.data_dir.join("myid"), format!("{}\n", self.id))?;
        }
        Ok(())
    }

    /// `127.0.0.1:<client port>`, a connect string of this server alone.
    pub fn connect_string(&self) -> String {
        self.client_address().to_string()
    }

    /// The client port's address (for a [`crate::FaultProxy`] in front).
    pub fn client_address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// The JVM's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(ChildGuard::pid)
    }

    /// Kills the server (SIGKILL), keeping its data directory: the znodes
    /// and sessions it had are back after [`restart`](Self::restart).
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Starts the server again (killing it first if it runs) on the same
    /// port and data directory, and waits until it serves.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()?;
        self.wait_serving().await
    }

    /// Kills the server, deletes every znode and session it stored, and
    /// starts an empty one in its place (same port, same ensemble id).
    pub async fn wipe_and_restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        std::fs::remove_dir_all(&self.data_dir)?;
        std::fs::create_dir_all(&self.data_dir)?;
        self.write_myid()?;
        self.spawn()?;
        self.wait_serving().await
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is
    /// answered, as with a server stuck in a long GC pause. A paused server
    /// still dies with its guard (SIGKILL ends a stopped process).
    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.signal("STOP")?;
        Ok(())
    }

    /// Lets a [paused](Self::pause) server run on (SIGCONT).
    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.signal("CONT")?;
        Ok(())
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("ZooKeeper is not running")?;
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed: {status}");
        }
        Ok(())
    }

    /// The server's role from the `srvr` command: `standalone`, `leader` or
    /// `follower`; `None` while it does not serve (starting, electing).
    pub async fn mode(&self) -> Option<String> {
        let answer = four_letter_word(self.client_address(), "srvr").await.ok()?;
        answer
            .lines()
            .find_map(|line| line.strip_prefix("Mode: "))
            .map(|mode| mode.trim().to_owned())
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let java = require_binary("java", "zookeeper")?;
        if !Path::new(ZOOKEEPER_JAR).is_file() {
            bail!(
                "{ZOOKEEPER_JAR} is missing: run `apt-get install -y zookeeper` \
                 (or `scripts/test.sh`, which installs it when run as root)"
            );
        }
        let mut classpath = ZOOKEEPER_JAR.to_owned();
        if Path::new(SLF4J_SIMPLE_JAR).is_file() {
            classpath.push(':');
            classpath.push_str(SLF4J_SIMPLE_JAR);
        }
        let mut command = Command::new(java);
        command
            // Small and quick to start: a few servers share two cores and
            // the memory of the tests' build.
            .args(["-Xms16m", "-Xmx128m", "-Xss512k", "-XX:+UseSerialGC"])
            .args(["-XX:TieredStopAtLevel=1", "-XX:-UsePerfData"])
            .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
            .arg("-Dorg.slf4j.simpleLogger.showDateTime=true")
            .arg("-Dzookeeper.jmx.log4j.disable=true")
            .arg("-cp")
            .arg(classpath)
            // Runs a standalone server itself when zoo.cfg names no ensemble.
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(&self.config);
        self.process = Some(ChildGuard::spawn(
            &format!("zookeeper {}", self.id),
            command,
            &self.log,
        )?);
        Ok(())
    }

    async fn wait_serving(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + START_DEADLINE;
        loop {
            let process = self.process.as_mut().context("ZooKeeper is not running")?;
            process.check_running()?;
            if self.mode().await.is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let process = self.process.as_ref().context("ZooKeeper is not running")?;
                bail!(
                    "ZooKeeper {} not serving after {START_DEADLINE:?}; log:\n{}",
                    self.id,
                    process.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Sends a four-letter command and returns the whole answer (the server
/// closes the connection after it).
async fn four_letter_word(address: SocketAddr, word: &str) -> anyhow::Result<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream.write_all(word.as_bytes()).await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        anyhow::Ok(answer)
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .with_context(|| format!("`{word}` to {address} timed out"))?
}

/// A ZooKeeper ensemble on loopback.
#[derive(Debug)]
pub struct ZooKeeperEnsemble {
    /// The members, in start order (`myid` 1, 2, ...).
    pub members: Vec<ZooKeeperServer>,
    _dir: TempDir,
}

impl ZooKeeperEnsemble {
    /// Starts `size` members and waits until every one serves (a leader
    /// was elected and the others follow it).
    pub async fn start(size: usize) -> anyhow::Result<Self> {
        let dir = TempDir::with_prefix("zookeeper-ensemble-test-")?;
        // Per member: client, quorum and election ports.
        let ports: Vec<[u16; 3]> = free_ports(size * 3)?
            .chunks(3)
            .map(|chunk| [chunk[0], chunk[1], chunk[2]])
            .collect();
        let servers: String = ports
            .iter()
            .enumerate()
            .map(|(i, [_, quorum, election])| {
                format!("server.{}=127.0.0.1:{quorum}:{election}\n", i + 1)
            })
            .collect();
        let mut members = ports
            .iter()
            .enumerate()
            .map(|(i, [client, ..])| ZooKeeperServer::new(i + 1, dir.path(), *client, &servers))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for member in &mut members {
            member.spawn()?;
        }
        for member in &mut members {
            member.wait_serving().await?;
        }
        Ok(Self { members, _dir: dir })
    }

    /// Every member's `127.0.0.1:<client port>`, comma-separated.
    pub fn connect_string(&self) -> String {
        self.members
            .iter()
            .map(ZooKeeperServer::connect_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}
