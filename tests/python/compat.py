#!/usr/bin/env python3
"""Compatibility check: a third-party Liftbridge client against a running drawbridge-server.

The client is the PyPI package `gufo-liftbridge` (module `gufo.liftbridge`, async, gRPC),
pinned in `requirements.txt` next to this file. Nobody here wrote it, so every call below
exercises the wire contract (`../shared/spec/liftbridge-api.md`) the way a real user would.

Usage:
    compat.py --broker 127.0.0.1:9292 [--server-id ID]
    (or DRAWBRIDGE_BROKER / DRAWBRIDGE_SERVER_ID in the environment)

What it does, against a standalone server, on a stream with a unique name:
 1. FetchMetadata: the broker list names the server at the address we dialled.
 2. CreateStream; creating it again fails with AlreadyExists.
 3. Unary Publish (ack policy ALL) of messages with and without key and headers, then
    PublishAsync (`publish_bulk`, ack policy ALL) of more, checking every Ack by correlation id.
 4. Subscribe from EARLIEST and read everything back: offsets 0..n-1, keys, values, headers
    (user headers plus the server's `subject` and `reply`), subject, partition, timestamps;
    Subscribe from an OFFSET and from LATEST.
 5. FetchMetadata for the stream and FetchPartitionMetadata: leader, replicas, ISR, offsets.
 6. Subscribe NEW_ONLY while a client with zlib compression publishes: only new messages,
    decompressed by the client (its `X-Msg-Encoding` header survives the round trip).
 7. DeleteStream; afterwards the stream has no partitions, deleting it again and publishing to
    it fail with NotFound.

Exit status 0 when everything matched; 1 with a "MISMATCH: ..." line on the first difference;
2 on a usage error. Every wait is bounded by asyncio.wait_for.
"""

import argparse
import asyncio
import os
import sys
import time
import traceback
import uuid
import zlib
from collections.abc import AsyncGenerator, Awaitable
from typing import Any, TypeVar, cast

from gufo.liftbridge.client import LiftbridgeClient
from gufo.liftbridge.error import ErrorAlreadyExists, ErrorNotFound
from gufo.liftbridge.types import AckPolicy, Message, StartPosition

T = TypeVar("T")

# Bound on any single client call (a publish, one received message, one metadata fetch).
STEP_TIMEOUT = 20.0


class Mismatch(Exception):
    """The server did something a Liftbridge client does not expect."""


def log(text: str) -> None:
    print(f"[compat] {text}", flush=True)


def expect_eq(actual: Any, expected: Any, what: str) -> None:
    if actual != expected:
        raise Mismatch(f"{what}: expected {expected!r}, got {actual!r}")


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise Mismatch(what)


async def bounded(what: str, aw: Awaitable[T], timeout: float = STEP_TIMEOUT) -> T:
    """Awaits `aw` for at most `timeout` seconds; a timeout is a mismatch naming `what`."""
    try:
        return await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError:
        raise Mismatch(f"{what}: no answer within {timeout:.0f} s") from None


async def expect_error(what: str, aw: Awaitable[Any], exc: type[Exception]) -> None:
    """Awaits `aw` (bounded) and requires it to raise `exc`."""
    try:
        await bounded(what, aw)
    except exc as e:
        log(f"{what}: {exc.__name__} as expected ({e})")
        return
    except Mismatch:
        raise
    except Exception as e:
        raise Mismatch(f"{what}: expected {exc.__name__}, got {type(e).__name__}: {e}") from e
    raise Mismatch(f"{what}: expected {exc.__name__}, but the call succeeded")


async def read_n(
    client: LiftbridgeClient, what: str, stream: str, n: int, **kwargs: Any
) -> list[Message]:
    """Subscribes with `kwargs` and returns the first `n` messages (each read is bounded)."""
    # subscribe() is an async generator (annotated as an AsyncIterable): closed explicitly.
    sub = cast(AsyncGenerator[Message, None], client.subscribe(stream, **kwargs))
    out: list[Message] = []
    try:
        for i in range(n):
            out.append(await bounded(f"{what}: message #{i}", sub.__anext__()))
    finally:
        await bounded(f"{what}: closing the subscription", sub.aclose())
    return out


