"""Serve an ASGI 3 application through Azure Relay Hybrid Connections, on asyncio.

::

    from hyco_proto.adapters.asgi import serve
    asyncio.run(serve(app, "wss://ns.servicebus.windows.net/$hc/myhc", token))

A :class:`~hyco_proto.adapters.asyncio.RelayedServer` listens on the hybrid connection; each
relayed HTTP request runs the application once with an ``http`` scope, each relayed WebSocket
sender once with a ``websocket`` scope. Senders call ``https://{namespace}/{hc}/{path}``; the
application sees ``/{path}`` (root path ``""``): it routes as it would at the root of a web
server. See docs/http-apps.md for what is mapped how.

* Request bodies stream: ``http.request`` messages (``more_body``) as the relay delivers the
  body; ``http.disconnect`` once the response is complete or the sender went away.
* Responses stream: a response whose body comes in several ``http.response.body`` messages
  reaches the sender chunk by chunk (SSE, ``StreamingResponse``); the application is held back
  while more than :data:`SEND_BUFFER` bytes wait for the relay. A response given whole goes
  out as one piece. ``send`` raises :class:`ClientDisconnected` (an ``OSError``, ASGI HTTP
  spec 2.4) once the sender has gone.
* WebSocket: ``websocket.connect`` is delivered while the sender waits at the relay;
  ``websocket.accept`` accepts it (with the application's subprotocol), ``websocket.close``
  first rejects it with 403.
* Lifespan: ``startup`` runs before listening and ``shutdown`` after the listener closed, if
  the application supports it (``lifespan="auto"``; ``"on"`` requires it, ``"off"`` skips it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from types import TracebackType
from typing import Any, Protocol, TypeAlias

from ..drivers.decisions import Accept, Decision, Reject
from ..drivers.http import RelayedRequest, RequestCancelled, Response, split_target
from ..drivers.stream import ConnectionClosedError
from ..errors import RelayError
from ..listener import ConnectionRequested, Offline, RendezvousFailed
from ._apps import AppEndpoint, relay_status, split_path
from .asyncio import RelayedServer, RelayedWebSocket

__all__ = [
    "ASGIApp",
    "AsgiBridge",
    "AsgiServer",
    "ClientDisconnected",
    "LifespanError",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "create_server",
    "serve",
]

logger = logging.getLogger("hyco_proto.adapters.asgi")

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
#: An ASGI 3 application: ``async def app(scope, receive, send)``.
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Response bytes the application may have sent ahead of the relay before ``send`` waits.
SEND_BUFFER = 256 * 1024
#: The ``asgi`` scope key: ASGI 3; HTTP spec 2.4 (``send`` raises ``OSError`` after a
#: disconnect), WebSocket spec 2.3 (``reason`` in ``websocket.close``).
_HTTP_ASGI = {"version": "3.0", "spec_version": "2.4"}
_WS_ASGI = {"version": "3.0", "spec_version": "2.3"}
_LIFESPAN_ASGI = {"version": "3.0", "spec_version": "2.0"}
_FAILED = Response(500, [("Content-Type", "text/plain; charset=utf-8")],
                   b"Internal Server Error")
#: WebSocket close code when the rendezvous never opened or the connection dropped.
_ABNORMAL = 1006


class ClientDisconnected(OSError):
    """The sender of a relayed request or WebSocket has gone: ASGI ``send`` raises this."""


class LifespanError(RuntimeError):
    """The application's lifespan ``startup`` failed (or, with ``lifespan="on"``, is not
    supported); the message says why."""


class _Request(Protocol):
    """What the bridge uses of the adapter's relayed request."""

    method: str
    target: str
    path: str
    query: str
    id: str
    has_body: bool

    @property
    def headers(self) -> Any: ...

    @property
    def remote_address(self) -> tuple[str, int]: ...

    def stream(self) -> AsyncIterator[bytes]: ...


def _header_pairs(headers: Any) -> list[tuple[bytes, bytes]]:
    items = headers.raw_items() if hasattr(headers, "raw_items") else headers.items()
    return [(name.lower().encode("latin-1"), value.encode("latin-1", "replace"))
            for name, value in items]


