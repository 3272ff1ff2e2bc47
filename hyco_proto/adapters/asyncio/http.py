"""HTTP over Hybrid Connections on asyncio, the sender side: ``relayed_request``.

A thin loop around :class:`~hyco_proto.drivers.http_client.HttpExchange`: connect (TCP, TLS for
``https://``), write the request head and body (waiting while the transport's write buffer is
full), then hand the response over as soon as its head has arrived; its body is read as it comes
(``stream()``), and the transport stops reading while more than ``READ_LIMIT`` bytes of it wait
for the caller. One request per connection.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Generator, Iterable
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
from ...errors import ConnectionLostError, LocalProtocolError
from .link import DEFAULT_WRITE_LIMIT, Link, open_link

__all__ = ["READ_LIMIT", "HttpResponse", "relayed_request"]

#: Response body bytes that may wait for the caller before the transport stops reading.
READ_LIMIT = 256 * 1024
#: A fixed request body up to this size is written together with the head.
_WITH_HEAD = 64 * 1024

Body = bytes | bytearray | memoryview | str | Iterable[bytes] | AsyncIterable[bytes] | None


class _Reader:
    """The link's receiver: feeds the exchange, queues its events, wakes the waiting caller."""

    def __init__(self, exchange: HttpExchange, link: Link) -> None:
        self._exchange = exchange
        self._link = link
        self._events: deque[HttpEvent] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self._exchange.receive_data(data)
        self._take()

    def eof_received(self) -> None:
        self._exchange.receive_eof()
        self._take()

    def connection_lost(self, exc: Exception | None) -> None:
        self._exchange.receive_eof(exc)
        self._take()

    def _take(self) -> None:
        events = self._exchange.events_received()
        if not events:
            return
        for event in events:
            if isinstance(event, BodyData):
                self._buffered += len(event.data)
            self._events.append(event)
        if self._buffered > READ_LIMIT:
            self._link.pause_reading()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self, timeout: float | None, stage: str) -> None:
        """Until an event is queued; ``TimeoutError`` naming the address after ``timeout``."""
        if self._events:
            return
        if self._exchange.finished:
            raise LocalProtocolError("the response has been read to its end")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            raise self._exchange.request.timeout_error(stage, timeout) from None
        finally:
            self._waiter = None

    async def head(self, timeout: float | None) -> ResponseHead:
        while True:
            await self._wait(timeout, "head")
            event = self._events.popleft()
            if isinstance(event, ResponseHead):
                return event
            if isinstance(event, ResponseFailed):
                raise event.error

    async def body(self, timeout: float | None) -> bytes | None:
        """The body bytes queued now (waiting for some if none); ``None`` at the end."""
        await self._wait(timeout, "body")
        chunks: list[bytes] = []
        events = self._events
        while events and isinstance(events[0], BodyData):
            data = events.popleft().data  # type: ignore[union-attr]
            chunks.append(data)
            self._buffered -= len(data)
        if self._buffered <= READ_LIMIT // 4:
            self._link.resume_reading()
        if chunks:
            return b"".join(chunks)
        event = events.popleft()
        if isinstance(event, ResponseFailed):
            raise event.error
        assert isinstance(event, ResponseEnd)
        return None


