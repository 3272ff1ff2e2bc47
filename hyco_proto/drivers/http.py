"""Relayed HTTP on the listener side, sans-IO (hybrid-connections-wire §3.2, §3.3).

The relay hands a listener HTTP requests in two ways:

* small ones on the control channel: the ``request`` JSON, then (``body: true``) one binary
  message with the whole body — the :class:`~hyco_proto.listener.Listener` core pairs them;
* large or streamed ones as a pointer ``{"request": {"address", "id"}}``: the listener opens a
  WebSocket to ``address`` (a *rendezvous*), where the relay sends the full request JSON
  (without ``address``) and then the body as one binary message, fragment by fragment as the
  sender uploads it.

The answer is a ``response`` JSON, then (``body: true``) one binary message, possibly
fragmented. A request that came on a rendezvous is answered there; one that came on the
control channel is answered on the control channel when the whole response is known and small
(body ≤ 64 KiB, head ≤ 32 KiB), else on a rendezvous the listener opens to the request's
``address``. The listener closes a rendezvous with 1000 once its response is complete (like the
.NET listener); the relay closing or dropping it earlier means the sender went away: the
request is *cancelled*.

:class:`HttpExchanges` keeps those books for :class:`~hyco_proto.drivers.listener.ListenerDriver`
(which owns the transports, through the small :class:`HttpPort`). The application's side:
events :class:`HttpRequestStarted`, :class:`HttpRequestData`, :class:`HttpRequestCancelled`,
:class:`HttpResponseWritable`; the driver's ``respond`` / ``send_body`` / ``end_response`` /
``handler_failed`` / ``body_consumed``. :class:`RelayedRequest` and :class:`Response` are what
every adapter's request handler sees and returns; :class:`BodyBuffer` is the request body
between the driver and the handler (the adapter adds the waiting).

Flow control: body bytes handed to the application and not yet consumed are counted per
request; above :data:`PAUSE_ABOVE` the driver asks the adapter to stop reading the rendezvous
(:class:`PauseReading`), at :data:`RESUME_AT` to go on (:class:`ResumeReading`). The control
channel is never paused (its bodies are small and it carries everything else).
"""

from __future__ import annotations

import collections
import contextlib
import re
from collections.abc import AsyncIterable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol, TypeAlias

from .._syntax import is_token
from ..control import RequestCommand, ResponseCommand, parse_command, serialize_command
from ..errors import ConnectionLostError, LocalProtocolError, RemoteProtocolError
from ..headers import Headers
from ..listener import ControlMessageIgnored
from ..websocket import (
    BinaryFragment,
    BinaryMessage,
    CloseReceived,
    ConnectionClosed,
    TextMessage,
)
from .connection import ClientConnection, HandshakeFailed, Opened, Refused
from .http_client import body_bytes

__all__ = [
    "CONTROL_BODY_LIMIT",
    "CONTROL_HEAD_LIMIT",
    "INTERNAL_ERROR",
    "NOT_IMPLEMENTED",
    "PAUSE_ABOVE",
    "RESERVED_STATUSES",
    "RESUME_AT",
    "BodyBuffer",
    "HttpEvent",
    "HttpExchanges",
    "HttpPort",
    "HttpRequestCancelled",
    "HttpRequestData",
    "HttpRequestStarted",
    "HttpResponseWritable",
    "PauseReading",
    "RelayedRequest",
    "RequestCancelled",
    "Response",
    "ResumeReading",
    "body_chunk",
    "response_text",
    "split_target",
]

#: A response body up to this size may go on the control channel (the relay's 64 kB, §3.2).
CONTROL_BODY_LIMIT = 64 * 1024
#: A response head (its JSON) up to this size may go on the control channel (32 kB, §3.2).
CONTROL_HEAD_LIMIT = 32 * 1024
#: Stop reading a request's rendezvous while more body bytes than this wait for the handler.
PAUSE_ABOVE = 1024 * 1024
#: ... and read on once the handler has taken them down to this.
RESUME_AT = 256 * 1024
#: Statuses the relay uses to say the listener failed (502) or did not answer (504); the Azure
#: Relay docs forbid listeners to send them (§3.3).
RESERVED_STATUSES = {502: "the listener failed", 504: "the listener did not answer in time"}

