"""The WebSocket conformance checklist against the relay's sender-facing endpoint, in memory.

A raw sender completes a normal opening handshake through the relay (``RelayService`` on a
``MemoryNetwork``) to an *echoing listener* (a ``MemoryListener`` whose accepted connections send
every text/binary message back; pongs, close replies and UTF-8 failures come from our own
client-role ``WebSocketConnection`` on the listener's leg). The sender then writes each row of
``tests/test_conformance.SERVER_CASES`` (categories 1-7, 10 and X) in one write, frame by frame
and byte by byte, the network settling after every write. The tests assert what the sender
receives (reassembled messages, pongs, close codes, the relay closing TCP, nothing answered after
a violation) and that the listener's leg ended cleanly: it saw a close frame (1001 when the relay
failed the sender's leg, the forwarded close otherwise) and its TCP connection ended. Category 9
(sized down) and the 0.x handshake rows against the relay's sender endpoint follow.

What differs from a direct server (``tests/test_conformance.py``), and why:

- **Who answers.** Pings, pongs and closes are forwarded end to end (the relay relays frames "with
  no interpretation", hybrid-connections-wire §3.1), so pongs and close replies come from the
  listener; the sender's wire shows the same frames as with a direct echoing server. The relay
  may stream a frame's payload in pieces, so outputs are compared as messages, not frames.
- **Framing violations are the relay's.** Everything the relay's ``Forwarder`` checks on the
  sender's leg (RSV bits, opcodes, masking, control-frame length and fragmentation,
  continuations, the 64-bit length, close bodies: 1-byte body, invalid or reserved codes such as
  1015, 5000 and 65535, and a close reason that is not UTF-8, 7.5.1 -> 1007) makes the relay fail
  the sender's leg itself: close frame with the row's code, then TCP close, exactly as a direct
  server does. The listener's leg hears 1001 ("the other side failed") and closes.
- **Category 6 (invalid UTF-8 in text messages) is the relay's** (``validate_text``, the
  default; issue 12: hyco-ws on ws 1.x does not check UTF-8 and would echo it). The sender's
  ``Forwarder`` validates text as it streams and fails the sender's leg with 1007 at the first
  invalid byte, then closes its TCP connection, exactly as a direct server does. The invalid text
  never reaches the listener, so whether the listener checks UTF-8 no longer matters. The
  listener's leg hears 1001 when the failure falls between frames (a message that ends inside a
  code point); when it falls inside a frame whose start has been forwarded, nothing clean can be
  said to the listener any more and its TCP connection just ends (1006 on its side).
- **Category 6 with ``validate_text=False``** (each row also runs so, ``-unchecked``) is the
  listener's: the relay does not decode text, as the real service does not. The echoing listener
  fails its leg with 1007 and the relay forwards that close to the sender. Because a forwarded
  close is an ordinary close, the relay closes the sender's TCP connection only once the sender
  has answered it (the pair is torn down when both closes have passed). A direct server closes
  TCP right after its 1007, so here the sender first sees ``close 1007`` without EOF, answers the
  close as Autobahn's client does, and then sees EOF. The failed listener ignores that answer (it
  discards input after failing), so its leg reports the 1007 failure, not a received close.
  6.4.x stays strict end to end: the relay streams payload bytes as they arrive, so the listener
  fails at the first bad byte, mid-frame.
- **NON-STRICT one-write alternatives** (3.2-3.4, 4.x.3-5, 5.15, 7.1.6) hold through the relay
  too: in ``whole`` mode the relay forwards the valid message and fails the leg (or forwards the
  close) in the same write, before the listener's echo can come back; that echo is dropped.
- **Category 9** is sized down as in ``test_conformance``; its limit row uses the relay's own
  ``max_frame_size`` (the relay fails the leg with 1009, the listener hears 1001) instead of an
  application's ``max_message_size``.

A leg that never answers the relay's 1001 (or a forwarded close) is torn down after
``close_timeout`` / ``half_close_timeout``: ``RelayService.next_deadline()`` reports the legs'
closing deadlines (this suite found that it once did not).
"""

