"""The sender side of HTTP over Hybrid Connections, sans-IO: one HTTP/1.1 request and its
response on one connection, on h11.

A sender of relayed HTTP is an ordinary HTTP client: it sends its request to
``http(s)://{namespace}/{hc}[/suffix][?query]`` (no ``$hc``, hybrid-connections-wire §1.3) with a
SAS token in the ``ServiceBusAuthorization`` header or the ``sb-hc-token`` query parameter
(§2.5); the relay hands the request to a listener and streams the listener's response back.

* :class:`HttpRequest` — what to send: the address taken apart (``hostname``, ``port``,
  ``secure``, ``target``), the headers (``Host``, the token, the body's framing,
  ``Connection: close``), and the body: bytes / str get a ``Content-Length``; anything else is an
  iterable the adapter feeds chunk by chunk, sent ``Transfer-Encoding: chunked`` (or with the
  caller's own ``Content-Length``). Also the errors every adapter raises, naming the address.
* :class:`HttpExchange` — the state machine: ``data_to_send()`` (the request head first),
  ``send_body`` / ``end_body``, ``receive_data`` / ``receive_eof``, ``events_received()``:
  :class:`ResponseHead`, then :class:`BodyData` as the bytes arrive, then :class:`ResponseEnd`;
  or :class:`ResponseFailed` (the peer closed early or sent something that is not HTTP/1.1).
  HEAD requests and 204 / 304 answers have no body (h11 knows).
* :class:`ResponseView` — ``status``, ``reason``, ``headers``, ``http_version``, ``url``, ``ok``:
  what every adapter's response object shows.

One request per connection (``Connection: close``): the relay streams a response for as long
as the listener writes it, so a connection is not reused. No I/O and no clock here: adapters
connect, move bytes and time their waits.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import h11

from .._syntax import is_token
from .._version import __version__
from ..errors import LocalProtocolError, connect_failure, host_port
from ..headers import Headers

__all__ = [
    "AUTH_HEADER",
    "BODY_PIECE",
    "DEFAULT_OPEN_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "TOKEN_PARAM",
    "BodyData",
    "HttpEvent",
    "HttpExchange",
    "HttpRequest",
    "ResponseEnd",
    "ResponseFailed",
    "ResponseHead",
    "ResponseView",
    "body_bytes",
    "body_pieces",
]

#: The header the relay reads the SAS token from (§2.5); it never reaches the listener.
AUTH_HEADER = "ServiceBusAuthorization"
#: The query parameter alternative, for stacks that cannot set headers (§2.5).
TOKEN_PARAM = "sb-hc-token"
#: Seconds to connect (TCP and TLS).
DEFAULT_OPEN_TIMEOUT = 10.0
#: Seconds any later wait may last: the response head, each read of the body, each write of
#: the request. The relay answers 504 itself when a listener has not responded within 60 s
#: (§3.3), so the default lets that answer through rather than timing out first.
DEFAULT_TIMEOUT = 70.0
#: A bytes body is handed to the connection in pieces of at most this size.
BODY_PIECE = 256 * 1024
#: The largest response head accepted (status line and headers).
DEFAULT_MAX_HEADER_SIZE = 64 * 1024

# Headers this module writes itself (or that make no sense on a one-shot HTTP/1.1 request).
_RESERVED_HEADERS = frozenset({
    "host", "connection", "transfer-encoding", "te", "upgrade", "keep-alive", "trailer",
    "proxy-connection",
})
# Methods whose empty body gets no ``Content-Length: 0`` (RFC 9110 §8.6: a user agent should
# not send one when the method defines no meaning for a body).
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
_BAD_VALUE = re.compile(r"[\r\n\0]")
# Kept as written in a request target: RFC 3986 pchar, "/" and "?" and "%" (already encoded).
_PATH_SAFE = "/!$&'()*+,;=:@%~"
_QUERY_SAFE = _PATH_SAFE + "?"

TokenArg = str | Callable[[], str] | None
HeadersArg = Mapping[str, str] | Iterable[tuple[str, str]] | None


# ----------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """The status line and headers (every value of a repeated header kept: ``get_all``)."""

    status: int
    reason: str
    headers: Headers
    http_version: str


@dataclass(frozen=True, slots=True)
class BodyData:
    """Response body bytes, as they arrived."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ResponseEnd:
    """The response is complete (``trailers``: a chunked body's trailer fields, if any)."""

    trailers: Headers


