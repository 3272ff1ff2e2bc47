"""A settled relayed pair's pump (``RelayServiceServer`` on its own sockets): after
``SETTLE_AFTER`` reads a leg's socket is read, re-framed and written to the other leg's socket by
one call (``RelayService.relay_lane`` -> ``Forwarder.relay``); anything but plain data goes the
usual way. Raw blocking sockets play both ends (a sender, and a listener's control channel and
rendezvous) against ``RelayServiceThread``, so every byte on the wire is the test's. Every read
has a timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest

from hyco_proto.adapters.asyncio import RelayServiceThread
from hyco_proto.adapters.asyncio.sockets import SETTLE_AFTER, LoopPoller, SocketTransport
from hyco_proto.handshake import ClientHandshake, HandshakeAccepted
from hyco_proto.service.config import ServiceConfig
from tests.test_relay_lane import LaneSpy
from tests.wsutil import close as close_frame
from tests.wsutil import frame, parse_frames

from .asyncio_util import WAIT, async_test, token
from .test_service_sockets import Recorder, _drain, _until

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the pump is POSIX only")
T = TypeVar("T")
ZERO = b"\0\0\0\0"  # a mask key that leaves the payload as it is: big frames built fast


def masked(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A client frame with the zero mask key."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    return head + ZERO + payload


def server_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """What the relay forwards for ``masked(opcode, payload)``: the same frame, unmasked."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", b0, 126, n) + payload
    return struct.pack("!BBQ", b0, 127, n) + payload


def _start(port: int, target: str, headers: list[tuple[str, str]]
           ) -> tuple[socket.socket, ClientHandshake]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    hs = ClientHandshake(f"127.0.0.1:{port}", target, headers=headers)
    sock.sendall(hs.data_to_send())
    return sock, hs


def _finish(sock: socket.socket, hs: ClientHandshake) -> socket.socket:
    while (event := hs.next_event()) is None:
        data = sock.recv(65536)
        assert data, "the relay closed during the handshake"
        hs.receive_data(data)
    assert isinstance(event, HandshakeAccepted), event
    assert not event.trailing_data
    return sock


class RawPair:
    """A relayed pair whose two ends are raw sockets: ``sender`` writes client frames the
    listener's rendezvous (``listener``) reads unmasked, and back."""

    def __init__(self, relay: RelayServiceThread) -> None:
        port = relay.port
        auth = [("ServiceBusAuthorization", token(f"{relay.url}/$hc/myhc"))]
        self.control = _finish(*_start(port, "/$hc/myhc?sb-hc-action=listen&sb-hc-id=l1", auth))
        sender = _start(port, "/$hc/myhc?sb-hc-action=connect&sb-hc-id=s1", auth)
        address = self._accept_address()
        prefix = f"ws://127.0.0.1:{port}"
        assert address.startswith(prefix), address
        self.listener = _finish(*_start(port, address[len(prefix):], []))
        self.sender = _finish(*sender)

    def _accept_address(self) -> str:
        data = b""
        while True:
            data += self.control.recv(65536)
            try:
                frames = parse_frames(data)
            except AssertionError:  # partial: read on
                continue
            message = json.loads(frames[0].payload)
            return str(message["accept"]["address"])

    def close(self) -> None:
        for sock in (self.sender, self.listener, self.control):
            sock.close()


def read_exactly(sock: socket.socket, count: int) -> bytes:
    got = bytearray()
    while len(got) < count:
        chunk = sock.recv(count - len(got))
        assert chunk, f"EOF after {len(got)} of {count} bytes"
        got += chunk
    return bytes(got)


def read_to_eof(sock: socket.socket) -> bytes:
    got = bytearray()
    while chunk := sock.recv(65536):
        got += chunk
    return bytes(got)


def in_relay(relay: RelayServiceThread, fn: Callable[[Any], T]) -> T:
    """``fn(server)`` on the relay's loop."""
    return relay.call(lambda: fn(relay.server))


def pumping(server: Any) -> int:
    """How many connections read through a pump now."""
    return sum(1 for p in server._protocols.values()
               if getattr(p.transport, "_pump", None) is not None)


