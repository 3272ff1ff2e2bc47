"""The asyncio fast paths (issue 14): the link writes straight to the socket while the
transport's write buffer is empty, and through the transport otherwise (the bytes must arrive in
the order written); ``async for`` awaits the queued message or the waiter itself (no coroutine
per message) and must still end, raise and be cancelled as ``recv`` does."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from typing import Any

import pytest

from hyco_proto.adapters.asyncio import WebSocket, connect, serve
from hyco_proto.adapters.asyncio.link import Link
from hyco_proto.drivers.stream import ConnectionClosedError
from hyco_proto.frames import OP_BINARY, OP_CLOSE, OP_TEXT, encode_frame

from .asyncio_util import WAIT, async_test, bounded
from .test_asyncio_datapath import feed, open_server_socket


async def drained(transport: Any) -> None:
    """Wait (at most WAIT) until ``transport`` has written everything it buffered."""
    for _ in range(int(WAIT / 0.01)):
        if not transport.get_write_buffer_size():
            return
        await asyncio.sleep(0.01)
    assert transport.get_write_buffer_size() == 0


def read_all(sock: socket.socket, into: bytearray) -> None:
    sock.settimeout(WAIT)
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return
        into += data


@async_test
async def test_a_write_behind_a_queued_one_keeps_its_place() -> None:
    ours, peer = socket.socketpair()
    loop = asyncio.get_running_loop()
    link = Link()
    transport, _ = await loop.connect_accepted_socket(lambda: link, sock=ours)
    through: list[int] = []
    write = transport.write

    def counted(data: Any) -> None:
        through.append(len(data))
        write(data)

    transport.write = counted  # type: ignore[method-assign]
    big = os.urandom(16 << 20)  # more than the socket buffers take while nobody reads
    link.write(b"first")
    assert through == []  # the buffer was empty: straight to the socket
    link.write(big)
    assert len(through) == 1 and 0 < through[0] <= len(big)  # the rest waits in the transport
    assert transport.get_write_buffer_size() > 0
    got = bytearray()
    peer.setblocking(False)
    while True:  # room in the socket again, before the loop runs the transport's writer
        try:
            got += peer.recv(1 << 20)
        except BlockingIOError:
            break
    assert got
    link.write(b"second")
    assert len(through) == 2  # behind the queued bytes, not around them
    reader = threading.Thread(target=read_all, args=(peer, got))
    reader.start()
    await drained(transport)  # the transport drains once the peer reads
    link.write(b"third")
    assert len(through) == 2  # empty again: straight to the socket
    link.write(b"")  # close after everything written
    await bounded(link.lost)
    await bounded(asyncio.to_thread(reader.join, WAIT))
    peer.close()
    assert bytes(got) == b"first" + big + b"second" + b"third"
    link.write(b"after the close")  # nothing, and no error


@async_test
async def test_echo_while_the_client_does_not_read_keeps_every_message_in_order() -> None:
    # The server's sends pile up in its transport's buffer while the client is not reading
    # (write buffer pauses the handler), then the client reads them all.
    async def echo(ws: WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    count, size = 400, 20_000
    async with serve(echo, "127.0.0.1", 0, max_size=None) as server, \
            connect(f"ws://127.0.0.1:{server.port}/", max_size=None, max_queue=count) as ws:
        messages = [bytes([n % 256]) * (size + n) for n in range(count)]
        for message in messages:
            await ws.send(message)
        got = [await ws.recv(timeout=WAIT) for _ in range(count)]
        assert got == messages
        small = [f"{n}" for n in range(1000)]
        for message in small:
            await ws.send(message)
        assert [await ws.recv(timeout=WAIT) for _ in small] == small


async def collect(ws: WebSocket) -> list[object]:
    return [message async for message in ws]


@async_test
async def test_iteration_waiting_for_a_message_ends_at_a_normal_close() -> None:
    link, _transport, ws = await open_server_socket()
    task = asyncio.ensure_future(collect(ws))
    await asyncio.sleep(0)  # waiting, nothing queued
    loop = asyncio.get_running_loop()
    loop.call_soon(feed, link, encode_frame(OP_TEXT, b"one", masked=True))
    loop.call_soon(feed, link, encode_frame(OP_BINARY, b"two", masked=True)
                   + encode_frame(OP_BINARY, b"three", masked=True))
    loop.call_soon(feed, link, encode_frame(OP_CLOSE, (1000).to_bytes(2, "big"), masked=True))
    assert await bounded(task) == ["one", b"two", b"three"]


@async_test
async def test_iteration_waiting_for_a_message_raises_at_an_abnormal_close() -> None:
    link, _transport, ws = await open_server_socket()
    task = asyncio.ensure_future(collect(ws))
    await asyncio.sleep(0)
    asyncio.get_running_loop().call_soon(
        feed, link, encode_frame(OP_CLOSE, (1011).to_bytes(2, "big"), masked=True))
    with pytest.raises(ConnectionClosedError) as caught:
        await bounded(task)
    assert caught.value.code == 1011


@async_test
async def test_one_waiter_at_a_time_and_a_cancelled_one_frees_the_socket() -> None:
    link, _transport, ws = await open_server_socket()
    first = asyncio.ensure_future(ws.__anext__())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        await ws.recv()
    with pytest.raises(RuntimeError):
        await ws.__anext__()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    asyncio.get_running_loop().call_soon(
        feed, link, encode_frame(OP_BINARY, b"for the next", masked=True))
    assert await bounded(ws.__anext__()) == b"for the next"
    feed(link, encode_frame(OP_BINARY, b"queued", masked=True))  # nobody waits: queued
    assert await ws.__anext__() == b"queued"
