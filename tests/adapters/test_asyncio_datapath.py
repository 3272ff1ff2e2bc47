"""The asyncio WebSocket data path (issue 14): a waiting ``recv`` resumes inside the read's
callback, reads go through one shared buffer per thread, a large frame's header leaves with the
start of its payload, and ``recv(timeout)`` / cancellation still behave."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest

from hyco_proto.adapters.asyncio import WebSocket, connect, serve
from hyco_proto.adapters.asyncio.link import READ_SIZE, Link
from hyco_proto.drivers.connection import ServerConnection
from hyco_proto.frames import OP_BINARY, OP_TEXT, FrameDecoder, encode_frame
from hyco_proto.handshake import ClientHandshake

from .asyncio_util import WAIT, async_test, bounded


class FakeTransport(asyncio.Transport):
    """Records writes; no socket."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


def feed(link: Link, data: bytes) -> None:
    """What the transport does for a read: fill the link's buffer, report the size."""
    buffer = link.get_buffer(-1)
    buffer[: len(data)] = data
    link.buffer_updated(len(data))


async def open_server_socket() -> tuple[Link, FakeTransport, WebSocket]:
    link = Link()
    transport = FakeTransport()
    link.connection_made(transport)
    conn = ServerConnection(max_message_size=None)
    ws = WebSocket(link, conn)
    feed(link, ClientHandshake("example:80", "/").data_to_send())
    conn.accept(None)
    ws._process()
    assert transport.writes[0].startswith(b"HTTP/1.1 101 ")
    transport.writes.clear()
    return link, transport, ws


def echoed(writes: list[bytes]) -> list[tuple[int, bytes]]:
    decoder = FrameDecoder(masked=False)
    return [(op, payload) for op, payload, _fin in decoder.feed(b"".join(writes))]


@async_test
async def test_a_waiting_recv_runs_before_the_read_callback_returns() -> None:
    link, transport, ws = await open_server_socket()

    async def echo() -> None:
        async for message in ws:
            await ws.send(message)

    task = asyncio.ensure_future(echo())
    await asyncio.sleep(0)  # the handler now waits in recv
    loop = asyncio.get_running_loop()
    seen: list[list[tuple[int, bytes]]] = []
    done = loop.create_future()

    def read() -> None:  # a loop callback, like the transport's read handler
        feed(link, encode_frame(OP_BINARY, b"ping me", masked=True))
        seen.append(echoed(transport.writes))
        done.set_result(None)

    loop.call_soon(read)
    await bounded(done)
    assert seen == [[(OP_BINARY, b"ping me")]]  # echoed inside the same callback
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@async_test
async def test_a_read_inside_a_task_wakes_recv_on_the_next_iteration() -> None:
    link, _transport, ws = await open_server_socket()
    task = asyncio.ensure_future(ws.recv())
    await asyncio.sleep(0)
    feed(link, encode_frame(OP_TEXT, b"hello", masked=True))  # from this task: no re-entry
    assert not task.done()
    assert await bounded(task) == "hello"


@async_test
async def test_recv_timeout_and_cancel_leave_the_socket_usable() -> None:
    link, _transport, ws = await open_server_socket()
    with pytest.raises(TimeoutError):
        await ws.recv(timeout=0.05)
    waiting = asyncio.ensure_future(ws.recv())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    loop = asyncio.get_running_loop()
    loop.call_soon(feed, link, encode_frame(OP_BINARY, b"later", masked=True))
    assert await ws.recv(timeout=WAIT) == b"later"


@async_test
async def test_a_message_split_across_reads_and_many_in_one_read() -> None:
    link, _transport, ws = await open_server_socket()
    frames = b"".join(encode_frame(OP_BINARY, bytes([n]) * 300, masked=True) for n in range(3))
    loop = asyncio.get_running_loop()
    for start in range(0, len(frames), 100):  # every read reuses the shared buffer
        loop.call_soon(feed, link, frames[start:start + 100])
    got = [await ws.recv(timeout=WAIT) for _ in range(3)]
    assert got == [bytes([n]) * 300 for n in range(3)]


@async_test
async def test_links_on_one_thread_share_one_read_buffer_other_threads_have_theirs() -> None:
    first, second = Link(), Link()
    assert first.get_buffer(-1) is second.get_buffer(-1)
    assert len(first.get_buffer(-1)) == READ_SIZE
    other: list[memoryview] = []

    def elsewhere() -> None:
        async def make() -> None:
            other.append(Link().get_buffer(-1))

        asyncio.run(make())

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join(WAIT)
    assert other and other[0] is not first.get_buffer(-1)


@async_test
async def test_a_receiver_without_view_received_gets_bytes_it_may_keep() -> None:
    kept: list[bytes] = []

    class Keeper:
        def data_received(self, data: bytes) -> None:
            kept.append(data)

        def eof_received(self) -> None:
            pass

        def connection_lost(self, exc: Exception | None) -> None:
            pass

    link = Link(Keeper())
    feed(link, b"first")
    feed(link, b"second")
    assert kept == [b"first", b"second"]
    assert all(type(data) is bytes for data in kept)


@async_test
async def test_write_all_sends_a_big_frame_header_with_the_start_of_its_payload() -> None:
    link = Link()
    transport = FakeTransport()
    link.connection_made(transport)
    header = b"\x82\x7f" + bytes(8)
    big, medium = os.urandom(1_000_000), os.urandom(100_000)
    link.write_all([header, big, b"\x8a\x00", b"\x81\x02hi", header, medium, b""])
    writes = transport.writes
    assert writes[0][:10] == header
    assert 10 < len(writes[0]) < 20_000  # the header did not go out alone, nor all of big
    assert writes[2] == b"\x8a\x00\x81\x02hi" + header + medium  # up to 256 KiB: one write
    assert b"".join(writes) == header + big + b"\x8a\x00\x81\x02hi" + header + medium
    assert transport.closed  # b"" closes after everything before it


@async_test
async def test_echo_over_loopback_at_every_size() -> None:
    async def echo(ws: WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0, max_size=None) as server, \
            connect(f"ws://127.0.0.1:{server.port}/", max_size=None) as ws:
        for size in (0, 1, 125, 126, 65_535, 65_536, 100 * 1024, 3 * READ_SIZE + 7):
            message = os.urandom(size)
            await ws.send(message)
            assert await ws.recv(timeout=WAIT) == message
            await ws.send("é" * size)
            assert await ws.recv(timeout=WAIT) == "é" * size


@async_test
async def test_a_transport_that_only_looks_like_asyncio_transport_is_taken() -> None:
    class Duck:  # uvloop's transports do not subclass asyncio.Transport
        def __init__(self) -> None:
            self.writes: list[bytes] = []
            self.limits: tuple[int | None, int | None] = (None, None)

        def set_write_buffer_limits(self, high: int | None = None,
                                    low: int | None = None) -> None:
            self.limits = (high, low)

        def is_closing(self) -> bool:
            return False

        def write(self, data: bytes) -> None:
            self.writes.append(bytes(data))

    duck = Duck()
    link = Link(write_limit=4096)
    link.connection_made(duck)  # type: ignore[arg-type]
    link.write(b"out")
    assert duck.writes == [b"out"] and duck.limits == (4096, 1024)
