//! Fuzzes the NATS client-protocol parser: it must never panic, and feeding the input in
//! pieces (sizes taken from the first bytes) must give the same operations and the same first
//! error as feeding it whole.
#![no_main]

use bytes::BytesMut;
use drawbridge_server::embedded_nats::protocol::{ClientOp, Limits, Parser, ProtocolError};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_control_line: 512,
    max_payload: 4096,
};

fn run(pieces: &[&[u8]]) -> (Vec<ClientOp>, Option<ProtocolError>) {
    let mut parser = Parser::new(LIMITS);
    let mut buf = BytesMut::new();
    let mut ops = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match parser.parse(&mut buf) {
                Ok(Some(op)) => ops.push(op),
                Ok(None) => break,
                Err(e) => return (ops, Some(e)),
            }
        }
    }
    (ops, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(seed % 17) + 1;
    let pieces: Vec<&[u8]> = input.chunks(step).collect();
    assert_eq!(run(&[input]), run(&pieces));
});