def _text_pairs(headers: Any, what: str) -> list[tuple[str, str]]:
    pairs = []
    for pair in headers or ():
        try:
            name, value = pair
            pairs.append((bytes(name).decode("latin-1"), bytes(value).decode("latin-1")))
        except (TypeError, ValueError):
            raise TypeError(f"{what} headers are [name, value] byte string pairs, not "
                            f"{pair!r}") from None
    return pairs


# --------------------------------------------------------------------------------------------
# HTTP


class _HttpCall:
    """One relayed request as the application sees it: ``receive`` / ``send`` and the response
    they build, handed to the adapter as a :class:`Response`."""

    def __init__(self, request: _Request, scope: Scope) -> None:
        self.request = request
        self.scope = scope
        self._stream: AsyncIterator[bytes] | None = None
        self._request_done = not request.has_body
        self._empty_due = not request.has_body  # no body: one empty http.request
        #: The response is out (or abandoned): ``receive`` says ``http.disconnect``.
        self.over = asyncio.Event()
        #: The sender went away (or the adapter gave the response up): ``send`` raises.
        self.gone = False
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False  # the last body message arrived
        self.app_done = False
        self.app_error: BaseException | None = None
        self._changed = asyncio.Event()  # the app sent something (or ended)
        self._drained = asyncio.Event()  # the relay took chunks

    # -- the application's side ------------------------------------------------------------

    async def receive(self) -> Message:
        if not self._request_done and not self.gone:
            if self._stream is None:
                self._stream = self.request.stream().__aiter__()
            try:
                chunk = await self._stream.__anext__()
            except StopAsyncIteration:
                self._request_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            except RequestCancelled:
                self.sender_gone()
            else:
                return {"type": "http.request", "body": chunk, "more_body": True}
        elif self._empty_due and not self.gone:
            self._empty_due = False
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.over.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "http.response.start":
            if self.status is not None:
                raise RuntimeError("http.response.start sent twice")
            if self.gone:
                raise ClientDisconnected(self._gone_text())
            status = message["status"]
            if isinstance(status, bool) or not isinstance(status, int):
                raise TypeError(f"http.response.start status must be an int, not {status!r}")
            self.headers = _text_pairs(message.get("headers"), "http.response.start")
            self.status = status
            self._changed.set()
        elif kind == "http.response.body":
            if self.status is None:
                raise RuntimeError("http.response.body before http.response.start")
            if self.complete:
                raise RuntimeError("http.response.body after the response was complete "
                                   "(more_body was false)")
            if self.gone:
                raise ClientDisconnected(self._gone_text())
            body = message.get("body", b"")
            if body:
                data = bytes(body)
                self.chunks.append(data)
                self.buffered += len(data)
            if not message.get("more_body", False):
                self.complete = True
            self._changed.set()
            await self._room()
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} for an HTTP request")

    async def _room(self) -> None:
        """Wait while the relay is more than :data:`SEND_BUFFER` bytes behind."""
        while self.buffered > SEND_BUFFER and not self.gone and not self.complete:
            self._drained.clear()
            await self._drained.wait()
        if self.gone and not self.complete:
            raise ClientDisconnected(self._gone_text())

    # -- the bridge's side -----------------------------------------------------------------

    def _gone_text(self) -> str:
        return f"the sender of {self.request.method} {self.request.target} has gone"

    def sender_gone(self) -> None:
        self.gone = True
        self.over.set()
        self._drained.set()
        self._changed.set()

    def finished(self) -> None:
        """The response has been handed over whole."""
        self.over.set()

    def ended(self, error: BaseException | None) -> None:
        """The application returned (``error``: or raised)."""
        self.app_done = True
        self.app_error = error
        self._changed.set()

    async def changed(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    def take(self) -> bytes | None:
        """The next body chunk the application sent, if any."""
        if not self.chunks:
            return None
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.buffered <= SEND_BUFFER // 4:
            self._drained.set()
        return chunk


class _ResponseBody:
    """A streamed response body: the chunks the application sends, as the relay takes them.

    Closing it early (the adapter gave the response up: the sender went away) makes the
    application's next ``send`` raise :class:`ClientDisconnected`."""

    def __init__(self, call: _HttpCall) -> None:
        self._call = call

    def __aiter__(self) -> _ResponseBody:
        return self

    async def __anext__(self) -> bytes:
        call = self._call
        while True:
            chunk = call.take()
            if chunk is not None:
                if chunk:
                    return chunk
                continue
            if call.complete:
                call.finished()
                raise StopAsyncIteration
            if call.gone:
                raise RequestCancelled(call._gone_text(), close_code=1001)
            if call.app_done:
                call.sender_gone()  # nobody sends any more: stop everything
                raise RuntimeError(
                    f"the ASGI application {'failed' if call.app_error else 'returned'} "
                    f"before completing its response to {call.request.method} "
                    f"{call.request.target}") from call.app_error
            await call.changed()

    async def aclose(self) -> None:
        call = self._call
        if not call.complete or call.chunks:
            call.sender_gone()


# --------------------------------------------------------------------------------------------
# WebSocket


class _WsSession:
    """One relayed WebSocket sender as the application sees it: ``websocket.connect`` while the
    sender waits at the relay, then the accepted socket."""

    def __init__(self, event: ConnectionRequested, scope: Scope) -> None:
        self.event = event
        self.scope = scope
        loop = asyncio.get_running_loop()
        #: The application's answer: an Accept or a Reject.
        self.decision: asyncio.Future[Decision] = loop.create_future()
        self.ws: RelayedWebSocket | None = None
        self.attached: asyncio.Future[RelayedWebSocket | None] = loop.create_future()
        self._connect_sent = False
        self._closed_by_app = False
        self.close_code: int | None = None  # the disconnect the application heard
        self.close_reason = ""
        self.rejected_code = 1000  # the code of a websocket.close before accepting
        self.task: asyncio.Task[None] | None = None

    def attach(self, ws: RelayedWebSocket | None) -> None:
        if not self.attached.done():
            self.attached.set_result(ws)

    def _decide(self, decision: Decision) -> None:
        if not self.decision.done():
            self.decision.set_result(decision)

    async def _socket(self) -> RelayedWebSocket | None:
        if not self.decision.done():
            raise RuntimeError("the WebSocket is not accepted yet: send websocket.accept (or "
                               "websocket.close) first")
        if not isinstance(self.decision.result(), Accept):
            return None
        return await asyncio.shield(self.attached)

    def _disconnect(self, code: int, reason: str = "") -> Message:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        return {"type": "websocket.disconnect", "code": self.close_code,
                "reason": self.close_reason}

    async def receive(self) -> Message:
        if not self._connect_sent:
            self._connect_sent = True
            return {"type": "websocket.connect"}
        if self.close_code is not None:
            return self._disconnect(self.close_code)
        ws = await self._socket()
        if ws is None:
            decision = self.decision.result()
            return self._disconnect(self.rejected_code if isinstance(decision, Reject)
                                    else _ABNORMAL)
        try:
            message = await ws.recv()
        except ConnectionClosedError as exc:
            return self._disconnect(exc.code, exc.reason)
        if isinstance(message, str):
            return {"type": "websocket.receive", "text": message}
        return {"type": "websocket.receive", "bytes": message}

    async def send(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "websocket.accept":
            if self.decision.done():
                raise RuntimeError("websocket.accept after the WebSocket was accepted or "
                                   "closed")
            subprotocol = message.get("subprotocol")
            headers = tuple(_text_pairs(message.get("headers"), "websocket.accept"))
            self._decide(Accept(subprotocol=subprotocol, headers=headers))
        elif kind == "websocket.close":
            code = int(message.get("code", 1000))
            reason = message.get("reason") or ""
            if not self.decision.done():
                # ASGI: closing before accepting turns the sender away with 403.
                self.rejected_code = code
                self._decide(Reject(403, reason or "Forbidden"))
                return
            if self._closed_by_app:
                raise RuntimeError("websocket.close sent twice")
            self._closed_by_app = True
            ws = await self._socket()
            if ws is not None:
                await ws.close(code, reason)
        elif kind == "websocket.send":
            if self._closed_by_app or self.close_code is not None:
                raise ClientDisconnected("the WebSocket is closed")
            ws = await self._socket()
            if ws is None:
                raise ClientDisconnected("the WebSocket connection never opened")
            text = message.get("text")
            data = message.get("bytes")
            if text is not None:
                payload: str | bytes = text
            elif data is not None:
                payload = bytes(data)
            else:
                raise RuntimeError("websocket.send needs 'text' or 'bytes'")
            try:
                await ws.send(payload)
            except ConnectionClosedError as exc:
                raise ClientDisconnected(f"the WebSocket is closed ({exc.code})") from None
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} for a WebSocket")


# --------------------------------------------------------------------------------------------
# lifespan


class _Lifespan:
    """The application's lifespan protocol: startup before listening, shutdown after."""

    def __init__(self, app: ASGIApp, mode: str, state: dict[str, Any], timeout: float) -> None:
        self.app = app
        self.mode = mode
        self.state = state
        self.timeout = timeout
        self.supported = False
        self._task: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._answers: asyncio.Queue[Message] = asyncio.Queue()
        self._error: BaseException | None = None

    async def _main(self) -> None:
        scope: Scope = {"type": "lifespan", "asgi": dict(_LIFESPAN_ASGI), "state": self.state}
        try:
            await self.app(scope, self._inbox.get, self._answer)
        except Exception as exc:  # reported by startup / shutdown
            self._error = exc
        finally:
            self._answers.put_nowait({"type": "_ended"})

    async def _answer(self, message: Message) -> None:
        await self._answers.put(message)

    async def _wait(self, expected: str) -> Message:
        try:
            return await asyncio.wait_for(self._answers.get(), self.timeout)
        except asyncio.TimeoutError:
            raise LifespanError(f"the application did not answer lifespan.{expected} within "
                                f"{self.timeout:g} s") from None

    async def startup(self) -> None:
        if self.mode == "off":
            return
        self._task = asyncio.ensure_future(self._main())
        await self._inbox.put({"type": "lifespan.startup"})
        answer = await self._wait("startup")
        kind = answer.get("type")
        if kind == "lifespan.startup.complete":
            self.supported = True
            return
        if kind == "lifespan.startup.failed":
            await self._stop()
            raise LifespanError(f"the application's startup failed: "
                                f"{answer.get('message') or 'no message'}")
        await self._stop()
        if self.mode == "on":
            why = (f"it raised {self._error!r}" if self._error is not None
                   else "it returned without answering")
            raise LifespanError(f"the application does not support the ASGI lifespan "
                                f"protocol ({why})") from self._error
        logger.debug("the ASGI application does not support lifespan (%r); going on without",
                     self._error)

    async def shutdown(self) -> None:
        if not self.supported:
            return
        self.supported = False
        await self._inbox.put({"type": "lifespan.shutdown"})
        try:
            answer = await self._wait("shutdown")
        except LifespanError as exc:
            logger.error("%s", exc)
        else:
            if answer.get("type") == "lifespan.shutdown.failed":
                logger.error("the ASGI application's shutdown failed: %s",
                             answer.get("message") or "no message")
            elif answer.get("type") == "_ended" and self._error is not None:
                logger.error("the ASGI application's lifespan failed at shutdown",
                             exc_info=self._error)
        await self._stop()

    async def _stop(self) -> None:
        task = self._task
        self._task = None
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), 1.0)
        except asyncio.TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --------------------------------------------------------------------------------------------
