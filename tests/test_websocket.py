"""Unit tests for ``hyco_proto.websocket``, feature by feature, in both roles and on every frame
kernel that is available (the ``kernel`` fixture swaps the kernel the module uses)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hyco_proto.websocket as ws
from hyco_proto.errors import LocalProtocolError, RemoteProtocolError
from hyco_proto.websocket import (
    BinaryMessage,
    CloseReceived,
    ConnectionClosed,
    Event,
    Ping,
    Pong,
    Role,
    State,
    TextMessage,
    WebSocketConnection,
    is_valid_close_code,
)
from tests.wsutil import (
    EOF,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    binary,
    close,
    closed,
    decode_output,
    frame,
    parse_frames,
    ping,
    pong,
    split_bytes,
    text,
)


@pytest.fixture(autouse=True)
def kernel(fmod: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """Run every test against each available frame kernel (pure Python, and Cython if built)."""
    monkeypatch.setattr(ws, "FrameDecoder", fmod.FrameDecoder)
    monkeypatch.setattr(ws, "encode_frame", fmod.encode_frame)
    monkeypatch.setattr(ws, "encode_header", fmod.encode_header)
    yield fmod


ROLES = [Role.SERVER, Role.CLIENT]


def peer_frame(role: Role, opcode: int, payload: bytes | str = b"", **kw: object) -> bytes:
    """A frame as the peer of ``role`` would send it (clients mask, servers do not)."""
    return frame(opcode, payload, mask=role is Role.SERVER, **kw)  # type: ignore[arg-type]


def peer_close(role: Role, code: int | None = 1000, reason: str = "") -> bytes:
    return close(code, reason, mask=role is Role.SERVER)


def output(conn: WebSocketConnection) -> list[object]:
    return decode_output(conn.data_to_send(), expect_masked=conn.role is Role.CLIENT)


def feed(conn: WebSocketConnection, data: bytes, mode: str) -> list[Event]:
    """Feed ``data`` whole or byte by byte; return all events."""
    if mode == "whole":
        conn.receive_data(data)
    else:
        for b in split_bytes(data):
            conn.receive_data(b)
    return conn.events_received()


MODES = ["whole", "bytes"]


# -- messages -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value)
def test_text_and_binary_messages(role: Role, mode: str) -> None:
    conn = WebSocketConnection(role)
    data = (peer_frame(role, OP_TEXT, "héllo") + peer_frame(role, OP_BINARY, b"\x00\xff")
            + peer_frame(role, OP_TEXT, "") + peer_frame(role, OP_BINARY, b""))
    assert feed(conn, data, mode) == [TextMessage("héllo"), BinaryMessage(b"\x00\xff"),
                                      TextMessage(""), BinaryMessage(b"")]
    assert conn.data_to_send() == []
    assert conn.state is State.OPEN


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value)
def test_partial_frame_waits_for_the_rest(role: Role) -> None:
    """Trailing data: a whole frame followed by the start of the next one."""
    conn = WebSocketConnection(role)
    first = peer_frame(role, OP_TEXT, "one")
    second = peer_frame(role, OP_BINARY, b"two" * 100)
    for cut in (1, 2, 5, len(second) - 1):
        conn.receive_data(first + second[:cut])
        assert conn.events_received() == [TextMessage("one")]
        conn.receive_data(second[cut:])
        assert conn.events_received() == [BinaryMessage(b"two" * 100)]


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value)
def test_trailing_data_from_the_handshake_is_parsed(role: Role) -> None:
    data = peer_frame(role, OP_TEXT, "early") + peer_frame(role, OP_PING, b"p")
    third = peer_frame(role, OP_TEXT, "x")
    conn = WebSocketConnection(role, trailing_data=data + third[:1])
    assert conn.events_received() == [TextMessage("early"), Ping(b"p")]
    assert output(conn) == [pong(b"p")]
    conn.receive_data(third[1:])
    assert conn.events_received() == [TextMessage("x")]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value)
def test_fragmented_messages_reassembled(role: Role, mode: str) -> None:
    conn = WebSocketConnection(role)
    word = "κόσμε-€-𤭢".encode()
    # Split inside code points on purpose.
    data = (peer_frame(role, OP_TEXT, word[:1], fin=False)
            + peer_frame(role, OP_CONT, word[1:6], fin=False)
            + peer_frame(role, OP_PING, b"between")
            + peer_frame(role, OP_CONT, word[6:])
            + peer_frame(role, OP_BINARY, b"ab", fin=False)
            + peer_frame(role, OP_CONT, b"", fin=False)
            + peer_frame(role, OP_CONT, b"cd"))
    assert feed(conn, data, mode) == [Ping(b"between"), TextMessage(word.decode()),
                                      BinaryMessage(b"abcd")]
    assert output(conn) == [pong(b"between")]


def test_single_chunk_binary_is_not_copied_by_reassembly() -> None:
    conn = WebSocketConnection(Role.SERVER)
    conn.receive_data(frame(OP_BINARY, b"a" * 100, fin=False) + frame(OP_CONT, b"", fin=True))
    (ev,) = conn.events_received()
    assert ev == BinaryMessage(b"a" * 100)


@pytest.mark.parametrize("mode", MODES)
def test_invalid_utf8_fails_before_the_message_ends(mode: str) -> None:
    conn = WebSocketConnection(Role.SERVER)
    events = feed(conn, frame(OP_TEXT, b"ok\xed\xa0", fin=False), mode)
    assert [type(e) for e in events] == [ConnectionClosed]
    assert events[0].code == 1007  # type: ignore[union-attr]
    assert output(conn) == [closed(1007), EOF]
    conn.receive_data(frame(OP_CONT, b"\x80"))
    assert conn.events_received() == [] and conn.data_to_send() == []


@pytest.mark.parametrize("mode", MODES)
def test_incomplete_code_point_at_message_end_fails(mode: str) -> None:
    conn = WebSocketConnection(Role.SERVER)
    events = feed(conn, frame(OP_TEXT, b"ok\xe2\x82", fin=False) + frame(OP_CONT, b""), mode)
    assert [type(e) for e in events] == [ConnectionClosed]
    assert conn.close_code == 1007


def test_utf8_decoder_is_reset_between_messages() -> None:
    conn = WebSocketConnection(Role.SERVER)
    conn.receive_data(frame(OP_TEXT, b"\xe2\x82", fin=False) + frame(OP_CONT, b"\xac"))
    conn.receive_data(frame(OP_TEXT, b"a", fin=False) + frame(OP_CONT, b"b"))
    assert conn.events_received() == [TextMessage("€"), TextMessage("ab")]


# -- limits --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_max_message_size(mode: str) -> None:
    conn = WebSocketConnection(Role.SERVER, max_message_size=10)
    data = (frame(OP_TEXT, "x" * 10) + frame(OP_BINARY, b"12345", fin=False)
            + frame(OP_CONT, b"123456") + frame(OP_PING))
    events = feed(conn, data, mode)
    assert events[0] == TextMessage("x" * 10)
    assert isinstance(events[-1], ConnectionClosed) and events[-1].code == 1009
    assert isinstance(events[-1].error, RemoteProtocolError)
    assert output(conn) == [closed(1009), EOF]


def test_max_frame_size() -> None:
    conn = WebSocketConnection(Role.CLIENT, max_frame_size=4)
    conn.receive_data(frame(OP_BINARY, b"1234", fin=False, mask=False)
                      + frame(OP_CONT, b"1234", mask=False))
    assert conn.events_received() == [BinaryMessage(b"12341234")]
    conn.receive_data(frame(OP_BINARY, b"12345", mask=False))
    assert conn.close_code == 1009
    assert output(conn) == [closed(1009)]  # a client waits for the server to close TCP


def test_negative_limits_are_refused() -> None:
    with pytest.raises(LocalProtocolError):
        WebSocketConnection(Role.SERVER, max_message_size=-1)
    with pytest.raises(LocalProtocolError):
        WebSocketConnection("server")  # type: ignore[arg-type]


# -- masking and sending ---------------------------------------------------------------------

@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value)
def test_every_sent_frame_masked_only_by_clients(role: Role) -> None:
    conn = WebSocketConnection(role)
    conn.send_text("tëxt")
    conn.send_binary(b"bin")
    conn.send_binary(bytearray(b"ba"))
    conn.send_binary(memoryview(b"mv"))
    conn.send_ping(b"pi")
    conn.send_pong(b"po")
    conn.receive_data(peer_frame(role, OP_PING, b"auto"))
    conn.send_close(1001, "bye")
    raw = b"".join(conn.data_to_send())
    frames = parse_frames(raw)
    assert all(f.masked == (role is Role.CLIENT) for f in frames)
    assert [(f.opcode, f.payload) for f in frames] == [
        (OP_TEXT, "tëxt".encode()), (OP_BINARY, b"bin"), (OP_BINARY, b"ba"), (OP_BINARY, b"mv"),
        (OP_PING, b"pi"), (OP_PONG, b"po"), (OP_PONG, b"auto"),
        (OP_CLOSE, b"\x03\xe9bye")]


def test_client_uses_fresh_mask_keys() -> None:
    conn = WebSocketConnection(Role.CLIENT)
    for _ in range(8):
        conn.send_binary(b"same")
    keys = {chunk[2:6] for chunk in conn.data_to_send()}
    assert len(keys) > 1


def test_large_server_send_is_not_copied() -> None:
    conn = WebSocketConnection(Role.SERVER)
    payload = b"z" * 100_000
    conn.send_binary(payload)
    out = conn.data_to_send()
    assert len(out) == 2 and out[1] is payload
    assert decode_output(out, expect_masked=False) == [binary(payload)]


def test_mutable_buffers_are_copied() -> None:
    conn = WebSocketConnection(Role.SERVER)
    buf = bytearray(b"a" * 20000)
    conn.send_binary(buf)
    buf[:] = b"b" * 20000
    assert decode_output(conn.data_to_send(), expect_masked=False) == [binary(b"a" * 20000)]


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value)
def test_large_messages_round_trip(role: Role) -> None:
    conn = WebSocketConnection(role)
    conn.send_text("é" * 70000)
    assert decode_output(conn.data_to_send(), expect_masked=role is Role.CLIENT) == [
        text("é" * 70000)]


def test_send_misuse_raises_with_advice() -> None:
    conn = WebSocketConnection(Role.SERVER)
    with pytest.raises(LocalProtocolError, match="send_binary"):
        conn.send_text(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="send_text"):
        conn.send_binary("str")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="surrogate"):
        conn.send_text("\ud800")
    with pytest.raises(LocalProtocolError, match="125"):
        conn.send_ping(b"x" * 126)
    with pytest.raises(LocalProtocolError, match="125"):
        conn.send_pong(b"x" * 126)
    with pytest.raises(LocalProtocolError, match="must be bytes"):
        conn.send_ping("str")  # type: ignore[arg-type]
    for code in (999, 1004, 1005 + 0 * 1, 1006, 1015, 1016, 2999, 5000):
        if code == 1005:
            continue
        with pytest.raises(LocalProtocolError, match="may not be sent"):
            conn.send_close(code)
    with pytest.raises(LocalProtocolError, match="123"):
        conn.send_close(1000, "x" * 124)
    with pytest.raises(LocalProtocolError, match="reason"):
        conn.send_close(1005, "why")
    with pytest.raises(LocalProtocolError, match="int"):
        conn.send_close("1000")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="str"):
        conn.send_close(1000, b"x")  # type: ignore[arg-type]
    assert conn.data_to_send() == []  # nothing was queued by the failed calls
    conn.send_close(1000, "x" * 123)
    for call in (lambda: conn.send_text("late"), lambda: conn.send_binary(b"late"),
                 lambda: conn.send_ping(), lambda: conn.send_pong(),
                 lambda: conn.send_close()):
        with pytest.raises(LocalProtocolError, match="send_close"):
            call()


def test_close_code_table() -> None:
    valid = [c for c in range(0, 70000) if is_valid_close_code(c)]
    assert valid == [*range(1000, 1004), *range(1007, 1015), *range(3000, 5000)]


# -- ping / pong ----------------------------------------------------------------------------

@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value)
def test_auto_pong_off_reports_and_lets_the_owner_answer(role: Role) -> None:
    conn = WebSocketConnection(role, auto_pong=False)
    conn.receive_data(peer_frame(role, OP_PING, b"1") + peer_frame(role, OP_PONG, b"2"))
    assert conn.events_received() == [Ping(b"1"), Pong(b"2")]
    assert conn.data_to_send() == []
    conn.send_pong(b"1")
    assert output(conn) == [pong(b"1")]


def test_no_pong_after_our_close() -> None:
    conn = WebSocketConnection(Role.SERVER)
    conn.send_close()
    conn.data_to_send()
    conn.receive_data(frame(OP_PING, b"late"))
    assert conn.events_received() == [Ping(b"late")]
    assert conn.data_to_send() == []


# -- closing handshake -------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value)
def test_peer_initiated_close(role: Role, mode: str) -> None:
    conn = WebSocketConnection(role)
    events = feed(conn, peer_close(role, 1001, "going") + peer_frame(role, OP_TEXT, "ignored"),
                  mode)
    assert events == [CloseReceived(1001, "going"), ConnectionClosed(1001, "going", None)]
    assert conn.state is State.CLOSED
    assert (conn.close_code, conn.close_reason, conn.error) == (1001, "going", None)
    if role is Role.SERVER:
        assert output(conn) == [closed(1001), EOF]
        assert conn.close_expected()  # waits for the client's FIN (with a timer)
    else:
        assert output(conn) == [closed(1001)]
        assert conn.close_expected()
    conn.receive_eof()
    assert conn.events_received() == []
    assert output(conn) == ([] if role is Role.SERVER else [EOF])
    assert not conn.close_expected()


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value)
def test_empty_close_is_1005_and_answered_empty(role: Role) -> None:
    conn = WebSocketConnection(role)
    conn.receive_data(peer_close(role, None))
    assert conn.events_received() == [CloseReceived(1005, ""), ConnectionClosed(1005, "", None)]
    assert output(conn)[0] == closed(None)


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value)
def test_we_initiate_close_and_still_receive_data(role: Role) -> None:
    conn = WebSocketConnection(role)
    conn.send_close(1000, "done")
    assert conn.state is State.CLOSING
    assert conn.close_expected()
    assert output(conn) == [closed(1000)]
    # RFC 6455 §5.5.1: the peer may still send data until its close frame.
    conn.receive_data(peer_frame(role, OP_TEXT, "in flight"))
    assert conn.events_received() == [TextMessage("in flight")]
    conn.receive_data(peer_close(role, 1000, "ok"))
    assert conn.events_received() == [CloseReceived(1000, "ok"), ConnectionClosed(1000, "ok", None)]
    assert conn.state is State.CLOSED
    assert output(conn) == ([EOF] if role is Role.SERVER else [])
    conn.receive_eof()
    assert output(conn) == ([] if role is Role.SERVER else [EOF])
    assert conn.events_received() == []


def test_violation_after_our_close_fails_without_second_close_frame() -> None:
    conn = WebSocketConnection(Role.SERVER)
    conn.send_close()
    conn.data_to_send()
    conn.receive_data(frame(OP_TEXT, b"x", rsv=4))
    (ev,) = conn.events_received()
    assert isinstance(ev, ConnectionClosed) and ev.code == 1002 and ev.error is not None
    assert conn.data_to_send() == [b""]


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value)
def test_half_close_with_reply_to_close_false(role: Role) -> None:
    conn = WebSocketConnection(role, reply_to_close=False)
    conn.receive_data(peer_frame(role, OP_BINARY, b"last") + peer_close(role, 1000, "Shutdown")
                      + peer_frame(role, OP_TEXT, "ignored"))
    assert conn.events_received() == [BinaryMessage(b"last"), CloseReceived(1000, "Shutdown")]
    assert conn.state is State.CLOSING
    assert conn.data_to_send() == []
    assert not conn.close_expected()
    # The owner keeps sending the other direction...
    conn.send_binary(b"more")
    conn.send_ping(b"still here")
    conn.receive_data(peer_frame(role, OP_PING, b"ignored after close"))
    assert conn.events_received() == []
    # ... and finishes the handshake when its side is done.
    conn.send_close(1000, "Shutdown")
    assert conn.state is State.CLOSED
    assert conn.events_received() == [ConnectionClosed(1000, "Shutdown", None)]
    want = [binary(b"more"), ping(b"still here"), closed(1000)]
    assert output(conn) == ([*want, EOF] if role is Role.SERVER else want)


def test_half_close_then_eof_before_our_close() -> None:
    conn = WebSocketConnection(Role.SERVER, reply_to_close=False)
    conn.receive_data(close(1000, "Shutdown"))
    conn.events_received()
    conn.receive_eof()
    assert conn.events_received() == [ConnectionClosed(1000, "Shutdown", None)]
    assert conn.data_to_send() == [b""]
    with pytest.raises(LocalProtocolError):
        conn.send_binary(b"too late")


@pytest.mark.parametrize("payload", [b"\x03", b"\x03\xec", b"\x03\xe8\xff"],
                         ids=["one-byte", "code-1004", "bad-utf8"])
def test_invalid_close_frames(payload: bytes) -> None:
    conn = WebSocketConnection(Role.SERVER)
    conn.receive_data(frame(OP_CLOSE, payload))
    (ev,) = conn.events_received()
    assert isinstance(ev, ConnectionClosed)
    assert ev.code == (1007 if payload.endswith(b"\xff") else 1002)
    assert output(conn) == [closed(ev.code), EOF]


# -- EOF and fail() ----------------------------------------------------------------------------

@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value)
def test_eof_without_close_is_1006(role: Role) -> None:
    conn = WebSocketConnection(role)
    conn.receive_data(peer_frame(role, OP_TEXT, "partial", fin=False))
    conn.receive_eof()
    conn.receive_eof()
    events = conn.events_received()
    assert len(events) == 1 and isinstance(events[0], ConnectionClosed)
    assert events[0].code == 1006 and events[0].error is None
    assert conn.data_to_send() == [b""]
    assert conn.state is State.CLOSED and not conn.close_expected()
    conn.receive_data(peer_frame(role, OP_TEXT, "after eof"))
    assert conn.events_received() == [] and conn.data_to_send() == []


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value)
def test_fail(role: Role) -> None:
    conn = WebSocketConnection(role)
    conn.fail(1011, "internal error")
    assert conn.events_received() == [ConnectionClosed(1011, "internal error", None)]
    want = [closed(1011)]
    assert output(conn) == ([*want, EOF] if role is Role.SERVER else want)
    conn.fail(1000)  # no-op once closed
    assert conn.data_to_send() == [] and conn.events_received() == []
    conn.receive_data(peer_frame(role, OP_PING, b"x"))
    assert conn.data_to_send() == []


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.value)
def test_fail_1006_drops_tcp_without_close_frame(role: Role) -> None:
    conn = WebSocketConnection(role)
    conn.fail(1006)
    assert conn.data_to_send() == [b""]
    assert conn.events_received() == [ConnectionClosed(1006, "", None)]


def test_fail_validates_code() -> None:
    conn = WebSocketConnection(Role.SERVER)
    with pytest.raises(LocalProtocolError):
        conn.fail(1015)
    assert conn.state is State.OPEN


def test_peer_violation_is_recorded() -> None:
    conn = WebSocketConnection(Role.SERVER)
    conn.receive_data(frame(OP_TEXT, b"x", mask=False))
    (ev,) = conn.events_received()
    assert isinstance(ev, ConnectionClosed) and isinstance(ev.error, RemoteProtocolError)
    assert ev.error.close_code == 1002 and "mask" in ev.error.message
    assert conn.error is ev.error
    frames = parse_frames(b"".join(conn.data_to_send()))
    assert len(frames[0].payload) <= 125


def test_events_and_output_are_drained() -> None:
    conn = WebSocketConnection(Role.SERVER)
    conn.receive_data(frame(OP_PING, b"a"))
    assert conn.events_received() == [Ping(b"a")]
    assert conn.events_received() == []
    assert len(conn.data_to_send()) == 1
    assert conn.data_to_send() == []


# -- client and server against each other in memory ----------------------------------------

def _pump(a: WebSocketConnection, b: WebSocketConnection) -> bool:
    """Deliver a's output to b; True if anything moved."""
    moved = False
    for chunk in a.data_to_send():
        moved = True
        if chunk == b"":
            b.receive_eof()
        else:
            b.receive_data(chunk)
    return moved


