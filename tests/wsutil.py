"""Test helpers for the WebSocket layer: an independent frame builder and parser (deliberately not
using the kernel under test), feeding modes, and an echoing application around a connection."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from hyco_proto.websocket import (
    BinaryMessage,
    ConnectionClosed,
    Event,
    Role,
    State,
    TextMessage,
    WebSocketConnection,
)

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10

_key_counter = itertools.count(1)


def xor(data: bytes, key: bytes) -> bytes:
    """Plain byte-by-byte XOR masking (RFC 6455 §5.3), independent of the kernel."""
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


def fresh_key() -> bytes:
    """A distinct, non-trivial 4-byte key per frame (deterministic across runs)."""
    n = next(_key_counter)
    return bytes(((n * 37 + 11) & 0xFF, 0xA5, (n * 91 + 3) & 0xFF, 0x5C))


def frame(
    opcode: int,
    payload: bytes | str = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
    force_64: bool = False,
) -> bytes:
    """Build a frame by hand. ``length`` overrides the header length (for lying headers);
    ``force_64`` uses the 64-bit length form."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if mask else 0
    if force_64 or n > 0xFFFF:
        head = bytes((b0, mbit | 127)) + struct.pack("!Q", n)
    elif n > 125:
        head = bytes((b0, mbit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, mbit | n))
    if mask:
        key = fresh_key()
        return head + key + xor(payload, key)
    return head + payload


def close_payload(code: int | None, reason: bytes | str = b"") -> bytes:
    if isinstance(reason, str):
        reason = reason.encode("utf-8")
    if code is None:
        return reason
    return struct.pack("!H", code) + reason


def close(code: int | None = 1000, reason: bytes | str = b"", *, mask: bool = True) -> bytes:
    return frame(OP_CLOSE, close_payload(code, reason), mask=mask)


@dataclass
class WireFrame:
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    payload: bytes


def parse_frames(data: bytes) -> list[WireFrame]:
    """Parse complete frames; fails the test on trailing partial data."""
    frames: list[WireFrame] = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 2, "partial frame header in output"
        b0, b1 = data[pos], data[pos + 1]
        n = b1 & 0x7F
        pos += 2
        if n == 126:
            (n,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        masked = bool(b1 & 0x80)
        key = b""
        if masked:
            key = data[pos : pos + 4]
            pos += 4
        payload = data[pos : pos + n]
        assert len(payload) == n, "partial frame payload in output"
        pos += n
        if masked:
            payload = xor(payload, key)
        frames.append(WireFrame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, masked, payload))
    return frames


EOF = ("eof",)
Item = tuple[object, ...]


def text(s: str) -> Item:
    return ("text", s)


def binary(b: bytes) -> Item:
    return ("binary", b)


def pong(b: bytes | str = b"") -> Item:
    return ("pong", b.encode() if isinstance(b, str) else b)


def ping(b: bytes | str = b"") -> Item:
    return ("ping", b.encode() if isinstance(b, str) else b)


def closed(code: int | None) -> Item:
    return ("close", code)


def complete_frames_length(buf: bytes | bytearray) -> int:
    """Length of the longest prefix of ``buf`` made of whole unmasked frames."""
    pos = 0
    while len(buf) - pos >= 2:
        n, head = buf[pos + 1] & 0x7F, 2
        if n == 126:
            if len(buf) - pos < 4:
                break
            n, head = struct.unpack_from("!H", buf, pos + 2)[0], 4
        elif n == 127:
            if len(buf) - pos < 10:
                break
            n, head = struct.unpack_from("!Q", buf, pos + 2)[0], 10
        if len(buf) - pos < head + n:
            break
        pos += head + n
    return pos