# the bridge


class AsgiBridge:
    """An ASGI application as a listener's hooks: :meth:`handle_http` (the request handler),
    :meth:`decide_websocket` (the ``headers`` hook) and :meth:`run_websocket` (the
    ``connection`` hook). :class:`AsgiServer` wires them to a :class:`RelayedServer`.

    ``state``: the lifespan state; each scope gets a copy. ``rendezvous_timeout``: how long an
    accepted WebSocket may take to arrive before the application hears it never will (1006).
    """

    def __init__(self, app: ASGIApp, endpoint: AppEndpoint, *,
                 state: dict[str, Any] | None = None,
                 websocket_accept_timeout: float = 10.0,
                 rendezvous_timeout: float = 35.0) -> None:
        self.app = app
        self.endpoint = endpoint
        self.state: dict[str, Any] = state if state is not None else {}
        self.websocket_accept_timeout = websocket_accept_timeout
        self.rendezvous_timeout = rendezvous_timeout
        self.closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._sessions: dict[str, _WsSession] = {}

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        """The application calls under way."""
        return self._tasks

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self, timeout: float) -> None:
        """No new WebSockets; wait up to ``timeout`` for the application's calls, then cancel
        what is left."""
        self.closing = True
        for request_id in list(self._sessions):
            self.rendezvous_failed(request_id)
        tasks = [task for task in self._tasks if not task.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)

    def rendezvous_failed(self, request_id: str) -> None:
        """The accepted WebSocket ``request_id`` will never arrive: its application hears 1006."""
        session = self._sessions.pop(request_id, None)
        if session is not None:
            session.attach(None)

    # -- scopes ----------------------------------------------------------------------------

    def _scope(self, kind: str, path: str, query: str, headers: Any,
               client: tuple[str, int] | None) -> Scope:
        decoded, raw = split_path(path)
        endpoint = self.endpoint
        scope: Scope = {
            "type": kind,
            "http_version": "1.1",
            "scheme": endpoint.scheme if kind == "http" else endpoint.ws_scheme,
            "path": decoded,
            "raw_path": raw,
            "query_string": query.encode("latin-1", "replace"),
            "root_path": "",
            "headers": _header_pairs(headers),
            "client": client,
            "server": (endpoint.host, endpoint.port),
            "extensions": {},
        }
        if self.state:
            scope["state"] = dict(self.state)
        return scope

    def http_scope(self, request: RelayedRequest | _Request) -> Scope:
        """The ASGI ``http`` scope for a relayed request (see docs/http-apps.md)."""
        host, port = request.remote_address
        scope = self._scope("http", request.path, request.query, request.headers,
                            (host, port) if host else None)
        scope["asgi"] = dict(_HTTP_ASGI)
        scope["method"] = request.method.upper()
        return scope

    def websocket_scope(self, event: ConnectionRequested) -> Scope:
        """The ASGI ``websocket`` scope for a relayed WebSocket sender."""
        path, query = split_target(event.path, self.endpoint.hybrid_connection)
        remote = event.remote_endpoint
        client = (remote.address, remote.port) if remote is not None and remote.address else None
        scope = self._scope("websocket", path, query, event.headers, client)
        scope["asgi"] = dict(_WS_ASGI)
        scope["subprotocols"] = list(event.subprotocols)
        return scope

    # -- HTTP ------------------------------------------------------------------------------

    async def handle_http(self, request: _Request) -> Response:
        """Run the application for ``request``; returns its response once its head is known
        (whole, or streamed while the application goes on sending)."""
        call = _HttpCall(request, self.http_scope(request))
        self._spawn(self._run_http(call))
        try:
            while call.status is None and not call.app_done:
                await call.changed()
        except asyncio.CancelledError:
            call.sender_gone()
            raise
        if call.status is None:
            call.sender_gone()
            return _FAILED  # the application failed (logged) or never answered
        try:
            if call.complete:
                # HEAD: the server drops the body the app sent (ASGI HTTP spec); what it says
                # about the size (Content-Length) still goes to the sender.
                body = b"" if call.request.method == "HEAD" else b"".join(call.chunks)
                call.chunks.clear()
                call.buffered = 0
                status = relay_status(call.status, logger, request.method, request.target)
                response = Response(status, call.headers, body)
                call.finished()
            else:
                status = relay_status(call.status, logger, request.method, request.target)
                response = Response(status, call.headers, _ResponseBody(call))
        except (TypeError, ValueError) as exc:
            logger.error("ASGI application: unusable response to %s %s: %s", request.method,
                         request.target, exc)
            call.sender_gone()
            return _FAILED
        return response

    async def _run_http(self, call: _HttpCall) -> None:
        request = call.request
        error: BaseException | None = None
        try:
            await self.app(call.scope, call.receive, call.send)
        except asyncio.CancelledError:
            error = ClientDisconnected(call._gone_text())
            raise
        except Exception as exc:
            error = exc
            if call.gone:
                logger.debug("ASGI application: %s %s ended with %r after its sender went "
                             "away", request.method, request.target, exc)
            elif call.status is not None and not call.complete:
                pass  # raised to the listener through the response body; it logs it
            else:
                logger.exception("ASGI application failed on %s %s", request.method,
                                 request.target)
        else:
            if call.status is None and not call.gone:
                logger.error("ASGI application returned without a response to %s %s",
                             request.method, request.target)
        finally:
            call.ended(error)

    # -- WebSocket -------------------------------------------------------------------------

    async def decide_websocket(self, event: ConnectionRequested) -> Decision:
        """Start the application with ``websocket.connect``; its ``websocket.accept`` accepts
        the sender, ``websocket.close`` (or returning, or raising) turns it away."""
        if self.closing:
            return Reject(503, "the listener is closing")
        session = _WsSession(event, self.websocket_scope(event))
        task = session.task = self._spawn(self._run_ws_app(session))
        try:
            await asyncio.wait_for(asyncio.shield(session.decision),
                                   self.websocket_accept_timeout)
        except asyncio.TimeoutError:
            logger.warning("ASGI application did not accept or close the WebSocket %s "
                           "within %g s; the sender is turned away with 503", event.path,
                           self.websocket_accept_timeout)
            session._decide(Reject(503, "the application did not answer in time"))
            session.attach(None)
        except asyncio.CancelledError:
            task.cancel()
            raise
        decision = session.decision.result()
        if isinstance(decision, Accept) and not self.closing:
            self._sessions[event.id] = session
            # Bounded even if the relay never completes the rendezvous.
            asyncio.get_running_loop().call_later(self.rendezvous_timeout,
                                                  self.rendezvous_failed, event.id)
        else:
            session.attach(None)
        return decision

    async def _run_ws_app(self, session: _WsSession) -> None:
        try:
            await self.app(session.scope, session.receive, session.send)
        except asyncio.CancelledError:
            raise
        except Exception:
            if not session.decision.done():
                session._decide(Reject(500, "the application failed"))
                logger.exception("ASGI application failed on WebSocket %s",
                                 session.event.path)
                return
            if session.close_code is not None:
                logger.debug("ASGI application raised after its WebSocket %s closed",
                             session.event.path, exc_info=True)
            else:
                logger.exception("ASGI application failed on WebSocket %s",
                                 session.event.path)
            if session.ws is not None:
                session._closed_by_app = True
                await session.ws.close(1011, "internal error")
        else:
            if not session.decision.done():
                session._decide(Reject(403, "Forbidden"))  # returned without accepting
        finally:
            ws = session.ws
            if ws is not None and not session._closed_by_app:
                await ws.close()
            session.attach(None)

    async def run_websocket(self, ws: RelayedWebSocket) -> None:
        """The accepted socket joins the application call that accepted it; returns when that
        call has ended."""
        session = self._sessions.pop(ws.request_id or "", None)
        if session is None or session.attached.done():
            await ws.close(1011, "internal error")
            return
        session.ws = ws
        session.attach(ws)
        if session.task is not None:
            await asyncio.wait({session.task})