# The messages: (key, value, headers) — with and without key, with and without headers,
# binary bytes in keys, values and header values.
UNARY: list[tuple[bytes | None, bytes, dict[str, bytes]]] = [
    (b"key-0", b"value-0", {"h-a": b"alpha", "h-b": b"\x00\x01\xfe\xff"}),
    (b"key-1", b"", {"h-a": b"beta"}),
    (None, b"value-2 no key", {}),
    (b"\x00bin\xffkey", bytes(range(256)), {"empty": b""}),
]
BULK: list[tuple[bytes | None, bytes, dict[str, bytes]]] = [
    (b"bulk-%d" % i, b"bulk value %d" % i, {"n": str(i).encode(), "kind": b"bulk"})
    for i in range(4)
]


async def new_only_with_compression(broker: str, stream: str, subject: str, n: int) -> None:
    """Subscribes NEW_ONLY, then publishes zlib-compressed messages until one arrives."""
    async with LiftbridgeClient([broker], compression_method="zlib") as zclient:
        sub = cast(
            AsyncGenerator[Message, None],
            zclient.subscribe(stream, start_position=StartPosition.NEW_ONLY),
        )
        first = asyncio.ensure_future(sub.__anext__())
        sent: list[bytes] = []
        try:
            # The subscription is in place at some unknown moment: publish until it delivers
            # (at most 50 messages, 0.2 s apart).
            for i in range(50):
                value = b"new-only message %d; " % i * 20
                await bounded(
                    f"Publish (compressed) #{i}",
                    zclient.publish(
                        value,
                        stream=stream,
                        key=b"z",
                        headers={"Case-Kept": b"Yes"},
                        auto_compress=True,
                    ),
                )
                sent.append(value)
                done, _ = await asyncio.wait({first}, timeout=0.2)
                if done:
                    break
            m = await bounded("Subscribe NEW_ONLY: first message", first)
        finally:
            if not first.done():
                first.cancel()
                await asyncio.wait({first}, timeout=STEP_TIMEOUT)
            await bounded("Subscribe NEW_ONLY: closing", sub.aclose())
    expect(
        n <= m.offset < n + len(sent),
        f"NEW_ONLY delivered offset {m.offset}, not one of the new offsets {n}..{n + len(sent) - 1}",
    )
    expect_eq(m.value, sent[m.offset - n], f"decompressed value at offset {m.offset}")
    expect_eq(m.key, b"z", f"key at offset {m.offset}")
    expect_eq(
        dict(m.headers),
        {"Case-Kept": b"Yes", "subject": subject.encode(), "reply": b""},
        f"headers at offset {m.offset} (after the client removed X-Msg-Encoding)",
    )
    # The stored record itself, read by a client that does not decode: compressed value and
    # the encoding header, name case intact.
    async with LiftbridgeClient([broker], encoding_header="x-not-used") as raw:
        (r,) = await read_n(raw, "Subscribe OFFSET (raw)", stream, 1, start_offset=m.offset)
    expect_eq(r.offset, m.offset, "raw read offset")
    expect_eq(r.headers.get("X-Msg-Encoding"), b"zlib", "stored X-Msg-Encoding header")
    expect_eq(zlib.decompress(r.value), m.value, "stored value, zlib-decompressed")
    log(f"Subscribe NEW_ONLY delivered offset {m.offset} of {len(sent)} compressed publishes")