@dataclass(frozen=True, slots=True)
class ResponseFailed:
    """No complete response will come; ``error`` says why and names the address."""

    error: ConnectionError


HttpEvent = ResponseHead | BodyData | ResponseEnd | ResponseFailed


# ----------------------------------------------------------------------------------- bodies


def body_bytes(chunk: object, what: str = "request body chunks must be") -> bytes:
    """One body chunk as bytes: bytes-like as is, ``str`` as UTF-8; ``TypeError`` (starting
    with ``what``) otherwise."""
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    if isinstance(chunk, str):
        return chunk.encode("utf-8")
    raise TypeError(f"{what} bytes (or str), not {type(chunk).__name__}")


def body_pieces(data: bytes, size: int = BODY_PIECE) -> Iterator[bytes]:
    """``data`` in pieces of at most ``size`` bytes (none for ``b""``)."""
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start:start + size])


def _fixed_body(body: object) -> bytes | None:
    """The whole body when ``body`` is one (None: an iterable the adapter streams)."""
    if body is None:
        return b""
    if isinstance(body, (bytes, bytearray, memoryview, str)):
        return body_bytes(body)
    if isinstance(body, Mapping) or not isinstance(body, (Iterable, AsyncIterable)):
        raise TypeError(f"body must be bytes, str, or an iterable of bytes chunks, not "
                        f"{type(body).__name__} (encode it first, e.g. json.dumps(...)"
                        f".encode())")
    return None


# ----------------------------------------------------------------------------------- request


def _headers_list(headers: HeadersArg) -> list[tuple[str, str]]:
    if headers is None:
        return []
    given: object = headers
    if isinstance(given, (str, bytes)):
        raise TypeError("headers must be a mapping or (name, value) pairs, not a string")
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(f"headers must be (name, value) pairs, not {item!r}")
        name, value = item
        if not is_token(name):
            raise ValueError(f"header name {name!r} is not a valid HTTP token")
        if not isinstance(value, str):
            raise TypeError(f"header {name!r}: the value must be a str, not "
                            f"{type(value).__name__}")
        if _BAD_VALUE.search(value):
            raise ValueError(f"header {name!r} contains CR, LF or NUL")
    return items


