"""The listener on asyncio: ``RelayedServer`` runs a :class:`~hyco_proto.listener.Listener` core.

The core decides everything (control channel life, accept/reject bookkeeping, token renewal,
keepalive pings, reconnect backoff); this adapter executes its actions with real sockets, reports
what happened back, and runs its one timer. Accepted connections are
:class:`~hyco_proto.adapters.asyncio.client.RelayedWebSocket` objects, handed to the
``connection`` hook or to ``async for ws in server``.

First open: ``start()`` (and ``async with``) waits for the first ``Listening``. When that first
attempt is refused with an HTTP 4xx (401 bad token, 403 forbidden or quota, 404 no such hybrid
connection) the listener is closed and the typed error is raised: retrying cannot fix a
configuration error. Network failures and 5xx answers are retried with the core's backoff; bound
the wait with ``asyncio.wait_for`` if needed. After the first success every failure except 404
(terminal, ``Offline``) leads to a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import ssl as _ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeAlias

from ...errors import LocalProtocolError, RelayError, RemoteProtocolError
from ...handshake import ClientHandshake, HandshakeAccepted
from ...listener import (
    Action,
    CloseControlChannel,
    Closed,
    ConnectionRequested,
    ConnectRendezvous,
    Disconnected,
    Event,
    Listener,
    ListenerState,
    Listening,
    Offline,
    OpenControlChannel,
    RendezvousFailed,
    SendControlMessage,
    SendPing,
    TokenRenewalFailed,
    TokenSourceLike,
)
from ...websocket import BinaryMessage, ConnectionClosed, Pong, State, TextMessage
from ...websocket import Event as WsEvent
from .client import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_SIZE,
    DEFAULT_WRITE_LIMIT,
    RelayedWebSocket,
    _open_websocket,
    _WebSocketProtocol,
)

__all__ = [
    "Accept",
    "Decision",
    "Reject",
    "RelayedServer",
    "create_relayed_server",
]

logger = logging.getLogger("hyco_proto.adapters.asyncio")

#: A rendezvous that has not completed after this long is abandoned (the relay honours an
#: accept address for about 30 s, hybrid-connections-wire §3.1).
_RENDEZVOUS_TIMEOUT = 30.0
_MIN_TIMER_DELAY = 0.001


@dataclass(frozen=True, slots=True)
class Accept:
    """Accept the sender, selecting ``subprotocol`` (one the sender offered, or None for none)
    and adding ``headers`` to the rendezvous handshake."""

    subprotocol: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Reject:
    """Turn the sender away: its handshake fails with ``status`` and ``description``."""

    status: int = 400
    description: str = "Rejected by user code"


#: What a ``headers`` hook returns: ``None`` accepts offering the sender's first subprotocol
#: (like hyco-ws); a ``str`` accepts with that subprotocol; ``Accept`` / ``Reject`` say exactly;
#: a ``(status, description)`` tuple rejects.
Decision: TypeAlias = str | Accept | Reject | tuple[int, str] | None

HeadersHook: TypeAlias = Callable[[ConnectionRequested], Decision | Awaitable[Decision]]
ConnectionHook: TypeAlias = Callable[[RelayedWebSocket], Awaitable[None] | None]
ErrorHook: TypeAlias = Callable[[Exception], Awaitable[None] | None]

_END = object()  # ends ``async for`` over the server


class _Channel:
    """One control-channel attempt; ``stale`` once the core was told (or told us) it is gone."""

    __slots__ = ("protocol", "stale", "task")

    def __init__(self) -> None:
        self.protocol: _WebSocketProtocol | None = None
        self.task: asyncio.Task[None] | None = None
        self.stale = False

    def drop(self) -> None:
        self.stale = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.protocol is not None:
            self.protocol.abort()


class RelayedServer:
    """A Hybrid Connections listener (hyco-ws ``RelayedServer``) on asyncio.

    Args:
        server: the listen URI, ``wss://{ns}/$hc/{hc}`` (``sb-hc-action=listen`` is added).
        token: a SAS token string, a callable returning fresh ones (renewed ahead of expiry),
            or a :class:`~hyco_proto.sas.TokenSource`.
        headers: decides each connection request (sync or async): see :data:`Decision`.
            A hook that raises rejects with 500.
        connection: receives each accepted :class:`RelayedWebSocket`. A sync hook only starts
            things (the socket lives on, like hyco-ws); an async hook runs as a task and the
            socket is closed when it returns (like ``websockets``). Without it, iterate with
            ``async for ws in server``.
        error: receives ``RelayError`` s: control channel lost (``Disconnected``), ``Offline``
            (404), failed rendezvous, and token renewal failures. Missing hook: logged only.
        listener_id: the ``sb-hc-id`` of this listener.
        keepalive_interval: seconds between control-channel pings (None: no pings).
        ssl: TLS context for ``wss://`` (default: the system's default context).
        max_queue, max_size, write_limit, close_timeout: per accepted socket, see
            :class:`RelayedWebSocket`.
        backlog: accepted sockets waiting for ``async for`` (beyond: closed with 1013).
        channel_headers: extra control-channel handshake headers (e.g. ``Relay-User-Agent``).
        listener_options: further :class:`~hyco_proto.listener.Listener` keyword arguments
            (``reconnect_delays``, ``keepalive_timeout``, ``open_timeout``, ``headers`` ...).
    """

    def __init__(
        self,
        server: str,
        token: str | Callable[[], str] | TokenSourceLike,
        *,
        headers: HeadersHook | None = None,
        connection: ConnectionHook | None = None,
        error: ErrorHook | None = None,
        listener_id: str | None = None,
        keepalive_interval: float | None = 30.0,
        ssl: _ssl.SSLContext | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_size: int | None = DEFAULT_MAX_SIZE,
        write_limit: int = DEFAULT_WRITE_LIMIT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        backlog: int = 128,
        channel_headers: Iterable[tuple[str, str]] = (),
        **listener_options: Any,
    ) -> None:
        self.listener = Listener(server, token, listener_id=listener_id,
                                 keepalive_interval=keepalive_interval,
                                 headers=channel_headers, **listener_options)
        self.server = server
        self._headers_hook = headers
        self._connection_hook = connection
        self._error_hook = error
        self._ssl = ssl
        self._max_queue = max_queue
        self._max_size = max_size
        self._write_limit = write_limit
        self._close_timeout = close_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._channel: _Channel | None = None
        self._requests: dict[str, ConnectionRequested] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._sockets: set[RelayedWebSocket] = set()
        self._accepted: asyncio.Queue[object] = asyncio.Queue(backlog)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pumping = False
        self._pump_again = False
        self._started: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._first_error: RelayError | None = None
        self._offline: Offline | None = None
        self._closing = False
        #: Pongs received on the control channel (keepalive answers), for diagnostics.
        self.keepalive_pongs = 0
        #: Every core event, newest last (bounded), for diagnostics and tests.
        self.events: list[Event] = []
        self._max_events = 1000

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the control channel; return once listening. Idempotent.

        Raises the typed ``RelayError`` when the first attempt is refused with a 4xx status
        (the listener is closed then), or when the listener went ``Offline``.
        """
        if self._started is None:
            loop = asyncio.get_running_loop()
            self._loop = loop
            self._started = loop.create_future()
            self._closed = loop.create_future()
            self.listener.start(time.time())
            self._pump()
        await asyncio.shield(self._started)

    @property
    def state(self) -> ListenerState:
        return self.listener.state

    @property
    def is_listening(self) -> bool:
        return self.listener.state is ListenerState.LISTENING

    async def close(self) -> None:
        """Stop listening: close the control channel (1000), close accepted sockets (1001),
        cancel the adapter's tasks. Idempotent."""
        if self._closing:
            if self._closed is not None:
                await asyncio.shield(self._closed)
            return
        self._closing = True
        if self._started is None:
            # Never started: nothing is open.
            self.listener.close(time.time())
            self.listener.events_received()
            self._end_iteration()
            return
        self.listener.close(time.time())
        self._pump()
        assert self._closed is not None
        try:
            # The core aborts the channel itself after its close_timeout.
            await asyncio.wait_for(asyncio.shield(self._closed), self._close_timeout + 5.0)
        except asyncio.TimeoutError:
            logger.warning("control channel did not close in time; aborting it")
        if self._channel is not None:
            self._channel.drop()
        self._cancel_timer()
        for task in list(self._tasks):
            task.cancel()
        sockets = list(self._sockets)
        if sockets:
            await asyncio.gather(*(s.close(1001, "listener closing") for s in sockets),
                                 return_exceptions=True)
        handlers = [t for t in self._handlers if not t.done()]
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=self._close_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        self._end_iteration()
        if not self._closed.done():
            self._closed.set_result(None)
        if not self._started.done():
            self._started.set_exception(RelayError("the listener was closed before it listened"))
            self._started.exception()

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` has finished (or the listener went offline)."""
        if self._closed is None:
            raise RuntimeError("the server was never started")
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> RelayedServer:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[RelayedWebSocket]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[RelayedWebSocket]:
        """Accepted sockets until ``close()``; raises the error if the listener went offline."""
        if self._connection_hook is not None:
            raise RuntimeError("connections go to the `connection` hook; do not also iterate")
        while True:
            ws = await self._next()
            if ws is None:
                return
            yield ws

    async def accept(self) -> RelayedWebSocket:
        """The next accepted socket (one step of ``async for``); ``RelayError`` once closed."""
        ws = await self._next()
        if ws is None:
            raise RelayError("the listener is closed")
        return ws

    async def _next(self) -> RelayedWebSocket | None:
        item = await self._accepted.get()
        if item is _END:
            self._accepted.put_nowait(_END)  # later iterators end too
            if self._offline is not None and not self._closing:
                raise self._offline.error
            return None
        assert isinstance(item, RelayedWebSocket)
        return item

    # -- the core pump ---------------------------------------------------------------------

    def _report(self, report: Callable[[float], None]) -> None:
        """Tell the core something (``report(now)``), then run what it asks for."""
        report(time.time())
        self._pump()

    def _pump(self) -> None:
        if self._pumping:
            self._pump_again = True
            return
        self._pumping = True
        try:
            while True:
                self._pump_again = False
                actions = self.listener.actions_to_take()
                for action in actions:
                    self._run(action)
                events = self.listener.events_received()
                for event in events:
                    self._record(event)
                    self._handle(event)
                if not (actions or events or self._pump_again):
                    break
        finally:
            self._pumping = False
        self._arm_timer()

    def _arm_timer(self) -> None:
        loop = self._loop
        if loop is None:
            return
        deadline = self.listener.next_deadline()
        if deadline == self._timer_at and self._timer is not None:
            return
        self._cancel_timer()
        self._timer_at = deadline
        if deadline is not None:
            delay = max(deadline - time.time(), _MIN_TIMER_DELAY)
            self._timer = loop.call_later(delay, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._report(self.listener.handle_timer)

    def _record(self, event: Event) -> None:
        self.events.append(event)
        if len(self.events) > self._max_events:
            del self.events[: len(self.events) - self._max_events]

    def _spawn(self, coro: Awaitable[Any], *, handler: bool = False) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        bucket = self._handlers if handler else self._tasks
        bucket.add(task)
        task.add_done_callback(bucket.discard)
        return task

    # -- actions ---------------------------------------------------------------------------

    def _run(self, action: Action) -> None:
        if isinstance(action, OpenControlChannel):
            if self._channel is not None:
                self._channel.drop()
            channel = _Channel()
            self._channel = channel
            channel.task = self._spawn(self._open_channel(channel, action))
        elif isinstance(action, (SendControlMessage, SendPing)):
            protocol = self._channel.protocol if self._channel is not None else None
            ws = protocol.ws if protocol is not None else None
            if protocol is None or ws is None or ws.state is not State.OPEN:
                return  # the channel is going away; the core hears about it separately
            if isinstance(action, SendControlMessage):
                ws.send_text(action.text)
            else:
                ws.send_ping(action.payload)
            protocol.flush()
        elif isinstance(action, CloseControlChannel):
            current = self._channel
            if current is None:
                return
            protocol = current.protocol
            ws = protocol.ws if protocol is not None else None
            if action.abort or protocol is None or ws is None:
                # The core expects no further report about an aborted channel.
                current.drop()
                self._channel = None
            elif ws.state is State.OPEN:
                ws.send_close(action.code, action.reason)
                protocol.flush()
        elif isinstance(action, ConnectRendezvous):
            self._spawn(self._rendezvous(action))

    async def _open_channel(self, channel: _Channel, action: OpenControlChannel) -> None:
        handshake = ClientHandshake.from_url(action.url, headers=action.headers)
        assert handshake.url is not None
        try:
            # The core bounds the attempt with its own open_timeout (then aborts it).
            protocol, answer = await _open_websocket(
                handshake, host=handshake.url.host, port=handshake.url.port,
                secure=handshake.url.secure, ssl=self._ssl, timeout=None)
        except (OSError, RelayError, RemoteProtocolError) as exc:
            if not channel.stale:
                channel.stale = True
                why = str(exc) or type(exc).__name__
                self._report(lambda now: self.listener.channel_closed(now, 1006, why))
            return
        channel.protocol = protocol
        if channel.stale:
            protocol.abort()
            return
        if not isinstance(answer, HandshakeAccepted):
            channel.stale = True
            status, reason = answer.status, answer.reason
            self._report(lambda now: self.listener.channel_rejected(now, status, reason))
            return
        self._report(self.listener.channel_opened)
        protocol.set_handler(lambda event: self._control_event(channel, event))

    def _control_event(self, channel: _Channel, event: WsEvent) -> None:
        if channel.stale or channel is not self._channel:
            return
        lst = self.listener
        if isinstance(event, TextMessage):
            text = event.data
            self._report(lambda now: lst.channel_message(now, text))
        elif isinstance(event, BinaryMessage):
            data = event.data
            self._report(lambda now: lst.channel_binary(now, data))
        elif isinstance(event, Pong):
            payload = event.payload
            self.keepalive_pongs += 1
            self._report(lambda now: lst.pong_received(now, payload))
        elif isinstance(event, ConnectionClosed):
            channel.stale = True
            self._channel = None
            protocol = channel.protocol
            if protocol is not None and not protocol.lost.done() and self._loop is not None:
                # The relay closes TCP after the closing handshake; do not wait forever.
                self._loop.call_later(self._close_timeout, protocol.abort)
            code, reason = event.code, event.reason
            self._report(lambda now: lst.channel_closed(now, code, reason))

    async def _rendezvous(self, action: ConnectRendezvous) -> None:
        protocols = [action.subprotocol] if action.subprotocol else []
        handshake = ClientHandshake.from_url(action.url, headers=action.headers,
                                             subprotocols=protocols)
        assert handshake.url is not None
        request = self._requests.pop(action.request_id, None)
        try:
            protocol, answer = await _open_websocket(
                handshake, host=handshake.url.host, port=handshake.url.port,
                secure=handshake.url.secure, ssl=self._ssl, timeout=_RENDEZVOUS_TIMEOUT,
                max_size=self._max_size, write_limit=self._write_limit)
        except (OSError, RelayError, RemoteProtocolError, asyncio.TimeoutError) as exc:
            why = str(exc) or type(exc).__name__
            self._rendezvous_result(action.request_id, None, why)
            return
        if isinstance(answer, HandshakeAccepted):
            self._rendezvous_result(action.request_id, 101, "")
            if action.reject:  # a relay should never answer a reject with 101
                protocol.abort()
                return
            address = request.command.address if request is not None else action.url
            ws = RelayedWebSocket(protocol, answer, address=address, request=request,
                                  max_queue=self._max_queue, close_timeout=self._close_timeout)
            self._deliver(ws)
        else:
            self._rendezvous_result(action.request_id, answer.status, answer.reason)

    def _rendezvous_result(self, request_id: str, status: int | None, reason: str) -> None:
        def report(now: float) -> None:
            # The listener may have gone offline meanwhile and forgotten the request.
            with contextlib.suppress(LocalProtocolError):
                self.listener.rendezvous_result(now, request_id, status, reason)
        self._report(report)

    def _deliver(self, ws: RelayedWebSocket) -> None:
        if self._closing:
            self._spawn(ws.close(1001, "listener closing"))
            return
        self._sockets.add(ws)
        ws._protocol.lost.add_done_callback(lambda _: self._sockets.discard(ws))
        hook = self._connection_hook
        if hook is not None:
            self._spawn(self._run_connection_hook(hook, ws), handler=True)
        elif self._accepted.full():
            logger.warning("accept backlog full; closing a new connection with 1013")
            self._spawn(ws.close(1013, "listener busy"))
        else:
            self._accepted.put_nowait(ws)

    async def _run_connection_hook(self, hook: ConnectionHook, ws: RelayedWebSocket) -> None:
        try:
            result = hook(ws)
            if inspect.isawaitable(result):
                await result
                await ws.close()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("connection hook failed")
            await ws.close(1011, "listener error")

    # -- events ----------------------------------------------------------------------------

    def _handle(self, event: Event) -> None:
        if isinstance(event, Listening):
            if self._started is not None and not self._started.done():
                self._started.set_result(None)
        elif isinstance(event, ConnectionRequested):
            # Requests never answered (a hook that never returns) are forgotten after a while.
            stale = event.received_at - 4 * _RENDEZVOUS_TIMEOUT
            for key in [k for k, r in self._requests.items() if r.received_at < stale]:
                del self._requests[key]
            self._requests[event.id] = event
            self._decide(event)
        elif isinstance(event, Disconnected):
            error = event.error
            started = self._started
            if (started is not None and not started.done() and error.status is not None
                    and 400 <= error.status < 500):
                self._first_error = error
                started.set_exception(error)
                started.exception()  # start() re-raises it; no "never retrieved" warning
                self.listener.close(time.time())
            self._call_error_hook(error)
        elif isinstance(event, Offline):
            self._offline = event
            if self._started is not None and not self._started.done():
                self._started.set_exception(event.error)
                self._started.exception()
            self._call_error_hook(event.error)
            self._end_iteration()
            if self._closed is not None and not self._closed.done():
                self._closed.set_result(None)
        elif isinstance(event, RendezvousFailed):
            self._requests.pop(event.request_id, None)
            self._call_error_hook(event.error)
        elif isinstance(event, TokenRenewalFailed):
            self._call_error_hook(event.error)
        elif isinstance(event, Closed):
            if self._closed is not None and not self._closed.done():
                self._closed.set_result(None)
            self._end_iteration()

    def _end_iteration(self) -> None:
        if self._accepted.full():
            return  # iterators see _END after draining: put it when there is room
        self._accepted.put_nowait(_END)

    def _call_error_hook(self, error: Exception) -> None:
        hook = self._error_hook
        if hook is None:
            logger.info("listener %s: %s", self.listener.url.split("?")[0], error)
            return
        try:
            result = hook(error)
            if inspect.isawaitable(result):
                self._spawn(self._await_hook(result, "error"))
        except Exception:
            logger.exception("error hook failed")

    @staticmethod
    async def _await_hook(result: Awaitable[Any], name: str) -> None:
        try:
            await result
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s hook failed", name)

    def _decide(self, event: ConnectionRequested) -> None:
        hook = self._headers_hook
        if hook is None:
            self._answer(event, None)
            return
        try:
            decision = hook(event)
        except Exception:
            logger.exception("headers hook failed; rejecting the connection")
            self._answer(event, Reject(500, "Internal Server Error"))
            return
        if inspect.isawaitable(decision):
            self._spawn(self._decide_later(event, decision))
        else:
            self._answer(event, decision)

    async def _decide_later(self, event: ConnectionRequested,
                            pending: Awaitable[Decision]) -> None:
        try:
            decision = await pending
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("headers hook failed; rejecting the connection")
            decision = Reject(500, "Internal Server Error")
        self._answer(event, decision)
        self._pump()

    def _answer(self, event: ConnectionRequested, decision: Decision) -> None:
        now = time.time()
        lst = self.listener
        try:
            if decision is None:
                # Like hyco-ws and .NET: offer the sender's first subprotocol (§3.1).
                offered = event.command.requested_subprotocols
                lst.accept(now, event, subprotocol=offered[0] if offered else None)
            elif isinstance(decision, str):
                lst.accept(now, event, subprotocol=decision)
            elif isinstance(decision, Accept):
                lst.accept(now, event, subprotocol=decision.subprotocol,
                           headers=decision.headers)
            elif isinstance(decision, Reject):
                lst.reject(now, event, decision.status, decision.description)
            elif isinstance(decision, tuple) and len(decision) == 2:
                lst.reject(now, event, int(decision[0]), str(decision[1]))
            else:
                raise TypeError(f"headers hook returned {decision!r}; return None, a "
                                "subprotocol, Accept(...), Reject(...) or (status, description)")
        except (LocalProtocolError, TypeError) as exc:
            logger.warning("cannot answer connection request %s: %s", event.id, exc)
            self._requests.pop(event.id, None)
            if isinstance(exc, TypeError):
                with contextlib.suppress(LocalProtocolError):
                    lst.reject(now, event, 500, "Internal Server Error")


def create_relayed_server(
    options: Mapping[str, Any],
    on_connection: ConnectionHook | None = None,
) -> RelayedServer:
    """hyco-ws ``createRelayedServer({server, token}, (ws) => ...)`` in Python.

    ``options`` holds ``server`` and ``token`` plus any :class:`RelayedServer` keyword (``id``
    is accepted for ``listener_id``). Inside a running event loop the server starts listening at
    once, like hyco-ws; ``await server.start()`` (or ``async with server``) waits for it.
    """
    opts = dict(options)
    try:
        server = opts.pop("server")
        token = opts.pop("token")
    except KeyError as exc:
        raise ValueError(f"options need {exc.args[0]!r}") from None
    if "id" in opts:
        opts["listener_id"] = opts.pop("id")
    if on_connection is not None:
        opts["connection"] = on_connection
    relayed = RelayedServer(server, token, **opts)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return relayed
    task = loop.create_task(relayed.start())
    relayed._tasks.add(task)
    task.add_done_callback(relayed._tasks.discard)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return relayed


