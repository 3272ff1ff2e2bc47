"""Review of ``RelayService.lane`` (commit a2224ce): cases where a lane could do something
``forward_into`` / ``receive_into`` would not."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from hyco_proto.frames import FORWARD_HEADROOM
from hyco_proto.service.legs import RelayLeg
from tests.test_relay_conformance import Pair
from tests.wsutil import OP_BINARY
from tests.wsutil import frame as raw_frame


def _lent(data: bytes) -> tuple[memoryview, int, int]:
    buffer = memoryview(bytearray(FORWARD_HEADROOM) + data)
    return buffer, FORWARD_HEADROOM, len(buffer)


def _status_request(pair: Pair) -> None:
    """Another connection's request: its response waits in the core's output."""
    service = pair.net.service
    door = service.connection_made(pair.net.now)
    service.receive_data(pair.net.now, door,
                         b"GET /$status HTTP/1.1\r\nHost: localhost\r\n\r\n")


def _relayed(server: Any) -> tuple[Any, Any, RelayLeg]:
    """The asyncio protocols of the sender's leg and of its peer, and the sender's leg."""
    service = server.service
    leg = next(handler for handler in service._handlers.values()
               if isinstance(handler, RelayLeg) and handler.from_sender)
    peer_id = service.peer_of(leg.id)
    assert peer_id is not None
    return server._protocols[leg.id], server._protocols[peer_id], leg


#: uvloop is installed with the test extras wherever it exists (pyproject.toml).
LOOPS = ["asyncio"] if sys.platform == "win32" else ["asyncio", "uvloop"]


def _run(main: Callable[[], Coroutine[Any, Any, None]], loop: str = "asyncio") -> None:
    if loop == "uvloop":
        import uvloop  # a test dependency where it exists (not on Windows): LOOPS

        uvloop.run(asyncio.wait_for(main(), 30))
    else:
        asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.parametrize("drained", [False, True], ids=["before-a-drain", "after-a-drain"])
def test_a_lane_hands_back_while_output_waits_as_forward_into_does(drained: bool) -> None:
    """``forward_into`` takes its shortcut only when nothing is queued (the driver skips its
    after-input steps, ``data_to_send`` included); a lane must hand back then too, also once
    the driver has drained the core's output since the lane was granted (data_to_send swaps
    the list)."""
    pair = Pair()
    pair.net.lanes = False
    pair.write_all([raw_frame(OP_BINARY, b"one")])
    service = pair.net.service
    sender = pair.sender.conn_id
    granted = service.lane(sender)
    assert granted is not None
    forward, peer = granted
    if drained:
        assert service.data_to_send() == []  # what a driver does after any other input
    _status_request(pair)
    # The usual call hands back: the status response is ahead of the data.
    assert service.forward_into(pair.net.now, sender, *_lent(raw_frame(OP_BINARY, b"two"))) \
        is None
    out = service.data_to_send()
    assert out[-1][0] == peer and bytes(out[-1][1]).endswith(b"two")
    _status_request(pair)
    view = forward(pair.net.now, *_lent(raw_frame(OP_BINARY, b"three")))
    assert view is None, "the lane forwarded with output waiting in the core"
    out = service.data_to_send()
    assert out[-1][0] == peer and bytes(out[-1][1]).endswith(b"three")


@pytest.mark.parametrize("lanes", [True, False], ids=["lane", "usual"])
@pytest.mark.parametrize("own_sockets", [True, False], ids=["own-sockets", "asyncio-transports"])
@pytest.mark.parametrize("loop", LOOPS)
def test_nothing_is_written_to_a_peer_whose_transport_was_aborted(own_sockets: bool,
                                                                 lanes: bool, loop: str) -> None:
    """The listener's transport fails (asyncio aborts it on a fatal error; its
    ``connection_lost`` comes one loop turn later, so the core still has the pair): a read of
    the sender in between must not reach the listener, as ``send`` (``is_closing``) ensures."""
    from hyco_proto.adapters.asyncio import RelayServiceServer
    from tests.adapters.asyncio_util import WAIT
    from tests.adapters.test_asyncio_relay import connect, echo_listener

    received: list[bytes] = []

    async def record(ws: Any) -> None:
        async for message in ws:
            received.append(message)
            await ws.send(message)

    async def run() -> None:
        async with RelayServiceServer(port=0, own_sockets=own_sockets) as server:
            if not lanes:
                server.service.lane = lambda conn_id: None  # type: ignore[method-assign]
            async with echo_listener(server, connection=record):
                ws = await connect(server)
                for message in (b"one", b"two"):
                    await asyncio.wait_for(ws.send(message), WAIT)
                    assert await asyncio.wait_for(ws.recv(), WAIT) == message
                sender, peer, _leg = _relayed(server)
                assert (sender.lane is not None) is lanes
                assert peer.transport is not None
                peer.transport.abort()  # as asyncio's _fatal_error does
                data = raw_frame(OP_BINARY, b"after-abort")
                server._read_view[:len(data)] = data
                sender.buffer_updated(len(data))  # a read in the same loop turn
                await asyncio.sleep(0.3)
                assert b"after-abort" not in received

    _run(run, loop)


# -- counters ------------------------------------------------------------------------------

def _endings() -> dict[str, Any]:
    from tests.wsutil import close as close_frame

    def close(pair: Pair) -> None:
        pair.write_all([close_frame(1000, "bye")])

    def sender_drops(pair: Pair) -> None:
        pair.sender.close_tcp()

    def listener_drops(pair: Pair) -> None:
        pair.leg.transport.sever()
        pair.net.pump()
        pair.sender.close_tcp()

    def shutdown(pair: Pair) -> None:
        pair.net.service.shutdown(pair.net.now)
        pair.net.pump()

    def half_close_timer(pair: Pair) -> None:
        pair.write_all([close_frame(1000, "bye")])
        pair.net.advance(7200.0)

    return {"close": close, "sender-drops": sender_drops, "listener-drops": listener_drops,
            "shutdown": shutdown, "half-close-timer": half_close_timer}


@pytest.mark.parametrize("ending", list(_endings()))
@pytest.mark.parametrize("counted_midway", [False, True], ids=["not-counted", "counted"])
def test_a_pair_that_ends_is_counted_once_as_without_lanes(ending: str,
                                                           counted_midway: bool) -> None:
    from hyco_proto.service.config import ServiceConfig
    from hyco_proto.service.router import RelayService
    from tests.test_relay_lane import LaneSpy

    results = []
    for lanes in (True, False):
        pair = Pair(RelayService(ServiceConfig()), reply_to_close=ending != "half-close-timer")
        pair.net.lanes = lanes
        spy = LaneSpy(pair.net.service)
        service = pair.net.service
        pair.write_all([raw_frame(OP_BINARY, b"a" * 100)] * 3)
        if counted_midway:
            service.counters()
        pair.write_all([raw_frame(OP_BINARY, b"b" * 10, fin=False),
                        raw_frame(0x0, b"c" * 5)])
        _endings()[ending](pair)
        assert service.kind(pair.sender.conn_id) is None
        assert service.kind(pair.leg.transport.conn_id) is None
        assert (spy.views > 0) is lanes
        # Every leg is gone: stats as they are, no counters() needed.
        results.append(service.stats)
        assert service.counters() == service.stats
    assert results[0] == results[1]
    assert results[0].bytes_relayed >= 2 * 315


def test_every_reader_of_the_counters_sees_lane_traffic() -> None:
    """/$status, /metrics and the web view snapshot, while the pair still relays."""
    import json

    from hyco_proto.service.webview import build_snapshot

    pair = Pair()
    pair.write_all([raw_frame(OP_BINARY, b"x" * 1000)] * 5)
    service = pair.net.service
    assert service.lane(pair.sender.conn_id) is not None
    want = 2 * 5 * 1000  # there and back

    def get(path: str) -> bytes:
        door = service.connection_made(pair.net.now)
        service.receive_data(pair.net.now, door,
                             f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        return b"".join(bytes(data) for conn, data in service.data_to_send() if conn == door)

    status = get("/$status")
    body = json.loads(status.split(b"\r\n\r\n", 1)[1])
    assert body["counters"]["bytes_relayed"] == want
    assert b"hyco_bytes_relayed_total %d" % want in get("/metrics")
    assert build_snapshot(service, pair.net.now)["counters"]["bytes_relayed"] == want


# -- flow control --------------------------------------------------------------------------

@pytest.mark.parametrize("own_sockets", [True, False], ids=["own-sockets", "asyncio-transports"])
def test_a_lane_holder_stops_being_read_while_its_peer_is_full(own_sockets: bool) -> None:
    from hyco_proto.adapters.asyncio import RelayServiceServer
    from tests.adapters.asyncio_util import WAIT
    from tests.adapters.test_asyncio_relay import connect, echo_listener

    async def run() -> None:
        async with RelayServiceServer(port=0, own_sockets=own_sockets) as server, \
                echo_listener(server):
                ws = await connect(server)
                for message in (b"one", b"two"):
                    await asyncio.wait_for(ws.send(message), WAIT)
                    assert await asyncio.wait_for(ws.recv(), WAIT) == message
                sender, peer, leg = _relayed(server)
                assert sender.lane is not None
                assert leg.id in peer.writers  # the lane's grant condition
                assert sender.transport is not None
                peer.pause_writing()  # what its transport says over the high-water mark
                assert sender.reading_paused and not sender.transport.is_reading()
                relayed = leg.fwd.payload_bytes
                await asyncio.wait_for(ws.send(b"three"), WAIT)
                await asyncio.sleep(0.2)
                assert leg.fwd.payload_bytes == relayed  # not read
                assert sender.lane is not None and server.service.lane(leg.id) is not None
                peer.resume_writing()
                assert sender.transport.is_reading()
                assert await asyncio.wait_for(ws.recv(), WAIT) == b"three"

    _run(run)
