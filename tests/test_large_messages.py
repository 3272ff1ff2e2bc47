"""Large messages without extra copies (issue 14): a binary frame up to ``websocket._WHOLE``
(16 MiB) is assembled in one bytes object as it arrives, never joined from pieces; a client's
large message goes out as its header and its masked payload (``encode_masked``), the payload's
copy exactly the payload's size so the allocator reuses the blocks freed by received messages.
Kernel functions run against every kernel (``fmod``); the core against the one in use."""

from __future__ import annotations

import contextlib
import random
import socket
from types import ModuleType

import pytest

from hyco_proto import websocket
from hyco_proto.websocket import BinaryMessage, Role, TextMessage, WebSocketConnection
from tests.test_frames import masked_frame

OP_TEXT, OP_BINARY = 1, 2


def zero_key_frame(payload: bytes) -> bytes:
    """A masked binary frame with the all-zero key, built fast for big payloads (the masking
    itself is tested with real keys in ``tests/test_frames.py``)."""
    return bytes([0x82, 0x80 | 127]) + len(payload).to_bytes(8, "big") + bytes(4) + payload


def unmasked_decode(fmod: ModuleType, data: bytes) -> list[tuple[int, bytes, bool]]:
    dec = fmod.FrameDecoder(masked=True)
    chunks = dec.feed(data)
    assert dec.error_code == 0, dec.error_reason
    return chunks


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 300_001])
@pytest.mark.parametrize("fin", [True, False])
def test_encode_masked_is_a_masked_frame_in_two_parts(fmod: ModuleType, size: int,
                                                      fin: bool) -> None:
    payload = random.Random(size).randbytes(size)
    header, masked = fmod.encode_masked(OP_BINARY, payload, fin)
    assert type(header) is bytes and type(masked) is bytes
    assert len(masked) == size  # exactly the payload's size: no header in front
    assert header[1] & 0x80  # the mask bit (RFC 6455 §5.2)
    joined = b"".join(c[1] for c in unmasked_decode(fmod, header + masked))
    assert joined == payload
    if size >= 8:
        assert masked != payload  # really masked (a zero key would leave it as it is)
    assert unmasked_decode(fmod, header + masked)[-1][2] is fin


def test_encode_masked_takes_any_buffer_and_draws_a_fresh_key(fmod: ModuleType) -> None:
    payload = bytes(range(256)) * 10
    keys = set()
    for data in (payload, bytearray(payload), memoryview(payload)):
        header, masked = fmod.encode_masked(OP_TEXT, data)
        keys.add(header[-4:])
        assert unmasked_decode(fmod, header + masked) == [(OP_TEXT, payload, True)]
    assert len(keys) == 3  # §5.3: a new unpredictable key per frame


def test_encode_masked_refuses_a_bad_opcode(fmod: ModuleType) -> None:
    with pytest.raises(ValueError, match="opcode"):
        fmod.encode_masked(16, b"x")


def test_a_clients_large_message_goes_out_as_header_and_payload() -> None:
    client = WebSocketConnection(Role.CLIENT)
    payload = random.Random(3).randbytes(websocket._PASSTHROUGH)
    client.send_binary(payload)
    client.send_text("é" * websocket._PASSTHROUGH)
    client.send_binary_part(payload, fin=True)
    client.send_binary(b"small")
    out = client.data_to_send()
    sizes = [len(chunk) for chunk in out]
    text_size = len("é".encode() * websocket._PASSTHROUGH)
    assert sizes == [2 + 2 + 4, len(payload), 2 + 2 + 4, text_size, 2 + 2 + 4, len(payload),
                     2 + 4 + 5]
    server = WebSocketConnection(Role.SERVER)
    server.receive_data(b"".join(out))
    assert server.events_received() == [BinaryMessage(payload), TextMessage("é" * 16384),
                                        BinaryMessage(payload), BinaryMessage(b"small")]


@pytest.mark.parametrize("role", [Role.SERVER, Role.CLIENT])
def test_a_large_binary_frame_is_assembled_in_one_object(role: Role) -> None:
    """1 MiB fed in 64 KiB reads: nothing comes out before the last read (no pieces held to
    join), then the message whole."""
    payload = random.Random(4).randbytes(1 << 20)
    if role is Role.SERVER:
        frame = masked_frame(OP_BINARY, payload)
    else:
        frame = bytes([0x82, 127]) + len(payload).to_bytes(8, "big") + payload
    conn = WebSocketConnection(role)
    decoder = conn._decoder
    step = 64 * 1024
    for pos in range(0, len(frame) - step, step):
        assert decoder.feed(frame[pos:pos + step]) == []
    rest = frame[len(frame) - (len(frame) % step or step):]
    assert decoder.feed(rest) == [(OP_BINARY, payload, True)]


