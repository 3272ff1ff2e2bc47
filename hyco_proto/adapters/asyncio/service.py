"""The local relay service on asyncio: real TCP (or TLS) sockets around :class:`RelayService`.

One :class:`asyncio.BufferedProtocol` per accepted connection feeds the sans-IO service core
(``connection_made`` / ``forward_into`` / ``receive_eof`` / ``connection_lost``) and writes what
``data_to_send()`` returns (``b""``: close that connection once its buffer has flushed). Plain
TCP runs on the service's own lean transport (:mod:`.sockets`, ``own_sockets``), TLS on
asyncio's. A single timer follows ``service.next_deadline()``, asked after every input but
plain relayed data, which ``forward_into`` hands over directly having changed no deadline (a
close passing through a leg does set that pair's closing deadline: it takes the usual way); an
armed timer that fires no later is kept, and one that fires early finds nothing due and
re-arms. Two inputs skip the question: a new connection adds only its own deadline
(``connection_deadline``, compared with the armed timer), and the loss of a connection whose
end the core had already handled (``connection_lost`` returns True: a relayed leg after its
EOF) leaves nothing to do; a rendezvous asks the core 4 times instead of 8. The core works
in epoch seconds (token expiry), so the clock is ``time.time()``, not ``loop.time()``.

Reads: every connection reads into one buffer owned by the server (``READ_BUFFER_SIZE``, after
``FORWARD_HEADROOM`` bytes of scratch space): the loop handles one socket at a time and
``buffer_updated`` consumes the bytes before the next read, so an idle connection holds no read
buffer and the hot path allocates nothing per read. The buffer is lent to the core
(``RelayService.forward_into``): a relayed leg unmasks its frames in place there and hands over
(or queues) views of it for the other leg. Those views are written before the next read,
straight to the socket when nothing is queued ahead of them (the own transport's ``write``;
``os.write`` under asyncio's transports); only what the socket does not take is copied. Everything
else the core copies as before.

Backpressure: the core forwards one leg's frames to the other leg. When a connection's
write buffer goes over the high-water mark, the connections whose input produced that output
(the other leg of its relayed pair) stop being read until the buffer drains below the low-water
mark. The adapter learns who writes to whom by watching which connection's input produced output
for which other relayed connection, so it needs no private core state.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl as _ssl
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar, cast

from ...frames import FORWARD_HEADROOM
from ...sender import REJECTED_BY_HEADER
from ...service.config import ServiceConfig
from ...service.router import ConnectionKind, Lane, RelayService, RelayStep
from ...service.webpubsub_events import OutboundCall
from ...uris import is_ip_address
from .http import relayed_request as http_request  # a plain HTTP client without a token
from .sockets import (
    ACCEPT_RETRY_DELAY,
    Poller,
    SocketListener,
    SocketTransport,
    bind_sockets,
    make_poller,
)

T = TypeVar("T")

__all__ = [
    "DEFAULT_WRITE_HIGH_WATER",
    "READ_BUFFER_SIZE",
    "BindError",
    "RelayServiceServer",
    "RelayServiceThread",
]

#: Write buffer size above which the writing leg's peer stops being read (resumed below a
#: quarter of it). Measured with ``python -m bench.relay_settings`` (1 MiB and 64 B messages
#: through one pair, interleaved rounds): 64 KiB to 4 MiB made no consistent difference.
DEFAULT_WRITE_HIGH_WATER = 1 << 20
#: Bytes read from a socket at once (asyncio's own reads are 256 KiB). The one buffer is shared
#: by all connections, and bigger reads mean fewer syscalls and loop turns per MiB relayed:
#: ``bench.relay_settings`` on an idle machine, 1 MiB messages, 256 KiB / 1 / 2 / 4 MiB reads:
#: about 1,700 / 2,700 / 3,100 / 3,400 MB/s (and 4 MiB was also the best at 64 B).
READ_BUFFER_SIZE = 4 << 20
_RELAY = ConnectionKind.RELAY
#: Sockets are file descriptors (the relay step's system calls: Forwarder.relay).
_POSIX = os.name == "posix"
_CORE = -1  # a "target" id that blocks reading on the core's request (reading_changes)
# A timer whose deadline is already past fires again after at least this long (no busy loop
# if the core ever reports a deadline that handle_timer does not clear).
_MIN_TIMER_DELAY = 0.001
#: Largest answer the service reads from an event handler.
MAX_CALL_ANSWER = 1 << 20


class BindError(OSError):
    """A port of the service could not be bound: says which (``routes``), where and why."""

    def __init__(self, errno: int | None, strerror: str, host: str, port: int,
                 routes: str) -> None:
        super().__init__(errno, strerror)
        self.host, self.port, self.routes = host, port, routes

    def __str__(self) -> str:
        what = "Web PubSub" if self.routes == "webpubsub" else "relay"
        return f"cannot listen on {self.host}:{self.port} ({what} port): {self.strerror}"


def _bound_port(server: asyncio.Server | SocketListener, requested: int, host: str) -> int:
    """The port clients use: that of the socket whose family matches the address ``url``
    shows (asyncio binds each address of a wildcard host to a port of its own with port 0)."""
    sockets = list(server.sockets)
    if not sockets:
        return requested
    family = socket.AF_INET6 if ":" in _shown_host(host) else socket.AF_INET
    for sock in sockets:
        if sock.family == family:
            return int(sock.getsockname()[1])
    return int(sockets[0].getsockname()[1])


async def _resolve(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[Any]:
    """The addresses to listen on, as ``loop.create_server`` finds them: a numeric address or
    the wildcard (``""``) at once, a name through the loop's resolver (it may block, so it
    runs in the loop's executor)."""
    passive = socket.AI_PASSIVE
    try:
        return socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                  flags=passive | socket.AI_NUMERICHOST)
    except socket.gaierror:
        return await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                      flags=passive)


