//! Settings of the embedded broker, and reading them from a nats-server style config file.
//!
//! Honoured keys (case-insensitive, top level): `host` (alias `net`), `port`, `listen`
//! (`host:port`, `:port` or a bare port), `max_payload`, `max_control_line`, `max_pending`,
//! `write_deadline` (Go duration, or an integer number of seconds as in nats-server),
//! `server_name`. Every other key (clustering, auth, JetStream, monitoring, ...) is ignored with
//! a warning and listed in [`EmbeddedNatsConfig::ignored_keys`]: the embedded broker is a
//! single-node, no-auth core-NATS server.
//!
//! Invariants: a config that passed [`EmbeddedNatsConfig::validate`] has a positive
//! `max_payload` no larger than [`MAX_PAYLOAD_LIMIT`] and no larger than `max_pending`, a
//! `max_control_line` between [`MIN_CONTROL_LINE`] and [`MAX_CONTROL_LINE_LIMIT`], and a
//! positive `write_deadline`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::conf::{self, ConfError, ConfValue};
use crate::config::duration;

/// nats-server's default client port.
pub const DEFAULT_PORT: u16 = 4222;
/// nats-server's default `max_payload` (1 MiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;
/// nats-server's hard upper bound for `max_payload` (64 MiB).
pub const MAX_PAYLOAD_LIMIT: usize = 64 << 20;
/// nats-server's default `max_control_line`.
pub const DEFAULT_MAX_CONTROL_LINE: usize = 4096;
/// Smallest `max_control_line` we accept (a SUB with a short subject must fit).
pub const MIN_CONTROL_LINE: usize = 128;
/// Largest `max_control_line` we accept.
pub const MAX_CONTROL_LINE_LIMIT: usize = 1 << 20;
/// nats-server's default per-client `max_pending` (64 MiB).
pub const DEFAULT_MAX_PENDING: usize = 64 << 20;
/// nats-server's default `write_deadline`.
pub const DEFAULT_WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// Errors from configuring or starting the embedded broker.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedNatsError {
    /// The config file could not be read.
    #[error("cannot read embedded NATS config {path}: {source}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid nats-server syntax.
    #[error("embedded NATS config {path}: {source}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Where and why.
        source: ConfError,
    },
    /// A setting has a bad value.
    #[error("embedded NATS setting `{key}`: {reason}")]
    InvalidValue {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// Binding the listener failed.
    #[error("embedded NATS cannot listen on {addr}: {source}")]
    Bind {
        /// The address tried.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Settings of the embedded broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedNatsConfig {
    /// Interface to bind (default `127.0.0.1`: the embedded broker is for this machine).
    pub host: String,
    /// Port to bind; 0 picks a free one.
    pub port: u16,
    /// Largest message (headers plus body) a client may publish.
    pub max_payload: usize,
    /// Longest control line a client may send.
    pub max_control_line: usize,
    /// Unwritten bytes a client may have queued before it is cut off as a slow consumer.
    pub max_pending: usize,
    /// How long one write to a client may block before it is cut off as a slow consumer.
    pub write_deadline: Duration,
    /// Name reported in INFO (defaults to the server id).
    pub server_name: Option<String>,
    /// Keys of the config file that were not applied.
    pub ignored_keys: Vec<String>,
}

impl Default for EmbeddedNatsConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: DEFAULT_PORT,
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_control_line: DEFAULT_MAX_CONTROL_LINE,
            max_pending: DEFAULT_MAX_PENDING,
            write_deadline: DEFAULT_WRITE_DEADLINE,
            server_name: None,
            ignored_keys: Vec::new(),
        }
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> EmbeddedNatsError {
    EmbeddedNatsError::InvalidValue {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

impl EmbeddedNatsConfig {
    /// Defaults on loopback with an ephemeral port: what tests want.
    pub fn ephemeral() -> Self {
        Self {
            port: 0,
            ..Self::default()
        }
    }

    /// Reads a nats-server style config file over the defaults.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, EmbeddedNatsError> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|source| EmbeddedNatsError::ReadConfig {
                path: path.to_owned(),
                source,
            })?;
        Self::from_conf_str(&text).map_err(|e| match e {
            ConfOrValue::Syntax(source) => EmbeddedNatsError::Syntax {
                path: path.to_owned(),
                source,
            },
            ConfOrValue::Value(e) => e,
        })
    }

    /// Parses config text (see [`EmbeddedNatsConfig::from_file`]).
    pub fn from_str_conf(text: &str) -> Result<Self, EmbeddedNatsError> {
        Self::from_conf_str(text).map_err(|e| match e {
            ConfOrValue::Syntax(source) => EmbeddedNatsError::Syntax {
                path: PathBuf::from("<string>"),
                source,
            },
            ConfOrValue::Value(e) => e,
        })
    }

    fn from_conf_str(text: &str) -> Result<Self, ConfOrValue> {
        let entries = conf::parse(text).map_err(ConfOrValue::Syntax)?;
        let mut cfg = Self::default();
        for (key, value) in entries {
            cfg.apply(&key, &value).map_err(ConfOrValue::Value)?;
        }
        cfg.validate().map_err(ConfOrValue::Value)?;
        Ok(cfg)
    }

    fn apply(&mut self, key: &str, value: &ConfValue) -> Result<(), EmbeddedNatsError> {
        let lower = key.to_ascii_lowercase();
        match lower.as_str() {
            "host" | "net" => self.host = string(key, value)?,
            "port" => self.port = port(key, value)?,
            "listen" => self.apply_listen(key, value)?,
            "max_payload" => self.max_payload = size(key, value)?,
            "max_control_line" => self.max_control_line = size(key, value)?,
            "max_pending" => self.max_pending = size(key, value)?,
            "write_deadline" => {
                self.write_deadline = match value {
                    ConfValue::Integer(secs) => {
                        let secs = u64::try_from(*secs)
                            .map_err(|_| invalid(key, "must not be negative"))?;
                        Duration::from_secs(secs)
                    }
                    ConfValue::String(s) => {
                        duration::parse(s).map_err(|e| invalid(key, e.to_string()))?
                    }
                    _ => return Err(invalid(key, "expected a duration such as \"10s\"")),
                }
            }
            "server_name" => self.server_name = Some(string(key, value)?),
            _ => {
                tracing::warn!(key, "embedded NATS: ignoring unsupported config key");
                self.ignored_keys.push(key.to_owned());
            }
        }
        Ok(())
    }

    fn apply_listen(&mut self, key: &str, value: &ConfValue) -> Result<(), EmbeddedNatsError> {
        match value {
            ConfValue::Integer(_) => self.port = port(key, value)?,
            ConfValue::String(s) => {
                let (host, p) = s
                    .rsplit_once(':')
                    .ok_or_else(|| invalid(key, format!("expected host:port, got {s:?}")))?;
                let p = p
                    .parse::<u16>()
                    .map_err(|_| invalid(key, format!("bad port in {s:?}")))?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if !host.is_empty() {
                    self.host = host.to_owned();
                }
                self.port = p;
            }
            _ => return Err(invalid(key, "expected host:port")),
        }
        Ok(())
    }

    /// Checks the invariants listed in the module documentation.
    pub fn validate(&self) -> Result<(), EmbeddedNatsError> {
        if self.host.is_empty() {
            return Err(invalid("host", "must not be empty"));
        }
        if self.max_payload == 0 || self.max_payload > MAX_PAYLOAD_LIMIT {
            return Err(invalid(
                "max_payload",
                format!("must be between 1 and {MAX_PAYLOAD_LIMIT} bytes"),
            ));
        }
        if self.max_payload > self.max_pending {
            return Err(invalid("max_payload", "must not exceed max_pending"));
        }
        if !(MIN_CONTROL_LINE..=MAX_CONTROL_LINE_LIMIT).contains(&self.max_control_line) {
            return Err(invalid(
                "max_control_line",
                format!("must be between {MIN_CONTROL_LINE} and {MAX_CONTROL_LINE_LIMIT}"),
            ));
        }
        if self.write_deadline.is_zero() {
            return Err(invalid("write_deadline", "must be positive"));
        }
        Ok(())
    }
}

