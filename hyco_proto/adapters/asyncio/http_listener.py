"""Relayed HTTP requests in the asyncio listener: what a ``request_handler`` gets and returns.

``RelayedServer(..., request_handler=handler)`` runs ``await handler(request)`` as a task per
request (:class:`RelayedRequest`; ``await request.body()`` or ``async for chunk in
request.stream()``) and sends the :class:`~hyco_proto.drivers.http.Response` it returns. The
driver (:mod:`hyco_proto.drivers.http`) decides the sockets; this module does the waiting:
for body bytes, for a response rendezvous to open, for the transport's write buffer to drain.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TypeAlias

from ...control import RequestCommand
from ...drivers.http import BodyBuffer, RequestCancelled, Response, body_chunk
from ...drivers.http import RelayedRequest as _RequestInfo

__all__ = ["RelayedRequest", "RequestHandler", "body_chunks"]


class RelayedRequest(_RequestInfo):
    """A relayed HTTP request on asyncio: ``method``, ``target``, ``path``, ``query``,
    ``headers`` (case-insensitive), ``remote_address``, ``id``, ``has_body``; the body with
    ``await body()`` (whole) or ``async for chunk in stream()`` (as it arrives).

    Both raise :class:`~hyco_proto.drivers.http.RequestCancelled` once the sender has gone away
    (the handler task is cancelled then, too). Body bytes the handler has not read yet are
    bounded: beyond about 1 MiB the listener stops reading the request's connection.
    """

    def __init__(self, command: RequestCommand, hybrid_connection: str,
                 consumed: Callable[[int], None]) -> None:
        super().__init__(command, hybrid_connection)
        self._buffer = BodyBuffer()
        self._consumed = consumed
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()  # the response's rendezvous is open
        self._whole: bytes | None = None
        self._responded = False  # the response is complete (set before its last write)

    @property
    def cancelled(self) -> bool:
        """Whether the request was cancelled (the sender went away, or the listener closed)."""
        return self._buffer.error is not None

    async def body(self) -> bytes:
        """The whole body (what ``stream()`` has not returned yet); ``b""`` when there is none."""
        if self._whole is None:
            self._whole = b"".join([chunk async for chunk in self.stream()])
        return self._whole

    async def stream(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk as it arrives."""
        if self._whole is not None:
            if self._whole:
                yield self._whole
            return
        buffer = self._buffer
        while True:
            chunk = buffer.take()
            if chunk is not None:
                self._consumed(len(chunk))
                yield chunk
                continue
            if buffer.done:
                return
            self._readable.clear()
            await self._readable.wait()

    # -- the server's side -----------------------------------------------------------------

    def _feed(self, data: bytes, end: bool) -> None:
        self._buffer.feed(data, end)
        self._readable.set()

    def _cancel(self, error: RequestCancelled) -> None:
        self._buffer.cancel(error)
        self._readable.set()
        self._writable.set()

    def _check(self) -> None:
        error = self._buffer.error
        if error is not None:
            raise error


RequestHandler: TypeAlias = Callable[[RelayedRequest], Awaitable[Response] | Response]


async def body_chunks(body: object) -> AsyncGenerator[bytes, None]:
    """A streamed response body as bytes chunks: an async iterable, or a plain iterable (which
    must not block: it runs on the event loop). The source is closed when this ends early."""
    try:
        if isinstance(body, AsyncIterable):
            async for chunk in body:
                yield body_chunk(chunk)
        else:
            for chunk in body:  # type: ignore[attr-defined]
                yield body_chunk(chunk)
    finally:
        aclose = getattr(body, "aclose", None)
        close = getattr(body, "close", None)
        if aclose is not None:
            await aclose()
        elif close is not None:
            close()