from __future__ import annotations

import base64
import hashlib

import pytest

from hyco_proto.errors import RemoteProtocolError
from hyco_proto.listener import ConnectionRequested
from hyco_proto.memory import MemoryNetwork, MemoryWebSocket
from hyco_proto.service.config import ServiceConfig
from hyco_proto.service.router import RelayService
from hyco_proto.websocket import Ping, State
from tests.relayutil import (
    SEND,
    EchoListener,
    RawSender,
    raw_sender,
    start_echo_listener,
    token_for,
)
from tests.test_conformance import SERVER_CASES, Case, _utf8_pause_steps
from tests.wsutil import (
    EOF,
    MODES,
    OP_BINARY,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    Item,
    binary,
    closed,
    decode_output,
    fragmented,
    pong,
    split_bytes,
    split_every,
    text,
    writes_for,
)
from tests.wsutil import close as close_frame
from tests.wsutil import frame as raw_frame

RELAY = "relay"  # the relay fails the sender's leg; the listener's leg hears 1001
LISTENER = "listener"  # the echoing listener fails its leg; the relay forwards its close


def detected_by(case: Case, validate_text: bool = True) -> str | None:
    """Who fails the connection in a "fail" row (None for rows that end with a close)."""
    if not case.failed:
        return None
    # Invalid UTF-8 in a text *message* (category 6): the relay's with ``validate_text``.
    if case.id.startswith("6.") and not validate_text:
        return LISTENER
    return RELAY


class Pair:
    """A relay on a MemoryNetwork, an echoing listener and a raw sender joined through it."""

    def __init__(self, service: RelayService | None = None, *, reply_to_close: bool = True,
                 validate_text: bool = True) -> None:
        self.net = MemoryNetwork(
            service or RelayService(ServiceConfig(validate_text=validate_text)))
        self.listener: EchoListener = start_echo_listener(self.net, reply_to_close=reply_to_close)
        self.sender: RawSender = raw_sender(self.net)
        assert self.sender.accepted is not None, self.sender.rejected
        assert self.sender.accepted.subprotocol is None
        assert len(self.listener.connections) == 1
        self.leg: MemoryWebSocket = self.listener.connections[0]
        self.leg_events = self.listener.leg_events[0]

    def write_all(self, writes: list[bytes]) -> None:
        self.sender.write_all(writes)

    def answer_close(self, code: int | None) -> None:
        """Answer the close the sender received, like Autobahn's client (RFC 6455 §5.5.1)."""
        self.sender.write(close_frame(code))

    def assert_pair_gone(self) -> None:
        service = self.net.service
        assert self.sender.tcp_closed
        assert service.kind(self.sender.conn_id) is None
        assert service.kind(self.leg.transport.conn_id) is None
        assert service.peer_of(self.leg.transport.conn_id) is None


def _check_leg(pair: Pair, code: int, who: str | None) -> None:
    """The listener's leg ended cleanly: it saw a close (or sent the failure) and TCP ended."""
    leg = pair.leg
    ws = leg.ws
    assert ws is not None and ws.state is State.CLOSED
    assert leg.tcp_closed, "the relay left the listener's TCP connection open"
    assert leg.closed is not None
    if who == LISTENER:
        assert isinstance(ws.error, RemoteProtocolError)
        assert ws.error.close_code == code == 1007
        assert leg.closed.code == 1007
    elif who == RELAY and code == 1007 and leg.close_received is None:
        # The relay found invalid UTF-8 inside a frame whose start it had forwarded: nothing
        # clean can be said to the listener any more, so its TCP connection just ends.
        assert ws.error is None
        assert leg.closed.code == 1006
    else:
        want = 1001 if who == RELAY else code
        assert ws.error is None
        assert leg.close_received is not None and leg.close_received.code == want
        assert leg.closed.code == want


