"""One TCP (or TLS) connection on asyncio, handing its bytes to whoever owns it now.

A ``Link`` is an ``asyncio.Protocol`` with a replaceable ``receiver``: the listener driver while
a rendezvous handshake runs, then the socket it is handed over to. It also carries what every
owner needs: write-buffer backpressure (``drain``), pausing reads, and a ``lost`` future.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from typing import Protocol

from ...errors import ConnectionLostError, connect_failure

__all__ = ["DEFAULT_WRITE_LIMIT", "Link", "Receiver", "open_link", "tls_context"]

#: Transport write buffer size above which senders wait.
DEFAULT_WRITE_LIMIT = 256 * 1024


class Receiver(Protocol):
    def data_received(self, data: bytes) -> None: ...

    def eof_received(self) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


class Link(asyncio.Protocol):
    """The transport's callbacks, forwarded to ``receiver``; writes and flow control."""

    def __init__(self, receiver: Receiver | None = None, *,
                 write_limit: int = DEFAULT_WRITE_LIMIT) -> None:
        self.receiver = receiver
        self.write_limit = write_limit
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reading_paused = False
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []

    # -- asyncio callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=self.write_limit, low=self.write_limit // 4)

    def data_received(self, data: bytes) -> None:
        if self.receiver is not None:
            self.receiver.data_received(data)

    def eof_received(self) -> bool | None:
        if self.receiver is not None:
            self.receiver.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self._wake(exc or ConnectionLostError("connection lost", close_code=1006))
        if self.receiver is not None:
            self.receiver.connection_lost(exc)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake(None)

    # -- the owner's side ------------------------------------------------------------------

    def write(self, chunk: bytes) -> None:
        """Write ``chunk``; ``b""`` closes the connection (after what was written)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if chunk:
            transport.write(chunk)
        else:
            transport.close()

    def write_all(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    async def drain(self) -> None:
        """Wait while the write buffer is above its high-water mark."""
        if not self._write_paused:
            return
        if self.lost.done():
            raise ConnectionLostError("connection lost", close_code=1006)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._drain_waiters:
                self._drain_waiters.remove(waiter)

    def _wake(self, exc: BaseException | None) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)

    def pause_reading(self) -> None:
        transport = self.transport
        if not self.reading_paused and transport is not None:
            self.reading_paused = True
            if not transport.is_closing():
                transport.pause_reading()

    def resume_reading(self) -> None:
        transport = self.transport
        if self.reading_paused and transport is not None:
            self.reading_paused = False
            if not transport.is_closing():
                transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def tls_context(secure: bool, ssl: _ssl.SSLContext | None) -> _ssl.SSLContext | None:
    """The context for ``wss://`` (the system's default unless one is given); None for ws."""
    if not secure:
        return None
    return ssl if ssl is not None else _ssl.create_default_context()


async def open_link(link: Link, host: str, port: int, *, secure: bool,
                    ssl: _ssl.SSLContext | None, timeout: float | None) -> Link:
    """Connect ``link`` to ``host``:``port``; errors say which address and why.

    Raises :func:`~hyco_proto.errors.connect_failure`'s error (``TimeoutError``,
    ``ConnectionRefusedError``, else ``ConnectionError``) naming the address and the cause.
    """
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(
            loop.create_connection(lambda: link, host, port, ssl=tls_context(secure, ssl)),
            timeout)
    except asyncio.TimeoutError:
        raise connect_failure(TimeoutError(), host=host, port=port, secure=secure,
                              timeout=timeout) from None
    except OSError as exc:
        raise connect_failure(exc, host=host, port=port, secure=secure,
                              timeout=timeout) from exc
    return link