# Framing and connection headers: the relay frames the response to the sender itself.
_DROPPED_HEADERS = frozenset({"connection", "content-length", "keep-alive", "proxy-connection",
                              "te", "trailer", "transfer-encoding", "upgrade"})
_BAD_TEXT = re.compile(r"[\r\n\0]")

HeadersArg: TypeAlias = Mapping[str, str] | Iterable[tuple[str, str]]
#: A response body: bytes / str (whole), or chunks of bytes (an iterable; async in asyncio).
BodyArg: TypeAlias = (bytes | bytearray | memoryview | str | Iterable[object]
                      | AsyncIterable[object] | None)


class RequestCancelled(ConnectionLostError):
    """The sender of a relayed HTTP request went away before its response was complete (the
    relay closed or dropped the request's connection), or the listener closed: reading the body
    or writing the response raises this."""


# --------------------------------------------------------------------------------------------
# what the application sees and returns


def split_target(target: str, hybrid_connection: str) -> tuple[str, str]:
    """``(path, query)`` of a ``requestTarget``: the path without its leading
    ``/{hybrid connection}`` (``"/"`` when nothing is left), the query without ``?``.

    The relay writes the hybrid connection's name first (§1.5); it is compared
    case-insensitively, and a target that does not start with it keeps its whole path.
    """
    raw_path, _, query = target.partition("?")
    prefix = "/" + hybrid_connection
    lowered = raw_path.lower()
    path = raw_path
    if hybrid_connection and lowered == prefix.lower():
        path = ""
    elif hybrid_connection and lowered.startswith(prefix.lower() + "/"):
        path = raw_path[len(prefix):]
    return (path or "/"), query


class RelayedRequest:
    """A relayed HTTP request as the application sees it (the adapters add reading the body).

    ``method``; ``target`` (the ``requestTarget`` as the relay sent it: ``/{hc}/suffix?query``);
    ``path`` (the target's path without the leading ``/{hc}``, ``"/"`` when nothing is left);
    ``query`` (without ``?``, ``""`` when none); ``headers`` (case-insensitive); ``remote_address``
    (``(host, port)`` of the sender as the relay saw it, ``("", 0)`` when not sent);
    ``id`` (the relay's request id); ``has_body`` (the relay announced a body); ``command``
    (the raw ``request`` command).
    """

    __slots__ = ("command", "has_body", "headers", "id", "method", "path", "query",
                 "remote_address", "target")

    def __init__(self, command: RequestCommand, hybrid_connection: str = "") -> None:
        if command.is_pointer or command.method is None or command.request_target is None:
            raise ValueError("a RelayedRequest needs a full request command, not a pointer")
        self.command = command
        self.id: str = command.id
        self.method: str = command.method
        self.target: str = command.request_target
        self.path, self.query = split_target(command.request_target, hybrid_connection)
        self.headers = Headers(command.request_headers)
        endpoint = command.remote_endpoint
        self.remote_address: tuple[str, int] = (
            (endpoint.address, endpoint.port) if endpoint is not None else ("", 0))
        self.has_body = bool(command.body)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method} {self.target} id={self.id}>"


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str, not {type(value).__name__}")
    if _BAD_TEXT.search(value):
        raise ValueError(f"{what} {value!r} contains CR, LF or NUL")
    return value


def _headers(headers: HeadersArg) -> tuple[tuple[str, str], ...]:
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    out = []
    for pair in pairs:
        try:
            name, value = pair
        except (TypeError, ValueError):
            raise TypeError(f"response headers are (name, value) pairs or a mapping; got "
                            f"{pair!r}") from None
        if not is_token(name):
            raise ValueError(f"response header name {name!r} is not a valid HTTP token")
        out.append((name, _check_text(value, f"response header {name!r} value")))
    return tuple(out)


def body_chunk(chunk: object) -> bytes:
    """One piece of a streamed response body as bytes: bytes-like as is, str as UTF-8."""
    return body_bytes(chunk, "a response body yields")


