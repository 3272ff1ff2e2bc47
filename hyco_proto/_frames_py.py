"""Pure-Python frame kernel: the reference twin of the Cython ``_frames`` (same API, same tests).

RFC 6455 §5.2 framing, §5.3 masking. Used when the extension is not built or when
``HYCO_PROTO_NO_EXTENSIONS=1``.
"""

from __future__ import annotations

import codecs
import os
import struct
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contextvars import Context

__all__ = [
    "FORWARD_HEADROOM",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Forwarder",
    "FrameDecoder",
    "Wakeup",
    "apply_mask",
    "apply_mask_inplace",
    "check_close_payload",
    "decode_header",
    "encode_frame",
    "encode_header",
    "encode_masked",
]

#: Scratch bytes ``Forwarder.feed_into`` needs before ``start``: room for the bytes a forwarder
#: holds over between reads (at most a partial masked control frame, 2 + 4 + 124 bytes).
FORWARD_HEADROOM = 256

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_KNOWN_OPCODES = frozenset((0, 1, 2, 8, 9, 10))
_PACK_16 = struct.Struct("!BBH").pack
_PACK_64 = struct.Struct("!BBQ").pack
_UNPACK_16 = struct.Struct("!H").unpack_from
_UNPACK_64 = struct.Struct("!Q").unpack_from


def _check_key(key: bytes) -> None:
    if len(key) != 4:
        raise ValueError(f"mask key must be 4 bytes, got {len(key)}")


def _nbytes(data: Any) -> int:
    """The size in bytes of a bytes-like object (``len`` counts items: 4 per ``array('i')``)."""
    return len(data) if type(data) is bytes else memoryview(data).nbytes


def apply_mask(data: Any, key: bytes, offset: int = 0) -> bytes:
    """XOR ``data`` with ``key`` starting at phase ``offset`` (mod 4); return new bytes."""
    _check_key(key)
    n = _nbytes(data)
    if n == 0:
        return b""
    phase = offset & 3
    if phase:
        key = key[phase:] + key[:phase]
    # XOR as one big integer: ~20x faster than a byte loop in CPython.
    repeated = (key * ((n >> 2) + 1))[:n]
    value = int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")
    return value.to_bytes(n, "little")


def apply_mask_inplace(buffer: Any, key: bytes, offset: int = 0) -> None:
    """XOR a writable buffer in place with ``key`` starting at phase ``offset`` (mod 4)."""
    view = memoryview(buffer)
    if view.readonly:
        raise TypeError(
            "apply_mask_inplace needs a writable buffer (bytearray, writable memoryview)"
        )
    view = view.cast("B")
    view[:] = apply_mask(view, key, offset)


# The most FrameDecoder.whole_slot hands out at once (one buffer per frame, reused).
_SLOT_SIZE = 256 * 1024

_URANDOM_POOL = b""
_URANDOM_POS = 0


def _random_key() -> bytes:
    """A fresh unpredictable mask key (RFC 6455 §5.3), drawn from an os.urandom pool."""
    global _URANDOM_POOL, _URANDOM_POS
    if len(_URANDOM_POOL) < _URANDOM_POS + 4:
        _URANDOM_POOL = os.urandom(8192)
        _URANDOM_POS = 0
    pos = _URANDOM_POS
    _URANDOM_POS = pos + 4
    return _URANDOM_POOL[pos : pos + 4]


def encode_header(
    opcode: int, length: int, fin: bool = True, rsv: int = 0, mask_key: bytes | None = None
) -> bytes:
    """The frame header for a payload of ``length`` bytes (mask key appended when given)."""
    if not 0 <= opcode <= 15:
        raise ValueError(f"opcode must be 0..15, got {opcode}")
    if not 0 <= rsv <= 7:
        raise ValueError(f"rsv must be 0..7, got {rsv}")
    if length < 0 or length >= 1 << 63:
        raise ValueError(f"payload length out of range: {length}")
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if mask_key is not None else 0
    if length < 126:
        header = bytes((b0, mbit | length))
    elif length < 65536:
        header = _PACK_16(b0, mbit | 126, length)
    else:
        header = _PACK_64(b0, mbit | 127, length)
    if mask_key is not None:
        _check_key(mask_key)
        header += mask_key
    return header


