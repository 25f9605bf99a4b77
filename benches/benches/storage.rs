//! Storage benchmarks: every figure beside a baseline measured in the same run, in the same
//! directory, and a printed table of ratios at the end.
//!
//! | bench | what | baseline |
//! | --- | --- | --- |
//! | `append/{100,1024}B/x{1,64,1024}` | `Log::append` of a pre-encoded batch (raft entry payload) | `write(2)` of the same bytes (header + body) to a plain file |
//! | `durable/...` | append + `GroupCommit::sync_then` round trip | `write(2)` + `fdatasync` of the same bytes |
//! | `read/sequential` | `Log::read` of every committed record (zero-copy, CRC verified) | `read(2)` of the same `.log` bytes |
//! | `lookup/{offset,timestamp}` | one `read(o, 1 record)` / `offset_for_timestamp` at a random point | one random 4 KiB `pread` of the same file |
//! | `reopen/{100MiB,2GiB}` | `Log::open` of a cleanly closed log | (ratio 2 GiB / 100 MiB) |
//! | `raw/mmap_copy` | memcpy into a writable map of a preallocated file | `write(2)`: why appends use `pwritev` |
//!
//! Run: `cargo bench -p drawbridge-benches --bench storage`. Smoke (CI):
//! `cargo bench -p drawbridge-benches --bench storage -- --test` (tiny sizes, runs each once).
//! The 2 GiB reopen log is built once per run (about 2 GiB of disk under the temp dir, or
//! `DRAWBRIDGE_BENCH_DIR`); set `DRAWBRIDGE_BENCH_SMALL=1` to use 100 MiB / 400 MiB instead.

use std::fs::File;
use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, Criterion, Throughput};
use drawbridge_storage::{
    encode_records, BatchKind, BatchMeta, GroupCommit, Log, LogConfig, ReadLimits, Record,
    BATCH_HEADER_LEN,
};

const SIZES: [usize; 2] = [100, 1024];
const BATCHES: [usize; 3] = [1, 64, 1024];

fn smoke() -> bool {
    std::env::args().any(|a| a == "--test")
}

/// Bytes a rig writes before it starts over (keeps disk use and dirty pages bounded).
fn cap() -> u64 {
    if smoke() {
        8 << 20
    } else {
        512 << 20
    }
}