class HttpRequest:
    """One relayed HTTP request: where it goes and what it says.

    ``uri``: ``http://`` or ``https://`` (TLS) ``{namespace}/{hc}[/suffix][?query]``, e.g. from
    :func:`hyco_proto.uris.create_relay_http_uri`. ``token``: a SAS token, or a callable
    returning one (called once, here), sent as ``ServiceBusAuthorization`` (as ``sb-hc-token``
    in the query with ``token_in_query``); ``None`` sends none (an anonymous hybrid connection,
    or a token already in ``uri`` or ``headers``). ``body``: bytes / str (``Content-Length``), or
    an iterable of bytes chunks (``streamed``; sent chunked unless ``headers`` has a
    ``Content-Length``). ``Host``, ``Connection``, ``Transfer-Encoding`` and the like are written
    here and refused in ``headers``; ``User-Agent`` is ``hyco_proto/VERSION`` unless given.

    Attributes: ``method``, ``secure``, ``hostname`` (for connecting; no IPv6 brackets),
    ``port``, ``host_header``, ``target`` (path and query as sent), ``url`` (the address without
    its query: what error messages show, never a token), ``headers`` (pairs, in order),
    ``fixed_body`` (bytes, or None when ``streamed``), ``streamed``.
    """

    __slots__ = ("fixed_body", "headers", "host_header", "hostname", "method", "port", "secure",
                 "streamed", "target", "url")

    secure: bool
    hostname: str
    port: int
    host_header: str
    target: str
    url: str

    def __init__(self, method: str, uri: str, token: TokenArg = None, *, body: object = b"",
                 headers: HeadersArg = None, token_in_query: bool = False) -> None:
        if not is_token(method):
            raise ValueError(f"method {method!r} is not a valid HTTP method name")
        self.method = method.upper()
        self._parse_uri(uri)
        token_text = self._token(token)
        if token_in_query:
            if token_text is None:
                raise ValueError("token_in_query=True needs a token")
            path, _, query = self.target.partition("?")
            kept = [seg for seg in query.split("&")
                    if seg and seg.split("=", 1)[0].lower() != TOKEN_PARAM]
            kept.append(f"{TOKEN_PARAM}={quote(token_text, safe='')}")
            self.target = f"{path}?{'&'.join(kept)}"

        fixed = _fixed_body(body)
        self.fixed_body = fixed
        self.streamed = fixed is None

        given = _headers_list(headers)
        out: list[tuple[str, str]] = [("Host", self.host_header)]
        length: str | None = None
        agent = False
        for name, value in given:
            lower = name.lower()
            if lower in _RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is written by relayed_request (one request "
                                 "per connection); leave it out")
            if lower == AUTH_HEADER.lower() and token_text is not None:
                raise ValueError(f"pass the token either as `token` or as a {AUTH_HEADER} "
                                 "header, not both")
            if lower == "content-length":
                if length is not None:
                    raise ValueError("Content-Length given twice")
                if not value.strip().isdigit():
                    raise ValueError(f"Content-Length {value!r} is not a number")
                length = value.strip()
                if fixed is not None and int(length) != len(fixed):
                    raise ValueError(f"Content-Length {length} does not match the body's "
                                     f"{len(fixed)} bytes (leave it out for a bytes body)")
                continue
            agent = agent or lower == "user-agent"
            out.append((name, value))
        if not agent:
            out.append(("User-Agent", f"hyco_proto/{__version__}"))
        if token_text is not None and not token_in_query:
            out.append((AUTH_HEADER, token_text))
        if fixed is not None:
            if fixed or self.method not in _NO_BODY_METHODS:
                out.append(("Content-Length", str(len(fixed))))
        elif length is not None:
            out.append(("Content-Length", length))
        else:
            out.append(("Transfer-Encoding", "chunked"))
        out.append(("Connection", "close"))
        self.headers: tuple[tuple[str, str], ...] = tuple(out)

    def _parse_uri(self, uri: str) -> None:
        if not isinstance(uri, str):
            raise TypeError(f"uri must be a str, not {type(uri).__name__}")
        parts = urlsplit(uri.strip())
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"a relayed HTTP request goes to an http:// or https:// address "
                             f"(https://{{namespace}}/{{hc}}), not {uri!r}")
        if not parts.hostname:
            raise ValueError(f"address {uri!r} has no host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("the address may not carry user:password@; pass a token")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"address {uri!r} has an invalid port ({exc})") from None
        if port == 0:
            raise ValueError(f"address {uri!r} has an invalid port (0)")
        self.secure = scheme == "https"
        default = 443 if self.secure else 80
        self.port = default if port is None else port
        self.hostname = parts.hostname
        shown = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        self.host_header = shown if self.port == default else f"{shown}:{self.port}"
        try:
            path = quote(parts.path or "/", safe=_PATH_SAFE)
            query = quote(parts.query, safe=_QUERY_SAFE)
        except UnicodeEncodeError as exc:
            raise ValueError(f"address {uri!r} contains a lone surrogate") from exc
        if not path.startswith("/"):
            path = "/" + path
        self.target = path + (f"?{query}" if query else "")
        # A #fragment is never sent (RFC 9110 §4.2.5).
        self.url = f"{scheme}://{self.host_header}{path}"

    @staticmethod
    def _token(token: TokenArg) -> str | None:
        if token is None:
            return None
        text = token() if callable(token) else token
        if not isinstance(text, str) or not text:
            raise TypeError(f"token must be a non-empty str or a callable returning one, "
                            f"got {text!r}")
        if _BAD_VALUE.search(text):
            raise ValueError("token contains CR, LF or NUL")
        return text

    # -- errors naming the address ----------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port (url)`` for messages."""
        return f"{host_port(self.hostname, self.port)} ({self.url})"

    def connect_error(self, exc: BaseException, timeout: float | None) -> OSError:
        """The error for connecting failing with ``exc`` (an adapter's connect error or its
        cause): :func:`~hyco_proto.errors.connect_failure`, suggesting ``http://`` when the
        server does not speak TLS."""
        cause = exc.__cause__ if isinstance(exc.__cause__, BaseException) else exc
        return connect_failure(cause, host=self.hostname, port=self.port, secure=self.secure,
                               timeout=timeout, plain_scheme="http")

    def timeout_error(self, stage: str, timeout: float | None) -> TimeoutError:
        """``TimeoutError`` for a wait that lasted ``timeout`` seconds. ``stage``: ``"send"``
        (the peer took no request bytes), ``"head"`` (no response), ``"body"`` (the response
        body stalled)."""
        limit = f"{timeout:g} s" if timeout is not None else "the time limit"
        if stage == "send":
            text = f"{self.address} took none of the request body for {limit}"
        elif stage == "head":
            text = f"no response from {self.address} within {limit}"
        else:
            text = f"the response body from {self.address} stalled: nothing for {limit}"
        return TimeoutError(text)

    def __repr__(self) -> str:
        # The target may carry a token (sb-hc-token): keep it out of logs.
        return f"HttpRequest({self.method} {self.url})"


# ----------------------------------------------------------------------------------- exchange


def _decode(raw: Iterable[tuple[bytes, bytes]]) -> Headers:
    # latin-1 maps every byte of an HTTP/1.1 field; original case kept (h11 raw_items).
    return Headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw])


