//! Go `time.Duration` syntax, as Liftbridge (and nats-server) configuration files use it.
//!
//! A duration is a sequence of decimal numbers, each with an optional fraction and a required
//! unit: `ns`, `us` (or `µs`/`μs`), `ms`, `s`, `m`, `h`; for example `300ms`, `1.5h`, `2h45m`.
//! `0` needs no unit. Unlike Go we reject a leading sign: configuration durations are never
//! negative.
//!
//! Invariants: [`parse`] never panics, rejects values above `u64::MAX` nanoseconds (Go's own limit
//! is `i64::MAX`; we accept the wider range only because `std::time::Duration` can hold it), and
//! [`fn@format`] produces text that [`parse`] reads back to the same value.

use std::time::Duration;

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Empty text.
    #[error("empty duration")]
    Empty,
    /// A signed duration.
    #[error("durations may not be negative or signed")]
    Signed,
    /// Not `<number><unit>...`.
    #[error("invalid duration {0:?} (expected Go syntax such as 100ms, 1.5s, 5m, 168h)")]
    Syntax(String),
    /// A number without a unit (other than `0`).
    #[error("missing unit in duration {0:?} (use ns, us, ms, s, m or h)")]
    MissingUnit(String),
    /// An unknown unit.
    #[error("unknown unit {unit:?} in duration {text:?}")]
    UnknownUnit {
        /// The unit found.
        unit: String,
        /// The whole text.
        text: String,
    },
    /// Too large.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses a Go duration such as `1h30m` or `1.5s`.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with(['+', '-']) {
        return Err(DurationError::Signed);
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let syntax = || DurationError::Syntax(text.to_owned());
    let overflow = || DurationError::Overflow(text.to_owned());
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let int_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int_part, after_int) = rest.split_at(int_end);
        let (frac_part, after_num) = match after_int.strip_prefix('.') {
            Some(f) => {
                let end = f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len());
                f.split_at(end)
            }
            None => ("", after_int),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(syntax());
        }
        let unit_end = after_num
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after_num.len());
        let (unit, next) = after_num.split_at(unit_end);
        if unit.is_empty() {
            return Err(DurationError::MissingUnit(text.to_owned()));
        }
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(DurationError::UnknownUnit {
                    unit: unit.to_owned(),
                    text: text.to_owned(),
                })
            }
        };
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| overflow())?
        };
        let mut ns = int.checked_mul(unit_ns).ok_or_else(overflow)?;
        // Fraction: like Go, digits beyond nanosecond precision are truncated.
        let mut scale = unit_ns;
        for d in frac_part.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            ns += u128::from(d - b'0') * scale;
        }
        total = total.checked_add(ns).ok_or_else(overflow)?;
        rest = next;
    }
    let total = u64::try_from(total).map_err(|_| overflow())?;
    Ok(Duration::from_nanos(total))
}

/// Formats a duration in Go syntax (`1h30m0s`, `1.5s`, `100ms`, `0s`).
pub fn format(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".to_owned();
    }
    if ns < 1_000 {
        return format!("{ns}ns");
    }
    if ns < 1_000_000 {
        return format!("{}us", trim_fraction(ns, 1_000));
    }
    if ns < 1_000_000_000 {
        return format!("{}ms", trim_fraction(ns, 1_000_000));
    }
    let secs = ns / 1_000_000_000;
    let sub = ns % 1_000_000_000;
    let h = secs / 3600;
    let m = (secs % 3600) / 60;
    let s = secs % 60;
    let s_text = trim_fraction(s * 1_000_000_000 + sub, 1_000_000_000);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{s_text}s"));
    out
}

/// `value / unit` as a decimal without trailing zeros.
fn trim_fraction(value: u128, unit: u128) -> String {
    let int = value / unit;
    let frac = value % unit;
    if frac == 0 {
        return int.to_string();
    }
    let width = unit.to_string().len() - 1;
    let frac = format!("{frac:0width$}");
    format!("{int}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_syntax() {
        let cases = [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("5m", Duration::from_secs(300)),
            ("168h", Duration::from_secs(168 * 3600)),
            ("1.5s", Duration::from_millis(1500)),
            ("100ms", Duration::from_millis(100)),
            ("2h45m", Duration::from_secs(2 * 3600 + 45 * 60)),
            ("1h0m0.5s", Duration::from_millis(3_600_500)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            (".5s", Duration::from_millis(500)),
            ("1.s", Duration::from_secs(1)),
            ("1.0000000009s", Duration::from_secs(1)),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert_eq!(parse("-5s"), Err(DurationError::Signed));
        assert!(matches!(parse("5"), Err(DurationError::MissingUnit(_))));
        assert!(matches!(
            parse("5d"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(parse("."), Err(DurationError::Syntax(_))));
        assert!(matches!(parse("s"), Err(DurationError::Syntax(_))));
        assert!(matches!(
            parse("1.5.5s"),
            Err(DurationError::Syntax(_)) | Err(DurationError::MissingUnit(_))
        ));
        assert!(matches!(
            parse("99999999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn format_round_trips() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(7),
            Duration::from_micros(10),
            Duration::from_millis(100),
            Duration::from_millis(1500),
            Duration::from_secs(300),
            Duration::from_secs(168 * 3600),
            Duration::from_nanos(3_600_000_000_001),
        ] {
            assert_eq!(parse(&format(d)), Ok(d), "{}", format(d));
        }
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
    }
}
