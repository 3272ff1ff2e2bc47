"""The relay service's own plain-TCP transport (``adapters/asyncio/sockets.py``): the
``asyncio.Transport`` semantics the service relies on, on real sockets."""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

import pytest

from hyco_proto.adapters.asyncio import RelayServiceServer
from hyco_proto.adapters.asyncio import sockets as own
from hyco_proto.adapters.asyncio.sockets import (
    READ,
    WRITE,
    EpollPoller,
    LoopPoller,
    Poller,
    SocketListener,
    SocketTransport,
    bind_sockets,
)

from .asyncio_util import async_test

WAIT = 5.0
POLLERS = ["loop", "epoll"] if hasattr(__import__("select"), "epoll") else ["loop"]


def _poller(kind: str) -> Poller:
    loop = asyncio.get_running_loop()
    return EpollPoller(loop) if kind == "epoll" else LoopPoller(loop)


class Recorder(asyncio.BufferedProtocol):
    """Records every callback; ``keep_open`` is what ``eof_received`` answers."""

    def __init__(self, keep_open: bool = True) -> None:
        self.keep_open = keep_open
        self.events: list[Any] = []
        self.data = bytearray()
        self.buffer = bytearray(4096)
        self.lost = asyncio.Event()
        self.got = asyncio.Event()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.events.append("made")

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self.buffer[:nbytes]
        self.got.set()

    def eof_received(self) -> bool:
        self.events.append("eof")
        return self.keep_open

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", type(exc).__name__ if exc else None))
        self.lost.set()


def _bind(host: str, port: int) -> list[socket.socket]:
    return bind_sockets(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                           flags=socket.AI_PASSIVE), 8)


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    return a, b


def _drain(sock: socket.socket, count: int) -> bytes:
    sock.settimeout(WAIT)
    got = bytearray()
    while len(got) < count:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        got += chunk
    return bytes(got)


@pytest.mark.parametrize("kind", POLLERS)
@async_test
async def test_reads_eof_half_close_and_close_after_flush(kind: str) -> None:
    poller = _poller(kind)
    loop = asyncio.get_running_loop()
    a, b = _pair()
    with b:
        proto = Recorder(keep_open=True)
        transport = SocketTransport(loop, a, proto, poller=poller)
        assert proto.events == ["made"] and transport.get_extra_info("socket") is a
        b.sendall(b"hello")
        await asyncio.wait_for(proto.got.wait(), WAIT)
        assert proto.data == b"hello"
        b.shutdown(socket.SHUT_WR)  # EOF; we keep writing (the service's half-close)
        await asyncio.wait_for(_until(lambda: "eof" in proto.events), WAIT)
        transport.write(b"still here")
        transport.close()
        assert transport.is_closing()
        transport.write(b"after close")  # dropped, as asyncio's transports do
        await asyncio.wait_for(proto.lost.wait(), WAIT)
        assert proto.events == ["made", "eof", ("lost", None)]
        assert _drain(b, 100) == b"still here"  # then EOF


@pytest.mark.parametrize("kind", POLLERS)
@async_test
async def test_eof_not_kept_open_closes(kind: str) -> None:
    poller = _poller(kind)
    loop = asyncio.get_running_loop()
    a, b = _pair()
    with b:
        proto = Recorder(keep_open=False)
        SocketTransport(loop, a, proto, poller=poller)
        b.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(proto.lost.wait(), WAIT)
        assert proto.events == ["made", "eof", ("lost", None)]
        b.settimeout(WAIT)
        assert b.recv(10) == b""  # our side closed too
    assert a.fileno() == -1


@pytest.mark.parametrize("kind", POLLERS)
@async_test
async def test_a_refused_rest_is_copied_kept_in_order_and_flow_controlled(kind: str) -> None:
    poller = _poller(kind)
    """A view of a buffer the caller reuses: what the socket refuses is copied at once; later
    writes queue behind it; pause/resume at the water marks; close flushes everything."""
    loop = asyncio.get_running_loop()
    a, b = _pair()
    with b:
        proto = Recorder()
        transport = SocketTransport(loop, a, proto, poller=poller)
        transport.set_write_buffer_limits(high=64 * 1024)  # low: a quarter
        payload = bytes(range(256)) * (32 * 1024)  # 8 MiB: more than a socket buffer takes
        lent = bytearray(payload)
        transport.write(memoryview(lent))
        queued = transport.get_write_buffer_size()
        assert 0 < queued < len(payload)  # part went straight to the socket
        assert proto.events == ["made", "pause"]
        lent[:] = bytes(len(lent))  # the caller reuses its buffer: nothing may change
        transport.write(b"tail")
        assert transport.get_write_buffer_size() == queued + 4
        transport.close()
        got = await asyncio.wait_for(loop.run_in_executor(None, _drain, b, len(payload) + 4),
                                     WAIT * 4)
        assert got == payload + b"tail"
        await asyncio.wait_for(proto.lost.wait(), WAIT)
        assert proto.events == ["made", "pause", "resume", ("lost", None)]


