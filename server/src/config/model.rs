//! The typed server configuration and its defaults (Liftbridge's `NewDefaultConfig`, plus the
//! few Drawbridge settings under `storage.*`, `metrics.*` and `logging.format`).
//!
//! Invariant: a [`Config`] returned by [`super::Config::load`] has had its derived defaults
//! resolved (data dir, segment max age, compaction parallelism, snapshot threshold, embedded
//! NATS implied by its config file) and has passed validation; code that reads it need not
//! re-check ranges.

use std::path::PathBuf;
use std::time::Duration;

/// Liftbridge's default namespace.
pub const DEFAULT_NAMESPACE: &str = "liftbridge-default";
/// Liftbridge's default client port.
pub const DEFAULT_PORT: u16 = 9292;
/// Default NATS URL (nats.go's `DefaultURL`).
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// HashiCorp Raft's snapshot threshold, which Liftbridge's 0 falls back to.
pub const DEFAULT_RAFT_SNAPSHOT_THRESHOLD: u64 = 8192;
/// Liftbridge's compaction parallelism when 0 is configured.
pub const DEFAULT_COMPACT_MAX_GOROUTINES: usize = 10;
/// Default `storage.min.free.bytes`: 8 MiB.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 8 << 20;

/// A `host:port` pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP (may be empty in a `listen` value given as a bare port).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Log verbosity (`logging.level`, `--level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// `debug`
    Debug,
    /// `info`
    Info,
    /// `warn`
    Warn,
    /// `error`
    Error,
}

