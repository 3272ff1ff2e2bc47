"""One TCP (or TLS) connection on asyncio, handing its bytes to whoever owns it now.

A ``Link`` is an ``asyncio.BufferedProtocol`` with a replaceable ``receiver``: the listener
driver while a rendezvous handshake runs, then the socket it is handed over to. It also carries
what every owner needs: write-buffer backpressure (``drain``), pausing reads, and a ``lost``
future.

Reads go into one buffer per thread, shared by every link on that thread's loop: a read is
handed on (and copied or parsed) before the callback returns, so no link needs the buffer
after that, and no per-read ``bytes`` of the transport's 256 KiB read size is allocated (each
one costs glibc an ``mmap`` / ``mremap`` / ``munmap`` and fresh pages).
"""

from __future__ import annotations

import asyncio
import os
import ssl as _ssl
import threading
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

from ...errors import ConnectionLostError, connect_failure
from . import lean

__all__ = ["DEFAULT_WRITE_LIMIT", "READ_SIZE", "Link", "Receiver", "open_link", "tls_context"]

#: Transport write buffer size above which senders wait.
DEFAULT_WRITE_LIMIT = 256 * 1024
#: Bytes read at most per read (the size of each thread's shared read buffer).
READ_SIZE = 256 * 1024  # what asyncio reads at most per call, too
# write_all: chunks under _SMALL bytes are joined with what follows, whole when it is at most
# _JOIN bytes (one copy costs less than a second send: measured at 100 KiB, 43 -> 37 us per
# echo), else with its first _HEAD bytes only.
_SMALL = 1024
_JOIN = 256 * 1024
_HEAD = 16 * 1024
# Several chunks in one system call where there is writev (POSIX), at most IOV_MAX of them.
_writev = getattr(os, "writev", None)
try:
    _IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024)
except (AttributeError, ValueError, OSError):  # no sysconf, or no such name here
    _IOV_MAX = 16  # the least POSIX allows


class Receiver(Protocol):
    """Who gets a link's bytes. A receiver may also define ``view_received(view)``, which then
    gets each read as a ``memoryview`` valid only during the call (the buffer is shared)
    instead of ``data_received`` with a ``bytes`` copy."""

    def data_received(self, data: bytes) -> None: ...

    def eof_received(self) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


_local = threading.local()


def _read_buffer() -> memoryview:
    """This thread's shared read buffer."""
    view: memoryview | None = getattr(_local, "view", None)
    if view is None:
        view = _local.view = memoryview(bytearray(READ_SIZE))
    return view