def encode_frame(
    opcode: int, payload: Any, fin: bool = True, rsv: int = 0, masked: bool = False
) -> bytes:
    """A whole frame. ``masked=True`` (client role) masks with a fresh random key."""
    n = _nbytes(payload)
    if masked:
        key = _random_key()
        return encode_header(opcode, n, fin, rsv, key) + apply_mask(payload, key)
    return encode_header(opcode, n, fin, rsv) + bytes(payload)


def encode_masked(opcode: int, payload: Any, fin: bool = True) -> tuple[bytes, bytes]:
    """A masked frame (fresh random key) as its header and its masked payload, the payload's
    size (see ``_frames.pyi``: why large client messages go out this way)."""
    n = _nbytes(payload)
    key = _random_key()
    return encode_header(opcode, n, fin, 0, key), apply_mask(payload, key)


def decode_header(
    data: Any, offset: int = 0
) -> tuple[bool, int, int, bytes | None, int, int] | None:
    """Parse a header at ``offset``: ``(fin, rsv, opcode, mask_key, payload_length,
    header_length)``, or ``None`` when ``data`` does not hold the whole header yet."""
    view = memoryview(data).cast("B")
    avail = len(view) - offset
    if avail < 2:
        return None
    b0 = view[offset]
    b1 = view[offset + 1]
    length = b1 & 0x7F
    size = 2
    if length == 126:
        size = 4
        if avail < size:
            return None
        length = _UNPACK_16(view, offset + 2)[0]
    elif length == 127:
        size = 10
        if avail < size:
            return None
        length = _UNPACK_64(view, offset + 2)[0]
    key: bytes | None = None
    if b1 & 0x80:
        if avail < size + 4:
            return None
        key = bytes(view[offset + size : offset + size + 4])
        size += 4
    return bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, key, length, size


def _header_problem(b0: int, b1: int, expect_masked: bool, allowed_rsv: int,
                    in_message: bool) -> str:
    """What is wrong with a frame whose first two bytes are b0 b1, or "" (RFC 6455 §5.1, §5.2,
    §5.4, §5.5). Needs only two bytes, so violations show as early as possible."""
    rsv = (b0 >> 4) & 7
    opcode = b0 & 0x0F
    if rsv & ~allowed_rsv:
        return f"reserved bits set (RSV={rsv}) but no extension negotiated"
    if opcode not in _KNOWN_OPCODES:
        return f"reserved opcode {opcode}"
    if bool(b1 & 0x80) != expect_masked:
        if expect_masked:
            return "client frames must be masked (RFC 6455 §5.1)"
        return "server frames must not be masked (RFC 6455 §5.1)"
    if opcode >= 8:
        if not b0 & 0x80:
            return "control frames must not be fragmented (RFC 6455 §5.5)"
        if (b1 & 0x7F) > 125:
            return "control frame payload longer than 125 bytes (RFC 6455 §5.5)"
    elif opcode == OP_CONTINUATION:
        if not in_message:
            return "continuation frame without a message in progress"
    elif in_message:
        return "new data frame while a fragmented message is in progress"
    return ""


def _length_field(buf: Any, pos: int, avail: int) -> tuple[int, int]:
    """``(size, length)`` of the header at ``pos`` up to the mask key (2, 4 or 10 bytes) and its
    payload length; size 0 when the length field is incomplete, -1 when its 64-bit form has the
    most significant bit set (RFC 6455 §5.2)."""
    len7 = buf[pos + 1] & 0x7F
    if len7 < 126:
        return 2, len7
    if len7 == 126:
        return (4, _UNPACK_16(buf, pos + 2)[0]) if avail >= 4 else (0, 0)
    if avail < 10:
        return 0, 0
    length = _UNPACK_64(buf, pos + 2)[0]
    return (-1 if length >> 63 else 10), length