def test_pair_exchange_and_close() -> None:
    client, server = WebSocketConnection(Role.CLIENT), WebSocketConnection(Role.SERVER)
    client.send_text("hi")
    client.send_binary(b"\x00" * 70000)
    client.send_ping(b"p")
    server.send_text("welcome")
    while _pump(client, server) | _pump(server, client):
        pass
    assert server.events_received() == [TextMessage("hi"), BinaryMessage(b"\x00" * 70000),
                                        Ping(b"p")]
    assert client.events_received() == [TextMessage("welcome"), Pong(b"p")]
    client.send_close(1000, "bye")
    while _pump(client, server) | _pump(server, client):
        pass
    assert server.events_received() == [CloseReceived(1000, "bye"),
                                        ConnectionClosed(1000, "bye", None)]
    assert client.events_received() == [CloseReceived(1000, ""), ConnectionClosed(1000, "", None)]
    assert client.state is server.state is State.CLOSED
    assert not client.close_expected() and not server.close_expected()


# -- property: how the bytes are split never changes the result -----------------------------

_frames_strategy = st.lists(
    st.one_of(
        st.tuples(st.just(OP_TEXT), st.text(max_size=40).map(lambda s: s.encode())),
        st.tuples(st.just(OP_BINARY), st.binary(max_size=300)),
        st.tuples(st.just(OP_PING), st.binary(max_size=125)),
        st.tuples(st.just(OP_PONG), st.binary(max_size=125)),
        st.tuples(st.just(-1), st.binary(min_size=1, max_size=30)),  # garbage
    ),
    max_size=8,
)


