"""``RelayService.lane``: a relayed leg's hot path must do what ``receive_into`` does (same
bytes, events, deadlines and, once counted, the same counters), and hand over as soon as
anything but plain data passes."""

from __future__ import annotations

import random
from typing import Any

import pytest

from hyco_proto.service.config import ServiceConfig
from hyco_proto.service.handler import ConnectionKind
from hyco_proto.service.router import RelayService
from tests.test_relay_conformance import Pair
from tests.test_relay_fast_path import SCRIPT, Spy
from tests.wsutil import OP_BINARY, OP_CONT, OP_PING, OP_PONG, OP_TEXT, decode_output
from tests.wsutil import close as close_frame
from tests.wsutil import frame as raw_frame


class LaneSpy:
    """Counts what the lanes ``RelayService.lane`` grants answered: views and ``None``s; and
    what the steps ``RelayService.relay_lane`` grants did (``steps``: reads; a read whose
    output all went counts as a view, so does ``fed`` giving one; ``fed`` giving ``None`` as a
    hand-back)."""

    def __init__(self, service: RelayService) -> None:
        self.views = 0
        self.handed_back = 0
        self.steps = 0
        real = service.lane
        real_relay = service.relay_lane

        def relay_lane(conn_id: int) -> Any:
            granted = real_relay(conn_id)
            if granted is None:
                return None
            step, fed, peer = granted

            def counted_step(fd: int, buffer: Any, start: int, out_fd: int) -> Any:
                got = step(fd, buffer, start, out_fd)
                if got is not False:
                    self.steps += 1
                if got is None:
                    self.views += 1
                return got

            def counted_fed(now: float, buffer: Any, begin: int, stop: int) -> Any:
                view = fed(now, buffer, begin, stop)
                if view is None:
                    self.handed_back += 1
                else:
                    self.views += 1
                return view

            return counted_step, counted_fed, peer

        service.relay_lane = relay_lane  # type: ignore[method-assign]

        def lane(conn_id: int) -> Any:
            granted = real(conn_id)
            if granted is None:
                return None
            forward, peer = granted

            def counted(now: float, buffer: Any, start: int, end: int) -> Any:
                view = forward(now, buffer, start, end)
                if view is None:
                    self.handed_back += 1
                else:
                    self.views += 1
                return view

            return counted, peer

        service.lane = lane  # type: ignore[method-assign]


def _lanes(service: RelayService | None = None, **options: Any) -> tuple[Pair, LaneSpy]:
    pair = Pair(service, **options)
    return pair, LaneSpy(pair.net.service)


def _usual(service: RelayService | None = None, **options: Any) -> Pair:
    pair = Pair(service, **options)
    pair.net.lanes = False
    Spy(pair.net.service, forced_usual=True)  # receive_into on every read
    return pair


def _same(lanes: Pair, usual: Pair) -> None:
    assert decode_output(lanes.sender.received, expect_masked=False) == \
        decode_output(usual.sender.received, expect_masked=False)
    assert lanes.listener.leg_events == usual.listener.leg_events
    assert lanes.net.service.counters() == usual.net.service.counters()
    assert lanes.net.service.next_deadline() == usual.net.service.next_deadline()
    assert lanes.sender.tcp_closed == usual.sender.tcp_closed


@pytest.mark.parametrize(("ending", "handed_back"), [
    # A close passes: the sender's lane hands back, then the listener's with its answer.
    ([close_frame(1000, "bye")], 2),
    # A violation: the sender's leg is failed; the listener's answer to the relay's 1001
    # finds the other leg closed.
    ([raw_frame(OP_BINARY, b"bad", rsv=1)], 2),
    ([raw_frame(OP_TEXT, b"\xff\xfe")], 2),  # invalid UTF-8 in a text message: 1007
    ([raw_frame(OP_BINARY, b"more")], 0),
], ids=["close", "violation", "bad-text", "data-only"])
def test_a_lane_does_what_receive_into_does(ending: list[bytes], handed_back: int) -> None:
    lanes, spy = _lanes()
    lanes.write_all(SCRIPT + ending)
    usual = _usual()
    usual.write_all(SCRIPT + ending)
    _same(lanes, usual)
    assert lanes.net.service.counters().messages_relayed > 0
    # The script's data went through lanes both ways (after each leg's first read) ...
    assert spy.views >= len(SCRIPT)
    # ... and the ending, when it was not plain data, was handed back.
    assert spy.handed_back == handed_back


