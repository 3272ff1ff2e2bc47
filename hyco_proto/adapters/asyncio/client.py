"""Relayed WebSockets on asyncio: the sender's ``relayed_connect`` and the connected socket.

:class:`RelayedWebSocket` is what both ends of a relayed connection hold: the sender's socket
(from :func:`relayed_connect`) and every socket a listener accepted. It runs a client-role
:class:`~hyco_proto.websocket.WebSocketConnection` over one TCP (or TLS) connection to the relay.

Flow control, end to end (nothing buffers without bound):

* ``send`` queues the frame, then waits while the transport's write buffer is above its
  high-water mark (asyncio ``pause_writing`` / ``resume_writing``);
* received messages wait in a queue of at most ``max_queue`` messages: above that, the transport
  stops reading (TCP pushes back to the relay, which stops reading the other leg); reading resumes
  when ``recv`` has taken the queue down to a quarter;
* one message is at most ``max_size`` bytes (1009 beyond; ``None``: unlimited).
"""

from __future__ import annotations

import asyncio
import collections
import os
import ssl as _ssl
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from ...control import RemoteEndpoint
from ...errors import ConnectionLostError, LocalProtocolError, RelayError, RemoteProtocolError
from ...handshake import ClientHandshake, HandshakeAccepted, HandshakeRejected
from ...sender import SenderConnect, error_for_close
from ...uris import parse_relay_uri
from ...websocket import (
    BinaryMessage,
    CloseReceived,
    ConnectionClosed,
    Event,
    Pong,
    Role,
    State,
    TextMessage,
    WebSocketConnection,
)

if TYPE_CHECKING:
    from ...listener import ConnectionRequested

__all__ = [
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_WRITE_LIMIT",
    "Message",
    "RelayConnectionClosed",
    "RelayedWebSocket",
    "relayed_connect",
]

Message = str | bytes

#: Received messages held before the transport stops reading.
DEFAULT_MAX_QUEUE = 16
#: Largest message accepted (bytes); bigger ones fail the connection with 1009.
DEFAULT_MAX_SIZE = 64 * 1024 * 1024
#: Transport write buffer size above which ``send`` waits.
DEFAULT_WRITE_LIMIT = 256 * 1024
DEFAULT_CLOSE_TIMEOUT = 10.0

# Close codes after which ``async for`` simply ends (a normal end of the conversation).
_NORMAL_CLOSE = frozenset({1000, 1001, 1005})


