//! The table of configuration keys and how each one is applied to a [`Config`].
//!
//! Invariant: [`KEYS`] lists exactly the keys [`apply`] accepts (a unit test applies a sample
//! value of the listed kind to every key). Keys are dotted and lower-case; the Liftbridge keys
//! come first, then the Drawbridge extras (`logging.format`, `storage.*`, `metrics.*`,
//! `limits.*`).

use super::model::{AckPolicy, Config, HostPort, LogFormat, LogLevel, SyncPolicy};
use super::value::RawValue;

/// The type of value a key takes (for documentation and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Free text.
    Str,
    /// A filesystem path.
    Path,
    /// true/false.
    Bool,
    /// An integer.
    Int,
    /// A Go duration.
    Duration,
    /// A list of strings.
    List,
    /// `host:port` or a bare port.
    HostPort,
    /// One of the given words.
    Enum(&'static [&'static str]),
}

const LEVELS: &[&str] = &["debug", "info", "warn", "error"];
const FORMATS: &[&str] = &["text", "json"];
const ACK_POLICIES: &[&str] = &["none", "leader", "all"];
const SYNC_POLICIES: &[&str] = &["always", "interval", "never"];

/// Every accepted key with its kind.
pub const KEYS: &[(&str, Kind)] = &[
    ("listen", Kind::HostPort),
    ("host", Kind::Str),
    ("port", Kind::Int),
    ("data.dir", Kind::Path),
    ("metadata.cache.max.age", Kind::Duration),
    ("batch.max.messages", Kind::Int),
    ("batch.max.time", Kind::Duration),
    ("logging.level", Kind::Enum(LEVELS)),
    ("logging.recovery", Kind::Bool),
    ("logging.raft", Kind::Bool),
    ("logging.nats", Kind::Bool),
    ("tls.key", Kind::Path),
    ("tls.cert", Kind::Path),
    ("tls.client.auth.enabled", Kind::Bool),
    ("tls.client.auth.ca", Kind::Path),
    ("tls.client.authz.enabled", Kind::Bool),
    ("tls.client.authz.model", Kind::Path),
    ("tls.client.authz.policy", Kind::Path),
    ("nats.servers", Kind::List),
    ("nats.user", Kind::Str),
    ("nats.password", Kind::Str),
    ("nats.tls.cert", Kind::Path),
    ("nats.tls.key", Kind::Path),
    ("nats.tls.ca", Kind::Path),
    ("nats.embedded", Kind::Bool),
    ("nats.embedded.config", Kind::Path),
    ("streams.retention.max.bytes", Kind::Int),
    ("streams.retention.max.messages", Kind::Int),
    ("streams.retention.max.age", Kind::Duration),
    ("streams.cleaner.interval", Kind::Duration),
    ("streams.segment.max.bytes", Kind::Int),
    ("streams.segment.max.age", Kind::Duration),
    ("streams.compact.enabled", Kind::Bool),
    ("streams.compact.max.goroutines", Kind::Int),
    ("streams.auto.pause.time", Kind::Duration),
    ("streams.auto.pause.disable.if.subscribers", Kind::Bool),
    ("streams.concurrency.control", Kind::Bool),
    ("streams.encryption", Kind::Bool),
    ("clustering.server.id", Kind::Str),
    ("clustering.namespace", Kind::Str),
    ("clustering.raft.snapshot.retain", Kind::Int),
    ("clustering.raft.snapshot.threshold", Kind::Int),
    ("clustering.raft.cache.size", Kind::Int),
    ("clustering.raft.bootstrap.seed", Kind::Bool),
    ("clustering.raft.bootstrap.peers", Kind::List),
    ("clustering.raft.max.quorum.size", Kind::Int),
    ("clustering.replica.max.lag.time", Kind::Duration),
    ("clustering.replica.max.leader.timeout", Kind::Duration),
    ("clustering.replica.max.idle.wait", Kind::Duration),
    ("clustering.replica.fetch.timeout", Kind::Duration),
    ("clustering.min.insync.replicas", Kind::Int),
    ("clustering.replication.max.bytes", Kind::Int),
    ("activity.stream.enabled", Kind::Bool),
    ("activity.stream.publish.timeout", Kind::Duration),
    (
        "activity.stream.publish.ack.policy",
        Kind::Enum(ACK_POLICIES),
    ),
    ("cursors.stream.partitions", Kind::Int),
    ("cursors.stream.replication.factor", Kind::Int),
    ("cursors.stream.auto.pause.time", Kind::Duration),
    ("groups.consumer.timeout", Kind::Duration),
    ("groups.coordinator.timeout", Kind::Duration),
    ("telemetry.enabled", Kind::Bool),
    ("telemetry.interval.seconds", Kind::Int),
    // Drawbridge extras.
    ("logging.format", Kind::Enum(FORMATS)),
    ("storage.sync.policy", Kind::Enum(SYNC_POLICIES)),
    ("storage.sync.interval", Kind::Duration),
    ("storage.min.free.bytes", Kind::Int),
    ("storage.unclean.restart.hold", Kind::Duration),
    ("metrics.listen", Kind::HostPort),
    ("limits.max.streams", Kind::Int),
    ("limits.max.partitions", Kind::Int),
    ("limits.max.subscriptions", Kind::Int),
    ("limits.max.connections", Kind::Int),
];