class HttpExchange:
    """One request and its response on one connection (h11 underneath).

    The request head is in ``data_to_send()`` from the start. Body: ``send_body(chunk)`` any
    number of times, then ``end_body()`` (a bytes body: its pieces, see :func:`body_pieces`).
    Feed the peer's bytes to ``receive_data`` and its EOF (or a lost connection) to
    ``receive_eof``; ``events_received()`` then gives :class:`ResponseHead`,
    :class:`BodyData` ..., :class:`ResponseEnd`, or :class:`ResponseFailed`. The response may
    come before the request body is done (a server refusing it early): check ``finished``
    before sending more. Peer errors never raise; misuse raises ``LocalProtocolError``.
    """

    def __init__(self, request: HttpRequest, *,
                 max_header_size: int = DEFAULT_MAX_HEADER_SIZE) -> None:
        self.request = request
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_size)
        try:
            head = self._h11.send(h11.Request(
                method=request.method, target=request.target,
                headers=[(k.encode("latin-1"), v.encode("latin-1"))
                         for k, v in request.headers]))
        except (h11.LocalProtocolError, UnicodeEncodeError) as exc:
            raise ValueError(f"cannot send this request: {exc}") from None
        self._out: list[bytes] = [head] if head else []
        self._events: list[HttpEvent] = []
        self.head: ResponseHead | None = None
        #: The failure, once the response cannot complete.
        self.error: ConnectionError | None = None
        #: Whether the whole response has been received.
        self.complete = False
        self.body_received = 0
        self._body_ended = False
        self._eof = False

    # -- state ------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """The response is complete or failed: nothing more will come (or need sending)."""
        return self.complete or self.error is not None

    @property
    def body_ended(self) -> bool:
        """Whether ``end_body`` was called."""
        return self._body_ended

    # -- sending ----------------------------------------------------------------------------

    def send_body(self, data: bytes) -> None:
        """Queue request body bytes (chunk-framed when the body is streamed without a
        ``Content-Length``). Ignored once the response has failed or completed."""
        if self._body_ended:
            raise LocalProtocolError("send_body() after end_body(): the request is complete")
        if self.finished or not data:
            return
        self._send(h11.Data(data=data))

    def end_body(self) -> None:
        """The request body is complete. Idempotent; ignored once the response finished."""
        if self._body_ended:
            return
        self._body_ended = True
        if not self.finished:
            self._send(h11.EndOfMessage())

    def _send(self, event: h11.Data | h11.EndOfMessage) -> None:
        try:
            out = self._h11.send(event)
        except h11.LocalProtocolError as exc:
            # e.g. more or fewer bytes than the Content-Length the caller gave.
            raise LocalProtocolError(f"request body for {self.request.url}: {exc}") from None
        if out:
            self._out.append(out)

    def data_to_send(self) -> list[bytes]:
        """Bytes to write, in order (taken: each call returns what is new)."""
        out, self._out = self._out, []
        return out

    # -- receiving --------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer (ignored after EOF or once finished)."""
        if self._eof or self.finished or not data:
            return
        self._h11.receive_data(data)
        self._parse()

    def receive_eof(self, cause: BaseException | None = None) -> None:
        """The peer closed (or the connection was lost: ``cause``). Idempotent."""
        if self._eof:
            return
        self._eof = True
        if self.finished:
            return
        self._h11.receive_data(b"")
        self._parse(cause)

    def events_received(self) -> list[HttpEvent]:
        """What happened since the last call, in order."""
        events, self._events = self._events, []
        return events

    def _parse(self, cause: BaseException | None = None) -> None:
        while not self.finished:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._fail(self._eof_text(cause) if self._eof else
                           f"the answer from {self.request.address} is not valid HTTP/1.1: "
                           f"{exc}", exc)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue and the like: the final answer follows
            if isinstance(event, h11.Response):
                self.head = ResponseHead(
                    status=event.status_code,
                    reason=event.reason.decode("latin-1"),
                    headers=_decode(event.headers.raw_items()),
                    http_version=event.http_version.decode("ascii", "replace"))
                self._events.append(self.head)
            elif isinstance(event, h11.Data):
                data = bytes(event.data)
                self.body_received += len(data)
                self._events.append(BodyData(data))
            elif isinstance(event, h11.EndOfMessage):
                self.complete = True
                self._events.append(ResponseEnd(_decode(event.headers.raw_items())))
            else:  # ConnectionClosed before the response ended
                self._fail(self._eof_text(cause), cause)

    def _eof_text(self, cause: BaseException | None) -> str:
        why = f" ({cause})" if cause is not None and str(cause) else ""
        where = self.request.address
        if self.head is None:
            text = f"{where} closed the connection without answering{why}"
            if not self.request.secure:
                text += " (is it serving https://? then use https://)"
            return text
        return (f"{where} closed the connection before the response body was complete "
                f"({self.body_received} bytes received){why}")

    def _fail(self, text: str, cause: BaseException | None) -> None:
        error = ConnectionError(text)
        error.__cause__ = cause
        self.error = error
        self._events.append(ResponseFailed(error))


# ----------------------------------------------------------------------------------- view


class ResponseView:
    """What every adapter's response shows about the answer (a mixin over ``_head`` and
    ``_request``)."""

    _head: ResponseHead
    _request: HttpRequest

    @property
    def status(self) -> int:
        """The status code (returned whatever it is: 4xx / 5xx are answers, not errors)."""
        return self._head.status

    @property
    def reason(self) -> str:
        """The reason phrase as sent (may be empty)."""
        return self._head.reason

    @property
    def headers(self) -> Headers:
        """Case-insensitive; a repeated header (``Set-Cookie``) maps to its last value, and
        ``headers.get_all(name)`` gives every one."""
        return self._head.headers

    @property
    def http_version(self) -> str:
        """``"1.1"`` or ``"1.0"``."""
        return self._head.http_version

    @property
    def url(self) -> str:
        """The address the request went to, without its query."""
        return self._request.url

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self._head.status < 300

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.status} {self.reason!r} {self.url}>"
