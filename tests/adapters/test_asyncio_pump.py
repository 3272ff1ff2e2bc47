"""The asyncio WebSocket's read pump on the lean transport (issue 14, session 5): once the data
phase runs, the loop calls ``WebSocket._make_pump``'s pump when the socket is readable (the
transport's read and ``view_received`` in one call). Every byte, message, pause, end of stream
and failure must come out as through the transport's own read."""

from __future__ import annotations

import asyncio
import itertools
import socket

import pytest

from hyco_proto.adapters.asyncio import ConnectionClosedError, WebSocket, serve
from hyco_proto.adapters.asyncio.lean import LinkTransport
from hyco_proto.frames import OP_BINARY, OP_PING, OP_TEXT, FrameDecoder, encode_frame

from .asyncio_util import WAIT, async_test, bounded

_UPGRADE = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


async def _raw_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_UPGRADE)
    head = await bounded(reader.readuntil(b"\r\n\r\n"))
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def _messages(reader: asyncio.StreamReader, count: int) -> list[tuple[int, bytes]]:
    """``count`` data frames from the server (unmasked), in order."""
    decoder = FrameDecoder(masked=False)
    got: list[tuple[int, bytes]] = []
    part = bytearray()  # the decoder hands a frame over in chunks as its bytes come
    while len(got) < count:
        data = await bounded(reader.read(65536))
        assert data, f"the server closed after {len(got)} of {count} messages"
        for op, chunk, fin in decoder.feed(data):
            if op < 8:
                part += chunk
                if fin:
                    got.append((op, bytes(part)))
                    part.clear()
    return got


def _accepted(server: object) -> WebSocket:
    sockets = server._sockets  # type: ignore[attr-defined]
    assert len(sockets) == 1
    ws: WebSocket = next(iter(sockets))
    return ws


@async_test
async def test_the_data_phase_reads_through_the_pump_and_loses_nothing() -> None:
    async def echo(ws: WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0, max_size=None) as server:
        reader, writer = await _raw_client(server.port)
        try:
            sizes = [0, 1, 125, 126, 300, 65535, 65536, 200_000]
            payloads = [bytes([n % 251]) * size for n, size in enumerate(sizes)]
            frames = [encode_frame(OP_BINARY, p, masked=True) for p in payloads]
            # Text in three fragments with a ping between them, then one more binary.
            frames += [encode_frame(OP_TEXT, b"frag", masked=True, fin=False),
                       encode_frame(OP_PING, b"p", masked=True),
                       encode_frame(0, b"ment", masked=True, fin=False),
                       encode_frame(0, "ed é".encode(), masked=True),
                       encode_frame(OP_BINARY, b"last", masked=True)]
            stream = b"".join(frames)
            # Cut anywhere: in headers, in masks, across frames, many frames in one write.
            cuts = [0, 1, 3, 7, 130, 131, 4000, 70_000, 70_001, 270_000, len(stream)]
            writer.write(stream[:1])
            await writer.drain()
            await asyncio.sleep(0.05)
            ws = _accepted(server)
            transport = ws._link.transport
            assert isinstance(transport, LinkTransport)
            assert transport._pump is not None  # the data phase reads through the pump
            for start, stop in itertools.pairwise(cuts[1:]):
                writer.write(stream[start:stop])
                await writer.drain()
                await asyncio.sleep(0.001)
            got = await _messages(reader, len(payloads) + 2)
        finally:
            writer.close()
    assert got == [(OP_BINARY, p) for p in payloads] + [
        (OP_TEXT, "fragmented é".encode()), (OP_BINARY, b"last")]


@async_test
async def test_paused_reading_resumes_on_the_pump() -> None:
    release = asyncio.Event()
    seen: list[bytes] = []

    async def slow(ws: WebSocket) -> None:
        await release.wait()  # max_queue=2: reading pauses until the handler takes messages
        async for message in ws:
            assert isinstance(message, bytes)
            seen.append(message)
            if len(seen) == 200:
                return

    async with serve(slow, "127.0.0.1", 0, max_queue=2) as server:
        _, writer = await _raw_client(server.port)
        try:
            writer.write(encode_frame(OP_BINARY, b"first", masked=True))
            await asyncio.sleep(0.05)
            ws = _accepted(server)
            for n in range(1, 200):
                writer.write(encode_frame(OP_BINARY, n.to_bytes(2, "big"), masked=True))
                await writer.drain()
            await asyncio.sleep(0.1)
            assert ws.reading_paused
            assert ws._link.transport._pump is not None  # type: ignore[union-attr]
            release.set()
            for _ in range(int(WAIT / 0.01)):
                if len(seen) == 200:
                    break
                await asyncio.sleep(0.01)
        finally:
            writer.close()
    assert seen == [b"first"] + [n.to_bytes(2, "big") for n in range(1, 200)]


