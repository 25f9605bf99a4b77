//! Server configuration: Liftbridge's flags and YAML keys, with Liftbridge's defaults.
//!
//! # Sources and precedence
//! defaults < YAML config file (`--config`) < `LIFTBRIDGE_*` environment < command-line flags.
//! Every source is turned into dotted-key [`Entry`]s first ([`mod@file`], [`mod@env`], [`flags`]),
//! then all entries are applied in that order onto [`Config::default`] by one key table
//! ([`keys`]), derived defaults are resolved and cross-key rules checked ([`validate`]).
//!
//! # Keys
//! The keys, types and defaults are Liftbridge's (spec §12); [`keys::KEYS`] lists them, and
//! each field of [`Config`] names its key and default. A file may write keys flat
//! (`nats.servers: [...]`), nested (`nats: {servers: [...]}`) or mixed. Durations use Go
//! syntax (`5m`, `168h`, `1.5s`, `100ms`); a bare `0` is accepted, other unit-less numbers are
//! rejected (Go would silently read them as nanoseconds).
//!
//! Drawbridge's own keys (not in Liftbridge; a Liftbridge config never sets them):
//!
//! | key | values | default | meaning |
//! |---|---|---|---|
//! | `storage.sync.policy` | `always`, `interval`, `never` | `always` | when partition logs are fsynced: before every ack (group commit), or — acknowledging once a write is in the page cache, so a machine crash may lose the last interval — every `storage.sync.interval`, or never explicitly (`drawbridge_raft::LogSyncPolicy`) |
//! | `storage.sync.interval` | duration | `1s` | the period for `interval` |
//! | `logging.format` | `text`, `json` | `text` | log line format |
//! | `metrics.listen` | `host:port` | unset (off) | HTTP endpoint for `/metrics`, `/healthz`, `/readyz` |
//!
//! Accepted for compatibility but without effect: `telemetry.*` (Drawbridge sends no
//! telemetry).
//!
//! # Errors
//! Unknown keys in the file are rejected, all of them named in one error
//! ([`ConfigError::UnknownKeys`]); a bad value names its key and the file, variable or flag it
//! came from ([`ConfigError::InvalidValue`]). Unknown `LIFTBRIDGE_*` variables are ignored with
//! a warning, since the environment is shared with other software.
//!
//! Invariant: [`Config::load`] returns either an error or a fully resolved, validated
//! configuration.

pub mod duration;
pub mod env;
pub mod error;
pub mod file;
pub mod flags;
pub mod keys;
pub mod model;
pub mod validate;
pub mod value;

#[cfg(test)]
mod tests;

pub use error::ConfigError;
pub use flags::Flags;
pub use model::{
    AckPolicy, ActivityConfig, ClusteringConfig, Config, CursorsConfig, GroupsConfig, HostPort,
    LimitsConfig, LogFormat, LogLevel, LoggingConfig, MetricsConfig, NatsConfig, StorageConfig,
    StreamsConfig, SyncPolicy, TelemetryConfig, TlsConfig,
};
pub use value::{Entry, RawValue, Source};

impl Config {
    /// Loads the configuration from parsed `flags` (which may name a config file) and the
    /// given environment variables (normally [`env::process_vars`]).
    pub fn load(
        flags: &Flags,
        env_vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut entries = match &flags.config {
            Some(path) => file::read(path)?,
            None => Vec::new(),
        };
        let (env_entries, _ignored) = env::entries(env_vars);
        entries.extend(env_entries);
        entries.extend(flags.entries());
        Self::from_entries(entries)
    }

    /// Applies `entries` in order (later wins) onto the defaults, then resolves and validates.
    pub fn from_entries(entries: Vec<Entry>) -> Result<Config, ConfigError> {
        let unknown: Vec<(String, Source)> = entries
            .iter()
            .filter(|e| !keys::is_known(&e.key))
            .map(|e| (e.key.clone(), e.source.clone()))
            .collect();
        if !unknown.is_empty() {
            return Err(ConfigError::UnknownKeys { keys: unknown });
        }
        let mut config = Config::default();
        let mut origins = validate::Origins::new();
        for entry in entries {
            if entry.value == RawValue::Null {
                continue;
            }
            keys::apply(&mut config, &entry.key, &entry.value).map_err(|reason| {
                ConfigError::InvalidValue {
                    key: entry.key.clone(),
                    origin: entry.source.clone(),
                    reason,
                }
            })?;
            origins.insert(entry.key, entry.source);
        }
        validate::finish(&mut config, &origins);
        validate::validate(&config, &origins)?;
        Ok(config)
    }
}