class Response:
    """A listener's answer to a relayed HTTP request.

    ``status``: 200..599, except 502 and 504, which the relay keeps for itself (``ValueError``
    says so). ``headers``: a mapping or ``(name, value)`` pairs; a name given twice is sent
    once with its values joined by ``", "`` (the relay takes a JSON object); framing headers
    (``Content-Length``, ``Transfer-Encoding``, ``Connection`` ...) are not sent, since the
    relay frames the response itself. ``body``: bytes or str (the whole body; str is sent as
    UTF-8, with ``Content-Type: text/plain; charset=utf-8`` unless one is given), or an
    iterable of byte chunks (an async iterable too in asyncio) streamed as it is produced.
    ``reason``: the status text; ``None`` uses the standard phrase.
    """

    __slots__ = ("_body", "_headers", "_reason", "_status")

    def __init__(self, status: int = 200, headers: HeadersArg = (), body: BodyArg = b"",
                 reason: str | None = None) -> None:
        if isinstance(status, bool) or not isinstance(status, int):
            raise TypeError(f"status must be an int, not {type(status).__name__}")
        if status in RESERVED_STATUSES:
            raise ValueError(
                f"status {status} is reserved for the relay ({RESERVED_STATUSES[status]}); "
                "Azure Relay does not let listeners send 502 or 504: answer 500 or 503 instead")
        if not 200 <= status <= 599:
            raise ValueError(f"status must be a final HTTP status 200..599, not {status}")
        self._status = status
        if reason is None:
            try:
                reason = HTTPStatus(status).phrase
            except ValueError:
                reason = ""
        self._reason = _check_text(reason, "reason")
        fixed = _headers(headers)
        data: bytes | None = None
        if body is None:
            data = b""
        elif isinstance(body, (bytes, bytearray, memoryview)):
            data = bytes(body)
        elif isinstance(body, str):
            data = body.encode("utf-8")
            if not any(name.lower() == "content-type" for name, _ in fixed):
                fixed += (("Content-Type", "text/plain; charset=utf-8"),)
        elif not isinstance(body, (Iterable, AsyncIterable)):
            raise TypeError(f"a response body is bytes, str or an iterable of bytes, not "
                            f"{type(body).__name__}")
        self._headers = fixed
        self._body: bytes | Iterable[object] | AsyncIterable[object] = (
            data if data is not None else body)  # type: ignore[assignment]

    @property
    def status(self) -> int:
        return self._status

    @property
    def reason(self) -> str:
        """The status text sent (``""``: none; the relay then uses the standard one)."""
        return self._reason

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return self._headers

    @property
    def body(self) -> bytes | Iterable[object] | AsyncIterable[object]:
        """``bytes`` for a whole body; otherwise the iterable that streams it."""
        return self._body

    @property
    def streaming(self) -> bool:
        return not isinstance(self._body, bytes)

    def with_body(self, body: BodyArg) -> Response:
        """The same status, reason and headers with another body."""
        return Response(self._status, self._headers, body, self._reason)

    def __repr__(self) -> str:
        size = f"{len(self._body)} bytes" if isinstance(self._body, bytes) else "streamed"
        return f"<Response {self._status} {self._reason!r} {size}>"


def response_text(request_id: str, response: Response, *, body: bool) -> str:
    """The ``response`` command for ``response`` (§3.3): the JSON text the relay reads."""
    joined: dict[str, tuple[str, str]] = {}
    for name, value in response.headers:
        key = name.lower()
        if key in _DROPPED_HEADERS and not (key == "content-length" and not body):
            # A body-less answer (HEAD, 304) keeps its Content-Length: the size of what a GET
            # would get, which the relay passes on; with a body the relay frames it itself.
            continue
        if key in joined:
            first, before = joined[key]
            joined[key] = (first, f"{before}, {value}")
        else:
            joined[key] = (name, value)
    return serialize_command(ResponseCommand(
        request_id=request_id, status_code=response.status,
        status_description=response.reason or None,
        response_headers=dict(joined.values()), body=body))


#: The answer of a listener without a request handler.
NOT_IMPLEMENTED = Response(
    501, body="This listener serves WebSocket connections only; it has no HTTP request "
              "handler.\n")
