//! Command-line definitions (clap derive) and the parsers of the values they take.
//!
//! Value syntax:
//! - positions: `--from earliest|latest|new|offset:N|time:RFC3339`,
//!   `--to latest|offset:N|time:RFC3339` (times in UTC, e.g. `2026-01-01T00:00:00Z`);
//! - headers: `--header name=value`, repeatable (the value may contain `=`);
//! - durations: humantime syntax, e.g. `500ms`, `10s`, `24h`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use drawbridge_client::{AckPolicy, StartAt, StopAt};

/// Command-line tool for Drawbridge (and Liftbridge) clusters.
#[derive(Debug, Parser)]
#[command(name = "drawbridge", version)]
pub struct Cli {
    /// Server addresses (host:port), comma-separated; one is enough.
    #[arg(
        short = 'a',
        long = "addr",
        env = "DRAWBRIDGE_ADDR",
        default_value = "127.0.0.1:9292",
        value_delimiter = ',',
        global = true
    )]
    pub addrs: Vec<String>,

    /// Timeout of each request (and of publish acks).
    #[arg(long, default_value = "10s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// TLS towards the servers.
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// Use TLS (implied by the other --tls-* options).
    #[arg(long, global = true)]
    pub tls: bool,
    /// CA certificate (PEM) to trust instead of the system roots.
    #[arg(long, global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for servers that require one.
    #[arg(long, global = true, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, global = true, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Server name to verify, when it differs from the address host.
    #[arg(long, global = true)]
    pub tls_domain: Option<String>,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, describe and delete streams.
    #[command(subcommand)]
    Stream(StreamCommand),
    /// Publish one message (from an argument or stdin), or one per stdin line.
    Publish(PublishArgs),
    /// Read a stream partition and print its messages.
    Subscribe(SubscribeArgs),
    /// Read or store a cursor (a named offset of a stream partition).
    #[command(subcommand)]
    Cursor(CursorCommand),
    /// Show brokers and streams.
    Metadata(MetadataArgs),
    /// Cluster health.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Measure publish throughput and ack latency.
    Bench(BenchArgs),
}

/// `stream ...`
#[derive(Debug, Subcommand)]
pub enum StreamCommand {
    /// Create a stream.
    Create(CreateArgs),
    /// List streams.
    List {
        /// Include internal streams (`__cursors`, `__activity`).
        #[arg(long)]
        all: bool,
    },
    /// Describe a stream's partitions (asking each partition leader).
    Info {
        /// Stream name.
        name: String,
    },
    /// Delete a stream and its data.
    Delete {
        /// Stream name.
        name: String,
    },
    /// Pause partitions (all by default); a paused partition resumes when published to.
    Pause {
        /// Stream name.
        name: String,
        /// Partition to pause (repeatable; default: all).
        #[arg(short, long = "partition")]
        partitions: Vec<i32>,
        /// Resume every paused partition when any one of them is published to.
        #[arg(long)]
        resume_all: bool,
    },
    /// Resume paused partitions (all paused ones by default).
    Resume {
        /// Stream name.
        name: String,
        /// Partition to resume (repeatable; default: every paused one).
        #[arg(short, long = "partition")]
        partitions: Vec<i32>,
    },
    /// Make partitions readonly (all by default), or writable again with --off.
    Readonly {
        /// Stream name.
        name: String,
        /// Partition to change (repeatable; default: all).
        #[arg(short, long = "partition")]
        partitions: Vec<i32>,
        /// Clear the readonly flag instead of setting it.
        #[arg(long)]
        off: bool,
    },
}

