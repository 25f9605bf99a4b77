//! `LIFTBRIDGE_*` environment overrides.
//!
//! `LIFTBRIDGE_<KEY>` sets `<key>` with `_` read as `.` and lower-cased: `LIFTBRIDGE_PORT` →
//! `port`, `LIFTBRIDGE_LOGGING_LEVEL` → `logging.level`, `LIFTBRIDGE_CLUSTERING_SERVER_ID` →
//! `clustering.server.id`. No configuration key contains `_`, so the mapping is unambiguous.
//! Lists are comma- or space-separated (`LIFTBRIDGE_NATS_SERVERS=nats://a:4222,nats://b:4222`).
//!
//! Differences from Liftbridge (which uses viper's AutomaticEnv only together with `--config`
//! and cannot reach dotted keys): overrides apply with or without a config file, and dotted keys
//! work. Invariants: an empty variable is ignored (as viper does); `LIFTBRIDGE_ENCRYPTION_KEY` is
//! a secret read elsewhere, never a key; any other `LIFTBRIDGE_*` variable that names no key is
//! ignored with a warning (the environment is shared with other software, so it is not an
//! error), and reported to the caller.

use std::ffi::OsString;

use super::error::ConfigError;
use super::keys;
use super::value::{Entry, RawValue, Source};

/// Prefix of configuration variables.
pub const PREFIX: &str = "LIFTBRIDGE_";
/// Liftbridge's encryption key variable (16 or 32 raw bytes), not a configuration key.
pub const ENCRYPTION_KEY_VAR: &str = "LIFTBRIDGE_ENCRYPTION_KEY";

/// Entries from the given variables, and the names of `LIFTBRIDGE_*` variables that were
/// ignored because they name no key.
pub fn entries(vars: impl IntoIterator<Item = (String, String)>) -> (Vec<Entry>, Vec<String>) {
    let mut out = Vec::new();
    let mut ignored = Vec::new();
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        if name == ENCRYPTION_KEY_VAR || value.is_empty() {
            continue;
        }
        let key = rest.to_ascii_lowercase().replace('_', ".");
        if !keys::is_known(&key) {
            tracing::warn!(var = %name, "ignoring environment variable: it names no configuration key");
            ignored.push(name);
            continue;
        }
        out.push(Entry {
            key,
            value: RawValue::Str(value),
            source: Source::Env(name),
        });
    }
    (out, ignored)
}

/// This process's environment, as UTF-8 pairs. Variables that are not ours and not UTF-8 are
/// skipped; a `LIFTBRIDGE_*` variable that is not UTF-8 is an error.
pub fn process_vars() -> Result<Vec<(String, String)>, ConfigError> {
    process_vars_from(std::env::vars_os())
}

fn process_vars_from(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (name, value) in vars {
        let name_lossy = name.to_string_lossy();
        if !name_lossy.starts_with(PREFIX) {
            continue;
        }
        match (name.into_string(), value.into_string()) {
            (Ok(n), Ok(v)) => out.push((n, v)),
            (Ok(n), Err(_)) if n == ENCRYPTION_KEY_VAR => {}
            (n, _) => {
                return Err(ConfigError::EnvNotUnicode {
                    var: n.unwrap_or_else(|os| os.to_string_lossy().into_owned()),
                })
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn maps_names_to_dotted_keys() {
        let (e, ignored) = entries(pairs(&[
            ("LIFTBRIDGE_LOGGING_LEVEL", "debug"),
            ("LIFTBRIDGE_CLUSTERING_SERVER_ID", "s1"),
            ("LIFTBRIDGE_PORT", "9300"),
            ("LIFTBRIDGE_ENCRYPTION_KEY", "0123456789abcdef"),
            ("LIFTBRIDGE_TLS_KEY", ""),
            ("LIFTBRIDGE_LOGING_LEVEL", "typo"),
            ("PATH", "/bin"),
        ]));
        let keys: Vec<_> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["logging.level", "clustering.server.id", "port"]);
        assert_eq!(e[0].source, Source::Env("LIFTBRIDGE_LOGGING_LEVEL".into()));
        assert_eq!(ignored, vec!["LIFTBRIDGE_LOGING_LEVEL".to_owned()]);
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_values_of_ours_are_errors() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![0xff, 0xfe]);
        let ok = process_vars_from(vec![
            (OsString::from("OTHER"), bad.clone()),
            (OsString::from("LIFTBRIDGE_PORT"), OsString::from("1")),
        ])
        .expect("others' variables are skipped");
        assert_eq!(ok, pairs(&[("LIFTBRIDGE_PORT", "1")]));
        assert!(matches!(
            process_vars_from(vec![(OsString::from("LIFTBRIDGE_HOST"), bad)]),
            Err(ConfigError::EnvNotUnicode { .. })
        ));
    }
}
