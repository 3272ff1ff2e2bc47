"""The adapter's plain-TCP connections on the lean transport (``adapters/asyncio/lean.py``):
``open_link`` (clients, the listener's control and rendezvous connections) and ``serve`` use it on
a selector loop without TLS. Pinned here: which transport runs, the link's writes keep their order
through a partial send, close flushes first, EOF / reset / pause / resume reach the link as on
asyncio's transports, connect failures name the address on both, ``serve_forever`` ends."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import struct
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from hyco_proto.adapters.asyncio import WebSocket, connect, lean, serve
from hyco_proto.adapters.asyncio.link import Link, open_link
from hyco_proto.adapters.asyncio.sockets import LoopPoller

from .asyncio_util import WAIT, async_test, bounded
from .test_asyncio_fastpath import drained, read_all


@pytest.fixture(params=[True, False], ids=["lean", "asyncio"])
def transport_kind(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Each test with this fixture runs on the lean transport and on asyncio's."""
    saved = lean.ENABLED
    lean.ENABLED = request.param
    try:
        yield request.param
    finally:
        lean.ENABLED = saved


class Recorder:
    """A link receiver that keeps what it gets (bytes or views, copied) and the callbacks."""

    def __init__(self, views: bool = True) -> None:
        self.data = bytearray()
        self.calls: list[str] = []
        self.lost: list[Exception | None] = []
        self.got = asyncio.Event()
        if views:
            self.view_received = self._view

    def _view(self, view: memoryview) -> None:
        self.calls.append("view")
        self.data += view
        self.got.set()

    def data_received(self, data: bytes) -> None:
        assert type(data) is bytes
        self.calls.append("bytes")
        self.data += data
        self.got.set()

    def eof_received(self) -> None:
        self.calls.append("eof")

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append("lost")
        self.lost.append(exc)


async def lean_pair(receiver: Any = None) -> tuple[Link, lean.LinkTransport, socket.socket]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    link = Link(receiver)
    transport = lean.LinkTransport(asyncio.get_running_loop(), ours, link,
                                   poller=LoopPoller(asyncio.get_running_loop()))
    return link, transport, peer


async def received(recorder: Recorder, size: int) -> None:
    while len(recorder.data) < size:
        recorder.got.clear()
        await bounded(recorder.got.wait())


@async_test
async def test_echo_on_both_transports_and_which_one_runs(transport_kind: bool) -> None:
    async def echo(ws: WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0) as server, \
            connect(f"ws://127.0.0.1:{server.port}/") as ws:
        for message in (b"x" * 100, "text", os.urandom(300_000)):
            await ws.send(message)
            assert await ws.recv(timeout=WAIT) == message
        assert isinstance(ws.transport, lean.LinkTransport) is transport_kind
        (accepted,) = server._sockets
        assert isinstance(accepted.transport, lean.LinkTransport) is transport_kind
        # A name (resolved by the loop's resolver; each of its addresses tried in turn).
        async with connect(f"ws://localhost:{server.port}/") as by_name:
            await by_name.send("by name")
            assert await by_name.recv(timeout=WAIT) == "by name"
    assert not lean.applies(asyncio.get_running_loop(), True)  # TLS: asyncio's, always


@async_test
async def test_writes_keep_their_order_through_a_partial_send_and_close_flushes_first() -> None:
    link, transport, peer = await lean_pair()
    big = os.urandom(16 << 20)  # more than the socket buffers take while nobody reads
    link.write(b"first")
    assert transport.get_write_buffer_size() == 0  # straight to the socket
    link.write(big)
    assert transport.get_write_buffer_size() > 0  # the rest waits in the transport
    link.write_all([b"sec", b"ond"])
    got = bytearray()
    reader = threading.Thread(target=read_all, args=(peer, got))
    reader.start()
    await drained(transport)  # the transport drains once the peer reads
    link.write(b"third")
    link.write(big[:1 << 20])
    link.write(b"")  # close after everything written, buffered or not
    await bounded(link.lost)
    await bounded(asyncio.to_thread(reader.join, WAIT))
    peer.close()
    assert bytes(got) == b"first" + big + b"second" + b"third" + big[:1 << 20]
    link.write(b"after the close")  # nothing, and no error


@async_test
async def test_views_or_bytes_as_the_receiver_asks_then_eof_closes() -> None:
    viewer = Recorder()
    link, _transport, peer = await lean_pair(viewer)
    peer.sendall(b"one")
    await received(viewer, 3)
    plain = Recorder(views=False)
    link.receiver = plain  # handed over: the next read goes to the new receiver, as bytes
    peer.sendall(b"two")
    await received(plain, 3)
    peer.shutdown(socket.SHUT_WR)
    await bounded(link.lost)
    assert viewer.calls == ["view"] and bytes(viewer.data) == b"one"
    assert plain.calls == ["bytes", "eof", "lost"] and plain.lost == [None]
    assert peer.recv(10) == b""  # our side closed too (eof_received kept nothing open)
    peer.close()


@async_test
async def test_a_reset_ends_the_link_with_the_error() -> None:
    recorder = Recorder()
    link, _transport, peer = await lean_pair(recorder)
    link.write(b"x")
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # unread data and linger 0: an RST
    await bounded(link.lost)
    await asyncio.sleep(0)
    assert recorder.calls[-1] == "lost" and isinstance(recorder.lost[-1], OSError)
    drained = False
    try:
        await bounded(link.drain())
    except ConnectionError:
        drained = True
    assert drained or not link.write_paused  # nothing waits on a lost link


