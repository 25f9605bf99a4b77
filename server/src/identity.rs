//! This server's identity: its Liftbridge server id (a string clients see in metadata) and the
//! numeric raft node id derived from it.
//!
//! Invariants:
//! - The server id is `clustering.server.id` when configured; otherwise the id stored in
//!   `<data.dir>/server-id` by an earlier run; otherwise a new random id, stored there before it
//!   is used. So a restart with the same data directory keeps its identity.
//! - The raft node id is a pure function of the server id ([`node_id_of`]), so every node can
//!   compute the node id of a peer named in `--raft-bootstrap-peers` without asking it.

use std::path::Path;

use rand::Rng;

use crate::error::{Result, ServerError};

const ID_FILE: &str = "server-id";
const ID_ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The raft node id of a server id: FNV-1a 64 of its bytes, never 0.
pub fn node_id_of(server_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in server_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Fold the high bits into the low ones: the raft layer uses the low 24 bits in proposal tags.
    h ^= h >> 29;
    if h == 0 {
        1
    } else {
        h
    }
}

/// Returns the configured, stored or a new (then stored) server id.
pub fn load_or_create(data_dir: &Path, configured: Option<&str>) -> Result<String> {
    let path = data_dir.join(ID_FILE);
    if let Some(id) = configured {
        if !path.exists() {
            write_id(&path, id)?;
        }
        return Ok(id.to_owned());
    }
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let id = s.trim().to_owned();
            if id.is_empty() {
                return Err(ServerError::Internal(format!(
                    "{} is empty; delete it or set --server-id",
                    path.display()
                )));
            }
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = random_id();
            write_id(&path, &id)?;
            Ok(id)
        }
        Err(e) => Err(ServerError::Internal(format!(
            "reading {}: {e}",
            path.display()
        ))),
    }
}

/// A random 22-character alphanumeric id (like a NATS NUID): server ids and ack inboxes.
pub fn random_id() -> String {
    let mut rng = rand::rng();
    (0..22)
        .map(|_| char::from(ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())]))
        .collect()
}

fn write_id(path: &Path, id: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{id}\n"))
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| ServerError::Internal(format!("writing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_stored() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| ServerError::Internal(e.to_string()))?;
        let a = load_or_create(dir.path(), None)?;
        let b = load_or_create(dir.path(), None)?;
        assert_eq!(a, b);
        assert_eq!(a.len(), 22);
        assert_eq!(node_id_of("a"), node_id_of("a"));
        assert_ne!(node_id_of("a"), node_id_of("b"));
        Ok(())
    }
}
