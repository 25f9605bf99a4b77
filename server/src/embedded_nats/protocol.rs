//! Incremental parser for the client side of the core NATS protocol.
//!
//! The reader appends whatever the socket returns to a `BytesMut`; [`Parser::parse`] takes
//! complete operations off its front, one per call, and returns `Ok(None)` when it needs more
//! bytes. Operations: `CONNECT {json}`, `PUB subj [reply] size`, `HPUB subj [reply] hdr total`,
//! `SUB subj [queue] sid`, `UNSUB sid [max]`, `PING`, `PONG`. Verbs are case-insensitive,
//! arguments are separated by spaces or tabs, a control line ends with `\n` (an optional `\r`
//! before it is dropped), and a payload is followed by exactly `\r\n`.
//!
//! Invariants:
//! 1. Never panics and never indexes out of bounds, whatever the bytes.
//! 2. Parsing is independent of how the input is chunked: feeding a stream in any number of
//!    pieces yields the same operations (and the same first error) as feeding it whole.
//! 3. Memory is bounded: a control line may not exceed `max_control_line` bytes (a `CONNECT`
//!    line may use up to [`MAX_CONNECT_LINE`]), and a payload may not exceed `max_payload`
//!    bytes; both are rejected as soon as the length is known, before buffering the body.
//! 4. Any `Err` is fatal for the connection: the byte stream cannot be resynchronised.
//! 5. Payloads are split off the read buffer without copying (`BytesMut::split_to`).

use bytes::{Buf, Bytes, BytesMut};
use serde::Deserialize;

/// Limit for a `CONNECT` control line, which carries JSON (credentials, JWTs) and so may be
/// longer than other control lines.
pub const MAX_CONNECT_LINE: usize = 64 * 1024;

/// Options a client sends in `CONNECT`. Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ConnectOptions {
    /// Acknowledge every well-formed operation with `+OK`.
    pub verbose: bool,
    /// Strict checking (we always validate subjects, so this changes nothing).
    pub pedantic: bool,
    /// The client understands `HMSG`.
    pub headers: bool,
    /// The client wants to receive messages it published itself.
    pub echo: bool,
    /// The client wants a `503` status message when a request has no responders.
    pub no_responders: bool,
    /// Client name, for logs.
    pub name: Option<String>,
    /// Client library language, for logs.
    pub lang: Option<String>,
    /// Client library version, for logs.
    pub version: Option<String>,
    /// Protocol level the client speaks.
    pub protocol: i64,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            verbose: false,
            pedantic: false,
            headers: false,
            echo: true,
            no_responders: false,
            name: None,
            lang: None,
            version: None,
            protocol: 0,
        }
    }
}

/// A message a client publishes (`PUB` or `HPUB`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Subject, not yet validated (the connection checks it is literal).
    pub subject: String,
    /// Reply subject, if any.
    pub reply: Option<String>,
    /// The `NATS/1.0` header block (including its final blank line), for `HPUB`.
    pub headers: Option<Bytes>,
    /// The message body.
    pub payload: Bytes,
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp {
    /// `CONNECT {...}`
    Connect(ConnectOptions),
    /// `PUB` or `HPUB` with its payload.
    Pub(Publish),
    /// `SUB subject [queue] sid`
    Sub {
        /// Pattern, not yet validated.
        subject: String,
        /// Queue group.
        queue: Option<String>,
        /// Client-chosen subscription id.
        sid: String,
    },
    /// `UNSUB sid [max]`
    Unsub {
        /// Subscription id.
        sid: String,
        /// Auto-unsubscribe after this many messages in total.
        max: Option<u64>,
    },
    /// `PING`
    Ping,
    /// `PONG`
    Pong,
}

