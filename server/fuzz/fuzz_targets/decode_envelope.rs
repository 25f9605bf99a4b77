//! Fuzzes the Liftbridge envelope decoders: they must never panic, and whatever they accept
//! must re-encode to bytes that decode to the same message.
#![no_main]

use drawbridge_server::envelope::{self, MsgType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = envelope::decode_publish(data) {
        let again = envelope::encode(
            MsgType::Publish,
            &msg,
            data.get(6).is_some_and(|f| f & 1 == 1),
        );
        assert_eq!(envelope::decode_publish(&again).ok(), Some(msg));
    }
    if let Ok(ack) = envelope::decode_ack(data) {
        let again = envelope::encode_ack(&ack);
        assert_eq!(envelope::decode_ack(&again).ok(), Some(ack));
    }
});
