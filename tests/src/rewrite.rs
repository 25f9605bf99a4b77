//! Silent divergence, made on purpose: [`rewrite_record`] changes one committed record of a
//! stopped replica's partition log *consistently* — CRCs, offsets, raft terms and indexes all
//! stay valid — so neither recovery nor raft notices, and only a comparison of the replicas'
//! contents (`drawbridge cluster verify`) can.
//!
//! How: the data batch holding the record is re-encoded with the record's value changed and
//! appended under the same raft term and index after truncating the log there; the batches
//! after it are appended back unchanged. The replica must be stopped (this opens its log
//! directory directly).

use std::path::Path;

use bytes::Bytes;
use drawbridge_storage::{encode_records, Log, LogConfig, Record, RecordSet, Result, StorageError};

/// Rewrites the value of the record at `offset` in the partition log at `dir` (see the module
/// docs); returns a description of what was changed.
pub fn rewrite_record(dir: &Path, offset: u64) -> Result<String> {
    let log = Log::open(dir, LogConfig::default())?;
    let batches = log.batches_by_raft_index(..)?;
    let at = batches
        .iter()
        .position(|b| b.offset_span > 0 && b.base_offset <= offset && offset < b.next_offset())
        .ok_or_else(|| StorageError::InvalidArgument(format!("no batch holds offset {offset}")))?;
    // Owned copies: truncation may reuse the bytes the stored batches point to.
    let tail: Vec<_> = batches[at..]
        .iter()
        .map(|b| (b.meta, b.base_offset, Bytes::copy_from_slice(&b.body)))
        .collect();
    let (meta, base, body) = &tail[0];
    let mut records: Vec<Record> = Vec::new();
    let mut old = Bytes::new();
    for r in RecordSet::parse(body.clone())
        .map_err(|e| StorageError::InvalidArgument(e.to_string()))?
        .records(*base)
    {
        let r = r.map_err(|e| StorageError::InvalidArgument(e.to_string()))?;
        let mut rec = r.to_record();
        if r.offset == offset {
            old = rec.value.clone();
            let mut v = rec.value.to_vec();
            v.extend_from_slice(b"-rewritten");
            rec.value = Bytes::from(v);
        }
        records.push(rec);
    }
    log.truncate_after(meta.raft_index.checked_sub(1))?;
    log.append(*meta, encode_records(&records)?)?;
    for (meta, _, body) in &tail[1..] {
        log.append(*meta, body.clone())?;
    }
    log.sync()?;
    log.close()?;
    Ok(format!(
        "offset {offset} (raft index {}): {:?} → {:?}-rewritten; {} later batches re-appended",
        meta.raft_index,
        String::from_utf8_lossy(&old),
        String::from_utf8_lossy(&old),
        tail.len() - 1
    ))
}