/// A fatal protocol error; the connection is closed after reporting it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The verb is not a client operation.
    #[error("unknown protocol operation")]
    UnknownOperation,
    /// A control line exceeded the limit.
    #[error("control line longer than {limit} bytes")]
    ControlLineTooLong {
        /// The limit that applied.
        limit: usize,
    },
    /// A payload size exceeded `max_payload`.
    #[error("payload of {size} bytes exceeds max_payload {limit}")]
    MaxPayload {
        /// Announced size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Arguments of a known operation are malformed.
    #[error("invalid arguments for {op}: {reason}")]
    InvalidArguments {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The payload was not followed by `\r\n`.
    #[error("payload not terminated by CRLF")]
    MissingPayloadTerminator,
    /// `CONNECT` JSON did not parse.
    #[error("invalid CONNECT options: {0}")]
    InvalidConnect(String),
}

impl ProtocolError {
    /// The text nats-server sends in `-ERR '<text>'` for this error.
    pub fn wire_text(&self) -> &'static str {
        match self {
            ProtocolError::UnknownOperation => "Unknown Protocol Operation",
            ProtocolError::ControlLineTooLong { .. } => "Maximum Control Line Exceeded",
            ProtocolError::MaxPayload { .. } => "Maximum Payload Violation",
            ProtocolError::InvalidArguments { .. } | ProtocolError::MissingPayloadTerminator => {
                "Parser Error"
            }
            ProtocolError::InvalidConnect(_) => "Invalid Connect Options",
        }
    }
}

/// Limits the parser enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum length of a control line, excluding `\r\n`.
    pub max_control_line: usize,
    /// Maximum total size of a published message (headers plus body).
    pub max_payload: usize,
}

#[derive(Debug)]
enum State {
    /// Waiting for a control line; `scanned` bytes of the buffer hold no `\n`.
    Line { scanned: usize },
    /// A `PUB`/`HPUB` line was read; waiting for `total` payload bytes and `\r\n`.
    Payload {
        subject: String,
        reply: Option<String>,
        header_len: Option<usize>,
        total: usize,
    },
}

