"""WebSockets on asyncio: the socket class, plain ``connect`` and the sender's ``relayed_connect``.

:class:`WebSocket` runs a :class:`~hyco_proto.drivers.ClientConnection` or
:class:`~hyco_proto.drivers.ServerConnection` over one :class:`~.link.Link` and keeps its books
in a :class:`~hyco_proto.drivers.MessageStream`. :class:`RelayedWebSocket` is what both ends of
a relayed connection hold. Flow control, end to end (nothing buffers without bound):

* ``send`` queues the frame, then waits while the transport's write buffer is above its
  high-water mark (asyncio ``pause_writing`` / ``resume_writing``);
* received messages wait in a queue of at most ``max_queue`` messages: above that, the transport
  stops reading (TCP pushes back); reading resumes when ``recv`` has taken it down to a quarter;
* one message is at most ``max_size`` bytes (1009 beyond; ``None``: unlimited).
"""

from __future__ import annotations

import asyncio
import os
import ssl as _ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

from ...drivers.connection import (
    ClientConnection,
    DataPhase,
    HandshakeFailed,
    Opened,
    Refused,
    RequestReceived,
    ServerConnection,
    handshake_failure,
    refusal_error,
)
from ...drivers.relayed import RelayedInfo
from ...drivers.stream import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_SIZE,
    ConnectionClosedError,
    Message,
    MessageStream,
)
from ...drivers.view import SocketView
from ...errors import ConnectionLostError, RelayError, open_timeout_failure
from ...frames import Wakeup
from ...listener import ConnectionRequested
from ...sender import SenderConnect
from ...websocket import _OPEN, State
from . import lean
from .link import DEFAULT_WRITE_LIMIT, Link, open_link

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_WRITE_LIMIT",
    "Message",
    "RelayedWebSocket",
    "WebSocket",
    "connect",
    "relayed_connect",
]


_HANDSHAKE_EVENTS = (Opened, Refused, HandshakeFailed, RequestReceived)

S = TypeVar("S", bound="WebSocket")

_NOT_NOW = (BlockingIOError, InterruptedError)

_tasks_by_loop = getattr(asyncio.tasks, "_current_tasks", None)
# Python 3.11's current_task is a Python function that looks its loop up in this dict: the
# lookup alone answers the same, one call less (3.12's current_task is in C already).
_current_task: Callable[[asyncio.AbstractEventLoop], object] = (
    _tasks_by_loop.get if isinstance(_tasks_by_loop, dict)
    and hasattr(asyncio.current_task, "__code__") else asyncio.current_task)
_CancelledError = asyncio.CancelledError
_os_write = os.write


