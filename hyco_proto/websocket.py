"""Sans-IO WebSocket data phase (RFC 6455 §5-§7): messages, fragmentation, ping/pong, closing.

``WebSocketConnection`` follows the shape of websockets' ``Protocol`` because receiving can produce
output (pongs, close replies): feed it with ``receive_data`` / ``receive_eof``, then collect
``events_received()`` and ``data_to_send()``. A ``b""`` item in ``data_to_send()`` means "close the
TCP connection now" (a server closes TCP first, RFC 6455 §7.1.1). Bad peer input never raises: the
connection fails itself with the matching close code (1002 protocol, 1007 bad UTF-8, 1009 too big),
records ``error`` and ignores everything the peer sends afterwards (§7.1.7). Misuse by the caller
raises ``LocalProtocolError``.

Frames come from the kernel in ``hyco_proto.frames`` (Cython or pure Python), which already checks
RSV bits, opcodes, masking, control-frame rules, continuation order and size limits; this module
adds messages, UTF-8, the close handshake and the state machine.
"""

from __future__ import annotations

import codecs
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from .errors import LocalProtocolError, RemoteProtocolError
from .frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameDecoder,
    encode_frame,
    encode_header,
    encode_masked,
)

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "BinaryFragment",
    "BinaryMessage",
    "CloseReceived",
    "ConnectionClosed",
    "Event",
    "Ping",
    "Pong",
    "Role",
    "State",
    "TextMessage",
    "WebSocketConnection",
    "is_valid_close_code",
]


class Role(enum.Enum):
    """Which end of the connection we are: clients mask what they send, servers must not."""

    CLIENT = "client"
    SERVER = "server"


class State(enum.IntEnum):
    """Connection state.

    ``OPEN``: data flows both ways. ``CLOSING``: one close frame has passed (we sent one and wait
    for the peer's, or - with ``reply_to_close=False`` - the peer sent one and we have not replied
    yet). ``CLOSED``: both close frames passed, the connection failed, or TCP ended.
    """

    OPEN = 1
    CLOSING = 2
    CLOSED = 3


# State.OPEN costs a lookup through the enum's metaclass (about 70 ns on 3.11; a module global:
# 10): the per-message paths compare with this.
_OPEN = State.OPEN


@dataclass(frozen=True, slots=True)
class TextMessage:
    """A whole text message (fragments reassembled, UTF-8 already validated)."""

    data: str


