"""``RelayService.forward_into``: the relay's shortcut for plain relayed data must do exactly
what ``receive_into`` does, and take the shortcut only when nothing else happened."""

from __future__ import annotations

from typing import Any

import pytest

from hyco_proto.service.config import ServiceConfig
from hyco_proto.service.router import RelayService
from tests.test_relay_conformance import Pair
from tests.wsutil import OP_BINARY, OP_CONT, OP_PING, OP_TEXT, decode_output
from tests.wsutil import close as close_frame
from tests.wsutil import frame as raw_frame

SCRIPT = [
    raw_frame(OP_BINARY, b"\x01" * 64),
    raw_frame(OP_TEXT, "hello") + raw_frame(OP_BINARY, b"two in one write"),
    raw_frame(OP_BINARY, b"frag-", fin=False),
    raw_frame(OP_PING, b"p"),  # a control frame between fragments passes too
    raw_frame(OP_CONT, b"ment"),
    raw_frame(OP_BINARY, bytes(range(256)) * 300),  # 16-bit and 64-bit lengths
    raw_frame(OP_BINARY, b"x" * 70_000)[:1000],  # a frame cut across writes
    raw_frame(OP_BINARY, b"x" * 70_000)[1000:],
]


class Spy:
    """Records what ``forward_into`` answered: ``"fast"`` or ``"usual"``."""

    def __init__(self, service: RelayService, *, forced_usual: bool = False) -> None:
        self.service = service
        self.answers: list[str] = []
        self._real = service.forward_into
        self._forced_usual = forced_usual
        service.forward_into = self  # type: ignore[method-assign]

    def __call__(self, now: float, conn_id: int, buffer: Any, start: int,
                 end: int) -> tuple[int, memoryview] | None:
        if self._forced_usual:
            self.service.receive_into(now, conn_id, buffer, start, end)
            result = None
        else:
            queued = list(self.service._out)
            deadline = self.service.next_deadline()
            result = self._real(now, conn_id, buffer, start, end)
            if result is not None:  # nothing else happened, and nothing was queued before
                assert not queued and not self.service._out
                assert not self.service._reading
                assert self.service.next_deadline() == deadline
        self.answers.append("usual" if result is None else "fast")
        return result


def _run(forced_usual: bool, ending: list[bytes]) -> tuple[Pair, Spy, int]:
    """The script, then the ending; also how many answers came before the ending."""
    pair = Pair()
    pair.net.lanes = False  # forward_into on every read (lanes: tests/test_relay_lane.py)
    spy = Spy(pair.net.service, forced_usual=forced_usual)
    pair.write_all(SCRIPT)
    before_ending = len(spy.answers)
    pair.write_all(ending)
    return pair, spy, before_ending


@pytest.mark.parametrize("ending", [
    [close_frame(1000, "bye")],  # a close passes: the pair's closing deadline starts
    [raw_frame(OP_BINARY, b"bad", rsv=1)],  # a violation: the relay fails the sender's leg
    [],
], ids=["close", "violation", "data-only"])
def test_the_shortcut_does_what_receive_into_does(ending: list[bytes]) -> None:
    fast, spy, before_ending = _run(False, ending)
    usual, forced, _ = _run(True, ending)
    assert set(forced.answers) == {"usual"}
    # The same bytes reached the sender (the listener echoes), and the same counts.
    assert decode_output(fast.sender.received, expect_masked=False) == \
        decode_output(usual.sender.received, expect_masked=False)
    assert fast.listener.leg_events == usual.listener.leg_events
    assert fast.net.service.stats == usual.net.service.stats
    assert fast.net.service.stats.messages_relayed > 0
    assert fast.net.service.next_deadline() == usual.net.service.next_deadline()
    # Data took the shortcut both ways (sender -> listener, the echo back) ...
    assert spy.answers.count("fast") >= len(SCRIPT)
    # ... and the ending (the sender's close or violation) did not.
    if ending:
        assert spy.answers[before_ending] == "usual"


def test_a_close_takes_the_usual_way_and_starts_the_closing_deadline() -> None:
    # The listener never answers the close: the pair waits for it until half_close_timeout.
    pair = Pair(RelayService(ServiceConfig(), half_close_timeout=5.0), reply_to_close=False)
    pair.net.lanes = False
    spy = Spy(pair.net.service)
    pair.write_all([raw_frame(OP_BINARY, b"data")])
    assert spy.answers[-2:] == ["fast", "fast"]  # there and echoed back
    before = pair.net.service.next_deadline()  # the listener's token expiry, far away
    pair.write_all([close_frame(1000)])
    assert spy.answers[-1] == "usual"
    after = pair.net.service.next_deadline()
    assert after is not None and (before is None or after < before)


def test_no_shortcut_once_the_other_leg_is_gone() -> None:
    """The listener's leg dropped (no close): the sender's next data is not forwarded."""
    pair = Pair()
    pair.net.lanes = False
    spy = Spy(pair.net.service)
    pair.write_all([raw_frame(OP_BINARY, b"before")])
    assert spy.answers[-2:] == ["fast", "fast"]
    pair.leg.transport.sever()  # the listener's TCP connection ends without a close frame
    received = len(pair.sender.received)
    pair.write_all([raw_frame(OP_BINARY, b"after")])
    assert "fast" not in spy.answers[spy.answers.index("fast") + 2:]
    assert all(b"after" not in chunk for chunk in pair.sender.received[received:])