def test_a_frame_over_the_whole_limit_comes_in_pieces_joined_at_the_end() -> None:
    """Beyond ``_WHOLE`` the frame's object is not reserved at its header: pieces come out as
    they arrive, and the message is still one ``BinaryMessage``."""
    payload = b"\x5a" * (websocket._WHOLE + 1)
    frame = zero_key_frame(payload)
    step = 1 << 20
    pieces = [frame[pos:pos + step] for pos in range(0, len(frame), step)]
    decoder = WebSocketConnection(Role.SERVER)._decoder
    assert [bool(decoder.feed(piece)) for piece in pieces] == [True] * len(pieces)
    conn = WebSocketConnection(Role.SERVER)
    for piece in pieces:
        conn.receive_data(piece)
    assert conn.events_received() == [BinaryMessage(payload)]


# --------------------------------------------------------------- receiving into the frame


def fill_through_slots(dec: object, stream: bytes, rng: random.Random) -> list[tuple[int, bytes,
                                                                                   bool]]:
    """Deliver ``stream`` as a socket reader would: into the decoder's slot when it offers
    one (at most what the slot holds), else through ``feed``; cut at random sizes."""
    chunks: list[tuple[int, bytes, bool]] = []
    pos = 0
    while pos < len(stream):
        step = rng.choice([1, 3, 4, 5, 1000, 65_537, 300_000])
        slot = dec.whole_slot()  # type: ignore[attr-defined]
        if slot is None:
            chunks += dec.feed(stream[pos:pos + step])  # type: ignore[attr-defined]
            pos += step
            continue
        piece = stream[pos:pos + min(step, len(slot))]
        memoryview(slot)[:len(piece)] = piece
        pos += len(piece)
        chunks += dec.whole_received(len(piece))  # type: ignore[attr-defined]
    return chunks


@pytest.mark.parametrize("seed", range(6))
def test_a_frame_received_into_its_slot_comes_out_whole(fmod: ModuleType, seed: int) -> None:
    rng = random.Random(seed)
    payload = rng.randbytes(300_001)
    small = rng.randbytes(70)
    stream = (masked_frame(OP_BINARY, payload) + masked_frame(9, b"ping")
              + masked_frame(OP_BINARY, small) + masked_frame(OP_BINARY, payload[::-1]))
    dec = fmod.FrameDecoder(masked=True, whole_binary=1 << 20)
    chunks = fill_through_slots(dec, stream, rng)
    assert chunks == [(OP_BINARY, payload, True), (9, b"ping", True), (OP_BINARY, small, True),
                      (OP_BINARY, payload[::-1], True)]
    assert dec.error_code == 0 and dec.buffered == 0 and dec.whole_slot() is None


def test_a_clients_slot_takes_unmasked_bytes(fmod: ModuleType) -> None:
    payload = random.Random(7).randbytes(200_000)
    frame = bytes([0x02, 127]) + len(payload).to_bytes(8, "big") + payload  # no FIN
    dec = fmod.FrameDecoder(masked=False, whole_binary=1 << 20)
    chunks = fill_through_slots(dec, frame + bytes([0x80, 2]) + b"ok", random.Random(8))
    assert chunks == [(OP_BINARY, payload, False), (0, b"ok", True)]


def test_a_slot_is_the_frames_rest_and_only_when_asked_for(fmod: ModuleType) -> None:
    payload = bytes(range(256)) * 400  # 102,400 bytes
    frame = masked_frame(OP_BINARY, payload)
    dec = fmod.FrameDecoder(masked=True, whole_binary=1 << 20)
    assert dec.whole_slot() is None  # no frame partway
    assert dec.feed(frame[:14 + 400]) == []
    rest = len(payload) - 400
    assert dec.whole_slot(rest + 1) is None  # fewer than at_least remain
    slot = dec.whole_slot(rest)
    assert slot is not None and len(slot) == rest
    view = memoryview(slot)
    assert not view.readonly and view.format == "B" and view.nbytes == rest and view.ndim == 1
    view.release()
    # A socket writes into it (what the adapters do), never beyond the frame.
    a, b = socket.socketpair()
    with a, b:
        a.sendall(frame[14 + 400:] + b"next frame's bytes")
        got = b.recv_into(slot)
        assert 0 < got <= rest
        out = dec.whole_received(got)
        while not out:
            slot = dec.whole_slot(1)
            out = dec.whole_received(b.recv_into(slot))
        assert out == [(OP_BINARY, payload, True)]
        assert b.recv(100) == b"next frame's bytes"


