"""HTTP over Hybrid Connections for the blocking adapters, the sender side: ``relayed_request``.

A thin loop around :class:`~hyco_proto.drivers.http_client.HttpExchange` in the caller's own
thread or greenlet (no reader worker): connect (TCP, TLS for ``https://``), write the request
head and body, read until the response head has arrived, then read the body as the caller asks
for it (``stream()``: one socket read per chunk, so a body is never held whole unless
``read()`` is asked for all of it). Every socket wait is bounded. One request per connection.
"""

from __future__ import annotations

import contextlib
import ssl as _ssl
from collections import deque
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

from ...drivers.http_client import (
    DEFAULT_OPEN_TIMEOUT,
    DEFAULT_TIMEOUT,
    BodyData,
    HeadersArg,
    HttpEvent,
    HttpExchange,
    HttpRequest,
    ResponseEnd,
    ResponseFailed,
    ResponseHead,
    ResponseView,
    TokenArg,
    body_bytes,
    body_pieces,
)
from ...errors import LocalProtocolError
from .net import RECV_SIZE, open_connection, shutdown
from .runtime import Runtime

__all__ = ["HttpApi", "HttpResponse"]

Body = bytes | bytearray | memoryview | str | Iterable[bytes] | None


class _Pump:
    """Reads the socket into the exchange, one bounded ``recv`` at a time."""

    def __init__(self, sock: Any, exchange: HttpExchange, timeout: float | None) -> None:
        self.sock = sock
        self.exchange = exchange
        self.timeout = timeout
        self.events: deque[HttpEvent] = deque()

    def fill(self, stage: str) -> None:
        """Until an event is queued; ``TimeoutError`` naming the address after ``timeout``."""
        exchange = self.exchange
        while not self.events:
            self.events.extend(exchange.events_received())
            if self.events:
                return
            if exchange.finished:
                raise LocalProtocolError("the response has been read to its end")
            try:
                self.sock.settimeout(self.timeout)
                data = self.sock.recv(RECV_SIZE)
            except TimeoutError:
                raise exchange.request.timeout_error(stage, self.timeout) from None
            except OSError as exc:
                exchange.receive_eof(exc)
                continue
            if data:
                exchange.receive_data(data)
            else:
                exchange.receive_eof()

    def head(self) -> ResponseHead:
        while True:
            self.fill("head")
            event = self.events.popleft()
            if isinstance(event, ResponseHead):
                return event
            if isinstance(event, ResponseFailed):
                raise event.error

    def body(self) -> bytes | None:
        """The body bytes read so far and not yet taken (reading once if none); ``None`` at
        the end."""
        self.fill("body")
        events = self.events
        chunks: list[bytes] = []
        while events and isinstance(events[0], BodyData):
            chunks.append(events.popleft().data)  # type: ignore[union-attr]
        if chunks:
            return b"".join(chunks)
        event = events.popleft()
        if isinstance(event, ResponseFailed):
            raise event.error
        assert isinstance(event, ResponseEnd)
        return None


