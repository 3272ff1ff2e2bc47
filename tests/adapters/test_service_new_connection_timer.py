"""A new connection's timer step (issue 14, rendezvous per second): the asyncio relay service
no longer asks the core for its earliest deadline after each accepted connection. The core's
``connection_made`` adds that connection's own deadline (the request head's) and nothing else,
so the adapter takes ``RelayService.connection_deadline`` and re-arms its timer only when that
comes before the armed one. These tests check that a silent connection is still timed out
whether or not a timer was armed, and that no full deadline query is made when one fires
earlier already."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from hyco_proto.adapters.asyncio import RelayServiceServer
from hyco_proto.service.router import RelayService

NOW = 1_700_000_000.0
#: Bound on every wait (the handshake timeouts used here are a fraction of it).
WAIT = 10.0


def count_deadline_queries(service: RelayService) -> list[int]:
    """Count the core's ``next_deadline`` queries from now on: the list's one item."""
    asked = [0]
    next_deadline = service.next_deadline

    def counted() -> float | None:
        asked[0] += 1
        return next_deadline()

    service.next_deadline = counted  # type: ignore[method-assign]
    return asked


def test_connection_deadline_is_what_next_deadline_gains() -> None:
    svc = RelayService(handshake_timeout=7.0)
    assert svc.connection_deadline(12345) is None  # unknown
    first = svc.connection_made(NOW, ("127.0.0.1", 1))
    assert svc.connection_deadline(first) == NOW + 7.0
    assert svc.next_deadline() == NOW + 7.0
    second = svc.connection_made(NOW + 1, ("127.0.0.1", 2))
    assert svc.connection_deadline(second) == NOW + 8.0  # later: next_deadline unchanged
    assert svc.next_deadline() == NOW + 7.0
    assert svc.data_to_send() == [] and svc.reading_changes() == []
    svc.connection_lost(NOW + 1, second)
    assert svc.connection_deadline(second) is None


def test_connection_deadline_after_a_changed_timeout_is_the_earliest() -> None:
    """A changed handshake timeout moves the deadlines of connections already open too: the
    next new connection's answer is then the earliest of all (``next_deadline``)."""
    svc = RelayService(handshake_timeout=7.0)
    svc.connection_made(NOW, ("127.0.0.1", 1))
    assert svc.next_deadline() == NOW + 7.0
    svc.handshake_timeout = 2.0
    later = svc.connection_made(NOW + 1, ("127.0.0.1", 2))
    assert svc.connection_deadline(later) == NOW + 2.0  # the first one's, moved up
    assert svc.next_deadline() == NOW + 2.0
    newest = svc.connection_made(NOW + 1.5, ("127.0.0.1", 3))
    assert svc.connection_deadline(newest) == NOW + 3.5  # no change since: its own


