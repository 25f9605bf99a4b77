//! Subscribe frames encoded straight from stored records, and the route that sends them.
//!
//! A subscription sends one protobuf `Message` per record. Building a `Message` first costs a
//! `String` for the stream name, one for the subject, a `HashMap` (with its hashing) for the
//! headers, and prost's length pass over all of it, for every record; reading a partition is
//! dominated by that. So the producer writes each record's `Message` encoding itself
//! ([`encode_record`], into a shared buffer that one allocation serves many records of), and
//! [`SubscribeRoute`] serves `/proto.API/Subscribe` with a codec that copies those bytes into
//! the gRPC stream ([`FrameCodec`]). Every other method goes to the generated `proto.API`
//! server untouched.
//!
//! Invariants:
//! - A frame decodes (prost) to exactly the `Message` the record stands for: offset, key,
//!   value, timestamp, stream, partition, `subject` and `replySubject` from the record's
//!   `subject` / `reply` headers, and every header (a name stored twice: its last value, as a
//!   map keeps it). Fields are written in field-number order and default values are left out,
//!   as prost writes them; the envelope-only fields (ackInbox, correlationId, ackPolicy) are
//!   never set on Subscribe. The wire is unchanged: clients decode plain `Message`s.
//! - The route runs the same authorization, subscription limit, request metrics and handler as
//!   `Api::subscribe` ([`crate::authz_api::Guarded::subscribe_frames`]); only the encoding of
//!   the response differs.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use drawbridge_proto::api::SubscribeRequest;
use drawbridge_storage::RecordView;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message as _;
use tonic::body::Body;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use crate::api::ApiService;
use crate::authz_api::{FrameStream as GuardedFrames, Guarded};

/// The gRPC path this module serves.
pub const SUBSCRIBE_PATH: &str = "/proto.API/Subscribe";

/// Largest request accepted on the route (as the generated server is configured).
const MAX_DECODING: usize = 64 << 20;

/// Fresh buffer space a [`FrameBuf`] takes at once: one allocation for many records.
const CHUNK: usize = 64 << 10;

/// Bytes of encoded frames tonic batches into one HTTP/2 write ([`FrameEncoder`]).
const YIELD_THRESHOLD: usize = 48 << 10;

/// The buffer tonic encodes a batch into: a full batch plus a 16 KiB frame fit without growing
/// (below glibc's 128 KiB mmap threshold, so it comes from the heap).
const ENCODE_BUFFER: usize = 64 << 10;

// Field numbers of `proto.Message` (api.proto).
const F_OFFSET: u32 = 1;
const F_KEY: u32 = 2;
const F_VALUE: u32 = 3;
const F_TIMESTAMP: u32 = 4;
const F_STREAM: u32 = 5;
const F_PARTITION: u32 = 6;
const F_SUBJECT: u32 = 7;
const F_REPLY: u32 = 8;
const F_HEADERS: u32 = 9;

fn varint_field(buf: &mut BytesMut, tag: u32, v: u64) {
    if v != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(v, buf);
    }
}

fn bytes_field(buf: &mut BytesMut, tag: u32, b: &[u8]) {
    if !b.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(b.len() as u64, buf);
        buf.put_slice(b);
    }
}

/// Encoded length of a length-delimited field with a one-byte key (fields 1..=15), or 0 when
/// it is left out as empty.
fn bytes_field_len(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        1 + encoded_len_varint(len as u64) + len
    }
}

/// Whether header `i` is overridden by a later header of the same name.
fn shadowed(headers: &[(String, Bytes)], i: usize) -> bool {
    headers[i + 1..].iter().any(|(n, _)| *n == headers[i].0)
}

/// The last value of header `name`, if any.
fn header<'a>(headers: &'a [(String, Bytes)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| &v[..])
}

