//! Configuration errors. Every variant names what to fix: the file, the key, the environment
//! variable or the flag.

use std::path::PathBuf;

use super::value::Source;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid YAML.
    #[error("config file {path} is not valid YAML: {source}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// Parser error (with line and column).
        source: serde_norway::Error,
    },
    /// The config file is YAML but not a map of settings.
    #[error("config file {path}: {reason}")]
    Structure {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Keys that are not configuration keys.
    #[error("unknown configuration key(s): {}", list_unknown(.keys))]
    UnknownKeys {
        /// Each unknown key and where it was found.
        keys: Vec<(String, Source)>,
    },
    /// The same key appears twice in one file (e.g. flat `nats.servers` and nested `nats:`).
    #[error("configuration key `{key}` is set more than once in {origin}")]
    DuplicateKey {
        /// The key.
        key: String,
        /// The file.
        origin: Source,
    },
    /// A value that does not fit its key.
    #[error("invalid value for `{key}` (from {origin}): {reason}")]
    InvalidValue {
        /// The key.
        key: String,
        /// Where the offending value came from.
        origin: Source,
        /// What is wrong.
        reason: String,
    },
    /// A `LIFTBRIDGE_*` environment variable whose value is not UTF-8.
    #[error("environment variable {var} is not valid UTF-8")]
    EnvNotUnicode {
        /// The variable (lossily decoded).
        var: String,
    },
}

fn list_unknown(keys: &[(String, Source)]) -> String {
    keys.iter()
        .map(|(k, s)| format!("`{k}` (in {s})"))
        .collect::<Vec<_>>()
        .join(", ")
}
