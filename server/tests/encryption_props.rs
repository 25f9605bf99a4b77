//! Property tests for the sealed value format of encryption at rest (the decoder the
//! `open_sealed_value` fuzz target drives): round trips for any value and position, arbitrary
//! bytes and any single flipped bit or other position are errors (never a panic, never
//! garbage), and arbitrary key material never panics the key parser.

use drawbridge_server::encryption::{Keyring, PartitionCipher, OVERHEAD};
use proptest::prelude::*;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn cipher(stream: &str, partition: i32) -> PartitionCipher {
    let k = Keyring::from_material(Some(KEY), None).expect("key");
    let dk = k.new_data_key(stream, partition, 0).expect("data key");
    k.cipher(stream, partition, &[dk]).expect("cipher")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn seal_then_open_round_trips(
        value in prop::collection::vec(any::<u8>(), 0..2048),
        offset in any::<u64>(),
        stream in "[a-z0-9._-]{1,24}",
        partition in 0i32..1000,
    ) {
        let c = cipher(&stream, partition);
        let sealed = c.seal(offset, &value).expect("seal");
        prop_assert_eq!(sealed.len(), value.len() + OVERHEAD);
        prop_assert_eq!(c.open(offset, &sealed).expect("open"), value);
    }

    #[test]
    fn flipped_bits_and_other_offsets_are_errors(
        value in prop::collection::vec(any::<u8>(), 0..256),
        offset in 0u64..u64::MAX,
        bit in any::<prop::sample::Index>(),
    ) {
        let c = cipher("s", 0);
        let sealed = c.seal(offset, &value).expect("seal");
        let mut t = sealed.clone();
        let i = bit.index(t.len() * 8);
        t[i / 8] ^= 1 << (i % 8);
        prop_assert!(c.open(offset, &t).is_err());
        prop_assert!(c.open(offset + 1, &sealed).is_err());
        prop_assert!(c.open(offset, &sealed[..sealed.len() - 1]).is_err());
    }

    #[test]
    fn arbitrary_bytes_are_errors_not_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        offset in any::<u64>(),
    ) {
        prop_assert!(cipher("s", 0).open(offset, &bytes).is_err());
    }

    #[test]
    fn arbitrary_key_material_never_panics(
        current in prop::collection::vec(any::<u8>(), 0..96),
        old in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let _ = Keyring::from_material(Some(&current), Some(&old));
    }
}