def _params(cases: list[Case]) -> list[object]:
    # Category 6 also runs with validate_text=False: the listener's UTF-8 check then decides.
    return [pytest.param(c, mode, True, id=f"{c.id}-{mode}") for c in cases for mode in MODES] + [
        pytest.param(c, mode, False, id=f"{c.id}-{mode}-unchecked")
        for c in cases
        if c.id.startswith("6.")
        for mode in MODES
    ]


@pytest.mark.parametrize(("case", "mode", "validate_text"), _params(SERVER_CASES))
def test_row_through_relay(case: Case, mode: str, validate_text: bool) -> None:
    pair = Pair(validate_text=validate_text)
    sender = pair.sender
    pair.write_all(writes_for(mode, case.frames))
    if case.after:
        pair.write_all(writes_for(mode, case.after))
    expect = case.whole if (mode == "whole" and case.whole is not None) else case.expect
    assert expect[-1] == EOF
    who = detected_by(case, validate_text)
    if who == LISTENER:
        # The listener's close is forwarded; the relay waits for the sender's answer.
        assert sender.output() == expect[:-1]
        assert not sender.tcp_closed
        pair.answer_close(case.code)
    out = sender.output()
    assert out == expect
    pair.assert_pair_gone()
    _check_leg(pair, case.code, who)
    # Echoes and pongs are the listener's: it received every echoed message and every ping
    # that was answered.
    echoed = [item[1] for item in out if item[0] in ("text", "binary")]
    assert pair.leg.messages[: len(echoed)] == echoed
    pings = [e.payload for e in pair.leg_events if isinstance(e, Ping)]
    pongs = [item[1] for item in out if item[0] == "pong"]
    assert pings[: len(pongs)] == pongs
    # The sender's own TCP close afterwards changes nothing.
    before = list(sender.received)
    sender.close_tcp()
    assert sender.received == before


def test_every_row_is_run_and_classified() -> None:
    ids = {c.id for c in SERVER_CASES}
    assert {"1.1.1", "2.10", "3.7", "4.2.5", "5.20", "6.23.7", "7.13.2", "10.1.1", "X.9"} <= ids
    by_listener = {c.id for c in SERVER_CASES if detected_by(c, False) == LISTENER}
    by_relay = {c.id for c in SERVER_CASES if detected_by(c) == RELAY}
    assert all(c.code == 1007 for c in SERVER_CASES if c.id in by_listener)
    assert "6.3.1" in by_listener and "6.4.4" in by_listener and "7.5.1" in by_relay
    assert by_listener <= by_relay and not any(detected_by(c) == LISTENER for c in SERVER_CASES)
    assert {
        "2.5",
        "3.1",
        "4.1.1",
        "5.1",
        "5.18",
        "7.3.2",
        "7.3.6",
        "7.9.1",
        "7.13.1",
        "X.1",
        "X.2",
        "X.3",
        "X.4",
        "X.5",
        "X.6",
    } <= by_relay


# -- Rows with a pause: what the sender has received before the rest arrives -----------------


def _steps(pair: Pair, steps: list[tuple[bytes, list[Item]]], split: bool) -> None:
    seen = 0
    for data, new in steps:
        pair.write_all(split_bytes(data) if split else [data])
        out = pair.sender.output()
        assert out[seen:] == new
        seen = len(out)


@pytest.mark.parametrize("split", [False, True], ids=["writes", "bytes"])
def test_5_19_pongs_during_pause(split: bool) -> None:
    """The relay forwards each ping at once: its pong arrives while the message is unfinished."""
    pair = Pair()
    F = raw_frame
    _steps(
        pair,
        [
            (
                F(OP_TEXT, "fragment1", fin=False)
                + F(OP_CONT, "fragment2", fin=False)
                + F(OP_PING, "pongme 1!"),
                [pong("pongme 1!")],
            ),
            (
                F(OP_CONT, "fragment3", fin=False)
                + F(OP_CONT, "fragment4", fin=False)
                + F(OP_PING, "pongme 2!"),
                [pong("pongme 2!")],
            ),
            (F(OP_CONT, "fragment5"), [text("fragment1fragment2fragment3fragment4fragment5")]),
            (close_frame(1000), [closed(1000), EOF]),
        ],
        split,
    )
    pair.assert_pair_gone()
    _check_leg(pair, 1000, None)


