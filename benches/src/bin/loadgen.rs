//! `loadgen`: the end-to-end load generator of issue 6.
//!
//! - `loadgen bench --target liftbridge --addr HOST:PORT --system NAME ...` runs the workloads
//!   against a Liftbridge-API server (Drawbridge or Liftbridge); `--target jetstream --addr
//!   nats://HOST:PORT` against NATS JetStream. One JSON line per result on stdout (and appended
//!   to `--out`), progress on stderr.
//! - `loadgen hw --dir DIR` measures the hardware baselines.
//! - `loadgen report --input FILE --md OUT --svg OUT` writes the report of a run.
//! - `loadgen free-port` prints a free loopback port.
//!
//! Exit status: 0 when every workload succeeded, 1 when any failed (the others still ran and
//! were reported), 2 on bad usage.
//!
//! The `///` comments on the arguments double as `--help` text, in plain help notation.
#![allow(rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use drawbridge_benches::error::{BenchError, Result};
use drawbridge_benches::record::{parse_lines, Record, Sink};
use drawbridge_benches::target::jetstream::JetStreamTarget;
use drawbridge_benches::target::liftbridge::LiftbridgeTarget;
use drawbridge_benches::target::Target;
use drawbridge_benches::{hw, report, workload};
use drawbridge_client::AckPolicy;

/// mimalloc instead of glibc malloc: per-message allocations (protobuf, HTTP/2 frames, channel
/// nodes) freed on another thread made glibc's malloc/free ~15 % of the publish path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "End-to-end load generator: Drawbridge, Liftbridge, NATS JetStream"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run workloads against one system.
    Bench(BenchArgs),
    /// Measure hardware baselines (sequential write, fdatasync rate, loopback TCP).
    Hw(HwArgs),
    /// Write latest.md and latest.svg from a run's JSON lines.
    Report(ReportArgs),
    /// Print a TCP port of 127.0.0.1 that was free a moment ago (for compare.sh).
    FreePort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// A Liftbridge-API server (drawbridge-server, Liftbridge).
    Liftbridge,
    /// NATS JetStream.
    Jetstream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Ack {
    Leader,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ConsumeClient {
    Client,
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    Sync,
    Pipelined,
    Consume,
    E2e,
}

/// `PxW`: P publishers, W messages in flight each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    publishers: usize,
    window: usize,
}

impl FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (p, w) = s
            .split_once(['x', 'X'])
            .ok_or_else(|| format!("{s:?}: expected PxW, e.g. 4x1024"))?;
        let parse = |v: &str| v.trim().parse::<usize>().ok().filter(|n| *n > 0);
        match (parse(p), parse(w)) {
            (Some(publishers), Some(window)) => Ok(Shape { publishers, window }),
            _ => Err(format!("{s:?}: P and W must be positive integers")),
        }
    }
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// What kind of system.
    #[arg(long, value_enum)]
    target: Kind,
    /// liftbridge: HOST:PORT[,HOST:PORT]; jetstream: nats://HOST:PORT.
    #[arg(long)]
    addr: String,
    /// Label of the system in the results (e.g. drawbridge-embedded-sync).
    #[arg(long)]
    system: String,
    /// Ack policy of Liftbridge publishes.
    #[arg(long, value_enum, default_value = "leader")]
    ack_policy: Ack,
    /// Replicas per Liftbridge stream.
    #[arg(long, default_value_t = 1)]
    replication_factor: i32,
    /// Message sizes, bytes.
    #[arg(long, value_delimiter = ',', default_value = "256,1024")]
    sizes: Vec<usize>,
    /// Workloads to run, in this order per size.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sync,pipelined,consume,e2e"
    )]
    workloads: Vec<Workload>,
    /// Messages of the synchronous publisher.
    #[arg(long, default_value_t = 2000)]
    sync_messages: u64,
    /// Pipelined shapes, PxW.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1x256,1x1024,4x256,4x1024"
    )]
    shapes: Vec<Shape>,
    /// Seconds each pipelined shape runs.
    #[arg(long, default_value_t = 5.0)]
    pipelined_secs: f64,
    /// Messages preloaded and then consumed from the earliest offset.
    #[arg(long, default_value_t = 1_000_000)]
    consume_messages: u64,
    /// Times the preloaded partition is read from the earliest offset; the median is reported.
    #[arg(long, default_value_t = 1)]
    consume_rounds: u32,
    /// PIDs of the system's server processes, whose CPU time per message the pipelined and
    /// consume workloads record (comma-separated; none = not recorded).
    #[arg(long, value_delimiter = ',')]
    server_pids: Vec<u32>,
    /// How a Liftbridge-API target is read by the consume workload: through drawbridge-client
    /// (`client`, what users run) or a plain generated tonic stub (`raw`, to tell the client's
    /// own cost apart).
    #[arg(long, value_enum, default_value = "client")]
    consume_client: ConsumeClient,
    /// Steady publish rate of the end-to-end workload, msgs/s.
    #[arg(long, default_value_t = 5000)]
    e2e_rate: u64,
    /// Seconds of the end-to-end workload.
    #[arg(long, default_value_t = 5.0)]
    e2e_secs: f64,
    /// Upper bound of each workload, seconds (it is then reported as failed).
    #[arg(long, default_value_t = 300.0)]
    timeout_secs: f64,
    /// Also append the JSON lines to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct HwArgs {
    /// Directory on the file system the servers write to.
    #[arg(long)]
    dir: PathBuf,
    /// MiB written by the sequential-write probe.
    #[arg(long, default_value_t = 512)]
    write_mib: u64,
    /// Seconds of the fdatasync and loopback probes each.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Also append the JSON lines to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// JSON lines of the run.
    #[arg(long)]
    input: PathBuf,
    /// Markdown output.
    #[arg(long)]
    md: PathBuf,
    /// SVG output.
    #[arg(long)]
    svg: PathBuf,
    /// Title of both.
    #[arg(long, default_value = "Drawbridge vs NATS JetStream vs Liftbridge")]
    title: String,
    /// The system every ratio is taken against.
    #[arg(long, default_value = "jetstream")]
    baseline: String,
    /// The RF 3 ack-ALL cluster.
    #[arg(long, default_value = "drawbridge-cluster3-sync")]
    cluster: String,
    /// The single node the cluster is compared with.
    #[arg(long, default_value = "drawbridge-nats-sync")]
    single: String,
}

