"""Plain-TCP connections of the relay service without asyncio's transports.

asyncio's selector transports cost about 45 µs of CPU per accepted connection on top of the
kernel's own work (an accept task and future per connection, several ``call_soon`` hops, a
``getpeername``, weak references; measured with a bare accept / request / reply / close server,
117 vs 73 µs per connection). A relayed connection is two accepted connections, so the service
serves plain TCP on the event loop's readiness callbacks (``add_reader`` / ``add_writer``) with
the small transport below. It keeps the subset of ``asyncio.Transport`` the service uses, with
the same semantics: reads go to a (buffered) protocol, writes go straight to the socket and what
it refuses is buffered, with high/low-water ``pause_writing`` / ``resume_writing``; ``close``
flushes first; ``connection_lost`` is always called, once, from its own loop callback.

Readiness comes from a :class:`Poller`: on Linux new connections sit in an epoll set of the
service's own that the loop watches as one reader (:class:`EpollPoller`: cheap to join and
leave), and a connection that keeps talking moves to the loop's ``add_reader`` /
``add_writer`` (:class:`LoopPoller`: cheaper per message), which serve everything elsewhere.

Used only on a selector event loop (the stdlib's on POSIX); TLS ports, Windows' proactor loop and
other loops (uvloop's transports are already in C) keep asyncio's transports.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import errno
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any, cast

__all__ = ["ACCEPT_RETRY_DELAY", "READ", "WRITE", "EpollPoller", "LoopPoller", "Poller",
           "SocketListener", "SocketTransport", "bind_sockets", "make_poller"]

#: Seconds a listening socket rests after the process ran out of descriptors (or memory) in
#: ``accept()`` (asyncio waits the same second), instead of being woken again at once.
ACCEPT_RETRY_DELAY = 1.0
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_NOT_NOW = (BlockingIOError, InterruptedError)
# Linux copies TCP_NODELAY from the listening socket to the sockets it accepts (tcp(7)
# options are cloned with the socket); elsewhere each accepted socket gets it.
_NODELAY_INHERITED = sys.platform == "linux"


#: Interest flags of :meth:`Poller.update`.
READ, WRITE = 1, 2
#: Reads after which a connection moves to its poller's ``settle`` place (EpollPoller).
SETTLE_AFTER = 16


class Poller:
    """Tells the service's transports when their sockets are ready.

    ``update(fd, transport, events)`` sets what ``transport`` waits for on ``fd`` (``READ``,
    ``WRITE``, both, or 0 for nothing); the poller calls its ``_on_readable`` /
    ``_on_writable`` when the socket is ready. ``update`` may raise (``OSError``: the kernel
    refused; ``ValueError`` / ``RuntimeError``: the poller or loop is closed), except for 0,
    which never does. ``close`` aborts the transports it still watches.
    :func:`make_poller` picks the implementation.
    """

    def update(self, fd: int, transport: SocketTransport, events: int) -> None:
        raise NotImplementedError

    def settle(self, fd: int, transport: SocketTransport, events: int) -> Poller:
        """Where a connection that keeps talking is watched from now on (it moves there)."""
        return self

    def close(self) -> None:
        """Stop watching everything."""


class LoopPoller(Poller):
    """The event loop's own ``add_reader`` / ``add_writer``: one callback per ready socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._watched: dict[int, tuple[SocketTransport, int]] = {}

    def update(self, fd: int, transport: SocketTransport, events: int) -> None:
        entry = self._watched.get(fd)
        old = entry[1] if entry is not None else 0
        if events == old:
            return
        loop = self._loop
        if old & READ and not events & READ:
            loop.remove_reader(fd)
        if old & WRITE and not events & WRITE:
            loop.remove_writer(fd)
        if not events:
            del self._watched[fd]
            return
        # What is being added may fail: the entry then says what is registered.
        self._watched[fd] = (transport, old & events)
        if events & READ and not old & READ:
            # A transport's pump, when it has one (SocketTransport.pump_with), reads instead.
            loop.add_reader(fd, getattr(transport, "_pump", None) or transport._on_readable)
        if events & WRITE and not old & WRITE:
            loop.add_writer(fd, transport._on_writable)
        self._watched[fd] = (transport, events)

    def close(self) -> None:
        for transport, _ in list(self._watched.values()):
            transport.abort()  # unregisters itself
        self._watched.clear()