@pytest.mark.parametrize("split", [False, True], ids=["writes", "bytes"])
@pytest.mark.parametrize("row", ["6.4.1", "6.4.2", "6.4.3", "6.4.4"])
def test_6_4_fail_fast_through_relay(row: str, split: bool) -> None:
    """Strict end to end: the listener's 1007 reaches the sender as soon as the bad byte has
    passed the relay, even inside an unfinished frame; TCP closes once the sender answers
    (``validate_text=False``: the relay does not check)."""
    pair = Pair(validate_text=False)
    steps = [(data, [item for item in new if item != EOF]) for data, new in _utf8_pause_steps(row)]
    _steps(pair, steps, split)
    assert not pair.sender.tcp_closed
    pair.answer_close(1007)
    assert pair.sender.output() == [closed(1007), EOF]
    pair.assert_pair_gone()
    _check_leg(pair, 1007, LISTENER)


@pytest.mark.parametrize("split", [False, True], ids=["writes", "bytes"])
@pytest.mark.parametrize("row", ["6.4.1", "6.4.2", "6.4.3", "6.4.4"])
def test_6_4_fail_fast_by_the_relay(row: str, split: bool) -> None:
    """With ``validate_text`` the relay itself fails the sender with 1007 as soon as the bad byte
    arrives, even inside an unfinished frame, and closes TCP at once (as a direct server does);
    the listener never receives the invalid text."""
    pair = Pair()
    steps = _utf8_pause_steps(row)
    _steps(pair, steps[:2], split)
    assert pair.sender.tcp_closed
    pair.assert_pair_gone()
    assert pair.leg.messages == []
    _check_leg(pair, 1007, RELAY)


def test_relay_fails_invalid_text_a_listener_would_not_check() -> None:
    """Issue 12: a listener that does not validate UTF-8 (hyco-ws 1.0.5 on ws 1.1.5) would echo
    invalid text; the relay fails the sender with 1007 before any of it reaches the listener, so
    the sender sees what a conforming server does. Here the message ends inside a code point: the
    failure falls between frames and the listener's leg hears 1001."""
    pair = Pair()
    pair.write_all([raw_frame(OP_TEXT, "κόσμε".encode() + b"\xe2\x82", fin=False),
                    raw_frame(OP_CONT, b"")])
    assert pair.sender.output() == [closed(1007), EOF]
    pair.assert_pair_gone()
    assert pair.leg.messages == []
    _check_leg(pair, 1007, RELAY)
    assert pair.leg.close_received is not None and pair.leg.close_received.code == 1001


def test_unchecked_relay_forwards_invalid_text() -> None:
    """``validate_text=False``: the relay forwards invalid text untouched; only a listener that
    checks UTF-8 (ours) fails it."""
    pair = Pair(validate_text=False)
    pair.write_all([raw_frame(OP_TEXT, b"\xed\xa0\x80")])
    assert pair.sender.output() == [closed(1007)]
    _check_leg_pending = pair.leg.ws
    assert _check_leg_pending is not None and isinstance(_check_leg_pending.error,
                                                         RemoteProtocolError)


def test_nothing_answered_after_the_listeners_1007() -> None:
    """After the listener failed with 1007, the sender's later frames still pass the relay but
    nothing answers them: no pong, no echo (``validate_text=False``: the relay does not
    check)."""
    pair = Pair(validate_text=False)
    pair.write_all(
        [raw_frame(OP_TEXT, b"\xff"), raw_frame(OP_PING, "late"), raw_frame(OP_TEXT, "late")]
    )
    assert pair.sender.output() == [closed(1007)]
    pair.answer_close(1007)
    assert pair.sender.output() == [closed(1007), EOF]
    pair.assert_pair_gone()
    _check_leg(pair, 1007, LISTENER)


# -- 9 Limits and performance, sized down (delivery only; speed lives in bench/) -------------


