//! Fuzz the decoders of bytes that come from disk or from a raft peer: the batch frame, the
//! record set inside it, and every record. No input may panic; a batch that decodes must
//! re-encode to the same records.
#![no_main]

use bytes::Bytes;
use drawbridge_storage::{decode_batch, encode_records, Record, RecordSet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // 1. The data as an on-disk batch (frame CRC, header, record-set header).
    if let Ok(d) = decode_batch(data) {
        assert!(d.body.end <= data.len());
        let _ = d.verify_records(data);
        if d.records.is_some() {
            if let Ok(set) = RecordSet::parse(Bytes::copy_from_slice(&data[d.body.clone()])) {
                let _ = set.verify();
                for r in set.records(d.header.base_offset).take(10_000) {
                    let _ = r;
                }
            }
        }
    }
    // 2. The data as a record set (a raft entry payload from a peer).
    if let Ok(set) = RecordSet::parse(Bytes::copy_from_slice(data)) {
        if set.verify().is_ok() {
            let records: Vec<Record> = set
                .records(0)
                .map(|r| r.map(|v| v.to_record()))
                .collect::<Result<_, _>>()
                .expect("verified sets decode");
            if !records.is_empty() {
                let again = encode_records(&records).expect("non-empty");
                let set2 = RecordSet::parse(again).expect("re-encoded set parses");
                let back: Vec<Record> = set2
                    .records(0)
                    .map(|r| r.map(|v| v.to_record()))
                    .collect::<Result<_, _>>()
                    .expect("re-encoded set decodes");
                // Compacted sets may have offset gaps; content must match.
                assert_eq!(records, back);
            }
        }
    }
    // 3. The same bytes with a correct records CRC, so the record decoder itself is reached
    //    (a random CRC almost never matches).
    if data.len() >= 32 {
        let mut fixed = data.to_vec();
        let crc = crc32c::crc32c(&fixed[32..]);
        fixed[0..4].copy_from_slice(&crc.to_le_bytes());
        if let Ok(set) = RecordSet::parse(Bytes::from(fixed)) {
            let _ = set.verify();
            for r in set.records(u64::MAX - u64::from(u32::MAX)).take(10_000) {
                let _ = r;
            }
        }
    }
});