/// `stream create`
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Stream name.
    pub name: String,
    /// NATS subject to record (defaults to the stream name).
    #[arg(long)]
    pub subject: Option<String>,
    /// Number of partitions.
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Replicas per partition (-1 = every server).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub replication_factor: i32,
    /// Load-balance group.
    #[arg(long)]
    pub group: Option<String>,
    /// Retention by size (bytes).
    #[arg(long)]
    pub retention_max_bytes: Option<i64>,
    /// Retention by message count.
    #[arg(long)]
    pub retention_max_messages: Option<i64>,
    /// Retention by age (e.g. 24h).
    #[arg(long, value_parser = parse_duration)]
    pub retention_max_age: Option<Duration>,
    /// Cleaner interval (e.g. 5m).
    #[arg(long, value_parser = parse_duration)]
    pub cleaner_interval: Option<Duration>,
    /// Segment size (bytes).
    #[arg(long)]
    pub segment_max_bytes: Option<i64>,
    /// Segment age before rolling.
    #[arg(long, value_parser = parse_duration)]
    pub segment_max_age: Option<Duration>,
    /// Compaction by key (true/false).
    #[arg(long)]
    pub compact_enabled: Option<bool>,
    /// Compaction parallelism.
    #[arg(long)]
    pub compact_max_goroutines: Option<i32>,
    /// Idle time before auto-pause (0s disables).
    #[arg(long, value_parser = parse_duration)]
    pub auto_pause_time: Option<Duration>,
    /// No auto-pause while subscribed (true/false).
    #[arg(long)]
    pub auto_pause_disable_if_subscribers: Option<bool>,
    /// Minimum in-sync replicas.
    #[arg(long)]
    pub min_isr: Option<i32>,
    /// Check expected offsets on publish (true/false).
    #[arg(long)]
    pub optimistic_concurrency_control: Option<bool>,
    /// Encrypt values at rest (true/false; unset: the server's `streams.encryption`). The
    /// servers need `LIFTBRIDGE_ENCRYPTION_KEY`.
    #[arg(long, conflicts_with = "encrypt")]
    pub encryption: Option<bool>,
    /// Encrypt values at rest: the same as `--encryption true`.
    #[arg(long)]
    pub encrypt: bool,
}

/// Ack policy on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AckArg {
    /// Once the leader stored it.
    Leader,
    /// Once committed on the in-sync replicas.
    All,
    /// Fire and forget.
    None,
}

impl From<AckArg> for AckPolicy {
    fn from(a: AckArg) -> AckPolicy {
        match a {
            AckArg::Leader => AckPolicy::Leader,
            AckArg::All => AckPolicy::All,
            AckArg::None => AckPolicy::None,
        }
    }
}

/// `publish`
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Stream to publish to.
    pub stream: String,
    /// Message value; read from stdin when absent or `-`.
    pub value: Option<String>,
    /// Message key.
    #[arg(short, long)]
    pub key: Option<String>,
    /// Header `name=value` (repeatable).
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    pub headers: Vec<(String, Bytes)>,
    /// Partition (default: 0, or by key hash with --key and no --partition on a
    /// multi-partition stream).
    #[arg(short, long)]
    pub partition: Option<i32>,
    /// Ack policy.
    #[arg(long, value_enum, default_value_t = AckArg::Leader)]
    pub ack_policy: AckArg,
    /// Expected offset (streams with optimistic concurrency control).
    #[arg(long, allow_negative_numbers = true)]
    pub expected_offset: Option<i64>,
    /// Publish each stdin line as its own message (pipelined).
    #[arg(long, conflicts_with = "value")]
    pub lines: bool,
    /// Idempotent publish: the producer id (needs --sequence). The server stores a message
    /// once per (producer, sequence), even when it is published again.
    #[arg(long, requires = "sequence")]
    pub producer_id: Option<String>,
    /// Idempotent publish: the message's sequence number (with --lines, the first line's;
    /// each next line takes the next number).
    #[arg(long, requires = "producer_id")]
    pub sequence: Option<u64>,
}

/// Output format of `subscribe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The value bytes, then a newline.
    Raw,
    /// One JSON object per line.
    Json,
}

/// `subscribe`
#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// Stream to read.
    pub stream: String,
    /// Partition to read.
    #[arg(short, long, default_value_t = 0)]
    pub partition: i32,
    /// Start: earliest | latest | new | offset:N | time:RFC3339.
    #[arg(long, default_value = "new", value_parser = parse_start)]
    pub from: StartAt,
    /// Stop: latest | offset:N | time:RFC3339 (default: follow forever).
    #[arg(long, value_parser = parse_stop)]
    pub to: Option<StopAt>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Raw)]
    pub format: Format,
    /// Exit after this many messages.
    #[arg(short = 'n', long)]
    pub count: Option<u64>,
    /// Read from a random in-sync replica.
    #[arg(long)]
    pub read_isr_replica: bool,
    /// Resume the partition if it is paused.
    #[arg(long)]
    pub resume: bool,
    /// Read from the start position (default: the newest message) towards the oldest, then exit.
    #[arg(long)]
    pub reverse: bool,
    /// Read as a member of this consumer group (every partition assigned to the member;
    /// `--partition` is ignored, `--from` applies where the group has no cursor).
    #[arg(long, conflicts_with_all = ["read_isr_replica", "to"])]
    pub group: Option<String>,
    /// Consumer id of the group member (default: a random one).
    #[arg(long, requires = "group")]
    pub consumer: Option<String>,
    /// Store the group cursor after each printed message.
    #[arg(long, requires = "group")]
    pub commit: bool,
}