async def run(broker: str, server_id: str | None) -> None:
    host, port_s = broker.rsplit(":", 1)
    port = int(port_s)
    suffix = uuid.uuid4().hex[:12]
    stream = f"gufo-compat-{suffix}"
    subject = f"gufo.compat.{suffix}"
    n = len(UNARY) + len(BULK)
    log(f"broker {broker}, server id {server_id or '(any)'}, stream {stream}, subject {subject}")

    async with LiftbridgeClient([broker]) as client:
        # 1. Cluster metadata: exactly this one broker, reachable at the address we dialled.
        meta = await bounded("FetchMetadata (all streams)", client.get_metadata())
        log(f"brokers: {meta.brokers}")
        expect_eq(len(meta.brokers), 1, "number of brokers of a standalone server")
        b = meta.brokers[0]
        expect_eq((b.host, b.port), (host, port), "advertised broker host:port")
        if server_id:
            expect_eq(b.id, server_id, "broker id")
        broker_id = b.id
        expect(bool(broker_id), "broker id is empty")

        # 2. CreateStream, then AlreadyExists for the same name.
        await bounded(
            "CreateStream",
            client.create_stream(stream, subject=subject, partitions=1, wait_for_stream=True),
        )
        log("stream created")
        await expect_error(
            "CreateStream (duplicate name)",
            client.create_stream(stream, subject=subject, partitions=1),
            ErrorAlreadyExists,
        )

        # 3a. Unary Publish with ack policy ALL. gufo sets no gRPC deadline, so (as in
        # Liftbridge) the server returns as soon as the message is on NATS.
        for i, (key, value, headers) in enumerate(UNARY):
            await bounded(
                f"Publish #{i}",
                client.publish(
                    value, stream=stream, key=key, headers=headers, ack_policy=AckPolicy.ALL
                ),
            )
        log(f"published {len(UNARY)} messages with Publish")

        # 3b. PublishAsync with ack policy ALL: one Ack per message, matched by correlation id.
        corr = [f"corr-{suffix}-{i}" for i in range(len(BULK))]
        reqs = [
            client.get_publish_request(
                value,
                stream=stream,
                key=key,
                headers=headers,
                correlation_id=corr[i],
                ack_policy=AckPolicy.ALL,
            )
            for i, (key, value, headers) in enumerate(BULK)
        ]

        async def collect_responses() -> list[Any]:
            # wait=False: the request stream half-closes after the last request and the
            # server drains outstanding acks (spec §8) before ending the call.
            return [r async for r in client.publish_bulk(reqs, wait=False)]

        # publish_bulk is annotated as yielding Acks but yields the raw PublishResponses.
        responses = await bounded("PublishAsync acks", collect_responses())
        expect_eq(len(responses), len(BULK), "number of PublishAsync responses")
        ack_offset: dict[str, int] = {}
        for r in responses:
            expect(
                not r.HasField("asyncError"),
                f"PublishAsync answered with an error: {r.asyncError}",
            )
            expect(r.HasField("ack"), f"PublishAsync response without an Ack: {r}")
            ack = r.ack
            expect_eq(r.correlationId, ack.correlationId, "PublishResponse.correlationId")
            expect_eq(ack.stream, stream, "Ack.stream")
            expect_eq(ack.partitionSubject, subject, "Ack.partitionSubject")
            expect_eq(ack.msgSubject, subject, "Ack.msgSubject")
            expect_eq(ack.ackPolicy, AckPolicy.ALL.value, "Ack.ackPolicy")
            expect(ack.correlationId in corr, f"Ack.correlationId {ack.correlationId!r} unknown")
            expect(ack.correlationId not in ack_offset, f"two acks for {ack.correlationId!r}")
            expect(ack.receptionTimestamp > 0, "Ack.receptionTimestamp is 0")
            expect(
                ack.commitTimestamp >= ack.receptionTimestamp,
                f"Ack.commitTimestamp {ack.commitTimestamp} < receptionTimestamp "
                f"{ack.receptionTimestamp}",
            )
            ack_offset[ack.correlationId] = ack.offset
        expect_eq(
            sorted(ack_offset.values()),
            list(range(len(UNARY), n)),
            "offsets acknowledged by PublishAsync",
        )
        log(f"PublishAsync acked offsets {ack_offset}")

        # 4. Subscribe from EARLIEST: everything, in publish order, with keys and headers.
        msgs = await read_n(
            client, "Subscribe EARLIEST", stream, n, start_position=StartPosition.EARLIEST
        )
        now_ns = time.time_ns()
        last_ts = 0
        for i, (m, (key, value, headers)) in enumerate(zip(msgs, UNARY + BULK)):
            what = f"message at offset {i}"
            expect_eq(m.offset, i, f"{what}: offset")
            expect_eq(m.partition, 0, f"{what}: partition")
            expect_eq(m.subject, subject, f"{what}: subject")
            expect_eq(m.key, key or b"", f"{what}: key")
            expect_eq(m.value, value, f"{what}: value")
            # Stored records carry the user's headers plus the server's `subject` (the NATS
            # subject it arrived on) and `reply` (its reply subject; none for API publishes).
            want = dict(headers)
            want["subject"] = subject.encode()
            want["reply"] = b""
            expect_eq(dict(m.headers), want, f"{what}: headers")
            expect(
                0 < m.timestamp <= now_ns + 60 * 10**9 and m.timestamp > now_ns - 600 * 10**9,
                f"{what}: timestamp {m.timestamp} ns is not near now ({now_ns} ns)",
            )
            expect(m.timestamp >= last_ts, f"{what}: timestamp {m.timestamp} < previous {last_ts}")
            last_ts = m.timestamp
        for i, c in enumerate(corr):
            expect_eq(ack_offset[c], len(UNARY) + i, f"offset acked for correlation id {c}")
        log(f"Subscribe EARLIEST read offsets 0..{n - 1} with matching keys, values, headers")

        # Subscribe from an offset, and from LATEST.
        tail = await read_n(client, "Subscribe OFFSET 5", stream, n - 5, start_offset=5)
        expect_eq([m.offset for m in tail], list(range(5, n)), "offsets read from offset 5")
        expect_eq([m.value for m in tail], [m.value for m in msgs[5:]], "values from offset 5")
        latest = await read_n(
            client, "Subscribe LATEST", stream, 1, start_position=StartPosition.LATEST
        )
        expect_eq(latest[0].offset, n - 1, "offset read from LATEST")
        expect_eq(latest[0].value, msgs[-1].value, "value read from LATEST")
        log("Subscribe OFFSET and LATEST start where they should")

        # 5. Stream metadata and partition metadata.
        meta = await bounded("FetchMetadata (stream)", client.get_metadata(stream))
        expect_eq([s.name for s in meta.metadata], [stream], "streams in FetchMetadata")
        sm = meta.metadata[0]
        expect_eq(sm.subject, subject, "stream subject in metadata")
        expect_eq(sorted(sm.partitions), [0], "partition ids in metadata")
        pm = sm.partitions[0]
        log(f"partition metadata: {pm}")
        expect_eq(pm.id, 0, "partition id")
        expect_eq(pm.leader, broker_id, "partition leader")
        expect_eq(pm.replicas, [broker_id], "partition replicas")
        expect_eq(pm.isr, [broker_id], "partition ISR")
        expect_eq(pm.newest_offset, n - 1, "partition newest offset")
        expect_eq(pm.high_watermark, n - 1, "partition high watermark")
        expect_eq(pm.paused, False, "partition paused")
        everything = await bounded("FetchMetadata (all streams)", client.get_metadata())
        expect(
            stream in [s.name for s in everything.metadata],
            f"stream {stream} missing from FetchMetadata of all streams",
        )
        ppm = await bounded("FetchPartitionMetadata", client.get_partition_metadata(stream, 0))
        expect_eq(
            (ppm.id, ppm.leader, ppm.replicas, ppm.isr, ppm.high_watermark, ppm.newest_offset),
            (0, broker_id, [broker_id], [broker_id], n - 1, n - 1),
            "FetchPartitionMetadata (id, leader, replicas, isr, hw, newest)",
        )
        log("metadata matches")

        # 6. Subscribe NEW_ONLY while a compressing client publishes: the first message seen
        # is a new one (offset >= n), decompressed by the client thanks to its
        # `X-Msg-Encoding` header (so header names must round-trip with their case).
        await new_only_with_compression(broker, stream, subject, n)

        # 7. DeleteStream; then the stream is gone.
        await bounded("DeleteStream", client.delete_stream(stream))
        log("stream deleted")
        meta = await bounded("FetchMetadata (deleted stream)", client.get_metadata(stream))
        gone = [s for s in meta.metadata if s.name == stream and s.partitions]
        expect_eq(gone, [], "partitions of the deleted stream in FetchMetadata")
        await expect_error(
            "DeleteStream (already deleted)", client.delete_stream(stream), ErrorNotFound
        )
        await expect_error(
            "Publish (deleted stream)",
            client.publish(b"late", stream=stream, ack_policy=AckPolicy.ALL),
            ErrorNotFound,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--broker",
        default=os.environ.get("DRAWBRIDGE_BROKER"),
        help="server client address HOST:PORT (default: $DRAWBRIDGE_BROKER)",
    )
    parser.add_argument(
        "--server-id",
        default=os.environ.get("DRAWBRIDGE_SERVER_ID"),
        help="expected broker id (default: $DRAWBRIDGE_SERVER_ID; unchecked if unset)",
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="bound on the whole run, seconds"
    )
    args = parser.parse_args()
    if not args.broker or ":" not in args.broker:
        parser.error("--broker HOST:PORT (or DRAWBRIDGE_BROKER) is required")
    import gufo.liftbridge

    log(f"gufo-liftbridge {gufo.liftbridge.__version__}, Python {sys.version.split()[0]}")
    started = time.monotonic()
    try:
        asyncio.run(bounded("the whole run", run(args.broker, args.server_id), args.timeout))
    except Mismatch as e:
        print(f"[compat] MISMATCH: {e}", file=sys.stderr, flush=True)
        return 1
    except Exception as e:  # noqa: BLE001 - any client error is a failed check
        traceback.print_exc()
        print(f"[compat] MISMATCH: unexpected {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    log(f"OK: all checks passed in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
