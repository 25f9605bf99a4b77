//! Fuzzes the decoder of sealed values (encryption at rest) and the master key parser: they
//! must never panic, and no input may open under a fixed key unless it was sealed with it.
#![no_main]

use drawbridge_server::encryption::Keyring;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Keyring::from_material(Some(data), Some(data));
    let Ok(k) = Keyring::from_material(Some(b"0123456789abcdef0123456789abcdef"), None) else {
        return;
    };
    let Ok(dk) = k.new_data_key("fuzz", 0, 0) else {
        return;
    };
    let Ok(c) = k.cipher("fuzz", 0, &[dk]) else {
        return;
    };
    assert!(c.open(0, data).is_err());
});