def _random_frames(rng: random.Random) -> list[bytes]:
    frames: list[bytes] = []
    for _ in range(rng.randrange(1, 12)):
        kind = rng.random()
        if kind < 0.5:
            frames.append(raw_frame(OP_BINARY, rng.randbytes(rng.choice([0, 5, 125, 126, 70_000]))))
        elif kind < 0.7:
            frames.append(raw_frame(OP_TEXT, "héllo wörld"[: rng.randrange(12)]))
        elif kind < 0.8:
            frames += [raw_frame(OP_BINARY, b"part-", fin=False), raw_frame(OP_PING, b"p"),
                       raw_frame(OP_CONT, b"two")]
        else:
            frames.append(raw_frame(OP_PONG, rng.randbytes(rng.randrange(126))))
    ending = rng.random()
    if ending < 0.3:
        frames.append(close_frame(1000, "done"))
    elif ending < 0.4:
        frames.append(raw_frame(OP_BINARY, b"x", rsv=2))
    return frames


def _cut(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    """The frames' bytes in writes cut at random places (several frames per write, or parts)."""
    data = b"".join(frames)
    writes, pos = [], 0
    while pos < len(data):
        step = rng.choice([1, 3, 7, 64, 1000, 70_000])
        writes.append(data[pos:pos + step])
        pos += step
    return writes


@pytest.mark.parametrize("seed", range(40))
def test_lanes_match_receive_into_on_random_cut_streams(seed: int) -> None:
    rng = random.Random(seed)
    writes = _cut(rng, _random_frames(rng))
    lanes, _ = _lanes()
    lanes.write_all(writes)
    usual = _usual()
    usual.write_all(writes)
    _same(lanes, usual)


def test_lane_traffic_is_counted_at_counters_and_at_the_end() -> None:
    pair, spy = _lanes()
    service = pair.net.service
    pair.write_all([raw_frame(OP_BINARY, b"a" * 10)] * 5)
    assert spy.views >= 4  # the first read of each leg takes the usual way
    counted = service.counters()
    assert (counted.messages_relayed, counted.bytes_relayed) == (10, 100)  # there and back
    assert service.counters() == counted  # counting twice adds nothing
    pair.write_all([raw_frame(OP_BINARY, b"b" * 7)])
    pair.write_all([close_frame(1000)])  # the pair closes; the legs count as they end
    pair.net.pump()
    pair.assert_pair_gone()
    # Each way: 5 + 1 data frames and a close (its 2-byte code is payload too).
    assert (service.stats.messages_relayed, service.stats.bytes_relayed) == (12, 118)
    assert service.stats.frames_relayed == 14


def test_no_lane_for_what_is_not_plainly_relaying() -> None:
    pair, _ = _lanes(RelayService(ServiceConfig(), half_close_timeout=5.0),
                     reply_to_close=False)
    service = pair.net.service
    sender = pair.sender.conn_id
    listener_leg = pair.leg.transport.conn_id
    granted = service.lane(sender)
    assert granted is not None and granted[1] == listener_leg == service.peer_of(sender)
    assert service.lane(10_000) is None  # no such connection
    control = [conn_id for conn_id in range(1, 10)
               if service.kind(conn_id) is ConnectionKind.LISTENER]
    assert control and service.lane(control[0]) is None  # a listener's control channel
    # The sender's close has passed (the listener does not answer): its leg gets no lane.
    pair.write_all([close_frame(1000)])
    assert service.lane(sender) is None
    assert service.lane(listener_leg) is not None  # the other direction still relays


def test_a_lane_hands_back_once_the_other_leg_is_gone() -> None:
    pair, spy = _lanes()
    pair.write_all([raw_frame(OP_BINARY, b"one"), raw_frame(OP_BINARY, b"two")])
    views = spy.views
    assert views >= 1
    pair.leg.transport.sever()  # the listener's TCP connection ends without a close frame
    received = len(pair.sender.received)
    pair.write_all([raw_frame(OP_BINARY, b"after")])
    assert spy.views == views and spy.handed_back == 1
    assert all(b"after" not in chunk for chunk in pair.sender.received[received:])
    # The sender heard 1001 from the relay, as without lanes.
    usual = _usual()
    usual.write_all([raw_frame(OP_BINARY, b"one"), raw_frame(OP_BINARY, b"two")])
    usual.leg.transport.sever()
    usual.write_all([raw_frame(OP_BINARY, b"after")])
    _same(pair, usual)