class HttpResponse(ResponseView):
    """The answer to ``relayed_request``: ``status``, ``reason``, ``headers``
    (case-insensitive; ``headers.get_all("set-cookie")`` for repeated ones), ``ok``; the body
    with ``read()`` (all of it) or ``for chunk in stream()`` (as it arrives).

    The connection closes once the body has been read, or with ``close()`` / ``with``.
    """

    def __init__(self, pump: _Pump, head: ResponseHead) -> None:
        self._pump = pump
        self._exchange = pump.exchange
        self._request = pump.exchange.request
        self._head = head
        self._content: bytes | None = None
        self._consumed = False
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (body read to the end, or ``close()``)."""
        return self._consumed or self._closed

    def read(self) -> bytes:
        """The rest of the body (all of it, unless ``stream()`` took some first). Each socket
        wait is bounded by the request's ``timeout``."""
        if self._content is None:
            self._content = b"".join(self.stream())
        return self._content

    def stream(self) -> Iterator[bytes]:
        """Body chunks as they arrive. Ends when the body is complete; raises
        ``TimeoutError`` when nothing came for ``timeout`` seconds and ``ConnectionError`` when
        the connection broke, both naming the address."""
        if self._content is not None:
            if self._content:
                yield self._content
            return
        if self._consumed:
            return
        if self._closed:
            raise LocalProtocolError("the response is closed: read its body before closing it")
        try:
            while True:
                chunk = self._pump.body()
                if chunk is None:
                    break
                yield chunk
        finally:
            # The end, a failure, or the caller stopping early: one request per connection.
            if self._exchange.complete:
                self._consumed = True
            else:
                self._closed = True
            self._close_socket()

    def close(self) -> None:
        """Close the connection now (a body not read to its end is dropped). Idempotent."""
        if not self._consumed:
            self._closed = True
        self._close_socket()

    def _close_socket(self) -> None:
        sock = self._pump.sock
        if not self._exchange.complete:
            shutdown(sock)
        with contextlib.suppress(OSError):
            sock.close()

    def __enter__(self) -> HttpResponse:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _send(sock: Any, exchange: HttpExchange, body: object, timeout: float | None) -> None:
    """Write the request; stops early when the connection broke (reading then tells the
    outcome: an early answer, or the failure)."""
    request = exchange.request

    def flush() -> bool:
        try:
            sock.settimeout(timeout)
            for chunk in exchange.data_to_send():
                sock.sendall(chunk)
        except TimeoutError:
            raise request.timeout_error("send", timeout) from None
        except OSError:
            return False
        return True

    if not flush():
        return
    fixed = request.fixed_body
    chunks: Iterable[bytes]
    if fixed is not None:
        chunks = body_pieces(fixed)
    else:
        assert isinstance(body, Iterable)
        chunks = body
    for chunk in chunks:
        exchange.send_body(body_bytes(chunk))
        if not flush():
            return
    exchange.end_body()
    flush()


class HttpApi:
    """``relayed_request`` of one blocking adapter (its ``runtime``)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def relayed_request(self, method: str, uri: str, token: TokenArg = None, *,
                        body: Body = b"", headers: HeadersArg = None,
                        ssl: _ssl.SSLContext | None = None,
                        open_timeout: float | None = DEFAULT_OPEN_TIMEOUT,
                        timeout: float | None = DEFAULT_TIMEOUT,
                        token_in_query: bool = False) -> HttpResponse:
        """Send one HTTP request through a hybrid connection and get the listener's response.

        ``with relayed_request("POST", uri, token, body=b"hi") as response:`` (the response
        is a context manager; without ``with``, read its body or ``close()`` it). ``uri``:
        ``https://{namespace}/{hc}[/suffix][?query]``
        (:func:`hyco_proto.uris.create_relay_http_uri`; ``http://`` for the local emulator).
        ``token``: a SAS token or a callable returning one, sent as ``ServiceBusAuthorization``
        (``sb-hc-token`` in the query with ``token_in_query``). ``body``: bytes / str
        (``Content-Length``), or an iterable of bytes sent chunked as it is produced.
        ``headers``: a mapping or (name, value) pairs. ``ssl``: the context for ``https://``
        (default: the system's, verified).

        Returns once the response head has arrived; its status is returned whatever it is (a
        401 from the relay, a 502 with no listener, the listener's 404 ...). Raises
        ``ConnectionRefusedError`` / ``ConnectionError`` / ``TimeoutError`` naming the address
        when connecting fails (``open_timeout``, TCP and TLS) or when the server does not
        answer: ``timeout`` bounds every later socket wait (each write, the response head,
        each body read). The request body is written before the response is read.
        """
        request = HttpRequest(method, uri, token, body=body, headers=headers,
                              token_in_query=token_in_query)
        if request.streamed and not isinstance(body, Iterable):
            raise TypeError(f"body must be bytes, str, or an iterable of bytes, not "
                            f"{type(body).__name__} (an async iterable needs the asyncio "
                            f"adapter)")
        exchange = HttpExchange(request)
        try:
            sock = open_connection(self.runtime, request.hostname, request.port,
                                   secure=request.secure, ssl=ssl, timeout=open_timeout)
        except OSError as exc:
            error = request.connect_error(exc, open_timeout)
            raise error from error.__cause__
        pump = _Pump(sock, exchange, timeout)
        try:
            _send(sock, exchange, body, timeout)
            head = pump.head()
        except BaseException:
            shutdown(sock)
            with contextlib.suppress(OSError):
                sock.close()
            raise
        return HttpResponse(pump, head)
