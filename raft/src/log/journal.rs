//! The node's raft state journal: one append-only file holding, for every raft group hosted by
//! the node, what is not a log entry (vote, committed log id, last purged log id).
//!
//! Why one file for all groups: persisting a vote in a per-group file costs two fsyncs, a
//! rename and a directory fsync (~11 ms on the reference disk). When 500 groups elect at once
//! that is seconds of disk time per node, longer than an election timeout, and elections never
//! settle. Here every group's state change is one small record appended to a shared file, and
//! the node's [`Flusher`](super::Flusher) covers all records of a round with one `fdatasync`
//! (the multi-raft "shared raft state journal").
//!
//! Format: an 8-byte header `b"DBRJ" | version: u32 LE (1)`, then frames
//! `len: u32 LE | crc32(body): u32 LE | body`, `body = postcard((key: bytes, value: Option<bytes>))`.
//! `key` names a group; `value` is the group's whole encoded state, `None` is a tombstone
//! (group deleted). The last frame of a key wins.
//!
//! Invariants:
//! - Replay stops at the first frame that is torn, fails its CRC or does not decode; the file
//!   is cut there (such a frame was never acknowledged: acknowledgement follows the fsync).
//! - Compaction writes the live state to `journal.tmp`, fsyncs it, renames it over the journal
//!   and fsyncs the directory: a crash leaves the old or the new file, never a mix.
//! - Only the flusher thread writes the file (single writer); readers use the in-memory map.
//! - `len` is the file's length whenever `append` returns: a failed append cuts the file back
//!   to `len` (a short write on a full disk leaves no partial frame, and the `O_APPEND` retry
//!   lands right after the last good frame; see [`super::nospace`]) and leaves the live map
//!   unchanged. If the cut fails the journal is *poisoned* and refuses every later append.

use std::collections::HashMap;
use std::fs;
use std::fs::File;
use std::fs::OpenOptions;
use std::io;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use drawbridge_storage::powerloss;
use tracing::warn;

use super::meta_file::sync_dir;
use crate::codec;

const MAGIC: &[u8; 4] = b"DBRJ";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 8;
/// Compact when the file exceeds this many bytes and holds mostly stale records.
const COMPACT_MIN_BYTES: u64 = 4 * 1024 * 1024;

/// The live state: group key -> the group's latest encoded state.
pub(crate) type LiveMap = HashMap<Vec<u8>, Vec<u8>>;

/// Appends one frame for `(key, value)` to `out`.
pub(crate) fn encode_frame(key: &[u8], value: Option<&[u8]>, out: &mut Vec<u8>) -> io::Result<()> {
    let body = codec::encode_io(&(key, value))?;
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "journal record too large"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// Replays `bytes` (a whole journal file): the live map and the length of the valid prefix.
/// Never panics, whatever the bytes.
pub(crate) fn replay(bytes: &[u8]) -> io::Result<(LiveMap, usize)> {
    let mut map = HashMap::new();
    if bytes.is_empty() {
        return Ok((map, 0));
    }
    if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a drawbridge raft state journal",
        ));
    }
    let version = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if version != VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unsupported raft state journal version {version}"),
        ));
    }
    let mut pos = HEADER_LEN;
    while let Some(head) = bytes.get(pos..pos + 8) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let Some(body) = bytes.get(pos + 8..(pos + 8).saturating_add(len)) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        let Ok((key, value)) =
            codec::decode_io::<(Vec<u8>, Option<Vec<u8>>)>("raft journal record", body)
        else {
            break;
        };
        match value {
            Some(v) => map.insert(key, v),
            None => map.remove(&key),
        };
        pos += 8 + len;
    }
    Ok((map, pos))
}

/// The open journal file and the live state it encodes. Owned by the flusher thread.
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    len: u64,
    /// Bytes the live records take when rewritten.
    live: LiveMap,
    /// A failed append could not cut the file back to `len`: refuse every later append.
    poisoned: bool,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("groups", &self.live.len())
            .finish()
    }
}