impl LogLevel {
    /// The `tracing` filter directive for this level.
    pub fn as_filter(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Log output format (`logging.format`, Drawbridge extra).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Ack policy, as used by `activity.stream.publish.ack.policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckPolicy {
    /// Ack after the leader's local append.
    Leader,
    /// Ack after the record is committed.
    All,
    /// Never ack.
    None,
}

/// When the log is fsynced (`storage.sync.policy`, Drawbridge extra).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// fsync before acknowledging (group commit). The default.
    Always,
    /// fsync every `storage.sync.interval`; a crash may lose the last interval.
    Interval,
    /// Never fsync explicitly; the OS decides.
    Never,
}

/// `logging.*`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingConfig {
    /// `logging.level` (info).
    pub level: LogLevel,
    /// `logging.recovery`: log log-recovery details (false).
    pub recovery: bool,
    /// `logging.raft`: raft library logs (false).
    pub raft: bool,
    /// `logging.nats`: embedded NATS logs (false).
    pub nats: bool,
    /// `logging.format` (Drawbridge): text or json (text).
    pub format: LogFormat,
}

/// `tls.*`: TLS for the client API.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsConfig {
    /// `tls.key`
    pub key: Option<PathBuf>,
    /// `tls.cert`
    pub cert: Option<PathBuf>,
    /// `tls.client.auth.enabled`: require client certificates.
    pub client_auth_enabled: bool,
    /// `tls.client.auth.ca`
    pub client_auth_ca: Option<PathBuf>,
    /// `tls.client.authz.enabled`: ACLs on the client certificate identity.
    pub client_authz_enabled: bool,
    /// `tls.client.authz.model`
    pub client_authz_model: Option<PathBuf>,
    /// `tls.client.authz.policy`
    pub client_authz_policy: Option<PathBuf>,
}

/// `nats.*`: how to reach NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// `nats.servers` ([nats://127.0.0.1:4222]).
    pub servers: Vec<String>,
    /// `nats.user`
    pub user: Option<String>,
    /// `nats.password`
    pub password: Option<String>,
    /// `nats.tls.cert`
    pub tls_cert: Option<PathBuf>,
    /// `nats.tls.key`
    pub tls_key: Option<PathBuf>,
    /// `nats.tls.ca`
    pub tls_ca: Option<PathBuf>,
    /// `nats.embedded`: run the embedded broker (false; true when `embedded_config` is set).
    pub embedded: bool,
    /// `nats.embedded.config`: nats-server style config file for the embedded broker.
    pub embedded_config: Option<PathBuf>,
}

/// `streams.*`: defaults for every stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamsConfig {
    /// `streams.retention.max.bytes` (0 = unlimited).
    pub retention_max_bytes: i64,
    /// `streams.retention.max.messages` (0 = unlimited).
    pub retention_max_messages: i64,
    /// `streams.retention.max.age` (168h).
    pub retention_max_age: Duration,
    /// `streams.cleaner.interval` (5m).
    pub cleaner_interval: Duration,
    /// `streams.segment.max.bytes` (256 MiB).
    pub segment_max_bytes: i64,
    /// `streams.segment.max.age` (= retention max age).
    pub segment_max_age: Duration,
    /// `streams.compact.enabled` (false).
    pub compact_enabled: bool,
    /// `streams.compact.max.goroutines` (10): compaction parallelism.
    pub compact_max_goroutines: usize,
    /// `streams.auto.pause.time` (0 = off).
    pub auto_pause_time: Duration,
    /// `streams.auto.pause.disable.if.subscribers` (false).
    pub auto_pause_disable_if_subscribers: bool,
    /// `streams.concurrency.control` (false).
    pub concurrency_control: bool,
    /// `streams.encryption` (false).
    pub encryption: bool,
}

/// `clustering.*`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusteringConfig {
    /// `clustering.server.id` (None: the server generates one and persists it).
    pub server_id: Option<String>,
    /// `clustering.namespace` (liftbridge-default).
    pub namespace: String,
    /// `clustering.raft.snapshot.retain` (2).
    pub raft_snapshot_retain: usize,
    /// `clustering.raft.snapshot.threshold` (8192).
    pub raft_snapshot_threshold: u64,
    /// `clustering.raft.cache.size` (512).
    pub raft_cache_size: usize,
    /// `clustering.raft.bootstrap.seed` (false).
    pub raft_bootstrap_seed: bool,
    /// `clustering.raft.bootstrap.peers` (empty).
    pub raft_bootstrap_peers: Vec<String>,
    /// `clustering.raft.max.quorum.size` (0 = all servers vote).
    pub raft_max_quorum_size: u32,
    /// `clustering.replica.max.lag.time` (15s).
    pub replica_max_lag_time: Duration,
    /// `clustering.replica.max.leader.timeout` (15s).
    pub replica_max_leader_timeout: Duration,
    /// `clustering.replica.max.idle.wait` (10s).
    pub replica_max_idle_wait: Duration,
    /// `clustering.replica.fetch.timeout` (3s).
    pub replica_fetch_timeout: Duration,
    /// `clustering.min.insync.replicas` (1).
    pub min_insync_replicas: usize,
    /// `clustering.replication.max.bytes` (1 MiB): largest accepted message.
    pub replication_max_bytes: i64,
}

/// `activity.*`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityConfig {
    /// `activity.stream.enabled` (false).
    pub stream_enabled: bool,
    /// `activity.stream.publish.timeout` (5s).
    pub publish_timeout: Duration,
    /// `activity.stream.publish.ack.policy` (all).
    pub publish_ack_policy: AckPolicy,
}

/// `cursors.*`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorsConfig {
    /// `cursors.stream.partitions` (0 = cursors disabled).
    pub stream_partitions: u32,
    /// `cursors.stream.replication.factor` (-1 = all servers).
    pub stream_replication_factor: i32,
    /// `cursors.stream.auto.pause.time` (1m).
    pub stream_auto_pause_time: Duration,
}

/// `groups.*`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupsConfig {
    /// `groups.consumer.timeout` (15s).
    pub consumer_timeout: Duration,
    /// `groups.coordinator.timeout` (15s).
    pub coordinator_timeout: Duration,
}

/// `telemetry.*`: accepted so Liftbridge configs load; Drawbridge sends no telemetry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// `telemetry.enabled` (true in Liftbridge; ignored).
    pub enabled: bool,
    /// `telemetry.interval.seconds` (86400; ignored).
    pub interval_seconds: u64,
}

/// `storage.*` (Drawbridge): durability of the partition logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// `storage.sync.policy` (always).
    pub sync_policy: SyncPolicy,
    /// `storage.sync.interval` (1s): the period for `interval`.
    pub sync_interval: Duration,
    /// `storage.min.free.bytes` (8 MiB): the partition leader refuses new messages while the
    /// file system of `data.dir` has less than this available (see [`crate::diskspace`]);
    /// 0 disables the check. The default covers one log preallocation step (4 MiB) plus the
    /// raft journal and metadata writes that accompany it.
    pub min_free_bytes: u64,
    /// `storage.unclean.restart.hold` (5m): under a lazy `storage.sync.policy`, how long at
    /// most a partition group that restarted without a clean shutdown holds its votes and
    /// elections while no leader catches it up (`drawbridge_raft`'s `unclean_restart_hold_ms`);
    /// when the hold ends, entries committed only in page caches may be lost. 0: no limit
    /// (hold until caught up, however long).
    pub unclean_restart_hold: Duration,
}

/// `metrics.*` (Drawbridge): the HTTP endpoint for `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetricsConfig {
    /// `metrics.listen` (None = no metrics endpoint).
    pub listen: Option<HostPort>,
}

/// `limits.*` (Drawbridge): caps that keep one client from exhausting the server; 0 means
/// unlimited (the default for each).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LimitsConfig {
    /// `limits.max.streams`: streams in the cluster; CreateStream beyond it is refused.
    pub max_streams: u64,
    /// `limits.max.partitions`: partitions in the cluster, all streams together.
    pub max_partitions: u64,
    /// `limits.max.subscriptions`: concurrent Subscribe calls on this server.
    pub max_subscriptions: u64,
    /// `limits.max.connections`: concurrent client API connections on this server; more are
    /// closed as soon as they are accepted.
    pub max_connections: u64,
}

/// The whole server configuration. Field docs name the key and its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `listen`: bind address; see [`Config::listen_address`].
    pub listen: Option<HostPort>,
    /// `host`: address advertised to clients; see [`Config::connection_address`].
    pub host: Option<String>,
    /// `port` (9292).
    pub port: u16,
    /// `data.dir` (`/tmp/liftbridge/<namespace>`).
    pub data_dir: PathBuf,
    /// `metadata.cache.max.age` (2m).
    pub metadata_cache_max_age: Duration,
    /// `batch.max.messages` (1024).
    pub batch_max_messages: usize,
    /// `batch.max.time` (0).
    pub batch_max_time: Duration,
    /// `logging.*`
    pub logging: LoggingConfig,
    /// `tls.*`
    pub tls: TlsConfig,
    /// `nats.*`
    pub nats: NatsConfig,
    /// `streams.*`
    pub streams: StreamsConfig,
    /// `clustering.*`
    pub clustering: ClusteringConfig,
    /// `activity.*`
    pub activity: ActivityConfig,
    /// `cursors.*`
    pub cursors: CursorsConfig,
    /// `groups.*`
    pub groups: GroupsConfig,
    /// `telemetry.*`
    pub telemetry: TelemetryConfig,
    /// `storage.*` (Drawbridge)
    pub storage: StorageConfig,
    /// `metrics.*` (Drawbridge)
    pub metrics: MetricsConfig,
    /// `limits.*` (Drawbridge)
    pub limits: LimitsConfig,
}

