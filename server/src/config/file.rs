//! The YAML config file: parsed into a generic YAML value, then flattened to dotted keys.
//!
//! Flat keys (`nats.servers: [...]`), nested maps (`nats: {servers: [...]}`) and any mix
//! (`clustering: {raft.bootstrap.seed: true}`) all flatten to the same dotted key. Keys are
//! compared case-insensitively (as viper does). A map value always means "nested keys";
//! sequences and scalars are values.
//!
//! Invariants: the same flattened key twice in one file is an error
//! ([`ConfigError::DuplicateKey`]), never a silent override; an empty file is an empty
//! configuration; a top level that is not a map is an error.

use std::collections::HashSet;
use std::path::Path;

use serde_norway::Value;

use super::error::ConfigError;
use super::value::{Entry, RawValue, Source};

/// Reads and flattens the YAML config file at `path`.
pub fn read(path: &Path) -> Result<Vec<Entry>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Flattens YAML `text`; `path` names the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<Vec<Entry>, ConfigError> {
    let doc: Value = serde_norway::from_str(text).map_err(|source| ConfigError::Yaml {
        path: path.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    match doc {
        Value::Null => {}
        Value::Mapping(map) => flatten(&map, "", path, &mut out)?,
        _ => {
            return Err(ConfigError::Structure {
                path: path.to_owned(),
                reason: "the top level must be a map of settings".to_owned(),
            })
        }
    }
    let mut seen = HashSet::new();
    for e in &out {
        if !seen.insert(e.key.as_str()) {
            return Err(ConfigError::DuplicateKey {
                key: e.key.clone(),
                origin: e.source.clone(),
            });
        }
    }
    Ok(out)
}

fn flatten(
    map: &serde_norway::Mapping,
    prefix: &str,
    path: &Path,
    out: &mut Vec<Entry>,
) -> Result<(), ConfigError> {
    for (k, v) in map {
        let name = match k {
            Value::String(s) => s.trim().to_ascii_lowercase(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                return Err(ConfigError::Structure {
                    path: path.to_owned(),
                    reason: format!(
                        "keys must be strings (found a complex key under `{}`)",
                        if prefix.is_empty() {
                            "<top level>"
                        } else {
                            prefix
                        }
                    ),
                })
            }
        };
        let key = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}.{name}")
        };
        match untag(v) {
            Value::Mapping(inner) => flatten(inner, &key, path, out)?,
            leaf => out.push(Entry {
                key,
                value: raw(leaf),
                source: Source::File(path.to_owned()),
            }),
        }
    }
    Ok(())
}

fn untag(v: &Value) -> &Value {
    match v {
        Value::Tagged(t) => untag(&t.value),
        other => other,
    }
}

fn raw(v: &Value) -> RawValue {
    match untag(v) {
        Value::Null => RawValue::Null,
        Value::Bool(b) => RawValue::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => RawValue::Int(i),
            (None, Some(f)) => RawValue::Float(f),
            (None, None) => RawValue::Str(n.to_string()),
        },
        Value::String(s) => RawValue::Str(s.clone()),
        Value::Sequence(items) => RawValue::List(items.iter().map(raw).collect()),
        Value::Mapping(_) | Value::Tagged(_) => RawValue::Nested,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Vec<(String, RawValue)> {
        parse(text, Path::new("t.yaml"))
            .expect("parses")
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect()
    }

    #[test]
    fn flat_nested_and_mixed_agree() {
        let flat =
            keys("nats.servers: [\"nats://a:4222\"]\nclustering.raft.bootstrap.seed: true\n");
        let nested = keys(
            "nats:\n  servers:\n    - nats://a:4222\nclustering:\n  raft:\n    bootstrap:\n      seed: true\n",
        );
        let mixed =
            keys("nats: {servers: [nats://a:4222]}\nclustering: {raft.bootstrap.seed: true}\n");
        assert_eq!(flat, nested);
        assert_eq!(flat, mixed);
        assert_eq!(flat[0].0, "nats.servers");
        assert_eq!(
            flat[1],
            (
                "clustering.raft.bootstrap.seed".to_owned(),
                RawValue::Bool(true)
            )
        );
    }

    #[test]
    fn keys_are_case_insensitive_and_scalars_typed() {
        let k = keys("Logging:\n  LEVEL: debug\nport: 9293\nratio: 1.5\nempty:\n");
        assert_eq!(
            k[0],
            ("logging.level".to_owned(), RawValue::Str("debug".into()))
        );
        assert_eq!(k[1].1, RawValue::Int(9293));
        assert_eq!(k[2].1, RawValue::Float(1.5));
        assert_eq!(k[3].1, RawValue::Null);
    }

    #[test]
    fn structure_errors() {
        assert!(keys("").is_empty());
        assert!(keys("# only a comment\n").is_empty());
        assert!(matches!(
            parse("- a\n- b\n", Path::new("t.yaml")),
            Err(ConfigError::Structure { .. })
        ));
        assert!(matches!(
            parse("a: [\n", Path::new("t.yaml")),
            Err(ConfigError::Yaml { .. })
        ));
        match parse(
            "nats.servers: [a]\nnats:\n  servers: [b]\n",
            Path::new("t.yaml"),
        ) {
            Err(ConfigError::DuplicateKey { key, .. }) => assert_eq!(key, "nats.servers"),
            other => panic!("{other:?}"),
        }
    }
}