fn secs(s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s).map_err(|e| BenchError::Other(format!("{s} s: {e}")))
}

async fn bench(args: BenchArgs) -> Result<bool> {
    let mut sink = Sink::new(args.out.as_deref())?;
    // Unique per run: several runs may share one NATS server.
    let prefix = format!("bench{}", std::process::id());
    let target = match args.target {
        Kind::Liftbridge => {
            let addrs: Vec<String> = args.addr.split(',').map(str::to_owned).collect();
            let ack = match args.ack_policy {
                Ack::Leader => AckPolicy::Leader,
                Ack::All => AckPolicy::All,
            };
            Target::Liftbridge(
                LiftbridgeTarget::connect(&addrs, ack, args.replication_factor, &prefix)
                    .await?
                    .raw_subscribe(args.consume_client == ConsumeClient::Raw),
            )
        }
        Kind::Jetstream => Target::JetStream(Box::new(
            JetStreamTarget::connect(&args.addr, &prefix).await?,
        )),
    };
    let bound = secs(args.timeout_secs)?;
    let system = args.system.as_str();
    let mut all_ok = true;
    for &size in &args.sizes {
        for w in &args.workloads {
            let runs: Vec<(String, Option<Shape>)> = match w {
                Workload::Pipelined => args
                    .shapes
                    .iter()
                    .map(|s| (format!("pipelined {}x{}", s.publishers, s.window), Some(*s)))
                    .collect(),
                other => vec![(format!("{other:?}").to_lowercase(), None)],
            };
            for (name, shape) in runs {
                eprintln!("{system}: {name}, {size} B");
                let fut = async {
                    match (w, shape) {
                        (Workload::Sync, _) => {
                            workload::sync_publish(&target, system, size, args.sync_messages).await
                        }
                        (Workload::Pipelined, Some(s)) => {
                            let d = secs(args.pipelined_secs)?;
                            workload::pipelined(
                                &target,
                                system,
                                size,
                                s.publishers,
                                s.window,
                                d,
                                &args.server_pids,
                            )
                            .await
                        }
                        (Workload::Pipelined, None) => unreachable!("pipelined runs carry a shape"),
                        (Workload::Consume, _) => {
                            workload::consume(
                                &target,
                                system,
                                size,
                                args.consume_messages,
                                args.consume_rounds,
                                &args.server_pids,
                            )
                            .await
                        }
                        (Workload::E2e, _) => {
                            let d = secs(args.e2e_secs)?;
                            workload::end_to_end(&target, system, size, args.e2e_rate, d).await
                        }
                    }
                };
                let outcome = match tokio::time::timeout(bound, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(BenchError::Timeout(format!("{name} after {bound:?}"))),
                };
                let record = match outcome {
                    Ok(m) => {
                        eprintln!(
                            "  {:.0} msgs/s, {:.1} MB/s, p50 {:.3} ms, p99 {:.3} ms, errors {}",
                            m.msgs_per_sec,
                            m.mb_per_sec,
                            m.p50_us as f64 / 1e3,
                            m.p99_us as f64 / 1e3,
                            m.errors
                        );
                        if m.errors > 0 {
                            all_ok = false;
                        }
                        Record::Result(m)
                    }
                    Err(e) => {
                        eprintln!("  FAILED: {e}");
                        all_ok = false;
                        Record::Error {
                            system: system.to_owned(),
                            workload: name.clone(),
                            size,
                            message: e.to_string(),
                        }
                    }
                };
                sink.emit(&record)?;
            }
        }
    }
    Ok(all_ok)
}

fn hardware(args: HwArgs) -> Result<bool> {
    let mut sink = Sink::new(args.out.as_deref())?;
    std::fs::create_dir_all(&args.dir)?;
    let d = secs(args.secs)?;
    sink.emit(&hw::seq_write(&args.dir, args.write_mib << 20)?)?;
    sink.emit(&hw::fdatasync_rate(&args.dir, d)?)?;
    sink.emit(&hw::fdatasync_prealloc_rate(&args.dir, d)?)?;
    sink.emit(&hw::loopback_tcp(d)?)?;
    Ok(true)
}

fn write_report(args: ReportArgs) -> Result<bool> {
    let text = std::fs::read_to_string(&args.input)?;
    let records = parse_lines(&text)?;
    let roles = report::Roles {
        baseline: args.baseline,
        cluster: args.cluster,
        single: args.single,
    };
    std::fs::write(&args.md, report::markdown(&records, &roles, &args.title))?;
    std::fs::write(&args.svg, report::chart(&records, &args.title))?;
    Ok(true)
}

fn free_port() -> Result<bool> {
    let l = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    println!("{}", l.local_addr()?.port());
    Ok(true)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.cmd {
        Cmd::Bench(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(BenchError::from)
            .and_then(|rt| rt.block_on(bench(args))),
        Cmd::Hw(args) => hardware(args),
        Cmd::Report(args) => write_report(args),
        Cmd::FreePort => free_port(),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
