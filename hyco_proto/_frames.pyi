"""Type stub shared by both frame kernels: ``_frames`` (Cython) and ``_frames_py`` (pure Python).

Both modules implement exactly this API; ``hyco_proto.frames`` picks one at import time.
"""

from collections.abc import Awaitable, Callable, Generator
from contextvars import Context
from typing import Any, Final

from typing_extensions import Buffer

OP_CONTINUATION: Final[int]
OP_TEXT: Final[int]
OP_BINARY: Final[int]
OP_CLOSE: Final[int]
OP_PING: Final[int]
OP_PONG: Final[int]
#: Scratch bytes ``Forwarder.feed_into`` needs before ``start`` (256).
FORWARD_HEADROOM: Final[int]

def apply_mask(data: Buffer, key: bytes, offset: int = 0) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` from phase ``offset`` (mod 4); return new bytes."""

def apply_mask_inplace(buffer: Buffer, key: bytes, offset: int = 0) -> None:
    """XOR a writable buffer in place with ``key`` starting at phase ``offset`` (mod 4)."""

def encode_header(
    opcode: int, length: int, fin: bool = True, rsv: int = 0, mask_key: bytes | None = None
) -> bytes:
    """The frame header for a payload of ``length`` bytes (mask key appended when given)."""

def encode_frame(
    opcode: int, payload: Buffer, fin: bool = True, rsv: int = 0, masked: bool = False
) -> bytes:
    """A whole frame. ``masked=True`` (client role) masks with a fresh random key."""

def encode_masked(opcode: int, payload: Buffer, fin: bool = True) -> tuple[bytes, bytes]:
    """A masked frame (fresh random key) as two objects: its header, and its masked payload
    exactly the payload's size. For large client messages: the copy is the size of a received
    message, so the allocator reuses their freed blocks (one header-plus-payload object is a
    few bytes bigger, fits none of them, and grows and shrinks the heap every message).
    Like ``encode_frame``, it applies no control-frame rules (size, FIN): callers do."""

def decode_header(
    data: Buffer, offset: int = 0
) -> tuple[bool, int, int, bytes | None, int, int] | None:
    """Parse a header at ``offset``: ``(fin, rsv, opcode, mask_key, payload_length,
    header_length)``, or ``None`` when ``data`` does not hold the whole header yet."""

class FrameDecoder:
    """Streaming RFC 6455 frame decoder.

    ``feed(data)`` returns chunks ``(opcode, payload, fin)`` as soon as payload bytes arrive:
    control frames come whole (``fin`` True); data frames may come in several chunks, with
    ``opcode`` the frame's own opcode (0 for continuations) and ``fin`` True only on the last
    chunk of a frame whose FIN bit is set, i.e. at the end of a message. A zero-length data
    frame yields one empty chunk. Payloads are unmasked.

    Violations stop the decoder: ``error_code`` becomes 1002 (protocol) or 1009 (too big) and
    ``error_reason`` says why; chunks decoded before the violation are still returned.
    """

    error_code: int
    error_reason: str

    def __init__(
        self,
        *,
        masked: bool,
        max_frame_size: int = 0,
        max_message_size: int = 0,
        allowed_rsv: int = 0,
        whole_binary: int = 0,
    ) -> None:
        """``masked=True`` in the server role (clients must mask), ``False`` in the client role
        (servers must not). Sizes of 0 mean no limit. ``allowed_rsv`` is the RSV bits an
        extension negotiated (none by default). A frame with opcode 2 (binary, a message's
        first frame) of at most ``whole_binary`` bytes comes out as one chunk once complete,
        unmasked into one bytes object as it arrives (no pieces to join); 0: none."""

    def feed(self, data: Buffer) -> list[tuple[int, bytes, bool]]: ...
    def feed_message(self, data: Buffer) -> list[tuple[int, bytes, bool]] | bytes | str:
        """``feed(data)``, except when nothing is held from earlier reads (no partial frame,
        no fragmented message, no error) and ``data`` is exactly one whole frame with FIN, no
        RSV bits and opcode 1 or 2 within the size limits: its payload alone, bytes for binary,
        str for text that is valid UTF-8 (not: the list, as ``feed`` gives it). No list and no
        tuple for the common message of one frame in one read."""
    def whole_slot(self, at_least: int = 1) -> Buffer | None:
        """Where the next bytes of the whole binary frame being assembled go, to receive into
        directly (``socket.recv_into(slot)``: no copy through a read buffer, and no read past
        the frame): a writable buffer of the frame's next payload bytes (Cython: all its rest,
        a window on the message's own bytes; Python: up to 256 KiB of it, in a buffer reused),
        still masked when they land. None when no such frame is partway, or fewer than
        ``at_least`` bytes remain. Asked again before :meth:`whole_received`, the same one.
        Report what was written with :meth:`whole_received`; ``feed`` takes it back unreported
        (``BufferError`` in Cython while a memoryview of it is open: nothing is consumed)."""
    def whole_received(self, nbytes: int) -> list[tuple[int, bytes, bool]]:
        """The first ``nbytes`` bytes of the slot were written: they are unmasked in place,
        and what ``feed`` would return for them comes back (the frame's chunk once complete,
        else ``[]``). The slot is then used up (Cython: it exports no more; ``BufferError``,
        nothing done, while a memoryview of it is open, since its bytes become the message).
        ``ValueError`` when no slot is out or ``nbytes`` is more than it holds."""
    @property
    def buffered(self) -> int:
        """Bytes held back: a partial header or a partial control frame, or the payload so far
        of a frame that comes out whole (``whole_binary``)."""

def check_close_payload(payload: Buffer) -> tuple[int, str, int, str]:
    """Parse a close frame body: ``(code, reason, error_code, error_reason)``. ``code`` is 1005
    for an empty body; ``error_code`` is 0, or 1002 (bad length or code) / 1007 (bad UTF-8)."""

class Forwarder:
    """One direction of a relayed pair: client frames in, the same frames for the other leg out.

    ``feed(data)`` returns the bytes to write to the other leg: every frame re-framed unmasked
    (FIN, RSV, opcode and length encoding preserved) in one pass, one copy per payload byte. Data
    frames stream (a header goes out as soon as it is parsed, its payload as it arrives), so
    memory stays bounded whatever the frame size; control frames pass whole. A close frame is
    checked (``check_close_payload``), forwarded, recorded in ``close_code`` / ``close_reason``
    and ends the direction. A violation stops it: ``error_code`` (1002 / 1007 / 1009) and
    ``error_reason`` are set and the bytes forwarded before the violation are returned.

    With ``validate_utf8`` (the default) the payload of a text message (opcode 1 and its
    continuations, unless RSV1 marks it compressed) is validated as UTF-8 while it streams: a
    code point may be split across chunks and frames; the first invalid byte stops the direction
    with 1007 (the bytes before it are forwarded: possibly part of a frame, so ``mid_frame``
    stays true), as does a message whose final frame ends inside a code point.
    """

    close_code: int
    close_reason: str
    error_code: int
    error_reason: str
    frames: int
    #: Data messages whose final frame's header has been forwarded (``frames`` counts every
    #: frame: fragments, pings, pongs and the close too).
    messages: int
    payload_bytes: int

    def __init__(
        self,
        *,
        masked: bool = True,
        max_frame_size: int = 0,
        allowed_rsv: int = 0,
        validate_utf8: bool = True,
    ) -> None:
        """``masked=True``: the source leg is a client (the relay's case). ``validate_utf8``:
        check text messages as they stream (see the class); binary messages are never looked
        at."""

    def feed(self, data: Buffer) -> bytes: ...
    def feed_into(self, buffer: Buffer, start: int, end: int = -1) -> tuple[int, int]:
        """``feed`` without a copy: re-frame the new bytes ``buffer[start:end]`` of a writable
        buffer in place and return ``(begin, stop)``, the output's place in it.

        ``buffer[:start]`` is scratch space (``start >= FORWARD_HEADROOM``): bytes held over from
        the previous call (a partial header or control frame) are put right before ``start``.
        Payloads are unmasked where they lie and moved down by the 4 bytes each header loses, so
        ``begin <= start`` and ``stop <= end``; the bytes after ``stop`` are not meaningful.
        Same results, counters and failures as ``feed`` on the same bytes; calls of both kinds
        may be mixed."""
    def relay(self, fd: int, buffer: Buffer, start: int,
              out_fd: int) -> tuple[int, int, int] | None:
        """A relayed leg's read and write in one call (POSIX: ``fd`` and ``out_fd`` are
        non-blocking sockets): one ``recv`` of socket ``fd`` into ``buffer[start:]`` (``start >=
        FORWARD_HEADROOM``; ``buffer[:start]`` is ``feed_into``'s scratch space), re-framed in
        place as ``feed_into(buffer, start, start + n)`` does, then, when the output is plain
        data (no close frame, no violation) and ``out_fd >= 0``, one ``send`` of it to
        ``out_fd``.

        Returns None when all of the output was sent (or, with ``out_fd >= 0``, there was
        none). Otherwise ``(n,
        begin, stop)``: ``n`` bytes were read (-1: none to read now; 0: end of stream) and
        ``buffer[begin:stop]`` is the output not sent: all of it after a close frame or a
        violation (``close_code`` / ``error_code``, as after ``feed_into``) or with ``out_fd <
        0``, the rest after a partial or failed send (the caller writes it through its
        transport, which meets a failure again). A failed read raises ``OSError`` (its
        subclass for the errno), as ``socket.recv_into`` does. The Cython kernel sends with
        ``MSG_NOSIGNAL``; the Python twin with ``os.write``, which relies on Python's default
        of ignoring ``SIGPIPE`` (a program that restores it dies on a closed peer)."""
    @property
    def mid_frame(self) -> bool:
        """The output is inside a data frame: nothing may be injected into it now."""
    @property
    def buffered(self) -> int:
        """Bytes held back: at most a partial header or a partial control frame."""

class Wakeup:
    """What a waiting asyncio ``recv`` awaits: a one-shot future that resumes its task at once.

    ``wake`` outside any task (a protocol callback) runs the waiting task's wake-up in place,
    in the task's context, when it is the only done callback; inside a task, or with more
    callbacks, they go through ``loop.call_soon``. The task sees the future protocol
    (``asyncio.isfuture``; the ``_loop`` attribute, no ``get_loop``). The kernel imports no
    asyncio: ``current_task(loop)`` answers the running task or None, and a cancelled wait
    raises ``cancelled_error()``. Woken without a value, the await's result is that of
    awaiting ``then()`` (None without ``then``). Cython: the await steps in C (``__await__``
    returns the waiter itself); one task awaits it at a time.
    """

    _asyncio_future_blocking: bool
    #: Not resolved yet (read-only).
    pending: bool

    def __init__(self, loop: Any, current_task: Callable[[Any], object],
                 cancelled_error: type[BaseException],
                 then: Callable[[], Awaitable[Any]] | None = None) -> None: ...
    def done(self) -> bool: ...
    def cancelled(self) -> bool: ...
    def add_done_callback(self, fn: Callable[[Any], object], *,
                          context: Context | None = None) -> None: ...
    def remove_done_callback(self, fn: Callable[[Any], object]) -> int: ...
    def result(self) -> Any: ...
    def exception(self) -> BaseException | None: ...
    def cancel(self, msg: object = None) -> bool: ...
    def wake(self, error: BaseException | None = None, value: Any = None) -> None:
        """Resolve (``error`` raised by the await, or ``value`` its result) and resume the
        waiting task. No effect once resolved."""
    def rearm(self, then: Callable[[], Awaitable[Any]] | None) -> Wakeup | None:
        """Pending again (``then`` for an empty wake) and returned, if it was woken in place
        (its task has the outcome); else None."""
    def __await__(self) -> Generator[Any, None, Any]: ...
    __iter__ = __await__
