//! Fault injection (issue 7, points 1, 2 and 4): nothing acknowledged is ever lost.
//!
//! Three `drawbridge-server` processes on a real `nats-server`, one stream with replication
//! factor 3 and one partition. Two publishers send unique values (`c<client>-<counter>`)
//! with ack ALL through pipelined [`Publisher`]s, retry a failed value a bounded number of
//! times and record every attempt. Faults are injected one after another; afterwards every
//! node is read from the earliest offset, through its own client port with
//! `readISRReplica = true`, and [`drawbridge_tests::checker`] decides.
//!
//! - [`process_faults_lose_no_acknowledged_message`]: SIGKILL + restart of the partition
//!   leader, of a follower, of the metadata leader (found through each node's `/metrics`,
//!   gauge `drawbridge_metadata_leader`), then SIGSTOP of the partition leader past the
//!   election timeout and SIGCONT.
//! - [`storage_fault`] (four tests, one fault each, each on its own cluster): with a follower
//!   stopped after acknowledged writes (SIGKILL, or SIGTERM for a clean close that leaves a
//!   recovery point), its newest segment gets a torn tail, a flipped bit in the tail, a
//!   truncated index or a deleted index; it must restart without panicking, catch up, and the
//!   checker must pass on all nodes. The torn tail and the bit flip exercise the raft layer's
//!   recovery: the follower's log ends below what the leader last saw it acknowledge (partition
//!   groups allow log reversion), and a batch failing its CRC is cut at open before openraft
//!   reads it (`drawbridge_storage::Log::truncate_at_first_corrupt`).
//! - [`a_resumed_deposed_leader_neither_appends_nor_acks`] and
//!   [`two_replicas_killed_after_a_burst_lose_no_ack`]: the two Liftbridge failure scenarios
//!   (a leader stopped past the election timeout and resumed with its NATS subscription alive;
//!   two of three replicas killed right after an ack-ALL burst and restarted together).
//! - [`a_resumed_deposed_leader_loses_leader_acks_only_before_stepping_down`]: the first
//!   scenario with ack policy LEADER, where losing an ack given before replication is
//!   inherent; it asserts the bound (see the test).
//! - [`verify_finds_a_silently_diverged_replica`]: `cluster verify` passes on a healthy
//!   cluster and names a replica whose log was rewritten consistently but wrongly.
//!
//! - Network partitions through per-link proxies ([`Links`], `drawbridge_tests::proxy`):
//!   [`an_isolated_partition_leader_is_replaced_and_acks_nothing_lost`] (the partition leader
//!   blackholed from its peers under ack-ALL load),
//!   [`a_node_cut_from_nats_reconnects_and_loses_nothing`] (a follower's, then the partition
//!   leader's NATS link reset)
//!   and [`an_isolated_metadata_leader_is_replaced_for_create_stream`] (CreateStream through the
//!   majority while the metadata leader is blackholed).
//!
//! Every test ends with `cluster verify` (the replicas agree up to their common high
//! watermark). Longer runs: `tests/faults/run.sh --minutes N`.
//!
//! On failure the servers' whole logs are copied to `<CARGO_TARGET_TMPDIR>/faults-logs/<pid>/`;
//! `FAULTS_SERVER_LEVEL=debug` starts the servers with `--level debug`.
//!
//! The tests take turns (a lock), so a 2-core machine runs at most three servers at a time.
//! Every loop is bounded in count and time; every process is stopped by PID when its guard
//! drops.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge_client::{AckPolicy, Client, PublishMessage, Publisher, PublisherOptions};
use drawbridge_client::{RetryPolicy, StreamOptions, VerifyReport};
use drawbridge_proto::api::{self, api_client::ApiClient};
use drawbridge_tests::checker::{self, Attempt, History, ValueId};
use drawbridge_tests::metrics;
use drawbridge_tests::nats::NatsServer;
use drawbridge_tests::ports::free_port;
use drawbridge_tests::proxy::{Mode, Proxy};
use drawbridge_tests::server::{cluster, cluster_specs, DrawbridgeServer, NatsMode, ServerSpec};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// One cluster at a time (held across awaits, hence tokio's mutex).
static CLUSTER_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Messages in flight per publisher.
const WINDOW: usize = 16;
/// Attempts per value before a publisher gives up on it.
const MAX_ATTEMPTS: u32 = 5;
/// New acknowledgements to wait for before and after each fault.
const PER_PHASE: usize = 150;
/// Longest wait for one phase's acknowledgements.
const PHASE_WAIT: Duration = Duration::from_secs(40);
/// How long the partition leader stays stopped: beyond the partition election timeout (at
/// most 3 s with the default timing) and the metadata one.
const PAUSE: Duration = Duration::from_secs(6);

/// A started cluster: NATS, three servers (a stopped one is `None`), their specs (restart on
/// the same data) and metrics ports, and a client of all.
struct Cluster {
    _nats: NatsServer,
    specs: Vec<ServerSpec>,
    servers: Vec<Option<DrawbridgeServer>>,
    metrics: Vec<u16>,
    client: Client,
    /// The proxies of a partitionable cluster ([`Cluster::start_partitionable`]).
    links: Option<Links>,
}

impl Cluster {
    /// Starts NATS and three servers with a metrics endpoint each; `None` when nats-server is
    /// missing outside CI.
    async fn start(test: &str) -> TestResult<Option<Cluster>> {
        Self::start_with(test, false).await
    }

    /// [`Cluster::start`] with every link through a proxy ([`Links`]).
    async fn start_partitionable(test: &str) -> TestResult<Option<Cluster>> {
        Self::start_with(test, true).await
    }

    async fn start_with(test: &str, partitionable: bool) -> TestResult<Option<Cluster>> {
        let Some(nats) = NatsServer::start_or_skip(test) else {
            return Ok(None);
        };
        let bin = drawbridge_tests::bins::drawbridge_server()?;
        let mut specs = cluster_specs(&bin, &nats.url(), 3)?;
        let links = match partitionable {
            true => Some(Links::route(&mut specs, nats.port())?),
            false => None,
        };
        let mut metrics = Vec::new();
        for spec in &mut specs {
            let port = free_port()?;
            let conf = spec
                .data_dir
                .with_file_name(format!("{}-faults.yaml", spec.id));
            std::fs::write(&conf, format!("metrics.listen: 127.0.0.1:{port}\n"))?;
            spec.args
                .extend(["--config".to_owned(), conf.display().to_string()]);
            metrics.push(port);
            // FAULTS_SERVER_LEVEL=debug reproduces a failure with the servers' debug logs.
            if let Ok(level) = std::env::var("FAULTS_SERVER_LEVEL") {
                spec.args.extend(["--level".to_owned(), level]);
            }
        }
        let servers = cluster(&specs)?.into_iter().map(Some).collect();
        let addrs: Vec<String> = specs
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let client = Client::builder(&addrs)
            .connect_timeout(Duration::from_secs(1))
            .request_timeout(Duration::from_secs(3))
            .ack_timeout(Duration::from_secs(5))
            .retry(RetryPolicy {
                max_attempts: 8,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
            })
            .connect()
            .await?;
        Ok(Some(Cluster {
            _nats: nats,
            specs,
            servers,
            metrics,
            client,
            links,
        }))
    }

    /// Creates an RF-3 stream and waits (≤ 20 s) until its partition has a leader and three
    /// in-sync replicas.
    async fn create_replicated(&self, name: &str) -> TestResult {
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
    async fn wait_in_sync(&self, name: &str, wait: Duration) -> TestResult<usize> {
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
    fn index_of(&self, id: &str) -> Option<usize> {
        self.servers
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.spec.id == id))
    }

