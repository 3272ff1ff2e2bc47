"""What every socket class needs between a connection's events and the application.

``MessageStream`` holds received messages until ``recv`` takes them, says when to stop and
resume reading (flow control: nothing buffers without bound), matches pongs to pings, and turns
the end of the connection into :class:`ConnectionClosedError`. Waiting — futures, conditions,
greenlet events — is the adapter's part; the stream only keeps the books. The ping registry holds
the adapter's waiter objects (``W``) so an adapter resolves exactly the ones the stream returns.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable
from typing import Generic, TypeVar

from ..errors import LocalProtocolError, RelayError, relay_error_for_close
from ..websocket import (
    BinaryMessage,
    CloseReceived,
    ConnectionClosed,
    Pong,
    TextMessage,
)

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_SIZE",
    "NORMAL_CLOSE_CODES",
    "ConnectionClosedError",
    "Message",
    "MessageStream",
    "RelayConnectionClosed",
    "check_max_queue",
]

Message = str | bytes
W = TypeVar("W")

#: Received messages held before the adapter stops reading.
DEFAULT_MAX_QUEUE = 16
#: Largest message accepted (bytes); bigger ones fail the connection with 1009.
DEFAULT_MAX_SIZE = 64 * 1024 * 1024
#: Seconds a closing socket waits for the peer before it drops TCP.
DEFAULT_CLOSE_TIMEOUT = 10.0
#: Close codes after which iterating over a socket simply ends: 1000 normal, 1001 going away,
#: 1005 no status (RFC 6455 §7.4.1).
NORMAL_CLOSE_CODES = frozenset({1000, 1001, 1005})


def check_max_queue(max_queue: int) -> int:
    """``max_queue`` if it is valid (at least 1); ``ValueError`` otherwise — raise it where the
    socket or server is configured, not at its first connection."""
    if max_queue < 1:
        raise ValueError(f"max_queue must be at least 1, not {max_queue!r}")
    return max_queue


class ConnectionClosedError(RelayError):
    """The WebSocket is closed: raised by ``recv`` / ``send`` / ``ping`` afterwards.

    ``code`` / ``reason`` are the close code and reason (1006: TCP ended without a closing
    handshake). ``ok`` is True for a normal end (1000, 1001, 1005). ``error`` is the typed relay
    error for an abnormal code (1008 → ``AuthorizationError``, others → ``ConnectionLostError``),
    ``None`` for 1000.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        text = f"WebSocket closed with {code}" + (f": {reason}" if reason else "")
        super().__init__(text, close_code=code, description=reason or None)
        self.code = code
        self.reason = reason
        self.error: RelayError | None = None if code == 1000 else relay_error_for_close(code,
                                                                                       reason)

    @property
    def ok(self) -> bool:
        """Whether this was a normal closure (1000, 1001 going away, or 1005 no status)."""
        return self.code in NORMAL_CLOSE_CODES


#: The name the asyncio adapter has always used.
RelayConnectionClosed = ConnectionClosedError


