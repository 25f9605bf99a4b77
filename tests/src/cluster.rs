//! A three-node fault-test cluster (issue 7): a real `nats-server`, three `drawbridge-server`
//! processes that bootstrap together, each with a `/metrics` endpoint, and a [`Client`] of all
//! ([`crate::clients`]).
//!
//! [`ClusterOptions`] chooses how it starts: links that can be cut ([`Links`], for network
//! partitions: nftables rules when the test runs in its own network namespace
//! ([`crate::netns`]), fault-injecting proxies otherwise), chosen nodes' data directories on small tmpfs mounts
//! ([`crate::tmpfs`], for disk full), extra configuration for every node. The helpers find the
//! partition and metadata leaders, stop, restart and signal nodes, wait for the ISR, fill and
//! free the tmpfs node's disk, run `cluster verify`, and collect logs when a test fails.
//!
//! Invariants:
//! - Node `i` is `specs[i]` for the cluster's whole life; `servers[i]` is `None` while it is
//!   stopped. A restart reuses the spec, so the node comes back on its own data (except the
//!   tmpfs nodes, whose restart is refused: their data went with their process).
//! - Every wait is bounded in time; every process is stopped by PID when the cluster drops.
//! - Only 127.0.0.1 is used.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use drawbridge_client::{Client, StreamOptions, VerifyReport};

use crate::clients;
use crate::links::Links;
use crate::metrics;
use crate::nats::NatsServer;
use crate::netns;
use crate::ports::free_port;
use crate::proxy::Mode;
use crate::server::{cluster, cluster_specs, DrawbridgeServer, ServerSpec};
use crate::tmpfs;

/// The error type of the fault tests' helpers.
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How a [`Cluster`] starts.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Where a failing test keeps the servers' whole logs ([`Cluster::logs`]); the servers'
    /// temp dirs go when the test ends.
    pub logs_dir: PathBuf,
    /// Links that can be cut ([`Links`]: nftables inside a network namespace of the test's
    /// own, [`netns::inside`]; proxies elsewhere).
    pub partitionable: bool,
    /// `(node, size)` pairs: node `node`'s data dir on a tmpfs of `size` (`mount -o size=`,
    /// e.g. `"32m"`) in a private mount namespace ([`crate::tmpfs`]).
    pub tmpfs: Vec<(usize, String)>,
    /// Extra configuration for every node (YAML lines, each ending in a newline).
    pub config: String,
}

impl ClusterOptions {
    /// A plain cluster that keeps failure logs under `logs_dir`.
    pub fn new(logs_dir: impl Into<PathBuf>) -> Self {
        Self {
            logs_dir: logs_dir.into(),
            partitionable: false,
            tmpfs: Vec::new(),
            config: String::new(),
        }
    }

    /// Links that can be cut ([`Links`]).
    pub fn partitionable(mut self) -> Self {
        self.partitionable = true;
        self
    }

    /// Node `node`'s data dir on a tmpfs of `size` (e.g. `"32m"`); repeatable.
    pub fn tmpfs(mut self, node: usize, size: &str) -> Self {
        self.tmpfs.push((node, size.to_owned()));
        self
    }

    /// Adds `line` (e.g. `"storage.min.free.bytes: 0"`) to every node's configuration.
    pub fn config(mut self, line: &str) -> Self {
        self.config.push_str(line);
        self.config.push('\n');
        self
    }
}