class RelayConnectionClosed(RelayError):
    """The relayed WebSocket is closed: raised by ``recv`` / ``send`` / ``ping`` afterwards.

    ``code`` / ``reason`` are the close code and reason (1006: the TCP connection ended without
    a closing handshake); ``error`` is the typed relay error for an abnormal code (1008 →
    ``AuthorizationError``, 1001/1006/1011 → ``ConnectionLostError``), ``None`` for 1000.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        text = f"relayed WebSocket closed with {code}" + (f": {reason}" if reason else "")
        super().__init__(text, close_code=code, description=reason or None)
        self.code = code
        self.reason = reason
        self.error: RelayError | None = error_for_close(code, reason)

    @property
    def ok(self) -> bool:
        """Whether this was a normal closure (1000, 1001 going away, or 1005 no status)."""
        return self.code in _NORMAL_CLOSE


# --------------------------------------------------------------------------------------------
# the transport-level protocol shared by senders, rendezvous sockets and the control channel


class _WebSocketProtocol(asyncio.Protocol):
    """Client handshake, then a client-role WebSocket connection, on one transport.

    ``opened`` resolves with the handshake's answer. WebSocket events go to ``handler`` (set by
    the owner once it has looked at ``opened``; events that arrive earlier wait in order).
    """

    def __init__(self, handshake: ClientHandshake, *, reply_to_close: bool = True,
                 max_size: int | None = DEFAULT_MAX_SIZE,
                 write_limit: int = DEFAULT_WRITE_LIMIT) -> None:
        loop = asyncio.get_running_loop()
        self.handshake = handshake
        self.reply_to_close = reply_to_close
        self.max_size = max_size
        self.write_limit = write_limit
        self.transport: asyncio.Transport | None = None
        self.ws: WebSocketConnection | None = None
        self.opened: asyncio.Future[HandshakeAccepted | HandshakeRejected] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self._handler: Callable[[Event], None] | None = None
        self._backlog: list[Event] = []
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.reading_paused = False

    # -- asyncio callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=self.write_limit, low=self.write_limit // 4)
        transport.write(self.handshake.data_to_send())

    def data_received(self, data: bytes) -> None:
        if self.ws is None:
            self._handshake_input(data)
        else:
            self.ws.receive_data(data)
            self._process()

    def eof_received(self) -> bool | None:
        if self.ws is None:
            self._handshake_input(b"")
        else:
            self.ws.receive_eof()
            self._process()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            why = f": {exc}" if exc else ""
            self.opened.set_exception(ConnectionLostError(
                "the connection closed during the WebSocket handshake" + why, close_code=1006))
        if self.ws is not None:
            self.ws.receive_eof()
            self._process(flush=False)
        if not self.lost.done():
            self.lost.set_result(None)
        self._wake_drain(exc or ConnectionLostError("connection lost", close_code=1006))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain(None)

    # -- handshake -------------------------------------------------------------------------

    def _handshake_input(self, data: bytes) -> None:
        if self.opened.done():
            return
        self.handshake.receive_data(data)
        try:
            event = self.handshake.next_event()
        except RemoteProtocolError as exc:
            self.opened.set_exception(exc)
            if self.transport is not None:
                self.transport.abort()
            return
        if event is None:
            return
        if isinstance(event, HandshakeAccepted):
            self.ws = WebSocketConnection(
                Role.CLIENT, reply_to_close=self.reply_to_close,
                max_message_size=self.max_size, trailing_data=event.trailing_data)
            self.opened.set_result(event)
            self._process()
        else:
            self.opened.set_result(event)
            if self.transport is not None:
                self.transport.close()

    # -- WebSocket plumbing ----------------------------------------------------------------

    def set_handler(self, handler: Callable[[Event], None]) -> None:
        """Deliver events to ``handler`` from now on, starting with those already received."""
        self._handler = handler
        backlog, self._backlog = self._backlog, []
        for event in backlog:
            handler(event)

    def _process(self, *, flush: bool = True) -> None:
        ws = self.ws
        assert ws is not None
        events = ws.events_received()
        if events:
            if self._handler is None:
                self._backlog.extend(events)
            else:
                for event in events:
                    self._handler(event)
        if flush:
            self.flush()

    def flush(self) -> None:
        """Write what the connection has queued; ``b""`` closes TCP (RFC 6455 §7.1.1)."""
        ws, transport = self.ws, self.transport
        if ws is None or transport is None:
            return
        for chunk in ws.data_to_send():
            if transport.is_closing():
                continue
            if chunk:
                transport.write(chunk)
            else:
                transport.close()

    async def drain(self) -> None:
        """Wait while the write buffer is above its high-water mark."""
        if not self._write_paused:
            return
        if self.lost.done():
            raise ConnectionLostError("connection lost", close_code=1006)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._drain_waiters:
                self._drain_waiters.remove(waiter)

    def _wake_drain(self, exc: BaseException | None) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            if not self.transport.is_closing():
                self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _ssl_for(secure: bool, ssl: _ssl.SSLContext | None) -> _ssl.SSLContext | None:
    if not secure:
        return None
    return ssl if ssl is not None else _ssl.create_default_context()


async def _open_websocket(
    handshake: ClientHandshake, *, host: str, port: int, secure: bool,
    ssl: _ssl.SSLContext | None, timeout: float | None, reply_to_close: bool = True,
    max_size: int | None = DEFAULT_MAX_SIZE, write_limit: int = DEFAULT_WRITE_LIMIT,
) -> tuple[_WebSocketProtocol, HandshakeAccepted | HandshakeRejected]:
    """Connect and run the opening handshake; the transport is aborted on any failure."""
    loop = asyncio.get_running_loop()
    protocol = _WebSocketProtocol(handshake, reply_to_close=reply_to_close, max_size=max_size,
                                  write_limit=write_limit)

    async def run() -> HandshakeAccepted | HandshakeRejected:
        await loop.create_connection(lambda: protocol, host, port, ssl=_ssl_for(secure, ssl))
        return await protocol.opened

    try:
        answer = await asyncio.wait_for(run(), timeout)
    except BaseException:
        protocol.abort()
        opened = protocol.opened
        if not opened.done():
            opened.cancel()
        elif not opened.cancelled():
            opened.exception()  # mark it retrieved: the caller gets the error raised here
        raise
    return protocol, answer


# --------------------------------------------------------------------------------------------
# the application's socket


class RelayedWebSocket:
    """One end of a relayed WebSocket connection (sender's, or accepted by a listener).

    ``await send(message)``, ``await recv()``, ``async for message in ws``, ``await ping()``,
    ``await close()``. Listener-side sockets also carry what the sender asked for:
    ``connect_headers``, ``remote_endpoint``, ``path`` and ``request_url``.
    """

    def __init__(self, protocol: _WebSocketProtocol, accepted: HandshakeAccepted, *,
                 address: str, request: ConnectionRequested | None = None,
                 max_queue: int = DEFAULT_MAX_QUEUE,
                 close_timeout: float = DEFAULT_CLOSE_TIMEOUT) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        assert protocol.ws is not None
        self._protocol = protocol
        self._ws: WebSocketConnection = protocol.ws
        self._accepted = accepted
        self._address = address
        self._request = request
        self.max_queue = max_queue
        self.close_timeout = close_timeout
        self._queue: collections.deque[Message] = collections.deque()
        self._recv_waiter: asyncio.Future[None] | None = None
        self._pings: list[tuple[bytes, asyncio.Future[float]]] = []
        self._close_received: CloseReceived | None = None
        self._closed: ConnectionClosed | None = None
        self._loop = asyncio.get_running_loop()
        protocol.set_handler(self._on_event)

    # -- properties ------------------------------------------------------------------------

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol both legs agreed on (the relay echoes the listener's choice)."""
        return self._accepted.subprotocol

    @property
    def response_headers(self) -> list[tuple[str, str]]:
        """Headers of the relay's 101 answer to this leg."""
        return list(self._accepted.headers)

    @property
    def connect_headers(self) -> dict[str, str]:
        """Listener side: every header of the sender's upgrade request (empty for a sender)."""
        return dict(self._request.command.connect_headers) if self._request else {}

    @property
    def remote_endpoint(self) -> RemoteEndpoint | None:
        """Listener side: the sender's address as the relay saw it (None for a sender)."""
        return self._request.command.remote_endpoint if self._request else None

    @property
    def request_id(self) -> str | None:
        """Listener side: the relay's id for this connection request."""
        return self._request.id if self._request else None

    @property
    def path(self) -> str:
        """``/{hc}[/{suffix}][?{app query}]`` the sender used (``sb-hc-*`` removed, §1.5)."""
        return parse_relay_uri(self._address).request_target

    @property
    def request_url(self) -> str:
        """``sb://{namespace}/{hc}[/{suffix}][?{app query}]``, as the .NET listener shows it."""
        return parse_relay_uri(self._address).request_url()

    @property
    def close_code(self) -> int | None:
        """The close code once closed (1006: no closing handshake); None while open."""
        return self._closed.code if self._closed else None

    @property
    def close_reason(self) -> str | None:
        return self._closed.reason if self._closed else None

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def transport(self) -> asyncio.Transport | None:
        """The underlying transport (for diagnostics: buffer sizes, peer name)."""
        return self._protocol.transport

    @property
    def queued_messages(self) -> int:
        """Received messages waiting for ``recv``."""
        return len(self._queue)

    # -- events ----------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if isinstance(event, (TextMessage, BinaryMessage)):
            self._queue.append(event.data)
            if len(self._queue) >= self.max_queue:
                self._protocol.pause_reading()
            self._wake_recv()
        elif isinstance(event, Pong):
            self._pong(event.payload)
        elif isinstance(event, CloseReceived):
            self._close_received = event
        elif isinstance(event, ConnectionClosed):
            self._closed = event
            self._wake_recv()
            error = RelayConnectionClosed(event.code, event.reason)
            pings, self._pings = self._pings, []
            for _, waiter in pings:
                if not waiter.done():
                    waiter.set_exception(error)

    def _wake_recv(self) -> None:
        waiter = self._recv_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _pong(self, payload: bytes) -> None:
        # A pong answers its ping and every earlier one (RFC 6455 §5.5.3 lets a peer answer
        # only the most recent ping).
        for index, (sent, _) in enumerate(self._pings):
            if sent == payload:
                answered, self._pings = self._pings[: index + 1], self._pings[index + 1 :]
                now = self._loop.time()
                for _, waiter in answered:
                    if not waiter.done():
                        waiter.set_result(now)
                return

    def _closed_error(self) -> RelayConnectionClosed:
        closed = self._closed
        if closed is not None:
            return RelayConnectionClosed(closed.code, closed.reason)
        received = self._close_received
        if received is not None:
            return RelayConnectionClosed(received.code, received.reason)
        return RelayConnectionClosed(1006, "connection closing")

    # -- receiving -------------------------------------------------------------------------

    async def recv(self) -> Message:
        """The next message (str for text, bytes for binary).

        Raises :class:`RelayConnectionClosed` once the connection is closed and every message
        received before the close has been returned.
        """
        while not self._queue:
            if self._closed is not None:
                raise self._closed_error()
            if self._recv_waiter is not None:
                raise RuntimeError("recv() is already being awaited by another task")
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._recv_waiter = waiter
            try:
                await waiter
            finally:
                self._recv_waiter = None
        message = self._queue.popleft()
        if self._protocol.reading_paused and len(self._queue) <= self.max_queue // 4:
            self._protocol.resume_reading()
        return message

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        """Messages until a normal close (1000/1001/1005); other codes raise."""
        while True:
            try:
                yield await self.recv()
            except RelayConnectionClosed as exc:
                if exc.ok:
                    return
                raise

    # -- sending ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        ws = self._ws
        if self._closed is not None or ws.state is not State.OPEN:
            raise self._closed_error()

    async def send(self, message: Message | bytearray | memoryview) -> None:
        """Send a text (str) or binary (bytes-like) message; waits while the write buffer is
        above its high-water mark (the message is queued before waiting)."""
        self._check_open()
        if isinstance(message, str):
            self._ws.send_text(message)
        elif isinstance(message, (bytes, bytearray, memoryview)):
            self._ws.send_binary(bytes(message))
        else:
            raise TypeError(f"send() takes str or bytes, not {type(message).__name__}")
        self._protocol.flush()
        await self._drain()

    async def _drain(self) -> None:
        try:
            await self._protocol.drain()
        except (ConnectionLostError, OSError) as exc:
            raise self._closed_error() from exc

    async def ping(self, payload: bytes | None = None) -> asyncio.Future[float]:
        """Send a ping; returns a future resolved (with the loop time) when the pong arrives.

        ``payload`` defaults to 4 random bytes, so concurrent pings are told apart.
        """
        self._check_open()
        data = os.urandom(4) if payload is None else bytes(payload)
        if any(sent == data for sent, _ in self._pings):
            raise LocalProtocolError("a ping with this payload is already waiting for its pong")
        self._ws.send_ping(data)
        waiter: asyncio.Future[float] = self._loop.create_future()
        self._pings.append((data, waiter))
        self._protocol.flush()
        await self._drain()
        return waiter

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Run the closing handshake and wait (at most ``close_timeout``) for the relay to
        close TCP; the transport is aborted after that. Idempotent."""
        ws = self._ws
        if ws.state is State.OPEN and self._closed is None:
            ws.send_close(code, reason)
            self._protocol.flush()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until TCP is closed (aborting it after ``close_timeout`` once closing)."""
        lost = self._protocol.lost
        if lost.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(lost), self.close_timeout)
        except asyncio.TimeoutError:
            self._protocol.abort()
            await lost

    def abort(self) -> None:
        """Drop the TCP connection at once, without a closing handshake."""
        self._protocol.abort()

    async def __aenter__(self) -> RelayedWebSocket:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = f"closed {self.close_code}" if self._closed else self._ws.state.name.lower()
        side = "listener" if self._request else "sender"
        return f"<RelayedWebSocket {side} {self.path} {state}>"


