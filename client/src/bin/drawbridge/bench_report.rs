//! The numbers a `drawbridge bench` run produces, and their markdown summary.
//!
//! Latencies are recorded in microseconds, from `send` until the ack future resolved, in an
//! HDR histogram with 3 significant digits (1 µs .. 60 s; larger values are clamped).

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::output::markdown_table;
use crate::CliError;

/// Highest latency the histogram tracks, in microseconds.
const MAX_LATENCY_US: u64 = 60_000_000;

/// A new latency histogram (µs), 1 µs .. 60 s, 3 significant digits.
pub fn new_histogram() -> Result<Histogram<u64>, CliError> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .map_err(|e| CliError::Usage(format!("latency histogram: {e}")))
}

/// Results of one run.
#[derive(Debug)]
pub struct BenchReport {
    pub publishers: usize,
    pub window: usize,
    pub size: usize,
    pub ack_policy: String,
    pub elapsed: Duration,
    /// Messages acknowledged (or handed to the stream, for ack policy none).
    pub acked: u64,
    pub errors: u64,
    /// Ack latencies, µs.
    pub latency_us: Histogram<u64>,
}

impl BenchReport {
    pub fn msgs_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.acked as f64 / secs
        } else {
            0.0
        }
    }

    /// Payload megabytes (10^6 bytes) per second.
    pub fn mb_per_sec(&self) -> f64 {
        self.msgs_per_sec() * self.size as f64 / 1e6
    }
}

fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

/// The summary as a markdown table.
pub fn render_markdown(r: &BenchReport) -> String {
    let h = &r.latency_us;
    let latency = |q: f64| {
        if h.is_empty() {
            "-".to_string()
        } else {
            ms(h.value_at_quantile(q))
        }
    };
    let rows = vec![
        vec![
            "publishers × window".into(),
            format!("{} × {}", r.publishers, r.window),
        ],
        vec!["message size".into(), format!("{} B", r.size)],
        vec!["ack policy".into(), r.ack_policy.clone()],
        vec![
            "duration".into(),
            format!("{:.2} s", r.elapsed.as_secs_f64()),
        ],
        vec!["messages".into(), r.acked.to_string()],
        vec!["errors".into(), r.errors.to_string()],
        vec![
            "throughput".into(),
            format!("{:.0} msgs/s", r.msgs_per_sec()),
        ],
        vec!["bandwidth".into(), format!("{:.2} MB/s", r.mb_per_sec())],
        vec!["latency p50".into(), latency(0.50)],
        vec!["latency p90".into(), latency(0.90)],
        vec!["latency p99".into(), latency(0.99)],
        vec!["latency p99.9".into(), latency(0.999)],
        vec![
            "latency max".into(),
            if h.is_empty() {
                "-".into()
            } else {
                ms(h.max())
            },
        ],
    ];
    markdown_table(&["metric", "value"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_table() {
        let mut h = new_histogram().expect("histogram");
        for us in 1..=1000u64 {
            h.saturating_record(us * 10); // 10 µs .. 10 ms
        }
        let r = BenchReport {
            publishers: 4,
            window: 64,
            size: 1000,
            ack_policy: "leader".into(),
            elapsed: Duration::from_secs(2),
            acked: 1000,
            errors: 3,
            latency_us: h,
        };
        assert_eq!(r.msgs_per_sec(), 500.0);
        assert!((r.mb_per_sec() - 0.5).abs() < 1e-9);
        let md = render_markdown(&r);
        let expected = "\
| metric | value |
|---|---|
| publishers × window | 4 × 64 |
| message size | 1000 B |
| ack policy | leader |
| duration | 2.00 s |
| messages | 1000 |
| errors | 3 |
| throughput | 500 msgs/s |
| bandwidth | 0.50 MB/s |
| latency p50 | 5.003 ms |
| latency p90 | 9.007 ms |
| latency p99 | 9.903 ms |
| latency p99.9 | 9.991 ms |
| latency max | 10.007 ms |
";
        assert_eq!(md, expected);
    }

    #[test]
    fn empty_run() {
        let r = BenchReport {
            publishers: 1,
            window: 1,
            size: 1,
            ack_policy: "none".into(),
            elapsed: Duration::ZERO,
            acked: 0,
            errors: 0,
            latency_us: new_histogram().expect("histogram"),
        };
        let md = render_markdown(&r);
        assert!(md.contains("| throughput | 0 msgs/s |"));
        assert!(md.contains("| latency p99 | - |"));
    }
}