/// The incremental parser; one per connection.
#[derive(Debug)]
pub struct Parser {
    limits: Limits,
    state: State,
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: State::Line { scanned: 0 },
        }
    }

    /// How many more bytes the parser needs before it can make progress, if known (used to
    /// size the next read for large payloads).
    pub fn bytes_wanted(&self, buffered: usize) -> Option<usize> {
        match &self.state {
            State::Payload { total, .. } => Some((total + 2).saturating_sub(buffered)),
            State::Line { .. } => None,
        }
    }

    /// Takes the next complete operation off the front of `buf`.
    ///
    /// Returns `Ok(None)` when more bytes are needed; the bytes already in `buf` stay there.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<ClientOp>, ProtocolError> {
        loop {
            match &mut self.state {
                State::Line { scanned } => {
                    // `scanned` only grows while the caller appends, but never trust it to
                    // index: a caller could have cleared the buffer.
                    let from = (*scanned).min(buf.len());
                    *scanned = from;
                    let Some(rel) = buf[from..].iter().position(|&b| b == b'\n') else {
                        *scanned = buf.len();
                        self.check_partial_line(buf)?;
                        return Ok(None);
                    };
                    let nl = *scanned + rel;
                    self.state = State::Line { scanned: 0 };
                    let line = buf.split_to(nl + 1);
                    let mut line = &line[..nl];
                    if let [rest @ .., b'\r'] = line {
                        line = rest;
                    }
                    if let Some(op) = self.parse_line(line)? {
                        return Ok(Some(op));
                    }
                }
                State::Payload { total, .. } => {
                    let total = *total;
                    if buf.len() < total + 2 {
                        return Ok(None);
                    }
                    let State::Payload {
                        subject,
                        reply,
                        header_len,
                        ..
                    } = std::mem::replace(&mut self.state, State::Line { scanned: 0 })
                    else {
                        return Ok(None);
                    };
                    let mut body = buf.split_to(total).freeze();
                    if &buf[..2] != b"\r\n" {
                        return Err(ProtocolError::MissingPayloadTerminator);
                    }
                    buf.advance(2);
                    let headers = header_len.map(|h| body.split_to(h));
                    return Ok(Some(ClientOp::Pub(Publish {
                        subject,
                        reply,
                        headers,
                        payload: body,
                    })));
                }
            }
        }
    }

    /// Rejects an unterminated control line as soon as it is longer than any allowed line.
    fn check_partial_line(&self, buf: &[u8]) -> Result<(), ProtocolError> {
        let limit = self.line_limit(buf);
        if buf.len() > limit + 2 {
            return Err(ProtocolError::ControlLineTooLong { limit });
        }
        Ok(())
    }

    fn line_limit(&self, line: &[u8]) -> usize {
        let is_connect = line.len() >= 7 && line[..7].eq_ignore_ascii_case(b"CONNECT");
        if is_connect {
            MAX_CONNECT_LINE.max(self.limits.max_control_line)
        } else {
            self.limits.max_control_line
        }
    }

    /// Parses one control line (without its line ending). `Ok(None)` for an empty line, or for
    /// a `PUB`/`HPUB` line after which the payload state has been entered.
    fn parse_line(&mut self, line: &[u8]) -> Result<Option<ClientOp>, ProtocolError> {
        let limit = self.line_limit(line);
        if line.len() > limit {
            return Err(ProtocolError::ControlLineTooLong { limit });
        }
        let trimmed = trim_start(line);
        if trimmed.is_empty() {
            return Ok(None);
        }
        let verb_end = trimmed
            .iter()
            .position(|b| is_space(*b))
            .unwrap_or(trimmed.len());
        let (verb, rest) = trimmed.split_at(verb_end);
        let verb_is = |v: &str| verb.eq_ignore_ascii_case(v.as_bytes());
        if verb_is("PUB") {
            self.parse_pub(rest, false)
        } else if verb_is("HPUB") {
            self.parse_pub(rest, true)
        } else if verb_is("SUB") {
            parse_sub(rest).map(Some)
        } else if verb_is("UNSUB") {
            parse_unsub(rest).map(Some)
        } else if verb_is("PING") {
            Ok(Some(ClientOp::Ping))
        } else if verb_is("PONG") {
            Ok(Some(ClientOp::Pong))
        } else if verb_is("CONNECT") {
            let json = trim_start(rest);
            serde_json::from_slice::<ConnectOptions>(json)
                .map(|o| Some(ClientOp::Connect(o)))
                .map_err(|e| ProtocolError::InvalidConnect(e.to_string()))
        } else {
            Err(ProtocolError::UnknownOperation)
        }
    }

    fn parse_pub(
        &mut self,
        rest: &[u8],
        with_headers: bool,
    ) -> Result<Option<ClientOp>, ProtocolError> {
        let op = if with_headers { "HPUB" } else { "PUB" };
        let args = split_args::<4>(rest).ok_or(ProtocolError::InvalidArguments {
            op,
            reason: "too many arguments",
        })?;
        let n_sizes = if with_headers { 2 } else { 1 };
        let (names, sizes) = match args.len().checked_sub(n_sizes) {
            Some(n @ 1..=2) => args.split_at(n),
            _ => {
                return Err(ProtocolError::InvalidArguments {
                    op,
                    reason: "wrong number of arguments",
                })
            }
        };
        let subject = utf8(names[0], op)?;
        let reply = names.get(1).map(|r| utf8(r, op)).transpose()?;
        let total = parse_size(sizes[sizes.len() - 1], op)?;
        let header_len = if with_headers {
            let h = parse_size(sizes[0], op)?;
            if h > total {
                return Err(ProtocolError::InvalidArguments {
                    op,
                    reason: "header size larger than total size",
                });
            }
            Some(h)
        } else {
            None
        };
        if total > self.limits.max_payload {
            return Err(ProtocolError::MaxPayload {
                size: total,
                limit: self.limits.max_payload,
            });
        }
        self.state = State::Payload {
            subject,
            reply,
            header_len,
            total,
        };
        Ok(None)
    }
}