@pytest.mark.parametrize("kind", POLLERS)
@async_test
async def test_write_eof_shuts_the_write_side_after_the_buffer_and_reading_goes_on(
        kind: str) -> None:
    poller = _poller(kind)
    loop = asyncio.get_running_loop()
    a, b = _pair()
    with b:
        proto = Recorder(keep_open=False)
        transport = SocketTransport(loop, a, proto, poller=poller)
        assert transport.can_write_eof()
        payload = bytes(range(256)) * (32 * 1024)  # 8 MiB: most of it waits in the buffer
        transport.write(payload)
        assert transport.get_write_buffer_size() > 0
        transport.write_eof()
        transport.write_eof()  # once is enough
        with pytest.raises(RuntimeError, match="after write_eof"):
            transport.write(b"more")
        # The peer reads everything, then EOF (shut after the buffer was sent, not before).
        got = await asyncio.wait_for(loop.run_in_executor(None, _drain, b, len(payload) + 1),
                                     WAIT * 4)
        assert got == payload
        assert not transport.is_closing()
        b.sendall(b"still read")  # the read side stays open
        await asyncio.wait_for(proto.got.wait(), WAIT)
        assert bytes(proto.data) == b"still read"
        b.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(proto.lost.wait(), WAIT)  # its EOF then closes
        assert proto.events == ["made", "pause", "resume", "eof", ("lost", None)]


@pytest.mark.parametrize("kind", POLLERS)
@async_test
async def test_abort_drops_the_buffer_and_pause_reading_holds_input(kind: str) -> None:
    poller = _poller(kind)
    loop = asyncio.get_running_loop()
    a, b = _pair()
    with b:
        proto = Recorder()
        transport = SocketTransport(loop, a, proto, poller=poller)
        transport.pause_reading()
        assert not transport.is_reading()
        b.sendall(b"held")
        await asyncio.sleep(0.05)
        assert proto.data == b""
        transport.resume_reading()
        await asyncio.wait_for(proto.got.wait(), WAIT)
        assert proto.data == b"held"
        transport.write(b"x" * (8 << 20))
        assert transport.get_write_buffer_size() > 0
        transport.abort()
        transport.abort()  # once only
        await asyncio.wait_for(proto.lost.wait(), WAIT)
        assert transport.get_write_buffer_size() == 0
        assert proto.events.count(("lost", None)) == 1


@pytest.mark.parametrize("kind", POLLERS)
@async_test
async def test_a_reset_ends_the_connection_quietly(kind: str) -> None:
    poller = _poller(kind)
    loop = asyncio.get_running_loop()
    handled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: handled.append(context))
    server = socket.create_server(("127.0.0.1", 0))
    with server:
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
        conn.setblocking(False)
        proto = Recorder()
        transport = SocketTransport(loop, conn, proto, poller=poller)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        client.close()  # RST
        await asyncio.sleep(0.05)
        transport.write(b"x" * 100_000)
        await asyncio.wait_for(proto.lost.wait(), WAIT)
        assert [e for e in proto.events if e[0] == "lost"] in ([("lost", "ConnectionResetError")],
                                                            [("lost", "BrokenPipeError")])
    assert handled == []


@pytest.mark.parametrize("kind", POLLERS)
@async_test
async def test_a_failing_protocol_is_reported_and_closed(kind: str) -> None:
    poller = _poller(kind)
    loop = asyncio.get_running_loop()
    handled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: handled.append(context))

    class Broken(Recorder):
        def buffer_updated(self, nbytes: int) -> None:
            raise ValueError("bug")

    a, b = _pair()
    with b:
        proto = Broken()
        SocketTransport(loop, a, proto, poller=poller)
        b.sendall(b"boom")
        await asyncio.wait_for(proto.lost.wait(), WAIT)
    assert proto.events[-1] == ("lost", "ValueError")
    assert len(handled) == 1 and isinstance(handled[0]["exception"], ValueError)


