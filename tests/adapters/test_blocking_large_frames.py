"""The blocking adapters (threads, gevent) receive large binary frames into the message's own
bytes (``WebSocketConnection.payload_buffer`` / ``payload_received``, issue 14).

A raw client writes a stream of big masked frames cut at odd places (inside headers, one byte
into a payload, across frames), a ping between them and a fragmented message whose first frame
is big: every message arrives whole and in order, the ping is answered, and the slot path is
taken. EOF or a reset inside a large frame ends that connection with 1006 while the server
serves another. TLS sockets receive into the slot too. Run under both kernels
(``HYCO_PROTO_NO_EXTENSIONS=1`` and the Cython build). Waits are bounded; the only sleeps
shape where the writes are cut (never a timing threshold).
"""

from __future__ import annotations

import os
import random
import socket
import ssl
import struct
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from hyco_proto.drivers.stream import ConnectionClosedError
from hyco_proto.frames import FrameDecoder, encode_frame
from hyco_proto.websocket import WebSocketConnection
from tests.adapters import test_blocking_adapters
from tests.adapters.asyncio_util import token
from tests.interop import ThreadedEmulator

WAIT = 10.0
#: The adapter module, threads then gevent; fails a test that leaves a thread or greenlet running.
adapter = test_blocking_adapters.adapter
poll = test_blocking_adapters.poll  # wait (bounded) until a condition holds; gevent-friendly
slot_readers: set[int] = set()
KEY = "dGhlIHNhbXBsZSBub25jZQ=="




@pytest.fixture
def slot_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The byte counts given to ``payload_received``: one entry per read into a slot (and
    ``slot_readers``: the connections that made them)."""
    counts: list[int] = []
    original = WebSocketConnection.payload_received

    def counting(self: WebSocketConnection, nbytes: int) -> None:
        counts.append(nbytes)
        slot_readers.add(id(self))
        original(self, nbytes)

    slot_readers.clear()

    monkeypatch.setattr(WebSocketConnection, "payload_received", counting)
    return counts


def raw_client(adapter: ModuleType, port: int, path: str) -> Any:
    """A socket of the adapter's socket module (cooperative under gevent) past the upgrade."""
    sock = adapter.RUNTIME.socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(1)  # one byte at a time: nothing of the frames after is taken
        assert data, "the server closed during the upgrade"
        head += data
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_frames(sock: Any) -> list[tuple[int, bytes, bool]]:
    """The server's frames until it closes TCP."""
    decoder = FrameDecoder(masked=False)
    frames: list[tuple[int, bytes, bool]] = []
    while True:
        data = sock.recv(65536)
        if not data:
            return frames
        frames.extend(decoder.feed(data))


def cuts(total: int, seed: int) -> Iterator[tuple[int, int]]:
    """(start, end) pieces of a stream of ``total`` bytes, of sizes 1 byte to 300 KB."""
    rng = random.Random(seed)
    start = 0
    while start < total:
        size = rng.choice([1, 2, 3, 7, 13, 100, 4093, 65535, 65537, 99991, 131073, 300007])
        yield start, min(total, start + size)
        start += size


def the_stream() -> tuple[bytes, list[bytes | str]]:
    """Masked client frames (large binary ones, a ping between, a fragmented message whose
    first frame is big, small ones) and the messages they carry, in order."""
    rng = random.Random(14)
    big = [rng.randbytes(n) for n in (1024 * 1024 + 3, 65536 + 65536 + 1, 200_001,
                                      3 * 1024 * 1024 + 5)]
    part1, part2, part3 = rng.randbytes(300_000), b"tiny!", rng.randbytes(70_001)
    frames = [
        encode_frame(2, big[0], masked=True),
        encode_frame(9, b"p1", masked=True),
        encode_frame(2, big[1], masked=True),
        encode_frame(1, b"small", masked=True),
        encode_frame(2, part1, fin=False, masked=True),
        encode_frame(9, b"p2", masked=True),  # a ping between the fragments
        encode_frame(0, part2, fin=False, masked=True),
        encode_frame(0, part3, fin=True, masked=True),
        encode_frame(2, big[2], masked=True),
        encode_frame(2, b"\x00", masked=True),
        encode_frame(2, big[3], masked=True),
        encode_frame(8, struct.pack("!H", 1000), masked=True),
    ]
    messages: list[bytes | str] = [big[0], big[1], "small", part1 + part2 + part3, big[2],
                                   b"\x00", big[3]]
    return b"".join(frames), messages