/// `cursor ...`
#[derive(Debug, Subcommand)]
pub enum CursorCommand {
    /// Print a cursor's offset (-1 when none is stored).
    Get(CursorArgs),
    /// Store a cursor's offset.
    Set {
        #[command(flatten)]
        cursor: CursorArgs,
        /// The offset to store.
        offset: i64,
    },
}

/// Which cursor.
#[derive(Debug, Args)]
pub struct CursorArgs {
    /// Cursor id (a group's cursor is `__group:<group>`).
    pub cursor_id: String,
    /// Stream.
    pub stream: String,
    /// Partition.
    #[arg(short, long, default_value_t = 0)]
    pub partition: i32,
}

/// `metadata`
#[derive(Debug, Args)]
pub struct MetadataArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Brokers with partition and leader counts; partitions without a leader.
    Status,
    /// Compares every partition's replicas up to their common high watermark (Drawbridge
    /// servers only). Exits non-zero when replicas diverge or a replica cannot be compared.
    Verify {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `bench`
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Stream to publish to.
    pub stream: String,
    /// Concurrent publishers (one PublishAsync stream each).
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Messages in flight per publisher.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// How long to publish.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Stop after this many messages in total (default: only the duration bounds the run).
    #[arg(long)]
    pub messages: Option<u64>,
    /// Ack policy.
    #[arg(long, value_enum, default_value_t = AckArg::Leader)]
    pub ack_policy: AckArg,
    /// Create the stream first (subject = stream name) with this many partitions, if it
    /// does not exist.
    #[arg(long)]
    pub create: Option<i32>,
}

/// Parses a humantime duration (`500ms`, `10s`, `1h30m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

fn parse_time(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(s).map_err(|e| {
        format!("invalid time {s:?} (expected RFC 3339 in UTC, e.g. 2026-01-01T00:00:00Z): {e}")
    })
}

fn parse_offset(s: &str) -> Result<i64, String> {
    s.parse::<i64>()
        .ok()
        .filter(|o| *o >= 0)
        .ok_or_else(|| format!("invalid offset {s:?}: expected a number >= 0"))
}

/// Parses `--from`.
pub fn parse_start(s: &str) -> Result<StartAt, String> {
    match s {
        "earliest" => Ok(StartAt::Earliest),
        "latest" => Ok(StartAt::Latest),
        "new" | "new-only" => Ok(StartAt::NewOnly),
        _ => {
            if let Some(o) = s.strip_prefix("offset:") {
                parse_offset(o).map(StartAt::Offset)
            } else if let Some(t) = s.strip_prefix("time:") {
                parse_time(t).map(StartAt::Timestamp)
            } else {
                Err(format!(
                    "invalid start {s:?}: expected earliest, latest, new, offset:N or time:RFC3339"
                ))
            }
        }
    }
}

/// Parses `--to`.
pub fn parse_stop(s: &str) -> Result<StopAt, String> {
    match s {
        "latest" => Ok(StopAt::Latest),
        _ => {
            if let Some(o) = s.strip_prefix("offset:") {
                parse_offset(o).map(StopAt::Offset)
            } else if let Some(t) = s.strip_prefix("time:") {
                parse_time(t).map(StopAt::Timestamp)
            } else {
                Err(format!(
                    "invalid stop {s:?}: expected latest, offset:N or time:RFC3339"
                ))
            }
        }
    }
}