def _count_slot_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The byte counts reported by every ``payload_received`` from now on (the slot path)."""
    from hyco_proto.websocket import WebSocketConnection

    reads: list[int] = []
    received = WebSocketConnection.payload_received

    def counting(self: WebSocketConnection, nbytes: int) -> None:
        reads.append(nbytes)
        received(self, nbytes)

    monkeypatch.setattr(WebSocketConnection, "payload_received", counting)
    return reads


@pytest.mark.parametrize("size, cut", [(100, 50), (1_000_000, 300_000)],
                         ids=["small frame", "large frame, read into its slot"])
@async_test
async def test_end_of_stream_mid_frame_ends_the_connection_with_1006(
        size: int, cut: int, monkeypatch: pytest.MonkeyPatch) -> None:
    slot_reads = _count_slot_reads(monkeypatch)
    outcome: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def handler(ws: WebSocket) -> None:
        assert await ws.recv() == b"whole"
        try:
            await ws.recv()
        except ConnectionClosedError as exc:
            outcome.set_result(exc)

    async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
        _, writer = await _raw_client(server.port)
        writer.write(encode_frame(OP_BINARY, b"whole", masked=True))
        await asyncio.sleep(0.05)
        assert _accepted(server)._link.transport._pump is not None  # type: ignore[union-attr]
        frame = encode_frame(OP_BINARY, b"x" * size, masked=True)
        writer.write(frame[:cut // 3])  # a large frame's next bytes go into its slot
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(frame[cut // 3:cut])
        await writer.drain()
        writer.write_eof()  # the server reads EOF through the pump
        exc = await bounded(outcome)
        writer.close()
    assert isinstance(exc, ConnectionClosedError) and exc.code == 1006
    assert bool(slot_reads) is (size > 65_536)  # a large frame's rest went into its slot


@async_test
async def test_a_protocol_violation_read_by_the_pump_closes_1002() -> None:
    async def handler(ws: WebSocket) -> None:
        async for _ in ws:
            pass

    async with serve(handler, "127.0.0.1", 0) as server:
        reader, writer = await _raw_client(server.port)
        try:
            writer.write(encode_frame(OP_BINARY, b"ok", masked=True))
            await asyncio.sleep(0.05)
            assert _accepted(server)._link.transport._pump is not None  # type: ignore[union-attr]
            writer.write(encode_frame(OP_BINARY, b"unmasked", masked=False))
            decoder = FrameDecoder(masked=False)
            closes: list[bytes] = []
            while not closes:
                data = await bounded(reader.read(65536))
                if not data:
                    break
                closes += [payload for op, payload, _ in decoder.feed(data) if op == 8]
        finally:
            writer.close()
    assert closes and int.from_bytes(closes[0][:2], "big") == 1002


@async_test
async def test_a_failing_read_is_reported_and_ends_only_that_connection() -> None:
    async def echo(ws: WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0) as server:
        reader, writer = await _raw_client(server.port)
        writer.write(encode_frame(OP_BINARY, b"one", masked=True))
        assert await _messages(reader, 1) == [(OP_BINARY, b"one")]
        ws = _accepted(server)
        transport = ws._link.transport
        assert isinstance(transport, LinkTransport) and transport._pump is not None
        # Linger 0: closing sends a reset, so the pump's recv_into raises ConnectionResetError.
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()
        await bounded(ws._link.lost)
        # The server still serves others.
        reader2, writer2 = await _raw_client(server.port)
        writer2.write(encode_frame(OP_BINARY, b"two", masked=True))
        assert await _messages(reader2, 1) == [(OP_BINARY, b"two")]
        writer2.close()
    with pytest.raises(ConnectionClosedError):
        await ws.recv()


@async_test
async def test_large_frames_are_received_into_their_messages_and_lose_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame's rest goes straight into its message's bytes (``payload_buffer``): cut
    anywhere, several big frames in one write, a ping between them, a big first fragment."""
    slot_reads = _count_slot_reads(monkeypatch)

    async def echo(ws: WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    big = [bytes([n]) * size for n, size in enumerate((300_000, 1 << 20, 70_000, 500_001))]
    frames = [encode_frame(OP_BINARY, p, masked=True) for p in big]
    frames.insert(2, encode_frame(OP_PING, b"between", masked=True))
    frames += [encode_frame(OP_BINARY, b"A" * 200_000, masked=True, fin=False),
               encode_frame(0, b"B" * 100, masked=True)]
    stream = b"".join(frames)
    async with serve(echo, "127.0.0.1", 0, max_size=None) as server:
        reader, writer = await _raw_client(server.port)
        try:
            writer.write(encode_frame(OP_BINARY, b"first", masked=True))
            assert await _messages(reader, 1) == [(OP_BINARY, b"first")]
            pos = 0
            for step in itertools.cycle((1, 9, 65_537, 400_000, 3, 250_000)):
                if pos >= len(stream):
                    break
                writer.write(stream[pos:pos + step])
                pos += step
                await writer.drain()
                await asyncio.sleep(0.001)
            got = await _messages(reader, len(big) + 1)
        finally:
            writer.close()
    assert got == [(OP_BINARY, p) for p in big] + [(OP_BINARY, b"A" * 200_000 + b"B" * 100)]
    assert len(slot_reads) >= 4 and sum(slot_reads) > 1 << 20  # the slot path was taken


@async_test
async def test_a_read_that_ends_one_message_and_begins_a_large_frame_takes_its_slot(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The read that completes a message (handed to the waiting handler) may also hold the
    start of a large frame: the next read goes into that frame's slot, not the read buffer."""
    slot_reads = _count_slot_reads(monkeypatch)

    async def echo(ws: WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    small = encode_frame(OP_BINARY, b"s" * 100, masked=True)
    large = encode_frame(OP_BINARY, b"L" * 700_000, masked=True)
    async with serve(echo, "127.0.0.1", 0, max_size=None) as server:
        reader, writer = await _raw_client(server.port)
        try:
            writer.write(encode_frame(OP_BINARY, b"first", masked=True))
            assert await _messages(reader, 1) == [(OP_BINARY, b"first")]
            writer.write(small[:50])  # the handler waits; this message's start comes first
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(small[50:] + large[:1000])  # its end, and the large frame's start
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(large[1000:])
            got = await _messages(reader, 2)
        finally:
            writer.close()
    assert got == [(OP_BINARY, b"s" * 100), (OP_BINARY, b"L" * 700_000)]
    # All the rest came through its slot, but for a last piece under payload_buffer's 64 KiB
    # (without the slot asked for after the wake, the first read, up to 256 KiB, did not).
    assert sum(slot_reads) > len(large) - 1000 - 65_536