class FrameDecoder:
    """Streaming RFC 6455 frame decoder; see ``_frames.pyi`` for the contract."""

    __slots__ = (
        "_allowed_rsv",
        "_buf",
        "_fin",
        "_in_message",
        "_key",
        "_masked",
        "_max_frame",
        "_max_message",
        "_message_size",
        "_opcode",
        "_phase",
        "_remaining",
        "_slot",
        "_slot_buffer",
        "_whole",
        "_whole_limit",
        "error_code",
        "error_reason",
    )

    def __init__(
        self,
        *,
        masked: bool,
        max_frame_size: int = 0,
        max_message_size: int = 0,
        allowed_rsv: int = 0,
        whole_binary: int = 0,
    ) -> None:
        self._masked = masked
        self._max_frame = max_frame_size
        self._max_message = max_message_size
        self._allowed_rsv = allowed_rsv
        self._buf = bytearray()
        self._remaining = 0  # payload bytes still to come in the current data frame
        self._opcode = 0
        self._fin = False
        self._key: bytes | None = None
        self._phase = 0
        self._in_message = False  # a fragmented data message is open (RFC 6455 §5.4)
        self._message_size = 0
        self._whole_limit = whole_binary
        self._whole: bytearray | None = None  # a whole binary frame's payload so far
        self._slot: memoryview | None = None  # what whole_slot() handed out
        self._slot_buffer: bytearray | None = None  # where slots are, reused
        self.error_code = 0
        self.error_reason = ""

    @property
    def buffered(self) -> int:
        return len(self._buf) + (len(self._whole) if self._whole is not None else 0)

    def _fail(self, code: int, reason: str) -> None:
        self.error_code = code
        self.error_reason = reason
        self._buf = bytearray()
        self._remaining = 0
        self._whole = None
        self._slot = None
        self._slot_buffer = None

    def whole_slot(self, at_least: int = 1) -> memoryview | None:
        # (The Cython kernel hands out a window on the frame's own bytes object; here the
        # bytes land in one reused buffer of at most _SLOT_SIZE and go through feed(): the
        # same contract, a slot of the frame's next bytes, not necessarily all of them.)
        if (self._whole is None or self.error_code or not self._remaining
                or at_least > self._remaining or self._buf):
            return None
        if self._slot is None:
            if self._slot_buffer is None:  # for this frame (its rest only shrinks)
                self._slot_buffer = bytearray(min(self._remaining, _SLOT_SIZE))
            size = min(self._remaining, len(self._slot_buffer))
            self._slot = memoryview(self._slot_buffer)[:size]
        return self._slot

    def whole_received(self, nbytes: int) -> list[tuple[int, bytes, bool]]:
        slot = self._slot
        if slot is None:
            raise ValueError("no receive buffer is out: ask for one (whole_slot, "
                             "payload_buffer) and receive into it first; feeding data takes "
                             "it back")
        if not 0 <= nbytes <= len(slot):
            raise ValueError(f"{nbytes} bytes reported, but the receive buffer holds "
                             f"{len(slot)}: pass what recv_into returned")
        if not nbytes:
            self._slot = None
            return []
        return self.feed(slot[:nbytes])

    def feed_message(self, data: Any) -> list[tuple[int, bytes, bool]] | bytes | str:
        # (bool: _buf itself is the bytearray feed() empties)
        held = bool(self.error_code or self._remaining or self._in_message or self._buf)
        chunks = self.feed(data)
        if (held or len(chunks) != 1 or data[0] not in (0x81, 0x82) or self._remaining
                or self._buf or self.error_code):
            return chunks  # not exactly one whole text or binary frame, FIN, no RSV
        opcode, payload, _ = chunks[0]
        if opcode == 2:
            return payload
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            return chunks

    def feed(self, data: Any) -> list[tuple[int, bytes, bool]]:
        out: list[tuple[int, bytes, bool]] = []
        self._slot = None
        if self.error_code:
            return out
        buf = self._buf
        buf += data
        n = len(buf)
        pos = 0
        while True:
            if self._remaining:
                take = min(self._remaining, n - pos)
                if take == 0:
                    break
                chunk = bytes(buf[pos : pos + take])
                if self._key is not None:
                    chunk = apply_mask(chunk, self._key, self._phase)
                    self._phase = (self._phase + take) & 3
                self._remaining -= take
                pos += take
                whole = self._whole
                if whole is not None:  # (the Cython kernel fills one bytes object instead)
                    whole += chunk
                    if self._remaining:
                        continue
                    chunk = bytes(whole)
                    self._whole = None
                out.append((self._opcode, chunk, self._fin and not self._remaining))
                continue
            if n - pos < 2:
                break
            b0 = buf[pos]
            b1 = buf[pos + 1]
            fin = bool(b0 & 0x80)
            opcode = b0 & 0x0F
            problem = _header_problem(b0, b1, self._masked, self._allowed_rsv, self._in_message)
            if problem:
                self._fail(1002, problem)
                return out
            control = opcode >= 8
            head, length = _length_field(buf, pos, n - pos)
            if head == 0:
                break
            if head < 0:
                self._fail(1002, "64-bit payload length has its most significant bit set")
                return out
            if self._masked:
                head += 4
            if not control:
                if self._max_frame and length > self._max_frame:
                    self._fail(
                        1009, f"frame of {length} bytes exceeds the limit of {self._max_frame}"
                    )
                    return out
                size = self._message_size + length if opcode == OP_CONTINUATION else length
                if self._max_message and size > self._max_message:
                    self._fail(
                        1009, f"message of {size}+ bytes exceeds the limit of {self._max_message}"
                    )
                    return out
            if n - pos < head:
                break
            key = bytes(buf[pos + head - 4 : pos + head]) if self._masked else None
            if control:
                if n - pos < head + length:
                    break
                payload = bytes(buf[pos + head : pos + head + length])
                if key is not None and length:
                    payload = apply_mask(payload, key)
                pos += head + length
                out.append((opcode, payload, True))
                continue
            pos += head
            self._message_size = size
            self._in_message = not fin
            self._opcode = opcode
            self._fin = fin
            self._key = key
            self._phase = 0
            self._remaining = length
            if not length:
                out.append((opcode, b"", fin))
            elif opcode == OP_BINARY and length <= self._whole_limit:
                self._whole = bytearray()
        if pos:
            del buf[:pos]
        if self._whole is None:
            self._slot_buffer = None  # kept for the frame under way only
        return out


