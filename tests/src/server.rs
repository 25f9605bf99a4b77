//! `drawbridge-server` processes for multi-process tests.
//!
//! A [`ServerSpec`] describes one server (binary, id, ports, data dir, NATS, bootstrap mode);
//! [`DrawbridgeServer::start`] spawns it with its log in `<data dir>/server.log` and waits until
//! its client port accepts connections. [`cluster`] starts N servers that bootstrap together
//! with `--raft-bootstrap-peers`.
//!
//! The binary path is passed in by the test: tests that live in the server crate
//! (`server/tests/`) get it from `env!("CARGO_BIN_EXE_drawbridge-server")`, which makes Cargo
//! build the binary first — the simplest robust way to run the real binary.
//!
//! Invariants: loopback only; every process is owned by a [`ChildGuard`] (stopped on drop);
//! every wait is bounded; a server's data dir outlives restarts of the process (it belongs to
//! the spec, not to the process).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::ports::{free_port, wait_for_listen};
use crate::process::ChildGuard;

/// How a server reaches NATS.
#[derive(Debug, Clone)]
pub enum NatsMode {
    /// `--embedded-nats` with the embedded broker on this port.
    Embedded(u16),
    /// `--nats-servers URL`.
    External(String),
}

/// How a server forms its cluster.
#[derive(Debug, Clone)]
pub enum Bootstrap {
    /// No flag (standalone default).
    Default,
    /// `--raft-bootstrap-seed`.
    Seed,
    /// `--raft-bootstrap-peers ids`.
    Peers(Vec<String>),
}

/// One server's settings; reusable to restart it on the same data.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// The `drawbridge-server` binary.
    pub bin: PathBuf,
    /// `--server-id`.
    pub id: String,
    /// Client API port.
    pub port: u16,
    /// Raft port.
    pub raft_port: u16,
    /// NATS.
    pub nats: NatsMode,
    /// Cluster formation.
    pub bootstrap: Bootstrap,
    /// Data directory (kept across restarts).
    pub data_dir: PathBuf,
    /// Namespace (unique per test when several tests share one NATS).
    pub namespace: String,
    /// Extra arguments.
    pub args: Vec<String>,
    /// Extra environment variables. The encryption key variables are never inherited from the
    /// test's own environment: a server has a key only when its spec sets one here.
    pub env: Vec<(String, String)>,
    /// A command the server is started through (empty: started directly): the server's
    /// program and arguments are appended to it, so it must end by exec-ing them (e.g.
    /// `unshare -m sh -c '... && exec "$@"' sh`), which keeps the PID the harness stops.
    pub wrapper: Vec<String>,
    /// The group id the server runs as (`setgid` before exec; the uid stays), so that
    /// nftables can tell its sockets apart (`meta skgid`, [`crate::nft`]). `None`: inherited.
    pub gid: Option<u32>,
    /// Keeps the temp dir alive as long as any spec clone lives.
    _tmp: Arc<tempfile::TempDir>,
}

impl ServerSpec {
    /// A spec with fresh free ports and a fresh temp data dir.
    pub fn new(bin: impl Into<PathBuf>, id: &str, nats: NatsMode) -> std::io::Result<Self> {
        let tmp = tempfile::tempdir()?;
        Ok(Self {
            bin: bin.into(),
            id: id.to_owned(),
            port: free_port()?,
            raft_port: free_port()?,
            nats,
            bootstrap: Bootstrap::Default,
            data_dir: tmp.path().join("data"),
            namespace: format!("test-{}", std::process::id()),
            args: Vec::new(),
            env: Vec::new(),
            wrapper: Vec::new(),
            gid: None,
            _tmp: Arc::new(tmp),
        })
    }

    /// Where the server writes its log.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.with_file_name(format!("{}.log", self.id))
    }

    fn command(&self) -> std::io::Result<Command> {
        std::fs::create_dir_all(&self.data_dir)?;
        let mut cmd = match self.wrapper.split_first() {
            None => Command::new(&self.bin),
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(&self.bin);
                c
            }
        };
        cmd.arg("--server-id")
            .arg(&self.id)
            .arg("--namespace")
            .arg(&self.namespace)
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--raft-listen")
            .arg(format!("127.0.0.1:{}", self.raft_port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env("LIFTBRIDGE_HOST", "127.0.0.1")
            .env("LIFTBRIDGE_LISTEN", format!("127.0.0.1:{}", self.port));
        match &self.nats {
            NatsMode::Embedded(port) => {
                let conf = self
                    .data_dir
                    .with_file_name(format!("{}-nats.conf", self.id));
                std::fs::write(&conf, format!("listen: \"127.0.0.1:{port}\"\n"))?;
                cmd.arg("--embedded-nats-config").arg(conf);
            }
            NatsMode::External(url) => {
                cmd.arg("--nats-servers").arg(url);
            }
        }
        match &self.bootstrap {
            Bootstrap::Default => {}
            Bootstrap::Seed => {
                cmd.arg("--raft-bootstrap-seed");
            }
            Bootstrap::Peers(p) => {
                cmd.arg("--raft-bootstrap-peers").arg(p.join(","));
            }
        }
        cmd.args(&self.args);
        cmd.env_remove("LIFTBRIDGE_ENCRYPTION_KEY")
            .env_remove("DRAWBRIDGE_ENCRYPTION_OLD_KEYS")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        if let Some(gid) = self.gid {
            cmd.gid(gid);
        }
        Ok(cmd)
    }
}