@async_test
async def test_pause_and_resume_reading() -> None:
    recorder = Recorder()
    link, transport, peer = await lean_pair(recorder)
    link.pause_reading()
    assert not transport.is_reading()
    peer.sendall(b"held")
    await asyncio.sleep(0.1)  # the loop runs; the socket is not read while paused
    assert recorder.data == b""
    link.resume_reading()
    await received(recorder, 4)
    assert recorder.data == b"held" and transport.is_reading()
    link.abort()
    await bounded(link.lost)
    peer.close()


@async_test
async def test_connect_failures_name_the_address(transport_kind: bool) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        port = unused.getsockname()[1]
        with pytest.raises(ConnectionRefusedError,
                           match=f"nothing is listening at 127.0.0.1:{port}"):
            await open_link(Link(), "127.0.0.1", port, secure=False, ssl=None, timeout=WAIT)
        with pytest.raises(ConnectionRefusedError, match=f"127.0.0.1:{port}"):
            await connect(f"ws://127.0.0.1:{port}/", open_timeout=WAIT)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
@async_test
async def test_a_connect_that_times_out_names_the_address_and_leaves_no_socket(
        transport_kind: bool) -> None:
    # A listener whose accept queue is full drops further SYNs: those connects hang.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        while True:
            filler = socket.socket()
            filler.setblocking(False)
            fillers.append(filler)
            if filler.connect_ex(("127.0.0.1", port)) != 0:
                # In progress: wait briefly; one that does not complete means the queue is full.
                await asyncio.sleep(0.05)
                if filler.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0 or \
                        not _connected(filler):
                    break
            if len(fillers) > 64:
                pytest.skip("this kernel kept accepting into a full queue")
        before = _open_fds()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            with pytest.raises(TimeoutError,
                               match=f"no answer from 127.0.0.1:{port} within 0.3 s"):
                await open_link(Link(), "127.0.0.1", port, secure=False, ssl=None,
                                timeout=0.3)
            await asyncio.sleep(0)
            gc.collect()
        assert _open_fds() == before
        # Closed by the attempt itself, not left to the garbage collector.
        assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def _connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


@async_test
async def test_serve_forever_returns_at_close_and_cancelling_it_stops_accepting(
        transport_kind: bool) -> None:
    async def handler(ws: WebSocket) -> None:
        await ws.recv()

    server = await serve(handler, "127.0.0.1", 0)
    forever = asyncio.ensure_future(server.serve_forever())
    await asyncio.sleep(0)
    assert not forever.done()
    server.close()
    await bounded(forever)  # returns, no error
    await server.wait_closed()

    server = await serve(handler, "127.0.0.1", 0)
    port = server.port
    forever = asyncio.ensure_future(server.serve_forever())
    await asyncio.sleep(0)
    forever.cancel()
    with pytest.raises(asyncio.CancelledError):
        await bounded(forever)
    with pytest.raises(ConnectionRefusedError):
        await connect(f"ws://127.0.0.1:{port}/", open_timeout=WAIT)
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("kind", ["lean", "asyncio"])
@async_test
async def test_write_all_sends_chunks_in_one_writev_and_keeps_order_when_it_is_partial(
        kind: str) -> None:
    if kind == "lean":
        link, transport, peer = await lean_pair()
    else:
        ours, peer = socket.socketpair()
        link = Link()
        made, _ = await asyncio.get_running_loop().connect_accepted_socket(lambda: link,
                                                                           sock=ours)
        transport = made  # type: ignore[assignment]
    # Small socket buffers: a 200 kB writev is only partly taken.
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    head, big = b"\x82\x7f" + (200_000).to_bytes(8, "big"), os.urandom(200_000)
    huge = os.urandom(1 << 20)  # over the writev limit: the header goes with its start
    link.write_all([b"a", b"bc"])  # both taken at once: nothing buffered
    assert transport.get_write_buffer_size() == 0
    link.write_all([head, big, b"tail"])  # more than the socket takes: the rest is buffered
    assert 0 < transport.get_write_buffer_size() < len(head) + len(big) + 4
    link.write_all([b"after", b"wards"])  # behind the buffered rest
    link.write_all([head, huge])
    link.write_all([b"last", b""])  # then close, after everything
    got = bytearray()
    reader = threading.Thread(target=read_all, args=(peer, got))
    reader.start()
    await bounded(link.lost)
    await bounded(asyncio.to_thread(reader.join, WAIT))
    peer.close()
    assert bytes(got) == (b"abc" + head + big + b"tail" + b"afterwards" + head + huge
                          + b"last")


@async_test
async def test_serving_on_a_name_that_does_not_resolve_names_it(transport_kind: bool) -> None:
    async def nothing(ws: WebSocket) -> None:
        pass

    async def no_such_name(*args: object, **kwargs: object) -> None:
        # The resolver's answer for a name that does not exist (no DNS query from a test).
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    loop = asyncio.get_running_loop()
    loop.getaddrinfo = no_such_name  # type: ignore[method-assign, assignment]
    try:
        with pytest.raises(socket.gaierror,
                           match=r"cannot serve on no-such-host\.invalid:0: Name or service"):
            await bounded(serve(nothing, "no-such-host.invalid", 0))
    finally:
        del loop.getaddrinfo  # type: ignore[method-assign]