fn parse_sub(rest: &[u8]) -> Result<ClientOp, ProtocolError> {
    const OP: &str = "SUB";
    let args = split_args::<3>(rest).ok_or(ProtocolError::InvalidArguments {
        op: OP,
        reason: "too many arguments",
    })?;
    match args.as_slice() {
        [subject, sid] => Ok(ClientOp::Sub {
            subject: utf8(subject, OP)?,
            queue: None,
            sid: utf8(sid, OP)?,
        }),
        [subject, queue, sid] => Ok(ClientOp::Sub {
            subject: utf8(subject, OP)?,
            queue: Some(utf8(queue, OP)?),
            sid: utf8(sid, OP)?,
        }),
        _ => Err(ProtocolError::InvalidArguments {
            op: OP,
            reason: "wrong number of arguments",
        }),
    }
}

fn parse_unsub(rest: &[u8]) -> Result<ClientOp, ProtocolError> {
    const OP: &str = "UNSUB";
    let args = split_args::<2>(rest).ok_or(ProtocolError::InvalidArguments {
        op: OP,
        reason: "too many arguments",
    })?;
    match args.as_slice() {
        [sid] => Ok(ClientOp::Unsub {
            sid: utf8(sid, OP)?,
            max: None,
        }),
        [sid, max] => Ok(ClientOp::Unsub {
            sid: utf8(sid, OP)?,
            max: Some(parse_size(max, OP)? as u64),
        }),
        _ => Err(ProtocolError::InvalidArguments {
            op: OP,
            reason: "wrong number of arguments",
        }),
    }
}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_start(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !is_space(*b)).unwrap_or(s.len());
    &s[start..]
}

/// Splits on runs of spaces/tabs; `None` if there are more than `N` arguments.
fn split_args<const N: usize>(s: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::with_capacity(N);
    for arg in s.split(|b| is_space(*b)).filter(|a| !a.is_empty()) {
        if out.len() == N {
            return None;
        }
        out.push(arg);
    }
    Some(out)
}

fn utf8(bytes: &[u8], op: &'static str) -> Result<String, ProtocolError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| ProtocolError::InvalidArguments {
            op,
            reason: "argument is not valid UTF-8",
        })
}

