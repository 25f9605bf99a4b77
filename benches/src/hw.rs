//! Hardware baselines, measured in the same run as the benchmarks so every figure can be read
//! as a fraction of what the machine can do.
//!
//! - [`seq_write`]: sequential write bandwidth to a file in the data directory's file system,
//!   1 MiB writes, one `fdatasync` at the end (counted).
//! - [`fdatasync_rate`]: appends of 4 KiB, each followed by `fdatasync` — the cost of one
//!   group commit into a growing file (the size changes, so the file system journals too).
//! - [`fdatasync_prealloc_rate`]: the same into a preallocated file (size unchanged, data only),
//!   the case of Drawbridge's preallocated segments. Either is the ceiling of a sync-before-ack
//!   log with one writer and no batching.
//! - [`loopback_tcp`]: one TCP connection on 127.0.0.1, 256 KiB writes, a reader thread.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::record::Record;

/// Sequential write bandwidth, MB/s, writing `bytes` to a fresh file under `dir`.
pub fn seq_write(dir: &Path, bytes: u64) -> Result<Record> {
    let path = dir.join("seq-write.probe");
    let block = vec![0xa5u8; 1 << 20];
    let start = Instant::now();
    {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        let mut written = 0u64;
        while written < bytes {
            f.write_all(&block)?;
            written += block.len() as u64;
        }
        f.sync_data()?;
    }
    let secs = start.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(Record::Hw {
        probe: "seq_write".into(),
        value: bytes as f64 / 1e6 / secs,
        unit: "MB/s".into(),
        detail: format!("{} MiB in 1 MiB writes + fdatasync", bytes >> 20),
    })
}

/// `fdatasync` calls per second, each after appending 4 KiB, for `duration`.
pub fn fdatasync_rate(dir: &Path, duration: Duration) -> Result<Record> {
    let path = dir.join("fdatasync.probe");
    let block = vec![0x5au8; 4096];
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        f.write_all(&block)?;
        f.sync_data()?;
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    let rate = n as f64 / secs;
    Ok(Record::Hw {
        probe: "fdatasync".into(),
        value: rate,
        unit: "ops/s".into(),
        detail: format!(
            "4 KiB append + fdatasync, {:.0} µs each",
            if rate > 0.0 { 1e6 / rate } else { 0.0 }
        ),
    })
}

/// `fdatasync` calls per second, each after overwriting the next 4 KiB of a preallocated
/// 64 MiB file (wrapping), for `duration`.
pub fn fdatasync_prealloc_rate(dir: &Path, duration: Duration) -> Result<Record> {
    use std::os::unix::fs::FileExt;
    const SIZE: u64 = 64 << 20;
    let path = dir.join("fdatasync-prealloc.probe");
    let block = vec![0x3cu8; 4096];
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let mut off = 0u64;
    while off < SIZE {
        f.write_all_at(&block, off)?;
        off += block.len() as u64;
    }
    f.sync_all()?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        f.write_all_at(&block, (n * 4096) % SIZE)?;
        f.sync_data()?;
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    let rate = n as f64 / secs;
    Ok(Record::Hw {
        probe: "fdatasync_prealloc".into(),
        value: rate,
        unit: "ops/s".into(),
        detail: format!(
            "4 KiB overwrite in a preallocated file + fdatasync, {:.0} µs each",
            if rate > 0.0 { 1e6 / rate } else { 0.0 }
        ),
    })
}

/// Loopback TCP bandwidth, MB/s, over one connection for `duration`.
pub fn loopback_tcp(duration: Duration) -> Result<Record> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = listener.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 256 << 10];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let mut s = TcpStream::connect(addr)?;
    let block = vec![0u8; 256 << 10];
    let start = Instant::now();
    while start.elapsed() < duration {
        s.write_all(&block)?;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let total = reader
        .join()
        .map_err(|_| std::io::Error::other("loopback reader panicked"))??;
    let secs = start.elapsed().as_secs_f64();
    Ok(Record::Hw {
        probe: "loopback_tcp".into(),
        value: total as f64 / 1e6 / secs,
        unit: "MB/s".into(),
        detail: "one connection, 256 KiB writes".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_measure_something() {
        let dir = tempfile::tempdir().expect("tempdir");
        let probes = [
            seq_write(dir.path(), 4 << 20).expect("seq"),
            fdatasync_rate(dir.path(), Duration::from_millis(50)).expect("fsync"),
            fdatasync_prealloc_rate(dir.path(), Duration::from_millis(50)).expect("prealloc"),
            loopback_tcp(Duration::from_millis(50)).expect("tcp"),
        ];
        for p in probes {
            match p {
                Record::Hw { value, .. } => assert!(value > 0.0, "{p:?}"),
                other => panic!("not a hw record: {other:?}"),
            }
        }
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 0);
    }
}