# --------------------------------------------------------------------------------------------
# the sender


async def relayed_connect(
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
) -> RelayedWebSocket:
    """Connect to a hybrid connection as a sender (hyco-ws ``relayedConnect``).

    ``uri`` is the send address (``wss://{ns}/$hc/{hc}[/suffix][?query]``); ``token`` goes in the
    ``ServiceBusAuthorization`` header (or the ``sb-hc-token`` query with ``token_in_query``).
    A refused handshake raises the typed error (``AuthorizationError`` 401, ``ForbiddenError``
    403, ``EndpointNotFoundError`` 404, or ``RelayError`` with the listener's reject status);
    ``TimeoutError`` after ``open_timeout``; ``OSError`` if the relay cannot be reached.
    """
    connect = SenderConnect(uri, token=token, token_in_query=token_in_query,
                            headers=headers or (), subprotocols=subprotocols,
                            allowed_listeners=allowed_listeners,
                            disallowed_listeners=disallowed_listeners)
    try:
        protocol, answer = await _open_websocket(
            connect.handshake(), host=connect.hostname, port=connect.port,
            secure=connect.secure, ssl=ssl, timeout=open_timeout, max_size=max_size,
            write_limit=write_limit)
    except asyncio.TimeoutError:
        raise TimeoutError(f"no answer from the relay within {open_timeout} s") from None
    if isinstance(answer, HandshakeRejected):
        raise connect.error_for_rejection(answer)
    return RelayedWebSocket(protocol, answer, address=connect.url, max_queue=max_queue,
                            close_timeout=close_timeout)