def _close_code_valid(code: int) -> bool:
    """Close codes a peer may send (RFC 6455 §7.4; 1012-1014 registered with IANA later)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def check_close_payload(payload: bytes) -> tuple[int, str, int, str]:
    """Parse a close frame body: ``(code, reason, error_code, error_reason)``.

    ``code`` is 1005 for an empty body; ``error_code`` is 0, or 1002 / 1007 when the body is not
    a valid close body (RFC 6455 §5.5.1, §7.4, §8.1).
    """
    if not payload:
        return 1005, "", 0, ""
    if len(payload) == 1:
        return 0, "", 1002, "close frame with a 1-byte payload"
    code = (payload[0] << 8) | payload[1]
    if not _close_code_valid(code):
        return code, "", 1002, f"invalid close code {code}"
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        return code, "", 1007, "close reason is not valid UTF-8"
    return code, reason, 0, ""


UTF8_INVALID = "text message is not valid UTF-8"
UTF8_TRUNCATED = "text message ends inside a UTF-8 sequence"


def _utf8_step(state: int, data: Any, start: int, end: int, tail: int) -> tuple[int, int]:
    """The byte-at-a-time validator (the Cython kernel's, same state encoding): run ``data[start:
    end]`` from ``state``; return ``(state, index of the first invalid byte or -1)``.

    The state is 0 between code points, else ``need << 16 | highest << 8 | lowest`` for the next
    byte: E0 needs A0..BF next (no overlongs), ED 80..9F (no surrogates), F0 90..BF, F4 80..8F
    (nothing above U+10FFFF); C0, C1 and F5..FF never start a sequence. ``tail >= 0``: the
    message ends ``tail`` bytes after ``data[end - 1]``, so a lead byte whose sequence cannot be
    completed before that is itself invalid."""
    need, lo, hi = state >> 16, state & 0xFF, (state >> 8) & 0xFF
    for i in range(start, end):
        c = data[i]
        if need:
            if c < lo or c > hi:
                return state, i
            need, lo, hi = need - 1, 0x80, 0xBF
        elif c >= 0x80:
            lo, hi = 0x80, 0xBF
            if c < 0xC2 or c >= 0xF5:
                return state, i
            if c < 0xE0:
                need = 1
            elif c < 0xF0:
                need = 2
                if c == 0xE0:
                    lo = 0xA0
                elif c == 0xED:
                    hi = 0x9F
            else:
                need = 3
                if c == 0xF0:
                    lo = 0x90
                elif c == 0xF4:
                    hi = 0x8F
            if tail >= 0 and need > end - 1 - i + tail:
                return state, i
        state = (need << 16) | (hi << 8) | lo if need else 0
    return state, -1


def _utf8_check(state: int, data: bytes, tail: int) -> tuple[int, int]:
    """Validate ``data`` from ``state``: ``(state, index of the first invalid byte or -1)``;
    ``tail`` as for ``_utf8_step``.

    The byte loop finishes a pending code point and the tail; the middle goes to CPython's
    decoder (strict, not final: it stops before an incomplete tail, which the byte loop then
    checks, as the decoder lets an incomplete surrogate such as ED A0 wait for more)."""
    n = len(data)
    start = 0
    while state and start < n:
        state, bad = _utf8_step(state, data, start, start + 1, -1)
        if bad >= 0:
            return state, bad
        start += 1
    if start == n or data.isascii():
        return state, -1
    try:
        _, used = _utf8_decode(memoryview(data)[start:], "strict", False)
    except UnicodeDecodeError as exc:
        # data[start:start + exc.start] is valid; the first invalid byte is within 4 more.
        return _utf8_step(0, data, start + exc.start, n, tail)
    return _utf8_step(0, data, start + used, n, tail)


_utf8_decode = codecs.utf_8_decode


class Forwarder:
    """One direction of a relayed pair: client frames in, server frames out (see ``_frames.pyi``).

    Masked frames from a client leg are re-framed unmasked for the other leg in one pass, one
    copy per payload byte. Data frames stream: a frame's header goes out as soon as it is parsed
    and its payload as it arrives, so memory stays bounded whatever the frame size. FIN, RSV and
    opcode are preserved; control frames (ping, pong, close) pass through whole, so the endpoints
    answer each other's pings. A close frame is checked, forwarded, and ends the direction.
    """

    __slots__ = (
        "_allowed_rsv",
        "_buf",
        "_fin",
        "_in_message",
        "_key",
        "_masked",
        "_max_frame",
        "_phase",
        "_remaining",
        "_text",
        "_utf8",
        "_validate",
        "close_code",
        "close_reason",
        "error_code",
        "error_reason",
        "frames",
        "messages",
        "payload_bytes",
    )

    def __init__(
        self,
        *,
        masked: bool = True,
        max_frame_size: int = 0,
        allowed_rsv: int = 0,
        validate_utf8: bool = True,
    ) -> None:
        self._masked = masked
        self._validate = validate_utf8
        self._text = False  # the current message is text being validated
        self._fin = False  # the current data frame ends its message
        self._utf8 = 0  # validator state (0: between code points)
        self._max_frame = max_frame_size
        self._allowed_rsv = allowed_rsv
        self._buf = bytearray()
        self._remaining = 0
        self._key: bytes | None = None
        self._phase = 0
        self._in_message = False
        #: Code of the close frame forwarded (1005 if it had none); -1 until one passed.
        self.close_code = -1
        self.close_reason = ""
        self.error_code = 0
        self.error_reason = ""
        #: Frames whose header has been forwarded (control frames and fragments included), data
        #: messages whose final frame's header has, and payload bytes forwarded.
        self.frames = 0
        self.messages = 0
        self.payload_bytes = 0

    @property
    def mid_frame(self) -> bool:
        """True while the output is inside a data frame (nothing may be injected there)."""
        return self._remaining > 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _fail(self, code: int, reason: str) -> None:
        self.error_code = code
        self.error_reason = reason
        self._buf = bytearray()

    def feed_into(self, buffer: Any, start: int, end: int = -1) -> tuple[int, int]:
        """Re-frame ``buffer[start:end]`` in place; return ``(begin, stop)``: ``buffer[begin:stop]``
        is what to write to the other leg (see ``_frames.pyi``)."""
        if start < FORWARD_HEADROOM:
            raise ValueError(f"feed_into needs start >= FORWARD_HEADROOM ({FORWARD_HEADROOM}), "
                             f"got {start}")
        view = memoryview(buffer).cast("B")
        if view.readonly:
            raise BufferError("Object is not writable.")
        if end < 0:
            end = len(view)
        if end > len(view) or start > end:
            raise ValueError(f"feed_into: start {start} and end {end} do not fit a buffer of "
                             f"{len(view)} bytes")
        if self.error_code or self.close_code >= 0:
            return start, start
        if len(self._buf) > start:  # cannot happen: what is held over is shorter than that
            raise ValueError(f"feed_into: {len(self._buf)} bytes held over exceed start {start}")
        begin = start - len(self._buf)  # feed() puts the held-over bytes first
        out = self.feed(view[start:end])
        view[begin : begin + len(out)] = out  # never longer than what it came from
        return begin, begin + len(out)

    def relay(self, fd: int, buffer: Any, start: int,
              out_fd: int) -> tuple[int, int, int] | None:
        """One read of socket ``fd`` into ``buffer[start:]``, re-framed in place as ``feed_into``
        and sent to socket ``out_fd``: None when all of it went (or nothing was due), else
        ``(n, begin, stop)``; see ``_frames.pyi``."""
        view = memoryview(buffer).cast("B")
        if view.readonly:
            raise BufferError("Object is not writable.")
        if start < FORWARD_HEADROOM or start >= len(view):
            raise ValueError(f"relay needs FORWARD_HEADROOM ({FORWARD_HEADROOM}) <= start < "
                             f"{len(view)} (the buffer's size), got {start}")
        try:
            n = os.readv(fd, [view[start:]])
        except (BlockingIOError, InterruptedError):  # nothing now (or a signal: asked again)
            return -1, start, start
        if n == 0 or self.error_code or self.close_code >= 0:
            return n, start, start
        begin, stop = self.feed_into(view, start, start + n)
        if self.error_code or self.close_code >= 0 or out_fd < 0:
            return n, begin, stop
        if stop > begin:
            try:
                sent = os.write(out_fd, view[begin:stop])
            except OSError:  # full, or failed: the caller's write of the rest meets it
                sent = 0
            if sent < stop - begin:
                return n, begin + sent, stop
        return None

    def feed(self, data: Any) -> bytes:
        """Bytes from the source leg in; bytes for the other leg out (``b""`` when none)."""
        if self.error_code or self.close_code >= 0:
            return b""
        buf = self._buf
        buf += data
        n = len(buf)
        pos = 0
        out: list[bytes] = []
        header_at = -1  # index in ``out`` of a data frame header emitted by this call
        payload_before = 0  # ``payload_bytes`` when that header was emitted
        while pos < n:
            if self._remaining:
                take = min(self._remaining, n - pos)
                view = memoryview(buf)[pos : pos + take]
                if self._key is not None:
                    chunk = apply_mask(view, self._key, self._phase)
                    self._phase = (self._phase + take) & 3
                else:
                    chunk = bytes(view)
                view.release()
                if self._text:
                    tail = self._remaining - take if self._fin else -1
                    self._utf8, bad = _utf8_check(self._utf8, chunk, tail)
                    if bad >= 0:
                        self._fail(1007, UTF8_INVALID)
                        if header_at >= 0:
                            # This frame's header has not left yet: hold the frame back, so
                            # the other leg stays between frames and can hear 1001 cleanly.
                            del out[header_at:]
                            self.frames -= 1
                            self.messages -= self._fin
                            self.payload_bytes = payload_before
                            self._remaining = 0
                        else:
                            out.append(chunk[:bad])
                            self._remaining -= bad
                            self.payload_bytes += bad
                        break
                out.append(chunk)
                self._remaining -= take
                self.payload_bytes += take
                pos += take
                continue
            if n - pos < 2:
                break
            b0, b1 = buf[pos], buf[pos + 1]
            fin, opcode = bool(b0 & 0x80), b0 & 0x0F
            problem = _header_problem(b0, b1, self._masked, self._allowed_rsv, self._in_message)
            if problem:
                self._fail(1002, problem)
                break
            hlen, length = _length_field(buf, pos, n - pos)
            if hlen == 0:
                break
            if hlen < 0:
                self._fail(1002, "64-bit payload length has its most significant bit set")
                break
            if opcode < 8 and self._max_frame and length > self._max_frame:
                self._fail(1009, f"frame of {length} bytes exceeds the limit of {self._max_frame}")
                break
            size = hlen + 4 if self._masked else hlen
            if n - pos < size:
                break
            key = bytes(buf[pos + hlen : pos + size]) if self._masked else None
            if opcode >= 8:
                if n - pos < size + length:
                    break
                payload = bytes(buf[pos + size : pos + size + length])
                if key is not None:
                    payload = apply_mask(payload, key)
                if opcode == OP_CLOSE:
                    code, reason, err, why = check_close_payload(payload)
                    if err:
                        self._fail(err, why)
                        break
                out.append(bytes((buf[pos], length)) + payload)
                self.frames += 1
                self.payload_bytes += length
                pos += size + length
                if opcode == OP_CLOSE:
                    self.close_code, self.close_reason = code, reason
                    pos = n  # nothing after a close is forwarded (RFC 6455 §5.5.1)
                    break
                continue
            if opcode != OP_CONTINUATION or fin:
                self._in_message = not fin
            if opcode != OP_CONTINUATION:
                # A compressed message (RSV1, permessage-deflate) is not text until inflated.
                self._text = opcode == OP_TEXT and self._validate and not b0 & 0x40
                self._utf8 = 0
            elif fin and self._text and self._utf8 >> 16 > length:
                # The final frame is too short for the code point begun before it.
                self._fail(1007, UTF8_TRUNCATED)
                break
            self._fin = fin
            # The header goes out as it came (same FIN, RSV, opcode and length bytes), unmasked.
            header_at, payload_before = len(out), self.payload_bytes
            out.append(bytes((b0, b1 & 0x7F)) + bytes(buf[pos + 2 : pos + hlen]))
            self.frames += 1
            self.messages += fin
            self._key = key
            self._phase = 0
            self._remaining = length
            pos += size
        del buf[:pos]  # after a failure `buf` is no longer ours (_fail dropped it)
        return b"".join(out)


_Callback = Callable[[Any], object]


class Wakeup:
    """What a waiting asyncio ``recv`` awaits: a one-shot future that resumes its task at once.

    An ``asyncio.Future`` runs its task's wake-up with ``call_soon``: one more loop iteration
    (an ``epoll_wait`` and a handle) between a message's arrival and the handler seeing it.
    When :meth:`wake` is called outside any task (a protocol callback: ``data_received``), this
    one runs the wake-up right there, in the task's own context, as the loop would have done one
    iteration later; inside a task (where another task may not be entered) it falls back to
    ``call_soon``. Tasks accept any awaitable that yields an object with
    ``_asyncio_future_blocking``, ``add_done_callback`` and ``result`` (the future protocol
    asyncio's ``Task`` checks for, ``asyncio.isfuture``) and its loop: ``get_loop()``, or
    without that method the ``_loop`` attribute (``asyncio.futures._get_loop``; one call less
    per wait, so this class has no ``get_loop``).

    The kernel imports no asyncio (the core's rule): ``current_task(loop)`` answers the task
    running on ``loop`` or None, and ``cancelled_error`` is the exception a cancelled wait
    raises (``asyncio.CancelledError``). Woken without a value, the await's result is that of
    awaiting ``then()`` (None without ``then``). Woken in place, its one waiting task has taken
    the outcome, so :meth:`rearm` may make it pending again for the next wait.
    """

    __slots__ = ("_asyncio_future_blocking", "_cancel_message", "_cancelled", "_cancelled_error",
                 "_context", "_current_task", "_error", "_first", "_loop", "_more", "_reusable",
                 "_then", "_value", "_yielded", "pending")

    def __init__(self, loop: Any, current_task: Callable[[Any], object],
                 cancelled_error: type[BaseException],
                 then: Callable[[], Awaitable[Any]] | None = None) -> None:
        self._loop = loop
        self._current_task = current_task
        self._cancelled_error = cancelled_error
        self._then = then
        self._asyncio_future_blocking = False
        #: Not resolved yet (read-only: ``wake``, ``cancel`` and ``rearm`` change it).
        self.pending = True
        self._cancelled = False
        self._error: BaseException | None = None
        self._value: Any = None
        # The first done callback (the waiting task's wake-up) and its context, held apart
        # from any others (rare): no list and no tuple per wait.
        self._first: _Callback | None = None
        self._context: Context | None = None
        self._more: list[tuple[_Callback, Context | None]] = []
        self._reusable = False
        self._yielded = False  # an await has yielded it (a task waits on it: reusable)
        self._cancel_message: object = None

    def done(self) -> bool:
        return not self.pending

    def cancelled(self) -> bool:
        return self._cancelled

    def add_done_callback(self, fn: _Callback, *, context: Context | None = None) -> None:
        if not self.pending:
            self._loop.call_soon(fn, self, context=context)
        elif self._first is None:
            self._first, self._context = fn, context
        else:
            self._more.append((fn, context))

    def remove_done_callback(self, fn: _Callback) -> int:
        callbacks = self._take_callbacks()
        kept = [(f, c) for f, c in callbacks if f != fn]
        for f, c in kept:
            self.add_done_callback(f, context=c)
        return len(callbacks) - len(kept)

    def result(self) -> Any:
        if self._cancelled:
            raise self._cancel_error()
        if self._error is not None:
            raise self._error
        return self._value

    def exception(self) -> BaseException | None:
        if self._cancelled:
            raise self._cancel_error()
        return self._error

    def _cancel_error(self) -> BaseException:
        # As asyncio.Future: the message given to cancel() is the error's argument.
        if self._cancel_message is None:
            return self._cancelled_error()
        return self._cancelled_error(self._cancel_message)

    def cancel(self, msg: object = None) -> bool:
        if not self.pending:
            return False
        self.pending = False
        self._cancelled = True
        self._cancel_message = msg
        self._schedule()
        return True

    def wake(self, error: BaseException | None = None, value: Any = None) -> None:
        """Resolve (with ``error`` raised by the await, or ``value`` its result) and resume the
        waiting task: in place outside any task when it is the only callback, else through
        ``call_soon``. No effect once resolved."""
        if not self.pending:
            return
        self.pending = False
        self._error = error
        self._value = value
        fn = self._first
        if fn is not None and not self._more and self._current_task(self._loop) is None:
            self._first = None
            context = self._context
            # The task's wake-up reads the result before it runs the task any further, so the
            # task may already rearm this waiter while we are still in fn. Only a task that
            # awaited it (the await yielded it) does that; a callback added otherwise (gather,
            # wait_for given the waiter itself) may read the result later: no reuse then.
            self._reusable = self._yielded
            if context is None:
                fn(self)
            else:
                context.run(fn, self)
        else:
            self._schedule()

    def rearm(self, then: Callable[[], Awaitable[Any]] | None) -> Wakeup | None:
        """Pending again for the next wait (woken by ``then()`` when empty) and returned, if it
        was woken in place (its task has the outcome); else None: make a new one."""
        if not self._reusable:
            return None
        self.pending = True
        self._reusable = False
        self._yielded = False
        self._then = then
        self._error = self._value = None
        return self

    def _take_callbacks(self) -> list[tuple[_Callback, Context | None]]:
        """Every done callback, in the order added; none is left."""
        callbacks, self._more = self._more, []
        if self._first is not None:
            callbacks.insert(0, (self._first, self._context))
            self._first = self._context = None
        return callbacks

    def _schedule(self) -> None:
        for fn, context in self._take_callbacks():
            self._loop.call_soon(fn, self, context=context)

    def __await__(self) -> Generator[Any, None, Any]:
        if self.pending:
            self._asyncio_future_blocking = True
            self._yielded = True
            yield self
        if not self.pending and not self._cancelled and self._error is None:
            value = self._value
            if value is None and self._then is not None:
                return (yield from self._then().__await__())
            return value
        return self.result()  # raises

    __iter__ = __await__