class EpollPoller(Poller):
    """New connections in an epoll set of the service's own, which the event loop watches as
    one reader (epoll sets nest): registering a socket is one ``epoll_ctl`` and a dict entry,
    and a ready socket is one method call, where the loop's ``add_reader`` costs a selector
    key, a ``Handle`` and a lookup that fails first, and each ready callback a loop step.

    Each wake-up costs one more ``epoll_wait`` (the nested set's), though, which a connection
    that keeps talking pays per message: after ``SETTLE_AFTER`` reads a connection moves to
    the loop's own callbacks (``settle``). Measured (medians of interleaved rounds): rendezvous
    (two short connections) 260 -> 220 µs relay CPU with the nested set; a 256 B ping-pong
    through a relayed pair 28.7 µs of relay CPU per round trip in the nested set, 26.7 with
    the loop's callbacks."""

    #: Events taken per wake-up (more stay ready: the outer loop wakes us again).
    MAX_EVENTS = 256

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        import select

        self._loop = loop
        self._epoll = select.epoll()
        self._in, self._out = select.EPOLLIN, select.EPOLLOUT
        # An error or hang-up wakes both directions: the read or write then meets it.
        self._in_ready = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP
        self._out_ready = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP
        self._watched: dict[int, tuple[SocketTransport, int]] = {}
        self._settled = LoopPoller(loop)
        loop.add_reader(self._epoll.fileno(), self._dispatch)

    def update(self, fd: int, transport: SocketTransport, events: int) -> None:
        watched = self._watched
        old = watched.get(fd)
        if not events:
            if old is not None:
                del watched[fd]
                # Gone with its socket already, or the poller is closed: nothing to undo.
                with contextlib.suppress(OSError, ValueError):
                    self._epoll.unregister(fd)
            return
        mask = (self._in if events & READ else 0) | (self._out if events & WRITE else 0)
        if old is None:
            try:
                self._epoll.register(fd, mask)
            except FileExistsError:  # the number of a socket closed while still registered
                self._epoll.modify(fd, mask)
        elif old[1] != events:
            try:
                self._epoll.modify(fd, mask)
            except FileNotFoundError:  # its socket was closed and the number reused
                self._epoll.register(fd, mask)
        else:
            return
        watched[fd] = (transport, events)  # only once the kernel has taken it

    def settle(self, fd: int, transport: SocketTransport, events: int) -> Poller:
        self.update(fd, transport, 0)
        self._settled.update(fd, transport, events)
        return self._settled

    def close(self) -> None:
        for transport, _ in list(self._watched.values()):
            transport.abort()  # unregisters itself
        self._watched.clear()
        if not self._epoll.closed:
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
        self._settled.close()

    def _dispatch(self) -> None:
        watched = self._watched
        try:
            ready = self._epoll.poll(0, self.MAX_EVENTS)
        except (OSError, ValueError):  # closed meanwhile (ValueError: a closed epoll object)
            return
        for fd, flags in ready:
            entry = watched.get(fd)
            if entry is None:  # stopped watching since the poll
                continue
            transport = entry[0]
            try:
                if flags & self._in_ready and entry[1] & READ:
                    transport._on_readable()
                    entry = watched.get(fd)  # the read may have changed what it waits for
                    if entry is None or entry[0] is not transport:
                        continue
                if flags & self._out_ready and entry[1] & WRITE:
                    transport._on_writable()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # a transport's own bug: the others still run
                self._loop.call_exception_handler({
                    "message": "relay service socket callback failed", "exception": exc,
                    "transport": transport})