def _echo_one(writes: list[bytes], expect: Item) -> None:
    pair = Pair()
    pair.write_all(writes)
    pair.write_all([close_frame(1000)])
    assert pair.sender.output() == [expect, closed(1000), EOF]
    pair.assert_pair_gone()
    _check_leg(pair, 1000, None)


@pytest.mark.parametrize(
    "size", [64 * 1024, 256 * 1024, 1024 * 1024], ids=lambda n: f"{n // 1024}KiB"
)
@pytest.mark.parametrize("kind", ["9.1-text", "9.2-binary"])
def test_9_1_9_2_one_big_frame(kind: str, size: int) -> None:
    if kind == "9.1-text":
        _echo_one([raw_frame(OP_TEXT, "*" * size)], text("*" * size))
    else:
        data = bytes(range(256)) * (size // 256)
        _echo_one([raw_frame(OP_BINARY, data)], binary(data))


@pytest.mark.parametrize("fragment", [64, 1024, 16384, 256 * 1024])
@pytest.mark.parametrize("kind", ["9.3-text", "9.4-binary"])
def test_9_3_9_4_message_in_fragments(kind: str, fragment: int) -> None:
    size = 256 * 1024  # 4 MiB in the suite
    data = ("*" * size).encode() if kind == "9.3-text" else bytes(range(256)) * (size // 256)
    op = OP_TEXT if kind == "9.3-text" else OP_BINARY
    frames = fragmented(op, data, fragment)
    _echo_one([frames], text(data.decode()) if op == OP_TEXT else binary(data))


@pytest.mark.parametrize("piece", [64, 512, 2048])
@pytest.mark.parametrize("kind", ["9.5-text", "9.6-binary"])
def test_9_5_9_6_big_frame_in_small_writes(kind: str, piece: int) -> None:
    size = 128 * 1024  # 1 MiB in the suite
    if kind == "9.5-text":
        _echo_one(split_every(raw_frame(OP_TEXT, "*" * size), piece), text("*" * size))
    else:
        data = bytes(range(256)) * (size // 256)
        _echo_one(split_every(raw_frame(OP_BINARY, data), piece), binary(data))


@pytest.mark.parametrize("size", [0, 64, 4096])
@pytest.mark.parametrize("kind", ["9.7-text", "9.8-binary"])
def test_9_7_9_8_many_round_trips(kind: str, size: int) -> None:
    pair = Pair()
    for i in range(100):  # 1000 in the suite
        if kind == "9.7-text":
            msg = str(i % 10) * size
            pair.write_all([raw_frame(OP_TEXT, msg)])
            want: Item = text(msg)
        else:
            blob = bytes((i % 256,)) * size
            pair.write_all([raw_frame(OP_BINARY, blob)])
            want = binary(blob)
        assert pair.sender.output()[-1] == want  # each echo before the next message is sent
    assert len(pair.sender.output()) == 100


def test_9_limit_refused_by_the_relay_with_1009() -> None:
    limit = 64 * 1024
    pair = Pair(RelayService(max_frame_size=limit))
    pair.write_all([raw_frame(OP_TEXT, "*" * limit)])
    pair.write_all([raw_frame(OP_TEXT, "*" * (limit + 1)), raw_frame(OP_PING)])
    assert pair.sender.output() == [text("*" * limit), closed(1009), EOF]
    pair.assert_pair_gone()
    _check_leg(pair, 1009, RELAY)
    assert pair.leg.messages == ["*" * limit]  # the oversize frame never reached the listener


# -- The listener's leg when the listener does not answer the relay's close -----------------


def test_listener_that_never_answers_1001_is_closed_after_close_timeout() -> None:
    pair = Pair(reply_to_close=False)
    pair.write_all([raw_frame(OP_TEXT, "Hello", rsv=1)])  # row 3.1
    assert pair.sender.output() == [closed(1002), EOF]
    leg = pair.leg
    assert leg.close_received is not None and leg.close_received.code == 1001
    assert not leg.tcp_closed  # it has close_timeout to answer
    service = pair.net.service
    deadline = service.next_deadline()
    assert deadline is not None and deadline <= pair.net.now + service.close_timeout
    pair.net.advance(service.close_timeout + 1)
    assert leg.tcp_closed, "the relay never tore down the listener's leg"


# -- 0 Opening handshake against the relay's sender endpoint ----------------------------------

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
KEY = base64.b64encode(bytes(range(16))).decode()


def _request(
    net: MemoryNetwork, *, version: str = "13", key: str | None = KEY, extra: str = ""
) -> bytes:
    lines = [
        "GET /$hc/myhc?sb-hc-action=connect HTTP/1.1",
        "Host: 127.0.0.1:9090",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Version: {version}",
        f"ServiceBusAuthorization: {token_for(net, SEND)}",
    ]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def _parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, "incomplete HTTP response"
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 ")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def _handshake(
    data: bytes | None = None, *, bytewise: bool = False, **kw: object
) -> tuple[MemoryNetwork, EchoListener, RawSender]:
    net = MemoryNetwork(RelayService())
    lst = start_echo_listener(net)
    sender = RawSender(net)
    payload = data if data is not None else _request(net, **kw)  # type: ignore[arg-type]
    sender.write_all(split_bytes(payload) if bytewise else [payload])
    return net, lst, sender


def _requests_seen(lst: EchoListener) -> int:
    return sum(isinstance(e, ConnectionRequested) for e in lst.events)


@pytest.mark.parametrize("mode", ["whole", "bytes"])
def test_0_1_accept_and_close(mode: str) -> None:
    net = MemoryNetwork(RelayService())
    lst = start_echo_listener(net)
    sender = RawSender(net)
    # The close frame comes right behind the request, before the relay's 101.
    data = _request(net) + close_frame(1000)
    sender.write_all(split_bytes(data) if mode == "bytes" else [data])
    status, headers, body = _parse_response(sender.raw())
    assert status == 101
    assert headers["upgrade"].lower() == "websocket"
    assert headers["connection"].lower() == "upgrade"
    want = base64.b64encode(hashlib.sha1((KEY + GUID).encode()).digest()).decode()
    assert headers["sec-websocket-accept"] == want
    # After the 101: the listener's close reply (forwarded), then the relay closes TCP.
    assert sender.received[-1] == b""
    assert decode_output([body, b""], expect_masked=False) == [closed(1000), EOF]
    leg = lst.connections[0]
    assert leg.close_received is not None and leg.close_received.code == 1000
    assert leg.tcp_closed


def test_0_2_wrong_version_gets_426_with_version_header() -> None:
    _, lst, sender = _handshake(version="12")
    status, headers, _ = _parse_response(sender.raw())
    assert status == 426
    assert headers["sec-websocket-version"] == "13"
    assert sender.received[-1] == b"" and sender.tcp_closed
    assert _requests_seen(lst) == 0


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytes"])
def test_0_3_no_extension_no_subprotocol_selected(bytewise: bool) -> None:
    _, lst, sender = _handshake(
        bytewise=bytewise, extra="Sec-WebSocket-Extensions: permessage-deflate\r\n"
    )
    status, headers, body = _parse_response(sender.raw())
    assert status == 101 and body == b""
    assert "sec-websocket-extensions" not in headers
    assert "sec-websocket-protocol" not in headers
    leg = lst.connections[0]
    assert leg.accepted is not None and leg.accepted.subprotocol is None
    assert not sender.tcp_closed


@pytest.mark.parametrize(
    "key", [None, "", "dGhlIHNhbXBsZQ==", "not base64!!", "AAAAAAAAAAAAAAAAAAAAAAA="]
)
def test_0_4_missing_or_bad_key_gets_400(key: str | None) -> None:
    _, lst, sender = _handshake(key=key)
    assert _parse_response(sender.raw())[0] == 400
    assert sender.received[-1] == b"" and sender.tcp_closed
    assert _requests_seen(lst) == 0