impl Journal {
    /// Opens (or creates) the journal at `path`, replaying it and cutting a torn tail.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (live, valid) = replay(&bytes)?;
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        if bytes.is_empty() {
            powerloss::created(path);
            let mut header = Vec::with_capacity(HEADER_LEN);
            header.extend_from_slice(MAGIC);
            header.extend_from_slice(&VERSION.to_le_bytes());
            file.write_all(&header)?;
            powerloss::sync_file(&file, path, false)?;
            sync_dir(path)?;
        } else if valid < bytes.len() {
            warn!(path = %path.display(), valid, len = bytes.len(), "cutting torn tail of raft state journal");
            powerloss::truncated(path, valid as u64);
            file.set_len(valid as u64)?;
            powerloss::sync_file(&file, path, false)?;
        }
        let len = if bytes.is_empty() {
            HEADER_LEN as u64
        } else {
            valid as u64
        };
        Ok(Self {
            path: path.to_path_buf(),
            file,
            len,
            live,
            poisoned: false,
        })
    }

    /// The journal file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The live state (latest value per key).
    pub(crate) fn live(&self) -> &LiveMap {
        &self.live
    }

    /// Appends encoded frames (not durable until the flusher syncs the file) and applies them
    /// to the live map. `records` are in submission order.
    ///
    /// Correctness rules:
    /// 1. On error nothing changed (file cut back to `len`, live map untouched), so the same
    ///    `records` may be appended again; an error that is not
    ///    [`is_no_space`](super::nospace::is_no_space) is fatal (and after a failed cut every
    ///    later call fails).
    pub(crate) fn append(&mut self, records: &[(Vec<u8>, Option<Vec<u8>>)]) -> io::Result<()> {
        if self.poisoned {
            return Err(io::Error::other(format!(
                "raft state journal {} holds bytes after its last good frame (a failed append \
                 could not be cut back); refusing to append",
                self.path.display()
            )));
        }
        let mut buf = Vec::new();
        for (k, v) in records {
            encode_frame(k, v.as_deref(), &mut buf)?;
        }
        if let Err(e) = super::nospace::write_all(&mut self.file, &self.path, &buf) {
            if let Err(cut) = self.file.set_len(self.len) {
                self.poisoned = true;
                return Err(io::Error::other(format!(
                    "append to raft state journal {} failed ({e}) and cutting it back to {} \
                     bytes failed too: {cut}",
                    self.path.display(),
                    self.len
                )));
            }
            return Err(e);
        }
        powerloss::wrote(&self.path, self.len, self.len + buf.len() as u64);
        self.len += buf.len() as u64;
        for (k, v) in records {
            match v {
                Some(v) => self.live.insert(k.clone(), v.clone()),
                None => self.live.remove(k),
            };
        }
        Ok(())
    }

    /// A handle for `fdatasync` from another thread, and the file's path.
    pub(crate) fn sync_handle(&self) -> io::Result<(File, PathBuf)> {
        Ok((self.file.try_clone()?, self.path.clone()))
    }

    /// Rewrites the file with only the live records when it has grown large and mostly stale.
    /// Returns whether it compacted.
    pub(crate) fn maybe_compact(&mut self) -> io::Result<bool> {
        if self.len < COMPACT_MIN_BYTES {
            return Ok(false);
        }
        let mut buf = Vec::with_capacity(HEADER_LEN + self.live.len() * 64);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&VERSION.to_le_bytes());
        for (k, v) in &self.live {
            encode_frame(k, Some(v), &mut buf)?;
        }
        if (buf.len() as u64).saturating_mul(4) > self.len {
            return Ok(false);
        }
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let written = (|| {
            let mut f = File::create(&tmp)?;
            powerloss::created(&tmp);
            f.write_all(&buf)?;
            powerloss::sync_file(&f, &tmp, false)
        })();
        if let Err(e) = written {
            // A failed compaction (a full disk, say) must not leave its tmp file taking space.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &self.path)?;
        powerloss::renamed(&tmp, &self.path);
        sync_dir(&self.path)?;
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)?;
        self.len = buf.len() as u64;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file_of(records: &[(Vec<u8>, Option<Vec<u8>>)]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        for (k, v) in records {
            encode_frame(k, v.as_deref(), &mut out).expect("encode");
        }
        out
    }

    fn model(records: &[(Vec<u8>, Option<Vec<u8>>)]) -> HashMap<Vec<u8>, Vec<u8>> {
        let mut m = HashMap::new();
        for (k, v) in records {
            match v {
                Some(v) => m.insert(k.clone(), v.clone()),
                None => m.remove(k),
            };
        }
        m
    }

    fn arb_records() -> impl Strategy<Value = Vec<(Vec<u8>, Option<Vec<u8>>)>> {
        proptest::collection::vec(
            (
                proptest::collection::vec(0u8..4, 1..3),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
            ),
            0..30,
        )
    }

    proptest! {
        #[test]
        fn replay_matches_the_model(records in arb_records()) {
            let bytes = file_of(&records);
            let (map, valid) = replay(&bytes).expect("replay");
            prop_assert_eq!(valid, bytes.len());
            prop_assert_eq!(map, model(&records));
        }

        #[test]
        fn a_cut_or_corrupt_tail_keeps_a_prefix(records in arb_records(), cut in any::<prop::sample::Index>(), flip in any::<u8>()) {
            let bytes = file_of(&records);
            let at = HEADER_LEN + cut.index(bytes.len() - HEADER_LEN + 1);
            let mut damaged = bytes[..at].to_vec();
            if let Some(b) = damaged.last_mut() {
                if at > HEADER_LEN {
                    *b ^= flip | 1;
                }
            }
            let (map, valid) = replay(&damaged).expect("replay");
            prop_assert!(valid <= damaged.len());
            // The valid prefix is exactly some prefix of the records.
            let ok = (0..=records.len()).any(|n| {
                let f = file_of(&records[..n]);
                f.len() == valid && model(&records[..n]) == map
            });
            prop_assert!(ok);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut b = bytes.clone();
            if b.len() >= 8 {
                b[..4].copy_from_slice(MAGIC);
                b[4..8].copy_from_slice(&VERSION.to_le_bytes());
            }
            let _ = replay(&b);
            let _ = replay(&bytes);
        }
    }

    #[test]
    fn open_append_reopen_and_compact() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("journal");
        let mut j = Journal::open(&p)?;
        assert!(j.live().is_empty());
        for i in 0..300_000u32 {
            j.append(&[(b"g1".to_vec(), Some(i.to_le_bytes().to_vec()))])?;
        }
        j.append(&[
            (b"g2".to_vec(), Some(b"x".to_vec())),
            (b"g3".to_vec(), Some(b"y".to_vec())),
            (b"g3".to_vec(), None),
        ])?;
        let before = j.len;
        assert!(j.maybe_compact()?);
        assert!(j.len < before);
        j.append(&[(b"g4".to_vec(), Some(b"z".to_vec()))])?;
        drop(j);
        let j = Journal::open(&p)?;
        let live = j.live();
        assert_eq!(live.len(), 3);
        assert_eq!(
            live.get(&b"g1".to_vec()),
            Some(&299_999u32.to_le_bytes().to_vec())
        );
        assert_eq!(live.get(&b"g4".to_vec()), Some(&b"z".to_vec()));
        assert!(!live.contains_key(&b"g3".to_vec()));
        // A torn tail is cut at open.
        drop(j);
        let mut bytes = fs::read(&p)?;
        bytes.extend_from_slice(&[9, 0, 0, 0, 1, 2]);
        fs::write(&p, &bytes)?;
        let j = Journal::open(&p)?;
        assert_eq!(j.live().len(), 3);
        assert_eq!(fs::metadata(&p)?.len(), j.len);
        Ok(())
    }

    #[test]
    fn a_failed_append_is_cut_back_and_changes_nothing() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("journal");
        let mut j = Journal::open(&p)?;
        j.append(&[(b"a".to_vec(), Some(b"1".to_vec()))])?;
        let good = fs::metadata(&p)?.len();
        super::super::nospace::inject_full(&p, 1);
        let rec = [(b"a".to_vec(), Some(b"2".to_vec()))];
        let e = j
            .append(&rec)
            .err()
            .ok_or_else(|| io::Error::other("no failure"))?;
        assert!(super::super::nospace::is_no_space(&e), "{e}");
        assert_eq!(fs::metadata(&p)?.len(), good);
        assert_eq!(j.live().get(b"a".as_slice()), Some(&b"1".to_vec()));
        j.append(&rec)?;
        drop(j);
        let bytes = fs::read(&p)?;
        let (live, valid) = replay(&bytes)?;
        assert_eq!(valid, bytes.len(), "garbage after the last frame");
        assert_eq!(live.get(b"a".as_slice()), Some(&b"2".to_vec()));
        Ok(())
    }
}
