"""RelayServiceServer's accept queue holds a burst, and it holds no more connections than
the process can (``max_connections``). The accept queue: bench/load.py found asyncio's default
of 100 dropping SYNs when 1,000 clients connect at once (those clients waited for a
retransmission).

While the event loop is busy (here: this test's own synchronous code), the kernel completes
handshakes only for as many connections as the listening socket's backlog allows; the rest wait
in SYN retransmission. 300 connections must all complete with the default backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import select
import socket
import time

import pytest

from hyco_proto.adapters.asyncio import RelayServiceServer
from hyco_proto.adapters.asyncio import service as service_module
from hyco_proto.adapters.asyncio.service import (
    DEFAULT_BACKLOG,
    FD_RESERVE,
    default_max_connections,
)

from .asyncio_util import async_test

BURST = 300


def completed_while_not_accepting(port: int, count: int) -> int:
    """Open ``count`` non-blocking connects without letting the loop run; how many completed
    their handshake within 1 s (they sit in the accept queue)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            err = sock.connect_ex(("127.0.0.1", port))
            assert err in (0, errno.EINPROGRESS), err
            socks.append(sock)
        done: set[socket.socket] = set()
        deadline = time.monotonic() + 1.0
        while len(done) < count and (left := deadline - time.monotonic()) > 0:
            _, writable, _ = select.select([], [s for s in socks if s not in done], [], left)
            for sock in writable:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    done.add(sock)
        return len(done)
    finally:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.mark.parametrize(("backlog", "least", "most"),
                         [(None, BURST, BURST), (16, 1, 40)], ids=["default", "16"])
@async_test
async def test_a_burst_fits_the_accept_queue(backlog: int | None, least: int,
                                             most: int) -> None:
    options = {} if backlog is None else {"backlog": backlog}
    async with RelayServiceServer(port=0, **options) as server:  # type: ignore[arg-type]
        assert server.backlog == (backlog or DEFAULT_BACKLOG) and DEFAULT_BACKLOG >= 1024
        # The loop does not run until this returns: nothing is accepted meanwhile.
        completed = completed_while_not_accepting(server.port, BURST)
        assert least <= completed <= most, completed
        await asyncio.sleep(0)


def test_backlog_must_be_positive() -> None:
    with pytest.raises(ValueError, match="backlog"):
        RelayServiceServer(port=0, backlog=0)


@async_test
async def test_beyond_max_connections_a_client_gets_503_and_the_rest_are_served(
        caplog: pytest.LogCaptureFixture) -> None:
    """Connections beyond ``max_connections`` are answered 503 and closed at once (so the
    process never runs out of file descriptors, where asyncio's accept loop would log errors
    in a storm); once one closes, the next is served again."""
    caplog.set_level(logging.INFO, logger="hyco_proto")
    async with RelayServiceServer(port=0, max_connections=3) as server:
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
        await asyncio.sleep(0.05)  # all three accepted
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 503 The relay holds as many connections as it may "
                                 b"(max_connections); try again later.\r\n"), answer
        assert b"\r\nRetry-After: 1\r\n" in answer
        assert b"\r\nX-Hyco-Rejected-By: relay\r\n" in answer  # not the listener
        writer.close()
        assert server.service.stats.handshake_errors == 1
        assert any("503" in r.getMessage() and "max_connections" in r.getMessage()
                   and "client=127.0.0.1:" in r.getMessage() for r in caplog.records)
        held_writer = held.pop()[1]
        held_writer.close()
        await held_writer.wait_closed()
        await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /$status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
        writer.close()
        for _, w in held:
            w.close()


REQUEST = b"GET /$hc/x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


