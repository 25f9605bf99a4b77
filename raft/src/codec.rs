//! The one binary encoding used for openraft payloads on the wire and for small files on disk.
//!
//! Invariant: both ends of a connection and a node across restarts run the same crate version;
//! the encoding is postcard (compact, non-self-describing). Decoding never panics: bad bytes
//! become [`RaftError::Decode`] / `io::Error` with kind `InvalidData`.

use std::io;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::RaftError;

/// Encodes a value. Fails only on types serde cannot represent (a bug, reported as an error).
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, RaftError> {
    postcard::to_stdvec(value).map_err(|e| RaftError::Decode {
        what: std::any::type_name::<T>(),
        reason: format!("encode: {e}"),
    })
}

/// Decodes a value received from a peer or read from disk.
pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, RaftError> {
    postcard::from_bytes(bytes).map_err(|e| RaftError::Decode {
        what,
        reason: e.to_string(),
    })
}

/// [`encode`] for storage paths that speak `io::Error`.
pub(crate) fn encode_io<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    encode(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// [`decode`] for storage paths that speak `io::Error`.
pub(crate) fn decode_io<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> io::Result<T> {
    decode(what, bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let r: Result<(u64, String), _> = decode("pair", &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert!(r.is_err());
    }
}
