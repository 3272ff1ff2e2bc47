"""The asyncio per-message paths written inline (issue 14, session 4): ``WebSocket.send``
writes a small frame straight to the socket while the lean transport's buffer is empty (the
link's direct case, no call), ``view_received`` resumes the waiting task in place, and
``__anext__`` makes the reused waiter pending again without ``_take``. Each keeps the order of
bytes and messages, and stops where the general path stops."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

from hyco_proto.adapters.asyncio import WebSocket, connect, serve
from hyco_proto.adapters.asyncio.lean import LinkTransport
from hyco_proto.frames import OP_BINARY, OP_CLOSE, FrameDecoder, encode_frame

from .asyncio_util import WAIT, async_test, bounded
from .test_asyncio_fastpath import read_all
from .test_asyncio_lean import lean_pair


@async_test
async def test_no_direct_write_once_the_lean_transport_closes() -> None:
    for end in ("close", "abort"):
        link, transport, peer = await lean_pair()
        link.write(b"before")
        assert link._fd >= 0  # the next write would go straight to the socket
        getattr(transport, end)()
        link.write(b"after")  # dropped, as the transport drops it
        link.write_all([b"af", b"ter"])
        await bounded(link.lost)
        got = bytearray()
        await bounded(asyncio.to_thread(read_all, peer, got))
        peer.close()
        assert bytes(got) == b"before", end


@async_test
async def test_small_sends_keep_their_order_through_a_partial_direct_write() -> None:
    # Frames under 16 KiB go from send() straight to the socket; once the socket takes only
    # part of one, the rest and every later frame go through the transport's buffer, behind it.
    count, size = 3000, 8000  # 24 MB: far more than the socket buffers hold unread

    async def burst(ws: WebSocket) -> None:
        async for _ in ws:
            for n in range(count):
                await ws.send(n.to_bytes(4, "big") * (size // 4))

    async with serve(burst, "127.0.0.1", 0, max_size=None) as server, \
            connect(f"ws://127.0.0.1:{server.port}/", max_size=None) as ws:
        (accepted,) = server._sockets
        assert isinstance(accepted.transport, LinkTransport)
        await ws.send("go")
        await asyncio.sleep(0.2)  # the server fills the socket while we do not read
        for n in range(count):
            assert await ws.recv(timeout=WAIT) == n.to_bytes(4, "big") * (size // 4)


@async_test
async def test_a_send_after_the_socket_has_room_again_still_goes_behind_the_queued_bytes() -> None:
    # A partial direct write leaves bytes in the transport's buffer; the peer then reads (room
    # in the socket again) before the loop's writer runs: the next send must still queue
    # behind them, not go straight to the socket ahead of them.
    reading = threading.Event()
    size = 8000

    def frame_no(n: int) -> bytes:
        return n.to_bytes(4, "big") * (size // 4)

    async def burst(ws: WebSocket) -> None:
        await ws.recv(timeout=WAIT)
        transport = ws.transport
        assert isinstance(transport, LinkTransport)
        n = 0
        while not transport.get_write_buffer_size():  # until a direct write is partial
            await ws.send(frame_no(n))
            n += 1
        reading.set()
        time.sleep(0.3)  # the loop is held: the peer empties the socket, no writer runs
        for m in range(n, n + 5):
            await ws.send(frame_no(m))
        await ws.close()

    def client(port: int) -> list[bytes]:
        with _raw_client(port) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(encode_frame(OP_BINARY, b"go", masked=True))
            assert reading.wait(WAIT)
            decoder, got, part = FrameDecoder(masked=False), [], b""
            while True:
                chunks = decoder.feed(sock.recv(1 << 20))
                for opcode, payload, fin in chunks:  # a frame's payload comes in pieces
                    if opcode == OP_BINARY:
                        part += payload
                        if fin:
                            got.append(part)
                            part = b""
                if any(opcode == OP_CLOSE for opcode, _, _ in chunks):
                    sock.sendall(encode_frame(OP_CLOSE, b"", masked=True))
                    read_all(sock, bytearray())
                    return got

    async with serve(burst, "127.0.0.1", 0) as server:
        got = await bounded(asyncio.to_thread(client, server.port))
    assert len(got) > 5 and got == [frame_no(n) for n in range(len(got))]


def _raw_client(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101")
    return sock


@async_test
async def test_iteration_takes_what_was_queued_while_its_handler_ran() -> None:
    # The first message wakes the waiting iteration in place (its waiter is then reused);
    # while the handler sleeps, two messages arrive and are queued: the next __anext__ calls
    # must return them, not wait again (the close comes only once they are taken).
    got: list[bytes] = []
    handled = asyncio.Event()
    running, three = threading.Event(), threading.Event()

    async def slow(ws: WebSocket) -> None:
        async for message in ws:
            got.append(message)  # type: ignore[arg-type]
            if len(got) == 1:
                running.set()
                await asyncio.sleep(0.3)
            elif len(got) == 3:
                three.set()
        handled.set()

    def client(port: int) -> bytes:
        with _raw_client(port) as sock:
            sock.sendall(encode_frame(OP_BINARY, b"one", masked=True))
            assert running.wait(WAIT)
            sock.sendall(encode_frame(OP_BINARY, b"two", masked=True))
            sock.sendall(encode_frame(OP_BINARY, b"three", masked=True))
            assert three.wait(WAIT)
            sock.sendall(encode_frame(OP_CLOSE, (1000).to_bytes(2, "big"), masked=True))
            reply = bytearray()
            read_all(sock, reply)
            return bytes(reply)

    async with serve(slow, "127.0.0.1", 0) as server:
        reply = await bounded(asyncio.to_thread(client, server.port))
        await bounded(handled.wait())
    assert got == [b"one", b"two", b"three"]
    assert reply == encode_frame(OP_CLOSE, (1000).to_bytes(2, "big"))


@async_test
async def test_iteration_woken_in_place_ends_at_a_close_that_came_while_it_ran() -> None:
    done = asyncio.Event()
    running = threading.Event()

    async def slow(ws: WebSocket) -> None:
        async for _ in ws:
            running.set()
            await asyncio.sleep(0.3)
        done.set()

    def client(port: int) -> None:
        with _raw_client(port) as sock:
            sock.sendall(encode_frame(OP_BINARY, b"one", masked=True))
            assert running.wait(WAIT)
            sock.sendall(encode_frame(OP_CLOSE, (1000).to_bytes(2, "big"), masked=True))
            read_all(sock, bytearray())

    async with serve(slow, "127.0.0.1", 0) as server:
        await bounded(asyncio.to_thread(client, server.port))
        await bounded(done.wait())