async def _silent_connection_closed(port: int) -> bytes:
    """Open a connection that sends nothing; what the relay says before closing it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()


def test_first_silent_connection_is_timed_out() -> None:
    """No timer is armed when the first connection comes: its own deadline arms one."""

    async def main() -> None:
        service = RelayService(handshake_timeout=0.2)
        async with RelayServiceServer(service, host="127.0.0.1", port=0) as server:
            assert server._timer is None
            answer = await _silent_connection_closed(server.port)
            assert answer.startswith(b"HTTP/1.1 408 ")

    asyncio.run(main())


def test_earlier_deadline_rearms_and_later_one_asks_nothing() -> None:
    """A timer armed for a later deadline is moved up for a connection due sooner; a
    connection due after the armed timer leaves it, without a deadline query."""

    async def main() -> None:
        service = RelayService(handshake_timeout=60.0)
        asked = count_deadline_queries(service)
        async with RelayServiceServer(service, host="127.0.0.1", port=0) as server:
            _r1, w1 = await asyncio.open_connection("127.0.0.1", server.port)
            for _ in range(100):  # until the relay has taken it (bounded)
                if server.connections == 1:
                    break
                await asyncio.sleep(0.01)
            assert server.connections == 1 and server._timer is not None
            armed = server._timer_at
            # Due later than the armed timer: kept, and the core is not asked again.
            before = asked[0]
            _r2, w2 = await asyncio.open_connection("127.0.0.1", server.port)
            for _ in range(100):
                if server.connections == 2:
                    break
                await asyncio.sleep(0.01)
            assert server.connections == 2
            assert asked[0] == before and server._timer_at == armed
            # Due before it: re-armed, and that connection is timed out.
            service.handshake_timeout = 0.2
            answer = await _silent_connection_closed(server.port)
            assert answer.startswith(b"HTTP/1.1 408 ")
            w1.close()
            w2.close()

    asyncio.run(main())


@pytest.mark.parametrize("timeout", [0.2])
def test_silent_connection_after_a_rendezvous_is_timed_out(timeout: float) -> None:
    """Connections come and go (each one's deadline handled on its own), then a silent one:
    still timed out."""

    async def main() -> None:
        service = RelayService(handshake_timeout=timeout)
        async with RelayServiceServer(service, host="127.0.0.1", port=0) as server:
            for _ in range(3):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(b"GET /$status HTTP/1.1\r\nHost: localhost\r\n"
                             b"Connection: close\r\n\r\n")
                answer = await asyncio.wait_for(reader.read(), WAIT)
                assert answer.startswith(b"HTTP/1.1 200 ")
                writer.close()
            answer = await _silent_connection_closed(server.port)
            assert answer.startswith(b"HTTP/1.1 408 ")

    asyncio.run(main())


# -- the end of a relayed pair: RelayService.connection_lost says when it left nothing to do --

HOST = "127.0.0.1:9999"


def _pair(svc: RelayService, now: float) -> tuple[int, int]:
    """A listener, then one relayed pair through it (sans-IO): (sender, listener's leg)."""
    import json

    from hyco_proto._frames import FrameDecoder
    from hyco_proto.handshake import ClientHandshake
    from hyco_proto.sas import create_relay_token
    from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY

    token = create_relay_token(f"ws://{HOST}/$hc/hc", DEFAULT_RULE_NAME, DEVELOPMENT_KEY,
                               3600, now=now)
    auth = [("ServiceBusAuthorization", token)]

    def request(target: str, headers: list[tuple[str, str]]) -> bytes:
        return ClientHandshake(HOST, target, headers=headers).data_to_send()

    control = svc.connection_made(now, ("127.0.0.1", 1))
    svc.receive_data(now, control, request("/$hc/hc?sb-hc-action=listen&sb-hc-id=l1", auth))
    svc.data_to_send()
    sender = svc.connection_made(now, ("127.0.0.1", 2))
    svc.receive_data(now, sender, request("/$hc/hc?sb-hc-action=connect&sb-hc-id=s1", auth))
    decoder = FrameDecoder(masked=False)
    address = ""
    for conn, data in svc.data_to_send():
        if conn == control:
            for _, payload, _ in decoder.feed(data):
                address = json.loads(bytes(payload))["accept"]["address"]
    leg = svc.connection_made(now, ("127.0.0.1", 3))
    svc.receive_data(now, leg, request(address[address.index("/$hc/"):], []))
    answers = svc.data_to_send()
    assert sorted(conn for conn, data in answers if data.startswith(b"HTTP/1.1 101 ")) == [
        sender, leg]
    return sender, leg


def test_legs_lost_after_their_eof_are_quiet() -> None:
    svc = RelayService()
    sender, leg = _pair(svc, NOW)
    svc.receive_eof(NOW, sender)  # the listener's leg hears 1001, the sender's is closed
    out = svc.data_to_send()
    assert (sender, b"") in out and any(conn == leg and data for conn, data in out)
    svc.next_deadline()
    assert svc.connection_lost(NOW, sender) is True
    svc.receive_eof(NOW, leg)
    assert svc.data_to_send() == [(leg, b"")]
    assert svc.connection_lost(NOW, leg) is True
    assert svc.data_to_send() == [] and svc.reading_changes() == []


def test_leg_lost_without_eof_is_not_quiet() -> None:
    """A leg dropped without its EOF (a reset): the other leg hears 1001 and gets a closing
    deadline, so the driver must take the usual steps."""
    svc = RelayService(close_timeout=5.0)
    sender, leg = _pair(svc, NOW)
    before = svc.next_deadline()
    assert svc.connection_lost(NOW + 1, sender) is False
    out = svc.data_to_send()
    assert [conn for conn, data in out] == [leg]
    frame = bytes(out[0][1])  # a close frame, 1001
    assert frame[:1] == b"\x88" and frame[2:4] == (1001).to_bytes(2, "big")
    assert svc.next_deadline() == min(d for d in (before, NOW + 6.0) if d is not None)


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def _read_close_frame(sock: socket.socket) -> bytes:
    """The first 4 bytes the relay sends (a close frame's header and code)."""
    data = b""
    while len(data) < 4:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def _pairs(port: int, count: int) -> tuple[socket.socket, list[tuple[socket.socket,
                                                                    socket.socket]]]:
    """A listener's control channel and ``count`` relayed pairs (sender, listener's leg)
    through the relay on ``port``, over blocking sockets (every read bounded by WAIT)."""
    import json

    from hyco_proto._frames import FrameDecoder
    from hyco_proto.handshake import ClientHandshake
    from hyco_proto.sas import create_relay_token
    from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY

    host = f"127.0.0.1:{port}"
    token = create_relay_token(f"ws://{host}/$hc/hc", DEFAULT_RULE_NAME, DEVELOPMENT_KEY)
    auth = [("ServiceBusAuthorization", token)]

    def connect(target: str, headers: list[tuple[str, str]]) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        sock.sendall(ClientHandshake(host, target, headers=headers).data_to_send())
        return sock

    control = connect("/$hc/hc?sb-hc-action=listen&sb-hc-id=l1", auth)
    assert _read_head(control).startswith(b"HTTP/1.1 101 ")
    decoder = FrameDecoder(masked=False)
    pairs = []
    for i in range(count):
        sender = connect(f"/$hc/hc?sb-hc-action=connect&sb-hc-id=s{i}", auth)
        address = ""
        while not address:
            for _, payload, _ in decoder.feed(control.recv(65536)):
                address = json.loads(bytes(payload))["accept"]["address"]
        listener = connect(address[address.index("/$hc/"):], [])
        assert _read_head(listener).startswith(b"HTTP/1.1 101 ")
        assert _read_head(sender).startswith(b"HTTP/1.1 101 ")
        pairs.append((sender, listener))
    return control, pairs


def test_relayed_pair_end_through_the_adapter() -> None:
    """Through the asyncio service: a pair's legs ending with their EOFs cost no deadline query
    at their connection_lost; a leg reset without EOF still gets its peer the 1001."""
    from hyco_proto.service.legs import RelayLeg

    def legs(service: RelayService) -> int:
        return sum(type(h) is RelayLeg for h in service._handlers.values())

    async def main() -> None:
        service = RelayService()
        asked = count_deadline_queries(service)
        loop = asyncio.get_running_loop()
        async with RelayServiceServer(service, host="127.0.0.1", port=0) as server:
            control, pairs = await loop.run_in_executor(None, _pairs, server.port, 2)
            assert legs(service) == 4
            # Both legs end with a FIN: two EOFs asked for the deadline, the two
            # connection_lost calls did not.
            sender, listener = pairs[0]
            asked_before = asked[0]
            sender.close()
            listener.close()
            for _ in range(500):  # until both legs are gone (bounded)
                if legs(service) == 2:
                    break
                await asyncio.sleep(0.01)
            assert legs(service) == 2
            assert asked[0] - asked_before == 2
            # A reset, no FIN: the listener's leg still hears 1001.
            sender, listener = pairs[1]
            sender.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sender.close()
            data = await loop.run_in_executor(None, _read_close_frame, listener)
            assert data[:1] == b"\x88" and data[2:4] == (1001).to_bytes(2, "big")
            listener.close()
            control.close()

    asyncio.run(main())