@async_test
async def test_out_of_descriptors_rests_the_listening_socket(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(own, "ACCEPT_RETRY_DELAY", 0.05)
    loop = asyncio.get_running_loop()
    (listening,) = _bind("127.0.0.1", 0)
    errors: list[OSError] = []
    made: list[Recorder] = []

    class Starved:
        """A listening socket whose first accept() finds no descriptor left."""

        def __init__(self, sock: socket.socket) -> None:
            self.sock, self.failed = sock, False
            self.family, self.type = sock.family, sock.type

        def fileno(self) -> int:
            return self.sock.fileno()

        def _accept(self) -> tuple[int, Any]:
            if not self.failed:
                self.failed = True
                raise OSError(errno.EMFILE, "Too many open files")
            return self.sock._accept()  # type: ignore[attr-defined,no-any-return]

        def close(self) -> None:
            self.sock.close()

    failed_at: list[float] = []

    def failed(exc: OSError) -> None:
        errors.append(exc)
        failed_at.append(loop.time())

    def factory() -> Recorder:
        made.append(Recorder())
        made[-1].events.append(loop.time())
        return made[-1]

    listener = SocketListener(loop, [Starved(listening)],  # type: ignore[list-item]
                              factory, 4, failed)
    client = socket.create_connection(listening.getsockname())
    with client:
        await asyncio.wait_for(_until(lambda: bool(made)), WAIT)
        assert [e.errno for e in errors] == [errno.EMFILE]
        # Not woken again for the same pending connection until the rest is over.
        assert made[0].events[0] - failed_at[0] >= 0.04
        listener.close()
        assert not listener.is_serving()
        await listener.wait_closed()


def test_bind_failure_names_the_address() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as failed:
            _bind("127.0.0.1", port)
    assert failed.value.errno == errno.EADDRINUSE
    assert f"('127.0.0.1', {port})" in str(failed.value)


def test_own_sockets_refuses_tls() -> None:
    import ssl

    with pytest.raises(ValueError, match="TLS"):
        RelayServiceServer(port=0, ssl=ssl.create_default_context(), own_sockets=True)


@pytest.mark.parametrize("own_sockets", [True, False])
@async_test
async def test_the_service_answers_on_either_transport(own_sockets: bool) -> None:
    async with RelayServiceServer(port=0, own_sockets=own_sockets) as server:
        assert isinstance(server._server, SocketListener) is own_sockets
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /$status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), WAIT)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
        writer.close()


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.005)


@pytest.mark.skipif("epoll" not in POLLERS, reason="epoll is Linux's")
@async_test
async def test_epoll_poller_runs_every_ready_socket_even_after_a_failing_one() -> None:
    loop = asyncio.get_running_loop()
    handled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: handled.append(context))
    poller = EpollPoller(loop)
    calls: list[str] = []

    class Fake:
        def __init__(self, name: str, sock: socket.socket, fails: bool) -> None:
            self.name, self.sock, self.fails = name, sock, fails

        def _on_readable(self) -> None:
            calls.append(self.name)
            self.sock.recv(100)
            if self.fails:
                raise RuntimeError("bug")

        def _on_writable(self) -> None:
            calls.append(self.name + " writable")
            poller.update(self.sock.fileno(), self, READ)  # type: ignore[arg-type]

        def abort(self) -> None:  # the poller's close aborts what it still watches
            calls.append(self.name + " aborted")
            poller.update(self.sock.fileno(), self, 0)  # type: ignore[arg-type]

    pairs = [_pair() for _ in range(2)]
    try:
        fakes = [Fake("bad", pairs[0][0], True), Fake("good", pairs[1][0], False)]
        for fake in fakes:
            poller.update(fake.sock.fileno(), fake, READ)  # type: ignore[arg-type]
        for _, other in pairs:
            other.sendall(b"x")
        await asyncio.wait_for(_until(lambda: len(calls) >= 2), WAIT)
        assert sorted(calls) == ["bad", "good"]
        assert len(handled) == 1 and isinstance(handled[0]["exception"], RuntimeError)
        # WRITE as well, then back to READ only; 0 stops watching.
        poller.update(fakes[1].sock.fileno(), fakes[1], READ | WRITE)  # type: ignore[arg-type]
        await asyncio.wait_for(_until(lambda: "good writable" in calls), WAIT)
        poller.update(fakes[0].sock.fileno(), fakes[0], 0)  # type: ignore[arg-type]
        pairs[0][1].sendall(b"y")
        await asyncio.sleep(0.05)
        assert calls.count("bad") == 1
        poller.close()
        assert calls[-1] == "good aborted" and "bad aborted" not in calls
        poller.close()  # once
    finally:
        poller.close()
        for a, b in pairs:
            a.close()
            b.close()