fn base_dir() -> PathBuf {
    std::env::var_os("DRAWBRIDGE_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

fn body(size: usize, batch: usize) -> Bytes {
    let records: Vec<Record> = (0..batch)
        .map(|i| Record {
            timestamp: 1_700_000_000_000_000_000 + i as i64,
            key: None,
            headers: Vec::new(),
            value: Bytes::from(vec![(i % 251) as u8; size]),
        })
        .collect();
    encode_records(&records).expect("encode")
}

/// A log being appended to.
struct LogRig {
    _dir: tempfile::TempDir,
    log: Log,
    index: u64,
    written: u64,
    body: Bytes,
}

impl LogRig {
    fn new(body: Bytes) -> LogRig {
        let dir = tempfile::tempdir_in(base_dir()).expect("tempdir");
        let log = Log::open(dir.path(), LogConfig::default()).expect("open");
        LogRig {
            _dir: dir,
            log,
            index: 1,
            written: 0,
            body,
        }
    }
    fn append(&mut self) {
        let meta = BatchMeta {
            kind: BatchKind::Data,
            raft_term: 1,
            raft_index: self.index,
        };
        self.log.append(meta, self.body.clone()).expect("append");
        self.index += 1;
        self.written += (BATCH_HEADER_LEN + self.body.len()) as u64;
    }
    fn reset_if_full(&mut self) {
        if self.written >= cap() {
            let body = self.body.clone();
            *self = LogRig::new(body);
        }
    }
}

/// A plain file written with `write(2)`.
struct RawRig {
    _dir: tempfile::TempDir,
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    written: u64,
}

impl RawRig {
    fn new(len: usize) -> RawRig {
        let dir = tempfile::tempdir_in(base_dir()).expect("tempdir");
        let path = dir.path().join("raw");
        let file = File::create(&path).expect("create");
        RawRig {
            _dir: dir,
            path,
            file,
            buf: vec![7u8; len],
            written: 0,
        }
    }
    fn write(&mut self) {
        self.file.write_all(&self.buf).expect("write");
        self.written += self.buf.len() as u64;
    }
    fn reset_if_full(&mut self) {
        if self.written >= cap() {
            self.file = File::create(&self.path).expect("recreate");
            self.written = 0;
        }
    }
}

/// Runs `op` `iters` times on `s`, timing only the op (resets happen outside the clock).
fn timed<S>(
    iters: u64,
    s: &mut S,
    mut reset: impl FnMut(&mut S),
    mut op: impl FnMut(&mut S),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        reset(s);
        let t = Instant::now();
        op(s);
        total += t.elapsed();
    }
    total
}

fn bench_append(c: &mut Criterion) {
    for size in SIZES {
        for batch in BATCHES {
            let body = body(size, batch);
            let bytes = (BATCH_HEADER_LEN + body.len()) as u64;
            let mut g = c.benchmark_group(format!("append/{size}B/x{batch}"));
            g.throughput(Throughput::Bytes(bytes));
            let mut raw = RawRig::new(bytes as usize);
            g.bench_function("raw_write", |b| {
                b.iter_custom(|iters| timed(iters, &mut raw, RawRig::reset_if_full, RawRig::write))
            });
            let mut rig = LogRig::new(body.clone());
            g.bench_function("log_append", |b| {
                b.iter_custom(|iters| timed(iters, &mut rig, LogRig::reset_if_full, LogRig::append))
            });
            g.finish();
        }
    }
}

fn bench_durable(c: &mut Criterion) {
    let gc = GroupCommit::start().expect("flusher");
    for size in SIZES {
        for batch in BATCHES {
            let body = body(size, batch);
            let bytes = (BATCH_HEADER_LEN + body.len()) as u64;
            let mut g = c.benchmark_group(format!("durable/{size}B/x{batch}"));
            g.throughput(Throughput::Bytes(bytes));
            let mut raw = RawRig::new(bytes as usize);
            g.bench_function("raw_write_fdatasync", |b| {
                b.iter_custom(|iters| {
                    timed(iters, &mut raw, RawRig::reset_if_full, |raw| {
                        raw.write();
                        raw.file.sync_data().expect("fdatasync");
                    })
                })
            });
            let mut rig = LogRig::new(body.clone());
            g.bench_function("log_append_group_commit", |b| {
                b.iter_custom(|iters| {
                    timed(iters, &mut rig, LogRig::reset_if_full, |rig| {
                        durable_append(&gc, rig)
                    })
                })
            });
            g.finish();
        }
    }
}

fn durable_append(gc: &GroupCommit, rig: &mut LogRig) {
    rig.append();
    let (tx, rx) = mpsc::sync_channel(1);
    gc.sync_then(&rig.log, move |r| {
        let _ = tx.send(r);
    });
    rx.recv().expect("flusher alive").expect("durable");
}

/// A committed log of `bytes` of 1 KiB records in 1024-record batches, closed cleanly.
fn build_log(dir: &Path, bytes: u64) -> u64 {
    let log = Log::open(dir, LogConfig::default()).expect("open");
    let per = 1024u64;
    let mut index = 1;
    while log.size_bytes() < bytes {
        let base = log.next_offset();
        let records: Vec<Record> = (0..per)
            .map(|i| Record {
                timestamp: ((base + i) * 1000) as i64,
                key: None,
                headers: Vec::new(),
                value: Bytes::from(vec![(i % 251) as u8; 1024]),
            })
            .collect();
        let meta = BatchMeta {
            kind: BatchKind::Data,
            raft_term: 1,
            raft_index: index,
        };
        log.append(meta, encode_records(&records).expect("encode"))
            .expect("append");
        index += 1;
    }
    let n = log.next_offset();
    log.close().expect("close");
    n
}

fn open_committed(dir: &Path) -> Log {
    let log = Log::open(dir, LogConfig::default()).expect("open");
    log.set_high_watermark(log.newest_offset()).expect("hw");
    log
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

struct ReadRig {
    _dir: tempfile::TempDir,
    log: Log,
    files: Vec<PathBuf>,
    records: u64,
    bytes: u64,
}

impl ReadRig {
    fn new(bytes: u64) -> ReadRig {
        let dir = tempfile::tempdir_in(base_dir()).expect("tempdir");
        let records = build_log(dir.path(), bytes);
        let log = open_committed(dir.path());
        let bytes = log.size_bytes();
        ReadRig {
            files: log_files(dir.path()),
            _dir: dir,
            log,
            records,
            bytes,
        }
    }
    fn read_all(&self) -> u64 {
        let mut from = 0;
        let mut n = 0;
        let limits = ReadLimits {
            max_records: 4096,
            max_bytes: 4 << 20,
        };
        while from < self.records {
            let recs = self.log.read(from, limits).expect("read");
            let Some(last) = recs.last() else { break };
            from = last.offset + 1;
            n += recs.iter().map(|r| r.value.len() as u64).sum::<u64>();
            black_box(&recs);
        }
        n
    }
    fn raw_read_all(&self, buf: &mut [u8]) -> u64 {
        let mut n = 0;
        for p in &self.files {
            let mut f = File::open(p).expect("open");
            loop {
                let k = f.read(buf).expect("read");
                if k == 0 {
                    break;
                }
                n += k as u64;
                black_box(&buf[..k]);
            }
        }
        n
    }
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 11
    }
}

fn bench_read(c: &mut Criterion, rig: &ReadRig) {
    let mut g = c.benchmark_group("read/sequential");
    g.throughput(Throughput::Bytes(rig.bytes));
    let mut buf = vec![0u8; 1 << 20];
    g.bench_function("raw_read", |b| {
        b.iter(|| black_box(rig.raw_read_all(&mut buf)))
    });
    g.bench_function("log_read", |b| b.iter(|| black_box(rig.read_all())));
    g.finish();

    let mut g = c.benchmark_group("lookup");
    let file = File::open(&rig.files[0]).expect("open");
    let flen = file.metadata().expect("stat").len();
    let mut rnd = Lcg(7);
    let mut page = vec![0u8; 4096];
    g.bench_function("raw_random_pread_4k", |b| {
        b.iter(|| {
            let at = rnd.next() % (flen - 4096);
            black_box(file.read_at(&mut page, at).expect("pread"))
        })
    });
    g.bench_function("offset", |b| {
        b.iter(|| {
            let o = rnd.next() % rig.records;
            black_box(rig.log.read(o, ReadLimits::records(1)).expect("read"))
        })
    });
    g.bench_function("timestamp", |b| {
        b.iter(|| {
            let t = (rnd.next() % rig.records * 1000) as i64;
            black_box(rig.log.offset_for_timestamp(t).expect("ts"))
        })
    });
    g.finish();
}

fn big_sizes() -> (u64, u64) {
    if smoke() {
        (4 << 20, 16 << 20)
    } else if std::env::var_os("DRAWBRIDGE_BENCH_SMALL").is_some() {
        (100 << 20, 400 << 20)
    } else if free_bytes(&base_dir()) < (6 << 30) {
        println!(
            "note: less than 6 GiB free under {}; reopen uses 100 MiB / 400 MiB logs",
            base_dir().display()
        );
        (100 << 20, 400 << 20)
    } else {
        (100 << 20, 2 << 30)
    }
}

/// Free bytes on the file system holding `dir` (0 when unknown).
fn free_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return 0;
    };
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is a NUL-terminated string and `st` is a writable statvfs.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    st.f_bavail.saturating_mul(st.f_frsize)
}