/// Is `key` (dotted, lower-case) a configuration key?
pub fn is_known(key: &str) -> bool {
    KEYS.iter().any(|(k, _)| *k == key)
}

/// Applies `value` to the setting `key` of `c`. The error is a reason, without the key.
pub fn apply(c: &mut Config, key: &str, v: &RawValue) -> Result<(), String> {
    let non_negative = |v: &RawValue| v.to_int_in::<i64>(0, i64::MAX);
    match key {
        "listen" => c.listen = Some(host_port(v)?),
        "host" => c.host = Some(v.to_nonempty_string()?),
        "port" => c.port = v.to_int_in(0, i64::from(u16::MAX))?,
        "data.dir" => c.data_dir = v.to_path()?,
        "metadata.cache.max.age" => c.metadata_cache_max_age = v.to_duration()?,
        "batch.max.messages" => c.batch_max_messages = v.to_int_in(1, i64::MAX)?,
        "batch.max.time" => c.batch_max_time = v.to_duration()?,
        "logging.level" => {
            c.logging.level = match word(v, LEVELS)? {
                "debug" => LogLevel::Debug,
                "info" => LogLevel::Info,
                "warn" => LogLevel::Warn,
                _ => LogLevel::Error,
            }
        }
        "logging.recovery" => c.logging.recovery = v.to_bool()?,
        "logging.raft" => c.logging.raft = v.to_bool()?,
        "logging.nats" => c.logging.nats = v.to_bool()?,
        "logging.format" => {
            c.logging.format = match word(v, FORMATS)? {
                "json" => LogFormat::Json,
                _ => LogFormat::Text,
            }
        }
        "tls.key" => c.tls.key = Some(v.to_path()?),
        "tls.cert" => c.tls.cert = Some(v.to_path()?),
        "tls.client.auth.enabled" => c.tls.client_auth_enabled = v.to_bool()?,
        "tls.client.auth.ca" => c.tls.client_auth_ca = Some(v.to_path()?),
        "tls.client.authz.enabled" => c.tls.client_authz_enabled = v.to_bool()?,
        "tls.client.authz.model" => c.tls.client_authz_model = Some(v.to_path()?),
        "tls.client.authz.policy" => c.tls.client_authz_policy = Some(v.to_path()?),
        "nats.servers" => c.nats.servers = v.to_string_list()?,
        "nats.user" => c.nats.user = Some(v.to_string_value()?),
        "nats.password" => c.nats.password = Some(v.to_string_value()?),
        "nats.tls.cert" => c.nats.tls_cert = Some(v.to_path()?),
        "nats.tls.key" => c.nats.tls_key = Some(v.to_path()?),
        "nats.tls.ca" => c.nats.tls_ca = Some(v.to_path()?),
        "nats.embedded" => c.nats.embedded = v.to_bool()?,
        "nats.embedded.config" => c.nats.embedded_config = Some(v.to_path()?),
        "streams.retention.max.bytes" => c.streams.retention_max_bytes = non_negative(v)?,
        "streams.retention.max.messages" => c.streams.retention_max_messages = non_negative(v)?,
        "streams.retention.max.age" => c.streams.retention_max_age = v.to_duration()?,
        "streams.cleaner.interval" => c.streams.cleaner_interval = v.to_duration()?,
        "streams.segment.max.bytes" => c.streams.segment_max_bytes = v.to_int_in(1, i64::MAX)?,
        "streams.segment.max.age" => c.streams.segment_max_age = v.to_duration()?,
        "streams.compact.enabled" => c.streams.compact_enabled = v.to_bool()?,
        "streams.compact.max.goroutines" => {
            c.streams.compact_max_goroutines = v.to_int_in(0, 1_000_000)?
        }
        "streams.auto.pause.time" => c.streams.auto_pause_time = v.to_duration()?,
        "streams.auto.pause.disable.if.subscribers" => {
            c.streams.auto_pause_disable_if_subscribers = v.to_bool()?
        }
        "streams.concurrency.control" => c.streams.concurrency_control = v.to_bool()?,
        "streams.encryption" => c.streams.encryption = v.to_bool()?,
        "clustering.server.id" => c.clustering.server_id = Some(v.to_nonempty_string()?),
        "clustering.namespace" => c.clustering.namespace = v.to_nonempty_string()?,
        "clustering.raft.snapshot.retain" => {
            c.clustering.raft_snapshot_retain = v.to_int_in(1, 1_000_000)?
        }
        "clustering.raft.snapshot.threshold" => {
            c.clustering.raft_snapshot_threshold = v.to_int_in(0, i64::MAX)?
        }
        "clustering.raft.cache.size" => c.clustering.raft_cache_size = v.to_int_in(0, 1 << 30)?,
        "clustering.raft.bootstrap.seed" => c.clustering.raft_bootstrap_seed = v.to_bool()?,
        "clustering.raft.bootstrap.peers" => {
            c.clustering.raft_bootstrap_peers = v.to_string_list()?
        }
        "clustering.raft.max.quorum.size" => {
            c.clustering.raft_max_quorum_size = v.to_int_in(0, i64::from(u32::MAX))?
        }
        "clustering.replica.max.lag.time" => c.clustering.replica_max_lag_time = v.to_duration()?,
        "clustering.replica.max.leader.timeout" => {
            c.clustering.replica_max_leader_timeout = v.to_duration()?
        }
        "clustering.replica.max.idle.wait" => {
            c.clustering.replica_max_idle_wait = v.to_duration()?
        }
        "clustering.replica.fetch.timeout" => {
            c.clustering.replica_fetch_timeout = v.to_duration()?
        }
        "clustering.min.insync.replicas" => {
            c.clustering.min_insync_replicas = v.to_int_in(1, 1_000_000)?
        }
        "clustering.replication.max.bytes" => {
            c.clustering.replication_max_bytes = v.to_int_in(1, i64::MAX)?
        }
        "activity.stream.enabled" => c.activity.stream_enabled = v.to_bool()?,
        "activity.stream.publish.timeout" => c.activity.publish_timeout = v.to_duration()?,
        "activity.stream.publish.ack.policy" => {
            c.activity.publish_ack_policy = match word(v, ACK_POLICIES)? {
                "none" => AckPolicy::None,
                "leader" => AckPolicy::Leader,
                _ => AckPolicy::All,
            }
        }
        "cursors.stream.partitions" => {
            c.cursors.stream_partitions = v.to_int_in(0, i64::from(i32::MAX))?
        }
        "cursors.stream.replication.factor" => {
            let rf: i32 = v.to_int_in(-1, i64::from(i32::MAX))?;
            if rf == 0 {
                return Err("must be -1 (all servers) or at least 1".to_owned());
            }
            c.cursors.stream_replication_factor = rf;
        }
        "cursors.stream.auto.pause.time" => c.cursors.stream_auto_pause_time = v.to_duration()?,
        "groups.consumer.timeout" => c.groups.consumer_timeout = v.to_duration()?,
        "groups.coordinator.timeout" => c.groups.coordinator_timeout = v.to_duration()?,
        "telemetry.enabled" => c.telemetry.enabled = v.to_bool()?,
        "telemetry.interval.seconds" => c.telemetry.interval_seconds = v.to_int_in(0, i64::MAX)?,
        "storage.sync.policy" => {
            c.storage.sync_policy = match word(v, SYNC_POLICIES)? {
                "interval" => SyncPolicy::Interval,
                "never" => SyncPolicy::Never,
                _ => SyncPolicy::Always,
            }
        }
        "storage.sync.interval" => c.storage.sync_interval = v.to_duration()?,
        "storage.min.free.bytes" => c.storage.min_free_bytes = v.to_int_in(0, i64::MAX)?,
        "storage.unclean.restart.hold" => c.storage.unclean_restart_hold = v.to_duration()?,
        "metrics.listen" => c.metrics.listen = Some(host_port(v)?),
        "limits.max.streams" => c.limits.max_streams = v.to_int_in(0, i64::MAX)?,
        "limits.max.partitions" => c.limits.max_partitions = v.to_int_in(0, i64::MAX)?,
        "limits.max.subscriptions" => c.limits.max_subscriptions = v.to_int_in(0, i64::MAX)?,
        "limits.max.connections" => c.limits.max_connections = v.to_int_in(0, i64::MAX)?,
        _ => return Err("unknown key".to_owned()),
    }
    Ok(())
}

