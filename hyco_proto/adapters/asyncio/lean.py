"""Plain-TCP connections of the adapter on the relay service's lean transport.

:class:`~.sockets.SocketTransport` serves a socket from the event loop's readiness callbacks
without asyncio's per-connection and per-read Python layers (see :mod:`.sockets`). The adapter's
own plain-TCP connections use it too where it applies (:func:`applies`: a selector event loop,
no TLS): the listener's control and rendezvous connections and a client's (``open_link``), and
the connections ``serve`` accepts (:func:`listen`). TLS, Windows' proactor loop and other loops
(uvloop's transports are already in C) keep asyncio's transports.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .sockets import (
    ACCEPT_RETRY_DELAY,
    LoopPoller,
    Poller,
    SocketListener,
    SocketTransport,
    bind_sockets,
)

if TYPE_CHECKING:
    from .link import Link

_NOT_NOW = (BlockingIOError, InterruptedError)

__all__ = ["ENABLED", "LinkTransport", "applies", "connect", "listen"]

logger = logging.getLogger("hyco_proto.adapters.asyncio")

#: False: asyncio's transports everywhere (tests run both; A/B measurements).
ENABLED = True

#: ``serve``'s listening backlog (asyncio's ``create_server`` default) and the connections
#: accepted per wake-up at most.
BACKLOG = 100
ACCEPT_BATCH = 16


class LinkTransport(SocketTransport):
    """A :class:`SocketTransport` serving a :class:`~.link.Link`: a read lands in the link's
    buffer and goes to its receiver at once (no ``get_buffer`` / ``buffer_updated`` calls in
    between; the link's buffer is one per thread and always the same size)."""

    _protocol: Link

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: Link,
                 peername: Any = None, read_now: bool = False,
                 poller: Poller | None = None) -> None:
        self._recv_into = sock.recv_into  # bound once, not per read (set first: read_now)
        super().__init__(loop, sock, protocol, peername, read_now, poller)

    def pump_with(self, make: Callable[[], Callable[[], None] | None] | None) -> None:
        """As :meth:`SocketTransport.pump_with`, but at once: a link's connection is on the
        loop's own callbacks from the start, there is nothing to settle."""
        self._pump_make = make
        if not self._lost:
            self._use_pump()

    def close(self) -> None:
        self._protocol._fd = -1  # no more direct writes (Link.write: _fd only while open)
        super().close()

    def _force_close(self, exc: BaseException | None) -> None:
        self._protocol._fd = -1
        super()._force_close(exc)

    def _on_readable(self) -> None:
        if self._closing:  # a readiness report that crossed a close
            return
        link = self._protocol
        buffer = link._buffer
        try:
            nbytes = self._recv_into(buffer)
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
            link._deliver(buffer[:nbytes])
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal(exc, "protocol failed on received data")


def applies(loop: asyncio.AbstractEventLoop, secure: bool) -> bool:
    """Whether plain TCP on ``loop`` runs on the lean transport: a selector loop, no TLS."""
    return ENABLED and not secure and isinstance(loop, asyncio.SelectorEventLoop)


async def connect(loop: asyncio.AbstractEventLoop, link: Link, host: str,
                  port: int) -> LinkTransport:
    """Connect to ``host``:``port`` as ``loop.create_connection`` does (every resolved address in
    turn; the same errors: the one failure, or ``OSError("Multiple exceptions: ...")`` when the
    addresses failed differently) and serve the socket to ``link``."""
    infos = await _resolve(loop, host, port, 0)
    if not infos:
        raise OSError("getaddrinfo() returned empty list")
    errors: list[OSError] = []
    for family, kind, proto, _name, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            if family in (socket.AF_INET, socket.AF_INET6):  # as asyncio's transports: no Nagle
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            errors.append(exc)
            continue
        except BaseException:  # cancelled (the caller's timeout): no socket left behind
            sock.close()
            raise
        return LinkTransport(loop, sock, link, poller=LoopPoller(loop))
    if len(errors) == 1 or all(str(exc) == str(errors[0]) for exc in errors):
        raise errors[0]
    raise OSError(f"Multiple exceptions: {', '.join(str(exc) for exc in errors)}")


async def listen(loop: asyncio.AbstractEventLoop, host: str, port: int,
                 factory: Callable[[], Link]) -> SocketListener:
    """Listen on ``host``:``port`` (bound as ``loop.create_server`` binds) and serve every
    accepted connection to a new ``factory()`` link on a :class:`LinkTransport`."""
    sockets = bind_sockets(await _resolve(loop, host or None, port, socket.AI_PASSIVE),
                           BACKLOG)
    try:
        return SocketListener(loop, sockets, factory, ACCEPT_BATCH, _accept_failed,
                              LoopPoller(loop), transport=LinkTransport)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise


async def _resolve(loop: asyncio.AbstractEventLoop, host: str | None, port: int,
                   flags: int) -> list[Any]:
    """``getaddrinfo`` as asyncio's ``create_connection`` / ``create_server`` call it: a
    numeric address at once, a name through the loop's resolver (it may block, so it runs in
    the loop's executor: a thread hop that a numeric address does not need)."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                  flags=flags | socket.AI_NUMERICHOST)
    except socket.gaierror:
        return await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=flags)


def _accept_failed(exc: OSError) -> None:
    """Out of descriptors or memory in ``accept()``: the listener rests a second, then
    accepts again; logged, as asyncio's servers log it."""
    logger.error("accept() failed (%s); accepting again in %g s", exc, ACCEPT_RETRY_DELAY)