/// Parses `name=value` (split at the first `=`).
pub fn parse_header(s: &str) -> Result<(String, Bytes), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => {
            Ok((name.to_string(), Bytes::copy_from_slice(value.as_bytes())))
        }
        _ => Err(format!("invalid header {s:?}: expected name=value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const NEW_YEAR_2026: u64 = 1_767_225_600;

    #[test]
    fn positions() {
        assert_eq!(parse_start("offset:5"), Ok(StartAt::Offset(5)));
        assert_eq!(parse_start("earliest"), Ok(StartAt::Earliest));
        assert_eq!(parse_start("latest"), Ok(StartAt::Latest));
        assert_eq!(parse_start("new"), Ok(StartAt::NewOnly));
        assert_eq!(
            parse_start("time:2026-01-01T00:00:00Z"),
            Ok(StartAt::Timestamp(
                UNIX_EPOCH + Duration::from_secs(NEW_YEAR_2026)
            ))
        );
        assert_eq!(
            parse_start("time:2026-01-01T00:00:00.5Z"),
            Ok(StartAt::Timestamp(
                UNIX_EPOCH + Duration::from_millis(NEW_YEAR_2026 * 1000 + 500)
            ))
        );
        assert!(parse_start("offset:-1").is_err());
        assert!(parse_start("offset:x").is_err());
        assert!(parse_start("time:yesterday").is_err());
        assert!(parse_start("oldest").is_err());
        assert_eq!(parse_stop("offset:9"), Ok(StopAt::Offset(9)));
        assert_eq!(parse_stop("latest"), Ok(StopAt::Latest));
        assert_eq!(
            parse_stop("time:2026-01-01T00:00:00Z"),
            Ok(StopAt::Timestamp(
                UNIX_EPOCH + Duration::from_secs(NEW_YEAR_2026)
            ))
        );
        assert!(parse_stop("earliest").is_err());
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("k=v"),
            Ok(("k".to_string(), Bytes::from_static(b"v")))
        );
        assert_eq!(
            parse_header("k=a=b"),
            Ok(("k".to_string(), Bytes::from_static(b"a=b")))
        );
        assert_eq!(parse_header("k="), Ok(("k".to_string(), Bytes::new())));
        assert!(parse_header("=v").is_err());
        assert!(parse_header("novalue").is_err());
    }

    #[test]
    fn full_command_lines() {
        let cli = Cli::try_parse_from([
            "drawbridge",
            "-a",
            "h1:1,h2:2",
            "subscribe",
            "orders",
            "--from",
            "offset:5",
            "--to",
            "time:2026-01-01T00:00:00Z",
            "--format",
            "json",
            "-n",
            "3",
        ])
        .expect("parses");
        assert_eq!(cli.addrs, vec!["h1:1", "h2:2"]);
        let Command::Subscribe(s) = cli.command else {
            panic!("expected subscribe");
        };
        assert_eq!(s.from, StartAt::Offset(5));
        assert_eq!(
            s.to,
            Some(StopAt::Timestamp(
                UNIX_EPOCH + Duration::from_secs(NEW_YEAR_2026)
            ))
        );
        assert_eq!(s.format, Format::Json);
        assert_eq!(s.count, Some(3));

        let cli = Cli::try_parse_from([
            "drawbridge",
            "publish",
            "orders",
            "hello",
            "--header",
            "a=1",
            "-H",
            "b=2",
            "--ack-policy",
            "all",
            "--expected-offset",
            "-1",
            "--timeout",
            "2s",
        ])
        .expect("parses");
        assert_eq!(cli.timeout, Duration::from_secs(2));
        let Command::Publish(p) = cli.command else {
            panic!("expected publish");
        };
        assert_eq!(p.value.as_deref(), Some("hello"));
        assert_eq!(p.headers.len(), 2);
        assert_eq!(p.ack_policy, AckArg::All);
        assert_eq!(p.expected_offset, Some(-1));

        let cli = Cli::try_parse_from([
            "drawbridge",
            "stream",
            "create",
            "orders",
            "--subject",
            "orders.*",
            "--partitions",
            "3",
            "--replication-factor",
            "-1",
            "--retention-max-age",
            "24h",
            "--compact-enabled",
            "true",
        ])
        .expect("parses");
        let Command::Stream(StreamCommand::Create(c)) = cli.command else {
            panic!("expected stream create");
        };
        assert_eq!(c.partitions, 3);
        assert_eq!(c.replication_factor, -1);
        assert_eq!(c.retention_max_age, Some(Duration::from_secs(86_400)));
        assert_eq!(c.compact_enabled, Some(true));
        assert_eq!(c.subject.as_deref(), Some("orders.*"));

        assert!(Cli::try_parse_from(["drawbridge", "subscribe", "s", "--from", "bogus"]).is_err());
        assert!(Cli::try_parse_from(["drawbridge", "publish", "s", "-H", "bad"]).is_err());
        assert!(Cli::try_parse_from(["drawbridge", "bench", "s", "--duration", "1s"]).is_ok());
    }
}