fn reopen_once(dir: &Path) -> Duration {
    let t = Instant::now();
    let log = Log::open(dir, LogConfig::default()).expect("open");
    let d = t.elapsed();
    black_box(log.next_offset());
    drop(log);
    d
}

fn bench_reopen(c: &mut Criterion, small: &Path, big: &Path, sizes: (u64, u64)) {
    let mut g = c.benchmark_group("reopen");
    g.bench_function(format!("{}MiB", sizes.0 >> 20), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| reopen_once(small)).sum())
    });
    g.bench_function(format!("{}MiB", sizes.1 >> 20), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| reopen_once(big)).sum())
    });
    g.finish();
}

/// Why appends use `pwritev` and not a writable map: memcpy into a fresh preallocated mapping
/// page-faults every 4 KiB.
fn bench_mmap_vs_write(c: &mut Criterion) {
    let len: u64 = if smoke() { 8 << 20 } else { 256 << 20 };
    let chunk = 1 << 20;
    let src = vec![3u8; chunk];
    let mut g = c.benchmark_group("raw/1MiB_chunks");
    g.throughput(Throughput::Bytes(chunk as u64));
    let dir = tempfile::tempdir_in(base_dir()).expect("tempdir");
    let mut state: Option<(memmap2::MmapMut, usize)> = None;
    let path = dir.path().join("mapped");
    g.bench_function("mmap_copy_preallocated", |b| {
        b.iter_custom(|iters| {
            timed(
                iters,
                &mut state,
                |state| {
                    if state
                        .as_ref()
                        .is_none_or(|(_, at)| *at + chunk > len as usize)
                    {
                        *state = None;
                        let f = File::options()
                            .read(true)
                            .write(true)
                            .create(true)
                            .truncate(true)
                            .open(&path)
                            .expect("open");
                        f.set_len(len).expect("len");
                        // SAFETY: the file is ours, sized before mapping and never shrunk while mapped.
                        let map = unsafe { memmap2::MmapMut::map_mut(&f) }.expect("map");
                        *state = Some((map, 0));
                    }
                },
                |state| {
                    if let Some((map, at)) = state.as_mut() {
                        map[*at..*at + chunk].copy_from_slice(&src);
                        *at += chunk;
                    }
                },
            )
        })
    });
    let mut raw = RawRig::new(chunk);
    g.bench_function("write", |b| {
        b.iter_custom(|iters| timed(iters, &mut raw, RawRig::reset_if_full, RawRig::write))
    });
    g.finish();
}

