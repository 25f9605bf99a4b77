//! [`MetaState`] (what a group persists that is not a log entry: vote, committed log id, last
//! purged log id — stored as one record per group in the node's
//! [`journal`](super::journal)), and small framed files replaced atomically (state machine
//! snapshots).
//!
//! Framed file format: `b"DBRM" | len: u32 LE | crc32: u32 LE | postcard(value)`.
//!
//! Invariants:
//! - A framed file is replaced atomically: write `<name>.tmp`, fsync it, rename over `<name>`,
//!   fsync the directory. A crash leaves either the old or the new value, never a mix.
//! - Every sync, create and rename is reported to `drawbridge_storage::powerloss` (no-ops
//!   outside the power-loss tests).
//! - A file that fails its checksum is an error at open, never silently reset.
//! - A replacement that fails before its rename removes its tmp file (best effort) and leaves
//!   the old file as it was, so a full disk is not kept full by a half-written snapshot and
//!   the caller may give up or retry ([`super::nospace`] says which).

use std::fs;
use std::fs::File;
use std::io;
use std::path::Path;
use std::path::PathBuf;

use drawbridge_storage::powerloss;
use serde::Deserialize;
use serde::Serialize;
use tracing::warn;

use super::nospace;
use crate::codec;

const MAGIC: &[u8; 4] = b"DBRM";

/// The persisted raft state of one group that is not a log entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MetaState<V, L> {
    /// Last vote saved by `save_vote`.
    pub(crate) vote: Option<V>,
    /// Last committed log id saved by `save_committed`.
    pub(crate) committed: Option<L>,
    /// Greatest purged log id.
    pub(crate) last_purged: Option<L>,
}

/// Reads a framed, checksummed value written by [`store_framed`]; `None` if the file is absent.
pub(crate) fn load_framed<T: for<'de> Deserialize<'de>>(
    path: &Path,
    what: &'static str,
) -> io::Result<Option<T>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {why}", path.display()),
        )
    };
    if bytes.len() < 12 || &bytes[..4] != MAGIC {
        return Err(bad("not a drawbridge raft state file"));
    }
    let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    let crc = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let body = bytes.get(12..12 + len).ok_or_else(|| bad("truncated"))?;
    if crc32fast::hash(body) != crc {
        return Err(bad("checksum mismatch"));
    }
    codec::decode_io(what, body).map(Some)
}

/// Atomically replaces the file at `path` with a framed, checksummed `value`: write a tmp file,
/// fsync it, rename it over `path`, fsync the directory.
///
/// Rules:
/// 1. An error before the rename leaves `path` untouched and removes the tmp file.
/// 2. An error after the rename (the directory fsync) leaves the new value in place, maybe not
///    durable: the caller must treat it as fatal, not as "the old value is still there".
pub(crate) fn store_framed<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let body = codec::encode_io(value)?;
    let mut buf = Vec::with_capacity(body.len() + 12);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    buf.extend_from_slice(&body);
    let tmp = tmp_path(path);
    let replaced = (|| {
        let mut f = File::create(&tmp)?;
        powerloss::created(&tmp);
        nospace::write_all(&mut f, &tmp, &buf)?;
        powerloss::sync_file(&f, &tmp, false)?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = replaced {
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(rm) if rm.kind() == io::ErrorKind::NotFound => {}
            Err(rm) => {
                warn!(path = %tmp.display(), error = %rm, "removing a failed replacement's tmp file")
            }
        }
        return Err(e);
    }
    powerloss::renamed(&tmp, path);
    // Rule 2: whatever its kind, this error must not read as "nothing changed".
    sync_dir(path).map_err(|e| {
        io::Error::other(format!(
            "{} replaced but its directory fsync failed: {e}",
            path.display()
        ))
    })
}

pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".tmp");
    PathBuf::from(p)
}

/// fsyncs the directory holding `path`, so a rename or create in it is durable.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => powerloss::sync_dir(dir),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type S = MetaState<u64, (u64, u64)>;

    #[test]
    fn round_trip_and_missing_is_none() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("meta");
        assert_eq!(load_framed::<S>(&p, "t")?, None);
        let s = S {
            vote: Some(7),
            committed: Some((3, 9)),
            last_purged: Some((2, 4)),
        };
        store_framed(&p, &s)?;
        assert_eq!(load_framed::<S>(&p, "t")?, Some(s));
        Ok(())
    }

    #[test]
    fn a_store_that_finds_the_disk_full_keeps_the_old_value_and_no_tmp() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("snapshot");
        let old = S {
            vote: Some(1),
            ..S::default()
        };
        store_framed(&p, &old)?;
        nospace::inject_full(&tmp_path(&p), 1);
        let new = S {
            vote: Some(2),
            ..S::default()
        };
        let e = store_framed(&p, &new)
            .err()
            .ok_or_else(|| io::Error::other("no failure"))?;
        assert!(nospace::is_no_space(&e), "{e}");
        assert!(!tmp_path(&p).exists(), "the half-written tmp file stayed");
        assert_eq!(load_framed::<S>(&p, "t")?, Some(old));
        store_framed(&p, &new)?;
        assert_eq!(load_framed::<S>(&p, "t")?, Some(new));
        Ok(())
    }

    #[test]
    fn flipped_bit_is_an_error() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("meta");
        store_framed(
            &p,
            &S {
                vote: Some(1),
                ..S::default()
            },
        )?;
        let mut b = fs::read(&p)?;
        let last = b.len() - 1;
        b[last] ^= 0x40;
        fs::write(&p, b)?;
        assert!(load_framed::<S>(&p, "t").is_err());
        Ok(())
    }
}
