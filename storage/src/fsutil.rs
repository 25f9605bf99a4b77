//! Thin, typed wrappers over the file-system calls the log needs.
//!
//! Invariants:
//! - Every error names the path and the operation; `ENOSPC`/`EDQUOT` become
//!   [`StorageError::DiskFull`] (see [`StorageError::io`]).
//! - [`preallocate`] reserves blocks with `fallocate(2)` so later writes into the range cannot
//!   fail for lack of space; where the file system has no `fallocate` (`EOPNOTSUPP`,
//!   `ENOSYS`) it falls back to extending the file with `ftruncate` (sparse: a write may then
//!   still fail with `ENOSPC`, which is a typed error because appends use `pwritev(2)`, never a
//!   write through a memory map).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Result, StorageError};
use crate::powerloss;

/// Reserves `[0, len)` of `file` (extending it to at least `len`).
pub(crate) fn preallocate(file: &File, path: &Path, len: u64) -> Result<()> {
    let len_off = libc::off_t::try_from(len).map_err(|_| {
        StorageError::InvalidArgument(format!("preallocation length {len} too large"))
    })?;
    // SAFETY: plain syscall on a valid, owned file descriptor; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len_off) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(code) if code == libc::EOPNOTSUPP || code == libc::ENOSYS => {
            tracing::debug!(path = %path.display(), "fallocate unsupported, extending with ftruncate");
            let cur = file
                .metadata()
                .map_err(|e| StorageError::io("stat", path, e))?
                .len();
            if cur < len {
                file.set_len(len)
                    .map_err(|e| StorageError::io("extending", path, e))?;
            }
            Ok(())
        }
        _ => Err(StorageError::io("preallocating", path, err)),
    }
}

/// Makes `[pos, pos + len)` read as zeros, keeping the file size. Only used on a file's tail:
/// its data ends at `pos` afterwards.
pub(crate) fn zero_range(file: &File, path: &Path, pos: u64, len: u64) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    powerloss::truncated(path, pos);
    if let (Ok(p), Ok(l)) = (libc::off_t::try_from(pos), libc::off_t::try_from(len)) {
        // SAFETY: plain syscall on a valid file descriptor; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                p,
                l,
            )
        };
        if rc == 0 {
            return Ok(());
        }
    }
    // Fallback: write zeros in chunks.
    let zeros = vec![0u8; 64 * 1024];
    let mut at = pos;
    let end = pos + len;
    while at < end {
        let n = (end - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)
            .map_err(|e| StorageError::io("zeroing", path, e))?;
        at += n as u64;
    }
    Ok(())
}

/// `fdatasync(2)` (through [`powerloss`], which records the durable length in test builds).
pub(crate) fn fdatasync(file: &File, path: &Path) -> Result<()> {
    powerloss::sync_file(file, path, true).map_err(|e| StorageError::io("syncing", path, e))
}

/// `fsync(2)` of a directory, making creations, renames and unlinks in it durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    powerloss::sync_dir(dir).map_err(|e| StorageError::io("syncing directory", dir, e))
}

/// Writes all of `bufs` at `pos` with `pwritev(2)`, looping over short writes.
pub(crate) fn pwritev_all(file: &File, path: &Path, mut pos: u64, bufs: &[&[u8]]) -> Result<()> {
    let start = pos;
    let mut idx = 0usize;
    let mut skip = 0usize;
    while idx < bufs.len() {
        if bufs[idx].len() == skip {
            idx += 1;
            skip = 0;
            continue;
        }
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(bufs.len() - idx);
        for (i, b) in bufs[idx..].iter().enumerate() {
            let s = if i == 0 { &b[skip..] } else { &b[..] };
            iov.push(libc::iovec {
                iov_base: s.as_ptr() as *mut libc::c_void,
                iov_len: s.len(),
            });
        }
        let off = libc::off_t::try_from(pos).map_err(|_| {
            StorageError::InvalidArgument(format!("write position {pos} too large"))
        })?;
        let iovcnt = iov.len().min(1024) as libc::c_int;
        // SAFETY: every iovec points into a live slice borrowed for the duration of the call;
        // the kernel only reads from them.
        let n = unsafe { libc::pwritev(file.as_raw_fd(), iov.as_ptr(), iovcnt, off) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(StorageError::io("writing", path, err));
        }
        if n == 0 {
            return Err(StorageError::io(
                "writing",
                path,
                io::Error::from(io::ErrorKind::WriteZero),
            ));
        }
        let mut n = n as usize;
        pos += n as u64;
        while n > 0 && idx < bufs.len() {
            let left = bufs[idx].len() - skip;
            if n >= left {
                n -= left;
                idx += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
    }
    powerloss::wrote(path, start, pos);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pwritev_and_zero_range() -> Result<()> {
        let dir =
            tempfile::tempdir().map_err(|e| StorageError::io("tempdir", Path::new("/tmp"), e))?;
        let path = dir.path().join("f");
        let f = File::options()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| StorageError::io("open", &path, e))?;
        preallocate(&f, &path, 8192)?;
        assert_eq!(
            f.metadata()
                .map_err(|e| StorageError::io("stat", &path, e))?
                .len(),
            8192
        );
        pwritev_all(&f, &path, 10, &[b"abc", b"", b"defg"])?;
        let mut buf = [0u8; 7];
        f.read_exact_at(&mut buf, 10)
            .map_err(|e| StorageError::io("read", &path, e))?;
        assert_eq!(&buf, b"abcdefg");
        zero_range(&f, &path, 12, 3)?;
        f.read_exact_at(&mut buf, 10)
            .map_err(|e| StorageError::io("read", &path, e))?;
        assert_eq!(&buf, b"ab\0\0\0fg");
        fdatasync(&f, &path)?;
        fsync_dir(dir.path())?;
        Ok(())
    }

    #[test]
    fn impossible_preallocation_is_disk_full() -> Result<()> {
        let dir =
            tempfile::tempdir().map_err(|e| StorageError::io("tempdir", Path::new("/tmp"), e))?;
        let path = dir.path().join("huge");
        let f = File::create(&path).map_err(|e| StorageError::io("create", &path, e))?;
        // 8 EiB cannot be reserved on any disk: ENOSPC or EFBIG, both typed, never a panic.
        match preallocate(&f, &path, 1 << 62) {
            Err(StorageError::DiskFull { .. }) | Err(StorageError::Io { .. }) => Ok(()),
            other => panic!("unexpected {other:?}"),
        }
    }
}
