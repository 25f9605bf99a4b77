//! Derived defaults and cross-key checks, run once after every source has been applied.
//!
//! Derived defaults (only when the key was not set by any source):
//! 1. `data.dir` = `/tmp/liftbridge/<clustering.namespace>`;
//! 2. `streams.segment.max.age` = `streams.retention.max.age`;
//! 3. `streams.compact.max.goroutines` 0 → 10 and `clustering.raft.snapshot.threshold` 0 → 8192
//!    (Liftbridge's fallbacks, applied whatever the source);
//! 4. `nats.embedded.config` set → `nats.embedded` = true.
//!
//! Checks: paired settings come in pairs (TLS cert and key), features have what they need
//! (client auth needs TLS, authz needs model and policy), names used inside NATS subjects are
//! valid subject tokens, and a few mutually exclusive settings are not combined. Each error
//! names the key and the source of its value.

use std::collections::HashMap;

use super::error::ConfigError;
use super::model::{
    default_data_dir, Config, SyncPolicy, DEFAULT_COMPACT_MAX_GOROUTINES,
    DEFAULT_RAFT_SNAPSHOT_THRESHOLD,
};
use super::value::Source;

/// Where each key that some source set got its final value.
pub type Origins = HashMap<String, Source>;

/// Resolves the derived defaults listed in the module documentation.
pub fn finish(c: &mut Config, origins: &Origins) {
    if !origins.contains_key("data.dir") {
        c.data_dir = default_data_dir(&c.clustering.namespace);
    }
    if !origins.contains_key("streams.segment.max.age") {
        c.streams.segment_max_age = c.streams.retention_max_age;
    }
    if c.streams.compact_max_goroutines == 0 {
        c.streams.compact_max_goroutines = DEFAULT_COMPACT_MAX_GOROUTINES;
    }
    if c.clustering.raft_snapshot_threshold == 0 {
        c.clustering.raft_snapshot_threshold = DEFAULT_RAFT_SNAPSHOT_THRESHOLD;
    }
    if c.nats.embedded_config.is_some() {
        c.nats.embedded = true;
    }
}

/// Runs the cross-key checks.
pub fn validate(c: &Config, origins: &Origins) -> Result<(), ConfigError> {
    let fail = |key: &str, reason: String| -> Result<(), ConfigError> {
        Err(ConfigError::InvalidValue {
            key: key.to_owned(),
            origin: origins.get(key).cloned().unwrap_or(Source::Default),
            reason,
        })
    };
    pair(
        c.tls.cert.is_some(),
        c.tls.key.is_some(),
        "tls.cert",
        "tls.key",
        &fail,
    )?;
    pair(
        c.nats.tls_cert.is_some(),
        c.nats.tls_key.is_some(),
        "nats.tls.cert",
        "nats.tls.key",
        &fail,
    )?;
    if c.tls.client_auth_enabled && c.tls.cert.is_none() {
        fail(
            "tls.client.auth.enabled",
            "client authentication needs TLS: set tls.cert and tls.key".to_owned(),
        )?;
    }
    if c.tls.client_authz_enabled {
        if !c.tls.client_auth_enabled {
            fail(
                "tls.client.authz.enabled",
                "authorization needs tls.client.auth.enabled".to_owned(),
            )?;
        }
        if c.tls.client_authz_model.is_none() || c.tls.client_authz_policy.is_none() {
            fail(
                "tls.client.authz.enabled",
                "authorization needs tls.client.authz.model and tls.client.authz.policy".to_owned(),
            )?;
        }
    }
    if !c.nats.embedded && c.nats.servers.is_empty() {
        fail(
            "nats.servers",
            "no NATS server given (set nats.servers or nats.embedded)".to_owned(),
        )?;
    }
    if let Err(reason) = subject_tokens(&c.clustering.namespace, true) {
        fail("clustering.namespace", reason)?;
    }
    if let Some(id) = &c.clustering.server_id {
        if let Err(reason) = subject_tokens(id, false) {
            fail("clustering.server.id", reason)?;
        }
    }
    if c.clustering.raft_bootstrap_seed && !c.clustering.raft_bootstrap_peers.is_empty() {
        fail(
            "clustering.raft.bootstrap.peers",
            "cannot be combined with clustering.raft.bootstrap.seed".to_owned(),
        )?;
    }
    if c.storage.sync_policy == SyncPolicy::Interval && c.storage.sync_interval.is_zero() {
        fail(
            "storage.sync.interval",
            "must be positive when storage.sync.policy is interval".to_owned(),
        )?;
    }
    Ok(())
}

fn pair(
    a: bool,
    b: bool,
    key_a: &str,
    key_b: &str,
    fail: &impl Fn(&str, String) -> Result<(), ConfigError>,
) -> Result<(), ConfigError> {
    match (a, b) {
        (true, false) => fail(key_a, format!("is set but {key_b} is not")),
        (false, true) => fail(key_b, format!("is set but {key_a} is not")),
        _ => Ok(()),
    }
}

/// Names that end up inside NATS subjects: no whitespace, no wildcards, and (when `dots` is
/// false) a single token.
fn subject_tokens(s: &str, dots: bool) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if s.chars().any(|c| c.is_whitespace() || c == '*' || c == '>') {
        return Err(format!(
            "{s:?} may not contain whitespace, `*` or `>` (it is used in NATS subjects)"
        ));
    }
    if !dots && s.contains('.') {
        return Err(format!(
            "{s:?} may not contain `.` (it is used as one NATS subject token)"
        ));
    }
    if s.split('.').any(str::is_empty) {
        return Err(format!("{s:?} has an empty NATS subject token"));
    }
    Ok(())
}