# --------------------------------------------------------------------------------------------
# the server


class AsgiServer:
    """An ASGI application behind a hybrid connection: a :class:`RelayedServer` whose relayed
    HTTP requests and WebSocket senders run the application (through an :class:`AsgiBridge`).

    Args:
        app: the ASGI 3 application.
        listen_uri: as for :class:`RelayedServer` (``wss://{ns}/$hc/{hc}``).
        token: as for :class:`RelayedServer` (a SAS token or a callable returning fresh ones).
        lifespan: ``"auto"`` (run startup/shutdown if the application supports them),
            ``"on"`` (it must), ``"off"``.
        websocket_accept_timeout: seconds the application has to answer ``websocket.connect``;
            after that the sender is turned away with 503.
        close_timeout: seconds :meth:`close` waits for running requests to finish before
            cancelling them (and the bound of the lifespan's startup and shutdown).
        relayed_server_options: further :class:`RelayedServer` keywords (``ssl``,
            ``open_timeout``, ``error``, ``listener_id`` ...); ``headers``, ``connection`` and
            ``request_handler`` are the bridge's own.

    ``server`` is the :class:`RelayedServer`; ``endpoint.send_url`` is where senders call.
    ``async with`` / :meth:`start` run the lifespan startup, then return once listening (or
    raise: a :class:`~hyco_proto.errors.RelayError` naming the address and the cause,
    :class:`LifespanError`); :meth:`close` stops listening, ends the requests under way, then
    runs the lifespan shutdown.
    """

    def __init__(self, app: ASGIApp, listen_uri: str, token: Any, *, lifespan: str = "auto",
                 websocket_accept_timeout: float = 10.0, close_timeout: float = 10.0,
                 **relayed_server_options: Any) -> None:
        if lifespan not in ("auto", "on", "off"):
            raise ValueError(f"lifespan must be 'auto', 'on' or 'off', not {lifespan!r}")
        for name in ("headers", "connection", "request_handler"):
            if name in relayed_server_options:
                raise TypeError(f"AsgiServer runs the application for every request and "
                                f"WebSocket; it takes no {name!r} hook")
        if not callable(app):
            raise TypeError(f"app must be an ASGI application (a callable), not "
                            f"{type(app).__name__}")
        self.app = app
        self.endpoint = AppEndpoint.from_listen_uri(listen_uri)
        self.lifespan_mode = lifespan
        self.close_timeout = close_timeout
        self._error_hook: Callable[[Exception], Any] | None = relayed_server_options.pop(
            "error", None)
        self.bridge = AsgiBridge(app, self.endpoint,
                                 websocket_accept_timeout=websocket_accept_timeout)
        self.server = RelayedServer(
            listen_uri, token, request_handler=self.bridge.handle_http,
            headers=self.bridge.decide_websocket, connection=self.bridge.run_websocket,
            error=self._on_error, **relayed_server_options)
        self.bridge.rendezvous_timeout = self.server.listener.accept_timeout + 5.0
        self._lifespan: _Lifespan | None = None
        self._started = False
        self._closing = False

    @property
    def state(self) -> dict[str, Any]:
        """The lifespan state (ASGI ``state`` extension); each scope gets a copy."""
        return self.bridge.state

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Run the lifespan startup, then listen; returns once listening. Idempotent."""
        if self._closing:
            raise RelayError(f"the ASGI server for {self.endpoint.send_url} was closed; make "
                             "a new one")
        if self._started:
            await self.server.start()
            return
        self._started = True
        self._lifespan = _Lifespan(self.app, self.lifespan_mode, self.state,
                                   self.close_timeout)
        try:
            await self._lifespan.startup()
            await self.server.start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop listening (requests under way are cancelled: for the application their
        senders are gone), wait up to ``close_timeout`` for the application's calls, then run
        the lifespan shutdown. Idempotent."""
        if self._closing:
            return
        self._closing = True
        self.bridge.closing = True
        await self.server.close()
        await self.bridge.close(self.close_timeout)
        if self._lifespan is not None:
            await self._lifespan.shutdown()

    async def wait_closed(self) -> None:
        """Until the listener has stopped: :meth:`close`, or the relay ended it (then its
        error is raised, e.g. ``EndpointNotFoundError`` when the hybrid connection is gone)."""
        await self.server.wait_closed()
        if not self._closing:
            for event in reversed(self.server.events):
                if isinstance(event, Offline):
                    raise event.error

    async def serve_forever(self) -> None:
        """Start, then run until cancelled (or the relay ends the listener); closes on the
        way out."""
        try:
            await self.start()
            await self.wait_closed()
        finally:
            await self.close()

    async def __aenter__(self) -> AsgiServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    def _on_error(self, error: Exception) -> Any:
        for event in self.server.events:  # accepted WebSockets whose rendezvous failed
            if isinstance(event, RendezvousFailed):
                self.bridge.rendezvous_failed(event.request_id)
        hook = self._error_hook
        if hook is None:
            logger.info("listener %s: %s", self.endpoint.send_url, error)
            return None
        return hook(error)


def create_server(app: ASGIApp, listen_uri: str, token: Any,
                  **options: Any) -> AsgiServer:
    """An :class:`AsgiServer` (not started: ``async with`` it, or ``await start()``); its
    ``server`` attribute is the :class:`RelayedServer`."""
    return AsgiServer(app, listen_uri, token, **options)


async def serve(app: ASGIApp, listen_uri: str, token: Any, **options: Any) -> None:
    """Serve ``app`` on the hybrid connection until cancelled (then close cleanly) or until the
    relay ends the listener (then raise its error). Raises at once if the listener cannot
    start. ``options``: :class:`AsgiServer` keywords."""
    await AsgiServer(app, listen_uri, token, **options).serve_forever()
