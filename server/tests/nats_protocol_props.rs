//! Property tests for the NATS client-protocol parser (the same decoder the `nats_protocol`
//! fuzz target drives): it never panics, and its output does not depend on how the input is
//! split into reads.

use bytes::{Bytes, BytesMut};
use drawbridge_server::embedded_nats::protocol::{
    ClientOp, ConnectOptions, Limits, Parser, ProtocolError, Publish,
};
use proptest::prelude::*;

const LIMITS: Limits = Limits {
    max_control_line: 256,
    max_payload: 2048,
};

/// Everything a parser yields for `input` delivered in pieces that end at `cuts`: the
/// operations, then the first error if any.
fn run(input: &[u8], cuts: &[usize]) -> (Vec<ClientOp>, Option<ProtocolError>) {
    let mut parser = Parser::new(LIMITS);
    let mut buf = BytesMut::new();
    let mut ops = Vec::new();
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    bounds.push(input.len());
    bounds.sort_unstable();
    let mut start = 0;
    for end in bounds {
        buf.extend_from_slice(&input[start..end]);
        start = end;
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

fn token() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_-]{1,8}"
}

fn subject() -> impl Strategy<Value = String> {
    prop::collection::vec(token(), 1..4).prop_map(|t| t.join("."))
}

fn op() -> impl Strategy<Value = ClientOp> {
    prop_oneof![
        Just(ClientOp::Ping),
        Just(ClientOp::Pong),
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(verbose, echo, headers)| {
            ClientOp::Connect(ConnectOptions {
                verbose,
                echo,
                headers,
                ..ConnectOptions::default()
            })
        }),
        (subject(), prop::option::of(token()), token()).prop_map(|(subject, queue, sid)| {
            ClientOp::Sub {
                subject,
                queue,
                sid,
            }
        }),
        (token(), prop::option::of(0u64..1000)).prop_map(|(sid, max)| ClientOp::Unsub { sid, max }),
        (
            subject(),
            prop::option::of(subject()),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
            prop::collection::vec(any::<u8>(), 0..600),
        )
            .prop_map(|(subject, reply, headers, payload)| {
                ClientOp::Pub(Publish {
                    subject,
                    reply,
                    headers: headers.map(Bytes::from),
                    payload: Bytes::from(payload),
                })
            }),
    ]
}

fn encode(op: &ClientOp, lowercase: bool, out: &mut Vec<u8>) {
    let verb = |v: &str| {
        if lowercase {
            v.to_ascii_lowercase()
        } else {
            v.to_owned()
        }
    };
    match op {
        ClientOp::Ping => out.extend_from_slice(format!("{}\r\n", verb("PING")).as_bytes()),
        ClientOp::Pong => out.extend_from_slice(format!("{}\r\n", verb("PONG")).as_bytes()),
        ClientOp::Connect(o) => out.extend_from_slice(
            format!(
                "{} {{\"verbose\":{},\"echo\":{},\"headers\":{}}}\r\n",
                verb("CONNECT"),
                o.verbose,
                o.echo,
                o.headers
            )
            .as_bytes(),
        ),
        ClientOp::Sub {
            subject,
            queue,
            sid,
        } => {
            let q = queue.as_ref().map(|q| format!(" {q}")).unwrap_or_default();
            out.extend_from_slice(format!("{} {subject}{q} {sid}\r\n", verb("SUB")).as_bytes());
        }
        ClientOp::Unsub { sid, max } => {
            let m = max.map(|m| format!(" {m}")).unwrap_or_default();
            out.extend_from_slice(format!("{}\t{sid}{m}\r\n", verb("UNSUB")).as_bytes());
        }
        ClientOp::Pub(p) => {
            let r = p
                .reply
                .as_ref()
                .map(|r| format!(" {r}"))
                .unwrap_or_default();
            match &p.headers {
                Some(h) => out.extend_from_slice(
                    format!(
                        "{} {}{r} {} {}\r\n",
                        verb("HPUB"),
                        p.subject,
                        h.len(),
                        h.len() + p.payload.len()
                    )
                    .as_bytes(),
                ),
                None => out.extend_from_slice(
                    format!("{}  {}{r} {}\r\n", verb("PUB"), p.subject, p.payload.len()).as_bytes(),
                ),
            }
            if let Some(h) = &p.headers {
                out.extend_from_slice(h);
            }
            out.extend_from_slice(&p.payload);
            out.extend_from_slice(b"\r\n");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes, in arbitrary pieces, never panic, and the pieces do not matter.
    #[test]
    fn arbitrary_bytes_never_panic_and_chunking_is_irrelevant(
        input in prop::collection::vec(any::<u8>(), 0..2048),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let whole = run(&input, &[]);
        let chunked = run(&input, &cuts);
        prop_assert_eq!(whole, chunked);
    }

    /// Protocol-shaped noise (verbs, spaces, digits, CRLF) reaches deeper parser states.
    #[test]
    fn protocol_like_noise_never_panics(
        parts in prop::collection::vec(
            prop_oneof![
                Just(b"PUB ".to_vec()), Just(b"HPUB ".to_vec()), Just(b"SUB ".to_vec()),
                Just(b"UNSUB ".to_vec()), Just(b"PING".to_vec()), Just(b"CONNECT {}".to_vec()),
                Just(b"\r\n".to_vec()), Just(b"\n".to_vec()), Just(b" ".to_vec()),
                "[0-9]{1,5}".prop_map(String::into_bytes),
                "[a-z.*>]{1,6}".prop_map(String::into_bytes),
            ],
            0..64,
        ),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let input = parts.concat();
        prop_assert_eq!(run(&input, &[]), run(&input, &cuts));
    }

    /// A valid stream parses back to the operations it encodes, however it is split.
    #[test]
    fn valid_streams_round_trip_in_any_chunking(
        ops in prop::collection::vec(op(), 0..24),
        lowercase in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..32),
    ) {
        let mut input = Vec::new();
        for op in &ops {
            encode(op, lowercase, &mut input);
        }
        let (whole, err) = run(&input, &[]);
        prop_assert_eq!(err, None);
        prop_assert_eq!(&whole, &ops);
        let (chunked, err) = run(&input, &cuts);
        prop_assert_eq!(err, None);
        prop_assert_eq!(&chunked, &ops);
    }
}