def decode_output(chunks: Sequence[bytes], *, expect_masked: bool) -> list[Item]:
    """Turn what a connection wrote into messages/control items, checking the rules every frame
    must follow (RFC 6455 §5.1, §5.2, §5.5, §5.6, §7.4.1).

    ``b""`` becomes ``EOF`` and must be last."""
    items: list[Item] = []
    wire = bytearray()
    eof_at: int | None = None
    for i, chunk in enumerate(chunks):
        if chunk == b"":
            assert eof_at is None, "b'' (close TCP) emitted twice"
            eof_at = i
        else:
            assert eof_at is None, "data queued after b'' (TCP already closed)"
            wire += chunk
    msg_op: int | None = None
    parts: list[bytes] = []
    for f in parse_frames(bytes(wire)):
        assert f.masked == expect_masked, "wrong masking on an outgoing frame (RFC 6455 §5.1)"
        assert f.rsv == 0, "RSV bits set on an outgoing frame"
        if f.opcode >= 8:
            assert f.fin and len(f.payload) <= 125, "bad outgoing control frame"
            if f.opcode == OP_CLOSE:
                if f.payload:
                    assert len(f.payload) >= 2
                    code = struct.unpack("!H", f.payload[:2])[0]
                    assert code not in (1004, 1005, 1006, 1015), f"forbidden close code {code}"
                    f.payload[2:].decode("utf-8")
                    items.append(closed(code))
                else:
                    items.append(closed(None))
            elif f.opcode == OP_PING:
                items.append(ping(f.payload))
            elif f.opcode == OP_PONG:
                items.append(pong(f.payload))
            else:
                raise AssertionError(f"reserved control opcode {f.opcode} sent")
            continue
        if msg_op is None:
            assert f.opcode in (OP_TEXT, OP_BINARY), "continuation without message in output"
            msg_op = f.opcode
        else:
            assert f.opcode == OP_CONT, "new data frame inside a fragmented message in output"
        parts.append(f.payload)
        if f.fin:
            data = b"".join(parts)
            items.append(text(data.decode("utf-8")) if msg_op == OP_TEXT else binary(data))
            msg_op, parts = None, []
    assert msg_op is None, "unfinished message in output"
    if eof_at is not None:
        items.append(EOF)
    return items


def split_bytes(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def fragmented(opcode: int, data: bytes, fragment: int) -> bytes:
    """One masked message of ``data`` sent as frames of ``fragment`` bytes (rows 9.3, 9.4)."""
    pieces = split_every(data, fragment)
    return b"".join(
        frame(opcode if i == 0 else 0, p, fin=i == len(pieces) - 1) for i, p in enumerate(pieces)
    )


MODES = ("whole", "frames", "bytes")


def writes_for(mode: str, frames_: Sequence[bytes]) -> list[bytes]:
    """How the peer's bytes are split into TCP writes: one write, one per frame, one per byte."""
    if mode == "whole":
        return [b"".join(frames_)]
    if mode == "frames":
        return list(frames_)
    if mode == "bytes":
        return split_bytes(b"".join(frames_))
    raise ValueError(mode)


@dataclass
class EchoRun:
    """An echoing application around a connection: every whole message goes back unchanged."""

    conn: WebSocketConnection
    echo: bool = True
    events: list[Event] = field(default_factory=list)
    out: list[bytes] = field(default_factory=list)

    def feed(self, data: bytes) -> list[Event]:
        self.conn.receive_data(data)
        return self._pump()

    def feed_all(self, writes: Iterable[bytes]) -> None:
        for w in writes:
            self.feed(w)

    def eof(self) -> list[Event]:
        self.conn.receive_eof()
        return self._pump()

    def _pump(self) -> list[Event]:
        new = self.conn.events_received()
        self.events.extend(new)
        for ev in new:
            if not self.echo or self.conn.state is not State.OPEN:
                continue
            if isinstance(ev, TextMessage):
                self.conn.send_text(ev.data)
            elif isinstance(ev, BinaryMessage):
                self.conn.send_binary(ev.data)
        self.out.extend(self.conn.data_to_send())
        return new

    def output(self) -> list[Item]:
        return decode_output(self.out, expect_masked=self.conn.role is Role.CLIENT)

    def closed_event(self) -> ConnectionClosed:
        ends = [e for e in self.events if isinstance(e, ConnectionClosed)]
        assert len(ends) == 1, f"expected exactly one ConnectionClosed, got {ends}"
        assert self.events[-1] is ends[0], "ConnectionClosed must be the last event"
        return ends[0]


def run_server(writes: Iterable[bytes], **kwargs: object) -> EchoRun:
    run = EchoRun(WebSocketConnection(Role.SERVER, **kwargs))  # type: ignore[arg-type]
    run.feed_all(writes)
    return run


def run_client(writes: Iterable[bytes], **kwargs: object) -> EchoRun:
    run = EchoRun(WebSocketConnection(Role.CLIENT, **kwargs))  # type: ignore[arg-type]
    run.feed_all(writes)
    return run
