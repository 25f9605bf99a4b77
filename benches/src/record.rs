//! The JSON lines a run produces, one object per line, tagged by `kind`, and the latency
//! histograms behind the percentiles.
//!
//! `loadgen bench` writes `result` and `error` lines, `loadgen hw` writes `hw` lines, and
//! `compare.sh` adds `system`, `rss` and `note` lines with `printf`; `loadgen report` reads them
//! all back. Unknown fields are ignored on reading, so the script may add some.
//!
//! Units: latencies in microseconds, throughput in messages per second and payload megabytes
//! (10^6 bytes) per second, memory in KiB.

use std::io::Write;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::error::{BenchError, Result};

/// Highest latency a histogram tracks, µs (larger values are clamped).
const MAX_LATENCY_US: u64 = 120_000_000;

/// A latency histogram in µs, 1 µs .. 120 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .expect("constant bounds: low 1, high > 2 x low, 3 significant digits")
}

/// Records a duration in µs (at least 1).
pub fn record_latency(h: &mut Histogram<u64>, d: std::time::Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    h.saturating_record(us.max(1));
}

/// One JSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// One workload's outcome on one system.
    Result(Measurement),
    /// A workload that failed.
    Error {
        /// System label.
        system: String,
        /// Workload name.
        workload: String,
        /// Message size, bytes.
        size: usize,
        /// What went wrong.
        message: String,
    },
    /// A hardware baseline.
    Hw {
        /// `seq_write`, `fdatasync`, `loopback_tcp`.
        probe: String,
        /// The figure.
        value: f64,
        /// Its unit (`MB/s`, `ops/s`).
        unit: String,
        /// How it was measured.
        #[serde(default)]
        detail: String,
    },
    /// A system under test, described by the script.
    System {
        /// System label (as in results).
        system: String,
        /// What runs.
        #[serde(default)]
        description: String,
        /// When an ack is sent relative to fsync.
        #[serde(default)]
        durability: String,
    },
    /// Resident memory of one process while a system was under load.
    Rss {
        /// System label.
        system: String,
        /// Process name.
        process: String,
        /// Largest VmRSS sampled during the runs, KiB.
        max_rss_kb: u64,
        /// VmHWM (peak resident) at the end of the runs, KiB.
        #[serde(default)]
        hwm_kb: u64,
        /// Largest RssAnon sampled (heap and other anonymous memory, without the pages of
        /// memory-mapped files, which the page cache may drop), KiB; 0 when not sampled.
        #[serde(default)]
        max_anon_kb: u64,
    },
    /// Free text for the report (skipped systems, the run mode).
    Note {
        /// The text.
        text: String,
    },
}

/// Figures of one workload run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// System label, e.g. `drawbridge-embedded-sync`.
    pub system: String,
    /// `sync`, `pipelined`, `consume`, `e2e`.
    pub workload: String,
    /// Payload bytes per message.
    pub size: usize,
    /// Concurrent publishers (pipelined; 1 otherwise).
    pub publishers: usize,
    /// Messages in flight per publisher (pipelined; 1 for sync; 0 when not applicable).
    pub window: usize,
    /// Target rate of the steady load (e2e; 0 otherwise), msgs/s.
    #[serde(default)]
    pub rate: u64,
    /// Messages counted (acked, or received).
    pub messages: u64,
    /// Failed messages.
    pub errors: u64,
    /// Measured wall time, s.
    pub secs: f64,
    /// Messages per second.
    pub msgs_per_sec: f64,
    /// Payload MB (10^6 bytes) per second.
    pub mb_per_sec: f64,
    /// Latency percentiles, µs (0 when the workload has no latency).
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Largest, µs.
    pub max_us: u64,
    /// CPU time of the system's server processes per message, µs (consume, when the script
    /// named their PIDs; [`crate::cpu`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_us: Option<f64>,
    /// CPU time of the load generator per message, µs (consume, alongside `server_cpu_us`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loadgen_cpu_us: Option<f64>,
}

impl Measurement {
    /// A measurement with throughput from `messages` over `secs` and percentiles from `h`.
    pub fn new(
        system: &str,
        workload: &str,
        size: usize,
        messages: u64,
        secs: f64,
        h: &Histogram<u64>,
    ) -> Self {
        let msgs_per_sec = if secs > 0.0 {
            messages as f64 / secs
        } else {
            0.0
        };
        let q = |q: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(q)
            }
        };
        Measurement {
            system: system.to_owned(),
            workload: workload.to_owned(),
            size,
            publishers: 1,
            window: 0,
            rate: 0,
            messages,
            errors: 0,
            secs,
            msgs_per_sec,
            mb_per_sec: msgs_per_sec * size as f64 / 1e6,
            p50_us: q(0.50),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if h.is_empty() { 0 } else { h.max() },
            server_cpu_us: None,
            loadgen_cpu_us: None,
        }
    }
}

/// Where records go: stdout always, and appended to a file when given.
#[derive(Debug)]
pub struct Sink {
    file: Option<std::fs::File>,
}

impl Sink {
    /// A sink that also appends to `path` (created if missing).
    pub fn new(path: Option<&Path>) -> Result<Self> {
        let file = match path {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
            None => None,
        };
        Ok(Sink { file })
    }

    /// Writes one record as one line.
    pub fn emit(&mut self, r: &Record) -> Result<()> {
        let line = serde_json::to_string(r).map_err(|e| BenchError::Other(e.to_string()))?;
        println!("{line}");
        if let Some(f) = self.file.as_mut() {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Parses JSON lines, skipping blank lines; a malformed line is an error naming its number.
pub fn parse_lines(text: &str) -> Result<Vec<Record>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| BenchError::Other(format!("line {}: {e}: {l}", i + 1)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measurement_round_trips_as_a_tagged_line() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.saturating_record(us);
        }
        let m = Measurement::new("sys", "sync", 256, 1000, 2.0, &h);
        assert_eq!(m.msgs_per_sec, 500.0);
        assert!((m.mb_per_sec - 0.128).abs() < 1e-9);
        assert_eq!(m.p50_us, 500);
        let line = serde_json::to_string(&Record::Result(m.clone())).expect("json");
        assert!(line.starts_with("{\"kind\":\"result\""), "{line}");
        let back = parse_lines(&format!("{line}\n\n")).expect("parse");
        assert_eq!(back, vec![Record::Result(m)]);
    }

    #[test]
    fn script_lines_parse_with_defaults_and_extra_fields() {
        let text = r#"{"kind":"rss","system":"a","process":"nats-server","max_rss_kb":10,"pid":7}
{"kind":"note","text":"skipped"}"#;
        let r = parse_lines(text).expect("parse");
        assert_eq!(
            r[0],
            Record::Rss {
                system: "a".into(),
                process: "nats-server".into(),
                max_rss_kb: 10,
                hwm_kb: 0,
                max_anon_kb: 0,
            }
        );
        assert!(parse_lines("{\"kind\":\"nope\"}").is_err());
    }
}