/// A started cluster: NATS, three servers (a stopped one is `None`), their specs (restart on
/// the same data) and metrics ports, and a client of all. See the module docs.
pub struct Cluster {
    /// Each node's spec (restart on the same data), by index.
    pub specs: Vec<ServerSpec>,
    /// The running servers; a stopped one is `None`.
    pub servers: Vec<Option<DrawbridgeServer>>,
    /// Each node's metrics port.
    pub metrics: Vec<u16>,
    /// A client bootstrapped with every node.
    pub client: Client,
    /// The links of a partitionable cluster ([`ClusterOptions::partitionable`]).
    pub links: Option<Links>,
    /// How the cluster was started.
    opts: ClusterOptions,
    /// Declared last, so dropped last: the servers shut down (one after another, each handing
    /// its leaderships to the ones still running) while NATS still serves them.
    _nats: NatsServer,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("specs", &self.specs)
            .field("metrics", &self.metrics)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts NATS and three servers with a metrics endpoint each, as `opts` says; `None` when
    /// nats-server is missing, or a tmpfs cannot be mounted, outside CI.
    ///
    /// A start that fails (a server that never listens: e.g. a port taken between
    /// [`free_port`] and the bind by another process's outgoing connection) is retried once
    /// from scratch, with fresh ports and directories; what the failed attempt started is
    /// stopped when it is dropped.
    pub async fn start(test: &str, opts: ClusterOptions) -> TestResult<Option<Cluster>> {
        match Self::start_once(test, opts.clone()).await {
            Err(e) => {
                eprintln!("cluster: start failed ({e}); retrying once from scratch");
                Self::start_once(test, opts).await
            }
            done => done,
        }
    }

    async fn start_once(test: &str, opts: ClusterOptions) -> TestResult<Option<Cluster>> {
        let Some(nats) = NatsServer::start_or_skip(test) else {
            return Ok(None);
        };
        let bin = crate::bins::drawbridge_server()?;
        let mut specs = cluster_specs(&bin, &nats.url(), 3)?;
        for (i, size) in &opts.tmpfs {
            let spec = specs.get_mut(*i).ok_or("tmpfs node out of range")?;
            if !tmpfs::mount_or_skip(test, &spec.data_dir.with_file_name("probe"))? {
                return Ok(None);
            }
            spec.wrapper = tmpfs::wrapper(&spec.data_dir, size);
        }
        let metrics = specs
            .iter()
            .map(|_| free_port())
            .collect::<std::io::Result<Vec<u16>>>()?;
        let links = match (opts.partitionable, netns::inside()) {
            (false, _) => None,
            (true, true) => Some(Links::netns(&mut specs, &metrics, nats.port())?),
            (true, false) => Some(Links::proxies(&mut specs, nats.port())?),
        };
        if let Some(l) = &links {
            eprintln!("cluster: partitionable, links over {}", l.backend());
        }
        for (spec, port) in specs.iter_mut().zip(metrics.iter().copied()) {
            let conf = spec
                .data_dir
                .with_file_name(format!("{}-faults.yaml", spec.id));
            std::fs::write(
                &conf,
                format!("metrics.listen: 127.0.0.1:{port}\n{}", opts.config),
            )?;
            spec.args
                .extend(["--config".to_owned(), conf.display().to_string()]);
            // FAULTS_SERVER_LEVEL=debug reproduces a failure with the servers' debug logs.
            if let Ok(level) = std::env::var("FAULTS_SERVER_LEVEL") {
                spec.args.extend(["--level".to_owned(), level]);
            }
        }
        let servers = cluster(&specs)?.into_iter().map(Some).collect();
        let client = clients::cluster_client(clients::addrs(&specs))
            .connect()
            .await?;
        Ok(Some(Cluster {
            _nats: nats,
            specs,
            servers,
            metrics,
            client,
            links,
            opts,
        }))
    }

    /// Creates an RF-3 stream and waits (≤ 20 s) until its partition has a leader and three
    /// in-sync replicas.
    pub async fn create_replicated(&self, name: &str) -> TestResult {
        let opts = StreamOptions {
            replication_factor: 3,
            ..StreamOptions::default()
        };
        // A create that timed out (a busy, freshly started cluster) may still have been
        // committed: retry, and take "exists" after a retry as success.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut retried = false;
        loop {
            match self.client.create_stream(name, name, opts.clone()).await {
                Ok(()) => break,
                Err(drawbridge_client::Error::StreamExists) if retried => break,
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    eprintln!("faults: create {name}: {e}; retrying");
                    retried = true;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(format!("create {name}: {e}").into()),
            }
        }
        self.wait_in_sync(name, Duration::from_secs(20)).await?;
        Ok(())
    }