def test_whole_received_needs_its_slot(fmod: ModuleType) -> None:
    frame = masked_frame(OP_BINARY, bytes(100_000))
    dec = fmod.FrameDecoder(masked=True, whole_binary=1 << 20)
    with pytest.raises(ValueError, match="no receive buffer is out"):
        dec.whole_received(1)
    dec.feed(frame[:1000])
    slot = dec.whole_slot()
    with pytest.raises(ValueError, match="bytes reported, but the receive buffer holds"):
        dec.whole_received(len(slot) + 1)
    dec.feed(frame[1000:2000])  # feed takes the slot back: its bytes would be stale
    with pytest.raises(ValueError, match="no receive buffer is out"):
        dec.whole_received(10)
    dec.whole_slot()
    assert dec.whole_received(0) == []  # nothing came: the slot is spent all the same
    with pytest.raises(ValueError, match="no receive buffer is out"):
        dec.whole_received(0)
    dec.feed(frame[2000:])
    assert dec.buffered == 0


def test_no_slot_for_text_streamed_or_failed_frames(fmod: ModuleType) -> None:
    text = masked_frame(OP_TEXT, b"t" * 100_000)
    for dec, frame in ((fmod.FrameDecoder(masked=True, whole_binary=1 << 20), text),
                       (fmod.FrameDecoder(masked=True), masked_frame(OP_BINARY, bytes(99_999))),
                       (fmod.FrameDecoder(masked=True, whole_binary=1000),
                        masked_frame(OP_BINARY, bytes(99_999)))):
        dec.feed(frame[:500])
        assert dec.whole_slot() is None
    dec = fmod.FrameDecoder(masked=True, whole_binary=1 << 20)
    frame = masked_frame(OP_BINARY, bytes(99_999))
    dec.feed(frame[:500])
    assert dec.whole_slot() is not None
    assert dec.feed(frame[500:] + b"\x83\x80") == [(OP_BINARY, bytes(99_999), True)]
    # (the frame completed, then a reserved opcode failed the connection)
    assert dec.error_code == 1002 and dec.whole_slot() is None
    with pytest.raises(ValueError, match="no receive buffer is out"):
        dec.whole_received(1)


def test_the_core_queues_what_arrived_in_its_payload_buffer() -> None:
    payload = random.Random(9).randbytes(500_000)
    frame = masked_frame(OP_BINARY, payload)
    conn = WebSocketConnection(Role.SERVER)
    assert conn.payload_buffer() is None
    conn.receive_data(frame[:20_000])
    assert conn.payload_buffer(len(payload)) is None  # (at_least) fewer remain
    pos = 20_000
    while pos < len(frame):
        slot = conn.payload_buffer(1)
        assert slot is not None
        take = min(123_457, len(slot))
        memoryview(slot)[:take] = frame[pos:pos + take]
        pos += take
        conn.payload_received(take)
    assert conn.events_received() == [BinaryMessage(payload)]
    conn.receive_data(masked_frame(OP_BINARY, payload)[:70_000])
    assert conn.payload_buffer() is not None
    conn._discard = True  # as after the peer's close or a failure: nothing more is taken
    assert conn.payload_buffer() is None


def test_asking_twice_for_one_read_gives_the_same_slot(fmod: ModuleType) -> None:
    payload = random.Random(10).randbytes(150_000)
    frame = masked_frame(OP_BINARY, payload)
    dec = fmod.FrameDecoder(masked=True, whole_binary=1 << 20)
    dec.feed(frame[:14])
    first, second = dec.whole_slot(), dec.whole_slot()
    memoryview(first)[:1000] = frame[14:1014]  # written through the first one
    assert len(second) == len(first)
    assert dec.whole_received(1000) == []
    rest = dec.feed(frame[1014:])
    assert rest == [(OP_BINARY, payload, True)]


def test_a_used_slot_never_changes_the_delivered_message(fmod: ModuleType) -> None:
    payload = random.Random(11).randbytes(100_000)
    frame = masked_frame(OP_BINARY, payload)
    dec = fmod.FrameDecoder(masked=True, whole_binary=1 << 20)
    dec.feed(frame[:14])
    slot = dec.whole_slot()
    view = memoryview(slot)
    view[:len(payload)] = frame[14:]
    released = False
    try:
        out = dec.whole_received(len(payload))
    except BufferError:  # (Cython: not while a view of the message's bytes is open)
        with pytest.raises(ValueError, match="bytes reported, but the receive buffer holds"):
            dec.whole_received(len(payload) + 1)  # the slot is still out, nothing lost
        view.release()
        released = True
        out = dec.whole_received(len(payload))
    assert out == [(OP_BINARY, payload, True)]
    message = out[0][1]
    # A stale slot: refused (Cython), or only its own scratch changes (Python).
    with contextlib.suppress(BufferError):
        memoryview(slot)[:4] = b"XXXX"
    if not released:
        view[:4] = b"YYYY"
    assert message == payload and hash(message) == hash(bytes(payload))