enum ConfOrValue {
    Syntax(ConfError),
    Value(EmbeddedNatsError),
}

fn string(key: &str, value: &ConfValue) -> Result<String, EmbeddedNatsError> {
    match value {
        ConfValue::String(s) => Ok(s.clone()),
        _ => Err(invalid(key, "expected a string")),
    }
}

fn port(key: &str, value: &ConfValue) -> Result<u16, EmbeddedNatsError> {
    match value {
        // nats-server uses -1 for "pick a random port".
        ConfValue::Integer(-1) => Ok(0),
        ConfValue::Integer(n) => u16::try_from(*n).map_err(|_| invalid(key, "not a port number")),
        ConfValue::String(s) => s.parse().map_err(|_| invalid(key, "not a port number")),
        _ => Err(invalid(key, "expected a port number")),
    }
}

fn size(key: &str, value: &ConfValue) -> Result<usize, EmbeddedNatsError> {
    match value {
        ConfValue::Integer(n) => {
            usize::try_from(*n).map_err(|_| invalid(key, "must not be negative"))
        }
        _ => Err(invalid(key, "expected a size such as 1MB or 65536")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_nats_servers() {
        let c = EmbeddedNatsConfig::default();
        assert_eq!(c.host, "127.0.0.1");
        assert_eq!(c.port, 4222);
        assert_eq!(c.max_payload, 1 << 20);
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn reads_keys() {
        let c = EmbeddedNatsConfig::from_str_conf(
            "listen: 127.0.0.2:5222\nmax_payload: 2MB\nwrite_deadline: \"2s\"\n\
             server_name = edge\nmax_control_line 1KB\njetstream { max_mem: 1G }\ndebug: true",
        )
        .expect("valid");
        assert_eq!(c.host, "127.0.0.2");
        assert_eq!(c.port, 5222);
        assert_eq!(c.max_payload, 2 << 20);
        assert_eq!(c.max_control_line, 1024);
        assert_eq!(c.write_deadline, Duration::from_secs(2));
        assert_eq!(c.server_name.as_deref(), Some("edge"));
        assert_eq!(
            c.ignored_keys,
            vec!["jetstream".to_owned(), "debug".to_owned()]
        );

        let c = EmbeddedNatsConfig::from_str_conf("HOST: 0.0.0.0\nPort: -1\nwrite_deadline: 3")
            .expect("valid");
        assert_eq!((c.host.as_str(), c.port), ("0.0.0.0", 0));
        assert_eq!(c.write_deadline, Duration::from_secs(3));
        let c = EmbeddedNatsConfig::from_str_conf("listen: \":4333\"").expect("valid");
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 4333));
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("port: 70000", "port"),
            ("max_payload: -1", "max_payload"),
            ("max_payload: 100MB", "max_payload"),
            ("listen: nohost", "listen"),
            ("write_deadline: 5x", "write_deadline"),
            ("max_control_line: 10", "max_control_line"),
        ] {
            match EmbeddedNatsConfig::from_str_conf(text) {
                Err(EmbeddedNatsError::InvalidValue { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            EmbeddedNatsConfig::from_str_conf("port: {"),
            Err(EmbeddedNatsError::Syntax { .. })
        ));
    }

    #[test]
    fn from_file_reads_and_reports_missing_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nats.conf");
        std::fs::write(&path, "port: 4999 # c\n").expect("write");
        let c = EmbeddedNatsConfig::from_file(&path).expect("valid");
        assert_eq!(c.port, 4999);
        assert!(matches!(
            EmbeddedNatsConfig::from_file(dir.path().join("missing.conf")),
            Err(EmbeddedNatsError::ReadConfig { .. })
        ));
    }
}