/// Appends the `Message` encoding of record `r` (with `value` in place of its stored value:
/// the opened one on an encrypted partition) to `buf`. A subject or reply that is not UTF-8 is
/// sent with replacement characters, as `String::from_utf8_lossy` makes it.
pub fn encode_record(
    buf: &mut BytesMut,
    stream: &str,
    partition: i32,
    r: &RecordView,
    value: &[u8],
) {
    let offset = i64::try_from(r.offset).unwrap_or(i64::MAX);
    varint_field(buf, F_OFFSET, offset as u64);
    if let Some(k) = &r.key {
        bytes_field(buf, F_KEY, k);
    }
    bytes_field(buf, F_VALUE, value);
    varint_field(buf, F_TIMESTAMP, r.timestamp as u64);
    bytes_field(buf, F_STREAM, stream.as_bytes());
    // int32 is sign-extended to 64 bits on the wire.
    varint_field(buf, F_PARTITION, i64::from(partition) as u64);
    for (tag, name) in [(F_SUBJECT, "subject"), (F_REPLY, "reply")] {
        if let Some(v) = header(&r.headers, name) {
            match std::str::from_utf8(v) {
                Ok(_) => bytes_field(buf, tag, v),
                Err(_) => bytes_field(buf, tag, String::from_utf8_lossy(v).as_bytes()),
            }
        }
    }
    for (i, (name, v)) in r.headers.iter().enumerate() {
        if shadowed(&r.headers, i) {
            continue;
        }
        let entry = bytes_field_len(name.len()) + bytes_field_len(v.len());
        encode_key(F_HEADERS, WireType::LengthDelimited, buf);
        encode_varint(entry as u64, buf);
        bytes_field(buf, 1, name.as_bytes());
        bytes_field(buf, 2, v);
    }
}

/// Encodes frames into shared chunks: each frame is a `Bytes` view of a chunk, so a batch of
/// records costs one allocation per [`CHUNK`] bytes rather than several per record.
#[derive(Debug, Default)]
pub struct FrameBuf {
    buf: BytesMut,
}

impl FrameBuf {
    /// The frame of record `r` (see [`encode_record`]).
    pub fn frame(&mut self, stream: &str, partition: i32, r: &RecordView, value: &[u8]) -> Bytes {
        // An estimate of the encoding (payloads plus room for keys and lengths); should it fall
        // short (a subject widened by replacement characters), the buffer grows as it writes.
        let need = 64
            + stream.len()
            + value.len()
            + r.key.as_ref().map_or(0, |k| k.len())
            + r.headers
                .iter()
                .map(|(n, v)| 2 * (n.len() + v.len()) + 24)
                .sum::<usize>();
        if self.buf.capacity() < need {
            self.buf = BytesMut::with_capacity(need.max(CHUNK));
        }
        encode_record(&mut self.buf, stream, partition, r, value);
        self.buf.split().freeze()
    }
}

/// The codec of the route: requests are prost-decoded `SubscribeRequest`s, responses are
/// frames already encoded, copied as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameCodec;

/// Writes a pre-encoded frame.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameEncoder;

/// Decodes a `SubscribeRequest`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestDecoder;

impl Codec for FrameCodec {
    type Encode = Bytes;
    type Decode = SubscribeRequest;
    type Encoder = FrameEncoder;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> FrameEncoder {
        FrameEncoder
    }

    fn decoder(&mut self) -> RequestDecoder {
        RequestDecoder
    }
}

impl Encoder for FrameEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }

    /// tonic collects ready frames into one buffer and hands it to HTTP/2 once it holds
    /// [`YIELD_THRESHOLD`] bytes. Its defaults (8 KiB buffer, 32 KiB threshold) make a busy
    /// subscription's buffer double three times per batch, copying what it holds each time;
    /// a buffer that fits a full batch plus a frame is allocated once per batch instead.
    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD)
    }
}

impl Decoder for RequestDecoder {
    type Item = SubscribeRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<SubscribeRequest>, Status> {
        SubscribeRequest::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding SubscribeRequest: {e}")))
    }
}

/// One Subscribe call on the route: [`Guarded::subscribe_frames`].
#[derive(Debug, Clone)]
struct Handler(Arc<Guarded<ApiService>>);

