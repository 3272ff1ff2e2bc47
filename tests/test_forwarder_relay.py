"""``Forwarder.relay``: one read of a socket, re-framed in place, sent to another socket, on every
frame kernel (``_frames.pyi``). The oracle is ``feed`` on the same bytes (a fresh forwarder):
whatever reaches the out socket plus what ``relay`` hands back must be exactly its output, in
order, with the same counters and failures. Loopback socket pairs only; every read has a
timeout.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from tests.test_frames import masked_frame

pytestmark = pytest.mark.skipif(os.name != "posix", reason="Forwarder.relay is POSIX only")

START = 256  # FORWARD_HEADROOM
WAIT = 5.0


class Wire:
    """Two socket pairs: the test writes into ``src``, ``relay`` reads ``fd`` and sends to
    ``out_fd``, the test reads what arrived from ``dst``."""

    def __init__(self, size: int = 1 << 16) -> None:
        self.src, ours = socket.socketpair()
        theirs, self.dst = socket.socketpair()
        for sock in (ours, theirs):
            sock.setblocking(False)
        self.ours, self.theirs = ours, theirs
        self.fd, self.out_fd = ours.fileno(), theirs.fileno()
        self.buffer = memoryview(bytearray(START + size))
        self.dst.settimeout(WAIT)

    def received(self, count: int) -> bytes:
        """Exactly ``count`` bytes from the out socket (timeout: a failure)."""
        got = bytearray()
        while len(got) < count:
            got += self.dst.recv(count - len(got))
        return bytes(got)

    def drain(self) -> bytes:
        """Whatever the out socket holds now."""
        got = bytearray()
        self.dst.setblocking(False)
        try:
            while True:
                chunk = self.dst.recv(1 << 20)
                if not chunk:
                    break
                got += chunk
        except BlockingIOError:
            pass
        finally:
            self.dst.settimeout(WAIT)
        return bytes(got)

    def nothing_more(self) -> bool:
        self.dst.setblocking(False)
        try:
            return not self.dst.recv(1)
        except BlockingIOError:
            return True
        finally:
            self.dst.settimeout(WAIT)

    def close(self) -> None:
        for sock in (self.src, self.ours, self.theirs, self.dst):
            sock.close()


@pytest.fixture
def wire() -> Iterator[Wire]:
    made = Wire()
    yield made
    made.close()


def _oracle(fmod: ModuleType, data: bytes, **options: Any) -> Any:
    fwd = fmod.Forwarder(**options)
    return fwd, fwd.feed(data)


def _same_state(a: Any, b: Any) -> None:
    for name in ("close_code", "close_reason", "error_code", "error_reason", "frames", "messages",
                 "payload_bytes", "mid_frame", "buffered"):
        assert getattr(a, name) == getattr(b, name), name


def test_whole_frames_in_one_read_are_sent_and_nothing_comes_back(fmod: ModuleType,
                                                                  wire: Wire) -> None:
    frames = b"".join(masked_frame(2, bytes([i]) * (1 + 37 * i)) for i in range(5))
    oracle, expected = _oracle(fmod, frames)
    fwd = fmod.Forwarder()
    wire.src.sendall(frames)
    assert fwd.relay(wire.fd, wire.buffer, START, wire.out_fd) is None
    assert wire.received(len(expected)) == expected
    assert wire.nothing_more()
    _same_state(fwd, oracle)


def test_nothing_to_read_and_end_of_stream(fmod: ModuleType, wire: Wire) -> None:
    fwd = fmod.Forwarder()
    assert fwd.relay(wire.fd, wire.buffer, START, wire.out_fd) == (-1, START, START)
    wire.src.shutdown(socket.SHUT_WR)
    assert fwd.relay(wire.fd, wire.buffer, START, wire.out_fd) == (0, START, START)
    assert wire.nothing_more()


def test_a_read_error_raises_its_oserror(fmod: ModuleType) -> None:
    # A reset: the peer closes with unread data and SO_LINGER 0 (RST instead of FIN).
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=WAIT)
    accepted, _ = server.accept()
    server.close()
    out_a, out_b = socket.socketpair()
    try:
        accepted.setblocking(False)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        fwd = fmod.Forwarder()
        buffer = memoryview(bytearray(START + 100))
        for _ in range(200):  # the RST arrives at once on loopback; allow a moment
            try:
                got = fwd.relay(accepted.fileno(), buffer, START, out_a.fileno())
            except ConnectionResetError:
                break
            assert got == (-1, START, START)
            socket.socket().close()
        else:
            pytest.fail("no ConnectionResetError")
    finally:
        for sock in (accepted, out_a, out_b):
            sock.close()


def test_frames_split_anywhere_across_reads(fmod: ModuleType) -> None:
    rng = random.Random(7)
    frames = b"".join(masked_frame(rng.choice((1, 2)), rng.randbytes(rng.choice(
        (0, 5, 125, 126, 300, 70000)))) for _ in range(12))
    oracle, expected = _oracle(fmod, frames, validate_utf8=False)
    for cut_seed in range(5):
        cuts = sorted(random.Random(cut_seed).sample(range(1, len(frames)), 40))
        writes = [frames[a:b] for a, b in zip([0, *cuts], [*cuts, len(frames)], strict=True)]
        fwd = fmod.Forwarder(validate_utf8=False)
        wire = Wire(size=1 << 18)
        try:
            arrived = bytearray()
            for data in writes:  # each write whole in one read (a stream socket pair)
                wire.src.sendall(data)
                assert fwd.relay(wire.fd, wire.buffer, START, wire.out_fd) is None
                arrived += wire.drain()
            assert bytes(arrived) == expected
            _same_state(fwd, oracle)
        finally:
            wire.close()


def test_a_ping_in_the_middle_passes_like_data(fmod: ModuleType, wire: Wire) -> None:
    data = (masked_frame(2, b"a" * 10, fin=False) + masked_frame(9, b"ping")
            + masked_frame(0, b"b" * 10) + masked_frame(10, b"pong"))
    oracle, expected = _oracle(fmod, data)
    fwd = fmod.Forwarder()
    wire.src.sendall(data)
    assert fwd.relay(wire.fd, wire.buffer, START, wire.out_fd) is None
    assert wire.received(len(expected)) == expected
    _same_state(fwd, oracle)


@pytest.mark.parametrize("after", [b"", b"later"])
def test_a_close_frame_comes_back_unsent_with_the_data_before_it(fmod: ModuleType, wire: Wire,
                                                                 after: bytes) -> None:
    close = masked_frame(8, struct.pack("!H", 1000) + b"bye")
    data = masked_frame(2, b"x" * 50) + close + masked_frame(2, after)
    oracle, expected = _oracle(fmod, data)
    fwd = fmod.Forwarder()
    wire.src.sendall(data)
    got = fwd.relay(wire.fd, wire.buffer, START, wire.out_fd)
    assert got is not None
    n, begin, stop = got
    assert n == len(data)
    assert bytes(wire.buffer[begin:stop]) == expected  # nothing after the close
    assert wire.nothing_more()  # the close is the caller's to queue: nothing went
    assert fwd.close_code == 1000 and fwd.close_reason == "bye"
    _same_state(fwd, oracle)
    # After the close, reads are dropped as feed_into drops them.
    wire.src.sendall(masked_frame(2, b"more"))
    assert fwd.relay(wire.fd, wire.buffer, START, wire.out_fd) == (len(masked_frame(2, b"more")),
                                                                   START, START)


@pytest.mark.parametrize("options,data,code", [
    ({"max_frame_size": 100}, masked_frame(2, b"y" * 101), 1009),
    ({}, masked_frame(1, b"ok") + masked_frame(1, b"\xff"), 1007),
    ({}, masked_frame(3, b"reserved"), 1002),
])
def test_a_violation_comes_back_unsent(fmod: ModuleType, wire: Wire, options: dict[str, Any],
                                       data: bytes, code: int) -> None:
    oracle, expected = _oracle(fmod, data, **options)
    fwd = fmod.Forwarder(**options)
    wire.src.sendall(data)
    got = fwd.relay(wire.fd, wire.buffer, START, wire.out_fd)
    assert got is not None and fwd.error_code == code == oracle.error_code
    n, begin, stop = got
    assert n == len(data)
    assert bytes(wire.buffer[begin:stop]) == expected
    assert wire.nothing_more()
    _same_state(fwd, oracle)


def test_text_is_validated_across_reads(fmod: ModuleType, wire: Wire) -> None:
    text = "héllo wörld €".encode()
    frame = masked_frame(1, text)
    oracle, expected = _oracle(fmod, frame)
    fwd = fmod.Forwarder()
    sent = 0
    for cut in (3, 9, 11, len(frame)):  # splits inside multi-byte code points
        wire.src.sendall(frame[sent:cut])
        sent = cut
        assert fwd.relay(wire.fd, wire.buffer, START, wire.out_fd) is None
    assert wire.received(len(expected)) == expected
    _same_state(fwd, oracle)


def test_no_out_socket_hands_everything_back(fmod: ModuleType, wire: Wire) -> None:
    data = masked_frame(2, b"z" * 300)
    oracle, expected = _oracle(fmod, data)
    fwd = fmod.Forwarder()
    wire.src.sendall(data)
    got = fwd.relay(wire.fd, wire.buffer, START, -1)
    assert got is not None
    n, begin, stop = got
    assert n == len(data) and bytes(wire.buffer[begin:stop]) == expected
    assert wire.nothing_more()
    _same_state(fwd, oracle)


def test_a_full_out_socket_hands_back_the_rest_in_order(fmod: ModuleType) -> None:
    """The out socket is not read while the source streams 300 kB: sends get partial, the rest
    comes back (and from then on the caller passes -1: its transport has bytes queued); what
    arrived followed by what came back is the output, in order."""
    wire = Wire(size=1 << 20)
    try:
        wire.theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = masked_frame(2, random.Random(3).randbytes(300_000))
        oracle, expected = _oracle(fmod, data)
        fwd = fmod.Forwarder()
        rest = bytearray()
        for at in range(0, len(data), 20_000):
            wire.src.sendall(data[at:at + 20_000])
            got = fwd.relay(wire.fd, wire.buffer, START, -1 if rest else wire.out_fd)
            assert got is not None or not rest
            if got is not None:
                assert got[0] == len(data[at:at + 20_000])
                rest += wire.buffer[got[1]:got[2]]
        assert rest, "the out socket never filled: the test proves nothing"
        assert wire.drain() + bytes(rest) == expected
        _same_state(fwd, oracle)
    finally:
        wire.close()


def test_a_start_outside_the_buffer_or_the_headroom_is_refused(fmod: ModuleType,
                                                               wire: Wire) -> None:
    fwd = fmod.Forwarder()
    with pytest.raises(ValueError):
        fwd.relay(wire.fd, wire.buffer, START - 1, wire.out_fd)
    with pytest.raises(ValueError):
        fwd.relay(wire.fd, wire.buffer, len(wire.buffer), wire.out_fd)
    with pytest.raises((BufferError, TypeError)):
        fwd.relay(wire.fd, bytes(START + 10), START, wire.out_fd)


def test_relay_and_feed_into_mix(fmod: ModuleType, wire: Wire) -> None:
    """A partial header held over by ``feed_into`` is completed by ``relay``, and back."""
    data = b"".join(masked_frame(2, bytes([i]) * (20 + i)) for i in range(6))
    oracle, expected = _oracle(fmod, data)
    fwd = fmod.Forwarder()
    buffer = memoryview(bytearray(START + len(data)))
    stream = bytearray()
    for i, piece in enumerate([data[:5], data[5:40], data[40:41], data[41:]]):
        if i % 2 == 0:
            buffer[START:START + len(piece)] = piece
            begin, stop = fwd.feed_into(buffer, START, START + len(piece))
            stream += buffer[begin:stop]
        else:
            wire.src.sendall(piece)
            got = fwd.relay(wire.fd, wire.buffer, START, -1)
            assert got is not None and got[0] == len(piece)
            stream += wire.buffer[got[1]:got[2]]
    assert bytes(stream) == expected
    _same_state(fwd, oracle)


def test_a_big_read_is_forwarded_whole(fmod: ModuleType) -> None:
    """A read of more than 256 KiB (the size from which Cython masks without the GIL) is
    re-framed and handed back in one piece, in order."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    src = socket.create_connection(server.getsockname(), timeout=WAIT)
    ours, _ = server.accept()
    server.close()
    try:
        ours.setblocking(False)
        payload = random.Random(5).randbytes(900_000)
        data = masked_frame(2, payload)
        oracle, expected = _oracle(fmod, data)
        fwd = fmod.Forwarder()
        buffer = memoryview(bytearray(START + (4 << 20)))
        src.sendall(data)
        src.close()
        stream = bytearray()
        largest = 0
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            got = fwd.relay(ours.fileno(), buffer, START, -1)
            assert got is not None
            if got[0] == 0:
                break
            largest = max(largest, got[0])
            stream += buffer[got[1]:got[2]]
        assert bytes(stream) == expected
        assert largest > 256 * 1024, "no read went over the threshold: the test proves nothing"
        _same_state(fwd, oracle)
    finally:
        ours.close()