def _shown_host(host: str) -> str:
    """``host`` as clients reach it: a wildcard is shown as loopback, IPv6 in brackets."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]" if ":" in host else host


class _ServiceProtocol(asyncio.BufferedProtocol):
    """One TCP connection of the relay service."""

    #: Served by .sockets.SocketTransport (plain TCP on a selector loop), not asyncio's.
    own_transport = False

    def __init__(self, server: RelayServiceServer, routes: str) -> None:
        self._server = server
        self._routes = routes
        self.transport: asyncio.Transport | None = None
        self.conn_id = -1
        #: Connections whose input wrote to this one (the other leg of a relayed pair).
        self.writers: set[int] = set()
        #: Connections (targets) whose full write buffers keep this one from being read.
        self.blocked_by: set[int] = set()
        self.over_high_water = False
        self.reading_paused = False
        #: Made by _TlsHandshake for a connection already counted (not by the server's factory).
        self._taken_over = False
        #: A relayed leg's hot path, once it relays plainly: the core's lane
        #: (RelayService.lane) and the peer's write.
        self.lane: tuple[Lane, Callable[[memoryview], None]] | None = None
        #: The socket's descriptor for direct writes of lent views: -1 for TLS or off POSIX,
        #: None until the first such write (most connections never relay).
        self.fd: int | None = None

    # -- asyncio callbacks -----------------------------------------------------------------

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # Duck-typed: other loops' transports (uvloop's) have asyncio.Transport's methods
        # without subclassing it.
        self.transport = transport = cast(asyncio.Transport, base)
        self.own_transport = getattr(base, "copies_writes", False)
        server = self._server
        if not self._taken_over:
            server._admitting -= 1
        high = server.write_high_water
        transport.set_write_buffer_limits(high=high, low=high // 4)
        peer = transport.get_extra_info("peername")
        remote = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ("127.0.0.1", 0)
        service = server.service
        conn_id = self.conn_id = service.connection_made(
            time.time(), remote, scheme=server.scheme, service=self._routes)
        server._protocols[conn_id] = self
        # A new connection queues nothing and changes no reading; its own deadline (the
        # request head's) is all it adds: the armed timer is kept if it fires no later.
        server._deadline_added(service.connection_deadline(conn_id))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._server._read_view

    def buffer_updated(self, nbytes: int) -> None:
        server = self._server
        lane = self.lane
        if lane is not None:  # a relayed leg's hot path (RelayService.lane)
            try:
                view = lane[0](time.time(), server._read_buffer, FORWARD_HEADROOM,
                               FORWARD_HEADROOM + nbytes)
            except BaseException:
                self._lane_ended()
                raise
            if view is not None:
                if view:
                    lane[1](view)
                return
            self._lane_ended()  # no longer plain relaying: the usual steps from now on
            return
        # The shared read buffer is lent to the core; _after_input writes or copies its views,
        # also if the core failed half-way (before the next read overwrites them).
        try:
            fast = server.service.forward_into(time.time(), self.conn_id, server._read_buffer,
                                               FORWARD_HEADROOM, FORWARD_HEADROOM + nbytes)
        except BaseException:
            server._after_input(self.conn_id)
            raise
        if fast is None:
            server._after_input(self.conn_id)
            return
        # Plain relayed data: the view goes to the peer and nothing else changed (no other
        # output, deadline or reading change: RelayService.forward_into).
        peer_id, view = fast
        proto = server._protocols.get(peer_id)
        if proto is None:
            return
        if view:
            proto.send(view, self.conn_id)
        if proto.transport is not None and self.conn_id in proto.writers:
            # Its output is watched for flow control now (send: add_writer), so reads may take
            # the lane: the core's shortcut, and the peer's write without send's steps.
            granted = server.service.lane(self.conn_id)
            if granted is not None and granted[1] == peer_id:
                self.lane = (granted[0], proto.transport.write if proto.own_transport
                             else proto.write_lane)
                if self.own_transport and proto.own_transport and _POSIX:
                    # Both on the own sockets: once settled, the loop calls the pump.
                    cast(SocketTransport, self.transport).pump_with(self._make_pump)

    def _make_pump(self) -> Callable[[], None] | None:
        """This leg's pump, made once its transport has settled, while it still has its lane
        (``RelayService.relay_lane``) and its peer is on the own sockets; else None."""
        if self.lane is None:
            return None
        server = self._server
        relayed = server.service.relay_lane(self.conn_id)
        if relayed is None:
            return None
        proto = server._protocols.get(relayed[2])
        if proto is None or proto.transport is None or not proto.own_transport:
            return None
        return self._pump(relayed[0], relayed[1], cast(SocketTransport, proto.transport))

    def _pump(self, step: RelayStep, fed: Lane, peer: SocketTransport) -> Callable[[], None]:
        """The read callback of a relayed leg on the own sockets (``SocketTransport.pump_with``):
        the core's relay step reads the socket, re-frames in place and writes to the peer's
        socket in one call to the forwarder (``RelayService.relay_lane``); the peer's
        ``write_fd`` is -1 while its transport has bytes queued, and the rest comes back. One
        Python call per read; the rare outcomes go to ``_pumped``."""
        transport = cast(SocketTransport, self.transport)
        fd = transport.get_extra_info("socket").fileno()
        buffer = self._server._read_buffer
        start = FORWARD_HEADROOM

        def pump() -> None:
            try:
                got = step(fd, buffer, start, peer.write_fd)
            except (SystemExit, KeyboardInterrupt):
                raise
            except OSError as exc:  # the read failed (the forwarder raises nothing else)
                transport.read_failed(exc)
                return
            except BaseException as exc:
                self._pump_failed(exc)
                return
            if got is not None:
                # Whatever fails here ends this connection, as a failing read callback does;
                # nothing reaches the event loop.
                try:
                    self._pumped(got, fed, peer)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._pump_failed(exc)

        return pump

    def _pump_failed(self, exc: BaseException) -> None:
        """The pump's step, or what followed it, raised: the lane ends (its usual steps) and
        so does the connection, with the error (the first one, if those steps fail too)."""
        transport = cast(SocketTransport, self.transport)
        try:
            self._lane_ended()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as also:  # reported with the first error (its __context__)
            if exc.__context__ is None:
                exc.__context__ = also
        transport.read_failed(exc, "protocol failed on received data")

    def _pumped(self, got: tuple[int, int, int] | bool, fed: Lane,
                peer: SocketTransport) -> None:
        """What the pump's step returned besides "all sent": see ``RelayService.relay_lane``."""
        transport = cast(SocketTransport, self.transport)
        if got is False or got is True:  # not plainly relaying any more; nothing was read
            self.lane = None
            transport.pump_with(None)
            return
        nbytes, begin, stop = got
        if nbytes < 0:  # nothing to read after all
            return
        if not nbytes:
            transport.read_eof()
            return
        view = fed(time.time(), self._server._read_buffer, begin, stop)  # (raises: the pump)
        if view is None:
            self._lane_ended()  # a close or a violation passed: the usual steps from now on
        elif view:
            # What the peer's socket did not take just now, or bytes queued ahead of it: into
            # its transport's buffer (a copy) without asking the socket again.
            peer.write_later(view)

    def _lane_ended(self) -> None:
        """The lane handed back (or failed): reads take the usual way, after the usual steps
        for the read that ended it."""
        self.lane = None
        transport = self.transport
        if self.own_transport and transport is not None:
            cast(SocketTransport, transport).pump_with(None)
        self._server._after_input(self.conn_id)

    def eof_received(self) -> bool | None:
        server = self._server
        server.service.receive_eof(time.time(), self.conn_id)
        server._after_input(self.conn_id)
        # Keep our side open: the core closes the connection (b"") when it is done with it —
        # at once for WebSocket connections, after the response for an HTTP sender that
        # half-closed once its request was sent. TLS cannot half-close (asyncio ignores True).
        return server.ssl is None

    def connection_lost(self, exc: Exception | None) -> None:
        server = self._server
        server._protocols.pop(self.conn_id, None)
        # Quiet: nothing queued, no reading changed, no deadline gained (a relayed leg whose
        # EOF was handled): none of the usual steps to take after it.
        quiet = server.service.connection_lost(time.time(), self.conn_id)
        # Whoever we blocked may read again (and see its own peer's close).
        self.over_high_water = False
        for writer_id in self.writers:
            writer = server._protocols.get(writer_id)
            if writer is not None:
                writer._unblock(self.conn_id)
        if not quiet:
            server._after_input(None)
        if not server._protocols:
            server._all_lost.set()

    def pause_writing(self) -> None:
        self.over_high_water = True
        # The service's own streams (the web view's events) skip updates meanwhile.
        self._server.service.writing_paused(self.conn_id, True)
        for writer_id in self.writers:
            writer = self._server._protocols.get(writer_id)
            if writer is not None:
                writer._block(self.conn_id)

    def resume_writing(self) -> None:
        self.over_high_water = False
        self._server.service.writing_paused(self.conn_id, False)
        for writer_id in self.writers:
            writer = self._server._protocols.get(writer_id)
            if writer is not None:
                writer._unblock(self.conn_id)

    def send(self, data: bytes | memoryview, writer: int | None) -> None:
        """Write what the core produced for this connection; ``writer``: the relayed
        connection whose input it is (that one stops being read while this one is full)."""
        transport = self.transport
        if transport is None:
            return
        if writer is not None and writer not in self.writers:
            self.add_writer(writer)
        if transport.is_closing():
            return
        if type(data) is memoryview:  # a view of the lent read buffer (receive_into)
            self.write_lent(data)
        else:
            transport.write(data)

    def write_lane(self, data: memoryview) -> None:
        """``send`` of a lane's view (its writer is known): nothing once the transport is
        closing (an aborted one's socket stays open until its connection_lost)."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.write_lent(data)

    def write_lent(self, data: memoryview) -> None:
        """Write a view of the shared read buffer before the next read reuses it: straight to
        the socket when nothing is queued ahead of it (no copy); the transport gets a copy of
        whatever the socket does not take now (it may keep what it is given: Python 3.12+)."""
        transport = self.transport
        assert transport is not None
        if self.own_transport:  # sends what the socket takes, copies only the rest
            transport.write(data)
            return
        fd = self.fd
        if fd is None:
            sock = transport.get_extra_info("socket")
            direct = (os.name == "posix" and sock is not None
                      and transport.get_extra_info("ssl_object") is None)
            fd = self.fd = sock.fileno() if direct else -1
        if fd >= 0 and not transport.get_write_buffer_size():
            try:
                sent = os.write(fd, data)
            except OSError:  # EAGAIN, or an error the transport meets below and reports
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(bytes(data))

    # -- flow control ----------------------------------------------------------------------

    def _block(self, target: int) -> None:
        self.blocked_by.add(target)
        transport = self.transport
        if not self.reading_paused and transport is not None and not transport.is_closing():
            self.reading_paused = True
            transport.pause_reading()

    def _unblock(self, target: int) -> None:
        self.blocked_by.discard(target)
        transport = self.transport
        if self.reading_paused and not self.blocked_by:
            self.reading_paused = False
            if transport is not None and not transport.is_closing():
                transport.resume_reading()

    def add_writer(self, writer_id: int) -> None:
        if writer_id in self.writers:
            return
        self.writers.add(writer_id)
        if self.over_high_water:
            writer = self._server._protocols.get(writer_id)
            if writer is not None:
                writer._block(self.conn_id)


class _TlsHandshake(asyncio.Protocol):
    """A TCP connection of a TLS port until its TLS handshake is done, then served by a
    :class:`_ServiceProtocol` over the TLS transport. The handshake has the service's
    ``handshake_timeout`` (as the request head has); a handshake that fails, times out or is
    abandoned is logged by the service with the client's address (``RelayService.tls_failed``)
    and the connection is dropped. Nothing reaches the event loop's exception handler."""

    def __init__(self, server: RelayServiceServer, routes: str) -> None:
        self._server = server
        self._routes = routes

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # duck-typed, as above
        peer = transport.get_extra_info("peername")
        remote = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        server = self._server
        assert server._loop is not None
        # No byte may reach this protocol: start_tls takes the connection over. Pausing right
        # here is not enough on Python 3.10, whose transport starts reading after
        # connection_made whether paused or not; a pause scheduled now runs before any read
        # (and before start_tls, which is scheduled after it).
        server._admitting -= 1
        if server._closing:  # accepted just before close(): nothing will serve it
            transport.abort()
            return
        server._loop.call_soon(transport.pause_reading)
        task = server._loop.create_task(self._handshake(transport, remote))
        server._handshakes.add(task)
        task.add_done_callback(server._handshakes.discard)

        def aborted_if_cancelled(done: asyncio.Task[None]) -> None:
            # A task cancelled before its first step never runs its own cleanup.
            if done.cancelled():
                transport.abort()

        task.add_done_callback(aborted_if_cancelled)

    async def _handshake(self, transport: asyncio.Transport,
                         remote: tuple[str, int] | None) -> None:
        server = self._server
        assert server._loop is not None and server.ssl is not None
        early = _EarlyInput()
        try:
            tls = await server._loop.start_tls(
                transport, early, server.ssl, server_side=True,
                ssl_handshake_timeout=server.service.handshake_timeout)
        except asyncio.CancelledError:
            transport.abort()
            raise
        except _ssl.SSLError as exc:  # what OpenSSL found wrong, never the client's bytes
            why = f"TLS handshake failed: {exc.reason or type(exc).__name__}"
            if exc.reason == "HTTP_REQUEST":  # OpenSSL saw "GET " where a ClientHello goes
                why += " (plain HTTP sent to a TLS port: the client should use https:// or wss://)"
            tls = None
        except ConnectionAbortedError:  # asyncio's handshake timeout
            why = "the TLS handshake did not complete in time"
            tls = None
        except ConnectionError:  # reset, or end of stream in the middle of the handshake
            why = "the client left during the TLS handshake"
            tls = None
        except Exception as exc:
            why = f"TLS handshake failed: {type(exc).__name__}"
            tls = None
        else:
            why = "the client left during the TLS handshake"
        if tls is None:
            transport.abort()
            server.service.tls_failed(time.time(), remote, why)
            server._after_input(None)
            return
        # What arrived between the end of the handshake and now went to `early`: hand the
        # transport to the service's protocol and replay it, in order.
        protocol = _ServiceProtocol(server, self._routes)
        protocol._taken_over = True
        tls.set_protocol(protocol)
        protocol.connection_made(tls)
        if early.data:
            server.service.receive_data(time.time(), protocol.conn_id, bytes(early.data))
            server._after_input(protocol.conn_id)
        if early.eof:
            protocol.eof_received()
        if early.lost:
            protocol.connection_lost(None)
        else:
            early.target = protocol  # a connection_lost already scheduled for `early`