@pytest.mark.parametrize("seed", [1, 2])
def test_large_frames_arrive_whole_and_in_order_however_cut(
        adapter: ModuleType, slot_reads: list[int], seed: int) -> None:
    stream, expected = the_stream()
    got: list[bytes | str] = []
    ended: list[int] = []

    def handler(ws: Any) -> None:
        try:
            while True:
                got.append(ws.recv(timeout=WAIT))
        except ConnectionClosedError as exc:
            ended.append(exc.code)

    rt = adapter.RUNTIME
    with adapter.serve(handler, "127.0.0.1", 0) as server:
        sock = raw_client(adapter, server.port, "/")
        with sock:
            for index, (start, end) in enumerate(cuts(len(stream), seed)):
                sock.sendall(stream[start:end])
                if index % 3 == 0:
                    rt.sleep(0.0005)  # lets the server read up to here: a cut at this place
            frames = read_frames(sock)
        assert poll(adapter, lambda: bool(ended))
    assert len(got) == len(expected)
    for index, (message, want) in enumerate(zip(got, expected, strict=True)):
        assert type(message) is type(want) and message == want, f"message {index} differs"
    assert ended == [1000]
    assert [(op, payload) for op, payload, _ in frames] == [
        (10, b"p1"), (10, b"p2"), (8, struct.pack("!H", 1000))]
    assert slot_reads, "no read went into a payload buffer"
    assert all(n > 0 for n in slot_reads)


@pytest.mark.parametrize("how", ["eof", "reset"])
def test_eof_or_reset_inside_a_large_frame_ends_that_connection_with_1006(
        adapter: ModuleType, slot_reads: list[int], how: str) -> None:
    payload = os.urandom(2 * 1024 * 1024)
    frame = encode_frame(2, payload, masked=True)
    raw_codes: list[int] = []
    raw_messages: list[Any] = []

    def handler(ws: Any) -> None:
        if ws.request.target == "/raw":
            try:
                while True:
                    raw_messages.append(ws.recv(timeout=WAIT))
            except ConnectionClosedError as exc:
                raw_codes.append(exc.code)
            return
        for message in ws:
            ws.send(message)

    with adapter.serve(handler, "127.0.0.1", 0) as server:
        with adapter.connect(f"ws://127.0.0.1:{server.port}/other") as other:
            other.send(payload[:300_000])
            assert other.recv(timeout=WAIT) == payload[:300_000]
            before = len(slot_reads)
            sock = raw_client(adapter, server.port, "/raw")
            try:
                sock.sendall(frame[:700_000])  # header and some: the rest is to come
                assert poll(adapter, lambda: len(slot_reads) > before), "no slot read"
                if how == "reset":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
            finally:
                sock.close()
            assert poll(adapter, lambda: bool(raw_codes))
            assert raw_codes == [1006] and raw_messages == []
            other.send(payload)  # the server goes on serving the other connection
            assert other.recv(timeout=WAIT) == payload
        assert other.close_code == 1000


def test_tls_sockets_receive_into_the_slot(
        adapter: ModuleType, slot_reads: list[int],
        tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls_contexts
    payloads = [os.urandom(n) for n in (1024 * 1024 + 1, 150_000, 3 * 1024 * 1024)]

    def echo(ws: Any) -> None:
        for message in ws:
            ws.send(message)

    with adapter.serve(echo, "127.0.0.1", 0, ssl=server_ctx) as server, \
            adapter.connect(f"wss://127.0.0.1:{server.port}/", ssl=client_ctx) as ws:
        for payload in payloads:
            ws.send(payload)
        for payload in payloads:
            assert ws.recv(timeout=WAIT) == payload
    assert ws.close_code == 1000
    # both ends read into slots: well over one read per large message
    assert len(slot_reads) >= 2 * len(payloads)


def test_relayed_sockets_receive_into_the_slot(adapter: ModuleType,
                                               slot_reads: list[int]) -> None:
    """Both ends of a relayed connection (the sender's socket, the one the listener accepted
    and handed over) read large frames into slots."""
    payloads = [os.urandom(n) for n in (1024 * 1024, 2 * 1024 * 1024 + 7)]
    accepted: list[Any] = []

    def connection(ws: Any) -> None:
        accepted.append(ws)
        for message in ws:
            ws.send(message)

    with ThreadedEmulator() as relay:
        uri = f"{relay.url}/$hc/large"
        with adapter.RelayedServer(uri, lambda: token(uri), connection=connection), \
                adapter.relayed_connect(uri, token(uri)) as ws:
            for payload in payloads:
                ws.send(payload)
                assert ws.recv(timeout=WAIT) == payload
            assert poll(adapter, lambda: bool(accepted))
            sides = {id(ws._conn.ws), id(accepted[0]._conn.ws)}
        assert ws.close_code == 1000
    assert sides <= slot_readers, "a side read no large frame into a slot"
