"""The listener on asyncio: ``RelayedServer`` runs a ``ListenerDriver`` (hyco_proto.drivers).

The driver decides everything (control channel, accept/reject, rendezvous, token renewal,
keepalive, reconnect backoff, what a failed first open means); this adapter opens the transports
it asks for, moves their bytes, runs its one timer and calls the application's hooks. Accepted
connections are :class:`~hyco_proto.adapters.asyncio.websocket.RelayedWebSocket` objects, handed
to the ``connection`` hook or to ``async for ws in server``. Relayed HTTP requests go to the
``request_handler`` (one task each, :mod:`.http_listener`); without one they are answered 501.

``start()`` (and ``async with``) returns once listening, or raises within ``open_timeout``:
a relay that cannot be reached, or that refuses the listener (401, 403, 404), is an error naming
the address and the cause. After the first success every failure except 404 (terminal,
``Offline``) leads to a reconnect with backoff, reported to the ``error`` hook.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl as _ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from functools import partial
from types import TracebackType
from typing import Any, TypeAlias

from ...drivers.decisions import BACKLOG_FULL, Accept, Decision, Reject
from ...drivers.http import (
    HttpRequestCancelled,
    HttpRequestData,
    HttpRequestStarted,
    HttpResponseWritable,
    PauseReading,
    RequestCancelled,
    Response,
    ResumeReading,
)
from ...drivers.listener import (
    AbortTransport,
    DriverEvent,
    HandOver,
    ListenerDriver,
    ListenerView,
    OpenTransport,
    StartFailed,
    Write,
    relayed_server_options,
)
from ...drivers.stream import ConnectionClosedError, check_max_queue
from ...errors import RelayError
from ...listener import (
    Closed,
    ConnectionRequested,
    Disconnected,
    Listening,
    Offline,
    RendezvousFailed,
    TokenRenewalFailed,
    TokenSourceLike,
)
from .http_listener import RelayedRequest, RequestHandler, body_chunks
from .link import DEFAULT_WRITE_LIMIT, Link, open_link
from .serve import log_hidden_failure
from .websocket import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_SIZE,
    RelayedWebSocket,
)

__all__ = ["Accept", "Decision", "Reject", "RelayedServer", "create_relayed_server"]

_Now: TypeAlias = Callable[[float], Any]

logger = logging.getLogger("hyco_proto.adapters.asyncio")

HeadersHook: TypeAlias = Callable[[ConnectionRequested], Decision | Awaitable[Decision]]
ConnectionHook: TypeAlias = Callable[[RelayedWebSocket], Awaitable[None] | None]
ErrorHook: TypeAlias = Callable[[Exception], Awaitable[None] | None]

_END = object()  # ends ``async for`` over the server
_MIN_TIMER_DELAY = 0.001


class _Port:
    """A driver transport's receiver: its bytes go to the driver until it is handed over."""

    __slots__ = ("key", "server")

    def __init__(self, server: RelayedServer, key: int) -> None:
        self.server = server
        self.key = key

    def data_received(self, data: bytes) -> None:
        server = self.server
        server._driver.data_received(self.key, data, time.time())
        server._run()

    def eof_received(self) -> None:
        self.connection_lost(None)

    def connection_lost(self, exc: Exception | None) -> None:
        server = self.server
        server._links.pop(self.key, None)
        server._driver.connection_lost(self.key, time.time())
        server._run()