/// Parses a non-negative decimal size. Rejects signs, non-digits and overflow.
fn parse_size(bytes: &[u8], op: &'static str) -> Result<usize, ProtocolError> {
    const BAD: &str = "size is not a non-negative decimal number";
    if bytes.is_empty() || bytes.len() > 19 {
        return Err(ProtocolError::InvalidArguments { op, reason: BAD });
    }
    let mut n: usize = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return Err(ProtocolError::InvalidArguments { op, reason: BAD });
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(usize::from(b - b'0')))
            .ok_or(ProtocolError::InvalidArguments { op, reason: BAD })?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_control_line: 4096,
            max_payload: 1024,
        }
    }

    fn parse_all(input: &[u8]) -> Result<Vec<ClientOp>, ProtocolError> {
        let mut p = Parser::new(limits());
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(op) = p.parse(&mut buf)? {
            out.push(op);
        }
        Ok(out)
    }

    #[test]
    fn parses_every_operation() {
        let ops = parse_all(
            b"CONNECT {\"verbose\":true,\"echo\":false}\r\nPING\r\npong\r\nsub foo.* q 1\r\n\
              SUB bar 2\r\nPUB foo.x 5\r\nhello\r\nPUB foo.x r 0\r\n\r\n\
              HPUB h 12 14\r\nNATS/1.0\r\n\r\nhi\r\nUNSUB 1 10\r\nunsub 2\r\n",
        )
        .expect("valid stream");
        assert_eq!(ops.len(), 10);
        match &ops[0] {
            ClientOp::Connect(o) => {
                assert!(o.verbose);
                assert!(!o.echo);
                assert!(!o.headers);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(ops[1], ClientOp::Ping);
        assert_eq!(ops[2], ClientOp::Pong);
        assert_eq!(
            ops[3],
            ClientOp::Sub {
                subject: "foo.*".into(),
                queue: Some("q".into()),
                sid: "1".into()
            }
        );
        assert_eq!(
            ops[5],
            ClientOp::Pub(Publish {
                subject: "foo.x".into(),
                reply: None,
                headers: None,
                payload: Bytes::from_static(b"hello"),
            })
        );
        assert_eq!(
            ops[6],
            ClientOp::Pub(Publish {
                subject: "foo.x".into(),
                reply: Some("r".into()),
                headers: None,
                payload: Bytes::new(),
            })
        );
        assert_eq!(
            ops[7],
            ClientOp::Pub(Publish {
                subject: "h".into(),
                reply: None,
                headers: Some(Bytes::from_static(b"NATS/1.0\r\n\r\n")),
                payload: Bytes::from_static(b"hi"),
            })
        );
        assert_eq!(
            ops[8],
            ClientOp::Unsub {
                sid: "1".into(),
                max: Some(10)
            }
        );
    }

    #[test]
    fn bare_newlines_and_blank_lines_are_accepted() {
        let ops = parse_all(b"PING\n\r\n\nPUB a 1\nx\r\n").expect("valid");
        assert_eq!(ops.len(), 2);
    }

    #[test]
    fn errors() {
        assert_eq!(parse_all(b"FOO\r\n"), Err(ProtocolError::UnknownOperation));
        assert!(matches!(
            parse_all(b"PUB a 2000\r\n"),
            Err(ProtocolError::MaxPayload { size: 2000, .. })
        ));
        assert!(matches!(
            parse_all(b"PUB a -1\r\n"),
            Err(ProtocolError::InvalidArguments { .. })
        ));
        assert!(matches!(
            parse_all(b"PUB a b c 1\r\n"),
            Err(ProtocolError::InvalidArguments { .. })
        ));
        assert!(matches!(
            parse_all(b"HPUB a 5 4\r\n"),
            Err(ProtocolError::InvalidArguments { .. })
        ));
        assert!(matches!(
            parse_all(b"PUB a 1\r\nxy\r\n"),
            Err(ProtocolError::MissingPayloadTerminator)
        ));
        assert!(matches!(
            parse_all(b"SUB\r\n"),
            Err(ProtocolError::InvalidArguments { .. })
        ));
        assert!(matches!(
            parse_all(b"CONNECT {bad\r\n"),
            Err(ProtocolError::InvalidConnect(_))
        ));
        assert!(matches!(
            parse_all(b"PUB a 99999999999999999999999\r\n"),
            Err(ProtocolError::InvalidArguments { .. })
        ));
    }

    #[test]
    fn long_control_line_is_rejected_before_its_end_arrives() {
        let mut p = Parser::new(limits());
        let mut buf = BytesMut::from(&vec![b'S'; 5000][..]);
        assert!(matches!(
            p.parse(&mut buf),
            Err(ProtocolError::ControlLineTooLong { limit: 4096 })
        ));
        // A CONNECT line gets the larger limit.
        let mut p = Parser::new(limits());
        let mut line = b"CONNECT {\"name\":\"".to_vec();
        line.extend(std::iter::repeat_n(b'x', 10_000));
        line.extend_from_slice(b"\"}\r\n");
        let mut buf = BytesMut::from(&line[..]);
        assert!(matches!(p.parse(&mut buf), Ok(Some(ClientOp::Connect(_)))));
    }

    #[test]
    fn partial_input_waits() {
        let mut p = Parser::new(limits());
        let mut buf = BytesMut::from(&b"PUB a 3\r\nab"[..]);
        assert_eq!(p.parse(&mut buf), Ok(None));
        assert_eq!(p.bytes_wanted(buf.len()), Some(3));
        buf.extend_from_slice(b"c\r");
        assert_eq!(p.parse(&mut buf), Ok(None));
        buf.extend_from_slice(b"\n");
        assert!(matches!(p.parse(&mut buf), Ok(Some(ClientOp::Pub(_)))));
        assert!(buf.is_empty());
    }
}