@async_test
async def test_a_protocol_that_fails_to_start_costs_only_its_connection() -> None:
    loop = asyncio.get_running_loop()
    handled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: handled.append(context))
    (listening,) = _bind("127.0.0.1", 0)
    made: list[Recorder] = []

    class Fails(Recorder):
        def connection_made(self, transport: Any) -> None:
            raise RuntimeError("bug")

    def factory() -> Recorder:
        made.append(Fails() if not made else Recorder())
        return made[-1]

    listener = SocketListener(loop, [listening], factory, 4, lambda exc: None)
    try:
        first = socket.create_connection(listening.getsockname())
        first.settimeout(WAIT)
        await asyncio.wait_for(_until(lambda: bool(handled)), WAIT)
        assert isinstance(handled[0]["exception"], RuntimeError)
        assert await loop.run_in_executor(None, first.recv, 10) == b""  # closed, not leaked
        # ... and the protocol hears connection_lost, so whatever it set up is undone.
        await asyncio.wait_for(made[0].lost.wait(), WAIT)
        assert made[0].events == [("lost", "RuntimeError")]
        first.close()
        with socket.create_connection(listening.getsockname()) as second:
            second.sendall(b"next")
            await asyncio.wait_for(_until(lambda: len(made) == 2 and bool(made[1].data)), WAIT)
            assert made[1].data == b"next"
    finally:
        listener.close()


@pytest.mark.skipif("epoll" not in POLLERS, reason="epoll is Linux's")
@async_test
async def test_a_connection_that_keeps_talking_settles_on_the_loops_callbacks() -> None:
    loop = asyncio.get_running_loop()
    poller = EpollPoller(loop)
    a, b = _pair()
    try:
        proto = Recorder()
        transport = SocketTransport(loop, a, proto, poller=poller)
        for i in range(own.SETTLE_AFTER + 4):
            proto.got.clear()
            b.sendall(b"%d," % i)
            await asyncio.wait_for(proto.got.wait(), WAIT)
            settled = transport._poller is not poller
            assert settled == (i + 1 >= own.SETTLE_AFTER)
        assert proto.data == b"".join(b"%d," % i for i in range(own.SETTLE_AFTER + 4))
        assert a.fileno() not in poller._watched  # moved, not watched twice
        # Writing and closing work the same from there.
        payload = b"z" * (8 << 20)
        transport.write(payload)
        transport.close()
        got = await asyncio.wait_for(loop.run_in_executor(None, _drain, b, len(payload)),
                                     WAIT * 4)
        assert got == payload
        await asyncio.wait_for(proto.lost.wait(), WAIT)
        assert not poller._settled._watched  # nothing left registered
    finally:
        poller.close()
        b.close()


@pytest.mark.parametrize("kind", POLLERS)
@async_test
async def test_what_connection_made_writes_beyond_the_socket_is_flushed(kind: str) -> None:
    poller = _poller(kind)
    loop = asyncio.get_running_loop()
    payload = bytes(range(256)) * (32 * 1024)  # 8 MiB

    class Greeter(Recorder):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            transport.write(payload)  # more than the socket takes: WRITE is watched already

    a, b = _pair()
    with b:
        proto = Greeter()
        transport = SocketTransport(loop, a, proto, poller=poller)
        assert transport.get_write_buffer_size() > 0 and transport.is_reading()
        got = await asyncio.wait_for(loop.run_in_executor(None, _drain, b, len(payload)),
                                     WAIT * 4)
        assert got == payload
        b.sendall(b"and reads")
        await asyncio.wait_for(proto.got.wait(), WAIT)
        assert proto.data == b"and reads"
        transport.close()
        await asyncio.wait_for(proto.lost.wait(), WAIT)
    poller.close()


