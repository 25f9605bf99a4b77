//! # drawbridge-storage: the write-ahead log of one partition
//!
//! One [`Log`] is one partition directory: an ordered list of segments, each a `.log` file of
//! record batches plus a sparse `.index` (offset / raft index → file position) and a `.timeindex`
//! (timestamp → offset). The log is at the same time the partition's **message log** (dense
//! offsets 0, 1, 2, … for subscribers) and its **raft log** (one batch = one raft entry, with a
//! term and an index), so a message is written to disk once.
//!
//! ## Crate map
//! | module | what it is for |
//! | --- | --- |
//! | [`error`] | [`StorageError`] (and the codec's [`DecodeError`]): every failure is typed, nothing panics on bytes from disk |
//! | [`config`] | [`LogConfig`] (segment size/age, index interval, preallocation), [`SyncPolicy`], [`RetentionPolicy`] |
//! | `varint` | LEB128 / zig-zag integers used by the record encoding |
//! | [`record`] | [`Record`] (what a producer hands in) and [`RecordView`] (what a reader gets back, zero-copy) |
//! | [`record_set`] | the *body* of a data batch: [`RecordBatchBuilder`] / [`encode_records`] build it, [`RecordSet`] parses it. This body is exactly the payload of a raft entry |
//! | [`batch`] | the on-disk batch frame: [`BatchHeader`], [`BatchKind`], [`BatchMeta`], CRC-32C, [`decode_batch`] (the fuzzed decoder) |
//! | `fsutil` | `fallocate` with fallback, `fdatasync`, directory fsync, `ENOSPC` → [`StorageError::DiskFull`] |
//! | `index` | the sparse offset index: (relative offset, file position, raft index) entries, O(log n) lookups |
//! | `time_index` | the sparse time index: (running max timestamp, relative offset, position) entries |
//! | `segment` | one segment: files, the read-only map (as `Bytes`), append by `pwritev(2)`, batch scanning |
//! | `recovery` | opening a directory: validate sealed segments cheaply, scan the active tail, truncate at the first bad batch, rebuild indexes |
//! | [`log`] | [`Log`]: the shared handle — append, raft reads, truncation, purge, high watermark |
//! | [`reader`] | offset / reverse / timestamp reads and the async [`TailReader`] |
//! | [`checksum`] | [`RangeChecksum`]: a layout-independent checksum of committed records, to compare replicas |
//! | [`group_commit`] | [`GroupCommit`]: one flusher thread that syncs many logs per round and completes waiters |
//! | [`powerloss`] | sync wrappers and write hooks; with the `power-loss-sim` feature (tests only) a registry of durable lengths and a simulated power cut |
//! | [`retention`] | deleting whole sealed segments by bytes, messages and age |
//! | [`compaction`] | rewriting sealed segments keeping the newest record per key, crash-safe |
//!
//! The byte layout of every file is in `docs/storage-format.md` at the workspace root.
//!
//! ## Choices, and why
//! * **Appends use `pwritev(2)`, not a writable map.** Writing 1 MiB chunks through `write(2)`
//!   measured faster than memcpy into a fresh map of a preallocated file (which page-faults
//!   every 4 KiB; see the `raw/1MiB_chunks` benchmark), and a full disk stays an `ENOSPC`
//!   error instead of a `SIGBUS`. The active segment is still preallocated with `fallocate`
//!   so the disk-full error comes at roll time.
//! * **Reads are zero-copy everywhere**, the active segment included: every segment is mapped
//!   read-only once and records are `Bytes` slices of that map (the page cache is shared with
//!   `pwritev`).
//! * **One CRC-32C chain per batch, computed once by the encoder** — the batch CRC covers the
//!   header and the record-set header, which holds the records' CRC — so neither leader nor
//!   follower re-hashes a body on append. Reads verify it.
//! * **Durability is explicit**: nothing syncs behind the caller's back except truncation,
//!   reset, compaction and close; rolling defers the sealed segment's sync to the next `sync`.
//! * **Open is O(1) per segment** after a clean close (a summary of sealed segments in
//!   `recovery.point`; their files open on first use) and bounded by one segment after a crash.
//! * Errors are [`StorageError`]; `StorageError::into_io` converts for openraft's traits.
//!
//! ## How the raft layer uses it
//! * **Append** — [`Log::append`]`(BatchMeta { kind, raft_term, raft_index }, body)`. For
//!   [`BatchKind::Data`] the body is a record set built by [`RecordBatchBuilder`] /
//!   [`encode_records`]; the log assigns it the next offsets (`base_offset` = previous data
//!   batch's base + span). Control entries ([`BatchKind::RaftBlank`],
//!   [`BatchKind::RaftMembership`], [`BatchKind::Control`]) carry an opaque body and take **no**
//!   offset. The batch is readable when `append` returns; it is in the page cache, not durable.
//! * **Durability** — [`Log::sync`] (fdatasync), or [`GroupCommit::sync_then`] /
//!   [`GroupCommit::sync`] to share one sync round among many partitions: the callback runs once
//!   every append that returned before the request is durable (what openraft's `IOFlushed` needs).
//! * **Raft reads** — [`Log::batches_by_raft_index`], [`Log::batch_at_raft_index`],
//!   [`Log::last_raft_entry`], [`Log::first_raft_index`]. Each is O(log n) in the log size.
//! * **Conflicts and purge** — [`Log::truncate_after`] (durable when it returns) and
//!   [`Log::purge_through`] (deletes whole sealed segments, lazily as openraft allows; purging
//!   at or past the last entry empties the log so the next append may start anywhere).
//! * **Snapshot install** — [`Log::reset`]`(next_offset)`: a replica that installs a snapshot
//!   lacks the log prefix that offsets are computed from, so the snapshot carries the next
//!   offset and the log restarts there.
//! * **Compaction rule** — [`Log::compact`]`(max_raft_index)` only touches segments whose raft
//!   indexes are all ≤ the bound: pass the purge point, because compaction changes bodies.
//! * **Commit point** — [`Log::set_high_watermark`] (the last committed *offset*, inclusive,
//!   Liftbridge's HW); subscribers never read past it. [`StoredBatch::last_offset`] gives the
//!   value to publish after applying a data entry.
//!
//! ## How the server uses it
//! [`Log::read`] / [`Log::read_reverse`] / [`Log::offset_for_timestamp`] for fetches,
//! [`Log::tail`] for subscriptions ([`TailReader::next_records`] parks on the high watermark
//! and wakes without polling), [`Log::earliest_offset`] / [`Log::newest_offset`] /
//! [`Log::high_watermark`] for metadata, [`Log::enforce_retention`] / [`Log::retention_plan`] and
//! [`Log::compact`] for cleaning, [`SyncPolicy`] for the `--sync` knob.
//!
//! ## Public API at a glance
//! ```text
//! Log::open(dir, LogConfig) -> Result<Log>                      // recovers
//! log.append(BatchMeta, body: Bytes) -> Result<Appended>        // readable on return
//! log.append_all(&[(BatchMeta, Bytes)]) -> Result<Vec<Appended>>
//! log.sync() -> Result<()>                                      // fdatasync
//! log.last_raft_entry() -> Option<(term, index)>
//! log.first_raft_index() -> Option<u64>
//! log.batch_at_raft_index(u64) -> Result<Option<StoredBatch>>
//! log.batches_by_raft_index(impl RangeBounds<u64>) -> Result<Vec<StoredBatch>>
//! log.truncate_after(Option<u64>) -> Result<()>                 // delete raft index > x
//! log.purge_through(u64) -> Result<PurgeOutcome>                // whole sealed segments
//! log.reset(next_offset) -> Result<PurgeOutcome>                // empty, restart offsets
//! log.set_high_watermark(Option<u64>) -> Result<()>; log.high_watermark() -> Option<u64>
//! log.next_offset() / earliest_offset() -> u64; log.newest_offset() -> Option<u64>
//! log.read(from_offset, ReadLimits) -> Result<Vec<RecordView>>  // committed only
//! log.read_reverse(before_offset, ReadLimits) -> Result<Vec<RecordView>>
//! log.offset_for_timestamp(ts_ns) -> Result<Option<u64>>
//! log.tail(from_offset) -> TailReader; reader.next_records(ReadLimits).await
//! log.retention_plan(&RetentionPolicy, now_ns) -> RetentionPlan
//! log.enforce_retention(&RetentionPolicy, now_ns) -> Result<RetentionOutcome>
//! log.compact(max_raft_index) -> Result<CompactionOutcome>
//! log.roll() -> Result<bool>; log.close() -> Result<()>; log.active_segment() -> (base, len)
//! GroupCommit::start() -> Result<GroupCommit>
//! gc.sync_then(&log, FnOnce(Result<()>)); gc.sync(&log).await; gc.after_append(&log, SyncPolicy, cb)
//! ```

pub mod batch;
pub mod checksum;
pub mod compaction;
pub mod config;
pub mod error;
mod fsutil;
pub mod group_commit;
mod index;
pub mod log;
pub mod powerloss;
pub mod reader;
pub mod record;
pub mod record_set;
mod recovery;
pub mod retention;
mod segment;
mod time_index;
mod varint;

pub use batch::{decode_batch, BatchHeader, BatchKind, BatchMeta, DecodedBatch, BATCH_HEADER_LEN};
pub use checksum::{ChecksumMode, RangeChecksum};
pub use compaction::CompactionOutcome;
pub use config::{LogConfig, RetentionPolicy, SyncPolicy, MAX_SEGMENT_BYTES};
pub use error::{DecodeError, Result, StorageError};
pub use group_commit::GroupCommit;
pub use log::{Appended, Log, PurgeOutcome, StoredBatch};
pub use reader::{ReadLimits, TailReader};
pub use record::{Record, RecordView};
pub use record_set::{encode_records, RecordBatchBuilder, RecordSet, RecordSetHeader};
pub use retention::{RetentionOutcome, RetentionPlan};