class _Ready(tuple[Message]):
    """An awaitable that is its one item at once (built in C: a tuple, no ``__init__``)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, Message]:
        return self[0]
        yield  # type: ignore[unreachable]  # a generator that returns at once


class WebSocket(SocketView):
    """One WebSocket connection: ``await send(message)``, ``await recv()``,
    ``async for message in ws``, ``await ping()``, ``await close()``.

    ``opened`` resolves with the handshake's first event (:class:`Opened`, :class:`Refused`,
    :class:`HandshakeFailed` or, server side, :class:`RequestReceived`).
    """

    def __init__(self, link: Link, connection: ClientConnection | ServerConnection, *,
                 max_queue: int = DEFAULT_MAX_QUEUE,
                 close_timeout: float = DEFAULT_CLOSE_TIMEOUT) -> None:
        self._loop = asyncio.get_running_loop()
        self._link = link
        self._conn = connection
        self._stream: MessageStream[asyncio.Future[float]] = MessageStream(max_queue)
        self.close_timeout = close_timeout
        self.opened: asyncio.Future[object] = self._loop.create_future()
        # What a waiting recv awaits (the kernel's Wakeup: resumed in place by the read
        # callback that brings its message, and reused for the next wait).
        self._recv_waiter: Wakeup | None = None
        # The data phase itself once the handshake is behind us (``data_phase()``): the hot
        # paths below feed and drain it directly.
        self._ws: DataPhase | None = None
        self._anext = self.__anext__  # what a waiter of __anext__ awaits if woken empty
        link.receiver = self

    # -- properties (more in SocketView) -------------------------------------------------

    @property
    def transport(self) -> asyncio.Transport | None:
        """The underlying transport (for diagnostics: buffer sizes, peer name)."""
        return self._link.transport

    @property
    def reading_paused(self) -> bool:
        """Whether reading is paused because ``max_queue`` messages wait."""
        return self._link.reading_paused

    # -- the link's callbacks --------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        (self._ws or self._conn).receive_data(data)
        self._process()

    def view_received(self, view: memoryview) -> None:
        """A read in the link's shared buffer: the frame decoder copies what it keeps, so the
        data phase takes the view as it is; the handshake gets bytes. A read that is one whole
        message while ``recv`` waits (so none is queued) goes to it directly: no event, no
        queue (``receive_message``). (On the lean transport the data phase reads through
        ``_make_pump``'s pump, which has these steps written out: keep the two alike.)"""
        ws = self._ws
        if ws is None:
            self._conn.receive_data(bytes(view))
        else:
            waiter = self._recv_waiter
            if waiter is not None and waiter.pending:
                message = ws.receive_message(view)  # type: ignore[arg-type]
                if message is not None:
                    waiter.wake(None, message)
                    return
            else:
                ws.receive_data(view)  # type: ignore[arg-type]
        self._process()

    def eof_received(self) -> None:
        self._conn.receive_eof()
        self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        self._conn.receive_eof()
        self._process()
        if not self.opened.done():
            why = f": {exc}" if exc else ""
            self.opened.set_exception(ConnectionLostError(
                "the connection closed during the WebSocket handshake" + why, close_code=1006))

    def _process(self, earlier: Sequence[object] = ()) -> None:
        ws = self._ws
        if ws is None:
            self._process_handshake(earlier)
            return
        events = ws.events_received()
        if events:
            stream = self._stream
            wake = stream.feed(events)
            if stream.notice:
                stream.notice = False
                # Never pause once closing: the peer's close reply must still be read.
                if stream.pause_needed() and ws.state is State.OPEN:
                    self._link.pause_reading()
                self._settle_pings()
            self._flush()
            # Last: the waiting recv may run its handler right here (see Wakeup).
            if wake and self._recv_waiter is not None:
                self._recv_waiter.wake()
            return
        self._flush()

    def _process_handshake(self, earlier: Sequence[object]) -> None:
        """``_process`` until the data phase is reached (the handshake's outcome first)."""
        conn = self._conn
        events = conn.events_received()
        if earlier:
            events = [*earlier, *events]  # type: ignore[list-item]
        if events and not self.opened.done() and isinstance(events[0], _HANDSHAKE_EVENTS):
            self.opened.set_result(events[0])
        stream = self._stream
        wake = stream.feed(events) if events else False
        stream.notice = False
        if stream.pause_needed() and conn.is_open:
            self._link.pause_reading()
        self._settle_pings()
        self._flush()
        self._ws = conn.data_phase()
        if self._ws is not None and self._link._lean:
            transport: Any = self._link.transport  # a lean.LinkTransport (Link._lean)
            transport.pump_with(self._make_pump)
        if wake and self._recv_waiter is not None:
            self._recv_waiter.wake()

    def _make_pump(self) -> Callable[[], None] | None:
        """The lean transport's read callback for the data phase: its ``_on_readable`` and
        :meth:`view_received` in one call (one Python frame less per read; what the two do,
        step for step, with the transport's error handling)."""
        ws, link = self._ws, self._link
        transport: Any = link.transport
        if ws is None or not isinstance(transport, lean.LinkTransport):
            return None
        buffer, recv_into, process = link._buffer, transport._recv_into, self._process
        payload_buffer, payload_received = ws.payload_buffer, ws.payload_received
        # Where a large frame's rest is received straight into (its message's own bytes), or
        # None: the read buffer. Asked for after a read that left a message unfinished.
        slot: Any = None

        def pump() -> None:
            nonlocal slot
            if transport._closing:  # a readiness report that crossed a close
                return
            try:
                nbytes = recv_into(buffer if slot is None else slot)
            except _NOT_NOW:
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                transport.read_failed(exc)
                return
            if not nbytes:
                transport.read_eof()
                return
            try:
                if slot is not None:
                    slot = None
                    payload_received(nbytes)
                else:
                    waiter = self._recv_waiter
                    if waiter is not None and waiter.pending:
                        message = ws.receive_message(buffer[:nbytes])  # type: ignore[arg-type]
                        if message is not None:
                            waiter.wake(None, message)
                            # The read may also have begun a large frame: then it holds
                            # that frame's header (10 bytes or more, a 64-bit length) beyond
                            # the message's bytes and their own header. A read of one small
                            # frame holds at most 8 more bytes: no call for it.
                            if nbytes > len(message) + 8:
                                slot = payload_buffer()
                            return
                    else:
                        ws.receive_data(buffer[:nbytes])  # type: ignore[arg-type]
                slot = payload_buffer()
                process()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                transport.read_failed(exc, "protocol failed on received data")

        return pump

    def _settle_pings(self) -> None:
        """Resolve the pings a pong answered; fail those the close left unanswered."""
        stream = self._stream
        for ping in stream.take_answered():
            if not ping.done():
                ping.set_result(self._loop.time())
        for ping in stream.take_abandoned():
            if not ping.done():
                ping.set_exception(stream.closed_error())
                ping.exception()  # awaiting it still raises; nobody must, though

    def _flush(self) -> None:
        out = (self._ws or self._conn).data_to_send()
        if out:
            self._link.write_all(out)

    # -- receiving -------------------------------------------------------------------------

    async def recv(self, timeout: float | None = None) -> Message:
        """The next message (str for text, bytes for binary).

        ``TimeoutError`` when none came within ``timeout`` seconds (the connection stays
        usable). Raises :class:`ConnectionClosedError` once the connection is closed and every
        message received before the close has been returned.
        """
        timer: asyncio.TimerHandle | None = None
        try:
            while True:
                got = self._take()
                if not isinstance(got, Wakeup):
                    return got
                if timeout is not None and timer is None:
                    timer = self._loop.call_later(timeout, self._recv_timed_out, timeout)
                message: Message | None = await got
                if message is not None:
                    return message
        finally:
            if timer is not None:
                timer.cancel()

    def _take(self, then: Callable[[], Awaitable[Message]] | None = None
              ) -> Message | Wakeup:
        """The next queued message, or the waiter its arrival wakes (one waiting task; woken
        without a message, it awaits ``then()``)."""
        waiter = self._recv_waiter
        if waiter is not None and waiter.pending:
            raise RuntimeError("recv() is already being awaited by another task")
        stream = self._stream
        if stream.messages or stream.closed is not None:  # else get() is None: skip the call
            message = stream.get()  # raises once closed and every message was taken
            if message is not None:
                if stream.resume_needed():
                    self._link.resume_reading()
                return message
        if waiter is not None:
            # Woken in place, so its task has taken the outcome: pending again for the next
            # wait (no object per message).
            again = waiter.rearm(then)
            if again is not None:
                return again
        waiter = self._recv_waiter = Wakeup(self._loop, _current_task, _CancelledError, then)
        return waiter

    def _recv_timed_out(self, timeout: float) -> None:
        waiter = self._recv_waiter
        if waiter is not None:
            waiter.wake(TimeoutError(f"no message within {timeout:g} s"))

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    def __anext__(self) -> Awaitable[Message]:
        """The next message; the iteration ends at a normal close (1000/1001/1005), other
        codes raise. ``recv`` without a timeout, as a plain method returning what to await:
        the queued message (``_Ready``) or the waiter its arrival wakes, which then is the
        message (or, woken by the close, the next ``__anext__``): no coroutine per message."""
        waiter = self._recv_waiter
        if waiter is not None:  # _take's common case, inline
            stream = self._stream
            if not stream.messages and stream.closed is None:
                again = waiter.rearm(self._anext)
                if again is not None:
                    return again
        try:
            got = self._take(self._anext)
        except ConnectionClosedError as exc:
            if exc.ok:
                raise StopAsyncIteration from None
            raise
        return got if isinstance(got, Wakeup) else _Ready((got,))

    # -- sending ---------------------------------------------------------------------------

    async def send(self, message: Message | bytearray | memoryview) -> None:
        """Send a text (str) or binary (bytes-like) message; waits while the write buffer is
        above its high-water mark (the message is queued before waiting).

        Raises :class:`ConnectionClosedError` (with the close code) once the closing handshake
        has begun or the connection is gone, and ``TypeError`` for anything but str or
        bytes-like.
        """
        ws = self._ws
        if ws is not None and ws.state is _OPEN and self._stream.closed is None:
            # The common case, with the checks of the general path below in one test.
            cls = type(message)
            if cls is not bytes and cls is not str:
                await self._send(message)
                return
            link = self._link
            frame = ws.frame_message(message)  # type: ignore[arg-type]
            if frame is not None:
                fd = link._fd
                if fd >= 0:  # Link.write's direct case, inline (one call less)
                    try:
                        sent = _os_write(fd, frame)
                    except OSError:
                        sent = 0
                    if sent != len(frame):
                        link.write_rest(frame, sent)
                else:
                    link.write(frame)
            else:
                link.write_all(ws.data_to_send())
            if link.write_paused:
                await self._drain()
            return
        await self._send(message)

    async def _send(self, message: Message | bytearray | memoryview) -> None:
        conn = self._conn
        self._stream.check_open(conn.is_open)
        if isinstance(message, str):
            conn.send_text(message)
        elif isinstance(message, (bytes, bytearray, memoryview)):
            conn.send_binary(message)
        else:
            raise TypeError(f"send() takes str or bytes, not {type(message).__name__}")
        self._flush()
        await self._drain()

    async def _drain(self) -> None:
        try:
            await self._link.drain()
        except (ConnectionLostError, OSError) as exc:
            raise self._stream.closed_error() from exc

    async def ping(self, payload: bytes | None = None) -> asyncio.Future[float]:
        """Send a ping; returns a future resolved (with the loop time) when the pong arrives.

        ``payload`` defaults to 4 random bytes, so concurrent pings are told apart.
        """
        self._stream.check_open(self._conn.is_open)
        waiter: asyncio.Future[float] = self._loop.create_future()
        data = self._stream.add_ping(waiter, payload)
        try:
            self._conn.send_ping(data)
            self._flush()
            await self._drain()
        except BaseException:
            self._stream.drop_ping(waiter)
            waiter.cancel()
            raise
        return waiter

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Run the closing handshake and wait (at most ``close_timeout``) for TCP to close;
        the transport is aborted after that. Idempotent."""
        conn = self._conn
        if conn.is_open and self._stream.closed is None:
            conn.send_close(code, reason)
            self._flush()
        # Read again if a full queue paused us: the peer's close reply must get through
        # (queued messages stay available to recv()).
        self._link.resume_reading()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until TCP is closed (aborting it after ``close_timeout``)."""
        lost = self._link.lost
        if lost.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(lost), self.close_timeout)
        except asyncio.TimeoutError:
            self._link.abort()
            await lost

    def abort(self) -> None:
        """Drop the TCP connection at once, without a closing handshake."""
        self._link.abort()

    async def __aenter__(self: S) -> S:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = self.state_text
        return f"<{type(self).__name__} {state}>"