impl Default for Config {
    fn default() -> Self {
        let retention_max_age = Duration::from_secs(168 * 3600);
        Self {
            listen: None,
            host: None,
            port: DEFAULT_PORT,
            data_dir: default_data_dir(DEFAULT_NAMESPACE),
            metadata_cache_max_age: Duration::from_secs(120),
            batch_max_messages: 1024,
            batch_max_time: Duration::ZERO,
            logging: LoggingConfig {
                level: LogLevel::Info,
                recovery: false,
                raft: false,
                nats: false,
                format: LogFormat::Text,
            },
            tls: TlsConfig::default(),
            nats: NatsConfig {
                servers: vec![DEFAULT_NATS_URL.to_owned()],
                user: None,
                password: None,
                tls_cert: None,
                tls_key: None,
                tls_ca: None,
                embedded: false,
                embedded_config: None,
            },
            streams: StreamsConfig {
                retention_max_bytes: 0,
                retention_max_messages: 0,
                retention_max_age,
                cleaner_interval: Duration::from_secs(300),
                segment_max_bytes: 256 << 20,
                segment_max_age: retention_max_age,
                compact_enabled: false,
                compact_max_goroutines: DEFAULT_COMPACT_MAX_GOROUTINES,
                auto_pause_time: Duration::ZERO,
                auto_pause_disable_if_subscribers: false,
                concurrency_control: false,
                encryption: false,
            },
            clustering: ClusteringConfig {
                server_id: None,
                namespace: DEFAULT_NAMESPACE.to_owned(),
                raft_snapshot_retain: 2,
                raft_snapshot_threshold: DEFAULT_RAFT_SNAPSHOT_THRESHOLD,
                raft_cache_size: 512,
                raft_bootstrap_seed: false,
                raft_bootstrap_peers: Vec::new(),
                raft_max_quorum_size: 0,
                replica_max_lag_time: Duration::from_secs(15),
                replica_max_leader_timeout: Duration::from_secs(15),
                replica_max_idle_wait: Duration::from_secs(10),
                replica_fetch_timeout: Duration::from_secs(3),
                min_insync_replicas: 1,
                replication_max_bytes: 1 << 20,
            },
            activity: ActivityConfig {
                stream_enabled: false,
                publish_timeout: Duration::from_secs(5),
                publish_ack_policy: AckPolicy::All,
            },
            cursors: CursorsConfig {
                stream_partitions: 0,
                stream_replication_factor: -1,
                stream_auto_pause_time: Duration::from_secs(60),
            },
            groups: GroupsConfig {
                consumer_timeout: Duration::from_secs(15),
                coordinator_timeout: Duration::from_secs(15),
            },
            telemetry: TelemetryConfig {
                enabled: true,
                interval_seconds: 86_400,
            },
            storage: StorageConfig {
                sync_policy: SyncPolicy::Always,
                sync_interval: Duration::from_secs(1),
                min_free_bytes: DEFAULT_MIN_FREE_BYTES,
                unclean_restart_hold: Duration::from_secs(300),
            },
            metrics: MetricsConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

/// Liftbridge's default data directory for a namespace.
pub fn default_data_dir(namespace: &str) -> PathBuf {
    PathBuf::from("/tmp/liftbridge").join(namespace)
}

impl Config {
    /// The address to bind the client API to (Liftbridge's `GetListenAddress`): `listen` if
    /// given (an empty host meaning all interfaces), else `host:port`, else `0.0.0.0:port`.
    pub fn listen_address(&self) -> HostPort {
        if let Some(l) = &self.listen {
            let host = if l.host.is_empty() {
                "0.0.0.0".to_owned()
            } else {
                l.host.clone()
            };
            return HostPort { host, port: l.port };
        }
        HostPort {
            host: self.host.clone().unwrap_or_else(|| "0.0.0.0".to_owned()),
            port: self.port,
        }
    }

    /// The address advertised to clients in metadata (Liftbridge's `GetConnectionAddress`):
    /// `host:port` if `host` is set, else the `listen` address, else `localhost:port`. Unlike
    /// Liftbridge we never advertise an unspecified address (`0.0.0.0`, `::`): we advertise
    /// `localhost` with the listen port instead.
    pub fn connection_address(&self) -> HostPort {
        if let Some(host) = &self.host {
            return HostPort {
                host: host.clone(),
                port: self.port,
            };
        }
        if let Some(l) = &self.listen {
            let unspecified = l.host.is_empty()
                || l.host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_unspecified());
            let host = if unspecified {
                "localhost".to_owned()
            } else {
                l.host.clone()
            };
            return HostPort { host, port: l.port };
        }
        HostPort {
            host: "localhost".to_owned(),
            port: self.port,
        }
    }
}