def make_poller(loop: asyncio.AbstractEventLoop) -> Poller:
    """An :class:`EpollPoller` where there is epoll (Linux), else the loop's callbacks."""
    import select

    return EpollPoller(loop) if hasattr(select, "epoll") else LoopPoller(loop)


class SocketTransport:
    """One accepted, non-blocking TCP socket driven by the loop's readiness callbacks.

    Duck-types the part of :class:`asyncio.Transport` the service uses. ``protocol`` is a
    :class:`asyncio.BufferedProtocol` (reads land in its ``get_buffer``) or a plain
    :class:`asyncio.Protocol` (``data_received`` with ``bytes``); ``connection_made`` is called
    before this returns (and with ``read_now``, what the socket already holds is read too).
    """

    #: The service may hand ``write`` a view of a buffer it reuses: whatever is not sent at
    #: once is copied here (one copy), never kept as the view.
    copies_writes = True
    #: The read callback the loop calls instead of ``_on_readable`` (``pump_with``).
    _pump: Callable[[], None] | None = None

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: _socket.socket,
                 protocol: asyncio.BaseProtocol, peername: Any = None,
                 read_now: bool = False, poller: Poller | None = None) -> None:
        self._loop = loop
        self._poller = poller if poller is not None else LoopPoller(loop)
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol: Any = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        self._peername = peername
        self._buffer = bytearray()  # what the socket has not taken yet
        #: The socket's number while a write may go straight to it (nothing queued, not
        #: closing, no write_eof): a relayed pair's pump sends there itself. Else -1.
        self.write_fd = self._fd
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._writing_paused = False  # the protocol was told pause_writing
        self._reading = False  # we watch for input
        self._writing = False  # we watch for room to write (the buffer is not empty)
        self._reading_paused = False
        self._eof = False
        self._eof_written = 0  # 1: write_eof called, 2: the socket's write side is shut
        self._closing = False
        self._lost = False  # connection_lost is scheduled (or done)
        self._reads = 0  # until SETTLE_AFTER
        self._pump_make: Callable[[], Callable[[], None] | None] | None = None  # pump_with
        try:
            protocol.connection_made(self)  # type: ignore[arg-type]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # a bug in the protocol: this connection ends, it is told
            self._fatal(exc, "protocol.connection_made() failed")
            return
        if not self._closing and not self._reading_paused:
            self._reading = True
            self._watch()
            if read_now and self._reading:
                # A client speaks first and at once (its request head usually arrives with
                # the handshake's last ACK): read it now rather than after one more loop turn.
                self._on_readable()

    # -- the asyncio.Transport subset ------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            if self._peername is None:
                try:
                    self._peername = self._sock.getpeername()
                except OSError:
                    return default
            return self._peername
        if name == "sockname":
            try:
                return self._sock.getsockname()
            except OSError:
                return default
        if name == "socket":
            return self._sock
        return default  # no "ssl_object": plain TCP only

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return self._reading

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[no-any-return]

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        high = 64 * 1024 if high is None else high
        low = high // 4 if low is None else low
        if not 0 <= low <= high:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_writing()

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def pause_reading(self) -> None:
        if self._closing or self._reading_paused:
            return
        self._reading_paused = True
        self._stop_reading()

    def resume_reading(self) -> None:
        if self._closing or not self._reading_paused:
            return
        self._reading_paused = False
        if not self._eof and not self._reading:
            self._reading = True
            self._watch()

    def can_write_eof(self) -> bool:
        return True

    def pump_with(self, make: Callable[[], Callable[[], None] | None] | None) -> None:
        """Once this connection has settled (``SETTLE_AFTER`` reads; at once if it has),
        ``make()`` may give a pump: then the loop calls ``pump()`` when the socket is readable,
        instead of this transport's own read and its protocol's ``get_buffer`` /
        ``buffer_updated`` (``make`` None, or ``make()`` None: back to those). The pump reads
        the socket itself and does what ``_on_readable`` would: an exception of the read goes
        to ``read_failed``, end of stream to ``read_eof``. (A relayed pair's hot path: the
        relay service's read, forward and write in one Python call; made only for a pair that
        keeps talking.)"""
        self._pump_make = make
        if self._reads >= SETTLE_AFTER and not self._lost:
            self._use_pump()

    def read_failed(self, exc: BaseException, what: str = "read failed") -> None:
        """A pump's read (or what it did with the bytes) failed: the connection ends."""
        self._fatal(exc, what)

    def read_eof(self) -> None:
        """A pump's read met the end of the stream."""
        self._on_eof()

    def write_eof(self) -> None:
        """Shut the socket's write side (the peer reads EOF) once the buffered bytes are sent;
        reading goes on."""
        if self._closing or self._eof_written:
            return
        self._eof_written = 1
        self.write_fd = -1
        if not self._buffer:
            self._shut_write()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send now what the socket takes; buffer (a copy of) the rest, in order."""
        if self._eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._lost or not data:
            return
        if not self._buffer:
            try:
                sent = self._sock.send(data)
            except _NOT_NOW:
                sent = 0
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal(exc, "write failed")
                return
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
        self._queue(data)

    def write_later(self, data: bytes | bytearray | memoryview) -> None:
        """``write`` without trying the socket first: it refused these bytes a moment ago (a
        pump's partial send), or bytes are queued ahead of them. A copy is queued."""
        if self._eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._lost or not data:
            return
        self._queue(data)

    def _queue(self, data: bytes | bytearray | memoryview) -> None:
        """Queue (a copy of) ``data`` behind what is queued; the first bytes queued make the
        socket watched for writing."""
        if not self._buffer:
            self._writing = True
            self.write_fd = -1
            if not self._watch():  # the poller refused it: the connection is closed
                return
        self._buffer += data
        self._maybe_pause_writing()

    def close(self) -> None:
        """Stop reading; close the socket once the buffered bytes are sent."""
        if self._closing:
            return
        self._closing = True
        self.write_fd = -1
        self._stop_reading()
        if not self._buffer:
            self._schedule_lost(None)

    def abort(self) -> None:
        """Close at once, dropping what is buffered."""
        self._force_close(None)

    # -- loop callbacks --------------------------------------------------------------------

    def _on_readable(self) -> None:
        if self._closing:  # a readiness report that crossed a close
            return
        protocol = self._protocol
        try:
            if self._buffered:
                nbytes = self._sock.recv_into(protocol.get_buffer(-1))
                data = None
            else:
                data = self._sock.recv(65536)
                nbytes = len(data)
        except _NOT_NOW:
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal(exc, "read failed")
            return
        if not nbytes:
            self._on_eof()
            return
        try:
            if data is None:
                protocol.buffer_updated(nbytes)
            else:
                protocol.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal(exc, "protocol failed on received data")
            return
        reads = self._reads = self._reads + 1
        if reads == SETTLE_AFTER and not self._closing:
            # It keeps talking: watch it where that costs least per message.
            try:
                self._poller = self._poller.settle(self._fd, self, self._interest())
            except (OSError, ValueError, RuntimeError) as exc:
                self._force_close(exc)
                return
            if self._pump_make is not None:
                self._use_pump()

    def _on_eof(self) -> None:
        self._eof = True
        self._stop_reading()
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal(exc, "protocol.eof_received() failed")
            return
        if not keep_open:
            self.close()

    def _on_writable(self) -> None:
        buffer = self._buffer
        try:
            sent = self._sock.send(buffer)
        except _NOT_NOW:
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal(exc, "write failed")
            return
        del buffer[:sent]  # a bytearray drops its head without moving the rest
        self._maybe_resume_writing()
        if not buffer:
            self._writing = False
            self._watch()
            if self._closing:
                self._schedule_lost(None)
            elif self._eof_written == 1:
                self._shut_write()
            elif not self._eof_written:
                self.write_fd = self._fd

    # -- internals -------------------------------------------------------------------------

    def _shut_write(self) -> None:
        self._eof_written = 2
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:  # the peer is gone already: this connection ends
            self._fatal(exc, "shutdown failed")

    def _use_pump(self) -> None:
        """Read with the pump ``_pump_make`` gives from now on (the poller registers the new
        callback)."""
        make = self._pump_make
        pump = make() if make is not None else None
        if pump is self._pump:
            return
        self._pump = pump
        if self._reading:  # registered with the old callback: again with the new one
            self._reading = False
            if self._watch():
                self._reading = True
                self._watch()

    def _interest(self) -> int:
        return (READ if self._reading else 0) | (WRITE if self._writing else 0)

    def _watch(self) -> bool:
        """Tell the poller what this connection waits for now; if it cannot, the connection
        ends (``connection_lost`` with the reason) and this returns False."""
        try:
            self._poller.update(self._fd, self, self._interest())
        except (OSError, ValueError, RuntimeError) as exc:  # refused, or poller / loop closed
            self._force_close(exc)
            return False
        return True

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._watch()

    def _maybe_pause_writing(self) -> None:
        if not self._writing_paused and len(self._buffer) > self._high:
            self._writing_paused = True
            self._call_protocol("pause_writing")

    def _maybe_resume_writing(self) -> None:
        if self._writing_paused and len(self._buffer) <= self._low:
            self._writing_paused = False
            self._call_protocol("resume_writing")

    def _call_protocol(self, name: str) -> None:
        try:
            getattr(self._protocol, name)()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                "message": f"protocol.{name}() failed", "exception": exc,
                "transport": self, "protocol": self._protocol})

    def _fatal(self, exc: BaseException, what: str) -> None:
        # Connection errors (reset, broken pipe) end this connection quietly, as in asyncio;
        # anything else is a bug worth seeing.
        if not isinstance(exc, OSError):
            self._loop.call_exception_handler({
                "message": f"{what} on {self._peername}", "exception": exc,
                "transport": self, "protocol": self._protocol})
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._buffer.clear()
        self._closing = True
        self.write_fd = -1
        if self._reading or self._writing:
            self._reading = self._writing = False
            self._poller.update(self._fd, self, 0)
        self._schedule_lost(exc)

    def _schedule_lost(self, exc: BaseException | None) -> None:
        if not self._lost:
            self._lost = True
            self.write_fd = -1
            self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: BaseException | None) -> None:
        self._pump = self._pump_make = None  # (they hold this transport: no cycle left)
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._sock.close()