class RelayedWebSocket(RelayedInfo, WebSocket):
    """One end of a relayed WebSocket connection (sender's, or accepted by a listener).

    Listener-side sockets also carry what the sender asked for: ``connect_headers``
    (case-insensitive), ``remote_endpoint``, ``path``, ``request_url`` and ``request``.
    """

    def __init__(self, link: Link, connection: ClientConnection, *, address: str,
                 request: ConnectionRequested | None = None,
                 max_queue: int = DEFAULT_MAX_QUEUE,
                 close_timeout: float = DEFAULT_CLOSE_TIMEOUT) -> None:
        super().__init__(link, connection, max_queue=max_queue, close_timeout=close_timeout)
        self._address = address
        self._request = request

    def __repr__(self) -> str:
        state = self.state_text
        side = "listener" if self._request else "sender"
        return f"<RelayedWebSocket {side} {self.path} {state}>"


class _Opening(Generic[S]):
    """``await connect(...)`` or ``async with connect(...) as ws`` (the websockets habit)."""

    def __init__(self, opening: Awaitable[S]) -> None:
        self._opening = opening
        self._ws: S | None = None

    def __await__(self) -> Generator[Any, None, S]:
        return self._opening.__await__()

    async def __aenter__(self) -> S:
        self._ws = await self._opening
        return self._ws

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._ws is not None:
            await self._ws.close()