@pytest.mark.skipif("epoll" not in POLLERS, reason="epoll is Linux's")
@async_test
async def test_epoll_poller_copes_with_a_socket_closed_while_watched() -> None:
    """A socket closed without being unwatched leaves its number in the table; the next socket
    with that number must still be watched (the kernel forgot the old one)."""
    loop = asyncio.get_running_loop()
    poller = EpollPoller(loop)
    try:
        a, b = _pair()
        old = Recorder()
        SocketTransport(loop, a, old, poller=poller)
        number = a.fileno()
        a.close()  # behind the poller's back
        c, d = _pair()
        assert c.fileno() == number  # the lowest free number is reused
        with b, d:
            new = Recorder()
            transport = SocketTransport(loop, c, new, poller=poller)
            transport.write(b"x" * (8 << 20))  # READ | WRITE: a modify of the stale entry
            d.sendall(b"to the new one")
            await asyncio.wait_for(new.got.wait(), WAIT)
            assert new.data == b"to the new one" and old.data == b""
            transport.abort()
            await asyncio.wait_for(new.lost.wait(), WAIT)
    finally:
        poller.close()


@async_test
async def test_a_poller_that_refuses_a_socket_ends_that_connection() -> None:
    loop = asyncio.get_running_loop()

    class Full(LoopPoller):
        def update(self, fd: int, transport: Any, events: int) -> None:
            if events & WRITE:
                raise OSError(errno.ENOSPC, "No space left on device")
            super().update(fd, transport, events)

    poller = Full(loop)
    a, b = _pair()
    with b:
        proto = Recorder()
        transport = SocketTransport(loop, a, proto, poller=poller)
        transport.write(b"x" * (8 << 20))  # needs WRITE: refused
        await asyncio.wait_for(proto.lost.wait(), WAIT)
        assert proto.events[-1] == ("lost", "OSError")
        assert transport.get_write_buffer_size() == 0 and not poller._watched
    assert a.fileno() == -1


@pytest.mark.parametrize("own_sockets", [True, False])
@async_test
async def test_a_wildcard_host_on_any_port_is_reached_at_its_url(own_sockets: bool) -> None:
    """``host=""`` binds IPv4 and IPv6; ``url`` (shown as 127.0.0.1) must name the IPv4
    socket's port (asyncio gives each address its own port; ours share one)."""
    async with RelayServiceServer(port=0, host="", own_sockets=own_sockets) as server:
        ports = {sock.getsockname()[1] for sock in server._server.sockets}
        assert server.port in ports
        if own_sockets:
            assert ports == {server.port}
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /$status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), WAIT)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
        writer.close()


@pytest.mark.parametrize("own_sockets", [True, False], ids=["own-sockets", "asyncio-transports"])
@async_test
async def test_relayed_reads_take_the_lane_and_hand_back_at_the_close(own_sockets: bool) -> None:
    """After a leg's first plain read the driver forwards through ``RelayService.lane``: every
    message still arrives whole and in order, the counters see them, and the close passes
    (the lane hands back and the pair ends as without it)."""
    from tests.adapters.test_asyncio_relay import connect, echo_listener
    from tests.test_relay_lane import LaneSpy

    async with RelayServiceServer(port=0, own_sockets=own_sockets) as server:
        spy = LaneSpy(server.service)
        async with echo_listener(server):
            ws = await connect(server)
            messages = [bytes([i]) * (1 + 997 * i) for i in range(40)]
            for message in messages:
                await asyncio.wait_for(ws.send(message), WAIT)
                assert await asyncio.wait_for(ws.recv(), WAIT) == message
            assert spy.views >= 2 * (len(messages) - 1)  # both ways, after each first read
            # On the own sockets a settled leg reads through its pump (relay_lane's step).
            assert (spy.steps >= 2 * (len(messages) - own.SETTLE_AFTER)) == own_sockets
            counted = server.service.counters()
            assert counted.messages_relayed == 2 * len(messages)
            assert counted.bytes_relayed == 2 * sum(map(len, messages))
            await asyncio.wait_for(ws.close(), WAIT)
            assert ws.close_code == 1000
            assert spy.handed_back >= 1