#: The 503's description (reason phrase and body) for a connection over ``max_connections``.
_FULL = (b"The relay holds as many connections as it may (max_connections); "
         b"try again later.")
#: Seconds a refused connection (``_Refused``) is read after its 503, at most.
REFUSED_LINGER = 2.0
#: Refused connections read after their 503 at once, at most (the others close at once): they
#: hold descriptors from ``FD_RESERVE``.
MAX_LINGERING = 16


class _Refused(asyncio.Protocol):
    """A connection accepted while the server holds ``max_connections``: a plain-HTTP client
    gets 503 and the connection is closed, so the process keeps file descriptors in reserve
    instead of running out (asyncio then logs accept() errors in a tight loop).

    After the 503 the write side is shut (the client reads the answer and EOF) and what the
    client still sends is read and dropped until it closes, ``REFUSED_LINGER`` seconds at most:
    closing a socket with unread bytes resets the connection, and a client still sending its
    request would then lose the answer (a lingering close, RFC 9112 §9.6). At most
    ``MAX_LINGERING`` at a time; beyond that a refused connection is closed at once."""

    def __init__(self, server: RelayServiceServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # duck-typed, as above
        server = self._server
        peer = transport.get_extra_info("peername")
        remote = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        why = (f"the service holds {server.max_connections} connections, its limit "
               f"(max_connections; raise the open-file limit, ulimit -n, to allow more)")
        server.service.overloaded(time.time(), remote, why)
        server._after_input(None)  # the refusal log's summary deadline goes on the timer
        if server.ssl is not None:
            transport.abort()
            return
        # The description in the reason phrase too, and who refused (X-Hyco-Rejected-By), as
        # the service's other refusals: a sender's error then says the relay was full, not
        # that the listener rejected it.
        transport.write(b"HTTP/1.1 503 %s\r\nConnection: close\r\n"
                        b"Content-Type: text/plain\r\nRetry-After: 1\r\n%s: relay\r\n"
                        b"Content-Length: %d\r\n\r\n%s\n"
                        % (_FULL, REJECTED_BY_HEADER.encode(), len(_FULL) + 1, _FULL))
        if len(server._lingering) >= MAX_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        server._lingering.add(transport)
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(REFUSED_LINGER, transport.abort)
        transport.write_eof()

    def data_received(self, data: bytes) -> None:
        pass  # dropped: the request is answered already

    def eof_received(self) -> bool | None:
        return False  # the client is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._server._lingering.discard(self._transport)


class _EarlyInput(asyncio.Protocol):
    """Holds what a TLS connection delivers before its task has taken it over; afterwards
    (``target`` set) passes on a ``connection_lost`` that was scheduled for it meanwhile."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False
        self.lost = False
        self.target: _ServiceProtocol | None = None

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.target is not None:
            self.target.connection_lost(exc)


#: File descriptors kept free beyond the connections the server holds (listening sockets, the
#: event loop, outbound event-handler calls, logs): see ``default_max_connections``.
FD_RESERVE = 64


def default_max_connections() -> int:
    """The process's soft open-file limit less ``FD_RESERVE`` (at least 1), or 1,000,000 where
    there is no such limit. Holding more connections than that would end in EMFILE, which
    asyncio's accept loop reports in a storm of errors instead of waiting."""
    try:
        import resource
    except ImportError:  # Windows
        return 1_000_000
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1_000_000
    return max(1, int(soft) - FD_RESERVE)


#: Connections asyncio accepts per wake-up of a listening socket (its ``backlog`` argument).
ACCEPT_BATCH = 16

#: Accept queue of each listening socket. asyncio's default (100) overflows when a thousand
#: clients connect at once: the kernel drops SYNs, and those clients only get in after a SYN
#: retransmission (1 s, then 3 s), measured in bench/load.py's bursts.
DEFAULT_BACKLOG = 1024


class RelayServiceServer:
    """Serve a :class:`RelayService` on ``host``:``port`` (``port=0``: any free port).

    Pass a ready ``service`` or a ``config`` for a new one. ``routes`` picks the service's route
    set ``port`` serves (``"webpubsub"``: its Web PubSub hubs). ``webpubsub_port`` serves the
    Web PubSub hubs of the same service on a second port (the service must have been built with
    ``webpubsub=WebPubSubService(key)``); both ports share one connection table and timer.
    With ``ssl`` the service speaks ``wss://`` (and ``https://`` for Web PubSub). Use
    ``async with RelayServiceServer(...) as server:`` or ``await start()`` / ``await close()``;
    ``server.url`` is the base address clients use (``ws://127.0.0.1:9090``) and
    ``server.webpubsub_endpoint`` the Web PubSub endpoint (``http://127.0.0.1:8080``).
    ``backlog`` is each listening socket's accept queue (the kernel caps it at ``somaxconn``).
    ``max_connections`` bounds the connections held at once (default: the process's open-file
    limit less ``FD_RESERVE``); beyond it a new connection gets 503 and is closed.
    ``own_sockets`` picks how plain-TCP connections are served: ``True``, by the service's own
    lean transport (``adapters/asyncio/sockets.py``: the loop's readiness callbacks, no asyncio
    transport, task or future per connection: 73 instead of 117 µs of CPU per connection in a
    bare accept / request / reply / close test); ``False``, by asyncio's transports (the
    behaviour of any asyncio server, e.g. to rule the lean path out when investigating a
    problem). The default, ``None``, means ``True``
    on a selector event loop (asyncio's default on Linux and macOS) and ``False`` on other loops
    (uvloop's transports are already in C). ``True`` works on any loop with ``add_reader``
    (uvloop too); with ``ssl`` or on Windows' proactor loop it is a ``ValueError``. TLS always
    uses asyncio's transports.
    """

    def __init__(
        self,
        service: RelayService | None = None,
        *,
        config: ServiceConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 9090,
        ssl: _ssl.SSLContext | None = None,
        write_high_water: int = DEFAULT_WRITE_HIGH_WATER,
        routes: str = "relay",
        webpubsub_port: int | None = None,
        backlog: int = DEFAULT_BACKLOG,
        max_connections: int | None = None,
        own_sockets: bool | None = None,
    ) -> None:
        if service is not None and config is not None:
            raise ValueError("pass either a RelayService or a ServiceConfig, not both")
        if write_high_water < 4:
            raise ValueError("write_high_water must be at least 4 bytes")
        if backlog < 1:
            raise ValueError("backlog must be at least 1")
        self.backlog = backlog
        #: Refused connections being read after their 503 (_Refused); closing aborts them.
        self._lingering: set[asyncio.Transport] = set()
        if max_connections is not None and max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = (max_connections if max_connections is not None
                                else default_max_connections())
        self.service = service if service is not None else RelayService(config)
        self.host = host
        self._requested_port = port
        self.ssl = ssl
        self.scheme = "wss" if ssl is not None else "ws"
        self.write_high_water = write_high_water
        #: Which of the service's route sets this port serves ("relay", or "webpubsub" for a
        #: service built with Web PubSub hubs).
        if routes not in self.service.route_sets:
            raise ValueError(f"the service has no {routes!r} routes (it has: "
                             f"{', '.join(self.service.route_sets)})")
        self.routes = routes
        if webpubsub_port is not None and "webpubsub" not in self.service.route_sets:
            raise ValueError("webpubsub_port needs a service with Web PubSub hubs: "
                             "RelayService(config, webpubsub=WebPubSubService(access_key))")
        self._requested_webpubsub_port = webpubsub_port
        if own_sockets and ssl is not None:
            raise ValueError("own_sockets serves plain TCP only: TLS needs asyncio's transports")
        self.own_sockets = own_sockets
        self._webpubsub_server: asyncio.Server | SocketListener | None = None
        self._webpubsub_port: int | None = None
        self._server: asyncio.Server | SocketListener | None = None
        self._poller: Poller | None = None  # the own sockets' readiness (own_sockets)
        self._protocols: dict[int, _ServiceProtocol] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = asyncio.Event()
        self._all_lost = asyncio.Event()
        self._port: int | None = None
        self._read_buffer = memoryview(bytearray(FORWARD_HEADROOM + READ_BUFFER_SIZE))
        self._read_view = self._read_buffer[FORWARD_HEADROOM:]
        self._calls: set[asyncio.Task[None]] = set()
        self._handshakes: set[asyncio.Task[None]] = set()  # TLS handshakes in progress
        self._admitting = 0  # protocols made for new connections, not yet connected
        self._closing = False  # close() has begun

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start accepting connections. Idempotent."""
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._closed.clear()
        self._closing = False
        server = await self._bind(self.routes, self._requested_port)
        self._port = _bound_port(server, self._requested_port, self.host)
        if self._requested_webpubsub_port is not None:
            try:
                extra = await self._bind("webpubsub", self._requested_webpubsub_port)
            except BaseException:
                server.close()
                await server.wait_closed()
                if self._poller is not None:
                    self._poller.close()
                    self._poller = None
                raise
            self._webpubsub_server = extra
            self._webpubsub_port = _bound_port(extra, self._requested_webpubsub_port, self.host)
        self._server = server
        # Where clients reach each route set: a request at the wrong port is told the right one.
        scheme = "https" if self.ssl is not None else "http"
        main = f"{scheme}://{_shown_host(self.host)}:{self.port}"
        self.service.addresses[self.routes] = self.url if self.routes == "relay" else main
        if self._webpubsub_port is not None:
            self.service.addresses["webpubsub"] = self.webpubsub_endpoint
        # The names this machine is reached by, for the service's own pages (DNS rebinding
        # guard): the one it was bound by, and its own (no DNS lookup).
        for name in (self.host, socket.gethostname()):
            if name and not is_ip_address(name):
                self.service.allowed_hosts.add(name.lower().removesuffix("."))
        self._arm_timer()

    def _uses_own_sockets(self, loop: asyncio.AbstractEventLoop) -> bool:
        if self.ssl is not None:
            return False
        if self.own_sockets is None:
            return isinstance(loop, asyncio.SelectorEventLoop)
        proactor = getattr(asyncio, "ProactorEventLoop", None)
        if self.own_sockets and proactor is not None and isinstance(loop, proactor):
            raise ValueError("own_sockets needs an event loop with add_reader (a selector "
                             "loop, or uvloop); Windows' proactor loop has none")
        return self.own_sockets

    def _accept_failed(self, exc: OSError) -> None:
        why = f"accept() failed: {exc.strerror or exc}"
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            why += (f" (out of file descriptors; accepting again in {ACCEPT_RETRY_DELAY:g} s: "
                    f"raise the open-file limit, ulimit -n, or lower max_connections)")
        self.service.overloaded(time.time(), None, why)
        self._after_input(None)

    async def _bind(self, routes: str, port: int) -> asyncio.Server | SocketListener:
        loop = asyncio.get_running_loop()
        try:
            # With TLS, each connection's handshake is ours (_TlsHandshake): asyncio's TLS
            # server drops a failed handshake silently, and only after 60 s.
            def factory() -> asyncio.BaseProtocol:
                # Protocols made but not yet connected count too: asyncio makes a batch of
                # them before the first one's connection_made runs.
                held = len(self._protocols) + len(self._handshakes) + self._admitting
                if held >= self.max_connections:
                    return _Refused(self)
                self._admitting += 1  # until its connection_made
                if self.ssl is None:
                    return _ServiceProtocol(self, routes)
                return _TlsHandshake(self, routes)

            if self._uses_own_sockets(loop):
                infos = await _resolve(loop, self.host, port)
                sockets = bind_sockets(infos, self.backlog)
                try:
                    if self._poller is None:
                        self._poller = make_poller(loop)
                    return SocketListener(loop, sockets, factory,
                                          min(ACCEPT_BATCH, self.backlog), self._accept_failed,
                                          self._poller)
                except BaseException:
                    for sock in sockets:
                        sock.close()
                    raise
            # A selector loop accepts up to `backlog` connections per wake-up and logs an
            # error for each one it cannot accept (EMFILE), so that count is kept small and
            # the kernel's queue is set to `backlog` afterwards on the same listening socket
            # (listen() again changes it on Linux and the BSDs, not on Windows).
            batch = self.backlog if sys.platform == "win32" else min(ACCEPT_BATCH, self.backlog)
            server = await loop.create_server(factory, self.host, port, reuse_address=True,
                                              backlog=batch)
            try:
                for listening in server.sockets if batch < self.backlog else ():
                    with socket.fromfd(listening.fileno(), listening.family,
                                       listening.type) as same:
                        same.listen(self.backlog)
            except OSError:
                server.close()
                raise
            return server
        except OSError as exc:
            raise BindError(exc.errno, exc.strerror or str(exc), self.host, port,
                            routes) from exc

    async def close(self) -> None:
        """Stop accepting, close every connection, cancel the timer. Idempotent."""
        server = self._server
        if server is None:
            return
        self._closing = True
        server.close()
        cancelled = [*self._calls, *self._handshakes]
        for task in cancelled:
            task.cancel()
        extra, self._webpubsub_server = self._webpubsub_server, None
        if extra is not None:
            extra.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None
        # Everyone hears 1001 (or 503 while waiting) before their TCP connection closes.
        self.service.shutdown(time.time())
        self._after_input(None)
        for refused in list(self._lingering):  # answered already: nothing more to say
            refused.abort()
        for proto in list(self._protocols.values()):
            if proto.transport is not None:
                proto.transport.close()
        # Let the transports flush and report connection_lost (bounded: a stuck peer with a
        # full buffer is aborted).
        if self._protocols:
            self._all_lost.clear()
            try:
                await asyncio.wait_for(self._all_lost.wait(), 2.0)
            except asyncio.TimeoutError:
                for proto in list(self._protocols.values()):
                    if proto.transport is not None:
                        proto.transport.abort()
                await asyncio.sleep(0)
        if cancelled:  # let them end (a task destroyed while pending is an error)
            await asyncio.wait(cancelled, timeout=2.0)
        await server.wait_closed()
        if extra is not None:
            await extra.wait_closed()
        if self._poller is not None:
            self._poller.close()
            self._poller = None
        self._server = None
        self._closed.set()

    async def serve_forever(self) -> None:
        """Serve until :meth:`close` is called (or this task is cancelled, which closes)."""
        await self.start()
        try:
            await self._closed.wait()
        finally:
            await self.close()

    async def __aenter__(self) -> RelayServiceServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- addresses -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the actual one when created with ``port=0``)."""
        if self._port is None:
            raise RuntimeError("the server is not started: await start() first")
        return self._port

    @property
    def url(self) -> str:
        """``ws://host:port`` (``wss://`` with TLS); a wildcard host is shown as loopback."""
        return f"{self.scheme}://{_shown_host(self.host)}:{self.port}"

    @property
    def webpubsub_port(self) -> int:
        """The bound Web PubSub port (needs ``webpubsub_port=`` and a started server)."""
        if self._webpubsub_port is None:
            raise RuntimeError("no Web PubSub port: pass webpubsub_port= and await start()")
        return self._webpubsub_port

    @property
    def webpubsub_endpoint(self) -> str:
        """``http://host:port`` of the Web PubSub hubs (``https://`` with TLS): the
        ``Endpoint=`` of a Web PubSub connection string."""
        scheme = "https" if self.ssl is not None else "http"
        return f"{scheme}://{_shown_host(self.host)}:{self.webpubsub_port}"

    @property
    def webpubsub_connection_string(self) -> str:
        """``Endpoint=…;AccessKey=…;Version=1.0;`` for the official Web PubSub server SDKs."""
        hubs = self.service.webpubsub
        assert hubs is not None  # checked in __init__ when webpubsub_port was given
        return f"Endpoint={self.webpubsub_endpoint};AccessKey={hubs.access_key};Version=1.0;"

    @property
    def connections(self) -> int:
        """How many TCP connections are open."""
        return len(self._protocols)

    # -- the byte pump ---------------------------------------------------------------------

    def _after_input(self, source: int | None) -> None:
        """Write what the core produced, learn relay writers, re-arm the timer."""
        service = self.service
        for conn_id, data in service.data_to_send():
            proto = self._protocols.get(conn_id)
            if proto is None or proto.transport is None:
                continue
            if data:
                proto.send(data, source if source is not None
                           and service.peer_of(conn_id) == source else None)
            else:
                # The core closes TCP (server closes first, RFC 6455 §7.1.1): close() flushes
                # the write buffer before the socket goes; connection_lost tells the core.
                proto.transport.close()
        if service.webpubsub is not None:  # only Web PubSub event handlers make calls
            for call in service.outbound_calls():
                self._start_call(call)
        for conn_id, paused in service.reading_changes():
            proto = self._protocols.get(conn_id)
            if proto is not None:
                # The core has nowhere to put this connection's input yet (a relayed request
                # waiting for its rendezvous): -1 stands for the core among the blockers.
                if paused:
                    proto._block(_CORE)
                else:
                    proto._unblock(_CORE)
        self._arm_timer()

    # -- HTTP calls the service makes (Web PubSub event handlers) ----------------------------

    def _start_call(self, call: OutboundCall) -> None:
        loop = self._loop
        if loop is None:
            return
        task = loop.create_task(self._call(call))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    async def _call(self, call: OutboundCall) -> None:
        """Make one HTTP request for the core; any failure is reported to it, never raised."""
        service = self.service

        async def perform() -> tuple[int, tuple[tuple[str, str], ...], bytes]:
            async with http_request(call.method, call.url, body=call.body,
                                    headers=list(call.headers), timeout=call.timeout,
                                    open_timeout=call.timeout) as response:
                body = bytearray()
                async for chunk in response.stream():
                    body += chunk
                    if len(body) > MAX_CALL_ANSWER:
                        raise ValueError(f"its answer is over {MAX_CALL_ANSWER} bytes")
                return response.status, response.headers.raw_items(), bytes(body)

        try:
            status, headers, body = await asyncio.wait_for(perform(), call.timeout)
        except asyncio.CancelledError:
            raise
        except (TimeoutError, asyncio.TimeoutError):
            service.outbound_failed(time.time(), call.call_id,
                                    f"no answer within {call.timeout:g} s")
        except Exception as exc:  # any failure of that one call: the core decides what follows
            service.outbound_failed(time.time(), call.call_id,
                                    f"{type(exc).__name__}: {exc}")
        else:
            service.outbound_answered(time.time(), call.call_id, status, headers, body)
        self._after_input(None)

    def _deadline_added(self, deadline: float | None) -> None:
        """The core gained ``deadline`` and nothing else (no output, no reading change): the
        timer is re-armed only if it does not already fire by then (``_arm_timer``'s rule,
        without asking the core for its earliest deadline again)."""
        if deadline is None:
            return
        timer_at = self._timer_at
        if self._timer is None or timer_at is None or deadline < timer_at:
            self._arm_timer()

    def _arm_timer(self) -> None:
        loop = self._loop
        if loop is None or self._server is None or not self._server.is_serving():
            return
        deadline = self.service.next_deadline()
        timer_at = self._timer_at
        if self._timer is not None and timer_at is not None and (
                deadline is None or timer_at <= deadline):
            # The armed timer comes first: keep it (no cancel and call_later per connection, as
            # each new connection's handshake deadline is later than the one armed). Firing
            # early does no harm: handle_timer finds nothing due and _on_timer re-arms.
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is None:
            return
        delay = max(deadline - time.time(), _MIN_TIMER_DELAY)
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.service.handle_timer(time.time())
        self._after_input(None)



class RelayServiceThread:
    """The local relay service on its own event loop thread, for blocking programs (threads,
    gevent) and tests: ``with RelayServiceThread(port=0) as relay: relay.url``.

    Takes the :class:`RelayServiceServer` arguments. ``start()`` / ``close()`` wait at most
    ``timeout`` seconds; ``call(fn)`` runs ``fn()`` on the service's loop (to read its state).
    """

    def __init__(self, service: RelayService | None = None, *, timeout: float = 10.0,
                 **options: Any) -> None:
        self.server = RelayServiceServer(service, **options)
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hyco-relay",
                                        daemon=True)

    @property
    def service(self) -> RelayService:
        return self.server.service

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT`` (``wss://`` with TLS)."""
        return self.server.url

    @property
    def webpubsub_endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` of the Web PubSub hubs (with ``webpubsub_port=``)."""
        return self.server.webpubsub_endpoint

    @property
    def webpubsub_connection_string(self) -> str:
        """The Web PubSub connection string (with ``webpubsub_port=``)."""
        return self.server.webpubsub_connection_string

    def start(self) -> RelayServiceThread:
        """Start the thread and bind; raises what binding raised (e.g. the port is in use)."""
        if not self._thread.is_alive():
            self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(self.timeout)
        return self

    def call(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(self.timeout)

    def close(self) -> None:
        """Close the service (1001 to everyone), stop the loop and join the thread."""
        if self._loop.is_closed():
            return
        try:
            if self._thread.is_alive():
                asyncio.run_coroutine_threadsafe(self.server.close(),
                                                 self._loop).result(self.timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self.timeout)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> RelayServiceThread:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