    /// The partition leader (≤ 20 s to find one that runs).
    async fn partition_leader(&self, name: &str) -> TestResult<usize> {
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
    fn metadata_leader(&self) -> TestResult<usize> {
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
    fn kill(&mut self, i: usize) {
        if let Some(mut s) = self.servers[i].take() {
            eprintln!("faults: SIGKILL {}", s.spec.id);
            s.kill();
        }
    }

    /// SIGTERM of server `i` (by PID), bounded.
    fn terminate(&mut self, i: usize) {
        if let Some(mut s) = self.servers[i].take() {
            eprintln!("faults: SIGTERM {}", s.spec.id);
            let clean = tokio::task::block_in_place(|| s.stop(Duration::from_secs(10)));
            if !clean {
                eprintln!("faults: {} did not exit within 10 s of SIGTERM", s.spec.id);
            }
        }
    }

    /// Restarts server `i` on its data.
    fn restart(&mut self, i: usize) -> TestResult {
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
    async fn verify(&self) -> TestResult<VerifyReport> {
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
    fn assert_no_crash(&mut self) -> TestResult {
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
    /// `<CARGO_TARGET_TMPDIR>/faults-logs/<pid>/` (the temp dirs go when the test ends).
    fn logs(&self) -> String {
        let keep = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("faults-logs")
            .join(std::process::id().to_string());
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
}

/// When each acknowledgement reached the client.
type AckTimes = Arc<std::sync::Mutex<Vec<(ValueId, Instant)>>>;

/// Two publishers running in the background (see the module docs).
struct Workload {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    ack_times: AckTimes,
    tasks: Vec<tokio::task::JoinHandle<History>>,
}

impl Workload {
    /// Starts publishers (ack ALL) with client ids `first_client` and `first_client + 1`.
    fn start(client: &Client, stream: &str, first_client: u32) -> TestResult<Workload> {
        Self::start_with(client, stream, first_client, AckPolicy::All)
    }

    /// [`Workload::start`] with the ack policy `ack`.
    fn start_with(
        client: &Client,
        stream: &str,
        first_client: u32,
        ack: AckPolicy,
    ) -> TestResult<Workload> {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let ack_times: AckTimes = Arc::default();
        let mut tasks = Vec::new();
        for id in [first_client, first_client + 1] {
            let publisher = client.publisher_with(PublisherOptions {
                queue_capacity: WINDOW * 2,
                max_in_flight: WINDOW * 2,
            })?;
            tasks.push(tokio::spawn(publish_loop(
                publisher,
                stream.to_owned(),
                id,
                ack,
                Arc::clone(&stop),
                Arc::clone(&acked),
                Arc::clone(&ack_times),
            )));
        }
        Ok(Workload {
            stop,
            acked,
            ack_times,
            tasks,
        })
    }

    /// Acknowledged values so far.
    fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits (≤ [`PHASE_WAIT`]) until `more` values beyond those acked now were acked;
    /// returns how many were.
    async fn progress(&self, more: usize) -> usize {
        let from = self.acked();
        let deadline = Instant::now() + PHASE_WAIT;
        while self.acked() < from + more && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.acked() - from
    }

    /// Stops the publishers and returns what they did.
    async fn finish(self) -> TestResult<History> {
        self.stop.store(true, Ordering::Relaxed);
        let mut h = History::new();
        for t in self.tasks {
            let part = tokio::time::timeout(Duration::from_secs(60), t).await??;
            h.merge_attempts(part);
        }
        Ok(h)
    }
}

/// One publisher: windows of [`WINDOW`] values, each retried up to [`MAX_ATTEMPTS`] times,
/// until told to stop (or 3 minutes, a bound that is never reached in a passing run).
async fn publish_loop(
    publisher: Publisher,
    stream: String,
    client: u32,
    ack: AckPolicy,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    ack_times: AckTimes,
) -> History {
    let mut h = History::new();
    let mut retry: VecDeque<(ValueId, u32)> = VecDeque::new();
    let mut counter = 0u64;
    let deadline = Instant::now() + Duration::from_secs(180);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let mut batch = Vec::with_capacity(WINDOW);
        while batch.len() < WINDOW {
            match retry.pop_front() {
                Some(r) => batch.push(r),
                None => {
                    batch.push((ValueId::new(client, counter), 0));
                    counter += 1;
                }
            }
        }
        let mut futures = Vec::with_capacity(WINDOW);
        let mut failed = false;
        for (value, tries) in batch {
            let msg = PublishMessage::new(value.encode()).ack_policy(ack);
            match tokio::time::timeout(Duration::from_secs(10), publisher.send(&stream, msg)).await
            {
                Ok(Ok(fut)) => futures.push((value, tries, fut)),
                Ok(Err(_)) => {
                    // Refused before it was queued: it cannot have been stored.
                    h.record_attempt(value, Attempt::NotSent);
                    failed = true;
                    if tries + 1 < MAX_ATTEMPTS {
                        retry.push_back((value, tries + 1));
                    }
                }
                Err(_) => {
                    h.record_attempt(value, Attempt::Unknown);
                    failed = true;
                    if tries + 1 < MAX_ATTEMPTS {
                        retry.push_back((value, tries + 1));
                    }
                }
            }
        }
        // Awaited together, so each acknowledgement's arrival time is its own.
        let outcomes =
            futures::future::join_all(futures.into_iter().map(|(value, tries, fut)| async move {
                // The future enforces the ack timeout (5 s) itself; 15 s is a backstop.
                let r = tokio::time::timeout(Duration::from_secs(15), fut).await;
                (value, tries, r, Instant::now())
            }))
            .await;
        for (value, tries, outcome, at) in outcomes {
            match outcome {
                Ok(Ok(Some(ack))) => {
                    if let Ok(mut t) = ack_times.lock() {
                        t.push((value, at));
                    }
                    h.record_attempt(
                        value,
                        Attempt::Acked {
                            partition: 0,
                            offset: ack.offset,
                        },
                    );
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    h.record_attempt(value, Attempt::Unknown);
                    failed = true;
                    if tries + 1 < MAX_ATTEMPTS {
                        retry.push_back((value, tries + 1));
                    }
                }
            }
        }
        if failed {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    h
}

/// Reads partition 0 of `stream` on the node at `port` from its earliest offset to its
/// newest committed one (`STOP_LATEST`, `readISRReplica`), bounded.
/// Reads a node's replica with [`read_node_once`], retrying for at most 10 s while the node
/// answers FailedPrecondition "not in partition ISR": the ISR recorded in metadata trails the
/// replica's catch-up (and a replica can briefly drop out of it after a fault), so a replica
/// that holds every record may still be refused for a moment.
async fn read_node(port: u16, stream: &str) -> TestResult<Vec<(i64, Vec<u8>)>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for attempt in 0.. {
        match read_node_once(port, stream).await {
            Err(NodeRead::NotInIsr(msg)) if Instant::now() < deadline && attempt < 50 => {
                eprintln!("faults: {msg}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(NodeRead::NotInIsr(msg)) => return Err(msg.into()),
            Err(NodeRead::Other(e)) => return Err(e),
            Ok(out) => return Ok(out),
        }
    }
    Err(format!("reading port {port}: out of attempts").into())
}

/// Why one read of a node failed.
enum NodeRead {
    /// The node refused a read-ISR-replica subscription because it is not in the ISR.
    NotInIsr(String),
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl<E: Into<Box<dyn std::error::Error + Send + Sync>>> From<E> for NodeRead {
    fn from(e: E) -> Self {
        NodeRead::Other(e.into())
    }
}

async fn read_node_once(port: u16, stream: &str) -> Result<Vec<(i64, Vec<u8>)>, NodeRead> {
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let mut api = ApiClient::new(channel);
    let req = api::SubscribeRequest {
        stream: stream.to_owned(),
        partition: 0,
        start_position: api::StartPosition::Earliest as i32,
        stop_position: api::StopPosition::StopLatest as i32,
        read_isr_replica: true,
        ..Default::default()
    };
    let mut calls = match api.subscribe(req).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::ResourceExhausted => return Ok(Vec::new()),
        Err(s)
            if s.code() == tonic::Code::FailedPrecondition
                && s.message().contains("not in partition ISR") =>
        {
            return Err(NodeRead::NotInIsr(format!("subscribe on port {port}: {s}")))
        }
        Err(s) => return Err(format!("subscribe on port {port}: {s}").into()),
    };
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, calls.message()).await {
            Ok(Ok(Some(m))) if m == api::Message::default() => {}
            Ok(Ok(Some(m))) => out.push((m.offset, m.value.to_vec())),
            Ok(Ok(None)) => return Ok(out),
            Ok(Err(s)) if s.code() == tonic::Code::ResourceExhausted => return Ok(out),
            Ok(Err(s)) => {
                return Err(format!("reading port {port} after {}: {s}", out.len()).into())
            }
            Err(_) => return Err(format!("reading port {port}: no end within 30 s").into()),
        }
    }
}

/// Waits (≤ 40 s) until every node serves the leader's high watermark, then records every
/// node's read in `h`. Fails if a node does not catch up.
async fn read_all_caught_up(cl: &Cluster, stream: &str, h: &mut History) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let hw = cl
            .client
            .fetch_partition_metadata(stream, 0)
            .await
            .map(|p| p.high_watermark)
            .ok();
        let mut reads = Vec::new();
        for s in cl.servers.iter().flatten() {
            reads.push((s.spec.id.clone(), read_node(s.spec.port, stream).await));
        }
        let caught_up = hw.is_some_and(|hw| {
            reads.iter().all(|(_, r)| {
                r.as_ref()
                    .is_ok_and(|r| r.last().map_or(-1, |(o, _)| *o) >= hw)
            })
        });
        if caught_up || Instant::now() >= deadline {
            let mut summary = Vec::new();
            for (node, read) in reads {
                let read = read?;
                summary.push(format!(
                    "{node}: {} records, last {:?}",
                    read.len(),
                    read.last().map(|(o, _)| *o)
                ));
                h.record_read(&node, 0, read);
            }
            eprintln!(
                "faults: leader high watermark {hw:?}; {}",
                summary.join("; ")
            );
            if !caught_up {
                eprintln!("faults: not every node caught up within 40 s");
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits for `more` acks and prints how it went.
async fn phase(w: &Workload, label: &str, more: usize) -> usize {
    let started = Instant::now();
    let got = w.progress(more).await;
    eprintln!(
        "faults: {label}: {got} acks in {:?} (total {})",
        started.elapsed(),
        w.acked()
    );
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_faults_lose_no_acknowledged_message() -> TestResult {
    let _turn = CLUSTER_TURN.lock().await;
    let started = Instant::now();
    let Some(mut cl) = Cluster::start("process_faults_lose_no_acknowledged_message").await? else {
        return Ok(());
    };
    let name = "faults-process";
    cl.create_replicated(name).await?;
    let w = Workload::start(&cl.client, name, 0)?;
    let mut stalled = Vec::new();
    phase(&w, "warm-up", PER_PHASE).await;

    // (a) SIGKILL of the partition leader, restart.
    let leader = cl.partition_leader(name).await?;
    cl.kill(leader);
    if phase(&w, "(a) partition leader down", PER_PHASE / 2).await == 0 {
        stalled.push("(a) partition leader down");
    }
    cl.restart(leader)?;
    phase(&w, "(a) after restart", PER_PHASE / 2).await;
    let _ = cl.wait_in_sync(name, Duration::from_secs(20)).await;

    // (b) SIGKILL of a follower, restart.
    let leader = cl.partition_leader(name).await?;
    let follower = (leader + 1) % cl.servers.len();
    cl.kill(follower);
    if phase(&w, "(b) follower down", PER_PHASE / 2).await == 0 {
        stalled.push("(b) follower down");
    }
    cl.restart(follower)?;
    phase(&w, "(b) after restart", PER_PHASE / 2).await;
    let _ = cl.wait_in_sync(name, Duration::from_secs(20)).await;

    // (c) SIGKILL of the metadata leader, restart.
    let meta = tokio::task::block_in_place(|| cl.metadata_leader())?;
    let pleader = cl.partition_leader(name).await?;
    eprintln!(
        "faults: metadata leader {}, partition leader {}",
        cl.specs[meta].id, cl.specs[pleader].id
    );
    cl.kill(meta);
    if phase(&w, "(c) metadata leader down", PER_PHASE / 2).await == 0 {
        stalled.push("(c) metadata leader down");
    }
    cl.restart(meta)?;
    phase(&w, "(c) after restart", PER_PHASE / 2).await;
    let _ = cl.wait_in_sync(name, Duration::from_secs(20)).await;

    // (d) SIGSTOP of the partition leader past the election timeout, SIGCONT.
    let leader = cl.partition_leader(name).await?;
    let paused = cl.servers[leader].as_ref().ok_or("leader not running")?;
    eprintln!("faults: SIGSTOP {} for {PAUSE:?}", paused.spec.id);
    if !paused.signal(libc::SIGSTOP) {
        return Err("SIGSTOP failed".into());
    }
    let pause_started = Instant::now();
    let before = w.acked();
    let mut new_leader = None;
    while pause_started.elapsed() < PAUSE {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(md) = cl.client.fetch_metadata().await {
            new_leader = md
                .stream(name)
                .and_then(|s| s.partitions.get(&0))
                .and_then(|p| p.leader.clone());
        }
    }
    eprintln!(
        "faults: (d) {} acks while {} was stopped for {:?}; metadata names {new_leader:?} \
         as the partition leader",
        w.acked() - before,
        cl.specs[leader].id,
        pause_started.elapsed()
    );
    let paused = cl.servers[leader].as_ref().ok_or("leader not running")?;
    if !paused.signal(libc::SIGCONT) {
        return Err("SIGCONT failed".into());
    }
    phase(&w, "(d) after SIGCONT", PER_PHASE / 2).await;

    let mut h = w.finish().await?;
    cl.assert_no_crash()?;
    read_all_caught_up(&cl, name, &mut h).await?;
    let report = checker::analyze(&h);
    eprintln!(
        "faults: process faults done in {:?}; stalled phases: {stalled:?}\n{report}",
        started.elapsed()
    );
    if report.has_violations() {
        return Err(format!("{report}\nlogs:\n{}", cl.logs()).into());
    }
    if report.acknowledged < PER_PHASE * 2 {
        return Err(format!("too few acknowledgements: {}", report.counts()).into());
    }
    cl.verify().await?;
    Ok(())
}

/// A storage fault applied to a stopped node's newest segment.
#[derive(Debug, Clone, Copy)]
enum StorageFault {
    /// Cut the `.log` 13 bytes before the end of its data (inside the last batch).
    TornTail,
    /// Flip one bit 5 bytes before the end of the `.log`'s data (inside the last batch).
    BitFlip,
    /// Cut the `.index` to half its length, off an entry boundary.
    TruncatedIndex,
    /// Delete the `.index`.
    DeletedIndex,
}

/// `<data>/raft/partitions/<hex(stream)>-0/log` (raft/src/node.rs `partition_dir`).
fn segment_dir(data_dir: &Path, stream: &str) -> PathBuf {
    let hex: String = stream.bytes().map(|b| format!("{b:02x}")).collect();
    data_dir
        .join("raft")
        .join("partitions")
        .join(format!("{hex}-0"))
        .join("log")
}

/// The newest segment's `.log` (20-digit base offset names).
fn newest_segment(dir: &Path) -> TestResult<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "log")
                && p.file_stem().is_some_and(|s| {
                    s.len() == 20 && s.to_string_lossy().bytes().all(|b| b.is_ascii_digit())
                })
        })
        .collect();
    logs.sort();
    logs.pop()
        .ok_or_else(|| format!("no segment in {}", dir.display()).into())
}

/// Applies `fault` to the newest segment under `dir`; returns what was done.
fn apply(fault: StorageFault, dir: &Path) -> TestResult<String> {
    let log = newest_segment(dir)?;
    let index = log.with_extension("index");
    let bytes = std::fs::read(&log)?;
    // Data ends at the last non-zero byte (a tail may be preallocated zeros).
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    if end < 64 {
        return Err(format!("{}: only {end} bytes of data", log.display()).into());
    }
    let file = |p: &Path| std::fs::OpenOptions::new().write(true).open(p);
    Ok(match fault {
        StorageFault::TornTail => {
            let at = end - 13;
            file(&log)?.set_len(at as u64)?;
            format!("cut {} at {at} (data ended at {end})", log.display())
        }
        StorageFault::BitFlip => {
            let at = end - 5;
            let mut b = bytes;
            b[at] ^= 0x10;
            std::fs::write(&log, &b)?;
            format!("flipped bit 4 of byte {at} of {}", log.display())
        }
        StorageFault::TruncatedIndex => {
            let len = std::fs::metadata(&index)?.len();
            let to = (len / 2).saturating_sub(3);
            file(&index)?.set_len(to)?;
            format!("cut {} from {len} to {to} bytes", index.display())
        }
        StorageFault::DeletedIndex => {
            std::fs::remove_file(&index)?;
            format!("deleted {}", index.display())
        }
    })
}

/// One storage-fault scenario on a fresh cluster: acknowledged writes on all three nodes,
/// a follower stopped (SIGKILL, or SIGTERM for a clean close that leaves a recovery point),
/// more writes while it is down, `fault` applied to its newest segment, a restart, a few
/// writes more; then it must stay up, catch up, and the checker must pass on every node.
async fn storage_fault(test: &str, fault: StorageFault, sigkill: bool) -> TestResult {
    let _turn = CLUSTER_TURN.lock().await;
    let started = Instant::now();
    let Some(mut cl) = Cluster::start(test).await? else {
        return Ok(());
    };
    let name = "faults-storage";
    cl.create_replicated(name).await?;
    let mut h = History::new();
    let w = Workload::start(&cl.client, name, 0)?;
    phase(&w, &format!("{fault:?}: before the stop"), PER_PHASE).await;
    let leader = cl.partition_leader(name).await?;
    let victim = (leader + 1) % cl.servers.len();
    if sigkill {
        cl.kill(victim);
    } else {
        cl.terminate(victim);
    }
    phase(&w, &format!("{fault:?}: node down"), PER_PHASE / 3).await;
    h.merge_attempts(w.finish().await?);
    let what = apply(fault, &segment_dir(&cl.specs[victim].data_dir, name))?;
    eprintln!("faults: {fault:?} on {}: {what}", cl.specs[victim].id);
    cl.restart(victim)?;
    let w = Workload::start(&cl.client, name, 2)?;
    phase(&w, &format!("{fault:?}: after the restart"), PER_PHASE / 3).await;
    h.merge_attempts(w.finish().await?);
    if let Err(e) = read_all_caught_up(&cl, name, &mut h).await {
        return Err(format!("{fault:?}: {what}\n{e}\nlogs:\n{}", cl.logs()).into());
    }
    cl.assert_no_crash()?;
    let report = checker::analyze(&h);
    eprintln!(
        "faults: {fault:?} (stopped by {}) done in {:?}\n{report}",
        if sigkill { "SIGKILL" } else { "SIGTERM" },
        started.elapsed()
    );
    if report.has_violations() {
        return Err(format!("{fault:?}: {what}\n{report}\nlogs:\n{}", cl.logs()).into());
    }
    cl.verify().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_on_a_killed_follower_loses_nothing() -> TestResult {
    storage_fault(
        "torn_tail_on_a_killed_follower_loses_nothing",
        StorageFault::TornTail,
        true,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bit_flip_on_a_stopped_follower_loses_nothing() -> TestResult {
    storage_fault(
        "bit_flip_on_a_stopped_follower_loses_nothing",
        StorageFault::BitFlip,
        false,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_index_on_a_killed_follower_loses_nothing() -> TestResult {
    storage_fault(
        "truncated_index_on_a_killed_follower_loses_nothing",
        StorageFault::TruncatedIndex,
        true,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_index_on_a_stopped_follower_loses_nothing() -> TestResult {
    storage_fault(
        "deleted_index_on_a_stopped_follower_loses_nothing",
        StorageFault::DeletedIndex,
        false,
    )
    .await
}

/// `cluster verify` passes on a healthy cluster after publishing, and finds a replica whose
/// log was changed consistently but wrongly while it was stopped
/// ([`drawbridge_tests::rewrite`]): CRCs and raft ids are valid, so nothing else notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_silently_diverged_replica() -> TestResult {
    let _turn = CLUSTER_TURN.lock().await;
    let Some(mut cl) = Cluster::start("verify_finds_a_silently_diverged_replica").await? else {
        return Ok(());
    };
    let name = "faults-verify";
    cl.create_replicated(name).await?;
    let w = Workload::start(&cl.client, name, 0)?;
    phase(&w, "verify: publishing", PER_PHASE / 2).await;
    w.finish().await?;
    cl.wait_in_sync(name, Duration::from_secs(20)).await?;
    let healthy = cl.verify().await?;
    if healthy.records() == 0 {
        return Err("verify compared no records on a healthy cluster".into());
    }
    let leader = cl.partition_leader(name).await?;
    let victim = (leader + 1) % cl.servers.len();
    cl.terminate(victim);
    let what = drawbridge_tests::rewrite::rewrite_record(
        &segment_dir(&cl.specs[victim].data_dir, name),
        10,
    )?;
    eprintln!("faults: rewrote {} at {what}", cl.specs[victim].id);
    cl.restart(victim)?;
    cl.wait_in_sync(name, Duration::from_secs(20)).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = cl.client.verify_partitions().await?;
        if let Some(p) = report.divergent().first() {
            eprintln!("faults: verify found the divergence: {p:?}");
            let victim_id = cl.specs[victim].id.as_str();
            let sum_of = |me: bool| -> Vec<Option<(u64, u64)>> {
                p.replicas
                    .iter()
                    .filter(|r| (r.server_id == victim_id) == me)
                    .map(|r| r.sum)
                    .collect()
            };
            let (mine, others) = (sum_of(true), sum_of(false));
            if mine.len() != 1
                || others.len() != 2
                || others[0] != others[1]
                || mine[0] == others[0]
            {
                return Err(format!("the divergence is not (only) on {victim_id}: {p:#?}").into());
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("verify did not find the rewritten replica: {report:#?}").into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Liftbridge failure scenario 1: the partition leader is SIGSTOPped past the election
/// timeout while publishes go on (through the new leader, which re-publishes them on NATS), and
/// is resumed while its NATS subscription is still alive, so the messages published meanwhile
/// are delivered to it. The deposed leader must neither append (its log must converge to the
/// new leader's: `cluster verify`) nor acknowledge anything that is then lost (the checker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_deposed_leader_neither_appends_nor_acks() -> TestResult {
    let _turn = CLUSTER_TURN.lock().await;
    let started = Instant::now();
    let Some(mut cl) = Cluster::start("a_resumed_deposed_leader_neither_appends_nor_acks").await?
    else {
        return Ok(());
    };
    let name = "faults-deposed";
    cl.create_replicated(name).await?;
    let w = Workload::start(&cl.client, name, 0)?;
    phase(&w, "deposed: warm-up", PER_PHASE / 2).await;
    let leader = cl.partition_leader(name).await?;
    let paused = cl.servers[leader].as_ref().ok_or("leader not running")?;
    eprintln!("faults: SIGSTOP {} for {PAUSE:?}", paused.spec.id);
    if !paused.signal(libc::SIGSTOP) {
        return Err("SIGSTOP failed".into());
    }
    let before = w.acked();
    let stopped_at = Instant::now();
    // At least PAUSE (past the election timeout), then until the new leader has acknowledged
    // something (≤ 15 s in all): a pipelined publisher whose stream is to the stopped broker
    // first notices it (keep-alive, or two missed acks: its 5 s ack timeout) and moves to
    // another broker, so the first ack can land just after PAUSE.
    // Acks in the first second after the stop may be the stopped leader's, already on the
    // wire; later ones come through the new leader.
    let failed_over = || failover_ack(&w.ack_times, stopped_at + Duration::from_secs(1));
    tokio::time::sleep(PAUSE).await;
    while failed_over().is_none() && stopped_at.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = w.acked() - before;
    let through_new_leader = failed_over();
    let resumed = failover_ack(&w.ack_times, stopped_at);
    eprintln!(
        "faults: deposed: acks resumed {:?} after the SIGSTOP (end of the longest silence); \
         first ack after the first second: {:?}",
        resumed.map(|at| at.duration_since(stopped_at)),
        through_new_leader.map(|at| at.duration_since(stopped_at)),
    );
    let md = cl.client.fetch_metadata().await?;
    let recorded = md
        .stream(name)
        .and_then(|s| s.partitions.get(&0))
        .and_then(|p| p.leader.clone());
    eprintln!(
        "faults: deposed: {during} acks while {} was stopped ({:?}); metadata names {recorded:?}",
        cl.specs[leader].id,
        stopped_at.elapsed()
    );
    let paused = cl.servers[leader].as_ref().ok_or("leader not running")?;
    if !paused.signal(libc::SIGCONT) {
        return Err("SIGCONT failed".into());
    }
    phase(&w, "deposed: after SIGCONT", PER_PHASE / 2).await;
    let mut h = w.finish().await?;
    cl.assert_no_crash()?;
    read_all_caught_up(&cl, name, &mut h).await?;
    let report = checker::analyze(&h);
    eprintln!(
        "faults: deposed leader done in {:?}\n{report}",
        started.elapsed()
    );
    if report.has_violations() {
        return Err(format!("{report}\nlogs:\n{}", cl.logs()).into());
    }
    // Liveness: the surviving majority elected a leader and the publishers moved off the
    // stopped broker (client keep-alive and stall detection) while it was still stopped.
    if during == 0 || through_new_leader.is_none() {
        return Err(format!(
            "no publish was acknowledged through a new leader in the 15 s the leader was \
             stopped\nlogs:\n{}",
            cl.logs()
        )
        .into());
    }
    cl.verify().await?;
    Ok(())
}

/// When acks resumed after `from`: the time of the ack that ended the longest silence since
/// `from` (`from` itself counts as the start of the first silence); `None` without an ack
/// after `from`.
fn failover_ack(ack_times: &AckTimes, from: Instant) -> Option<Instant> {
    let mut times: Vec<Instant> = ack_times
        .lock()
        .ok()?
        .iter()
        .map(|(_, at)| *at)
        .filter(|at| *at > from)
        .collect();
    times.sort();
    let mut prev = from;
    let mut best: Option<(Duration, Instant)> = None;
    for t in times {
        let gap = t.duration_since(prev);
        if best.is_none_or(|(g, _)| gap > g) {
            best = Some((gap, t));
        }
        prev = t;
    }
    best.map(|(_, t)| t)
}

/// How long after SIGCONT a resumed deposed leader may still acknowledge with LEADER acks: it
/// learns of the new term from the first heartbeat exchanged with a peer (partition heartbeat
/// 500 ms), plus scheduling slack on a loaded 2-core machine.
const STEP_DOWN_BOUND: Duration = Duration::from_secs(3);

/// The deposed-leader scenario with ack policy LEADER (issue 7, point 7). A LEADER ack means
/// "durable in the leader's log", given before replication, so it is inherently lost when that
/// leader is deposed before its followers have the entry (as with Kafka's `acks=1`). What must
/// hold, and is asserted: every lost LEADER-acked value was acknowledged either just before the
/// SIGSTOP (appended, not yet replicated) or within [`STEP_DOWN_BOUND`] after the SIGCONT (the
/// resumed leader had not yet heard of the new term); nothing acknowledged later is lost, the
/// replicas agree, and no value is duplicated or misplaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_deposed_leader_loses_leader_acks_only_before_stepping_down() -> TestResult {
    let _turn = CLUSTER_TURN.lock().await;
    let started = Instant::now();
    let test = "a_resumed_deposed_leader_loses_leader_acks_only_before_stepping_down";
    let Some(mut cl) = Cluster::start(test).await? else {
        return Ok(());
    };
    let name = "faults-deposed-leader-ack";
    cl.create_replicated(name).await?;
    let w = Workload::start_with(&cl.client, name, 0, AckPolicy::Leader)?;
    phase(&w, "deposed/LEADER: warm-up", PER_PHASE / 2).await;
    let leader = cl.partition_leader(name).await?;
    let paused = cl.servers[leader].as_ref().ok_or("leader not running")?;
    eprintln!(
        "faults: SIGSTOP {} for {PAUSE:?} (LEADER acks)",
        paused.spec.id
    );
    if !paused.signal(libc::SIGSTOP) {
        return Err("SIGSTOP failed".into());
    }
    let stopped_at = Instant::now();
    tokio::time::sleep(PAUSE).await;
    let paused = cl.servers[leader].as_ref().ok_or("leader not running")?;
    if !paused.signal(libc::SIGCONT) {
        return Err("SIGCONT failed".into());
    }
    let resumed_at = Instant::now();
    phase(&w, "deposed/LEADER: after SIGCONT", PER_PHASE / 2).await;
    let ack_times = w.ack_times.clone();
    let mut h = w.finish().await?;
    cl.assert_no_crash()?;
    read_all_caught_up(&cl, name, &mut h).await?;
    // Values present on every replica.
    let mut on_all: Option<std::collections::BTreeSet<ValueId>> = None;
    for s in cl.servers.iter().flatten() {
        let here: std::collections::BTreeSet<ValueId> = read_node(s.spec.port, name)
            .await?
            .iter()
            .filter_map(|(_, v)| ValueId::parse(v))
            .collect();
        on_all = Some(match on_all {
            None => here,
            Some(prev) => prev.intersection(&here).copied().collect(),
        });
    }
    let on_all = on_all.unwrap_or_default();
    let acks: Vec<(ValueId, Instant)> = ack_times
        .lock()
        .map_err(|_| "ack times lock poisoned")?
        .clone();
    let lost: Vec<(ValueId, Instant)> = acks
        .iter()
        .filter(|(v, _)| !on_all.contains(v))
        .copied()
        .collect();
    let report = checker::analyze(&h);
    // Not the `checker:` line (tests/faults/run.sh sums those, and these losses are allowed).
    eprintln!(
        "faults: deposed leader (LEADER acks) done in {:?}; {} LEADER acks, {} lost (allowed \
         window only); LEADER-ack checker: {}",
        started.elapsed(),
        acks.len(),
        lost.len(),
        report.counts()
    );
    let mut outside = Vec::new();
    for (v, at) in &lost {
        // Acked while the leader still believed it led: just before it was stopped (not yet
        // replicated; in flight to the client when the signal landed), or right after it
        // resumed. Acks seen while it was stopped came from the new leader and must survive.
        let before_stop = *at + Duration::from_secs(2) >= stopped_at
            && *at <= stopped_at + Duration::from_millis(200);
        let after_resume = *at >= resumed_at && *at <= resumed_at + STEP_DOWN_BOUND;
        eprintln!(
            "faults: lost LEADER ack {} acked {:?} after SIGSTOP",
            v.encode().escape_ascii(),
            at.saturating_duration_since(stopped_at)
        );
        if !(before_stop || after_resume) {
            outside.push(format!("{:?}", v.encode().escape_ascii().to_string()));
        }
    }
    if !outside.is_empty() {
        return Err(format!(
            "LEADER acks lost outside the deposed leader's window: {outside:?}\nlogs:\n{}",
            cl.logs()
        )
        .into());
    }
    if report.misplaced
        + report.duplicated
        + report.divergent
        + report.offset_errors
        + report.unexpected
        > 0
    {
        return Err(format!("{report}\nlogs:\n{}", cl.logs()).into());
    }
    cl.verify().await?;
    Ok(())
}

/// Liftbridge failure scenario 2: right after a burst of ack-ALL publishes, two of the three
/// replicas (the partition leader and a follower) are SIGKILLed, then restarted together. No
/// acknowledged message may be lost, and the replicas must agree afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_killed_after_a_burst_lose_no_ack() -> TestResult {
    let _turn = CLUSTER_TURN.lock().await;
    let started = Instant::now();
    let Some(mut cl) = Cluster::start("two_replicas_killed_after_a_burst_lose_no_ack").await?
    else {
        return Ok(());
    };
    let name = "faults-two-down";
    cl.create_replicated(name).await?;
    let w = Workload::start(&cl.client, name, 0)?;
    phase(&w, "two down: burst", PER_PHASE).await;
    let leader = cl.partition_leader(name).await?;
    let follower = (leader + 1) % cl.servers.len();
    cl.kill(leader);
    cl.kill(follower);
    let acked_at_kill = w.acked();
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!(
        "faults: two down: {} acks while two of three replicas were down",
        w.acked() - acked_at_kill
    );
    // Restarted together: both start before either has finished starting.
    let (specs, restarted) = (&cl.specs, std::sync::Mutex::new(Vec::new()));
    tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            for i in [leader, follower] {
                let restarted = &restarted;
                s.spawn(move || {
                    eprintln!("faults: restarting {}", specs[i].id);
                    let r = DrawbridgeServer::start(&specs[i]).map_err(|e| e.to_string());
                    restarted
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((i, r));
                });
            }
        })
    });
    for (i, r) in restarted.into_inner().unwrap_or_else(|p| p.into_inner()) {
        cl.servers[i] = Some(r?);
    }
    phase(&w, "two down: after the restart", PER_PHASE / 2).await;
    let mut h = w.finish().await?;
    cl.assert_no_crash()?;
    read_all_caught_up(&cl, name, &mut h).await?;
    let report = checker::analyze(&h);
    eprintln!(
        "faults: two replicas down done in {:?}\n{report}",
        started.elapsed()
    );
    if report.has_violations() {
        return Err(format!("{report}\nlogs:\n{}", cl.logs()).into());
    }
    cl.verify().await?;
    Ok(())
}

/// The network of a partitionable cluster (issue 7, fault 3): every link goes through its own
/// [`Proxy`] on 127.0.0.1. Node `i` reaches NATS through `nats[i]`, and reaches node `j`'s raft
/// port through `raft[i][j]` (`--raft-peer-route <j's raft address>=<proxy>`; nodes talk to each
/// other only over raft, and find each other over NATS). Cutting both directions between a
/// node and its peers isolates it from them while it keeps NATS and its clients.
struct Links {
    nats: Vec<Proxy>,
    raft: Vec<Vec<Option<Proxy>>>,
}

impl Links {
    /// Puts the proxies into `specs` (before the servers start): NATS through a proxy per node
    /// to the NATS server on `nats_port`, raft through a proxy per ordered pair.
    fn route(specs: &mut [ServerSpec], nats_port: u16) -> TestResult<Links> {
        let mut nats = Vec::new();
        for spec in specs.iter_mut() {
            let proxy = Proxy::start(nats_port)?;
            spec.nats = NatsMode::External(format!("nats://{}", proxy.addr()));
            nats.push(proxy);
        }
        let raft_ports: Vec<u16> = specs.iter().map(|s| s.raft_port).collect();
        let mut raft = Vec::new();
        for (i, spec) in specs.iter_mut().enumerate() {
            let mut row = Vec::new();
            for (j, port) in raft_ports.iter().enumerate() {
                if i == j {
                    row.push(None);
                    continue;
                }
                let proxy = Proxy::start(*port)?;
                spec.args.extend([
                    "--raft-peer-route".to_owned(),
                    format!("127.0.0.1:{port}={}", proxy.addr()),
                ]);
                row.push(Some(proxy));
            }
            raft.push(row);
        }
        Ok(Links { nats, raft })
    }

    /// Sets both directions of every raft link between node `i` and the others to `mode`.
    fn isolate(&self, i: usize, mode: Mode) {
        for (j, row) in self.raft.iter().enumerate() {
            if j == i {
                row.iter().flatten().for_each(|p| p.set_mode(mode));
            } else if let Some(p) = &row[i] {
                p.set_mode(mode);
            }
        }
    }

    /// Every link back to [`Mode::Pass`].
    fn heal(&self) {
        self.nats.iter().for_each(|p| p.set_mode(Mode::Pass));
        self.raft
            .iter()
            .flatten()
            .flatten()
            .for_each(|p| p.set_mode(Mode::Pass));
    }

    /// Bytes node `i` exchanged with its peers through the raft proxies (both directions).
    fn raft_bytes(&self, i: usize) -> u64 {
        let out: u64 = self.raft[i].iter().flatten().map(Proxy::forwarded).sum();
        let inbound: u64 = self
            .raft
            .iter()
            .filter_map(|row| row[i].as_ref())
            .map(Proxy::forwarded)
            .sum();
        out + inbound
    }
}

/// A client bootstrapped with the nodes other than `cut` (the majority side of a partition).
/// It tries its bootstrap addresses and the brokers it learns from metadata, so a call may
/// still land on the cut node; the client's retries then move on to another broker.
async fn majority_client(cl: &Cluster, cut: usize) -> TestResult<Client> {
    let addrs: Vec<String> = cl
        .specs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != cut)
        .map(|(_, s)| format!("127.0.0.1:{}", s.port))
        .collect();
    Ok(Client::builder(&addrs)
        .connect_timeout(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(3))
        .ack_timeout(Duration::from_secs(5))
        .retry(RetryPolicy {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        })
        .connect()
        .await?)
}

/// Waits (≤ `wait`) until the metadata served by `client` names a partition-0 leader of
/// `stream` other than `old`; returns its index.
async fn new_partition_leader(
    cl: &Cluster,
    client: &Client,
    stream: &str,
    old: usize,
    wait: Duration,
) -> TestResult<usize> {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(md) = client.fetch_metadata().await {
            let leader = md
                .stream(stream)
                .and_then(|s| s.partitions.get(&0))
                .and_then(|p| p.leader.clone())
                .and_then(|l| cl.index_of(&l));
            if let Some(i) = leader.filter(|i| *i != old) {
                return Ok(i);
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{stream}: the majority named no new partition leader within {wait:?}\n{}",
                cl.logs()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (≤ `wait`) until node `i`'s `drawbridge_nats_connected` gauge is `want`.
async fn wait_nats_connected(cl: &Cluster, i: usize, want: f64, wait: Duration) -> TestResult {
    let deadline = Instant::now() + wait;
    let port = cl.metrics[i];
    loop {
        let got = tokio::task::block_in_place(|| metrics::gauge(port, "drawbridge_nats_connected"));
        if matches!(got, Ok(Some(v)) if v == want) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{}: drawbridge_nats_connected is {got:?}, not {want}, after {wait:?}\n{}",
                cl.specs[i].id,
                cl.logs()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long a partition lasts at most before the tests heal it.
const CUT_WAIT: Duration = Duration::from_secs(15);

/// Network partition (issue 7, fault 3): the partition leader is cut from both peers (its raft
/// links blackholed both ways; it keeps NATS and its clients) while ack-ALL publishers run. The
/// majority must elect a new leader; the isolated leader cannot commit, so it must acknowledge
/// nothing that is then lost (the checker); after the heal the replicas converge (`cluster
/// verify`) and publishing goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_partition_leader_is_replaced_and_acks_nothing_lost() -> TestResult {
    let _turn = CLUSTER_TURN.lock().await;
    let started = Instant::now();
    let test = "an_isolated_partition_leader_is_replaced_and_acks_nothing_lost";
    let Some(cl) = Cluster::start_partitionable(test).await? else {
        return Ok(());
    };
    let links = cl.links.as_ref().ok_or("no links")?;
    let name = "partition-leader-cut";
    cl.create_replicated(name).await?;
    let w = Workload::start(&cl.client, name, 0)?;
    phase(&w, "isolated leader: warm-up", PER_PHASE / 3).await;
    let leader = cl.partition_leader(name).await?;
    if links.raft_bytes(leader) == 0 {
        return Err("no raft traffic went through the proxies".into());
    }
    eprintln!("faults: blackholing {} from its peers", cl.specs[leader].id);
    links.isolate(leader, Mode::Blackhole);
    let cut_at = Instant::now();
    let before = w.acked();
    let majority = majority_client(&cl, leader).await?;
    let new_leader = new_partition_leader(&cl, &majority, name, leader, CUT_WAIT).await;
    let elected_in = cut_at.elapsed();
    // Give the publishers a moment on the new leader (bounded), then heal.
    let settle = Instant::now();
    while w.acked() == before && settle.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = w.acked() - before;
    links.heal();
    eprintln!(
        "faults: isolated leader: new leader {:?} named by the majority after {elected_in:?}; \
         {during} acks during the {:?} cut",
        new_leader.as_ref().map(|i| cl.specs[*i].id.clone()),
        cut_at.elapsed()
    );
    let new_leader = new_leader?;
    let after = phase(&w, "isolated leader: after the heal", PER_PHASE / 3).await;
    let mut h = w.finish().await?;
    let mut cl = cl;
    cl.assert_no_crash()?;
    read_all_caught_up(&cl, name, &mut h).await?;
    let report = checker::analyze(&h);
    eprintln!(
        "faults: isolated leader done in {:?} (old {}, new {})\n{report}",
        started.elapsed(),
        cl.specs[leader].id,
        cl.specs[new_leader].id
    );
    if report.has_violations() {
        return Err(format!("{report}\nlogs:\n{}", cl.logs()).into());
    }
    if after == 0 {
        return Err(format!("no ack after the heal\nlogs:\n{}", cl.logs()).into());
    }
    cl.verify().await?;
    Ok(())
}

/// How long a node stays cut from NATS.
const NATS_CUT: Duration = Duration::from_secs(3);

/// Cuts node `victim` from NATS (its proxy resets the connection and every reconnect) for
/// [`NATS_CUT`], checks that the node notices (`drawbridge_nats_connected` 0 within 10 s) and
/// reconnects after the heal (1 within 20 s); returns by how much each of `acks` (ack counters
/// of running publishers) grew during the cut.
async fn cut_from_nats(
    cl: &Cluster,
    acks: &[&AtomicUsize],
    victim: usize,
    role: &str,
) -> TestResult<Vec<usize>> {
    let links = cl.links.as_ref().ok_or("no links")?;
    eprintln!(
        "faults: resetting the NATS link of {} ({role})",
        cl.specs[victim].id
    );
    let before: Vec<usize> = acks.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    links.nats[victim].set_mode(Mode::Reset);
    let cut_at = Instant::now();
    wait_nats_connected(cl, victim, 0.0, Duration::from_secs(10)).await?;
    let noticed = cut_at.elapsed();
    tokio::time::sleep(NATS_CUT.saturating_sub(cut_at.elapsed())).await;
    let during: Vec<usize> = acks
        .iter()
        .zip(before)
        .map(|(a, b)| a.load(Ordering::Relaxed) - b)
        .collect();
    links.heal();
    let healed_at = Instant::now();
    wait_nats_connected(cl, victim, 1.0, Duration::from_secs(20)).await?;
    eprintln!(
        "faults: NATS cut of the {role} {}: noticed after {noticed:?}, acks {during:?} during \
         the {:?} cut, reconnected {:?} after the heal",
        cl.specs[victim].id,
        healed_at.duration_since(cut_at),
        healed_at.elapsed()
    );
    Ok(during)
}

/// Publishes values of client `client` one at a time with unary `Publish` calls (ack ALL,
/// 3 s deadline) through the broker on `port` only, until `stop` (or 60 s); counts acks in
/// `acked` and returns the history.
async fn unary_publisher(
    port: u16,
    stream: String,
    client: u32,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> TestResult<History> {
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let mut api = ApiClient::new(channel);
    let mut h = History::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut counter = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let value = ValueId::new(client, counter);
        counter += 1;
        let mut req = tonic::Request::new(api::PublishRequest {
            stream: stream.clone(),
            partition: 0,
            value: value.encode().into(),
            ack_policy: api::AckPolicy::All as i32,
            expected_offset: -1,
            ..Default::default()
        });
        req.set_timeout(Duration::from_secs(3));
        match tokio::time::timeout(Duration::from_secs(5), api.publish(req)).await {
            Ok(Ok(r)) => match r.into_inner().ack {
                Some(ack) => {
                    h.record_attempt(
                        value,
                        Attempt::Acked {
                            partition: 0,
                            offset: ack.offset,
                        },
                    );
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                None => h.record_attempt(value, Attempt::Unknown),
            },
            _ => {
                h.record_attempt(value, Attempt::Unknown);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(h)
}

/// Network partition between a node and NATS (issue 7, fault 3), under ack-ALL load: first a
/// partition follower, then the partition leader has its NATS connection reset (and every
/// reconnect refused) for [`NATS_CUT`]. Each node must notice (`drawbridge_nats_connected` 0)
/// and reconnect after the heal (1). Replication runs over raft, so while the follower is cut
/// publishing through gRPC to the other brokers must go on being acknowledged (asserted with
/// unary ack-ALL publishes through the third broker). Publishers whose PublishAsync session
/// is on the cut broker get no ack until it reconnects: the broker keeps accepting publishes
/// while its NATS connection is down (they wait in its NATS client) and the client does not
/// move to another broker on ack timeouts (known gap; their count is printed, not asserted).
/// While the leader is cut its ingest
/// subscription receives nothing: messages others publish on NATS for its partition meanwhile
/// never reach it (core NATS delivers at most once, to connected subscribers) and are not
/// acknowledged, and the gRPC publishes it re-publishes on NATS wait in its NATS client until
/// it reconnects (seen: none acknowledged during the cut, all of them just after the heal,
/// within the 5 s ack timeout; a longer cut makes the clients retry). The acks seen during that
/// cut are printed, not asserted; acks must resume after the heal. Nothing acknowledged may be
/// lost, duplicated or diverge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_from_nats_reconnects_and_loses_nothing() -> TestResult {
    let _turn = CLUSTER_TURN.lock().await;
    let started = Instant::now();
    let test = "a_node_cut_from_nats_reconnects_and_loses_nothing";
    let Some(mut cl) = Cluster::start_partitionable(test).await? else {
        return Ok(());
    };
    let name = "partition-nats-cut";
    cl.create_replicated(name).await?;
    let w = Workload::start(&cl.client, name, 0)?;
    phase(&w, "NATS cut: warm-up", PER_PHASE / 3).await;
    let leader = cl.partition_leader(name).await?;
    let follower = (leader + 1) % cl.servers.len();
    // Unary publishes through the third broker (neither the leader nor the cut node).
    let third = 3 - leader - follower;
    let (stop, side_acks) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let side = tokio::spawn(unary_publisher(
        cl.specs[third].port,
        name.to_owned(),
        2,
        Arc::clone(&stop),
        Arc::clone(&side_acks),
    ));
    let during = cut_from_nats(&cl, &[&w.acked, &side_acks], follower, "follower").await;
    stop.store(true, Ordering::Relaxed);
    let side_history = tokio::time::timeout(Duration::from_secs(10), side).await???;
    let during = during?;
    let (during_all, during_follower) = (during[0], during[1]);
    phase(&w, "NATS cut: after the follower's heal", PER_PHASE / 3).await;
    let leader = cl.partition_leader(name).await?;
    let during_leader = cut_from_nats(&cl, &[&w.acked], leader, "partition leader").await?[0];
    let after = phase(&w, "NATS cut: after the leader's heal", PER_PHASE / 3).await;
    let mut h = w.finish().await?;
    h.merge_attempts(side_history);
    cl.assert_no_crash()?;
    read_all_caught_up(&cl, name, &mut h).await?;
    let report = checker::analyze(&h);
    eprintln!(
        "faults: NATS cut done in {:?}; acks during the follower's cut {during_follower} \
         (unary, through another broker) and {during_all} (PublishAsync, any broker), during \
         the leader's cut {during_leader}\n{report}",
        started.elapsed()
    );
    if report.has_violations() {
        return Err(format!("{report}\nlogs:\n{}", cl.logs()).into());
    }
    if during_follower == 0 || after == 0 {
        return Err(format!(
            "publishing stalled: {during_follower} acks during the follower's cut, {after} \
             after the leader's heal\nlogs:\n{}",
            cl.logs()
        )
        .into());
    }
    cl.verify().await?;
    Ok(())
}

/// Longest CreateStream may fail through the majority while the metadata leader is isolated.
const CREATE_WAIT: Duration = Duration::from_secs(25);

/// Network partition of the metadata leader (issue 7, fault 3): its raft links to both peers
/// are blackholed. Metadata operations (CreateStream through a node of the majority) must work
/// again within a bounded time — the majority elects a new metadata leader — and after the
/// heal the old leader must learn the streams created meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_metadata_leader_is_replaced_for_create_stream() -> TestResult {
    let _turn = CLUSTER_TURN.lock().await;
    let started = Instant::now();
    let test = "an_isolated_metadata_leader_is_replaced_for_create_stream";
    let Some(mut cl) = Cluster::start_partitionable(test).await? else {
        return Ok(());
    };
    cl.create_replicated("partition-meta-before").await?;
    let meta = tokio::task::block_in_place(|| cl.metadata_leader())?;
    let links = cl.links.as_ref().ok_or("no links")?;
    eprintln!(
        "faults: blackholing metadata leader {} from its peers",
        cl.specs[meta].id
    );
    links.isolate(meta, Mode::Blackhole);
    let cut_at = Instant::now();
    // CreateStream through one node of the majority (a raw API client, so no call lands on
    // the isolated node), retried while the majority elects a new metadata leader.
    let via = (meta + 1) % cl.servers.len();
    let channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", cl.specs[via].port))?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await?;
    let mut api = ApiClient::new(channel);
    let name = "partition-meta-during";
    let mut tries = 0u32;
    let created = loop {
        tries += 1;
        let mut req = tonic::Request::new(api::CreateStreamRequest {
            subject: name.to_owned(),
            name: name.to_owned(),
            ..Default::default()
        });
        req.set_timeout(Duration::from_secs(3));
        match tokio::time::timeout(Duration::from_secs(5), api.create_stream(req)).await {
            Ok(Ok(_)) => break Ok(cut_at.elapsed()),
            // A timed-out attempt may have been applied: the retry then finds it.
            Ok(Err(s)) if s.code() == tonic::Code::AlreadyExists => break Ok(cut_at.elapsed()),
            r if cut_at.elapsed() < CREATE_WAIT => {
                eprintln!(
                    "faults: CreateStream via {} during the cut, try {tries}: {:?}",
                    cl.specs[via].id,
                    r.map(|r| r.map(drop))
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            r => break Err(format!("{:?}", r.map(|r| r.map(drop)))),
        }
    };
    let new_meta = tokio::task::block_in_place(|| {
        metrics::metadata_leader(&cl.metrics, &[meta], Duration::from_secs(5))
    });
    let links = cl.links.as_ref().ok_or("no links")?;
    links.heal();
    let created = match created {
        Ok(t) => t,
        Err(e) => {
            return Err(format!(
                "CreateStream failed through the majority for {CREATE_WAIT:?}: {e}\nlogs:\n{}",
                cl.logs()
            )
            .into())
        }
    };
    let new_meta = new_meta?;
    eprintln!(
        "faults: isolated metadata leader: CreateStream succeeded {created:?} after the cut \
         ({tries} tries); new metadata leader {}",
        cl.specs[new_meta].id
    );
    // After the heal the old leader serves the new stream in its own metadata.
    let deadline = Instant::now() + Duration::from_secs(20);
    let old = Client::builder([format!("127.0.0.1:{}", cl.specs[meta].port)])
        .connect_timeout(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(3))
        .connect()
        .await?;
    loop {
        if let Ok(md) = old.fetch_metadata().await {
            if md.stream(name).is_some() {
                break;
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} does not know {name} 20 s after the heal\nlogs:\n{}",
                cl.specs[meta].id,
                cl.logs()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cl.assert_no_crash()?;
    eprintln!(
        "faults: isolated metadata leader done in {:?}",
        started.elapsed()
    );
    Ok(())
}
