//! Untyped configuration values, where they came from, and their conversions to typed values.
//!
//! Every source (YAML file, environment, flags) is first turned into [`Entry`]s: a dotted,
//! lower-case key, a [`RawValue`] and the [`Source`] it came from. Conversions are lenient in
//! the way viper (Liftbridge's config library) is: a string from the environment converts to a
//! bool, an integer, a duration or a list. Every conversion error is a plain reason string; the
//! caller wraps it with the key and the source.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::duration;

/// Where a configuration value came from, for error messages and introspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Built-in default.
    Default,
    /// A YAML config file.
    File(PathBuf),
    /// An environment variable (its name).
    Env(String),
    /// A command-line flag (its long name, with dashes).
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "the defaults"),
            Source::File(p) => write!(f, "config file {}", p.display()),
            Source::Env(v) => write!(f, "environment variable {v}"),
            Source::Flag(name) => write!(f, "flag {name}"),
        }
    }
}

/// An untyped value.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    /// YAML `null` / an empty value: leaves the setting at its previous value.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A sequence.
    List(Vec<RawValue>),
    /// A nested structure where a scalar was expected (e.g. a map inside a list).
    Nested,
}

/// One setting from one source.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Dotted lower-case key, e.g. `nats.servers`.
    pub key: String,
    /// The value.
    pub value: RawValue,
    /// Where it came from.
    pub source: Source,
}

impl RawValue {
    fn describe(&self) -> &'static str {
        match self {
            RawValue::Null => "null",
            RawValue::Bool(_) => "a boolean",
            RawValue::Int(_) => "an integer",
            RawValue::Float(_) => "a float",
            RawValue::Str(_) => "a string",
            RawValue::List(_) => "a list",
            RawValue::Nested => "a nested map",
        }
    }

    /// A string (scalars are converted to their text, as viper does).
    pub fn to_string_value(&self) -> Result<String, String> {
        match self {
            RawValue::Str(s) => Ok(s.clone()),
            RawValue::Int(i) => Ok(i.to_string()),
            RawValue::Float(f) => Ok(f.to_string()),
            RawValue::Bool(b) => Ok(b.to_string()),
            other => Err(format!("expected a string, got {}", other.describe())),
        }
    }

    /// A non-empty string.
    pub fn to_nonempty_string(&self) -> Result<String, String> {
        let s = self.to_string_value()?;
        if s.trim().is_empty() {
            return Err("must not be empty".to_owned());
        }
        Ok(s)
    }

    /// A filesystem path (non-empty).
    pub fn to_path(&self) -> Result<PathBuf, String> {
        self.to_nonempty_string().map(PathBuf::from)
    }

    /// A boolean: YAML booleans, or Go's `strconv.ParseBool` spellings plus yes/no/on/off.
    pub fn to_bool(&self) -> Result<bool, String> {
        match self {
            RawValue::Bool(b) => Ok(*b),
            RawValue::Int(0) => Ok(false),
            RawValue::Int(1) => Ok(true),
            RawValue::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
                "1" | "t" | "true" | "yes" | "y" | "on" => Ok(true),
                "0" | "f" | "false" | "no" | "n" | "off" => Ok(false),
                _ => Err(format!("expected true or false, got {s:?}")),
            },
            other => Err(format!("expected true or false, got {}", other.describe())),
        }
    }

    /// A signed integer.
    pub fn to_i64(&self) -> Result<i64, String> {
        match self {
            RawValue::Int(i) => Ok(*i),
            RawValue::Str(s) => s
                .trim()
                .parse()
                .map_err(|_| format!("expected an integer, got {s:?}")),
            other => Err(format!("expected an integer, got {}", other.describe())),
        }
    }

    /// An integer in `min..=max`.
    pub fn to_int_in<T: TryFrom<i64>>(&self, min: i64, max: i64) -> Result<T, String> {
        let i = self.to_i64()?;
        if i < min || i > max {
            return Err(format!("{i} is out of range {min}..={max}"));
        }
        T::try_from(i).map_err(|_| format!("{i} is out of range {min}..={max}"))
    }

    /// A duration in Go syntax (`5m`, `1.5s`). A bare `0` is accepted; other bare numbers are
    /// rejected as ambiguous (Go would read them as nanoseconds).
    pub fn to_duration(&self) -> Result<Duration, String> {
        match self {
            RawValue::Int(0) => Ok(Duration::ZERO),
            RawValue::Int(i) => Err(format!(
                "{i} has no unit; write a Go duration such as {i}s or {i}ms"
            )),
            RawValue::Str(s) => duration::parse(s).map_err(|e| e.to_string()),
            other => Err(format!(
                "expected a duration such as 5m, got {}",
                other.describe()
            )),
        }
    }

    /// A list of strings: a YAML sequence of scalars, or a string split on commas and
    /// whitespace (the form environment variables and flags use). Empty items are dropped.
    pub fn to_string_list(&self) -> Result<Vec<String>, String> {
        match self {
            RawValue::List(items) => items
                .iter()
                .map(|i| match i {
                    RawValue::List(_) | RawValue::Nested | RawValue::Null => {
                        Err(format!("list items must be scalars, got {}", i.describe()))
                    }
                    scalar => scalar.to_string_value().map(|s| s.trim().to_owned()),
                })
                .filter(|r| r.as_ref().map_or(true, |s| !s.is_empty()))
                .collect(),
            RawValue::Str(s) => Ok(s
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect()),
            other => Err(format!("expected a list, got {}", other.describe())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(RawValue::Str("TRUE".into()).to_bool(), Ok(true));
        assert_eq!(RawValue::Str("off".into()).to_bool(), Ok(false));
        assert!(RawValue::Str("maybe".into()).to_bool().is_err());
        assert_eq!(RawValue::Str(" 42 ".into()).to_i64(), Ok(42));
        assert!(RawValue::Float(1.5).to_i64().is_err());
        assert_eq!(RawValue::Int(70).to_int_in::<u16>(0, 65535), Ok(70));
        assert!(RawValue::Int(70000).to_int_in::<u16>(0, 65535).is_err());
        assert_eq!(RawValue::Int(0).to_duration(), Ok(Duration::ZERO));
        assert!(RawValue::Int(5).to_duration().is_err());
        assert_eq!(
            RawValue::Str("1.5s".into()).to_duration(),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(
            RawValue::Str("a, b ,,c".into()).to_string_list(),
            Ok(vec!["a".to_owned(), "b".to_owned(), "c".to_owned()])
        );
        assert_eq!(
            RawValue::List(vec![RawValue::Str("x".into()), RawValue::Int(3)]).to_string_list(),
            Ok(vec!["x".to_owned(), "3".to_owned()])
        );
        assert!(RawValue::List(vec![RawValue::Nested])
            .to_string_list()
            .is_err());
        assert_eq!(RawValue::Int(9292).to_string_value(), Ok("9292".to_owned()));
        assert!(RawValue::Str("  ".into()).to_nonempty_string().is_err());
    }
}