    /// Waits (≤ `wait`) until partition 0 has a leader and three in-sync replicas; returns
    /// the leader's index.
    pub async fn wait_in_sync(&self, name: &str, wait: Duration) -> TestResult<usize> {
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(md) = self.client.fetch_metadata().await {
                let p = md.stream(name).and_then(|s| s.partitions.get(&0)).cloned();
                if let Some(p) = p.filter(|p| p.isr.len() == 3) {
                    if let Some(i) = p.leader.and_then(|l| self.index_of(&l)) {
                        return Ok(i);
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("{name}: no leader with 3 in-sync replicas").into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The index of the running server `id`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.servers
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.spec.id == id))
    }

    /// The partition leader (≤ 20 s to find one that runs).
    pub async fn partition_leader(&self, name: &str) -> TestResult<usize> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(md) = self.client.fetch_metadata().await {
                let leader = md
                    .stream(name)
                    .and_then(|s| s.partitions.get(&0))
                    .and_then(|p| p.leader.clone());
                if let Some(i) = leader.and_then(|l| self.index_of(&l)) {
                    return Ok(i);
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("{name}: no running partition leader").into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The metadata leader, from the `drawbridge_metadata_leader` gauge of each running
    /// node's `/metrics` (≤ 20 s).
    pub fn metadata_leader(&self) -> TestResult<usize> {
        let stopped: Vec<usize> = (0..self.servers.len())
            .filter(|i| self.servers[*i].is_none())
            .collect();
        Ok(metrics::metadata_leader(
            &self.metrics,
            &stopped,
            Duration::from_secs(20),
        )?)
    }

    /// SIGKILL of server `i` (by PID).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut s) = self.servers[i].take() {
            eprintln!("faults: SIGKILL {}", s.spec.id);
            s.kill();
        }
    }

    /// SIGTERM of server `i` (by PID), bounded.
    pub fn terminate(&mut self, i: usize) {
        if let Some(mut s) = self.servers[i].take() {
            eprintln!("faults: SIGTERM {}", s.spec.id);
            let clean = tokio::task::block_in_place(|| s.stop(Duration::from_secs(10)));
            if !clean {
                eprintln!("faults: {} did not exit within 10 s of SIGTERM", s.spec.id);
            }
        }
    }

    /// Restarts server `i` on its data. Refused for the tmpfs node (its data went with its
    /// process: a restart would mount an empty tmpfs).
    pub fn restart(&mut self, i: usize) -> TestResult {
        if self.opts.tmpfs.iter().any(|(t, _)| *t == i) {
            return Err(format!(
                "{}: its data was on a tmpfs; not restarted",
                self.specs[i].id
            )
            .into());
        }
        eprintln!("faults: restarting {}", self.specs[i].id);
        let spec = &self.specs[i];
        // Waiting for the port blocks: keep the runtime's other worker free meanwhile.
        self.servers[i] = Some(tokio::task::block_in_place(|| {
            DrawbridgeServer::start(spec)
        })?);
        Ok(())
    }

    /// `drawbridge cluster verify` in-process: compares every partition's replicas up to their
    /// common high watermark. Retries (≤ 30 s) while a replica cannot be compared yet (a
    /// restarted node still opening its partitions); fails on divergence at once.
    pub async fn verify(&self) -> TestResult<VerifyReport> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let report = match self.client.verify_partitions().await {
                Ok(r) => r,
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    eprintln!("faults: verify: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(e) => return Err(format!("cluster verify: {e}").into()),
            };
            let divergent = !report.divergent().is_empty();
            if divergent || report.incomplete().is_empty() || Instant::now() >= deadline {
                let summary: Vec<String> = report
                    .partitions
                    .iter()
                    .map(|p| format!("{}/{} {:?}", p.stream, p.partition, p.range))
                    .collect();
                eprintln!(
                    "faults: verify: {} records compared; {}",
                    report.records(),
                    summary.join(", ")
                );
                if divergent || !report.incomplete().is_empty() {
                    return Err(format!("cluster verify failed: {report:#?}").into());
                }
                return Ok(report);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Fails if a server exited by itself or logged a panic.
    pub fn assert_no_crash(&mut self) -> TestResult {
        for spec in &self.specs {
            let log = std::fs::read_to_string(spec.log_path()).unwrap_or_default();
            if let Some(line) = log.lines().find(|l| l.contains("panicked")) {
                return Err(format!("{} panicked: {line}\n{}", spec.id, self.logs()).into());
            }
        }
        for s in self.servers.iter_mut().flatten() {
            if s.has_exited() {
                return Err(format!("{} exited\n{}", s.spec.id, s.log_tail()).into());
            }
        }
        Ok(())
    }

    /// The ends of every server's log, for failure messages; the whole logs are copied to
    /// `<ClusterOptions::logs_dir>/<pid>/` (the temp dirs go when the test ends).
    pub fn logs(&self) -> String {
        let keep = self.opts.logs_dir.join(std::process::id().to_string());
        let saved = std::fs::create_dir_all(&keep).is_ok()
            && self
                .specs
                .iter()
                .all(|s| std::fs::copy(s.log_path(), keep.join(format!("{}.log", s.id))).is_ok());
        let tails = self
            .servers
            .iter()
            .flatten()
            .map(|s| format!("--- {} ---\n{}", s.spec.id, s.log_tail()))
            .collect::<Vec<_>>()
            .join("\n");
        match saved {
            true => format!("full logs in {}\n{tails}", keep.display()),
            false => tails,
        }
    }

    /// The running server `i`, or an error naming it.
    fn running(&self, i: usize) -> TestResult<&DrawbridgeServer> {
        self.servers
            .get(i)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("node {i} is not running").into())
    }

    fn links(&self) -> TestResult<&Links> {
        self.links
            .as_ref()
            .ok_or_else(|| "the cluster is not partitionable".into())
    }

    fn pids(&self) -> Vec<Option<u32>> {
        self.servers
            .iter()
            .map(|s| s.as_ref().and_then(DrawbridgeServer::pid))
            .collect()
    }

    /// Cuts node `i` from every other node (both directions; it keeps NATS and its clients),
    /// as `mode` says ([`Links::isolate`]).
    pub fn isolate(&self, i: usize, mode: Mode) -> TestResult {
        let links = self.links()?;
        eprintln!(
            "faults: cutting {} from its peers ({mode:?}, {})",
            self.specs[i].id,
            links.backend()
        );
        links.isolate(i, mode, &self.pids())
    }

    /// Cuts node `i` from NATS as `mode` says ([`Links::cut_from_nats`]).
    pub fn cut_from_nats(&self, i: usize, mode: Mode) -> TestResult {
        let links = self.links()?;
        eprintln!(
            "faults: cutting {} from NATS ({mode:?}, {})",
            self.specs[i].id,
            links.backend()
        );
        links.cut_from_nats(i, mode, self.pids().get(i).copied().flatten())
    }

    /// Restores every link ([`Links::heal`]).
    pub fn heal(&self) -> TestResult {
        self.links()?.heal()
    }

    /// Bytes node `i` exchanged over raft with its peers so far ([`Links::raft_bytes`]).
    pub fn raft_bytes(&self, i: usize) -> TestResult<u64> {
        self.links()?.raft_bytes(i)
    }

    /// Fills the tmpfs of node `i` (see [`ClusterOptions::tmpfs`]), leaving `leave_mib` MiB.
    pub fn fill(&self, i: usize, leave_mib: u32) -> TestResult {
        let s = self.running(i)?;
        let pid = s.pid().ok_or("no pid")?;
        tmpfs::fill(pid, &s.spec.data_dir, leave_mib)?;
        eprintln!(
            "faults: filled the disk of {} ({} bytes available)",
            s.spec.id,
            tmpfs::available(pid, &s.spec.data_dir)?
        );
        Ok(())
    }

    /// Deletes the filler on node `i`'s tmpfs.
    pub fn unfill(&self, i: usize) -> TestResult {
        let s = self.running(i)?;
        let pid = s.pid().ok_or("no pid")?;
        tmpfs::unfill(pid, &s.spec.data_dir)?;
        eprintln!(
            "faults: freed the disk of {} ({} bytes available)",
            s.spec.id,
            tmpfs::available(pid, &s.spec.data_dir)?
        );
        Ok(())
    }
}
