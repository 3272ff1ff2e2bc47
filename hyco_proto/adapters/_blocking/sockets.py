"""The application's WebSocket in the blocking adapters: one connection object, one reader.

A :class:`WebSocket` runs a :class:`~hyco_proto.drivers.connection.ClientConnection` (``connect``,
relayed sockets) or :class:`~hyco_proto.drivers.connection.ServerConnection` (``serve``) over a
connected socket and a :class:`~hyco_proto.drivers.stream.MessageStream`:

* one reader worker feeds the socket's bytes to the connection and the stream; it stops reading
  while the stream says ``reading_paused`` (``max_queue`` messages wait) and goes on once
  ``recv`` has taken the queue down to a quarter, so memory stays bounded;
* everything the connection wants sent (frames, automatic pongs, close replies) goes through one
  FIFO outbox, written by whoever holds the write lock, so frames never interleave and a
  ``send`` returns once its frame is with the kernel (backpressure: ``sendall``);
* ``close()`` runs the closing handshake and waits at most ``close_timeout`` for TCP to close,
  then drops it; the reader closes the socket when it ends.

Every wait is bounded: loops wait in slices of at most :data:`WAIT_SLICE` and re-check state.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

from ...drivers.connection import ClientConnection, ServerConnection
from ...drivers.relayed import RelayedInfo
from ...drivers.stream import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_SIZE,
    ConnectionClosedError,
    Message,
    MessageStream,
)
from ...drivers.view import SocketView
from ...listener import ConnectionRequested
from .net import RECV_SIZE, shutdown, write_chunks
from .runtime import EventLike, Runtime, Worker

__all__ = ["DEFAULT_MAX_QUEUE", "DEFAULT_MAX_SIZE", "WAIT_SLICE", "PongWaiter",
           "RelayedWebSocket", "WebSocket", "run_handler", "wait_until"]

logger = logging.getLogger("hyco_proto.adapters")

#: The longest single wait; longer waits loop and re-check (no wait is unbounded).
WAIT_SLICE = 1.0


def wait_until(rt: Runtime, event: EventLike, timeout: float | None) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds (None: until set), in bounded slices."""
    if timeout is None:
        while not event.wait(WAIT_SLICE):
            pass
        return True
    deadline = rt.monotonic() + timeout
    while True:
        left = deadline - rt.monotonic()
        if left <= 0:
            return event.is_set()
        if event.wait(min(left, WAIT_SLICE)):
            return True


class PongWaiter:
    """What :meth:`WebSocket.ping` returns: an event set when the pong arrives.

    ``wait(timeout)`` returns True once the pong came, False after ``timeout``, and raises
    :class:`ConnectionClosedError` when the connection closed before the pong. ``latency`` is
    the round trip in seconds once answered.
    """

    __slots__ = ("_event", "_rt", "error", "latency", "sent_at")

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._event = rt.event()
        self.sent_at = rt.monotonic()
        self.latency: float | None = None
        self.error: ConnectionClosedError | None = None

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        if not wait_until(self._rt, self._event, timeout):
            return False
        if self.error is not None:
            raise self.error
        return True

    def _resolve(self, error: ConnectionClosedError | None) -> None:
        if error is None:
            self.latency = self._rt.monotonic() - self.sent_at
        self.error = error
        self._event.set()