@contextmanager
def settled_pair(**options: Any) -> Iterator[tuple[RelayServiceThread, RawPair]]:
    """A relay and a raw pair that has exchanged enough messages both ways for both legs to
    read through their pumps."""
    with RelayServiceThread(port=0, **options) as relay:
        spy = LaneSpy(relay.service)
        pair = RawPair(relay)
        try:
            for i in range(SETTLE_AFTER + 2):
                message = b"warm-up %d" % i
                pair.sender.sendall(masked(2, message))
                assert read_exactly(pair.listener, 2 + len(message)) == server_frame(2, message)
                pair.listener.sendall(masked(2, message))
                assert read_exactly(pair.sender, 2 + len(message)) == server_frame(2, message)
            assert in_relay(relay, pumping) == 2
            assert spy.steps >= 2  # (read on the relay's loop: no more while we wait)
            relay.spy = spy  # type: ignore[attr-defined]
            yield relay, pair
        finally:
            pair.close()


def _wait_for(relay: RelayServiceThread, check: Callable[[Any], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not in_relay(relay, check):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_messages_split_across_reads_and_many_in_one_read() -> None:
    with settled_pair() as (relay, pair):
        payload = bytes(range(256)) * 40
        data = masked(2, payload)
        steps = relay.spy.steps  # type: ignore[attr-defined]
        for cut in (1, 2, 3, 7, 8, 200, 5000, len(data) - 1):  # the header split too
            pair.sender.sendall(data[:cut])
            time.sleep(0.005)  # (likelier a read of its own; the output may not depend on it)
            pair.sender.sendall(data[cut:])
            assert read_exactly(pair.listener, len(data) - 4) == server_frame(2, payload)
        many = [bytes([i]) * (i * 7 % 300) for i in range(200)]
        pair.listener.sendall(b"".join(masked(2, m) for m in many))  # the other direction
        want = b"".join(server_frame(2, m) for m in many)
        assert read_exactly(pair.sender, len(want)) == want
        assert in_relay(relay, pumping) == 2  # plain data all along
        assert relay.spy.steps >= steps + 9  # type: ignore[attr-defined]  # through the pumps


def test_a_ping_mid_message_passes_and_a_close_leaves_the_pump() -> None:
    with settled_pair() as (relay, pair):
        writes = [masked(1, b"part one ", fin=False), masked(9, b"are you there"),
                  masked(0, b"part two"), masked(10, b"unsolicited pong")]
        pair.sender.sendall(b"".join(writes))
        want = (server_frame(1, b"part one ", fin=False) + server_frame(9, b"are you there")
                + server_frame(0, b"part two") + server_frame(10, b"unsolicited pong"))
        assert read_exactly(pair.listener, len(want)) == want
        assert in_relay(relay, pumping) == 2
        # Data, the close and data after it in one write: the data and the close pass, nothing
        # after the close does; the pair ends once the listener's close came back.
        closing = close_frame(1000, "bye")
        pair.sender.sendall(masked(2, b"last") + closing + masked(2, b"after the close"))
        want = server_frame(2, b"last") + close_frame(1000, "bye", mask=False)
        assert read_exactly(pair.listener, len(want)) == want
        _wait_for(relay, lambda server: pumping(server) == 1)  # the sender's leg left it
        pair.listener.sendall(masked(2, b"still flowing") + close_frame(1000, "ok"))
        back = read_to_eof(pair.sender)
        assert back == server_frame(2, b"still flowing") + close_frame(1000, "ok", mask=False)
        assert read_to_eof(pair.listener) == b""
        _wait_for(relay, lambda server: server.connections == 1)  # the control channel


def test_a_full_peer_pauses_reading_and_loses_nothing() -> None:
    """The listener does not read while 8 MiB go its way: the relay's sends get partial, the
    rest queues in its transport, the sender's leg stops being read; then everything arrives
    whole and in order."""
    with settled_pair(write_high_water=64 * 1024) as (relay, pair):
        messages = [bytes([i % 251]) * 65536 + b"#%d" % i for i in range(128)]
        stream = b"".join(masked(2, m) for m in messages)
        failed: list[BaseException] = []

        def write_all() -> None:
            try:
                pair.sender.sendall(stream)
            except BaseException as exc:  # reported below
                failed.append(exc)

        writer = threading.Thread(target=write_all)
        writer.start()
        try:
            _wait_for(relay, lambda server: any(p.reading_paused
                                                for p in server._protocols.values()))
            want = b"".join(server_frame(2, m) for m in messages)
            got = read_exactly(pair.listener, len(want))
        finally:
            writer.join(WAIT)
        assert not failed and not writer.is_alive()
        assert got == want
        assert in_relay(relay, pumping) == 2


@pytest.mark.parametrize("how", ["reset", "eof"])
@pytest.mark.parametrize("who", ["sender", "listener"])
def test_a_leg_that_drops_mid_message_ends_the_pair(how: str, who: str) -> None:
    with settled_pair() as (relay, pair):
        gone, other = ((pair.sender, pair.listener) if who == "sender"
                       else (pair.listener, pair.sender))
        payload = b"x" * 5000
        data = masked(2, payload)
        gone.sendall(data[:3000])
        assert read_exactly(other, 3000 - 4) == server_frame(2, payload)[:3000 - 4]
        if how == "reset":
            gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            gone.close()
        else:
            gone.shutdown(socket.SHUT_WR)
        # Mid-frame nothing clean can be said: the other leg's TCP connection just ends.
        assert read_to_eof(other) == b""
        _wait_for(relay, lambda server: server.connections == 1)


def test_bad_text_fails_the_leg_while_pumping() -> None:
    with settled_pair(config=ServiceConfig(validate_text=True)) as (relay, pair):
        pair.sender.sendall(masked(1, "fine: é".encode()))
        assert read_exactly(pair.listener, 2 + len("fine: é".encode())) == \
            server_frame(1, "fine: é".encode())
        # A code point split across two reads, then a byte no UTF-8 has.
        text = "ünïcödé".encode()
        data = masked(1, text)
        pair.sender.sendall(data[:7])
        time.sleep(0.005)
        pair.sender.sendall(data[7:])
        assert read_exactly(pair.listener, 2 + len(text)) == server_frame(1, text)
        pair.sender.sendall(frame(1, b"bad \xff here"))
        # The sender's leg is failed with 1007; the listener, between frames, hears 1001.
        frames = parse_frames(read_to_eof(pair.sender))
        assert [(f.opcode, f.payload[:2]) for f in frames] == [(8, struct.pack("!H", 1007))]
        head = read_exactly(pair.listener, 2)
        assert head[0] == 0x88
        body = read_exactly(pair.listener, head[1])
        assert body[:2] == struct.pack("!H", 1001)
        pair.listener.sendall(close_frame(1001))
        assert read_to_eof(pair.listener) == b""
        _wait_for(relay, lambda server: server.connections == 1)


# -- the transport's side: write_fd and pump_with ----------------------------------------------


@async_test
async def test_write_fd_is_the_socket_only_while_a_write_may_go_straight_to_it() -> None:
    """A pump sends to ``write_fd`` itself: it must be -1 while the transport has bytes queued
    (else new bytes would pass them), and the socket again once they are gone."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    with b:
        proto = Recorder()
        transport = SocketTransport(loop, a, proto, poller=LoopPoller(loop))
        assert transport.write_fd == a.fileno()
        transport.write(b"small")  # all taken at once
        assert transport.write_fd == a.fileno()
        payload = bytes(range(256)) * (32 * 1024)  # 8 MiB: the socket refuses most
        transport.write(payload)
        assert transport.get_write_buffer_size() > 0
        assert transport.write_fd == -1
        got = await asyncio.wait_for(loop.run_in_executor(None, _drain, b, 5 + len(payload)),
                                     WAIT * 4)
        assert got == b"small" + payload
        await _until(lambda: transport.get_write_buffer_size() == 0)
        await _until(lambda: transport.write_fd == a.fileno())
        transport.write_eof()
        assert transport.write_fd == -1
        transport.close()
        await asyncio.wait_for(proto.lost.wait(), WAIT)
        assert transport.write_fd == -1
    for end in ("close", "abort"):
        a, b = socket.socketpair()
        a.setblocking(False)
        with b:
            proto = Recorder()
            transport = SocketTransport(loop, a, proto, poller=LoopPoller(loop))
            getattr(transport, end)()
            assert transport.write_fd == -1, end
            await asyncio.wait_for(proto.lost.wait(), WAIT)


@async_test
async def test_pump_with_takes_over_reads_once_settled_and_hands_them_back() -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    with b:
        proto = Recorder()
        transport = SocketTransport(loop, a, proto, poller=LoopPoller(loop))
        pumped: list[bytes] = []
        woke = asyncio.Event()

        def pump() -> None:
            try:
                data = a.recv(4096)
            except BlockingIOError:
                return
            if not data:
                transport.read_eof()
                return
            pumped.append(data)
            woke.set()

        async def send(data: bytes, event: asyncio.Event) -> None:
            event.clear()
            b.sendall(data)
            await asyncio.wait_for(event.wait(), WAIT)

        transport.pump_with(lambda: pump)  # asked early: made once settled
        for i in range(SETTLE_AFTER):
            await send(b"%d," % i, proto.got)
        assert not pumped
        assert proto.data == b"".join(b"%d," % i for i in range(SETTLE_AFTER))
        await send(b"to the pump", woke)
        assert pumped == [b"to the pump"]
        transport.pause_reading()  # paused: nobody reads
        b.sendall(b"held")
        await asyncio.sleep(0.05)
        assert pumped == [b"to the pump"]
        woke.clear()
        transport.resume_reading()  # the pump again
        await asyncio.wait_for(woke.wait(), WAIT)
        assert pumped == [b"to the pump", b"held"]
        transport.pump_with(None)  # back to the protocol
        await send(b"usual", proto.got)
        assert proto.data.endswith(b"usual") and len(pumped) == 2
        transport.pump_with(lambda: None)  # no pump after all: the protocol reads
        await send(b"still usual", proto.got)
        assert proto.data.endswith(b"still usual") and len(pumped) == 2
        transport.pump_with(lambda: pump)  # settled already: at once
        await send(b"again", woke)
        assert pumped[-1] == b"again"
        b.shutdown(socket.SHUT_WR)  # the pump reports the end of the stream
        await _until(lambda: "eof" in proto.events)
        transport.close()
        await asyncio.wait_for(proto.lost.wait(), WAIT)
        assert transport._pump is None  # no cycle left through the pump


@async_test
async def test_write_later_queues_without_trying_the_socket_and_keeps_order() -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    with b:
        proto = Recorder()
        transport = SocketTransport(loop, a, proto, poller=LoopPoller(loop))
        transport.set_write_buffer_limits(high=64 * 1024)
        lent = bytearray(b"first ")
        transport.write_later(memoryview(lent))
        assert transport.get_write_buffer_size() == 6  # not sent, though the socket has room
        assert transport.write_fd == -1
        lent[:] = b"XXXXXX"  # a copy was queued
        transport.write(b"second ")  # behind it
        big = bytes(range(256)) * 1024
        transport.write_later(big)
        assert proto.events == ["made", "pause"]  # over the high-water mark
        got = await asyncio.wait_for(loop.run_in_executor(None, _drain, b, 13 + len(big)),
                                     WAIT * 4)
        assert got == b"first second " + big
        await _until(lambda: transport.write_fd == a.fileno())
        assert proto.events == ["made", "pause", "resume"]
        transport.write_eof()
        with pytest.raises(RuntimeError):
            transport.write_later(b"after eof")
        transport.close()
        await asyncio.wait_for(proto.lost.wait(), WAIT)
    a, b = socket.socketpair()
    a.setblocking(False)
    with b:
        proto = Recorder()
        transport = SocketTransport(loop, a, proto, poller=LoopPoller(loop))
        transport.abort()
        transport.write_later(b"dropped")  # lost: nothing queued, nothing raised
        assert transport.get_write_buffer_size() == 0
        await asyncio.wait_for(proto.lost.wait(), WAIT)


def test_a_failure_after_the_pumps_step_ends_the_connection_not_the_loop(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Whatever fails after the step (here what handles a close frame that came back) ends
    that connection as a failing read does; nothing reaches the event loop's handler as an
    'Exception in callback' (review of session 5)."""
    from hyco_proto.adapters.asyncio import service as service_module

    def broken(*args: Any) -> None:
        raise RuntimeError("broken after the step")

    with settled_pair() as (relay, pair):
        monkeypatch.setattr(service_module._ServiceProtocol, "_pumped", broken)
        with caplog.at_level("ERROR", logger="asyncio"):
            pair.sender.sendall(close_frame(1000, "bye"))  # the step hands a close back
            assert read_to_eof(pair.sender) == b""  # that leg's connection ended
        messages = [record.getMessage() for record in caplog.records]
        assert any("protocol failed on received data" in m for m in messages), messages
        assert not any("Exception in callback" in m for m in messages), messages
        # The relay still serves a new pair (the old listener gone, so the new one is asked).
        pair.close()
        fresh = RawPair(relay)
        try:
            fresh.sender.sendall(masked(2, b"after"))
            assert read_exactly(fresh.listener, 7) == server_frame(2, b"after")
        finally:
            fresh.close()
