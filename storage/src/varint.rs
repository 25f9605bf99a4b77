//! LEB128 unsigned varints and zig-zag signed varints.
//!
//! Invariants: a varint is at most 10 bytes; decoding never reads past the slice, rejects an
//! 11th continuation byte and a 10th byte that would overflow 64 bits.

use crate::error::DecodeError;

/// Maximum encoded length of a u64.
pub(crate) const MAX_VARINT_LEN: usize = 10;

/// Appends `v` as an unsigned LEB128 varint.
#[inline]
pub(crate) fn put_uvarint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Reads an unsigned varint at `*pos`, advancing it.
#[inline]
pub(crate) fn get_uvarint(buf: &[u8], pos: &mut usize) -> Result<u64, DecodeError> {
    let mut result: u64 = 0;
    let mut shift = 0u32;
    for i in 0..MAX_VARINT_LEN {
        let Some(&byte) = buf.get(*pos + i) else {
            return Err(DecodeError::Truncated {
                needed: (*pos + i + 1) as u64,
                available: buf.len() as u64,
            });
        };
        if i == MAX_VARINT_LEN - 1 && byte > 1 {
            return Err(DecodeError::VarintOverflow);
        }
        result |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            *pos += i + 1;
            return Ok(result);
        }
        shift += 7;
    }
    Err(DecodeError::VarintOverflow)
}

/// Zig-zag maps a signed integer to an unsigned one (small magnitudes → small values).
#[inline]
pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Inverse of [`zigzag`].
#[inline]
pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Encoded length of `v`.
#[inline]
pub(crate) fn uvarint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrip(v in any::<u64>()) {
            let mut b = Vec::new();
            put_uvarint(&mut b, v);
            prop_assert_eq!(b.len(), uvarint_len(v));
            let mut pos = 0;
            prop_assert_eq!(get_uvarint(&b, &mut pos), Ok(v));
            prop_assert_eq!(pos, b.len());
        }

        #[test]
        fn zigzag_roundtrip(v in any::<i64>()) {
            prop_assert_eq!(unzigzag(zigzag(v)), v);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut pos = 0;
            let _ = get_uvarint(&b, &mut pos);
            prop_assert!(pos <= b.len());
        }
    }

    #[test]
    fn overflow_rejected() {
        let b = [0xffu8; 11];
        assert_eq!(get_uvarint(&b, &mut 0), Err(DecodeError::VarintOverflow));
        let mut b = vec![0xffu8; 9];
        b.push(0x02);
        assert_eq!(get_uvarint(&b, &mut 0), Err(DecodeError::VarintOverflow));
        assert!(matches!(
            get_uvarint(&[0x80], &mut 0),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
