"""``hyco_proto.drivers.stream``: the received-message queue, flow-control thresholds, the ping
registry and close classification every socket class shares."""

from __future__ import annotations

import pytest

from hyco_proto.drivers import RelayConnectionClosed
from hyco_proto.drivers.stream import ConnectionClosedError, MessageStream
from hyco_proto.errors import (
    AuthorizationError,
    ConnectionLostError,
    LocalProtocolError,
    RelayError,
)
from hyco_proto.websocket import (
    BinaryMessage,
    CloseReceived,
    ConnectionClosed,
    Ping,
    Pong,
    TextMessage,
)


def texts(*items: str) -> list[TextMessage]:
    return [TextMessage(s) for s in items]


# ---- the queue ----------------------------------------------------------------------------------


def test_messages_come_out_in_order() -> None:
    stream: MessageStream[object] = MessageStream()
    assert stream.get() is None  # open, nothing waiting
    assert stream.feed([TextMessage("a"), BinaryMessage(b"b")]) is True
    assert stream.feed([Ping(b""), Pong(b""), CloseReceived(1000, "")]) is False  # no wake
    assert stream.feed([TextMessage("c")]) is True
    assert len(stream) == 3
    assert [stream.get(), stream.get(), stream.get()] == ["a", b"b", "c"]
    assert stream.get() is None
    assert len(stream) == 0


def test_max_queue_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_queue"):
        MessageStream(0)


def test_pause_once_at_max_queue_and_resume_once_at_a_quarter() -> None:
    stream: MessageStream[object] = MessageStream(max_queue=8)
    stream.feed(texts(*"abcdefg"))  # 7 waiting
    assert not stream.pause_needed() and not stream.reading_paused
    stream.feed(texts("h"))  # 8: stop reading
    assert stream.reading_paused
    assert stream.pause_needed() is True
    assert stream.pause_needed() is False  # once
    stream.feed(texts("i", "j"))  # bytes already read still arrive
    assert stream.pause_needed() is False
    taken = []
    while len(stream) > 3:
        taken.append(stream.get())
        assert stream.resume_needed() is False
    taken.append(stream.get())  # down to 2 = 8 // 4
    assert stream.resume_needed() is True
    assert stream.resume_needed() is False  # once
    assert not stream.reading_paused
    taken += [stream.get(), stream.get()]
    assert taken == list("abcdefghij")
    assert stream.resume_needed() is False
    # Filling up again pauses again.
    stream.feed(texts(*"12345678"))
    assert stream.pause_needed() is True


def test_max_queue_one_pauses_on_every_message() -> None:
    stream: MessageStream[object] = MessageStream(max_queue=1)
    stream.feed(texts("a"))
    assert stream.pause_needed()
    assert stream.get() == "a"
    assert stream.resume_needed()


def test_get_raises_after_the_close_only_once_the_queue_is_drained() -> None:
    stream: MessageStream[object] = MessageStream()
    assert stream.feed([*texts("a", "b"), CloseReceived(1000, "bye"),
                        ConnectionClosed(1000, "bye", None)]) is True
    assert stream.get() == "a"
    assert stream.get() == "b"
    with pytest.raises(ConnectionClosedError) as info:
        stream.get()
    assert (info.value.code, info.value.reason) == (1000, "bye")
    assert info.value.ok and info.value.error is None
    with pytest.raises(ConnectionClosedError):  # and stays closed
        stream.get()


def test_close_alone_wakes_a_waiting_reader() -> None:
    stream: MessageStream[object] = MessageStream()
    assert stream.feed([ConnectionClosed(1006, "", None)]) is True
    with pytest.raises(ConnectionClosedError) as info:
        stream.get()
    assert info.value.code == 1006 and not info.value.ok


# ---- close classification -----------------------------------------------------------------------


@pytest.mark.parametrize(("code", "ok"), [
    (1000, True), (1001, True), (1005, True),
    (1006, False), (1011, False), (1008, False), (4000, False),
])
def test_ok_only_for_a_normal_close(code: int, ok: bool) -> None:
    error = ConnectionClosedError(code, "why")
    assert error.ok is ok
    assert error.code == code and error.close_code == code
    assert str(code) in str(error) and "why" in str(error)


@pytest.mark.parametrize(("code", "cls"), [
    (1000, None), (1001, ConnectionLostError), (1006, ConnectionLostError),
    (1011, ConnectionLostError), (1008, AuthorizationError),
])
def test_error_is_the_typed_relay_error(code: int, cls: type[RelayError] | None) -> None:
    error = ConnectionClosedError(code, "reason")
    if cls is None:
        assert error.error is None
    else:
        assert type(error.error) is cls
        assert error.error.close_code == code