class Link(asyncio.BufferedProtocol):
    """The transport's callbacks, forwarded to ``receiver``; writes and flow control."""

    def __init__(self, receiver: Receiver | None = None, *,
                 write_limit: int = DEFAULT_WRITE_LIMIT) -> None:
        self._buffer = _read_buffer()
        self._receiver: Receiver | None = None
        self._deliver: Callable[[memoryview], None] = self._as_bytes
        self.receiver = receiver
        self.write_limit = write_limit
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reading_paused = False
        #: The transport's write buffer is above its high-water mark (``drain`` waits).
        self.write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        # Direct writes (see write): the socket's descriptor for a plain TCP transport, -1
        # otherwise or once the connection is lost. _fd is it while a write may go straight
        # to the socket with nothing asked: the transport is a lean.LinkTransport (which sets
        # _fd to -1 when it closes), not closing, and its write buffer is known to be empty;
        # else -1 (asked again at the next write).
        self._sock_fd = -1
        self._fd = -1
        self._lean = False

    @property
    def receiver(self) -> Receiver | None:
        """Who gets the bytes now (a receiver with ``view_received`` gets views)."""
        return self._receiver

    @receiver.setter
    def receiver(self, receiver: Receiver | None) -> None:
        self._receiver = receiver
        direct: Callable[[memoryview], None] | None = getattr(receiver, "view_received", None)
        self._deliver = direct if direct is not None else self._as_bytes

    # -- asyncio callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Duck-typed: other loops' transports (uvloop's) have the asyncio.Transport methods
        # without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=self.write_limit, low=self.write_limit // 4)
        info = getattr(transport, "get_extra_info", None)  # a transport may lack extras
        if (os.name == "posix" and info is not None and info("socket") is not None
                and info("ssl_object") is None):
            self._sock_fd = info("socket").fileno()
            self._lean = isinstance(transport, lean.LinkTransport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._deliver(self._buffer[:nbytes])

    def _as_bytes(self, view: memoryview) -> None:
        if self._receiver is not None:
            self._receiver.data_received(bytes(view))

    def eof_received(self) -> bool | None:
        if self.receiver is not None:
            self.receiver.eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        # The transport closes the socket after this call: its number may then be reused.
        self._sock_fd = self._fd = -1
        if not self.lost.done():
            self.lost.set_result(None)
        self._wake(exc or ConnectionLostError("connection lost", close_code=1006))
        if self.receiver is not None:
            self.receiver.connection_lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake(None)

    # -- the owner's side ------------------------------------------------------------------

    def write(self, chunk: bytes) -> None:
        """Write ``chunk``; ``b""`` closes the connection (after what was written).

        While the transport's write buffer is empty, ``chunk`` goes straight to the socket
        (``os.write``: the send the transport would make, without its Python layers); what the
        socket does not take now, and everything after it until the buffer is empty again,
        goes through the transport, so the order is kept."""
        fd = self._fd
        if fd < 0 or not chunk:  # (else the common case: nothing to ask, see __init__)
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            if not chunk:
                self._fd = -1
                transport.close()
                return
            fd = self._direct_fd(transport)
            if fd < 0:
                transport.write(chunk)
                return
        try:
            sent = os.write(fd, chunk)
        except OSError:  # EAGAIN, or an error the transport meets again and reports
            sent = 0
        if sent != len(chunk):
            self.write_rest(chunk, sent)

    def _direct_fd(self, transport: asyncio.Transport) -> int:
        """The socket's descriptor when a write may go straight to it now (the transport's
        buffer is empty), else -1; kept in ``_fd`` on the lean transport (see __init__)."""
        fd = self._fd
        if fd < 0 and self._sock_fd >= 0 and not transport.get_write_buffer_size():
            fd = self._sock_fd
            if self._lean:
                self._fd = fd
        return fd

    def write_rest(self, chunk: bytes, sent: int) -> None:
        """After a direct write of ``chunk`` that the socket took ``sent`` bytes of (maybe
        none): the rest goes through the transport, and later writes behind it."""
        self._fd = -1
        transport = self.transport
        if transport is not None:
            transport.write(memoryview(chunk)[sent:] if sent else chunk)

    def write_all(self, chunks: list[bytes]) -> None:
        """Write ``chunks`` in order (``b""`` closes). Up to ``_JOIN`` bytes in all, while the
        transport's buffer is empty, they go to the socket in one ``writev`` (a frame header
        and its payload in one send, neither copied); what the socket does not take goes
        through the transport, in order. Otherwise a small chunk (a frame header) goes out with
        the start of the big one after it, so a large frame does not begin with a header-sized
        TCP segment and the reader's extra wake-up; the big chunk's rest is written as a view
        of it, not copied (and the reader starts on that start while the rest is written: 1 MiB
        echo, server CPU per round trip 430 us this way, 520 in one writev)."""
        if len(chunks) == 1:
            self.write(chunks[0])
            return
        if self._sock_fd >= 0:
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            if (_writev is not None and len(chunks) <= _IOV_MAX and all(chunks)
                    and sum(map(len, chunks)) <= _JOIN):
                fd = self._direct_fd(transport)
                if fd >= 0:
                    self._writev(fd, transport, chunks)
                    return
        small = b""
        for chunk in chunks:
            size = len(chunk)
            if 0 < size < _SMALL:
                small += chunk
                continue
            if small:
                if size > _JOIN:
                    self.write(small + chunk[:_HEAD])
                    chunk = memoryview(chunk)[_HEAD:]  # type: ignore[assignment]
                elif size:
                    chunk = small + chunk
                else:
                    self.write(small)
                small = b""
            self.write(chunk)
        if small:
            self.write(small)

    def _writev(self, fd: int, transport: asyncio.Transport, chunks: list[bytes]) -> None:
        try:
            sent = _writev(fd, chunks)  # type: ignore[misc]
        except OSError:  # EAGAIN, or an error the transport meets again below and reports
            sent = 0
        for chunk in chunks:
            size = len(chunk)
            if sent >= size:
                sent -= size
                continue
            self._fd = -1  # the rest waits in the transport: later writes go behind it
            transport.write(memoryview(chunk)[sent:] if sent else chunk)
            sent = 0

    async def drain(self) -> None:
        """Wait while the write buffer is above its high-water mark."""
        if not self.write_paused:
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
        self._fd = -1
        if self.transport is not None:
            self.transport.abort()


def tls_context(secure: bool, ssl: _ssl.SSLContext | None) -> _ssl.SSLContext | None:
    """The context for ``wss://`` (the system's default unless one is given); None for ws."""
    if not secure:
        return None
    return ssl if ssl is not None else _ssl.create_default_context()


async def open_link(link: Link, host: str, port: int, *, secure: bool,
                    ssl: _ssl.SSLContext | None, timeout: float | None) -> Link:
    """Connect ``link`` to ``host``:``port``; errors say which address and why. Plain TCP on
    a selector loop runs on the lean transport (:mod:`.lean`), else on asyncio's.

    Raises :func:`~hyco_proto.errors.connect_failure`'s error (``TimeoutError``,
    ``ConnectionRefusedError``, else ``ConnectionError``) naming the address and the cause.
    """
    loop = asyncio.get_running_loop()
    opening: Awaitable[object]
    if lean.applies(loop, secure):
        opening = lean.connect(loop, link, host, port)
    else:
        opening = loop.create_connection(lambda: link, host, port, ssl=tls_context(secure, ssl))
    try:
        await asyncio.wait_for(opening, timeout)
    except asyncio.TimeoutError:
        raise connect_failure(TimeoutError(), host=host, port=port, secure=secure,
                              timeout=timeout) from None
    except OSError as exc:
        raise connect_failure(exc, host=host, port=port, secure=secure,
                              timeout=timeout) from exc
    return link