impl Service<Request<SubscribeRequest>> for Handler {
    type Response = Response<GuardedFrames>;
    type Error = Status;
    type Future = BoxFuture<Self::Response, Status>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<SubscribeRequest>) -> Self::Future {
        let guarded = Arc::clone(&self.0);
        Box::pin(async move { guarded.subscribe_frames(req).await })
    }
}

/// The `proto.API` service `S` (the generated server), with Subscribe served from
/// pre-encoded frames (module docs).
#[derive(Debug, Clone)]
pub struct SubscribeRoute<S> {
    inner: S,
    guarded: Arc<Guarded<ApiService>>,
}

impl<S> SubscribeRoute<S> {
    /// `inner` for every method but Subscribe, which `guarded` serves.
    pub fn new(inner: S, guarded: Guarded<ApiService>) -> Self {
        Self {
            inner,
            guarded: Arc::new(guarded),
        }
    }
}

impl<S: NamedService> NamedService for SubscribeRoute<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for SubscribeRoute<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != SUBSCRIBE_PATH {
            let fut = self.inner.call(req);
            return Box::pin(fut);
        }
        let handler = Handler(Arc::clone(&self.guarded));
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(FrameCodec)
                .apply_max_message_size_config(Some(MAX_DECODING), None);
            Ok(grpc.server_streaming(handler, req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use drawbridge_proto::api::Message;

    use super::*;

    /// The `Message` a record stands for, built field by field (the model the frames are
    /// checked against).
    fn model(stream: &str, partition: i32, r: &RecordView) -> Message {
        let mut headers = HashMap::new();
        let mut subject = String::new();
        let mut reply = String::new();
        for (k, v) in &r.headers {
            if k == "subject" {
                subject = String::from_utf8_lossy(v).into_owned();
            } else if k == "reply" {
                reply = String::from_utf8_lossy(v).into_owned();
            }
            headers.insert(k.clone(), v.clone());
        }
        Message {
            offset: i64::try_from(r.offset).unwrap_or(i64::MAX),
            key: r.key.clone().unwrap_or_default(),
            value: r.value.clone(),
            timestamp: r.timestamp,
            stream: stream.to_owned(),
            partition,
            subject,
            reply_subject: reply,
            headers,
            ..Default::default()
        }
    }

    fn record(
        offset: u64,
        ts: i64,
        key: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        value: &[u8],
    ) -> RecordView {
        RecordView {
            offset,
            timestamp: ts,
            key: key.map(Bytes::copy_from_slice),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), Bytes::copy_from_slice(v)))
                .collect(),
            value: Bytes::copy_from_slice(value),
        }
    }

    #[test]
    fn frames_decode_to_the_message_of_the_record() {
        let big = vec![7u8; 70_000];
        let cases = [
            record(0, 0, None, &[], b""),
            record(
                1,
                1_700_000_000_000_000_000,
                None,
                &[("subject", b"a.b"), ("reply", b"")],
                b"v",
            ),
            record(
                u64::MAX,
                -5,
                Some(b"k"),
                &[("subject", b"s"), ("reply", b"_INBOX.x"), ("h", b"1")],
                &big,
            ),
            record(
                42,
                9,
                Some(b""),
                &[
                    ("dup", b"1"),
                    ("subject", b"\xff\xfe"),
                    ("dup", b"2"),
                    ("", b""),
                ],
                b"x",
            ),
        ];
        let mut fb = FrameBuf::default();
        for (stream, partition) in [("orders", 0), ("", -3), ("s", i32::MAX)] {
            for r in &cases {
                let frame = fb.frame(stream, partition, r, &r.value);
                let got = Message::decode(frame.clone()).expect("a frame decodes");
                assert_eq!(got, model(stream, partition, r), "{r:?}");
                // Same bytes as prost's own encoding whenever field order cannot differ (at
                // most one header: map order is a HashMap's).
                if r.headers.len() <= 1 {
                    assert_eq!(
                        frame,
                        Bytes::from(model(stream, partition, r).encode_to_vec())
                    );
                }
            }
        }
        assert!(
            fb.frame("", 0, &cases[0], b"").is_empty(),
            "the empty Message is empty"
        );
    }
}