def bind_sockets(infos: Sequence[tuple[Any, ...]], backlog: int) -> list[socket.socket]:
    """Listening, non-blocking sockets for every address in ``infos``, the answer of
    ``getaddrinfo(host or None, port, type=SOCK_STREAM, flags=AI_PASSIVE)`` (``await
    loop.getaddrinfo(...)`` does not block the loop), bound as ``loop.create_server`` binds
    them: ``SO_REUSEADDR``, IPv6 sockets IPv6-only, except that with port 0 every address gets
    the port the first one got. Raises ``OSError`` naming the address that could not be
    bound."""
    sockets: list[socket.socket] = []
    try:
        chosen = 0  # the port the first socket got, when any port would do (port 0)
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            if chosen and address[1] == 0:  # every address on that same port, not one each
                address = (address[0], chosen, *address[2:])
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family in (socket.AF_INET, socket.AF_INET6):  # as asyncio does: no Nagle
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPV6_V6ONLY"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(exc.errno, f"error while attempting to bind on address "
                              f"{address!r}: {(exc.strerror or str(exc)).lower()}") from None
            sock.listen(backlog)
            sock.setblocking(False)
            if not chosen and address[1] == 0:
                chosen = sock.getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class SocketListener:
    """Accepts on ``sockets`` and serves each connection with ``SocketTransport(protocol)``
    (``factory()`` makes the protocol). Has the part of :class:`asyncio.Server` the service
    uses: ``sockets``, ``is_serving``, ``close``, ``wait_closed``.

    ``on_error(exc)`` hears an ``accept()`` that failed for want of descriptors or memory; the
    listening socket then rests ``ACCEPT_RETRY_DELAY`` seconds. Any other ``accept()`` failure
    goes to the loop's exception handler, as asyncio's own servers report it. ``transport``:
    the class serving each connection (a ``SocketTransport`` or a subclass).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sockets: list[socket.socket],
                 factory: Callable[[], asyncio.BaseProtocol], batch: int,
                 on_error: Callable[[OSError], None], poller: Poller | None = None,
                 transport: type[SocketTransport] | None = None) -> None:
        self._loop = loop
        self._transport = transport or SocketTransport
        self._poller = poller if poller is not None else LoopPoller(loop)
        self.sockets = sockets
        self._factory = factory
        self._batch = batch
        self._on_error = on_error
        self._serving = True
        self._resting: dict[int, asyncio.TimerHandle] = {}
        # Per listening socket, its C-level accept and the family and type of what it accepts:
        # socket.socket's Python layer (its __init__, close and reference counting of
        # makefile() streams) is not needed, and its family / type properties make an enum
        # member on every read (1 µs per wake-up, measured).
        self._accepting = {sock: (cast(Any, sock)._accept, int(sock.family), int(sock.type))
                           for sock in sockets}
        for sock in sockets:
            loop.add_reader(sock.fileno(), self._on_acceptable, sock)

    def is_serving(self) -> bool:
        return self._serving

    def close(self) -> None:
        if not self._serving:
            return
        self._serving = False
        for handle in self._resting.values():
            handle.cancel()
        self._resting.clear()
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    async def wait_closed(self) -> None:
        """Nothing to wait for: the listening sockets are closed by ``close``."""

    def _on_acceptable(self, sock: socket.socket) -> None:
        loop = self._loop
        accept, family, kind = self._accepting[sock]
        poller = self._poller
        for _ in range(self._batch):  # a few per wake-up: other sockets get their turn too
            try:
                fd, peer = accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                # Out of descriptors (or memory): rest instead of being woken again at once
                # for the same pending connection; other errors end this wake-up only.
                if exc.errno not in _OUT_OF_RESOURCES:
                    loop.call_exception_handler({
                        "message": f"accept() failed on {sock.getsockname()}", "exception": exc,
                        "socket": sock})
                    return
                if self._serving:
                    fd = sock.fileno()
                    loop.remove_reader(fd)
                    self._resting[fd] = loop.call_later(ACCEPT_RETRY_DELAY, self._wake, sock)
                self._on_error(exc)
                return
            conn = _socket.socket(family, kind, 0, fd)
            conn.setblocking(False)
            if not _NODELAY_INHERITED and family != socket.AF_UNIX:
                try:  # noqa: SIM105 (cheaper than suppress, per connection)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
            try:
                protocol = self._factory()
            except Exception as exc:  # a bug making the protocol: drop this connection only
                conn.close()
                loop.call_exception_handler({
                    "message": f"serving a connection from {peer} failed", "exception": exc})
                continue
            # (A protocol failing in connection_made ends its own connection: SocketTransport.)
            self._transport(loop, conn, protocol, peer, read_now=True, poller=poller)

    def _wake(self, sock: socket.socket) -> None:
        self._resting.pop(sock.fileno(), None)
        if self._serving:
            self._loop.add_reader(sock.fileno(), self._on_acceptable, sock)
