//! CPU time of processes while a workload runs, so a throughput figure can be read as what it
//! cost each side per message (the servers and this load generator share the machine's CPUs,
//! and a figure alone does not say which side was the bottleneck).
//!
//! Invariants:
//! - A reading is user + system time of every thread of a process, in µs, from fields 14 and
//!   15 of `/proc/PID/stat` (clock ticks, `sysconf(_SC_CLK_TCK)` of them per second), so its
//!   resolution is one tick (10 ms on Linux): rounds shorter than about a second are coarse.
//! - A process that cannot be read (exited, no `/proc`) makes the whole reading `None`, never
//!   a zero that would look like a free run.

use std::time::Duration;

/// User + system CPU time of process `pid` (this process for `None`).
pub fn process_cpu(pid: Option<u32>) -> Option<Duration> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let ticks = stat_ticks(&text)?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|h| *h > 0)?;
    Some(Duration::from_micros(ticks.checked_mul(1_000_000)? / hz))
}

/// utime + stime, in clock ticks, of one `/proc/PID/stat` line. The command name (field 2) is
/// in parentheses and may itself hold spaces and parentheses, so fields are counted after the
/// last `)`.
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// CPU time of a set of server processes and of this load generator, read together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuReading {
    /// Sum over the server processes.
    pub servers: Duration,
    /// This process.
    pub loadgen: Duration,
}

impl CpuReading {
    /// Reads the servers `pids` and this process; `None` if any cannot be read.
    pub fn now(pids: &[u32]) -> Option<CpuReading> {
        let mut servers = Duration::ZERO;
        for p in pids {
            servers += process_cpu(Some(*p))?;
        }
        Some(CpuReading {
            servers,
            loadgen: process_cpu(None)?,
        })
    }

    /// µs per message of (servers, load generator) since `earlier`, over `messages`.
    pub fn per_message_since(&self, earlier: &CpuReading, messages: u64) -> (f64, f64) {
        let n = messages.max(1) as f64;
        let us = |a: Duration, b: Duration| a.saturating_sub(b).as_secs_f64() * 1e6 / n;
        (
            us(self.servers, earlier.servers),
            us(self.loadgen, earlier.loadgen),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_after_the_command_name() {
        let line = "4242 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 250 70 0 0 20 0 3 0 99";
        assert_eq!(stat_ticks(line), Some(320));
        assert_eq!(stat_ticks("garbage"), None);
        assert_eq!(stat_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn own_process_reads_and_a_missing_one_does_not() {
        assert!(process_cpu(None).is_some());
        assert!(CpuReading::now(&[std::process::id()]).is_some());
        assert!(CpuReading::now(&[u32::MAX]).is_none());
    }
}