def _norm(events: list[Event]) -> list[object]:
    """Events comparable across runs (exceptions compare by identity)."""
    return [(e.code, e.reason, e.error and (e.error.close_code, e.error.message))
            if isinstance(e, ConnectionClosed) else e for e in events]


@settings(max_examples=150, deadline=None)
@given(items=_frames_strategy, cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
       role=st.sampled_from(ROLES))
def test_split_invariance(items: list[tuple[int, bytes]], cuts: list[int], role: Role) -> None:
    wire = b"".join(
        raw if op == -1 else peer_frame(role, op, raw) for op, raw in items
    ) + peer_close(role, 1000)
    whole = WebSocketConnection(role)
    whole.receive_data(wire)
    split = WebSocketConnection(role)
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    for a, b in itertools.pairwise(points):
        split.receive_data(wire[a:b])
    assert _norm(split.events_received()) == _norm(whole.events_received())
    out_w = decode_output(whole.data_to_send(), expect_masked=role is Role.CLIENT)
    out_s = decode_output(split.data_to_send(), expect_masked=role is Role.CLIENT)
    assert out_w == out_s
    assert whole.state is split.state  # garbage may also swallow the final close


# -- streamed binary messages (relayed HTTP bodies) -----------------------------------------


def test_binary_parts_stream_as_fragments_with_control_frames_between() -> None:
    from hyco_proto.websocket import BinaryFragment, BinaryMessage, Ping

    client = WebSocketConnection(Role.CLIENT)
    client.send_binary_part(b"ab", False)
    client.send_ping(b"x")
    client.send_binary_part(b"", False)
    client.send_binary_part(b"cd", True)
    client.send_binary(b"whole")
    wire = b"".join(client.data_to_send())
    streaming = WebSocketConnection(Role.SERVER, stream_binary=True)
    streaming.receive_data(wire)
    assert streaming.events_received() == [
        BinaryFragment(b"ab", False), Ping(b"x"), BinaryFragment(b"", False),
        BinaryFragment(b"cd", True), BinaryFragment(b"whole", True)]
    whole = WebSocketConnection(Role.SERVER)
    whole.receive_data(wire)
    assert whole.events_received() == [Ping(b"x"), BinaryMessage(b"abcd"), BinaryMessage(b"whole")]


def test_no_other_message_while_a_binary_message_is_sent_in_parts() -> None:
    server = WebSocketConnection(Role.SERVER)
    server.send_binary_part(b"x" * 20000, False)
    with pytest.raises(LocalProtocolError, match="unfinished"):
        server.send_text("interleaved")
    server.send_binary_part(b"", True)
    server.send_text("now fine")
    client = WebSocketConnection(Role.CLIENT)
    client.receive_data(b"".join(server.data_to_send()))
    events = client.events_received()
    assert [type(e).__name__ for e in events] == ["BinaryMessage", "TextMessage"]
    assert len(events[0].data) == 20000  # type: ignore[union-attr]
