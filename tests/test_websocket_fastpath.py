"""``WebSocketConnection.receive_message`` and ``frame_message`` (issue 14): the shortcuts for one
whole message per read and one small message per send must give what ``receive_data`` /
``send_binary`` / ``send_text`` give, in the same order, for every input."""

from __future__ import annotations

import random

import pytest

from hyco_proto.errors import LocalProtocolError
from hyco_proto.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    FrameDecoder,
    encode_frame,
)
from hyco_proto.websocket import (
    BinaryMessage,
    Event,
    Role,
    TextMessage,
    WebSocketConnection,
)


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return encode_frame(opcode, payload, fin=fin, masked=True)  # a client's frame


def server(**options: object) -> WebSocketConnection:
    return WebSocketConnection(Role.SERVER, **options)  # type: ignore[arg-type]


def by_receive_data(reads: list[bytes], **options: object) -> tuple[list[Event], list[bytes]]:
    ws = server(**options)
    events: list[Event] = []
    out: list[bytes] = []
    for data in reads:
        ws.receive_data(data)
        events += ws.events_received()
        out += ws.data_to_send()
    return events, out


def by_receive_message(reads: list[bytes], **options: object
                       ) -> tuple[list[Event], list[bytes], int]:
    """The same reads through ``receive_message``; a returned message counts as its event.
    Also returns how many reads took the shortcut."""
    ws = server(**options)
    events: list[Event] = []
    out: list[bytes] = []
    shortcuts = 0
    for data in reads:
        message = ws.receive_message(data)
        if message is not None:
            shortcuts += 1
            assert not ws.events_received() and not ws.data_to_send()
            events.append(TextMessage(message) if isinstance(message, str)
                          else BinaryMessage(message))
        events += ws.events_received()
        out += ws.data_to_send()
    return events, out, shortcuts


def same(reads: list[bytes], **options: object) -> int:
    """Assert both ways agree; return the shortcut count."""
    events, out, shortcuts = by_receive_message(reads, **options)
    expected, expected_out = by_receive_data(reads, **options)
    # repr: a ConnectionClosed's error is an exception, equal only to itself
    assert ([repr(e) for e in events], out) == ([repr(e) for e in expected], expected_out)
    return shortcuts


def test_one_whole_message_per_read_takes_the_shortcut() -> None:
    reads = [frame(OP_BINARY, b"abc"), frame(OP_TEXT, "héllo".encode()), frame(OP_BINARY, b"")]
    assert same(reads) == 3
    events, _, _ = by_receive_message(reads)
    assert events == [BinaryMessage(b"abc"), TextMessage("héllo"), BinaryMessage(b"")]


def test_fragmented_messages_and_control_frames_between_fragments() -> None:
    reads = [frame(OP_TEXT, b"he", fin=False), frame(OP_PING, b"p"),
             frame(OP_CONTINUATION, b"llo"), frame(OP_BINARY, b"x", fin=False),
             frame(OP_CONTINUATION, b"y", fin=False), frame(OP_CONTINUATION, b"z")]
    assert same(reads) == 0  # the ping is answered, the messages assembled as before


def test_invalid_utf8_and_too_long_text_fail_as_receive_data_does() -> None:
    assert same([frame(OP_TEXT, b"\xff\xfe")]) == 0
    events, out = by_receive_data([frame(OP_TEXT, b"\xff\xfe")])
    assert events[-1].code == 1007 and out  # type: ignore[union-attr]
    assert same([frame(OP_TEXT, b"x" * 11)], max_text_size=10) == 0
    assert same([frame(OP_TEXT, b"x" * 10)], max_text_size=10) == 1
    # The limit counts UTF-8 bytes, not characters: 5 characters, 10 bytes.
    assert same([frame(OP_TEXT, "ééééé".encode())], max_text_size=9) == 0
    assert same([frame(OP_TEXT, "ééééé".encode())], max_text_size=10) == 1


def test_a_close_or_a_second_frame_in_the_same_read_goes_the_general_way() -> None:
    whole = frame(OP_BINARY, b"last") + frame(OP_CLOSE, (1000).to_bytes(2, "big"))
    assert same([whole]) == 0
    assert same([frame(OP_BINARY, b"1") + frame(OP_BINARY, b"2")]) == 0
    assert same([frame(OP_BINARY, b"1") + frame(OP_PING, b"")]) == 0
    # after the close nothing more is taken, shortcut or not
    assert same([frame(OP_CLOSE, b""), frame(OP_BINARY, b"late")]) == 0