#: The answer when the request handler failed before sending anything.
INTERNAL_ERROR = Response(500, body="The listener's request handler failed.\n")


class BodyBuffer:
    """A request body between the driver and the application: chunks in (``feed``), chunks out
    (``take``). The adapter adds the waiting and reports what was taken to
    ``ListenerDriver.body_consumed`` (flow control)."""

    __slots__ = ("_chunks", "ended", "error")

    def __init__(self) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        #: The last chunk has been fed.
        self.ended = False
        #: Set when the request was cancelled: ``take`` raises it.
        self.error: RequestCancelled | None = None

    def feed(self, data: bytes, end: bool) -> None:
        if data:
            self._chunks.append(data)
        if end:
            self.ended = True

    def cancel(self, error: RequestCancelled) -> None:
        if self.error is None:
            self.error = error
            self._chunks.clear()

    def take(self) -> bytes | None:
        """The next chunk, or None: nothing yet (wait) or the end (see :attr:`done`).
        Raises the cancellation error once cancelled."""
        if self.error is not None:
            raise self.error
        return self._chunks.popleft() if self._chunks else None

    @property
    def done(self) -> bool:
        """The whole body has been taken (or the request was cancelled)."""
        return self.error is not None or (self.ended and not self._chunks)


# --------------------------------------------------------------------------------------------
# events and actions


@dataclass(frozen=True, slots=True)
class HttpRequestStarted:
    """A relayed HTTP request for the application; its body follows as :class:`HttpRequestData`
    (one with ``end`` set, even without a body). Answer with ``ListenerDriver.respond``."""

    command: RequestCommand
    hybrid_connection: str

    @property
    def id(self) -> str:
        return self.command.id

    @property
    def request(self) -> RelayedRequest:
        return RelayedRequest(self.command, self.hybrid_connection)


@dataclass(frozen=True, slots=True)
class HttpRequestData:
    """Body bytes of request ``request_id`` as they arrive; ``end`` marks the last (``data``
    may be empty)."""

    request_id: str
    data: bytes
    end: bool


@dataclass(frozen=True, slots=True)
class HttpRequestCancelled:
    """Request ``request_id`` is over before it was finished: the sender went away (its
    response was not complete), or the rest of its body was cut off (its response was complete
    and the rendezvous closed), or the listener closed. ``error`` is what body reads and
    response writes raise."""

    request_id: str
    error: RequestCancelled


@dataclass(frozen=True, slots=True)
class HttpResponseWritable:
    """The rendezvous that carries request ``request_id``'s response is open: writes go out."""

    request_id: str


HttpEvent: TypeAlias = (HttpRequestStarted | HttpRequestData | HttpRequestCancelled
                        | HttpResponseWritable)


@dataclass(frozen=True, slots=True)
class PauseReading:
    """Stop reading transport ``key`` (its request body waits for the handler)."""

    key: int


@dataclass(frozen=True, slots=True)
class ResumeReading:
    """Read transport ``key`` again."""

    key: int


# --------------------------------------------------------------------------------------------
# the exchanges


class HttpSocket(Protocol):
    """What the exchanges need of a driver transport."""

    @property
    def key(self) -> int: ...

    @property
    def connection(self) -> ClientConnection: ...


class HttpPort(Protocol):
    """The listener driver as the HTTP exchanges use it."""

    def http_control(self) -> HttpSocket | None:
        """The control channel, if it is open."""

    def http_open(self, connection: ClientConnection, now: float) -> HttpSocket:
        """Open a rendezvous transport for ``connection`` (bounded by the accept timeout)."""

    def http_flush(self, sock: HttpSocket) -> None:
        """Write what ``sock.connection`` has queued."""

    def http_abort(self, sock: HttpSocket) -> None:
        """Drop the transport now (report nothing more about it)."""

    def http_closing(self, sock: HttpSocket, now: float) -> None:
        """A close frame was sent on ``sock``; drop it if the relay does not close in time."""

    def http_reading(self, sock: HttpSocket, on: bool) -> None:
        """Pause (``on=False``) or resume reading ``sock``."""

    def http_event(self, event: HttpEvent | ControlMessageIgnored) -> None:
        """Hand ``event`` to the application."""