/// Why a server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerStartError {
    /// Spawning failed.
    #[error("spawning drawbridge-server: {0}")]
    Spawn(#[from] std::io::Error),
    /// The port did not open in time, or the process exited.
    #[error(
        "drawbridge-server {id} did not listen on 127.0.0.1:{port} within {secs} s; log:\n{log}"
    )]
    NotListening {
        /// Server id.
        id: String,
        /// Port.
        port: u16,
        /// Seconds waited.
        secs: u64,
        /// The end of its log.
        log: String,
    },
}

/// A running server process.
#[derive(Debug)]
pub struct DrawbridgeServer {
    /// Its spec (restart with [`DrawbridgeServer::start`] on a clone).
    pub spec: ServerSpec,
    process: ChildGuard,
}

impl Drop for DrawbridgeServer {
    /// Stops the process like [`ChildGuard`] would, and when it overran the grace period
    /// prints the end of its log (what the shutdown was waiting for).
    fn drop(&mut self) {
        if self.process.pid().is_some() && !self.stop(Duration::from_secs(5)) {
            eprintln!(
                "drawbridge-server:{}: log after SIGTERM:\n{}",
                self.spec.id,
                tail_of(&self.spec.log_path())
            );
        }
    }
}

fn tail_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

impl DrawbridgeServer {
    /// Spawns the server without waiting.
    pub fn spawn(spec: &ServerSpec) -> Result<Self, ServerStartError> {
        let mut cmd = spec.command()?;
        let process = ChildGuard::spawn(format!("drawbridge-server:{}", spec.id), &mut cmd)?;
        Ok(Self {
            spec: spec.clone(),
            process,
        })
    }

    /// Waits until the client port accepts connections (or `timeout`).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), ServerStartError> {
        if wait_for_listen(self.spec.port, timeout) && !self.process.has_exited() {
            return Ok(());
        }
        Err(ServerStartError::NotListening {
            id: self.spec.id.clone(),
            port: self.spec.port,
            secs: timeout.as_secs(),
            log: tail_of(&self.spec.log_path()),
        })
    }

    /// Spawns the server and waits (up to 30 s) until it serves.
    pub fn start(spec: &ServerSpec) -> Result<Self, ServerStartError> {
        let mut s = Self::spawn(spec)?;
        s.wait_ready(Duration::from_secs(30))?;
        Ok(s)
    }

    /// `http://127.0.0.1:<port>` for gRPC clients.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.spec.port)
    }

    /// The process id (of the server, or of its wrapper until that execs the server).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`, `libc::SIGCONT`) to the process, by PID.
    /// Returns false when there is no process.
    pub fn signal(&self, signal: i32) -> bool {
        self.process.signal(signal)
    }

    /// Whether the process has exited (crashed, or was killed).
    pub fn has_exited(&mut self) -> bool {
        self.process.has_exited()
    }

    /// SIGTERM and wait (up to `grace`); returns whether it exited by itself.
    pub fn stop(&mut self, grace: Duration) -> bool {
        self.process.stop(grace).is_some()
    }

    /// The end of the server's log (for assertion messages).
    pub fn log_tail(&self) -> String {
        tail_of(&self.spec.log_path())
    }
}

/// Specs for an `n`-server cluster on external NATS that bootstraps with explicit peers.
pub fn cluster_specs(bin: &Path, nats_url: &str, n: usize) -> std::io::Result<Vec<ServerSpec>> {
    let ids: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
    let ns = format!("cluster-{}-{}", std::process::id(), free_port()?);
    ids.iter()
        .map(|id| {
            let mut s = ServerSpec::new(bin, id, NatsMode::External(nats_url.to_owned()))?;
            s.bootstrap = Bootstrap::Peers(ids.iter().filter(|o| *o != id).cloned().collect());
            s.namespace = ns.clone();
            Ok(s)
        })
        .collect()
}

/// Starts every spec (all spawned first, then each awaited: they bootstrap together).
pub fn cluster(specs: &[ServerSpec]) -> Result<Vec<DrawbridgeServer>, ServerStartError> {
    let mut servers = specs
        .iter()
        .map(DrawbridgeServer::spawn)
        .collect::<Result<Vec<_>, _>>()?;
    for s in &mut servers {
        s.wait_ready(Duration::from_secs(60))?;
    }
    Ok(servers)
}