class HttpResponse(ResponseView):
    """The answer to :func:`relayed_request`: ``status``, ``reason``, ``headers``
    (case-insensitive; ``headers.get_all("set-cookie")`` for repeated ones), ``ok``; the body
    with ``await read()`` (all of it) or ``async for chunk in stream()`` (as it arrives).

    The connection closes once the body has been read, or with ``close()`` / ``async with``.
    """

    def __init__(self, link: Link, reader: _Reader, exchange: HttpExchange,
                 head: ResponseHead, timeout: float | None) -> None:
        self._link = link
        self._reader = reader
        self._exchange = exchange
        self._request = exchange.request
        self._head = head
        self._timeout = timeout
        self._content: bytes | None = None
        self._consumed = False  # the body was read to its end
        self._closed = False  # close() was called

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (body read to the end, or ``close()``)."""
        return self._consumed or self._closed or self._link.lost.done()

    async def read(self) -> bytes:
        """The rest of the body (all of it, unless ``stream()`` took some first). Each wait
        for more is bounded by the request's ``timeout``."""
        if self._content is not None:
            return self._content
        content = b"".join([chunk async for chunk in self.stream()])
        self._content = content
        return content

    async def stream(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive (what the transport delivered; never the whole body
        held at once). Ends when the body is complete; raises ``TimeoutError`` when nothing
        came for ``timeout`` seconds and ``ConnectionError`` when the connection broke, both
        naming the address."""
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
                chunk = await self._reader.body(self._timeout)
                if chunk is None:
                    break
                yield chunk
        except BaseException:
            self.close()
            raise
        self._consumed = True
        self._link.write(b"")  # Connection: close, and the answer is complete

    def close(self) -> None:
        """Close the connection now (a body not read to its end is dropped). Idempotent."""
        self._closed = True
        if self._exchange.complete:
            self._link.write(b"")
        else:
            self._link.abort()

    async def aclose(self) -> None:
        """``close()``, then wait (briefly) until the transport is gone."""
        self.close()
        lost = self._link.lost
        if not lost.done():
            try:
                await asyncio.wait_for(asyncio.shield(lost), 5.0)
            except asyncio.TimeoutError:
                self._link.abort()

    async def __aenter__(self) -> HttpResponse:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class _RequestContext:
    """``await relayed_request(...)`` or ``async with relayed_request(...) as response``."""

    def __init__(self, opening: Awaitable[HttpResponse]) -> None:
        self._opening = opening
        self._response: HttpResponse | None = None

    def __await__(self) -> Generator[Any, None, HttpResponse]:
        return self._opening.__await__()

    async def __aenter__(self) -> HttpResponse:
        self._response = await self._opening
        return self._response

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._response is not None:
            self._response.close()


async def _chunks(body: object) -> AsyncIterator[bytes]:
    """A streamed body's chunks (HttpRequest checked that it is an (async) iterable)."""
    if isinstance(body, AsyncIterable):
        async for chunk in body:
            yield body_bytes(chunk)
    else:
        assert isinstance(body, Iterable)
        for chunk in body:
            yield body_bytes(chunk)


async def _send(link: Link, exchange: HttpExchange, body: object,
                timeout: float | None) -> None:
    """Write the request; stops early when the response finished first or the connection
    broke (the reader then has the outcome)."""
    request = exchange.request

    async def flush() -> bool:
        link.write_all(exchange.data_to_send())
        try:
            await asyncio.wait_for(link.drain(), timeout)
        except asyncio.TimeoutError:
            raise request.timeout_error("send", timeout) from None
        except (ConnectionLostError, OSError):
            return False
        return not exchange.finished

    fixed = request.fixed_body
    if fixed is not None and len(fixed) <= _WITH_HEAD:
        # A small body goes out with the head in one write: a server that answers before it
        # reads the body (Node's http with Connection: close, e.g. @azure/web-pubsub-express
        # for connected/disconnected events) then still finds the whole body in its buffer.
        if fixed:
            exchange.send_body(fixed)
        exchange.end_body()
        link.write(b"".join(exchange.data_to_send()))  # one write: one segment, not two
        await flush()
        return
    if not await flush():
        return
    if fixed is not None:
        for piece in body_pieces(fixed):
            exchange.send_body(piece)
            if not await flush():
                return
    else:
        async for chunk in _chunks(body):
            exchange.send_body(chunk)
            if not await flush():
                return
    exchange.end_body()
    await flush()


async def _perform(request: HttpRequest, body: object, ssl: _ssl.SSLContext | None,
                   open_timeout: float | None, timeout: float | None,
                   write_limit: int) -> HttpResponse:
    exchange = HttpExchange(request)
    link = Link(write_limit=write_limit)
    reader = _Reader(exchange, link)
    link.receiver = reader
    try:
        await open_link(link, request.hostname, request.port, secure=request.secure, ssl=ssl,
                        timeout=open_timeout)
    except OSError as exc:
        error = request.connect_error(exc, open_timeout)
        raise error from error.__cause__
    try:
        await _send(link, exchange, body, timeout)
        head = await reader.head(timeout)
    except BaseException:
        link.abort()
        raise
    return HttpResponse(link, reader, exchange, head, timeout)


def relayed_request(method: str, uri: str, token: TokenArg = None, *, body: Body = b"",
                    headers: HeadersArg = None, ssl: _ssl.SSLContext | None = None,
                    open_timeout: float | None = DEFAULT_OPEN_TIMEOUT,
                    timeout: float | None = DEFAULT_TIMEOUT, token_in_query: bool = False,
                    write_limit: int = DEFAULT_WRITE_LIMIT) -> _RequestContext:
    """Send one HTTP request through a hybrid connection and get the listener's response.

    ``async with relayed_request("POST", uri, token, body=b"hi") as response:`` or
    ``response = await relayed_request(...)`` (then ``await response.read()`` or
    ``response.close()``). ``uri``: ``https://{namespace}/{hc}[/suffix][?query]``
    (:func:`hyco_proto.uris.create_relay_http_uri`; ``http://`` for the local emulator).
    ``token``: a SAS token or a callable returning one, sent as ``ServiceBusAuthorization``
    (``sb-hc-token`` in the query with ``token_in_query``). ``body``: bytes / str
    (``Content-Length``), or an iterable or async iterable of bytes sent chunked as it is
    produced. ``headers``: a mapping or (name, value) pairs. ``ssl``: the context for
    ``https://`` (default: the system's, verified).

    Returns once the response head has arrived; its status is returned whatever it is (a 401
    from the relay, a 502 with no listener, the listener's 404 ...). Raises
    ``ConnectionRefusedError`` / ``ConnectionError`` / ``TimeoutError`` naming the address when
    connecting fails (``open_timeout``, TCP and TLS) or when the server does not answer:
    ``timeout`` bounds every later wait (each write, the response head, each body read).
    """
    request = HttpRequest(method, uri, token, body=body, headers=headers,
                          token_in_query=token_in_query)
    return _RequestContext(_perform(request, body, ssl, open_timeout, timeout, write_limit))