/// One of `allowed`, case-insensitively; returns the canonical spelling.
fn word(v: &RawValue, allowed: &'static [&'static str]) -> Result<&'static str, String> {
    let s = v.to_string_value()?;
    let lower = s.trim().to_ascii_lowercase();
    allowed
        .iter()
        .copied()
        .find(|w| *w == lower)
        .ok_or_else(|| format!("expected one of {}, got {s:?}", allowed.join("|")))
}

/// `host:port`, `[v6]:port`, `:port` or a bare port (then the host is empty).
pub fn host_port(v: &RawValue) -> Result<HostPort, String> {
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("invalid port {p:?}"))
    };
    match v {
        RawValue::Int(_) => Ok(HostPort {
            host: String::new(),
            port: v.to_int_in(0, i64::from(u16::MAX))?,
        }),
        RawValue::Str(s) => {
            let s = s.trim();
            if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
                return Ok(HostPort {
                    host: String::new(),
                    port: port(s)?,
                });
            }
            let (host, p) = s
                .rsplit_once(':')
                .ok_or_else(|| format!("expected host:port, got {s:?}"))?;
            let host = match host.strip_prefix('[') {
                Some(inner) => inner
                    .strip_suffix(']')
                    .ok_or_else(|| format!("unbalanced brackets in {s:?}"))?,
                None if host.contains(':') => {
                    return Err(format!("IPv6 hosts need brackets: [{host}]:{p}"))
                }
                None => host,
            };
            Ok(HostPort {
                host: host.to_owned(),
                port: port(p)?,
            })
        }
        _ => Err("expected host:port".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: Kind) -> RawValue {
        match kind {
            Kind::Str => RawValue::Str("abc".into()),
            Kind::Path => RawValue::Str("/x/y".into()),
            Kind::Bool => RawValue::Bool(true),
            Kind::Int => RawValue::Int(3),
            Kind::Duration => RawValue::Str("2s".into()),
            Kind::List => RawValue::List(vec![RawValue::Str("a".into())]),
            Kind::HostPort => RawValue::Str("127.0.0.1:1234".into()),
            Kind::Enum(words) => RawValue::Str(words[0].to_uppercase()),
        }
    }

    #[test]
    fn every_listed_key_applies() {
        let mut c = Config::default();
        for (key, kind) in KEYS {
            assert_eq!(*key, key.to_ascii_lowercase());
            apply(&mut c, key, &sample(*kind)).unwrap_or_else(|e| panic!("{key}: {e}"));
        }
        assert!(apply(&mut c, "no.such.key", &RawValue::Int(1)).is_err());
        assert!(!is_known("nats"));
        assert!(is_known("nats.embedded"));
    }

    #[test]
    fn every_key_rejects_a_nested_value() {
        let mut c = Config::default();
        for (key, _) in KEYS {
            assert!(apply(&mut c, key, &RawValue::Nested).is_err(), "{key}");
        }
    }

    #[test]
    fn host_ports() {
        let hp = |s: &str| host_port(&RawValue::Str(s.into()));
        assert_eq!(
            hp("0.0.0.0:9292"),
            Ok(HostPort {
                host: "0.0.0.0".into(),
                port: 9292
            })
        );
        assert_eq!(
            hp(":9293").map(|h| (h.host, h.port)),
            Ok((String::new(), 9293))
        );
        assert_eq!(hp("9294").map(|h| h.port), Ok(9294));
        assert_eq!(hp("[::1]:9295").map(|h| h.host), Ok("::1".to_owned()));
        assert!(hp("::1:9295").is_err());
        assert!(hp("host").is_err());
        assert!(hp("host:99999").is_err());
        assert_eq!(host_port(&RawValue::Int(80)).map(|h| h.port), Ok(80));
    }
}
