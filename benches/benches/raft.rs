//! Raft benchmarks: every figure beside a baseline measured in the same run, printed as a ratio.
//!
//! | bench | what | baseline |
//! | --- | --- | --- |
//! | `idle` | CPU time (`/proc/self/stat` utime+stime) and RSS (`/proc/self/statm`) of (a) one node holding N idle single-replica partition groups, (b) 3 in-process nodes holding N idle 3-replica groups; each in the default mode (node scheduler, coalesced heartbeats, idle groups quiesced) and, full run only, without quiescence, with one RPC per heartbeat and with openraft's per-group tick (the former designs) | the same node(s) with no partition group, same window, same run |
//! | `replicated` | one partition group on 3 in-process nodes over loopback gRPC: proposals of pre-encoded record sets, each awaited until committed (ALL ack) | `drawbridge_storage::Log::append` + `GroupCommit::sync` of the same bodies, one at a time, in the same run |
//!
//! Run: `cargo bench -p drawbridge-benches --bench raft`. Smoke (CI):
//! `cargo bench -p drawbridge-benches --bench raft -- --test` (20 groups, 1 s windows, default mode
//! only, a few hundred batches). Full run: 1,000 groups, 10 s windows, 2,000 batches of
//! 64 x 100 B.
//! A first non-flag argument runs only the benches whose name contains it: `idle/<replicas>/<mode>`
//! (modes `default`, `no-quiesce`, `single-rpc`, `tick`) and `replicated`, e.g.
//! `cargo bench -p drawbridge-benches --bench raft -- idle/3/default`.
//! `DRAWBRIDGE_BENCH_DIR` picks the directory for temp data (default: the system temp dir).
//! `DRAWBRIDGE_BENCH_GROUPS` overrides the idle group count (e.g. 10000),
//! `DRAWBRIDGE_BENCH_WINDOW_SECS` the window length and `DRAWBRIDGE_BENCH_WINDOWS` how many
//! windows are measured with the groups (each printed; the figures use their mean). Each group
//! replica holds 3 open files (segment, offset and time index), so the process's open-file
//! limit bounds the groups one run can hold (`ulimit -n` 20,000: ~6,000 group replicas).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use drawbridge_raft::GroupTimings;
use drawbridge_raft::PartitionId;
use drawbridge_raft::RaftConfig;
use drawbridge_raft::RaftNode;
use drawbridge_storage::encode_records;
use drawbridge_storage::BatchKind;
use drawbridge_storage::BatchMeta;
use drawbridge_storage::GroupCommit;
use drawbridge_storage::Log;
use drawbridge_storage::LogConfig;
use drawbridge_storage::Record;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

fn smoke() -> bool {
    std::env::args().any(|a| a == "--test")
}

/// Whether the bench named `name` runs: every bench without a filter, else those whose name
/// contains the first non-flag argument (e.g. `idle/3/default`, `idle/1`, `replicated`).
fn selected(name: &str) -> bool {
    match std::env::args().skip(1).find(|a| !a.starts_with('-')) {
        Some(filter) => name.contains(&filter),
        None => true,
    }
}