class MessageStream(Generic[W]):
    """Received messages, flow-control thresholds, pings awaiting pongs, and the close.

    Feed it every WebSocket event with :meth:`feed`. Then:

    * :meth:`pause_needed` is True once when ``max_queue`` messages wait (stop reading);
      :meth:`get` returns the next message and :meth:`resume_needed` is True once the queue is
      down to a quarter (read again);
    * :meth:`take_answered` returns the waiters of pings a pong answered, :meth:`take_abandoned`
      those the close left unanswered (fail them with :meth:`closed_error`).

    ``notice`` turns True whenever :meth:`feed` leaves work for those three (a pause due, a ping
    answered or abandoned); an adapter may clear it and skip the three calls while it is False.
    """

    __slots__ = ("_abandoned", "_answered", "_low", "_pause_due", "_pings", "_resume_due",
                 "close_received", "closed", "max_queue", "messages", "notice",
                 "reading_paused")

    def __init__(self, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        self.max_queue = check_max_queue(max_queue)
        self._low = max_queue // 4
        self.messages: collections.deque[Message] = collections.deque()
        self.reading_paused = False
        self._pause_due = False
        self._resume_due = False
        self.close_received: CloseReceived | None = None
        self.closed: ConnectionClosed | None = None
        self._pings: list[tuple[bytes, W]] = []
        self._answered: list[W] = []
        self._abandoned: list[W] = []
        self.notice = False

    # -- input -----------------------------------------------------------------------------

    def feed(self, events: Iterable[object]) -> bool:
        """Take a connection's events; True when a ``recv`` waiter should wake."""
        wake = False
        messages = self.messages
        for event in events:
            cls = type(event)
            if cls is BinaryMessage or cls is TextMessage:
                messages.append(event.data)  # type: ignore[attr-defined]
                wake = True
            elif cls is Pong:
                self._pong(event.payload)  # type: ignore[attr-defined]
                self.notice = True
            elif cls is CloseReceived:
                self.close_received = event  # type: ignore[assignment]
            elif cls is ConnectionClosed:
                self.closed = event  # type: ignore[assignment]
                self._abandoned.extend(w for _, w in self._pings)
                self._pings.clear()
                self.notice = True
                wake = True
        if len(messages) >= self.max_queue and not self.reading_paused:
            self.reading_paused = True
            self._pause_due = True
            self.notice = True
        return wake

    def _pong(self, payload: bytes) -> None:
        # A pong answers its ping and every earlier one (RFC 6455 §5.5.3 lets a peer answer
        # only the most recent ping).
        for index, (sent, _) in enumerate(self._pings):
            if sent == payload:
                answered = self._pings[: index + 1]
                del self._pings[: index + 1]
                self._answered.extend(w for _, w in answered)
                return

    # -- output ----------------------------------------------------------------------------

    def pause_needed(self) -> bool:
        """True once after the queue reached ``max_queue``: stop reading the transport."""
        due, self._pause_due = self._pause_due, False
        return due

    def resume_needed(self) -> bool:
        """True once after :meth:`get` took the queue down to a quarter: read again."""
        due, self._resume_due = self._resume_due, False
        return due

    def get(self) -> Message | None:
        """The next message; None when none waits and the connection is open.

        Raises :class:`ConnectionClosedError` once closed and every earlier message was taken.
        """
        messages = self.messages
        if messages:
            message = messages.popleft()
            if self.reading_paused and len(messages) <= self._low:
                self.reading_paused = False
                self._resume_due = True
            return message
        if self.closed is not None:
            raise self.closed_error()
        return None

    def take_answered(self) -> list[W]:
        """Waiters of pings answered since the last call."""
        if not self._answered:
            return []
        answered, self._answered = self._answered, []
        return answered

    def take_abandoned(self) -> list[W]:
        """Waiters of pings the close left unanswered (fail them with ``closed_error()``)."""
        if not self._abandoned:
            return []
        abandoned, self._abandoned = self._abandoned, []
        return abandoned

    # -- pings -----------------------------------------------------------------------------

    def add_ping(self, waiter: W, payload: bytes | None = None) -> bytes:
        """Register a ping's waiter; returns the payload to send (4 random bytes by default,
        so concurrent pings are told apart)."""
        data = os.urandom(4) if payload is None else bytes(payload)
        if any(sent == data for sent, _ in self._pings):
            raise LocalProtocolError("a ping with this payload is already waiting for its pong; "
                                     "use another payload or let one be chosen")
        self._pings.append((data, waiter))
        return data

    def drop_ping(self, waiter: W) -> None:
        """Forget a ping whose waiter was cancelled."""
        self._pings = [(p, w) for p, w in self._pings if w is not waiter]

    # -- the close -------------------------------------------------------------------------

    def closed_error(self) -> ConnectionClosedError:
        """The error for ``recv`` / ``send`` after the close (1006 while still closing)."""
        closed = self.closed
        if closed is not None:
            return ConnectionClosedError(closed.code, closed.reason)
        received = self.close_received
        if received is not None:
            return ConnectionClosedError(received.code, received.reason)
        return ConnectionClosedError(1006, "connection closing")

    def check_open(self, is_open: bool) -> None:
        """Raise :class:`ConnectionClosedError` unless the connection can still send."""
        if not is_open or self.closed is not None:
            raise self.closed_error()

    def __len__(self) -> int:
        return len(self.messages)

