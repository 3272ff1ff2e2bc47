"""The listener in the blocking adapters: ``RelayedServer`` runs a ``ListenerDriver``.

Workers:

* one **runner** owns the :class:`~hyco_proto.drivers.listener.ListenerDriver`. It waits on its
  inbox until the driver's next deadline (never longer than a slice), runs what was posted, the
  timer when due, then every action the driver asks for and every event it reports;
* one worker per **transport** (the control channel, each rendezvous) connects, posts
  ``transport_open`` / ``transport_failed``, then reads. Each read is posted to the runner and the
  worker waits until the runner has processed it — so a ``HandOver`` switches the transport to
  its :class:`~hyco_proto.adapters._blocking.sockets.RelayedWebSocket` before more bytes are read
  (the driver's contract), and the same worker goes on as that socket's reader;
* one worker per accepted socket given to the ``connection`` hook, and one per relayed HTTP
  request given to the ``request_handler`` (:mod:`.http_listener`). The handler's calls into the
  driver (the response) are posted to the runner and wait there; the runner writes them.

The ``headers`` and ``error`` hooks run on the runner: keep them short.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import ssl as _ssl
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, ClassVar, TypeAlias

from ...drivers.decisions import BACKLOG_FULL, Decision
from ...drivers.http import (
    HttpRequestCancelled,
    HttpRequestData,
    HttpRequestStarted,
    HttpResponseWritable,
    PauseReading,
    RequestCancelled,
    Response,
    ResumeReading,
    body_chunk,
)
from ...drivers.listener import (
    AbortTransport,
    DriverAction,
    DriverEvent,
    HandOver,
    ListenerDriver,
    ListenerView,
    OpenTransport,
    StartFailed,
    Write,
    relayed_server_options,
)
from ...drivers.stream import check_max_queue
from ...errors import LocalProtocolError, RelayError
from ...handshake import WebSocketURL
from ...listener import (
    Closed,
    ConnectionRequested,
    ControlMessageIgnored,
    Disconnected,
    Listening,
    Offline,
    RendezvousFailed,
    TokenRenewalFailed,
    TokenSourceLike,
)
from .http_listener import RelayedRequest, RequestHandler, wait_event
from .net import RECV_SIZE, open_connection, shutdown, write_chunks
from .runtime import EventLike, LockLike, Runtime, Worker, Workers
from .sockets import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_SIZE,
    WAIT_SLICE,
    RelayedWebSocket,
    run_handler,
    wait_until,
)

__all__ = ["ConnectionHook", "ErrorHook", "HeadersHook", "RelayedServer", "RequestHandler"]

HeadersHook: TypeAlias = Callable[[ConnectionRequested], Decision]
ConnectionHook: TypeAlias = Callable[[RelayedWebSocket], object]
ErrorHook: TypeAlias = Callable[[Exception], object]

_STOP = object()  # ends the runner
_END = object()  # ends iteration over the server
Posted: TypeAlias = Callable[[float], None]


class _Transport:
    """One TCP connection the driver asked for: a control channel or a rendezvous."""

    __slots__ = ("aborted", "handed", "key", "lock", "resume", "sock", "url", "worker",
                 "write_lock")

    def __init__(self, rt: Runtime, key: int, url: WebSocketURL) -> None:
        self.key = key
        self.url = url
        self.sock: Any = None
        self.aborted = False
        self.handed: RelayedWebSocket | None = None  # after HandOver: the socket's owner
        self.worker: Worker | None = None
        self.lock: LockLike = rt.lock()
        self.write_lock: LockLike = rt.lock()
        self.resume: EventLike = rt.event()  # cleared while the driver wants no reading
        self.resume.set()

    def attach(self, sock: Any) -> None:
        """Before connecting ``sock`` (so :meth:`abort` can cancel it); raises once aborted."""
        with self.lock:
            if self.aborted:
                raise ConnectionAbortedError("the listener dropped this connection")
            self.sock = sock

    def abort(self) -> None:
        with self.lock:
            self.aborted = True
            sock = self.sock
        self.resume.set()
        if sock is not None:
            shutdown(sock)  # wakes its worker in connect() or recv()

    def write(self, data: bytes) -> None:
        sock = self.sock
        if sock is None or self.aborted:
            return
        with self.write_lock:
            try:
                write_chunks(sock, [data], server=False)
            except (OSError, ValueError):
                shutdown(sock)  # its reader reports the end

    def close(self) -> None:
        with self.write_lock, contextlib.suppress(OSError):
            self.sock.close()


class RelayedServer(ListenerView):
    """A Hybrid Connections listener (hyco-ws ``RelayedServer``), blocking.

    Args:
        server: the listen URI, ``wss://{ns}/$hc/{hc}`` (``sb-hc-action=listen`` is added).
        token: a SAS token string, a callable returning fresh ones (renewed ahead of expiry), or
            a :class:`~hyco_proto.sas.TokenSource`.
        headers: decides each connection request: returns a
            :data:`~hyco_proto.drivers.decisions.Decision` (``None`` accepts offering the
            sender's first subprotocol). A hook that raises rejects with 500 (logged).
        connection: receives each accepted :class:`RelayedWebSocket` in its own worker; the
            socket is closed when it returns. Without it: ``for ws in server`` / ``accept()``.
        request_handler: answers relayed HTTP requests: ``handler(request) -> Response`` (a
            :class:`~.http_listener.RelayedRequest`), called in a worker of its own per
            request. Once the sender has gone away, body reads and response writes raise
            ``RequestCancelled``. A handler that raises gets 500 (logged), or, once the response
            head is out, its response is aborted. Without it every request gets 501.
        error: receives errors: control channel lost (``Disconnected``), ``Offline``, failed
            rendezvous, token renewal failures. Missing hook: logged.
        listener_id: the ``sb-hc-id`` of this listener.
        keepalive_interval: seconds between control-channel pings (None: no pings).
        open_timeout: bounds each connect and the first open: :meth:`start` raises within it.
        ssl: TLS context for ``wss://`` (default: the system's default context).
        max_queue: per accepted socket: received messages queued before reading pauses.
        max_size: per accepted socket: the largest message in bytes (1009 beyond; ``None``:
            unlimited).
        close_timeout: per accepted socket: seconds the closing handshake may take.
        backlog: accepted sockets waiting for ``accept()`` (beyond: closed with 1013).
        channel_headers: extra control-channel handshake headers.
        listener_options: further :class:`~hyco_proto.listener.Listener` keyword arguments.

    ``start()`` (or ``with``) returns once listening, or raises the error naming the address and
    the cause. ``close()`` closes the control channel and accepted sockets (1001) and waits,
    bounded, for every worker.
    """

    runtime: ClassVar[Runtime]

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
        open_timeout: float | None = 10.0,
        ssl: _ssl.SSLContext | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_size: int | None = DEFAULT_MAX_SIZE,
        close_timeout: float = 10.0,
        backlog: int = 128,
        channel_headers: Iterable[tuple[str, str]] = (),
        **listener_options: Any,
    ) -> None:
        rt = self.runtime
        check_max_queue(max_queue)
        self._driver = ListenerDriver.for_server(
            server, token, listener_id=listener_id, keepalive_interval=keepalive_interval,
            open_timeout=open_timeout, channel_headers=channel_headers, max_size=max_size,
            close_timeout=close_timeout, serve_http=request_handler is not None,
            **listener_options)
        self.server = server
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.backlog = backlog
        self._headers_hook = headers
        self._connection_hook = connection
        self._request_handler = request_handler
        self._requests: dict[str, RelayedRequest] = {}  # the runner's
        self._error_hook = error
        self._ssl = ssl
        self._max_queue = max_queue
        self._log = logging.getLogger(f"hyco_proto.adapters.{rt.name}")
        self._lock = rt.lock()
        self._inbox = rt.queue()
        self._accepted = rt.queue()
        self._settled = rt.event()  # listening, or it never will (start() can return)
        self._ended = rt.event()  # the driver has nothing more to do
        self._closed = rt.event()  # close() has finished
        self._workers = Workers(rt, self._log)
        self._runner: Worker | None = None
        self._runner_done = rt.event()  # the runner has ended: nobody processes posts
        self._transports: dict[int, _Transport] = {}  # the runner's
        self._sockets: set[RelayedWebSocket] = set()
        self._listened = False
        self._background = False
        self._closing = False
        #: The error that ended the listener (failed start, Offline), if any.
        self.error: RelayError | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(cls, options: Mapping[str, Any], on_connection: ConnectionHook | None = None,
               *, request_handler: RequestHandler | None = None) -> RelayedServer:
        """hyco-ws ``createRelayedServer({server, token}, ws => ...)``: starts listening at once
        (in the background; :meth:`start` waits for it, a failure also goes to ``error``).

        ``options`` holds ``server`` and ``token`` plus any keyword of the class (``id`` is
        accepted for ``listener_id``); ``request_handler`` answers relayed HTTP requests.
        """
        server, token, opts = relayed_server_options(options, on_connection, request_handler)
        relayed = cls(server, token, **opts)
        relayed._launch(background=True)
        return relayed

    def start(self) -> None:
        """Open the control channel; return once listening. Idempotent.

        Raises the error naming the address and the cause (``AuthorizationError``,
        ``EndpointNotFoundError``, ``RelayError`` for an unreachable relay ...) within
        ``open_timeout``; the listener is closed then.
        """
        if self._closing:
            raise RelayError(f"the listener at {self._driver.address} was closed; create a new "
                             "RelayedServer to listen again")
        self._launch()
        limit = None if self.open_timeout is None else self.open_timeout + 5.0
        if not wait_until(self.runtime, self._settled, limit):
            self.close()
            raise TimeoutError(f"cannot listen at {self._driver.address}: not listening after "
                               f"{limit:g} s")
        if not self._listened:
            error = self.error or RelayError(
                f"the listener at {self._driver.address} was closed before it listened")
            self.close()
            raise error

    def close(self) -> None:
        """Stop listening: close the control channel (1000) and accepted sockets (1001), then
        wait (bounded) for every worker. Idempotent. From a hook on the runner (``headers`` /
        ``error``) the closing happens in another worker and this returns at once."""
        runner = self._runner
        if runner is not None and runner.is_current():
            self._workers.spawn(self.close, "close")
            return
        with self._lock:
            already, self._closing = self._closing, True
        if already:
            wait_until(self.runtime, self._closed, 2 * self.close_timeout + WAIT_SLICE)
            return
        try:
            self._shut_down(runner)
        finally:
            self._end_iteration()
            self._settled.set()
            self._closed.set()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until :meth:`close` has finished or the listener ended by itself (offline,
        failed start); False after ``timeout``."""
        return wait_until(self.runtime, self._ended, timeout) and (
            not self._closing or wait_until(self.runtime, self._closed, timeout))

    def _shut_down(self, runner: Worker | None) -> None:
        rt = self.runtime
        if runner is not None:
            self._post(self._driver.close)
            wait_until(rt, self._ended, self.close_timeout + WAIT_SLICE)
            self._inbox.put(_STOP)
            runner.join(self.close_timeout)
        for transport in list(self._transports.values()):
            transport.abort()
        closed = RequestCancelled(f"the listener at {self._driver.address} closed",
                                  close_code=1001)
        for request in list(self._requests.values()):
            request._cancel(closed)  # what the runner did not get to (it has stopped)
        with self._lock:
            sockets = list(self._sockets)
        for ws in sockets:
            with contextlib.suppress(Exception):
                ws.start_close(1001, "listener closing")
        left = self._workers.join(self.close_timeout + WAIT_SLICE)
        if left:
            self._log.warning("%d worker(s) still running after close()", len(left))

    def __enter__(self) -> RelayedServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RelayedServer {self._driver.address} {self.state.name.lower()}>"

    # -- accepted sockets ------------------------------------------------------------------

    def accept(self, timeout: float | None = None) -> RelayedWebSocket:
        """The next accepted socket; ``TimeoutError`` after ``timeout``; the listener's error
        once it went offline, ``RelayError`` once it is closed."""
        ws = self._next(timeout)
        if ws is None:
            raise RelayError(f"the listener at {self._driver.address} is closed")
        return ws

    def __iter__(self) -> Iterator[RelayedWebSocket]:
        """Accepted sockets until ``close()``; raises the error if the listener went offline."""
        while True:
            ws = self._next(None)
            if ws is None:
                return
            yield ws

    def _next(self, timeout: float | None) -> RelayedWebSocket | None:
        if self._connection_hook is not None:
            raise RuntimeError("connections go to the `connection` hook; do not also accept")
        rt = self.runtime
        deadline = None if timeout is None else rt.monotonic() + timeout
        while True:
            wait = WAIT_SLICE
            if deadline is not None:
                wait = min(wait, deadline - rt.monotonic())
                if wait <= 0:
                    raise TimeoutError(f"no connection within {timeout:g} s")
            try:
                item = self._accepted.get(True, wait)
            except rt.empty:
                continue
            if item is _END:
                self._accepted.put(_END)  # later callers end too
                if self.error is not None and not self._closing:
                    raise self.error
                return None
            assert isinstance(item, RelayedWebSocket)
            return item

    def _end_iteration(self) -> None:
        self._accepted.put(_END)

    def _deliver(self, ws: RelayedWebSocket) -> None:
        with self._lock:
            closing = self._closing
            if not closing:
                self._sockets.add(ws)
        ws._on_done.append(self._forget)
        hook = self._connection_hook
        if closing:
            self._workers.spawn(lambda: ws.close(1001, "listener closing"), "close")
        elif hook is not None:
            self._workers.spawn(lambda: run_handler(hook, ws, self._log, "connection hook"),
                                "connection")
        elif self._accepted.qsize() >= self.backlog:
            self._log.warning("accept backlog full; closing a new connection with 1013")
            self._workers.spawn(lambda: ws.close(1013, "listener busy"), "close")
        else:
            self._accepted.put(ws)

    def _forget(self, ws: Any) -> None:
        with self._lock:
            self._sockets.discard(ws)

    # -- the runner ------------------------------------------------------------------------

    def _launch(self, *, background: bool = False) -> None:
        with self._lock:
            if self._runner is not None or self._closing:
                return
            self._background = background
            self._runner = self._workers.spawn(self._run, "listener")

    def _post(self, fn: Posted, *, wait: bool = False) -> bool:
        """Have the runner call ``fn(now)`` (then run the driver's actions). With ``wait``:
        return once done; False when the runner is gone."""
        if self._runner_done.is_set():
            return False
        done: EventLike | None = self.runtime.event() if wait else None
        self._inbox.put((fn, done))
        if done is None:
            return True
        while not done.wait(WAIT_SLICE):
            if self._runner_done.is_set():
                return done.is_set()
        return True

    def _run(self) -> None:
        rt, driver = self.runtime, self._driver
        try:
            self._call(driver.start)
            while True:
                deadline = driver.next_deadline()
                wait = WAIT_SLICE if deadline is None else deadline - rt.time()
                try:
                    item = self._inbox.get(True, min(max(wait, 0.0), WAIT_SLICE))
                except rt.empty:
                    item = None
                if item is _STOP:
                    return
                if item is not None:
                    fn, done = item
                    try:
                        self._call(fn)
                    finally:
                        if done is not None:
                            done.set()
                deadline = driver.next_deadline()
                if deadline is not None and rt.time() >= deadline:
                    self._call(driver.handle_timer)
        except Exception:
            self._log.exception("listener runner failed")
            if self.error is None:
                self.error = RelayError(f"the listener at {driver.address} failed")
        finally:
            self._runner_done.set()
            self._release_posters()
            self._settled.set()
            self._ended.set()

    def _release_posters(self) -> None:
        rt = self.runtime
        while True:
            try:
                item = self._inbox.get(False)
            except rt.empty:
                return
            if isinstance(item, tuple) and item[1] is not None:
                item[1].set()

    def _call(self, fn: Posted) -> None:
        fn(self.runtime.time())
        self._pump()

    def _pump(self) -> None:
        """Run the driver's actions and hand out its events until it is quiet."""
        self._driver.run(self._act, self._on_event)

    def _act(self, action: DriverAction) -> None:
        if isinstance(action, Write):
            transport = self._transports.get(action.key)
            if transport is not None:
                transport.write(action.data)
        elif isinstance(action, OpenTransport):
            opened = _Transport(self.runtime, action.key, action.url)
            self._transports[action.key] = opened
            opened.worker = self._workers.spawn(lambda: self._transport_main(opened),
                                                "control" if action.control else "rendezvous")
        elif isinstance(action, AbortTransport):
            dropped = self._transports.pop(action.key, None)
            if dropped is not None:
                dropped.abort()
        elif isinstance(action, HandOver):
            self._hand_over(action)
        elif isinstance(action, PauseReading):
            paused = self._transports.get(action.key)
            if paused is not None:
                paused.resume.clear()
        elif isinstance(action, ResumeReading):
            resumed = self._transports.get(action.key)
            if resumed is not None:
                resumed.resume.set()

    def _hand_over(self, action: HandOver) -> None:
        transport = self._transports.pop(action.key)
        request = action.request
        ws = RelayedWebSocket(self.runtime, transport.sock, action.connection,
                              address=request.command.address, request=request,
                              events=action.events, max_queue=self._max_queue,
                              close_timeout=self.close_timeout, start_reader=False)
        ws._reader = transport.worker
        transport.handed = ws  # its worker goes on as the socket's reader
        self._deliver(ws)

    def _on_event(self, event: DriverEvent) -> None:
        if isinstance(event, HttpRequestData):
            request = self._requests.get(event.request_id)
            if request is not None:
                request._feed(event.data, event.end)
        elif isinstance(event, HttpRequestStarted):
            self._start_request(event)
        elif isinstance(event, HttpRequestCancelled):
            cancelled = self._requests.get(event.request_id)
            if cancelled is not None:
                cancelled._cancel(event.error)
        elif isinstance(event, HttpResponseWritable):
            writable = self._requests.get(event.request_id)
            if writable is not None:
                writable._writable.set()
        elif isinstance(event, ConnectionRequested):
            self._decide(event)
        elif isinstance(event, Listening):
            self._listened = True
            self._settled.set()
        elif isinstance(event, (Disconnected, RendezvousFailed, TokenRenewalFailed)):
            self._report(event.error)
        elif isinstance(event, (StartFailed, Offline, Closed)):
            if not isinstance(event, Closed):
                self.error = event.error
                if not isinstance(event, StartFailed) or self._background:
                    self._report(event.error)
            self._settled.set()
            self._ended.set()
            self._end_iteration()
        elif isinstance(event, ControlMessageIgnored):
            self._log.warning("control message ignored: %s", event.reason)

    def _decide(self, request: ConnectionRequested) -> None:
        now = self.runtime.time()
        hook = self._headers_hook
        decision: Decision = None
        if self._connection_hook is None and self._accepted.qsize() >= self.backlog:
            # Nobody takes sockets off the backlog: say so at the handshake (503).
            self._log.warning("accept backlog full; rejecting a sender with 503")
            decision = BACKLOG_FULL
        elif hook is not None:
            try:
                decision = hook(request)
            except Exception:
                self._log.exception("headers hook failed; rejecting the connection with 500")
                self._driver.refuse(request, now)
                return
        try:
            self._driver.answer(request, decision, now)
        except (TypeError, ValueError, LocalProtocolError):
            self._log.exception("cannot answer connection request %s; rejected with 500",
                                request.id)

    # -- relayed HTTP (the runner starts them; each runs in its own worker) ------------------

    def _start_request(self, event: HttpRequestStarted) -> None:
        rid = event.id
        consumed = functools.partial(self._body_consumed, rid)
        request = RelayedRequest(self.runtime, event.command, event.hybrid_connection, consumed)
        self._requests[rid] = request
        self._workers.spawn(functools.partial(self._serve_request, request), "request")

    def _body_consumed(self, rid: str, size: int) -> None:
        self._post(functools.partial(self._driver.body_consumed, rid, size))

    def _on_runner(self, fn: Callable[[float], Any]) -> Any:
        """From a handler's worker: ``fn(now)`` on the runner (then its actions); its result,
        or its exception raised here."""
        box: list[tuple[bool, Any]] = []

        def call(now: float) -> None:
            try:
                box.append((True, fn(now)))
            except Exception as exc:
                box.append((False, exc))

        if not self._post(call, wait=True) or not box:
            raise RequestCancelled(f"the listener at {self._driver.address} closed",
                                   close_code=1001)
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def _serve_request(self, request: RelayedRequest) -> None:
        rid = request.id
        handler = self._request_handler
        assert handler is not None
        try:
            response = handler(request)
            if not isinstance(response, Response):
                raise TypeError(f"the request handler returned {response!r}; return a "
                                "Response")
            self._send_response(request, response)
        except RequestCancelled:
            pass  # the sender went away (or the listener closed): nothing to answer
        except Exception:
            if not request.cancelled:
                self._log.exception("request handler failed for %s %s", request.method,
                                    request.target)
                with contextlib.suppress(Exception):
                    self._on_runner(functools.partial(self._driver.handler_failed, rid))
        finally:
            self._post(lambda now: self._forget_request(request))

    def _forget_request(self, request: RelayedRequest) -> None:
        if self._requests.get(request.id) is request:
            del self._requests[request.id]

    def _send_response(self, request: RelayedRequest, response: Response) -> None:
        rid, driver = request.id, self._driver
        if not response.streaming:
            request._responded = True
            self._on_runner(functools.partial(driver.respond, rid, response))
            return
        body = response.body
        if not isinstance(body, Iterable):
            raise TypeError("an async iterable body needs the asyncio adapter; give an iterable "
                            "of bytes")
        chunks = iter(body)
        try:
            # The first chunk before the head: a body that fails at once still gets a 500.
            first = next(chunks, None)
            if first is None:
                request._responded = True
                self._on_runner(functools.partial(driver.respond, rid, response.with_body(b"")))
                return
            self._writable(request, self._on_runner(functools.partial(driver.respond, rid,
                                                                      response)))
            chunk: object = first
            while chunk is not None:
                data = body_chunk(chunk)
                self._writable(request, self._on_runner(functools.partial(driver.send_body,
                                                                          rid, data)))
                chunk = next(chunks, None)
            request._responded = True
            self._on_runner(functools.partial(driver.end_response, rid))
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    def _writable(self, request: RelayedRequest, key: int | None) -> None:
        """The runner has written what it could; wait while the response's rendezvous opens."""
        if key is None:
            wait_event(self.runtime, request._writable, None, "response rendezvous")
            request._check()

    def _report(self, error: Exception) -> None:
        hook = self._error_hook
        if hook is None:
            self._log.info("listener %s: %s", self._driver.address, error)
            return
        try:
            hook(error)
        except Exception:
            self._log.exception("error hook failed")

    # -- transports ------------------------------------------------------------------------

    def _transport_main(self, transport: _Transport) -> None:
        url, driver, key = transport.url, self._driver, transport.key
        try:
            sock = open_connection(self.runtime, url.host, url.port, secure=url.secure,
                                   ssl=self._ssl, timeout=self.open_timeout,
                                   on_socket=transport.attach)
        except (OSError, ValueError) as exc:
            if not transport.aborted:
                cause = str(exc)
                self._post(functools.partial(self._transport_failed, transport, cause))
            return
        with transport.lock:
            aborted = transport.aborted
            transport.sock = sock
        if aborted:
            transport.close()
            return
        self._post(lambda now: driver.transport_open(key, now))
        self._read(transport)

    def _read(self, transport: _Transport) -> None:
        sock, driver, key = transport.sock, self._driver, transport.key
        try:
            while True:
                try:
                    data = sock.recv(RECV_SIZE)
                except (OSError, ValueError):
                    data = b""
                posted: Posted = (functools.partial(driver.data_received, key, data) if data
                                  else functools.partial(self._transport_lost, transport))
                if not self._post(posted, wait=True):
                    return  # the listener is gone
                ws = transport.handed
                if ws is not None:
                    ws._read_loop()  # this worker is the socket's reader from now on
                    return
                if not data:
                    return
                while not transport.resume.is_set() and not self._runner_done.is_set():
                    transport.resume.wait(WAIT_SLICE)  # a request body waits for its handler
        finally:
            if transport.handed is None:
                transport.close()

    def _transport_failed(self, transport: _Transport, cause: str, now: float) -> None:
        self._driver.transport_failed(transport.key, now, cause)
        self._pump()
        self._drop(transport)

    def _transport_lost(self, transport: _Transport, now: float) -> None:
        self._driver.connection_lost(transport.key, now)
        self._pump()  # a HandOver (101 and EOF together) takes the transport first
        self._drop(transport)

    def _drop(self, transport: _Transport) -> None:
        """On the runner: forget a transport that has ended (unless it was handed over)."""
        if self._transports.get(transport.key) is transport and transport.handed is None:
            del self._transports[transport.key]