class RelayedServer(ListenerView):
    """A Hybrid Connections listener (hyco-ws ``RelayedServer``) on asyncio.

    Args:
        server: the listen URI, ``wss://{ns}/$hc/{hc}`` (``sb-hc-action=listen`` is added).
        token: a SAS token string, a callable returning fresh ones (renewed ahead of expiry),
            or a :class:`~hyco_proto.sas.TokenSource`. A fixed string that expires stops the
            listener with ``AuthorizationError``.
        headers: decides each :class:`~hyco_proto.listener.ConnectionRequested` (sync or
            async): see :data:`~hyco_proto.drivers.decisions.Decision`. A hook that raises
            rejects with 500 (and is logged).
        connection: receives each accepted :class:`RelayedWebSocket`. A sync hook only starts
            things (the socket lives on, like hyco-ws); an async hook runs as a task and the
            socket is closed when it returns (like ``websockets``). Without it, iterate with
            ``async for ws in server``.
        request_handler: answers relayed HTTP requests: ``async def handler(request) ->
            Response`` (a :class:`~.http_listener.RelayedRequest`; a plain function returning
            a Response works too), run as one task per request; the task is cancelled when the
            sender goes away. A handler that raises gets 500 (logged), or, once the response
            head is out, its response is aborted. Without it every request gets 501.
        error: receives ``RelayError`` s after the start: control channel lost
            (``Disconnected``), ``Offline`` (404), failed rendezvous, token renewal failures.
            Missing hook: logged only.
        listener_id: the ``sb-hc-id`` of this listener.
        keepalive_interval: seconds between control-channel pings (None: no pings).
        open_timeout: bound for opening the control channel (the first time: ``start()``
            raises after it; later: the attempt is retried).
        ssl: TLS context for ``wss://`` (default: the system's default context).
        max_queue: per accepted socket: received messages queued before reading pauses.
        max_size: per accepted socket: the largest message in bytes (1009 beyond; ``None``:
            unlimited).
        write_limit: per accepted socket: the write buffer's high-water mark in bytes.
        close_timeout: per accepted socket: seconds the closing handshake may take.
        backlog: accepted sockets waiting for ``async for`` (beyond: closed with 1013).
        channel_headers: extra control-channel handshake headers (e.g. ``Relay-User-Agent``).
        listener_options: further :class:`~hyco_proto.listener.Listener` keyword arguments
            (``reconnect_delays``, ``keepalive_timeout`` ...).
    """

    def __init__(
        self,
        server: str,
        token: str | Callable[[], str] | TokenSourceLike,
        *,
        headers: HeadersHook | None = None,
        connection: ConnectionHook | None = None,
        request_handler: RequestHandler | None = None,
        error: ErrorHook | None = None,
        listener_id: str | None = None,
        keepalive_interval: float | None = 30.0,
        open_timeout: float = 10.0,
        ssl: _ssl.SSLContext | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_size: int | None = DEFAULT_MAX_SIZE,
        write_limit: int = DEFAULT_WRITE_LIMIT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        backlog: int = 128,
        channel_headers: Iterable[tuple[str, str]] = (),
        **listener_options: Any,
    ) -> None:
        check_max_queue(max_queue)
        self._driver = ListenerDriver.for_server(
            server, token, listener_id=listener_id, keepalive_interval=keepalive_interval,
            open_timeout=open_timeout, channel_headers=channel_headers, max_size=max_size,
            close_timeout=close_timeout, serve_http=request_handler is not None,
            **listener_options)
        self.server = server
        self.open_timeout = open_timeout
        self._headers_hook = headers
        self._connection_hook = connection
        self._request_handler = request_handler
        self._requests: dict[str, tuple[RelayedRequest, asyncio.Task[None]]] = {}
        self._error_hook = error
        self._ssl = ssl
        self._max_queue = max_queue
        self._write_limit = write_limit
        self._close_timeout = close_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._links: dict[int, Link] = {}
        self._opening: dict[int, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._sockets: set[RelayedWebSocket] = set()
        self._accepted: asyncio.Queue[object] = asyncio.Queue(backlog)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._running = False
        self._started: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._offline: RelayError | None = None
        self._closing = False
        self._end_pending = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the control channel; return once listening. Idempotent.

        Raises the typed ``RelayError`` (naming the address and cause) when the first attempt
        fails: unreachable, refused (401/403/404), or no answer within ``open_timeout``.
        """
        if self._closing:
            raise RelayError(f"the listener at {self._driver.address} was closed; create a new "
                             "RelayedServer to listen again")
        if self._started is None:
            loop = asyncio.get_running_loop()
            self._loop = loop
            self._started = loop.create_future()
            self._closed = loop.create_future()
            self._driver.start(time.time())
            self._run()
        await asyncio.shield(self._started)

    async def close(self) -> None:
        """Stop listening: close the control channel (1000), close accepted sockets (1001),
        cancel the adapter's tasks. Idempotent."""
        if self._closing:
            if self._closed is not None:
                await asyncio.shield(self._closed)
            return
        self._closing = True
        self._driver.close(time.time())
        if self._started is None:
            self._end_iteration()
            return
        self._run()
        assert self._closed is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), self._close_timeout + 1.0)
        except asyncio.TimeoutError:
            logger.warning("%s: control channel did not close in time", self._driver.address)
        self._cancel_timer()
        for link in list(self._links.values()):
            link.abort()
        for task in [*self._tasks, *self._opening.values()]:
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
        leftovers = [*self._tasks, *self._opening.values()]
        if leftovers:
            await asyncio.wait(leftovers, timeout=1.0)
        self._end_iteration()
        self._settle(self._closed, None)
        if not self._started.done():
            self._started.set_exception(RelayError(
                f"the listener at {self._driver.address} was closed before it listened"))
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

    async def accept(self, timeout: float | None = None) -> RelayedWebSocket:
        """The next accepted socket (one step of ``async for``); ``TimeoutError`` after
        ``timeout`` seconds; ``RelayError`` once closed."""
        try:
            ws = await asyncio.wait_for(self._next(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no connection accepted at {self._driver.address} within "
                               f"{timeout:g} s") from None
        if ws is None:
            raise RelayError(f"the listener at {self._driver.address} is closed")
        return ws

    async def _next(self) -> RelayedWebSocket | None:
        item = await self._accepted.get()
        if self._end_pending and not self._accepted.full():
            self._end_pending = False
            self._accepted.put_nowait(_END)
        if item is _END:
            self._accepted.put_nowait(_END)  # later iterators end too
            if self._offline is not None and not self._closing:
                raise self._offline
            return None
        assert isinstance(item, RelayedWebSocket)
        return item

    # -- the driver ------------------------------------------------------------------------

    def _run(self) -> None:
        """Execute what the driver asks for and hand its events out, until it is quiet."""
        if self._running:
            return  # the outer call picks up what this one would have done
        self._running = True
        try:
            self._driver.run(self._execute, self._handle)
        finally:
            self._running = False
        self._arm_timer()

    def _execute(self, action: object) -> None:
        if isinstance(action, Write):
            link = self._links.get(action.key)
            if link is not None:
                link.write(action.data)
        elif isinstance(action, OpenTransport):
            task = self._spawn(self._open_transport(action))
            self._opening[action.key] = task
        elif isinstance(action, AbortTransport):
            link = self._links.pop(action.key, None)
            if link is not None:
                link.abort()
            opening = self._opening.pop(action.key, None)
            if opening is not None:
                opening.cancel()
        elif isinstance(action, HandOver):
            self._hand_over(action)
        elif isinstance(action, (PauseReading, ResumeReading)):
            link = self._links.get(action.key)
            if link is not None:
                if isinstance(action, PauseReading):
                    link.pause_reading()
                else:
                    link.resume_reading()

    async def _open_transport(self, action: OpenTransport) -> None:
        key, url = action.key, action.url
        link = Link(_Port(self, key), write_limit=self._write_limit)
        try:
            # Bounded by the driver: it aborts (cancels) an attempt that takes too long.
            await open_link(link, url.host, url.port, secure=url.secure, ssl=self._ssl,
                            timeout=None)
        except Exception as exc:  # OSError, and e.g. UnicodeError for a bad host name
            if self._opening.pop(key, None) is not None:
                self._driver.transport_failed(key, time.time(),
                                              str(exc) or type(exc).__name__)
                self._run()
            return
        if self._opening.pop(key, None) is None:
            link.abort()  # dropped by the driver while opening
            return
        self._links[key] = link
        self._driver.transport_open(key, time.time())
        self._run()

    def _hand_over(self, action: HandOver) -> None:
        link = self._links.pop(action.key, None)
        if link is None:
            return
        ws = RelayedWebSocket(link, action.connection, address=action.request.command.address,
                              request=action.request, max_queue=self._max_queue,
                              close_timeout=self._close_timeout)
        ws.opened.set_result(None)
        ws._process(action.events)
        if self._closing:
            self._spawn(ws.close(1001, "listener closing"))
            return
        self._sockets.add(ws)
        link.lost.add_done_callback(lambda _: self._sockets.discard(ws))
        hook = self._connection_hook
        if hook is not None:
            self._spawn(self._run_connection_hook(hook, ws), handler=True)
        elif self._accepted.full():
            logger.warning("%s: accept backlog full; closing a new connection with 1013",
                           self._driver.address)
            self._spawn(ws.close(1013, "listener busy"))
        else:
            self._accepted.put_nowait(ws)

    def _arm_timer(self) -> None:
        loop = self._loop
        if loop is None:
            return
        deadline = self._driver.next_deadline()
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
        self._driver.handle_timer(time.time())
        self._run()

    def _spawn(self, coro: Awaitable[Any], *, handler: bool = False) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        bucket = self._handlers if handler else self._tasks
        bucket.add(task)
        task.add_done_callback(bucket.discard)
        return task

    async def _run_connection_hook(self, hook: ConnectionHook, ws: RelayedWebSocket) -> None:
        try:
            result = hook(ws)
            if inspect.isawaitable(result):
                # In a task of its own that this one awaits (as serve runs its handler): a
                # message's wake-up resumes the hook's frames only, not this coroutine's too.
                task = asyncio.ensure_future(result)
                try:
                    await task
                except asyncio.CancelledError:
                    log_hidden_failure(task, "connection hook")
                    raise
                await ws.close()
        except asyncio.CancelledError:
            raise
        except ConnectionClosedError:
            await ws.close()  # the peer ended the conversation: a normal end
        except Exception:
            logger.exception("connection hook failed; closing the connection with 1011")
            await ws.close(1011, "internal error")

    # -- events ----------------------------------------------------------------------------

    @staticmethod
    def _settle(future: asyncio.Future[None] | None, error: BaseException | None) -> None:
        if future is None or future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
            future.exception()  # whoever awaits it re-raises; no "never retrieved" warning

    def _handle(self, event: DriverEvent) -> None:
        if isinstance(event, HttpRequestData):
            entry = self._requests.get(event.request_id)
            if entry is not None:
                entry[0]._feed(event.data, event.end)
        elif isinstance(event, HttpRequestStarted):
            self._start_request(event)
        elif isinstance(event, HttpRequestCancelled):
            self._cancel_request(event)
        elif isinstance(event, HttpResponseWritable):
            entry = self._requests.get(event.request_id)
            if entry is not None:
                entry[0]._writable.set()
        elif isinstance(event, Listening):
            self._settle(self._started, None)
        elif isinstance(event, ConnectionRequested):
            self._decide(event)
        elif isinstance(event, StartFailed):
            self._settle(self._started, event.error)
            self._end_iteration()
            self._settle(self._closed, None)
        elif isinstance(event, Offline):
            self._offline = event.error
            self._settle(self._started, event.error)
            self._call_error_hook(event.error)
            self._end_iteration()
            self._settle(self._closed, None)
        elif isinstance(event, (Disconnected, RendezvousFailed, TokenRenewalFailed)):
            self._call_error_hook(event.error)
        elif isinstance(event, Closed):
            self._settle(self._closed, None)
            self._end_iteration()

    # -- relayed HTTP ----------------------------------------------------------------------

    def _start_request(self, event: HttpRequestStarted) -> None:
        rid = event.id

        def consumed(size: int) -> None:
            self._driver.body_consumed(rid, size, time.time())
            self._run()

        request = RelayedRequest(event.command, event.hybrid_connection, consumed)
        task = self._spawn(self._serve_request(request), handler=True)
        entry = (request, task)
        self._requests[rid] = entry

        def forget(_: object) -> None:  # also when cancelled before it ever ran
            if self._requests.get(rid) is entry:
                del self._requests[rid]

        task.add_done_callback(forget)

    def _cancel_request(self, event: HttpRequestCancelled) -> None:
        entry = self._requests.get(event.request_id)
        if entry is None:
            return
        request, task = entry
        request._cancel(event.error)
        if not request._responded:
            task.cancel()  # the sender went away: nobody waits for the answer

    def _call(self, fn: _Now) -> Any:
        """``fn(now)`` on the driver, then run what it asked for."""
        try:
            return fn(time.time())
        finally:
            self._run()

    async def _serve_request(self, request: RelayedRequest) -> None:
        rid = request.id
        handler = self._request_handler
        assert handler is not None
        try:
            result = handler(request)
            if inspect.isawaitable(result):
                result = await result
            if not isinstance(result, Response):
                raise TypeError(f"the request handler returned {result!r}; return a Response")
            await self._send_response(request, result)
        except asyncio.CancelledError:
            if not request.cancelled:
                raise  # the server is closing
        except RequestCancelled:
            pass  # the sender went away: nothing to answer
        except Exception:
            if not request.cancelled:
                logger.exception("%s: request handler failed for %s %s", self._driver.address,
                                 request.method, request.target)
                self._call(partial(self._driver.handler_failed, rid))

    async def _send_response(self, request: RelayedRequest, response: Response) -> None:
        rid, driver = request.id, self._driver
        if not response.streaming:
            request._responded = True
            key = self._call(partial(driver.respond, rid, response))
            if key is not None:  # None: the driver writes it all once its rendezvous opens
                await self._written(request, key)
            return
        chunks = body_chunks(response.body)
        try:
            # The first chunk before the head: a body that fails at once still gets a 500.
            chunk = await anext(chunks, None)
            if chunk is None:
                request._responded = True
                self._call(partial(driver.respond, rid, response.with_body(b"")))
                return
            await self._written(request, self._call(partial(driver.respond, rid, response)))
            while chunk is not None:
                await self._written(request, self._call(partial(driver.send_body, rid, chunk)))
                chunk = await anext(chunks, None)
            request._responded = True
            await self._written(request, self._call(partial(driver.end_response, rid)))
        finally:
            await chunks.aclose()

    async def _written(self, request: RelayedRequest, key: int | None) -> None:
        """Wait until more may be written: the response's rendezvous is open (``key`` None)
        and the transport's write buffer is below its limit."""
        if key is None:
            await request._writable.wait()
            request._check()
            return
        link = self._links.get(key)
        if link is not None:
            await link.drain()

    def _end_iteration(self) -> None:
        if self._accepted.full():
            self._end_pending = True  # put by _next() as soon as there is room
            return
        self._accepted.put_nowait(_END)

    def _call_error_hook(self, error: Exception) -> None:
        hook = self._error_hook
        if hook is None:
            logger.info("listener %s: %s", self._driver.address, error)
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
        if self._connection_hook is None and self._accepted.full():
            # Nobody takes sockets off the backlog: say so at the handshake (503).
            logger.warning("%s: accept backlog full; rejecting a sender with 503",
                           self._driver.address)
            self._answer(event, BACKLOG_FULL)
            return
        if hook is None:
            self._answer(event, None)
            return
        try:
            decision = hook(event)
        except Exception:
            logger.exception("headers hook failed; rejecting the connection with 500")
            self._driver.refuse(event, time.time())
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
            logger.exception("headers hook failed; rejecting the connection with 500")
            self._driver.refuse(event, time.time())
            self._run()
            return
        self._answer(event, decision)
        self._run()

    def _answer(self, event: ConnectionRequested, decision: Decision) -> None:
        try:
            self._driver.answer(event, decision, time.time())
        except Exception as exc:
            logger.warning("%s: cannot answer connection request %s: %s",
                           self._driver.address, event.id, exc)


def create_relayed_server(
    options: Mapping[str, Any],
    on_connection: ConnectionHook | None = None,
    *,
    request_handler: RequestHandler | None = None,
) -> RelayedServer:
    """hyco-ws ``createRelayedServer({server, token}, (ws) => ...)`` in Python.

    ``options`` holds ``server`` and ``token`` plus any :class:`RelayedServer` keyword (``id``
    is accepted for ``listener_id``). ``request_handler`` answers relayed HTTP requests (like
    hyco-https' ``createRelayedServer(options, requestListener)``), next to ``on_connection``.
    Inside a running event loop the server starts listening at once, like hyco-ws;
    ``await server.start()`` (or ``async with server``) waits for it.
    """
    server, token, opts = relayed_server_options(options, on_connection, request_handler)
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