fn base_dir() -> PathBuf {
    std::env::var_os("DRAWBRIDGE_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

/// CPU seconds (user + system) this process has used, from `/proc/self/stat`.
fn cpu_seconds() -> BenchResult<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("malformed /proc/self/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11).ok_or("no utime")?.parse()?;
    let stime: f64 = f.get(12).ok_or("no stime")?.parse()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((utime + stime) / hz)
}

/// Resident set size in KiB, from `/proc/self/statm`.
fn rss_kib() -> BenchResult<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .ok_or("malformed /proc/self/statm")?
        .parse()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
    Ok(pages * page / 1024.0)
}

/// CPU fraction of one core used over `window`.
async fn cpu_over(window: Duration) -> BenchResult<f64> {
    let c0 = cpu_seconds()?;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    Ok((cpu_seconds()? - c0) / t0.elapsed().as_secs_f64())
}

/// How partition groups are timed and how heartbeats travel.
#[derive(Debug, Clone, Copy)]
struct Mode {
    /// openraft's per-group tick instead of the node scheduler.
    tick: bool,
    /// Heartbeats of all groups to one peer in one RPC.
    coalesce: bool,
    /// Quiesce idle groups (no heartbeats; one liveness beat per peer).
    quiesce: bool,
    name: &'static str,
    /// Short name for the command-line filter (`idle/<replicas>/<key>`).
    key: &'static str,
}

const SCHEDULER: Mode = Mode {
    tick: false,
    coalesce: true,
    quiesce: true,
    name: "node scheduler + coalesced heartbeats + quiescence (default)",
    key: "default",
};
const NO_QUIESCE: Mode = Mode {
    tick: false,
    coalesce: true,
    quiesce: false,
    name: "node scheduler + coalesced heartbeats, no quiescence (before)",
    key: "no-quiesce",
};
const SCHEDULER_SINGLE_RPCS: Mode = Mode {
    tick: false,
    coalesce: false,
    quiesce: false,
    name: "node scheduler, one RPC per heartbeat, no quiescence",
    key: "single-rpc",
};
const TICK: Mode = Mode {
    tick: true,
    coalesce: false,
    quiesce: false,
    name: "openraft per-group tick, one RPC per heartbeat (before)",
    key: "tick",
};

async fn start_node(id: u64, dir: &std::path::Path) -> BenchResult<RaftNode> {
    start_node_with(id, dir, SCHEDULER).await
}

async fn start_node_with(id: u64, dir: &std::path::Path, mode: Mode) -> BenchResult<RaftNode> {
    let mut cfg = RaftConfig::new(id, "");
    cfg.partition = GroupTimings::partition_defaults();
    cfg.partition_openraft_tick = mode.tick;
    cfg.coalesce_heartbeats = mode.coalesce;
    cfg.quiesce_partition_groups = mode.quiesce;
    Ok(RaftNode::start(cfg, dir, "127.0.0.1:0".parse()?).await?)
}

/// Starts `n` connected nodes with a bootstrapped metadata group.
async fn start_cluster(n: u64, dir: &std::path::Path, mode: Mode) -> BenchResult<Vec<RaftNode>> {
    let mut nodes = Vec::new();
    for id in 1..=n {
        nodes.push(start_node_with(id, &dir.join(format!("n{id}")), mode).await?);
    }
    let all = addresses(&nodes);
    for node in &nodes {
        for (id, addr) in &all {
            node.set_peer(*id, addr)?;
        }
    }
    nodes[0].metadata().bootstrap(all).await?;
    nodes[0]
        .metadata()
        .wait_for_leader(Duration::from_secs(10))
        .await?;
    Ok(nodes)
}

fn addresses(nodes: &[RaftNode]) -> BTreeMap<u64, String> {
    nodes
        .iter()
        .map(|n| (n.id(), n.local_addr().to_string()))
        .collect()
}

/// One idle measurement: the process with the nodes alone, then with the groups.
struct Idle {
    cpu0: f64,
    rss0: f64,
    /// Mean of `windows`.
    cpu1: f64,
    rss1: f64,
    /// CPU fraction of each window with the groups.
    windows: Vec<f64>,
}

/// Idle cost of `groups` partition groups with `replicas` replicas on as many in-process nodes.
async fn idle(
    groups: i32,
    replicas: u64,
    window: Duration,
    windows: usize,
    mode: Mode,
) -> BenchResult<Idle> {
    let tmp = tempfile::tempdir_in(base_dir())?;
    let nodes = start_cluster(replicas, tmp.path(), mode).await?;
    let all = addresses(&nodes);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = rss_kib()?;
    let cpu0 = cpu_over(window).await?;
    let mut leaders = Vec::with_capacity(groups as usize);
    for chunk in (0..groups).collect::<Vec<i32>>().chunks(100) {
        let futs = chunk.iter().flat_map(|i| {
            nodes
                .iter()
                .map(|n| n.create_partition_group(PartitionId::new("idle", *i), all.clone()))
        });
        let mut created = Vec::new();
        for r in futures::future::join_all(futs).await {
            created.push(r?);
        }
        // One replica per group is enough to wait on.
        leaders.extend(created.into_iter().step_by(replicas as usize));
    }
    for r in &leaders {
        r.wait_for_leader(Duration::from_secs(60)).await?;
    }
    // Let creation work (fsyncs, first entries) settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Replicated groups quiesce a few heartbeats after they go idle: measure once they all have
    // (bounded; a group that does not is still measured, and the count is printed).
    let quiesced = || {
        nodes
            .iter()
            .map(RaftNode::quiesced_partition_groups)
            .sum::<usize>()
    };
    if mode.quiesce && replicas > 1 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while quiesced() < groups as usize && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let quiesced_before = quiesced();
    let mut cpus = Vec::with_capacity(windows);
    for _ in 0..windows.max(1) {
        cpus.push(cpu_over(window).await?);
    }
    let cpu1 = cpus.iter().sum::<f64>() / cpus.len() as f64;
    let rss1 = rss_kib()?;
    let parked: usize = nodes.iter().map(RaftNode::parked_partition_groups).sum();
    println!(
        "idle {}: {quiesced_before} of {groups} groups quiesced before the window, {} after; {parked} of {} followers parked",
        mode.key,
        quiesced(),
        groups as u64 * (replicas - 1),
    );
    for n in &nodes {
        n.shutdown().await;
    }
    Ok(Idle {
        cpu0,
        rss0,
        cpu1,
        rss1,
        windows: cpus,
    })
}

/// Prints one idle measurement: per node (process CPU / nodes) and per group replica.
fn report_idle(what: &str, groups: i32, replicas: u64, m: &Idle) {
    let nodes = replicas as f64;
    let per_node = |cpu: f64| cpu * 100.0 / nodes;
    let group_replicas = f64::from(groups) * nodes;
    println!(
        "idle {what}: per node: alone {:.2}% of a core; with {groups} groups x {replicas} replicas {:.2}% of a core (+{:.2}%); RSS +{:.1} KiB per group replica ({:.0} -> {:.0} KiB process)",
        per_node(m.cpu0),
        per_node(m.cpu1),
        per_node(m.cpu1 - m.cpu0),
        (m.rss1 - m.rss0) / group_replicas,
        m.rss0,
        m.rss1,
    );
    if m.windows.len() > 1 {
        let each: Vec<String> = m
            .windows
            .iter()
            .map(|c| format!("{:.2}%", per_node(*c)))
            .collect();
        println!("idle {what}: per node, each window: {}", each.join(" "));
    }
    println!(
        "idle {what}: per group replica {:.5}% of a core; 10,000 group replicas per node would cost ~{:.1}% of a core",
        (m.cpu1 - m.cpu0) * 100.0 / group_replicas,
        (m.cpu1 - m.cpu0) * 100.0 / group_replicas * 10_000.0,
    );
}

fn batch_body(records: usize, size: usize) -> BenchResult<Bytes> {
    let rs: Vec<Record> = (0..records)
        .map(|i| Record {
            timestamp: 1_700_000_000_000_000_000 + i as i64,
            key: None,
            headers: Vec::new(),
            value: Bytes::from(vec![(i % 251) as u8; size]),
        })
        .collect();
    Ok(encode_records(&rs)?)
}

/// Durable appends of `body` x `batches` to a storage log, one at a time: MB/s.
async fn durable_baseline(body: &Bytes, batches: usize) -> BenchResult<f64> {
    let tmp = tempfile::tempdir_in(base_dir())?;
    let log = Log::open(
        tmp.path(),
        LogConfig {
            preallocate: false,
            ..LogConfig::default()
        },
    )?;
    let gc = GroupCommit::start()?;
    let t0 = Instant::now();
    for i in 0..batches as u64 {
        let meta = BatchMeta {
            kind: BatchKind::Data,
            raft_term: 1,
            raft_index: i + 1,
        };
        log.append(meta, body.clone())?;
        gc.sync(&log).await?;
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok((body.len() * batches) as f64 / secs / 1e6)
}

/// Replicated appends on 3 nodes: MB/s with `depth` proposals in flight.
async fn replicated(body: &Bytes, count: u32, batches: usize, depth: usize) -> BenchResult<f64> {
    let tmp = tempfile::tempdir_in(base_dir())?;
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        nodes.push(start_node(id, &tmp.path().join(format!("n{id}"))).await?);
    }
    let all: BTreeMap<u64, String> = nodes
        .iter()
        .map(|n| (n.id(), n.local_addr().to_string()))
        .collect();
    for n in &nodes {
        for (id, addr) in &all {
            n.set_peer(*id, addr)?;
        }
    }
    let p = PartitionId::new("bench", 0);
    let futs = nodes
        .iter()
        .map(|n| n.create_partition_group(p.clone(), all.clone()));
    let mut replicas = Vec::new();
    for r in futures::future::join_all(futs).await {
        replicas.push(r?);
    }
    let leader_id = replicas[0].wait_for_leader(Duration::from_secs(30)).await?;
    let leader = replicas
        .iter()
        .find(|r| r.group_node() == leader_id)
        .ok_or("leader not among replicas")?
        .clone();
    // Warm up (first entries, connections).
    for _ in 0..10 {
        leader
            .append(body.clone(), count, Duration::from_secs(10))
            .await?;
    }
    let t0 = Instant::now();
    let mut inflight = std::collections::VecDeque::new();
    for _ in 0..batches {
        if inflight.len() >= depth {
            let p: drawbridge_raft::Proposal = inflight.pop_front().ok_or("empty pipeline")?;
            p.committed(Duration::from_secs(10)).await?;
        }
        inflight.push_back(leader.propose(body.clone(), count));
    }
    while let Some(p) = inflight.pop_front() {
        p.committed(Duration::from_secs(10)).await?;
    }
    let secs = t0.elapsed().as_secs_f64();
    for n in &nodes {
        n.shutdown().await;
    }
    Ok((body.len() * batches) as f64 / secs / 1e6)
}

fn main() -> BenchResult<()> {
    if std::env::args().any(|a| a == "--list") {
        println!("idle: bench\nreplicated: bench");
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (default_groups, window, batches) = if smoke() {
        (20, Duration::from_secs(1), 200)
    } else {
        (1_000, Duration::from_secs(10), 2_000)
    };
    let env = |name: &str| -> BenchResult<Option<u64>> {
        match std::env::var(name) {
            Ok(v) => Ok(Some(
                v.parse::<u64>().map_err(|e| format!("{name}={v}: {e}"))?,
            )),
            Err(_) => Ok(None),
        }
    };
    let groups = match env("DRAWBRIDGE_BENCH_GROUPS")? {
        Some(g) => i32::try_from(g)?,
        None => default_groups,
    };
    let window = env("DRAWBRIDGE_BENCH_WINDOW_SECS")?.map_or(window, Duration::from_secs);
    let windows = env("DRAWBRIDGE_BENCH_WINDOWS")?.map_or(1, |w| w as usize);
    rt.block_on(async {
        for replicas in [1u64, 3] {
            let modes: &[Mode] = match (smoke(), replicas) {
                (true, _) => &[SCHEDULER],
                // Without peers there are no heartbeats to coalesce.
                (false, 1) => &[SCHEDULER, TICK],
                (false, _) => &[SCHEDULER, NO_QUIESCE, SCHEDULER_SINGLE_RPCS, TICK],
            };
            for mode in modes {
                if !selected(&format!("idle/{replicas}/{}", mode.key)) {
                    continue;
                }
                let what = format!("{replicas}-replica, {}", mode.name);
                match idle(groups, replicas, window, windows, *mode).await {
                    Ok(m) => report_idle(&what, groups, replicas, &m),
                    // A mode that cannot even settle is a result too; the smoke run must pass.
                    Err(e) if !smoke() => println!("idle {what}: did not settle: {e}"),
                    Err(e) => return Err(e),
                }
            }
        }
        if !selected("replicated") {
            return Ok(());
        }
        let (records, size) = (64usize, 100usize);
        let body = batch_body(records, size)?;
        let durable = durable_baseline(&body, batches).await?;
        let seq = replicated(&body, records as u32, batches, 1).await?;
        let piped = replicated(&body, records as u32, batches, 16).await?;
        println!(
            "replicated: batches of {records} x {size} B ({} B bodies), {batches} batches",
            body.len()
        );
        println!("replicated: storage durable append (append + GroupCommit sync, one at a time) {durable:.2} MB/s");
        println!(
            "replicated: 3-node raft, one proposal at a time {seq:.2} MB/s = {:.2}x durable",
            seq / durable
        );
        println!(
            "replicated: 3-node raft, 16 proposals in flight {piped:.2} MB/s = {:.2}x durable",
            piped / durable
        );
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}
