"""Relayed HTTP requests in the blocking listener: what a ``request_handler`` gets.

``RelayedServer(..., request_handler=handler)`` calls ``handler(request)`` in a worker of its
own per request (a thread, or a greenlet) with a :class:`RelayedRequest` (``request.body()`` or
``for chunk in request.stream()``) and sends the :class:`~hyco_proto.drivers.http.Response` it
returns. The runner feeds the body in; the handler's worker takes it out and waits in bounded
slices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeAlias

from ...control import RequestCommand
from ...drivers.http import BodyBuffer, RequestCancelled, Response
from ...drivers.http import RelayedRequest as _RequestInfo
from .runtime import EventLike, Runtime
from .sockets import WAIT_SLICE

__all__ = ["RelayedRequest", "RequestHandler", "wait_event"]


def wait_event(rt: Runtime, event: EventLike, timeout: float | None, what: str) -> None:
    """Wait for ``event`` in bounded slices; ``TimeoutError(what)`` after ``timeout``."""
    deadline = None if timeout is None else rt.monotonic() + timeout
    while not event.is_set():
        wait = WAIT_SLICE
        if deadline is not None:
            left = deadline - rt.monotonic()
            if left <= 0:
                raise TimeoutError(what)
            wait = min(wait, left)
        event.wait(wait)


class RelayedRequest(_RequestInfo):
    """A relayed HTTP request: ``method``, ``target``, ``path``, ``query``, ``headers``
    (case-insensitive), ``remote_address``, ``id``, ``has_body``; the body with ``body()``
    (whole) or ``for chunk in stream()`` (as it arrives).

    Both raise :class:`~hyco_proto.drivers.http.RequestCancelled` once the sender has gone away,
    and ``TimeoutError`` when no body bytes came within ``timeout`` seconds (None: wait until
    they come or the request is cancelled). Body bytes the handler has not read yet are
    bounded: beyond about 1 MiB the listener stops reading the request's connection.
    """

    def __init__(self, runtime: Runtime, command: RequestCommand, hybrid_connection: str,
                 consumed: Callable[[int], None]) -> None:
        super().__init__(command, hybrid_connection)
        self._rt = runtime
        self._buffer = BodyBuffer()
        self._lock = runtime.lock()
        self._readable = runtime.event()
        self._writable = runtime.event()  # the response's rendezvous is open
        self._consumed = consumed
        self._whole: bytes | None = None
        self._responded = False  # the response is complete (set before its last write)

    @property
    def cancelled(self) -> bool:
        """Whether the request was cancelled (the sender went away, or the listener closed)."""
        return self._buffer.error is not None

    def body(self, timeout: float | None = None) -> bytes:
        """The whole body (what ``stream()`` has not returned yet); ``b""`` when there is none.
        ``timeout`` bounds each wait for more bytes."""
        if self._whole is None:
            self._whole = b"".join(self.stream(timeout))
        return self._whole

    def stream(self, timeout: float | None = None) -> Iterator[bytes]:
        """The body, chunk by chunk as it arrives; ``timeout`` bounds each wait."""
        if self._whole is not None:
            if self._whole:
                yield self._whole
            return
        buffer = self._buffer
        while True:
            with self._lock:
                chunk = buffer.take()  # raises RequestCancelled
                if chunk is None:
                    if buffer.done:
                        return
                    self._readable.clear()
            if chunk is not None:
                self._consumed(len(chunk))
                yield chunk
                continue
            wait_event(self._rt, self._readable, timeout,
                       f"no body bytes of {self.method} {self.target} within {timeout} s")

    # -- the runner's side -----------------------------------------------------------------

    def _feed(self, data: bytes, end: bool) -> None:
        with self._lock:
            self._buffer.feed(data, end)
        self._readable.set()

    def _cancel(self, error: RequestCancelled) -> None:
        with self._lock:
            self._buffer.cancel(error)
        self._readable.set()
        self._writable.set()

    def _check(self) -> None:
        error = self._buffer.error
        if error is not None:
            raise error


RequestHandler: TypeAlias = Callable[[RelayedRequest], Response]