_Pending: TypeAlias = tuple[str | bytes, bool]


class _Exchange:
    """One relayed request and its response."""

    __slots__ = ("body_left", "command", "control", "done", "error", "head_sent", "id",
                 "origin", "paused", "pending", "queued", "socket", "spool", "started",
                 "streaming")

    def __init__(self, request_id: str) -> None:
        self.id = request_id
        self.command: RequestCommand | None = None  # None until a pointer's request arrives
        self.origin: HttpSocket | None = None  # the rendezvous it came on (None: control)
        self.control: HttpSocket | None = None  # the control channel it came on
        self.socket: HttpSocket | None = None  # the rendezvous its response goes on
        self.pending: list[_Pending] | None = None  # writes held until `socket` opens
        self.spool: list[bytes] | None = None  # a streamed body for the control channel
        self.started = False  # the request has arrived whole (its head)
        self.body_left = False  # more body to come
        self.head_sent = False
        self.streaming = False
        self.done = False  # the response is complete
        self.error: RequestCancelled | None = None
        self.queued = 0  # body bytes handed out and not consumed yet
        self.paused = False


class HttpExchanges:
    """Every relayed HTTP request of one listener, from its arrival to its response's end.

    ``serve=False``: there is no request handler; every request is answered 501
    (:data:`NOT_IMPLEMENTED`) and the application hears nothing of it.
    """

    def __init__(self, port: HttpPort, hybrid_connection: str, *, serve: bool,
                 remember: int = 1024) -> None:
        self._port = port
        self.hybrid_connection = hybrid_connection
        self.serve = serve
        self._live: dict[str, _Exchange] = {}
        self._by_socket: dict[int, _Exchange] = {}
        self._on_control: dict[str, _Exchange] = {}  # they need the control channel they came on
        self._gone: collections.OrderedDict[str, RequestCancelled] = collections.OrderedDict()
        self._remember = remember

    def __len__(self) -> int:
        """Requests under way."""
        return len(self._live)

    # -- from the control channel ----------------------------------------------------------

    def request_received(self, command: RequestCommand, now: float) -> None:
        """A ``request`` on the control channel: a full request or a rendezvous pointer."""
        port = self._port
        if command.id in self._live:
            port.http_event(ControlMessageIgnored(
                f"request {command.id!r} is already under way; the repeated request was dropped",
                serialize_command(command)))
            return
        ex = _Exchange(command.id)
        if command.is_pointer:
            assert command.address is not None  # the parser requires it on a pointer
            try:
                sock = self._open(command.address, now)
            except (ValueError, LocalProtocolError) as exc:
                port.http_event(ControlMessageIgnored(
                    f"request {command.id!r}: unusable rendezvous address: {exc}",
                    serialize_command(command)))
                return
            ex.origin = sock
            self._by_socket[sock.key] = ex
            self._live[ex.id] = ex
            return
        ex.control = port.http_control()
        self._live[ex.id] = ex
        self._on_control[ex.id] = ex
        self._start(ex, command, now)

    def body_received(self, request_id: str, data: bytes) -> None:
        """The binary message that followed a control-channel ``request`` with a body."""
        ex = self._live.get(request_id)
        if ex is not None and ex.origin is None and ex.body_left:
            self._deliver(ex, data, True)

    def control_check(self) -> None:
        """Cancel what depends on a control channel that is gone (call after every change)."""
        if not self._on_control:
            return
        current = self._port.http_control()
        for ex in list(self._on_control.values()):
            if ex.socket is not None and not ex.body_left:
                del self._on_control[ex.id]  # answered on a rendezvous of its own, body in
            elif ex.control is not current:
                self._cancel(ex, "the control channel it came on was lost")

    # -- rendezvous ------------------------------------------------------------------------

    def socket_events(self, sock: HttpSocket, events: Iterable[object], now: float) -> None:
        """Events of an HTTP rendezvous' connection."""
        for event in events:
            ex = self._by_socket.get(sock.key)
            if ex is None:
                return
            if isinstance(event, Opened):
                if sock is ex.socket:
                    self._response_open(ex, sock, now)
            elif isinstance(event, TextMessage):
                self._rendezvous_text(ex, sock, event.data, now)
            elif isinstance(event, (BinaryFragment, BinaryMessage)):
                if sock is ex.origin and ex.started and ex.body_left:
                    fin = event.fin if isinstance(event, BinaryFragment) else True
                    self._deliver(ex, event.data, fin)
            elif isinstance(event, Refused):
                self._ended(ex, sock, f"the relay refused its rendezvous ({event.response.status}"
                                      f" {event.response.reason})".rstrip())
            elif isinstance(event, HandshakeFailed):
                self._ended(ex, sock, f"its rendezvous failed: {event.error}")
            elif isinstance(event, CloseReceived):
                self._ended(ex, sock, f"the relay closed its rendezvous ({_close_text(event)}): "
                                      "the sender went away")
            elif isinstance(event, ConnectionClosed):
                self._ended(ex, sock, f"its rendezvous ended ({_close_text(event)}): the "
                                      "sender went away")

    def socket_ended(self, sock: HttpSocket, cause: str) -> None:
        """The driver dropped or lost an HTTP rendezvous (it reports nothing more about it)."""
        ex = self._by_socket.pop(sock.key, None)
        if ex is not None:
            self._ended(ex, sock, cause)

    # -- the application's answers ---------------------------------------------------------

    def respond(self, request_id: str, response: Response, now: float) -> int | None:
        """Send the response's head (and a whole body). Returns the transport key the response
        is written on, to wait for its buffer to drain, or None while its rendezvous opens
        (wait for :class:`HttpResponseWritable`). A streamed body follows with
        :meth:`send_body` and :meth:`end_response`."""
        if not isinstance(response, Response):
            raise TypeError(f"respond() takes a Response, not {type(response).__name__}")
        ex = self._get(request_id, "respond to")
        if ex.head_sent:
            raise LocalProtocolError(f"request {request_id!r} already has its response head; "
                                     "send the body with send_body() / end_response()")
        body = response.body if isinstance(response.body, bytes) else None
        text = response_text(ex.id, response, body=body is None or bool(body))
        ex.head_sent = True
        ex.streaming = body is None
        if ex.origin is not None:
            ex.socket = ex.origin
        else:
            assert ex.command is not None
            small = (body is not None and len(body) <= CONTROL_BODY_LIMIT
                     and len(text.encode("utf-8")) <= CONTROL_HEAD_LIMIT)
            if small or not ex.command.address:
                control = ex.control
                assert control is not None
                if body is None:
                    ex.spool = [text.encode("utf-8")]  # no address: collect, send at the end
                    return control.key
                self._on_control_channel(ex, text, body, now)
                return control.key
            try:
                sock = self._open(ex.command.address, now)
            except (ValueError, LocalProtocolError) as exc:
                self._cancel(ex, f"its rendezvous address is unusable: {exc}")
                raise self._error(ex) from None
            ex.socket = sock
            ex.pending = []
            self._by_socket[sock.key] = ex
        self._send(ex, text, False)
        if body is not None:
            if body:
                self._send(ex, body, True)
            self._finish(ex, now)
        return self._ready(ex)

    def send_body(self, request_id: str, data: bytes, now: float) -> int | None:
        """One piece of a streamed body (one fragment). Returns like :meth:`respond`."""
        ex = self._streaming(request_id)
        data = body_chunk(data)
        if ex.spool is not None:
            ex.spool.append(data)
            assert ex.control is not None
            return ex.control.key
        if data:
            self._send(ex, data, False)
        return self._ready(ex)

    def end_response(self, request_id: str, now: float) -> int | None:
        """End a streamed body (an empty final fragment); the rendezvous then closes (1000)."""
        ex = self._streaming(request_id)
        if ex.spool is not None:
            text, *chunks = ex.spool
            ex.spool = None
            self._on_control_channel(ex, text.decode("utf-8"), b"".join(chunks), now)
            assert ex.control is not None
            return ex.control.key
        self._send(ex, b"", True)
        self._finish(ex, now)
        return self._ready(ex)

    def handler_failed(self, request_id: str, now: float) -> None:
        """The handler raised: answer 500 if nothing was sent yet, else abort the response
        (its rendezvous is dropped: the sender sees the response break off)."""
        ex = self._live.get(request_id)
        if ex is None or ex.error is not None or ex.done:
            return
        if not ex.head_sent or ex.spool is not None:
            ex.head_sent = False
            ex.spool = None
            with contextlib.suppress(RequestCancelled):
                self.respond(request_id, INTERNAL_ERROR, now)
            return
        self._cancel(ex, "the request handler failed", tell=False)

    def body_consumed(self, request_id: str, size: int) -> None:
        """The application has taken ``size`` body bytes (flow control)."""
        ex = self._live.get(request_id)
        if ex is None:
            return
        ex.queued = max(0, ex.queued - size)
        if ex.paused and ex.queued <= RESUME_AT:
            self._reading(ex, True)

    def cancel_all(self, cause: str) -> None:
        """Cancel every request under way (the listener is closing)."""
        for ex in list(self._live.values()):
            self._cancel(ex, cause)

    # -- internals -------------------------------------------------------------------------

    def _open(self, url: str, now: float) -> HttpSocket:
        connection = ClientConnection.from_url(url, max_message_size=None)
        connection.stream_binary = True  # bodies stream fragment by fragment
        return self._port.http_open(connection, now)

    def _start(self, ex: _Exchange, command: RequestCommand, now: float) -> None:
        ex.command = command
        ex.started = True
        ex.body_left = bool(command.body)
        if self.serve:
            self._port.http_event(HttpRequestStarted(command, self.hybrid_connection))
            if not ex.body_left:
                self._port.http_event(HttpRequestData(ex.id, b"", True))
        else:
            with contextlib.suppress(RequestCancelled):
                self.respond(ex.id, NOT_IMPLEMENTED, now)

    def _rendezvous_text(self, ex: _Exchange, sock: HttpSocket, text: str, now: float) -> None:
        if sock is not ex.origin or ex.started:
            self._port.http_event(ControlMessageIgnored(
                f"request {ex.id!r}: unexpected text message on its rendezvous", text))
            return
        try:
            command = parse_command(text)
        except RemoteProtocolError as exc:
            command = None
            why = exc.message
        else:
            why = "it is not a full request"
        if not isinstance(command, RequestCommand) or command.is_pointer:
            self._port.http_event(ControlMessageIgnored(
                f"request {ex.id!r}: bad request on its rendezvous: {why}", text))
            self._cancel(ex, f"the relay sent a bad request on its rendezvous ({why})")
            return
        if command.id != ex.id:  # answer with the id the relay gave on this socket
            if command.id in self._live:
                self._cancel(ex, f"the relay sent request {command.id!r} twice")
                return
            del self._live[ex.id]
            ex.id = command.id
            self._live[ex.id] = ex
        self._start(ex, command, now)

    def _deliver(self, ex: _Exchange, data: bytes, end: bool) -> None:
        if end:
            ex.body_left = False
        if self.serve:
            self._port.http_event(HttpRequestData(ex.id, data, end))
            ex.queued += len(data)
            if ex.origin is not None and not ex.paused and ex.queued > PAUSE_ABOVE:
                self._reading(ex, False)
        if ex.done and not ex.body_left:
            self._forget(ex)

    def _reading(self, ex: _Exchange, on: bool) -> None:
        ex.paused = not on
        if ex.origin is not None and self._by_socket.get(ex.origin.key) is ex:
            self._port.http_reading(ex.origin, on)

    def _get(self, request_id: str, what: str) -> _Exchange:
        ex = self._live.get(request_id)
        if ex is None:
            gone = self._gone.get(request_id)
            if gone is not None:
                raise gone
            raise LocalProtocolError(f"cannot {what} request {request_id!r}: no such request "
                                     "is under way (unknown id, or its response is complete)")
        if ex.error is not None:
            raise ex.error
        if ex.done:
            raise LocalProtocolError(f"cannot {what} request {request_id!r}: its response is "
                                     "complete")
        if not ex.started:
            raise LocalProtocolError(f"cannot {what} request {request_id!r}: it has not "
                                     "arrived yet")
        return ex

    def _streaming(self, request_id: str) -> _Exchange:
        ex = self._get(request_id, "send the body of")
        if not ex.head_sent or not ex.streaming:
            raise LocalProtocolError(
                f"request {request_id!r} has no streamed response under way; call respond() "
                "with a Response whose body is an iterable first")
        return ex

    def _error(self, ex: _Exchange) -> RequestCancelled:
        assert ex.error is not None
        return ex.error

    def _on_control_channel(self, ex: _Exchange, text: str, body: bytes, now: float) -> None:
        """The whole response, back to back on the control channel (nothing between them)."""
        control = ex.control
        if control is None or control is not self._port.http_control():
            self._cancel(ex, "the control channel it came on was lost")
            raise self._error(ex)
        connection = control.connection
        connection.send_text(text)
        if body:
            connection.send_binary(body)
        self._port.http_flush(control)
        self._finish(ex, now)

    def _send(self, ex: _Exchange, item: str | bytes, fin: bool) -> None:
        if ex.pending is not None:
            ex.pending.append((item, fin))
            return
        sock = ex.socket
        assert sock is not None
        connection = sock.connection
        try:
            if isinstance(item, str):
                connection.send_text(item)
            else:
                connection.send_binary_part(item, fin)
        except LocalProtocolError:  # closed under us; the close event cancels it
            self._cancel(ex, "its rendezvous is closed: the sender went away")
            raise self._error(ex) from None
        self._port.http_flush(sock)

    def _ready(self, ex: _Exchange) -> int | None:
        if ex.pending is not None:
            return None
        sock = ex.socket if ex.socket is not None else ex.control
        assert sock is not None
        return sock.key

    def _response_open(self, ex: _Exchange, sock: HttpSocket, now: float) -> None:
        pending, ex.pending = ex.pending or [], None
        try:
            for item, fin in pending:
                self._send(ex, item, fin)
        except RequestCancelled:
            return
        if ex.done:
            self._close(sock, now)
        elif self.serve:
            self._port.http_event(HttpResponseWritable(ex.id))

    def _finish(self, ex: _Exchange, now: float) -> None:
        ex.done = True
        sock = ex.socket
        if sock is not None and ex.pending is None:
            self._close(sock, now)
        if ex.paused:
            self._reading(ex, True)  # the close reply must be read
        if not ex.body_left:
            self._forget(ex)
        elif ex.origin is not None:
            # Closing the rendezvous cuts off the rest of an upload nobody waited for.
            self._cancel(ex, "its response was complete before its body had arrived; the "
                             "rest of the body was not read", abort=False)

    def _close(self, sock: HttpSocket, now: float) -> None:
        connection = sock.connection
        if connection.is_open:
            connection.send_close(1000)
            self._port.http_flush(sock)
            self._port.http_closing(sock, now)

    def _forget(self, ex: _Exchange) -> None:
        if self._live.get(ex.id) is ex:
            del self._live[ex.id]
        self._on_control.pop(ex.id, None)

    def _ended(self, ex: _Exchange, sock: HttpSocket, cause: str) -> None:
        """``sock`` (one of ``ex``'s) is closing or gone."""
        if (sock is ex.socket and not ex.done) or (sock is ex.origin and (
                not ex.started or not ex.done or ex.body_left)):
            self._cancel(ex, cause)

    def _cancel(self, ex: _Exchange, cause: str, *, tell: bool = True,
                abort: bool = True) -> None:
        if ex.error is not None:
            return
        error = RequestCancelled(f"request {ex.id} cancelled: {cause}", close_code=1001)
        ex.error = error
        self._forget(ex)
        self._gone[ex.id] = error
        while len(self._gone) > self._remember:
            self._gone.popitem(last=False)
        if abort:
            for sock in (ex.origin, ex.socket):
                if sock is not None and self._by_socket.get(sock.key) is ex:
                    del self._by_socket[sock.key]
                    self._port.http_abort(sock)
        if tell and ex.started and self.serve:
            self._port.http_event(HttpRequestCancelled(ex.id, error))


def _close_text(event: CloseReceived | ConnectionClosed) -> str:
    return f"{event.code} {event.reason}".strip()