def test_relay_connection_closed_is_an_alias() -> None:
    assert RelayConnectionClosed is ConnectionClosedError
    assert issubclass(ConnectionClosedError, RelayError)
    with pytest.raises(RelayConnectionClosed):
        raise ConnectionClosedError(1000)


def test_closed_error_codes() -> None:
    stream: MessageStream[object] = MessageStream()
    error = stream.closed_error()  # still closing: nothing known yet
    assert (error.code, error.reason) == (1006, "connection closing")
    stream.feed([CloseReceived(4001, "app")])
    assert (stream.closed_error().code, stream.closed_error().reason) == (4001, "app")
    stream.feed([ConnectionClosed(1001, "going away", None)])  # the final word wins
    assert (stream.closed_error().code, stream.closed_error().reason) == (1001, "going away")


def test_check_open() -> None:
    stream: MessageStream[object] = MessageStream()
    stream.check_open(True)
    with pytest.raises(ConnectionClosedError) as info:
        stream.check_open(False)
    assert info.value.code == 1006
    stream.feed([ConnectionClosed(1011, "boom", None)])
    with pytest.raises(ConnectionClosedError) as info:
        stream.check_open(True)
    assert info.value.code == 1011


# ---- pings --------------------------------------------------------------------------------------


def test_a_pong_answers_its_ping_and_every_earlier_one() -> None:
    stream: MessageStream[str] = MessageStream()
    for name in ("w1", "w2", "w3"):
        assert stream.add_ping(name, name.encode()) == name.encode()
    assert stream.take_answered() == []
    stream.feed([Pong(b"w2")])
    assert stream.take_answered() == ["w1", "w2"]
    assert stream.take_answered() == []
    stream.feed([Pong(b"w1")])  # already answered: ignored
    assert stream.take_answered() == []
    stream.feed([Pong(b"w3")])
    assert stream.take_answered() == ["w3"]


def test_an_unknown_pong_is_ignored() -> None:
    stream: MessageStream[str] = MessageStream()
    stream.add_ping("w", b"mine")
    stream.feed([Pong(b"unsolicited"), Pong(b"")])
    assert stream.take_answered() == []
    stream.feed([ConnectionClosed(1000, "", None)])
    assert stream.take_abandoned() == ["w"]  # still waiting until the close


def test_a_duplicate_payload_raises() -> None:
    stream: MessageStream[str] = MessageStream()
    stream.add_ping("w1", b"same")
    with pytest.raises(LocalProtocolError, match="already waiting"):
        stream.add_ping("w2", b"same")
    stream.feed([Pong(b"same")])
    assert stream.take_answered() == ["w1"]
    stream.add_ping("w3", b"same")  # free again once answered


def test_default_payloads_are_random_and_distinct() -> None:
    stream: MessageStream[int] = MessageStream()
    payloads = [stream.add_ping(i) for i in range(20)]
    assert all(len(p) == 4 for p in payloads)
    assert len(set(payloads)) == 20
    stream.feed([Pong(payloads[4])])
    assert stream.take_answered() == [0, 1, 2, 3, 4]


def test_drop_ping() -> None:
    stream: MessageStream[str] = MessageStream()
    stream.add_ping("w1", b"1")
    stream.add_ping("w2", b"2")
    stream.drop_ping("w1")
    stream.feed([Pong(b"1")])
    assert stream.take_answered() == []
    stream.feed([Pong(b"2")])
    assert stream.take_answered() == ["w2"]


def test_pings_are_abandoned_on_close() -> None:
    stream: MessageStream[str] = MessageStream()
    stream.add_ping("w1", b"1")
    stream.add_ping("w2", b"2")
    stream.feed([Pong(b"1"), ConnectionClosed(1006, "", None)])
    assert stream.take_answered() == ["w1"]
    assert stream.take_abandoned() == ["w2"]
    assert stream.take_abandoned() == []
    stream.feed([Pong(b"2")])  # too late
    assert stream.take_answered() == []


def test_notice_is_raised_for_a_pause_a_pong_or_a_close_only() -> None:
    stream: MessageStream[str] = MessageStream(max_queue=2)
    stream.feed(texts("a"))
    assert stream.notice is False  # a message alone: nothing for the three calls
    stream.feed(texts("b"))
    assert stream.notice is True and stream.pause_needed()
    stream.notice = False
    payload = stream.add_ping("waiter")
    stream.feed([Pong(payload)])
    assert stream.notice is True and stream.take_answered() == ["waiter"]
    stream.notice = False
    stream.add_ping("left")
    stream.feed([ConnectionClosed(1006, "", None)])
    assert stream.notice is True and stream.take_abandoned() == ["left"]
