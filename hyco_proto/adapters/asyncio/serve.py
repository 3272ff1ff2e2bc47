"""A plain WebSocket server on asyncio (no relay): ``serve(handler, host, port)``.

Each connection runs a :class:`~hyco_proto.drivers.ServerConnection`: the opening handshake
(bounded by ``open_timeout``; bad requests get their 4xx from the core), the subprotocol chosen
from ``subprotocols`` in the server's order of preference, then ``await handler(ws)``. The socket
is closed with 1000 when the handler returns (or lets the peer's close escape as
``ConnectionClosedError``) and 1011 when it raises anything else (logged).

Plain TCP on a selector loop is accepted and served by the lean transport (:mod:`.lean`); TLS
and other loops by asyncio's.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl as _ssl
from collections.abc import Awaitable, Callable, Generator, Sequence
from types import TracebackType
from typing import Any

from ...drivers.connection import RequestReceived, ServerConnection, select_subprotocol
from ...drivers.stream import DEFAULT_MAX_QUEUE, ConnectionClosedError, check_max_queue
from . import lean
from .link import DEFAULT_WRITE_LIMIT, Link
from .sockets import SocketListener
from .websocket import DEFAULT_CLOSE_TIMEOUT, DEFAULT_MAX_SIZE, WebSocket

__all__ = ["Server", "serve"]

logger = logging.getLogger("hyco_proto.adapters.asyncio")

Handler = Callable[[WebSocket], Awaitable[None]]


def log_hidden_failure(task: asyncio.Future[Any], what: str) -> None:
    """Log the error ``task`` ended with when its awaiter was cancelled instead of seeing it
    (the server closed in the loop step between the two), as the awaiter would have."""
    if task.done() and not task.cancelled():
        error = task.exception()
        if error is not None and not isinstance(error, ConnectionClosedError):
            logger.error("%s failed while the server closed", what, exc_info=error)


class Server:
    """The listening server: ``port``, ``close()``, ``wait_closed()``, ``serve_forever()``."""

    def __init__(self, handler: Handler, host: str, port: int, *,
                 subprotocols: Sequence[str], ssl: _ssl.SSLContext | None,
                 open_timeout: float, close_timeout: float, max_queue: int,
                 max_size: int | None, write_limit: int) -> None:
        self._handler = handler
        self.host = host
        self._port = port
        self._subprotocols = list(subprotocols)
        self._ssl = ssl
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._max_queue = max_queue
        self._max_size = max_size
        self._write_limit = write_limit
        # asyncio's server, or the lean transport's listener (plain TCP, selector loop).
        self._server: asyncio.base_events.Server | SocketListener | None = None
        self._forever: asyncio.Future[None] | None = None  # what serve_forever awaits
        self._sockets: set[WebSocket] = set()
        self._handshaking: set[WebSocket] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> Server:
        loop = asyncio.get_running_loop()
        try:
            if lean.applies(loop, self._ssl is not None):
                self._server = await lean.listen(loop, self.host, self._port, self._new_link)
            else:
                self._server = await loop.create_server(self._new_link, self.host, self._port,
                                                        ssl=self._ssl)
        except socket.gaierror as exc:  # the resolver's message alone names no host
            raise socket.gaierror(exc.errno, f"cannot serve on {self.host}:{self._port}: "
                                  f"{exc.strerror}") from exc
        return self

    def _new_link(self) -> Link:
        link = Link(write_limit=self._write_limit)
        ws = WebSocket(link, ServerConnection(max_message_size=self._max_size),
                       max_queue=self._max_queue, close_timeout=self._close_timeout)
        self._handshaking.add(ws)
        task = asyncio.ensure_future(self._run(ws))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return link

    async def _run(self, ws: WebSocket) -> None:
        try:
            first = await asyncio.wait_for(asyncio.shield(ws.opened), self._open_timeout)
        except BaseException as exc:  # no request in time, the client left, or shutdown
            ws.abort()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        finally:
            self._handshaking.discard(ws)
        if not isinstance(first, RequestReceived):
            return  # the core answered a bad request with its 4xx and closes
        conn = ws._conn
        assert isinstance(conn, ServerConnection)
        conn.accept(select_subprotocol(first.request.subprotocols, self._subprotocols))
        ws._process()
        self._sockets.add(ws)
        # The handler runs as a task of its own that this one awaits: a message's wake-up then
        # resumes the handler's frames only, not this coroutine's as well (one frame less per
        # message). Cancelling this task cancels the handler's (a task cancels what it awaits).
        handler = asyncio.ensure_future(self._handler(ws))
        try:
            await handler
        except asyncio.CancelledError:
            log_hidden_failure(handler, "connection handler")
            await ws.close(1001, "server shutting down")
            raise
        except ConnectionClosedError:
            await ws.close()  # the peer ended the conversation: a normal end
        except Exception:
            logger.exception("connection handler failed; closing the connection with 1011")
            await ws.close(1011, "internal error")
        else:
            await ws.close()
        finally:
            self._sockets.discard(ws)

    def close(self) -> None:
        """Stop accepting; open connections are closed with 1001 (see ``wait_closed``)."""
        if self._server is not None:
            self._server.close()
        if self._forever is not None and not self._forever.done():
            self._forever.set_result(None)
        for ws in list(self._handshaking):  # their tasks may be cancelled before they run
            ws.abort()
        for task in list(self._tasks):
            task.cancel()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self._close_timeout + 1.0)

    async def serve_forever(self) -> None:
        """Serve until ``close()`` (then return) or until cancelled (then stop accepting, as
        asyncio's ``serve_forever`` does)."""
        assert self._server is not None, "start the server first"
        if not self._server.is_serving():
            return
        self._forever = asyncio.get_running_loop().create_future()
        try:
            await self._forever
        finally:
            self._server.close()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
        await self.wait_closed()


class serve:
    """Serve WebSockets: ``server = await serve(handler, host, port)`` or
    ``async with serve(handler, host, port) as server:``; ``server.port`` is the bound port.

    ``handler(ws)`` is a coroutine function, run in a task of its own per connection; when
    it returns (or lets the peer's close escape as ``ConnectionClosedError``) the connection
    is closed with 1000, when it raises anything else with 1011 (logged), and when the server
    closes it is cancelled and the connection closed with 1001. ``subprotocols`` are offered
    in order of preference; ``open_timeout`` bounds each opening handshake. The awaited
    ``serve`` is a :class:`Server` (``port``, ``close()``, ``wait_closed()``,
    ``serve_forever()``).
    """

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0, *,
                 subprotocols: Sequence[str] = (), ssl: _ssl.SSLContext | None = None,
                 open_timeout: float = 10.0, close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
                 max_queue: int = DEFAULT_MAX_QUEUE, max_size: int | None = DEFAULT_MAX_SIZE,
                 write_limit: int = DEFAULT_WRITE_LIMIT) -> None:
        check_max_queue(max_queue)
        self.server = Server(handler, host, port, subprotocols=subprotocols, ssl=ssl,
                             open_timeout=open_timeout, close_timeout=close_timeout,
                             max_queue=max_queue, max_size=max_size, write_limit=write_limit)

    def __await__(self) -> Generator[Any, None, Server]:
        return self.server.start().__await__()

    async def __aenter__(self) -> Server:
        return await self.server.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.server.__aexit__(exc_type, exc, tb)