async def _open(ws: S, url: str, host: str, port: int, secure: bool,
                ssl: _ssl.SSLContext | None, timeout: float | None) -> object:
    """Connect, run the opening handshake, return its outcome; abort on any failure."""
    link = ws._link
    connected = False

    async def run() -> object:
        nonlocal connected
        await open_link(link, host, port, secure=secure, ssl=ssl, timeout=None)
        connected = True
        ws._flush()
        return await ws.opened

    try:
        return await asyncio.wait_for(run(), timeout)
    except asyncio.TimeoutError:
        link.abort()
        raise open_timeout_failure(host=host, port=port, url=url, timeout=timeout,
                                   connected=connected) from None
    except BaseException:
        link.abort()
        raise


def connect(url: str, *, subprotocols: Sequence[str] = (),
            headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
            ssl: _ssl.SSLContext | None = None, open_timeout: float | None = 10.0,
            close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
            max_queue: int = DEFAULT_MAX_QUEUE, max_size: int | None = DEFAULT_MAX_SIZE,
            write_limit: int = DEFAULT_WRITE_LIMIT) -> _Opening[WebSocket]:
    """Open a plain WebSocket to ``ws://`` / ``wss://`` ``url`` (no relay).

    ``await connect(url)`` or ``async with connect(url) as ws``. A refused upgrade raises the
    typed ``RelayError`` (401 → ``AuthorizationError`` ...); ``TimeoutError`` after
    ``open_timeout``; ``ConnectionError`` naming the address if it cannot be reached.
    """

    async def opening() -> WebSocket:
        connection = ClientConnection.from_url(url, subprotocols=subprotocols,
                                               headers=headers or (), max_message_size=max_size)
        target = connection.url
        ws = WebSocket(Link(write_limit=write_limit), connection, max_queue=max_queue,
                       close_timeout=close_timeout)
        outcome = await _open(ws, url, target.host, target.port, target.secure, ssl,
                              open_timeout)
        _raise_unless_opened(outcome, lambda r: refusal_error(r, url.split("?")[0]),
                             host=target.host, port=target.port, secure=target.secure)
        return ws

    return _Opening(opening())


def relayed_connect(
    uri: str, token: str | None = None, *,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    subprotocols: Sequence[str] = (),
    ssl: _ssl.SSLContext | None = None,
    token_in_query: bool = False,
    open_timeout: float | None = 30.0,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_size: int | None = DEFAULT_MAX_SIZE,
    write_limit: int = DEFAULT_WRITE_LIMIT,
    allowed_listeners: Sequence[str] = (),
    disallowed_listeners: Sequence[str] = (),
) -> _Opening[RelayedWebSocket]:
    """Connect to a hybrid connection as a sender (hyco-ws ``relayedConnect``).

    ``await relayed_connect(uri, token)`` or ``async with relayed_connect(uri, token) as ws``.
    ``uri`` is the send address (``wss://{ns}/$hc/{hc}[/suffix][?query]``); ``token`` goes in the
    ``ServiceBusAuthorization`` header (or the ``sb-hc-token`` query with ``token_in_query``).
    A refused handshake raises the typed error (``AuthorizationError`` 401, ``ForbiddenError``
    403, ``EndpointNotFoundError`` 404, ``ListenerRejectedError`` for the listener's own
    reject); ``TimeoutError`` after ``open_timeout``; ``ConnectionError`` naming the address if
    the relay cannot be reached.
    """

    async def opening() -> RelayedWebSocket:
        sender = SenderConnect(uri, token=token, token_in_query=token_in_query,
                               headers=headers or (), subprotocols=subprotocols,
                               allowed_listeners=allowed_listeners,
                               disallowed_listeners=disallowed_listeners)
        connection = ClientConnection(sender.handshake(), max_message_size=max_size)
        ws = RelayedWebSocket(Link(write_limit=write_limit), connection, address=sender.url,
                              max_queue=max_queue, close_timeout=close_timeout)
        outcome = await _open(ws, uri, sender.hostname, sender.port, sender.secure, ssl,
                              open_timeout)
        _raise_unless_opened(outcome, sender.error_for_rejection, host=sender.hostname,
                             port=sender.port, secure=sender.secure)
        return ws

    return _Opening(opening())


def _raise_unless_opened(outcome: object, refused: Any, *, host: str, port: int,
                         secure: bool) -> None:
    if isinstance(outcome, Refused):
        error: RelayError = refused(outcome.response)
        raise error
    if isinstance(outcome, HandshakeFailed):
        raise handshake_failure(outcome, host=host, port=port, secure=secure)