/// Interleaved A/B measurement: per round, time `n` ops of each; median seconds per op.
fn paired(
    rounds: usize,
    n: u64,
    mut a: impl FnMut(u64) -> Duration,
    mut b: impl FnMut(u64) -> Duration,
) -> (f64, f64) {
    let mut xa = Vec::new();
    let mut xb = Vec::new();
    for _ in 0..rounds {
        xb.push(b(n).as_secs_f64() / n as f64);
        xa.push(a(n).as_secs_f64() / n as f64);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|p, q| p.total_cmp(q));
        v[v.len() / 2]
    };
    (med(&mut xa), med(&mut xb))
}

fn gbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

fn summary(read: &ReadRig, small: &Path, big: &Path, sizes: (u64, u64)) {
    let rounds = if smoke() { 1 } else { 7 };
    let mut lines = Vec::new();
    let gc = GroupCommit::start().expect("flusher");
    for size in SIZES {
        for batch in BATCHES {
            let body = body(size, batch);
            let bytes = (BATCH_HEADER_LEN + body.len()) as u64;
            let n =
                ((32u64 << 20) / bytes)
                    .clamp(64, 20_000)
                    .min(if smoke() { 16 } else { u64::MAX });
            let mut rig = LogRig::new(body.clone());
            let mut raw = RawRig::new(bytes as usize);
            let (a, b) = paired(
                if smoke() { 1 } else { 11 },
                n,
                |n| timed(n, &mut rig, LogRig::reset_if_full, LogRig::append),
                |n| timed(n, &mut raw, RawRig::reset_if_full, RawRig::write),
            );
            lines.push(format!(
                "append   {size:>4}B x{batch:<4}  log {:>6.2} GB/s  raw write {:>6.2} GB/s  append/raw = {:.2}x",
                gbps(bytes, a),
                gbps(bytes, b),
                b / a
            ));
            let nd = if smoke() { 4 } else { 200 };
            let (a, b) = paired(
                rounds,
                nd,
                |n| {
                    timed(n, &mut rig, LogRig::reset_if_full, |rig| {
                        durable_append(&gc, rig)
                    })
                },
                |n| {
                    timed(n, &mut raw, RawRig::reset_if_full, |raw| {
                        raw.write();
                        raw.file.sync_data().expect("fdatasync");
                    })
                },
            );
            lines.push(format!(
                "durable  {size:>4}B x{batch:<4}  log {:>8.1} µs/op  raw write+fdatasync {:>8.1} µs/op  durable/raw = {:.2}x",
                a * 1e6,
                b * 1e6,
                b / a
            ));
            drop(rig);
        }
    }
    let mut buf = vec![0u8; 1 << 20];
    let (a, b) = paired(
        rounds,
        1,
        |n| {
            let t = Instant::now();
            for _ in 0..n {
                black_box(read.read_all());
            }
            t.elapsed()
        },
        |n| {
            let t = Instant::now();
            for _ in 0..n {
                black_box(read.raw_read_all(&mut buf));
            }
            t.elapsed()
        },
    );
    lines.push(format!(
        "read     sequential         log {:>6.2} GB/s  raw read  {:>6.2} GB/s  read/raw = {:.2}x",
        gbps(read.bytes, a),
        gbps(read.bytes, b),
        b / a
    ));
    let file = File::open(&read.files[0]).expect("open");
    let flen = file.metadata().expect("stat").len();
    let mut rnd = Lcg(11);
    let mut page = vec![0u8; 4096];
    let lookups = if smoke() { 10 } else { 20_000 };
    let mut raw_pread = |n: u64| {
        let t = Instant::now();
        for _ in 0..n {
            let at = rnd.next() % (flen - 4096);
            black_box(file.read_at(&mut page, at).expect("pread"));
        }
        t.elapsed()
    };
    let mut rnd2 = Lcg(13);
    let (a, b) = paired(
        rounds,
        lookups,
        |n| {
            let t = Instant::now();
            for _ in 0..n {
                let o = rnd2.next() % read.records;
                black_box(read.log.read(o, ReadLimits::records(1)).expect("read"));
            }
            t.elapsed()
        },
        &mut raw_pread,
    );
    lines.push(format!(
        "lookup   offset             {:>8.2} µs  raw 4KiB pread {:>6.2} µs  lookup/raw = {:.2}x (time ratio)",
        a * 1e6,
        b * 1e6,
        a / b
    ));
    let mut rnd3 = Lcg(17);
    let (a, b) = paired(
        rounds,
        lookups,
        |n| {
            let t = Instant::now();
            for _ in 0..n {
                let ts = (rnd3.next() % read.records * 1000) as i64;
                black_box(read.log.offset_for_timestamp(ts).expect("ts"));
            }
            t.elapsed()
        },
        &mut raw_pread,
    );
    lines.push(format!(
        "lookup   timestamp          {:>8.2} µs  raw 4KiB pread {:>6.2} µs  lookup/raw = {:.2}x (time ratio)",
        a * 1e6,
        b * 1e6,
        a / b
    ));
    let (a, b) = paired(
        if smoke() { 1 } else { 15 },
        1,
        |_| reopen_once(big),
        |_| reopen_once(small),
    );
    lines.push(format!(
        "reopen   {} MiB {:>8.1} µs  {} MiB {:>8.1} µs  big/small = {:.2}x (goal <= 2x)",
        sizes.1 >> 20,
        a * 1e6,
        sizes.0 >> 20,
        b * 1e6,
        a / b
    ));
    println!();
    println!(
        "=== drawbridge-storage: ratios against baselines measured in this run{} ===",
        if smoke() {
            " (smoke: not meaningful)"
        } else {
            ""
        }
    );
    println!("goals: append 1024B x1024 >= 0.8x raw write; durable >= 0.8x raw write+fdatasync; reopen big/small <= 2x");
    for l in lines {
        println!("{l}");
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args()
}

criterion_group! {
    name = writes;
    config = config();
    targets = bench_append, bench_durable, bench_mmap_vs_write
}

fn main() {
    writes();
    let sizes = big_sizes();
    let root = tempfile::tempdir_in(base_dir()).expect("tempdir");
    let small = root.path().join("small");
    let big = root.path().join("big");
    let t = Instant::now();
    build_log(&small, sizes.0);
    build_log(&big, sizes.1);
    eprintln!(
        "built reopen logs ({} MiB, {} MiB) in {:?}",
        sizes.0 >> 20,
        sizes.1 >> 20,
        t.elapsed()
    );
    let read = ReadRig::new(if smoke() { 4 << 20 } else { 64 << 20 });
    let mut c = config();
    bench_read(&mut c, &read);
    bench_reopen(&mut c, &small, &big, sizes);
    c.final_summary();
    summary(&read, &small, &big, sizes);
}