def test_feed_while_a_view_of_the_slot_is_open_is_refused_or_harmless(fmod: ModuleType) -> None:
    payload = random.Random(12).randbytes(100_000)
    frame = masked_frame(OP_BINARY, payload)
    dec = fmod.FrameDecoder(masked=True, whole_binary=1 << 20)
    dec.feed(frame[:14])
    view = memoryview(dec.whole_slot())
    released = False
    try:
        out = dec.feed(frame[14:])
    except BufferError:  # (Cython) nothing consumed: release the view and feed again
        view.release()
        released = True
        out = dec.feed(frame[14:])
    if not released:
        view[:100] = bytes(100)
    assert out == [(OP_BINARY, payload, True)]


def test_the_core_says_what_to_do_when_payload_received_is_misused() -> None:
    from hyco_proto.errors import LocalProtocolError

    conn = WebSocketConnection(Role.SERVER)
    with pytest.raises(LocalProtocolError, match=r"payload_received\(3\): no receive buffer"):
        conn.payload_received(3)
    conn.receive_data(zero_key_frame(bytes(200_000))[:1000])
    slot = conn.payload_buffer()
    assert slot is not None
    with pytest.raises(LocalProtocolError, match="pass what recv_into returned"):
        conn.payload_received(len(slot) + 1)
    conn.receive_data(b"")  # (nothing: the buffer is still out)
    conn.receive_data(zero_key_frame(bytes(200_000))[1000:2000])  # takes it back
    with pytest.raises(LocalProtocolError, match="no receive buffer"):
        conn.payload_received(1)
    conn.payload_buffer()
    conn.fail(1008, "policy")  # after a failure: accepted and ignored
    conn.payload_received(10)
    assert conn.payload_buffer() is None


def test_a_buffer_of_wider_items_is_framed_by_its_bytes(fmod: ModuleType) -> None:
    import array

    items = array.array("i", [1, 2, 3])
    raw = items.tobytes()
    header, masked = fmod.encode_masked(OP_BINARY, items)
    assert unmasked_decode(fmod, header + masked) == [(OP_BINARY, raw, True)]
    assert unmasked_decode(fmod, fmod.encode_frame(OP_BINARY, items, masked=True)) == [
        (OP_BINARY, raw, True)]
    plain = fmod.encode_frame(OP_BINARY, items)
    assert plain[1] == len(raw) and plain[2:] == raw
    assert fmod.apply_mask(items, b"\x00\x00\x00\x00") == raw


def test_slots_leave_nothing_behind_once_their_frames_are_done(fmod: ModuleType) -> None:
    """1,000 decoders, each given one 100 KB frame through slots: what they still hold after is
    not a scratch buffer each (the Python twin kept 256 KiB per decoder, 250 MB here)."""
    import tracemalloc

    frame = zero_key_frame(bytes(100_000))
    decoders = []
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(1000):
            dec = fmod.FrameDecoder(masked=True, whole_binary=1 << 20)
            dec.feed(frame[:14])
            slot = dec.whole_slot()
            memoryview(slot)[:len(frame) - 14] = frame[14:]
            assert dec.whole_received(len(frame) - 14)[0][1] == bytes(100_000)
            del slot
            decoders.append(dec)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 20_000_000, f"{held:,} bytes held by 1,000 idle decoders"


def test_a_used_slot_does_not_keep_the_message_alive(fmod: ModuleType) -> None:
    import sys

    frame = zero_key_frame(bytes(100_000))
    dec = fmod.FrameDecoder(masked=True, whole_binary=1 << 20)
    dec.feed(frame[:14])
    slot = dec.whole_slot()
    memoryview(slot)[:len(frame) - 14] = frame[14:]
    message = dec.whole_received(len(frame) - 14)[0][1]
    held = sys.getrefcount(message)
    del slot
    assert sys.getrefcount(message) == held  # the slot held no reference to it


@pytest.mark.parametrize("announced", [1 << 62, (1 << 63) - 1])
def test_a_frame_too_big_to_reserve_streams_instead(fmod: ModuleType, announced: int) -> None:
    """A header announcing more than can be allocated is no error: the frame comes in
    pieces, as frames over ``whole_binary`` do (Cython reserves at the header; 2**62 fails
    with MemoryError, 2**63 - 1 with OverflowError)."""
    dec = fmod.FrameDecoder(masked=True, whole_binary=(1 << 63) - 1)
    header = bytes([0x82, 0x80 | 127]) + announced.to_bytes(8, "big") + bytes(4)
    dec.feed(header + b"a" * 1000)
    assert dec.error_code == 0
    more = dec.feed(b"b" * 1000)
    assert dec.error_code == 0 and (more == [] or more == [(OP_BINARY, b"b" * 1000, False)])