class WebSocket(SocketView):
    """A WebSocket connection: ``send``, ``recv(timeout=None)``, iteration, ``ping``, ``close``.

    Made by ``connect`` (client), handed to a ``serve`` handler (server: ``request`` is the
    client's :class:`~hyco_proto.handshake.HandshakeRequest`), or a :class:`RelayedWebSocket`.
    Usable as a context manager (closes with 1000 on exit).
    """

    def __init__(self, runtime: Runtime, sock: Any,
                 connection: ClientConnection | ServerConnection, *,
                 events: Sequence[object] = (),
                 max_queue: int = DEFAULT_MAX_QUEUE, close_timeout: float = 10.0,
                 start_reader: bool = True) -> None:
        rt = runtime
        self._rt = rt
        self._sock = sock
        self._conn = connection
        self._server = isinstance(connection, ServerConnection)
        self._stream: MessageStream[PongWaiter] = MessageStream(max_queue)
        self.close_timeout = close_timeout
        self._lock = rt.lock()  # the connection, the stream and the outbox
        self._write_lock = rt.lock()  # held while writing: one writer at a time, FIFO
        self._outbox: list[bytes] = []
        self._readable = rt.event()
        self._resume = rt.event()
        self._done = rt.event()  # the reader has ended and closed the socket
        self._tcp_ended = False
        self._write_error: OSError | None = None
        self._closing = False
        self._close_armed = False
        self._on_done: list[Callable[[WebSocket], None]] = []
        #: The worker reading this socket (set by whoever started it).
        self._reader: Worker | None = None
        self._receive(None, events)
        if start_reader:
            self._reader = rt.spawn(self._read_loop, f"hyco-{rt.name}-reader")

    # -- receiving -------------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> Message:
        """The next message (str for text, bytes for binary).

        ``TimeoutError`` when none came within ``timeout`` seconds; :class:`ConnectionClosedError`
        once the connection is closed and every message received before has been returned.
        """
        rt = self._rt
        deadline = None if timeout is None else rt.monotonic() + timeout
        while True:
            with self._lock:
                message = self._stream.get()
                if message is None:
                    self._readable.clear()
                    resume = False
                else:
                    resume = self._stream.resume_needed()
            if message is not None:
                if resume:
                    self._resume.set()
                return message
            wait = WAIT_SLICE
            if deadline is not None:
                left = deadline - rt.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no message within {timeout:g} s")
                wait = min(left, wait)
            self._readable.wait(wait)

    def __iter__(self) -> Iterator[Message]:
        """Messages until a normal close (1000 / 1001 / 1005); other close codes raise."""
        while True:
            try:
                yield self.recv()
            except ConnectionClosedError as exc:
                if exc.ok:
                    return
                raise

    # -- sending ---------------------------------------------------------------------------

    def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send a text (str) or binary (bytes-like) message; returns once it is written.

        Raises :class:`ConnectionClosedError` (with the close code) once the closing handshake
        has begun or the connection is gone, and ``TypeError`` for anything but str or
        bytes-like.
        """
        with self._lock:
            self._check_open()
            if isinstance(message, str):
                self._conn.send_text(message)
            elif isinstance(message, (bytes, bytearray, memoryview)):
                self._conn.send_binary(message)
            else:
                raise TypeError(f"send() takes str or bytes, not {type(message).__name__}")
            self._outbox.extend(self._conn.data_to_send())
        self._flush(True)
        self._raise_if_broken()

    def ping(self, payload: bytes | None = None) -> PongWaiter:
        """Send a ping; the returned :class:`PongWaiter` is set when its pong arrives.

        ``payload`` defaults to 4 random bytes, so concurrent pings are told apart.
        """
        waiter = PongWaiter(self._rt)
        with self._lock:
            self._check_open()
            data = self._stream.add_ping(waiter, payload)
            try:
                self._conn.send_ping(data)
            except BaseException:
                self._stream.drop_ping(waiter)
                raise
            self._outbox.extend(self._conn.data_to_send())
        self._flush(True)
        if self._write_error is not None:
            with self._lock:
                self._stream.drop_ping(waiter)
            self._raise_if_broken()
        return waiter

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Run the closing handshake, wait at most ``close_timeout`` for TCP to close, then drop
        it. Idempotent; returns once the reader has ended."""
        self.start_close(code, reason)
        self.wait_closed()

    def start_close(self, code: int = 1000, reason: str = "") -> None:
        """Send the close frame (if still open) without waiting for the peer's answer."""
        with self._lock:
            self._closing = True
            if self._conn.is_open:
                self._conn.send_close(code, reason)
                self._outbox.extend(self._conn.data_to_send())
            pending = bool(self._outbox)
        self._resume.set()  # a paused reader must read the peer's close
        if pending:
            with contextlib.suppress(OSError, ValueError):
                self._sock.settimeout(self.close_timeout)  # bounds this write and the wait
            self._flush(True, self.close_timeout)

    def wait_closed(self) -> None:
        """Wait until TCP is closed: at most ``close_timeout``, then drop it."""
        if not wait_until(self._rt, self._done, self.close_timeout):
            self.abort()
            wait_until(self._rt, self._done, self.close_timeout)
        reader = self._reader
        if reader is not None and not reader.is_current():
            reader.join(self.close_timeout)

    def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake."""
        shutdown(self._sock)

    def __enter__(self) -> WebSocket:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = self.state_text
        return f"<{type(self).__name__} {'server' if self._server else 'client'} {state}>"

    # -- internals -------------------------------------------------------------------------

    def _check_open(self) -> None:
        """Called with the lock held."""
        self._raise_if_broken()
        self._stream.check_open(self._conn.is_open)

    def _raise_if_broken(self) -> None:
        error = self._write_error
        if error is not None:
            raise ConnectionClosedError(1006, f"connection lost: {error}") from error

    def _receive(self, data: bytes | None, events: Sequence[object] = (),
                 received: int = 0) -> Any:
        """Feed bytes (``b""``: end of stream; None: none; or ``received`` bytes written into
        the last slot) and earlier events, then wake waiters, resolve pings and send what the
        connection answered. Returns the next slot: where the rest of a large binary frame
        partway is to be received (``WebSocketConnection.payload_buffer``), else None."""
        with self._lock:
            connection, stream = self._conn, self._stream
            slot = None
            if data:
                connection.receive_data(data)
                ws = connection.ws
                if ws is not None:
                    slot = ws.payload_buffer()
            elif received:
                ws = connection.ws
                assert ws is not None  # it gave out the slot
                ws.payload_received(received)
                slot = ws.payload_buffer()
            elif data is not None:
                connection.receive_eof()
            self._outbox.extend(connection.data_to_send())
            wake = stream.feed([*events, *connection.events_received()])
            stream.pause_needed()  # the reader looks at reading_paused itself
            answered, abandoned = stream.take_answered(), stream.take_abandoned()
            error = stream.closed_error() if abandoned else None
            arm = connection.close_expected() and not self._close_armed
            self._close_armed |= arm
            pending = bool(self._outbox)
        if wake:
            self._readable.set()
        for waiter in answered:
            waiter._resolve(None)
        for waiter in abandoned:
            waiter._resolve(error)
        if arm:
            # The peer should close TCP now (RFC 6455 §7.1.1); give up after close_timeout.
            with contextlib.suppress(OSError, ValueError):
                self._sock.settimeout(self.close_timeout)
        if pending:
            self._flush(False)
        return slot

    def _flush(self, wait: bool, timeout: float | None = None) -> None:
        """Write the outbox in order. ``wait=False``: only if nobody is writing (the writer
        re-checks the outbox after releasing the lock, so nothing is left behind)."""
        lock = self._write_lock
        while True:
            if not wait:
                got = lock.acquire(False)
            elif timeout is not None:
                got = lock.acquire(True, timeout)
            else:
                got = lock.acquire()
            if not got:
                if wait:
                    self.abort()  # a writer is stuck: the close cannot be sent in time
                return
            try:
                while True:
                    with self._lock:
                        chunks, self._outbox = self._outbox, []
                    if not chunks:
                        break
                    self._write(chunks)
            finally:
                lock.release()
            with self._lock:
                if not self._outbox:
                    return

    def _write(self, chunks: list[bytes]) -> None:
        if self._tcp_ended or self._write_error is not None:
            return
        try:
            self._tcp_ended = write_chunks(self._sock, chunks, server=self._server)
        except (OSError, ValueError) as exc:
            self._write_error = exc if isinstance(exc, OSError) else OSError(str(exc))
            self.abort()  # the reader sees the end and closes the connection (1006)

    def _read_loop(self) -> None:
        """The reader: runs until TCP ends, then closes the socket.

        After a read that leaves a large binary frame partway, the next reads go straight into
        the message's own bytes (the slot ``_receive`` returns, asked anew after every read: no
        copy through a read buffer, and reads as long as the rest of the frame, up to 256 KiB
        in the pure-Python kernel); the slot is the reader's alone (only the reader feeds the
        connection), so it is written without the lock."""
        sock = self._sock
        recv, recv_into = sock.recv, sock.recv_into
        slot: Any = None
        try:
            while True:
                if self._stream.reading_paused and not self._closing:
                    self._wait_resume()
                    continue
                if slot is not None:
                    try:
                        nbytes = recv_into(slot)
                    except (OSError, ValueError):  # as below
                        nbytes = 0
                    if nbytes:
                        slot = self._receive(None, received=nbytes)
                        continue
                    slot = None
                    data = b""
                else:
                    try:
                        data = recv(RECV_SIZE)
                    except (OSError, ValueError):  # reset, TLS error, close timeout, shut down
                        data = b""
                slot = self._receive(data)
                if not data:
                    return
        except Exception:
            logger.exception("WebSocket reader failed")
        finally:
            self._finish()

    def _wait_resume(self) -> None:
        with self._lock:
            if not self._stream.reading_paused or self._closing:
                return
            self._resume.clear()
        self._resume.wait(WAIT_SLICE)

    def _finish(self) -> None:
        if self._stream.closed is None:
            with contextlib.suppress(Exception):
                self._receive(b"")
        sock = self._sock
        shutdown(sock)  # wakes a writer blocked in sendall
        got = self._write_lock.acquire(True, self.close_timeout)
        try:
            sock.close()
        finally:
            if got:
                self._write_lock.release()
        self._readable.set()
        self._resume.set()
        self._done.set()
        for callback in self._on_done:
            try:
                callback(self)
            except Exception:
                logger.exception("socket close callback failed")


class RelayedWebSocket(RelayedInfo, WebSocket):
    """One end of a relayed connection: a sender's socket, or one a listener accepted.

    Listener-side sockets also tell what the sender asked for: ``connect_headers``,
    ``remote_endpoint``, ``request_id``, ``path``, ``request_url``, ``connection_request``.
    """

    def __init__(self, runtime: Runtime, sock: Any, connection: ClientConnection, *,
                 address: str, request: ConnectionRequested | None = None,
                 events: Sequence[object] = (), max_queue: int = DEFAULT_MAX_QUEUE,
                 close_timeout: float = 10.0, start_reader: bool = True) -> None:
        self._address = address
        self._request = request
        super().__init__(runtime, sock, connection, events=events, max_queue=max_queue,
                         close_timeout=close_timeout, start_reader=start_reader)

    def __repr__(self) -> str:
        state = self.state_text
        side = "listener" if self._request else "sender"
        return f"<RelayedWebSocket {side} {self.path} {state}>"


def run_handler(handler: Callable[[Any], object], ws: WebSocket, log: logging.Logger,
                what: str) -> None:
    """``handler(ws)``, then close the socket: 1000 when it returned, 1011 when it raised (the
    exception is logged). A :class:`ConnectionClosedError` escaping it is a normal end."""
    code, reason = 1000, ""
    try:
        handler(ws)
    except ConnectionClosedError:
        pass
    except Exception:
        log.exception("%s failed; closing the connection with 1011", what)
        code, reason = 1011, "internal error"
    finally:
        with contextlib.suppress(Exception):
            ws.close(code, reason)