@dataclass(frozen=True, slots=True)
class BinaryMessage:
    """A whole binary message (fragments reassembled)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class BinaryFragment:
    """A piece of a binary message, delivered as it arrives (``stream_binary=True`` only).

    A message is the fragments up to and including the one with ``fin``; a message sent in one
    frame is one fragment with ``fin`` set. ``data`` may be empty.
    """

    data: bytes
    fin: bool


@dataclass(frozen=True, slots=True)
class Ping:
    """The peer sent a ping; with ``auto_pong`` the pong is already queued."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """The peer sent a pong (solicited or not)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The peer sent a close frame; ``code`` is 1005 when the frame carried no code."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """Terminal event, emitted exactly once.

    ``code``/``reason`` are the peer's close frame after a clean closing handshake, the code we
    failed the connection with, or 1006 when TCP ended without a closing handshake. ``error`` is set
    when the peer broke the protocol.
    """

    code: int
    reason: str
    error: RemoteProtocolError | None


Event: TypeAlias = (
    TextMessage | BinaryMessage | BinaryFragment | Ping | Pong | CloseReceived | ConnectionClosed
)
#: A whole data message's payload: str for text, bytes for binary.
Message: TypeAlias = str | bytes

# Close codes a close frame may carry (RFC 6455 §7.4.1, §7.4.2; 1012-1014 registered with IANA
# later). 1004 is reserved; 1005, 1006 and 1015 must never appear on the wire; 1016-2999 are
# unassigned and 5000+ undefined.
_MAX_CONTROL_PAYLOAD = 125
_NO_STATUS = 1005
_ABNORMAL = 1006


def is_valid_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame (RFC 6455 §7.4, IANA registry)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def _encode_close(code: int, reason: str) -> bytes:
    """Close frame payload: empty for 1005 ("no status"), else the 2-byte code plus reason."""
    if code == _NO_STATUS:
        return b""
    return code.to_bytes(2, "big") + reason.encode("utf-8")


def _truncate_reason(reason: str) -> str:
    """Cut a reason to 123 UTF-8 bytes (control payloads are ≤ 125 bytes, RFC 6455 §5.5)."""
    raw = reason.encode("utf-8", "replace")
    if len(raw) <= 123:
        return reason
    return raw[:123].decode("utf-8", "ignore")


# Bytes and str payloads at least this big are queued as a separate buffer after their header
# (server role only; clients must mask, which copies anyway) so large sends are not copied.
_PASSTHROUGH = 16384
# Binary frames up to this size are assembled in place by the decoder (``whole_binary``): its
# bytes object is allocated at the frame's header, so this bounds what a peer that announces a
# frame and stops can make us reserve (untouched pages: address space, not memory); bigger
# frames (and messages in several frames) arrive in pieces, joined at the end. One object per
# message halves the copies of a large message (1 MiB echo, server CPU per round trip 340 ->
# 259 us). The allocator keeps reusing the freed blocks as long as what we allocate per message
# is the same size: hence a client's large frames are sent as header and masked payload
# (``encode_masked``); one object of both, 14 bytes bigger, fitted no freed block, and glibc grew
# and trimmed its heap every message (a relayed 1 MiB echo: 240 page faults per round trip).
_WHOLE = 16 * 1024 * 1024


class WebSocketConnection:
    """One WebSocket connection after the opening handshake, without I/O.

    Args:
        role: ``Role.CLIENT`` masks every frame it sends and requires unmasked frames;
            ``Role.SERVER`` the opposite (RFC 6455 §5.1).
        max_message_size: refuse bigger messages with 1009 (``None``: no limit).
        max_frame_size: refuse bigger data frames with 1009 (``None``: no limit).
        max_text_size: refuse text messages bigger than this (UTF-8 bytes) with 1009, counted
            as their bytes arrive (``None``: only ``max_message_size`` applies). For sockets
            whose binary messages may be large but whose text messages are small commands.
        auto_pong: answer every ping with a pong carrying its payload (§5.5.2).
        reply_to_close: answer the peer's close frame at once (RFC behaviour). With ``False`` the
            connection reports ``CloseReceived`` and lets the owner keep sending until it calls
            ``send_close`` - how port bridges carry a TCP half-close (azbridge).
        trailing_data: bytes that arrived with the opening handshake (h11 ``trailing_data``).
        stream_binary: report binary messages frame by frame as :class:`BinaryFragment` instead
            of reassembled :class:`BinaryMessage` (relayed HTTP bodies stream without being
            held whole; ``max_message_size`` still bounds the whole message).
    """

    __slots__ = (
        "_auto_pong",
        "_bin_parts",
        "_client",
        "_close_received",
        "_close_sent",
        "_closed_emitted",
        "_decoder",
        "_discard",
        "_eof_received",
        "_eof_sent",
        "_events",
        "_max_text",
        "_msg_opcode",
        "_out",
        "_received_code",
        "_received_reason",
        "_reply_to_close",
        "_send_fragmented",
        "_stream_binary",
        "_text_len",
        "_text_parts",
        "_utf8",
        "close_code",
        "close_reason",
        "error",
        "role",
        "state",
    )

    def __init__(
        self,
        role: Role,
        *,
        max_message_size: int | None = None,
        max_frame_size: int | None = None,
        auto_pong: bool = True,
        reply_to_close: bool = True,
        trailing_data: bytes = b"",
        stream_binary: bool = False,
        max_text_size: int | None = None,
    ) -> None:
        if not isinstance(role, Role):
            raise LocalProtocolError(f"role must be Role.CLIENT or Role.SERVER, not {role!r}")
        for name, limit in (("max_message_size", max_message_size),
                            ("max_frame_size", max_frame_size),
                            ("max_text_size", max_text_size)):
            if limit is not None and limit < 0:
                raise LocalProtocolError(f"{name} must be None (no limit) or >= 0, got {limit}")
        self.role = role
        self._client = role is Role.CLIENT
        # A server requires masked frames, a client unmasked ones (RFC 6455 §5.1).
        self._decoder = FrameDecoder(
            masked=not self._client,
            max_frame_size=max_frame_size or 0,
            max_message_size=max_message_size or 0,
            # A binary message in one frame is unmasked into one bytes object as it arrives,
            # not in pieces joined at the end (streamed messages stay in pieces).
            whole_binary=0 if stream_binary else min(max_message_size or _WHOLE, _WHOLE),
        )
        self._auto_pong = auto_pong
        self._reply_to_close = reply_to_close
        self._stream_binary = stream_binary
        self._send_fragmented = False  # a binary message sent in parts is under way
        self.state = State.OPEN
        #: Close code of the ended connection (see ``ConnectionClosed.code``); None while open.
        self.close_code: int | None = None
        self.close_reason = ""
        #: The peer's protocol violation, if the connection failed because of one.
        self.error: RemoteProtocolError | None = None
        self._events: list[Event] = []
        self._out: list[bytes] = []
        self._msg_opcode = 0  # opcode of the data message being reassembled; 0 = none
        self._text_parts: list[str] = []
        self._max_text = max_text_size or 0
        self._text_len = 0  # bytes of the text message being reassembled
        self._bin_parts: list[bytes] = []
        self._utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        self._discard = False  # ignore all further peer input (after its close, or a failure)
        self._close_sent = False
        self._close_received = False
        self._received_code = _NO_STATUS
        self._received_reason = ""
        self._eof_received = False
        self._eof_sent = False
        self._closed_emitted = False
        if trailing_data:
            self.receive_data(trailing_data)

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer. Never raises for bad input; see ``events_received``.
        (Cython kernel: ``BufferError``, nothing consumed, while a memoryview of a
        :meth:`payload_buffer` is still open; release it first.)"""
        if self._discard or not data:
            return
        self._receive_chunks(self._decoder.feed(data))

    def receive_message(self, data: bytes) -> Message | None:
        """``receive_data`` for the common case: when ``data`` completes exactly one data
        message sent in one frame, nothing else, and no event waits in ``events_received()``,
        the message (str for text, bytes for binary) is returned instead of queued as an event.
        Otherwise None, with everything queued as ``receive_data`` would (a text message that
        is not valid UTF-8 fails the connection there)."""
        if self._discard or not data:
            return None
        if self._msg_opcode or self._events:
            self._receive_chunks(self._decoder.feed(data))
            return None
        # The read's one message whole (one frame alone in it), or feed()'s chunks.
        got = self._decoder.feed_message(data)
        message: Message
        if isinstance(got, list):
            if len(got) != 1 or self._decoder.error_code or not got[0][2]:
                self._receive_chunks(got)
                return None
            opcode, payload, _ = got[0]  # a frame's last bytes, its start read before
            if opcode == OP_BINARY:
                message = payload
            elif opcode == OP_TEXT:
                try:
                    message = payload.decode("utf-8")
                except UnicodeDecodeError:
                    self._receive_chunks(got)  # fails it
                    return None
            else:
                self._receive_chunks(got)
                return None
        else:
            message = got
        if type(message) is bytes:
            if self._stream_binary:
                self._receive_chunks([(OP_BINARY, message, True)])
                return None
        elif self._max_text:
            text: str = message  # type: ignore[assignment]
            # Its size in UTF-8 bytes: the length itself when ASCII (isascii() reads a flag).
            size = len(text) if text.isascii() else len(text.encode("utf-8"))
            if size > self._max_text:
                self._fail_text_size(size)  # as _receive_chunks fails it
                return None
        return message

    def payload_buffer(self, at_least: int = 64 * 1024) -> Buffer | None:
        """Where the next bytes of a large binary frame can be received directly, when one is
        partway and at least ``at_least`` of its bytes are still to come; else None.

        A writable buffer: pass it to ``socket.recv_into``; it holds only the frame's bytes
        (all of its rest, or in the pure-Python kernel up to 256 KiB of it), so nothing past
        the frame is read. Then report what the read returned with :meth:`payload_received`
        (``recv_into`` returning 0 is the end of the stream: call ``receive_eof``). One
        buffer per read: asking again before reporting gives the same one; after the report
        it is used up (Cython refuses to export it again), so ask again for the next read.
        ``receive_data`` / ``receive_message`` take it back unreported (its bytes are
        dropped). The point: a large frame's bytes land where its message is assembled, with
        no copy through a read buffer and fewer reads. Offered for binary frames of at most
        16 MiB or ``max_message_size``, never with ``stream_binary``; a connection in the
        middle of such a frame holds its bytes object (Cython: reserved at the header)."""
        if self._discard:
            return None
        return self._decoder.whole_slot(at_least)

    def payload_received(self, nbytes: int) -> None:
        """``nbytes`` were received into the last :meth:`payload_buffer`: as
        ``receive_data`` with them (the message is queued once its frame is complete).

        ``LocalProtocolError`` when no buffer is out or ``nbytes`` is more than it holds;
        (Cython kernel) ``BufferError``, nothing done, while a memoryview of the buffer is
        still open: its bytes become the message. After the connection failed or the peer's
        close, they are accepted and ignored."""
        try:
            chunks = self._decoder.whole_received(nbytes)
        except ValueError as exc:
            if self._discard:
                return
            raise LocalProtocolError(f"payload_received({nbytes}): {exc}") from None
        if chunks and not self._discard:
            self._receive_chunks(chunks)

    def _receive_chunks(self, chunks: list[tuple[int, bytes, bool]]) -> None:
        """The decoder's chunks as events (and output: pongs, close replies, failures)."""
        events = self._events
        for opcode, payload, fin in chunks:
            if opcode < 8:
                msg_opcode = self._msg_opcode
                if not msg_opcode:
                    if fin:
                        # The common case: a whole message in one chunk, no reassembly.
                        if opcode == OP_TEXT:
                            if self._max_text and len(payload) > self._max_text:
                                self._fail_text_size(len(payload))
                                return
                            try:
                                events.append(TextMessage(payload.decode("utf-8")))
                            except UnicodeDecodeError:
                                self._fail_utf8()
                                return
                        elif self._stream_binary:
                            events.append(BinaryFragment(payload, True))
                        else:
                            events.append(BinaryMessage(payload))
                        continue
                    msg_opcode = self._msg_opcode = opcode
                    if opcode == OP_TEXT:
                        self._utf8.reset()
                        self._text_len = 0
                if msg_opcode == OP_TEXT:
                    if self._max_text:
                        self._text_len += len(payload)
                        if self._text_len > self._max_text:
                            self._fail_text_size(self._text_len)
                            return
                    # Decode as we go so invalid UTF-8 fails the connection at the first bad
                    # byte, even inside an unfinished frame (§8.1; Autobahn 6.4.x strict).
                    try:
                        text = self._utf8.decode(payload, fin)
                    except UnicodeDecodeError:
                        self._fail_utf8()
                        return
                    if not fin:
                        # CPython's decoder holds back "ED A0..BF" (a surrogate's first two
                        # bytes) until the third byte; no third byte can make it valid.
                        pending = self._utf8.getstate()[0]
                        if len(pending) > 1 and pending[0] == 0xED and pending[1] >= 0xA0:
                            self._fail_utf8()
                            return
                    if text:
                        self._text_parts.append(text)
                    if fin:
                        self._msg_opcode = 0
                        events.append(TextMessage("".join(self._text_parts)))
                        self._text_parts.clear()
                elif self._stream_binary:
                    if fin:
                        self._msg_opcode = 0
                    events.append(BinaryFragment(payload, fin))
                else:
                    if payload:
                        self._bin_parts.append(payload)
                    if fin:
                        self._msg_opcode = 0
                        parts = self._bin_parts
                        whole = parts[0] if len(parts) == 1 else b"".join(parts)
                        events.append(BinaryMessage(whole))
                        parts.clear()
            elif opcode == OP_PING:
                events.append(Ping(payload))
                # §5.5.2: answer with the same payload; not after our own close (§5.5.1).
                if self._auto_pong and not self._close_sent:
                    self._out.append(encode_frame(OP_PONG, payload, masked=self._client))
            elif opcode == OP_PONG:
                events.append(Pong(payload))
            else:  # OP_CLOSE: everything after it is ignored (§5.5.1, §1.4)
                self._receive_close(payload)
                return
        if self._decoder.error_code:
            code = self._decoder.error_code
            reason = self._decoder.error_reason
            self._fail_remote(RemoteProtocolError(reason, close_code=code), code)

    def receive_eof(self) -> None:
        """The peer closed its side of TCP. Idempotent."""
        if self._eof_received:
            return
        self._eof_received = True
        self._discard = True
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            if self._close_received:
                self._closed(self._received_code, self._received_reason, None)
            else:
                # §7.1.5: no close frame received means "1006", reported locally only.
                self._closed(_ABNORMAL, "TCP connection closed without a closing handshake", None)
        if not self._eof_sent:
            self._send_eof()

    # ------------------------------------------------------------------ output

    def events_received(self) -> list[Event]:
        """Events parsed since the last call, oldest first."""
        events = self._events
        self._events = []
        return events

    def data_to_send(self) -> list[bytes]:
        """Buffers to write, in order, since the last call; ``b""`` means close TCP now."""
        out = self._out
        self._out = []
        return out

    def close_expected(self) -> bool:
        """Whether the peer is expected to close TCP soon (arm a close timer, then drop it).

        True once we have sent a close frame (or failed the connection) until the peer's TCP close
        arrives: a server waits for the client's FIN after closing first, a client waits for the
        server to close TCP (§7.1.1).
        """
        return self._close_sent and not self._eof_received

    # ------------------------------------------------------------------ sending

    def _check_can_send(self, what: str) -> None:
        if self._close_sent or self.state is State.CLOSED:
            raise LocalProtocolError(
                f"cannot {what}: the connection is {self.state.name} "
                f"({'close frame already sent' if self._close_sent else 'connection ended'}); "
                "stop sending once you have called send_close() or seen ConnectionClosed"
            )

    def _send_data(self, opcode: int, payload: bytes) -> None:
        if self._send_fragmented:
            raise LocalProtocolError(
                "a binary message sent with send_binary_part() is unfinished; end it with "
                "fin=True before sending another message (RFC 6455 §5.4)")
        if self._client:
            if len(payload) >= _PASSTHROUGH:
                self._out.extend(encode_masked(opcode, payload))  # see _WHOLE
            else:
                self._out.append(encode_frame(opcode, payload, masked=True))
        elif len(payload) >= _PASSTHROUGH:
            # Header and payload as two buffers: no copy of a large payload.
            self._out.append(encode_header(opcode, len(payload)))
            self._out.append(payload)
        else:
            self._out.append(encode_frame(opcode, payload))

    def send_text(self, data: str) -> None:
        """Queue a text message."""
        if not isinstance(data, str):
            raise LocalProtocolError(
                f"send_text() takes str, not {type(data).__name__}; "
                "decode it first or use send_binary() for bytes"
            )
        self._check_can_send("send a text message")
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise LocalProtocolError(
                "send_text() needs valid Unicode (no lone surrogates); "
                "fix the string or send it with send_binary()"
            ) from exc
        self._send_data(OP_TEXT, raw)

    def frame_message(self, data: Message) -> bytes | None:
        """``send_binary`` / ``send_text`` for the common case: a bytes or str message under
        16 KiB while nothing waits in ``data_to_send()`` and the connection can send comes back
        as its frame, for the caller to write at once instead of collecting it from
        ``data_to_send()``. Otherwise None, and the message is queued (or refused) as
        ``send_binary`` / ``send_text`` would."""
        if (not self._out and not self._close_sent and self.state is _OPEN
                and not self._send_fragmented):
            cls = type(data)
            # (encode_frame's arguments by position: no keywords to parse per message)
            if cls is bytes:
                if len(data) < _PASSTHROUGH:
                    return encode_frame(OP_BINARY, data, True, 0, self._client)
            elif cls is str and len(data) < _PASSTHROUGH // 4:  # at most 4 bytes per char
                try:
                    raw = data.encode("utf-8")  # type: ignore[union-attr]
                except UnicodeEncodeError:
                    pass  # refused below, as send_text does
                else:
                    return encode_frame(OP_TEXT, raw, True, 0, self._client)
        if isinstance(data, str):
            self.send_text(data)
        else:
            self.send_binary(data)
        return None

    def send_binary(self, data: bytes) -> None:
        """Queue a binary message: bytes, bytearray or memoryview (copied if mutable)."""
        if (type(data) is bytes and not self._client and not self._close_sent
                and self.state is _OPEN and not self._send_fragmented
                and len(data) < _PASSTHROUGH):
            # The common server case, with the checks below in one test.
            self._out.append(encode_frame(OP_BINARY, data))
            return
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise LocalProtocolError(
                    f"send_binary() takes bytes, bytearray or memoryview, not "
                    f"{type(data).__name__}; use send_text() for str"
                )
            data = bytes(data)
        self._check_can_send("send a binary message")
        self._send_data(OP_BINARY, data)

    def send_binary_part(self, data: bytes | bytearray | memoryview, fin: bool) -> None:
        """Queue one fragment of a binary message (RFC 6455 §5.4); ``fin`` ends the message.

        A message can thus be sent as it is produced, without holding it whole. Control frames
        may go between fragments; other data messages may not (``LocalProtocolError``).
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise LocalProtocolError(
                f"send_binary_part() takes bytes, bytearray or memoryview, not "
                f"{type(data).__name__}")
        self._check_can_send("send a binary fragment")
        opcode = OP_CONTINUATION if self._send_fragmented else OP_BINARY
        self._send_fragmented = not fin
        payload = bytes(data)
        if self._client:
            if len(payload) >= _PASSTHROUGH:
                self._out.extend(encode_masked(opcode, payload, fin))  # see _WHOLE
            else:
                self._out.append(encode_frame(opcode, payload, fin=fin, masked=True))
        elif len(payload) >= _PASSTHROUGH:
            self._out.append(encode_header(opcode, len(payload), fin))
            self._out.append(payload)
        else:
            self._out.append(encode_frame(opcode, payload, fin=fin))

    def _control_payload(self, payload: bytes, what: str) -> bytes:
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise LocalProtocolError(f"{what} payload must be bytes, not {type(payload).__name__}")
        payload = bytes(payload)
        if len(payload) > _MAX_CONTROL_PAYLOAD:
            raise LocalProtocolError(
                f"{what} payload is {len(payload)} bytes; control frames carry at most 125 "
                "(RFC 6455 §5.5): send a shorter payload"
            )
        return payload

    def send_ping(self, payload: bytes = b"") -> None:
        """Queue a ping (payload ≤ 125 bytes)."""
        payload = self._control_payload(payload, "ping")
        self._check_can_send("send a ping")
        self._out.append(encode_frame(OP_PING, payload, masked=self._client))

    def send_pong(self, payload: bytes = b"") -> None:
        """Queue a pong (payload ≤ 125 bytes), e.g. to answer pings when ``auto_pong`` is off."""
        payload = self._control_payload(payload, "pong")
        self._check_can_send("send a pong")
        self._out.append(encode_frame(OP_PONG, payload, masked=self._client))

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        """Start (or, after ``CloseReceived`` with ``reply_to_close=False``, finish) the closing
        handshake. ``code=1005`` sends a close frame without a code (reason must be empty)."""
        self._check_can_send("send a close frame")
        payload = self._validate_close(code, reason)
        self._out.append(encode_frame(OP_CLOSE, payload, masked=self._client))
        self._close_sent = True
        if self._close_received:
            self._both_closed()
        else:
            self.state = State.CLOSING

    def fail(self, code: int, reason: str = "") -> None:
        """Fail the connection (§7.1.7): send a close frame with ``code`` unless one was already
        sent (``code=1006`` sends none), close TCP (server) and end. No-op once closed."""
        if self.state is State.CLOSED:
            return
        if code != _ABNORMAL:
            self._validate_close(code, reason)
        self._fail(code, reason, None)

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _validate_close(code: int, reason: str) -> bytes:
        if not isinstance(code, int) or isinstance(code, bool):
            raise LocalProtocolError(f"close code must be an int, not {type(code).__name__}")
        if not isinstance(reason, str):
            raise LocalProtocolError(f"close reason must be str, not {type(reason).__name__}")
        if code == _NO_STATUS:
            if reason:
                raise LocalProtocolError(
                    "a close frame without a code (1005) cannot carry a reason; "
                    "pass a code such as 1000"
                )
            return b""
        if not is_valid_close_code(code):
            raise LocalProtocolError(
                f"close code {code} may not be sent (RFC 6455 §7.4): use 1000-1003, 1007-1014, "
                "3000-4999, or 1005 for a close frame without a code"
            )
        try:
            payload = _encode_close(code, reason)
        except UnicodeEncodeError as exc:
            raise LocalProtocolError("close reason must be valid Unicode") from exc
        if len(payload) > _MAX_CONTROL_PAYLOAD:
            raise LocalProtocolError(
                f"close reason is {len(payload) - 2} bytes in UTF-8; at most 123 fit in a close "
                "frame (RFC 6455 §5.5): shorten it"
            )
        return payload

    def _send_eof(self) -> None:
        self._eof_sent = True
        self._out.append(b"")

    def _closed(self, code: int, reason: str, error: RemoteProtocolError | None) -> None:
        """Record the end of the connection and emit ``ConnectionClosed`` once."""
        self.state = State.CLOSED
        if self._closed_emitted:
            return
        self._closed_emitted = True
        self.close_code = code
        self.close_reason = reason
        if error is not None:
            self.error = error
        self._msg_opcode = 0
        self._text_parts.clear()
        self._bin_parts.clear()
        self._events.append(ConnectionClosed(code, reason, error))

    def _both_closed(self) -> None:
        """Both close frames have passed: a server closes TCP first (§7.1.1); a client waits
        for the server's FIN (``close_expected()``)."""
        self._discard = True
        if not self._client and not self._eof_sent:
            self._send_eof()
        self._closed(self._received_code, self._received_reason, None)

    def _receive_close(self, payload: bytes) -> None:
        # §5.5.1: a close body is empty or a 2-byte code followed by a UTF-8 reason.
        n = len(payload)
        if n == 0:
            code, reason = _NO_STATUS, ""
        elif n == 1:
            self._fail_remote(RemoteProtocolError(
                "close frame with a 1-byte payload (a close body starts with a 2-byte code)",
                close_code=1002), 1002)
            return
        else:
            code = int.from_bytes(payload[:2], "big")
            if not is_valid_close_code(code):
                self._fail_remote(RemoteProtocolError(
                    f"close frame with invalid close code {code} (RFC 6455 §7.4)",
                    close_code=1002), 1002)
                return
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                self._fail_remote(RemoteProtocolError(
                    "close reason is not valid UTF-8", close_code=1007), 1007)
                return
        self._close_received = True
        self._received_code = code
        self._received_reason = reason
        self._discard = True
        self._events.append(CloseReceived(code, reason))
        if self._close_sent:
            self._both_closed()
        elif self._reply_to_close:
            # §5.5.1: reply with a close frame, echoing the code (no code if none was sent).
            self._out.append(
                encode_frame(OP_CLOSE, _encode_close(code, ""), masked=self._client)
            )
            self._close_sent = True
            self._both_closed()
        else:
            self.state = State.CLOSING

    def _fail_text_size(self, size: int) -> None:
        self._fail_remote(RemoteProtocolError(
            f"text message of {size}+ bytes exceeds the limit of {self._max_text}",
            close_code=1009), 1009)

    def _fail_utf8(self) -> None:
        self._fail_remote(RemoteProtocolError(
            "invalid UTF-8 in a text message (RFC 6455 §8.1)", close_code=1007), 1007)

    def _fail_remote(self, error: RemoteProtocolError, code: int) -> None:
        self._fail(code, error.message, error)

    def _fail(self, code: int, reason: str, error: RemoteProtocolError | None) -> None:
        # §7.1.7: send a close frame if possible, then close TCP; process nothing more.
        self._discard = True
        reason = _truncate_reason(reason)
        sent_frame = False
        if not self._close_sent and code != _ABNORMAL:
            self._out.append(
                encode_frame(OP_CLOSE, _encode_close(code, reason), masked=self._client)
            )
            self._close_sent = True
            sent_frame = True
        # A server closes TCP at once; a client that sent a close frame waits for the server to
        # close TCP (``close_expected()``), else it closes TCP itself.
        if not self._eof_sent and (not self._client or not sent_frame):
            self._send_eof()
        self._closed(code, reason, error)