def test_partial_frames_across_reads() -> None:
    data = frame(OP_BINARY, bytes(range(200)))
    for cut in (1, 2, 5, 7, 8, 9, 100, len(data) - 1):  # assembled whole by the decoder
        assert same([data[:cut], data[cut:]]) == 1
    assert same([data[:9], data[9:]], stream_binary=True) == 0  # streamed: in pieces
    text = frame(OP_TEXT, "ünïcode".encode() * 30)
    for cut in (1, 7, 8):  # the header (8 bytes) is not complete before the 2nd read
        assert same([text[:cut], text[cut:]]) == 1
    for cut in (9, 100, len(text) - 1):  # text is decoded as it comes: in pieces
        assert same([text[:cut], text[cut:]]) == 0


def test_a_read_with_an_uncollected_event_before_it_keeps_the_order() -> None:
    ws = server()
    ws.receive_data(frame(OP_PING, b"first"))  # its Ping event not collected yet
    assert ws.receive_message(frame(OP_BINARY, b"second")) is None
    kinds = [type(event).__name__ for event in ws.events_received()]
    assert kinds == ["Ping", "BinaryMessage"]


def test_streamed_binary_is_never_shortcut() -> None:
    assert same([frame(OP_BINARY, b"abc"), frame(OP_TEXT, b"t")], stream_binary=True) == 1


def test_random_frames_cut_anywhere_agree() -> None:
    rng = random.Random(14)
    for _ in range(300):
        parts: list[bytes] = []
        for _ in range(rng.randint(1, 5)):
            kind = rng.choice(["bin", "text", "bad", "frag", "ping"])
            if kind == "bin":
                parts.append(frame(OP_BINARY, rng.randbytes(rng.choice([0, 3, 130, 70_000]))))
            elif kind == "text":
                parts.append(frame(OP_TEXT, "aé€😀"[rng.randint(0, 3)].encode() * 5))
            elif kind == "bad":
                parts.append(frame(OP_TEXT, b"ok\xed\xa0\x80"))
            elif kind == "frag":
                parts += [frame(OP_TEXT, "é".encode()[:1], fin=False),
                          frame(OP_CONTINUATION, "é".encode()[1:])]
            else:
                parts.append(frame(OP_PING, b"pi"))
        stream = b"".join(parts)
        reads: list[bytes] = []
        if rng.random() < 0.5:
            reads = parts  # one frame per read: the shortcut's case
        else:
            pos = 0
            while pos < len(stream):
                step = rng.randint(1, 300)
                reads.append(stream[pos:pos + step])
                pos += step
        same(reads)


def decode(out: list[bytes], masked: bool = False) -> list[tuple[int, bytes, bool]]:
    return FrameDecoder(masked=masked).feed(b"".join(out))


@pytest.mark.parametrize("message", [b"", b"bin", bytes(16383), "", "text é", "x" * 4095])
def test_frame_message_is_the_frame_send_would_queue(message: bytes | str) -> None:
    ws, other = server(), server()
    got = ws.frame_message(message)
    assert got is not None and not ws.data_to_send()
    if isinstance(message, str):
        other.send_text(message)
    else:
        other.send_binary(message)
    assert [got] == other.data_to_send()


def test_client_frames_are_masked() -> None:
    ws = WebSocketConnection(Role.CLIENT)
    got = ws.frame_message(b"secret")
    assert got is not None and b"secret" not in got
    assert decode([got], masked=True) == [(OP_BINARY, b"secret", True)]


@pytest.mark.parametrize("message", [bytes(16384), "é" * 4096])
def test_large_messages_are_queued(message: bytes | str) -> None:
    ws = server()
    assert ws.frame_message(message) is None
    payload = message.encode() if isinstance(message, str) else message
    assert decode(ws.data_to_send())[0][1] == payload


def test_queued_output_keeps_its_place() -> None:
    ws = server()
    ws.send_ping(b"p")  # not collected yet
    assert ws.frame_message(b"after") is None
    assert [(op, data) for op, data, _ in decode(ws.data_to_send())] == [
        (OP_PING, b"p"), (OP_BINARY, b"after")]


def test_frame_message_refuses_what_send_refuses() -> None:
    ws = server()
    ws.send_binary_part(b"part", fin=False)
    ws.data_to_send()
    with pytest.raises(LocalProtocolError):
        ws.frame_message(b"another message")
    ws = server()
    with pytest.raises(LocalProtocolError):
        ws.frame_message("lone \ud800 surrogate")
    ws.send_close()
    with pytest.raises(LocalProtocolError):
        ws.frame_message(b"after close")