@pytest.mark.parametrize("own_sockets", [True, False], ids=["own-sockets", "asyncio-transports"])
@async_test
async def test_a_refused_client_that_already_sent_its_request_reads_503_and_a_clean_end(
        own_sockets: bool) -> None:
    """The request is read and dropped before the close (a lingering close): a socket closed
    with unread bytes resets the connection, and the client got a reset after the 503."""
    async with RelayServiceServer(port=0, max_connections=1, own_sockets=own_sockets) as server:
        held = await asyncio.open_connection("127.0.0.1", server.port)
        await asyncio.sleep(0.05)
        for _ in range(10):
            # Connected and sent while the loop does not run: the request is there before the
            # service accepts the connection.
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
                client.sendall(REQUEST)
                await asyncio.sleep(0.05)  # the service accepts and answers
                answer = b""
                while chunk := client.recv(65536):  # a reset raises ConnectionResetError
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 503 The relay holds"), answer
            assert answer.endswith(b"try again later.\n")
        await asyncio.sleep(0.05)
        assert not server._lingering  # each closed once its client did
        held[1].close()


@pytest.mark.parametrize("own_sockets", [True, False], ids=["own-sockets", "asyncio-transports"])
@async_test
async def test_refused_connections_linger_a_bounded_time_and_number(
        monkeypatch: pytest.MonkeyPatch, own_sockets: bool) -> None:
    monkeypatch.setattr(service_module, "MAX_LINGERING", 2)
    monkeypatch.setattr(service_module, "REFUSED_LINGER", 0.3)
    async with RelayServiceServer(port=0, max_connections=1, own_sockets=own_sockets) as server:
        held = await asyncio.open_connection("127.0.0.1", server.port)
        await asyncio.sleep(0.05)
        # Clients that read their 503 but never close: two linger, the third is closed at once.
        clients = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
        for reader, _ in clients:
            answer = await asyncio.wait_for(reader.read(), 5)
            assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert len(server._lingering) == 2
        await asyncio.sleep(0.5)  # REFUSED_LINGER: the service gives up on them
        assert not server._lingering
        # Closing the server ends lingering ones too.
        late = await asyncio.open_connection("127.0.0.1", server.port)
        assert (await asyncio.wait_for(late[0].read(), 5)).startswith(b"HTTP/1.1 503 ")
        assert len(server._lingering) == 1
        await asyncio.wait_for(server.close(), 5)
        await asyncio.sleep(0)
        assert not server._lingering
        for _, writer in [*clients, late, held]:
            writer.close()


@async_test
async def test_a_sender_refused_by_a_full_relay_is_told_the_relay_refused_it() -> None:
    from hyco_proto.adapters.asyncio import relayed_connect
    from hyco_proto.errors import ListenerRejectedError, RelayError

    from .asyncio_util import token

    async with RelayServiceServer(port=0, max_connections=1) as server:
        held = await asyncio.open_connection("127.0.0.1", server.port)
        await asyncio.sleep(0.05)
        uri = f"{server.url}/$hc/myhc"
        with pytest.raises(RelayError) as info:
            await asyncio.wait_for(relayed_connect(uri, token(uri)), 5)
        assert not isinstance(info.value, ListenerRejectedError)
        assert info.value.status == 503
        assert "holds as many connections as it may" in str(info.value)
        held[1].close()


def test_default_max_connections_leaves_a_reserve() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert default_max_connections() == max(1, soft - FD_RESERVE)
    assert RelayServiceServer(port=0).max_connections == default_max_connections()
    with pytest.raises(ValueError, match="max_connections"):
        RelayServiceServer(port=0, max_connections=0)


@async_test
async def test_the_cap_holds_in_a_burst() -> None:
    """asyncio makes a batch of protocols before the first is connected: those count too, so a
    burst does not overshoot ``max_connections`` (it did by a whole accept batch)."""
    async with RelayServiceServer(port=0, max_connections=5) as server:
        opened = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", server.port)
                                        for _ in range(40)))
        await asyncio.sleep(0.2)
        refused = 0
        for reader, _ in opened:
            try:
                data = await asyncio.wait_for(reader.read(12), 0.2)
            except asyncio.TimeoutError:
                continue  # held: the service waits for its request head
            refused += data.startswith(b"HTTP/1.1 503")
        assert refused == 35
        assert len(server._protocols) == 5 and server._admitting == 0
        for _, writer in opened:
            writer.close()
