"""The plain WebSocket server behind ``serve``: one acceptor, one worker per connection."""

from __future__ import annotations

import contextlib
import functools
import logging
import ssl as _ssl
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ...drivers.connection import RequestReceived, ServerConnection, select_subprotocol
from .net import addresses, exchange, remaining, shutdown
from .runtime import Runtime, Workers
from .sockets import WAIT_SLICE, WebSocket, run_handler, wait_until
from .tls import TlsSocket

__all__ = ["Server", "Settings", "listen"]


@dataclass(frozen=True)
class Settings:
    """Per-connection settings of a server."""

    subprotocols: tuple[str, ...]
    ssl: _ssl.SSLContext | None
    open_timeout: float | None
    close_timeout: float
    max_queue: int
    max_size: int | None


class Server:
    """A plain WebSocket server (made by ``serve``): ``host``, ``port``, ``close()``,
    ``serve_forever()``; a context manager (closes on exit).

    Each connection: the opening handshake (bounded by ``open_timeout``), the subprotocol is
    the first of ``subprotocols`` the client offered, then ``handler(ws)`` runs in its own worker;
    the socket is closed with 1000 when it returns, 1011 when it raised (logged).
    """

    def __init__(self, runtime: Runtime, handler: Callable[[WebSocket], object], sock: Any,
                 settings: Settings) -> None:
        self._rt = runtime
        self._handler = handler
        self._sock = sock
        self._settings = settings
        self._log = logging.getLogger(f"hyco_proto.adapters.{runtime.name}")
        name = sock.getsockname()
        self.host: str = name[0]
        self.port: int = name[1]
        self._lock = runtime.lock()
        self._stopping = runtime.event()  # close() has begun
        self._closed = runtime.event()
        self._handshaking: set[Any] = set()
        self._sockets: set[WebSocket] = set()
        self._workers = Workers(runtime, self._log)
        sock.settimeout(WAIT_SLICE)  # shutdown() wakes accept(); the timeout is a backstop
        self._acceptor = self._workers.spawn(self._accept_loop, "accept")

    @property
    def url(self) -> str:
        scheme = "wss" if self._settings.ssl is not None else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def serve_forever(self) -> None:
        """Block until :meth:`close` (from another worker, or a handler)."""
        wait_until(self._rt, self._closed, None)

    def close(self) -> None:
        """Stop accepting, close open connections (1001) and wait (bounded) for the workers."""
        with self._lock:
            first = not self._stopping.is_set()
            self._stopping.set()
            handshaking, sockets = list(self._handshaking), list(self._sockets)
        if first:
            shutdown(self._sock)
            for sock in handshaking:
                shutdown(sock)
            for ws in sockets:
                with contextlib.suppress(Exception):
                    ws.start_close(1001, "server shutting down")
        left = self._workers.join(self._settings.close_timeout + WAIT_SLICE)
        if left:
            self._log.warning("%d connection handler(s) still running after close()", len(left))
        self._closed.set()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Server {self.url}{' closed' if self._stopping.is_set() else ''}>"

    # -- workers ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        sock = self._sock
        try:
            while not self._stopping.is_set():
                try:
                    conn, _ = sock.accept()
                except TimeoutError:
                    continue
                except (OSError, ValueError) as exc:
                    if self._stopping.is_set():
                        return
                    self._log.warning("accept failed: %s", exc)
                    self._rt.sleep(0.1)  # out of descriptors, typically: do not spin
                    continue
                with self._lock:
                    if self._stopping.is_set():
                        conn.close()
                        return
                    self._handshaking.add(conn)
                self._workers.spawn(functools.partial(self._serve, conn), "connection")
        finally:
            sock.close()

    def _serve(self, conn: Any) -> None:
        rt, settings = self._rt, self._settings
        timeout = settings.open_timeout
        deadline = None if timeout is None else rt.monotonic() + timeout
        sock = conn
        try:
            if settings.ssl is not None:
                sock = TlsSocket(rt, conn, settings.ssl, server_side=True, server_hostname=None)
                sock.settimeout(remaining(rt, deadline, "TLS handshake"))
                sock.do_handshake()
            connection = ServerConnection(max_message_size=settings.max_size)
            events = exchange(rt, sock, connection, deadline, "WebSocket upgrade")
        except (OSError, ValueError) as exc:
            self._log.debug("opening handshake failed: %s", exc)
            self._forget(conn, sock)
            return
        first = events[0]
        if not isinstance(first, RequestReceived):  # refused; the answer is written
            self._forget(conn, sock)
            return
        request = first.request
        connection.accept(select_subprotocol(request.subprotocols, settings.subprotocols))
        ws = WebSocket(rt, sock, connection, events=events[1:],
                       max_queue=settings.max_queue, close_timeout=settings.close_timeout)
        with self._lock:
            self._handshaking.discard(conn)
            self._sockets.add(ws)
            closing = self._stopping.is_set()
        try:
            if closing:
                ws.close(1001, "server shutting down")
            else:
                run_handler(self._handler, ws, self._log, "connection handler")
        finally:
            with self._lock:
                self._sockets.discard(ws)

    def _forget(self, conn: Any, sock: Any) -> None:
        with self._lock:
            self._handshaking.discard(conn)
        with contextlib.suppress(OSError):
            sock.close()


def listen(rt: Runtime, host: str, port: int, backlog: int) -> Any:
    """A listening TCP socket on ``host``:``port`` (0: any free port)."""
    mod = rt.socket
    family, kind, proto, _, address = addresses(rt, host, port, mod.AI_PASSIVE)[0]
    sock = mod.socket(family, kind, proto)
    try:
        sock.setsockopt(mod.SOL_SOCKET, mod.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock
