"""Sockets for the blocking adapters: connect (TCP, then TLS) within a deadline, run an opening
handshake on a socket (:func:`open_client`: all three in one timeout), write a connection's
output, end TCP.

Errors from connecting are raised again with one sentence naming the address and the cause, as
:func:`hyco_proto.errors.connect_failure` makes them (``TimeoutError``,
``ConnectionRefusedError``, else ``ConnectionError``; all ``OSError``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import ssl as _ssl
from collections.abc import Callable, Iterable
from typing import Any

from ...drivers.connection import (
    ClientConnection,
    ConnectionEvent,
    HandshakeFailed,
    Refused,
    ServerConnection,
    handshake_failure,
)
from ...errors import connect_failure, open_timeout_failure
from .runtime import Runtime
from .tls import TlsSocket

__all__ = [
    "RECV_SIZE",
    "addresses",
    "end_tcp",
    "exchange",
    "open_client",
    "open_connection",
    "remaining",
    "shutdown",
    "write_chunks",
]

#: Bytes asked for per ``recv``.
RECV_SIZE = 65536


def remaining(rt: Runtime, deadline: float | None, what: str) -> float | None:
    """Seconds left until ``deadline`` (monotonic), or ``TimeoutError(what)`` once it passed."""
    if deadline is None:
        return None
    left = deadline - rt.monotonic()
    if left <= 0:
        raise TimeoutError(what)
    return left


def open_connection(rt: Runtime, host: str, port: int, *, secure: bool,
                    ssl: _ssl.SSLContext | None, timeout: float | None,
                    on_socket: Callable[[Any], None] | None = None) -> Any:
    """A connected socket (TLS when ``secure``) to ``host``:``port`` within ``timeout``.

    ``on_socket(sock)`` is called with each socket before it connects, so another worker can
    cancel the attempt (``shutdown``); it may raise to stop. Failures raise
    :func:`~hyco_proto.errors.connect_failure`'s error.
    """
    deadline = None if timeout is None else rt.monotonic() + timeout
    sock: Any = None
    try:
        sock = _connect_tcp(rt, host, port, deadline, on_socket)
        if secure:
            context = ssl if ssl is not None else _ssl.create_default_context()
            sock = TlsSocket(rt, sock, context, server_side=False, server_hostname=host)
            sock.settimeout(remaining(rt, deadline, "TLS handshake"))
            sock.do_handshake()
        sock.settimeout(None)
        return sock
    except (OSError, ValueError) as exc:
        if sock is not None:
            sock.close()
        raise connect_failure(exc, host=host, port=port, secure=secure, timeout=timeout) from exc


def _connect_tcp(rt: Runtime, host: str, port: int, deadline: float | None,
                 on_socket: Callable[[Any], None] | None) -> Any:
    mod = rt.socket
    error: OSError | None = None
    for family, kind, proto, _, address in addresses(rt, host, port):
        sock = mod.socket(family, kind, proto)
        try:
            if on_socket is not None:
                on_socket(sock)
            sock.settimeout(remaining(rt, deadline, "connect"))
            sock.connect(address)
            sock.setsockopt(mod.IPPROTO_TCP, mod.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            sock.close()
            if isinstance(exc, TimeoutError):
                raise
            error = exc
    raise error if error is not None else OSError(f"no address found for {host}")


def addresses(rt: Runtime, host: str, port: int, flags: int = 0) -> list[Any]:
    """``getaddrinfo`` results for TCP; an IP literal is used as is (gevent would otherwise ask
    its resolver's thread pool)."""
    mod = rt.socket
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return list(mod.getaddrinfo(host, port, 0, mod.SOCK_STREAM, 0, flags))
    family = mod.AF_INET6 if ip.version == 6 else mod.AF_INET
    return [(family, mod.SOCK_STREAM, 0, "", (host, port))]


def exchange(rt: Runtime, sock: Any, connection: ClientConnection | ServerConnection,
             deadline: float | None, what: str) -> list[ConnectionEvent]:
    """Run an opening handshake on ``sock`` until the connection has events (the outcome first).

    Writes what the connection queues (the client's request; a server's refusal), reads the
    peer's bytes; ``TimeoutError(what)`` when ``deadline`` passes first. The socket is left in
    blocking mode.
    """
    try:
        while True:
            write_chunks(sock, connection.data_to_send(), server=isinstance(
                connection, ServerConnection))
            events = connection.events_received()
            if events:
                return events
            sock.settimeout(remaining(rt, deadline, what))
            try:
                data = sock.recv(RECV_SIZE)
            except TimeoutError:
                raise TimeoutError(what) from None
            if data:
                connection.receive_data(data)
            else:
                connection.receive_eof()
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(None)


#: write_chunks: a chunk under _SMALL bytes goes out with the next in one sendmsg, up to _JOIN.
_SMALL = 1024
_JOIN = 256 * 1024


def write_chunks(sock: Any, chunks: Iterable[bytes], *, server: bool) -> bool:
    """Write a connection's output; ``b""`` ends TCP (see :func:`end_tcp`). True once ended.

    A frame header followed by its payload (up to ``_JOIN`` bytes in all) goes out in one
    ``sendmsg`` where the socket has it (not TLS): a large frame does not start with a
    header-sized TCP segment, which costs a send here and a wake-up at the peer."""
    if type(chunks) is list and len(chunks) == 1 and chunks[0]:
        sock.sendall(chunks[0])  # the common case: one frame
        return False
    sendmsg = getattr(sock, "sendmsg", None)
    pending: bytes | None = None  # a small chunk waiting for what follows it
    for chunk in chunks:
        if pending is not None:
            head, pending = pending, None
            if chunk and len(head) + len(chunk) <= _JOIN:
                _send_pair(sock, sendmsg, head, chunk)
                continue
            sock.sendall(head)
        if not chunk:
            end_tcp(sock, server=server)
            return True
        if sendmsg is not None and len(chunk) < _SMALL:
            pending = chunk
            continue
        sock.sendall(chunk)
    if pending is not None:
        sock.sendall(pending)
    return False


def _send_pair(sock: Any, sendmsg: Any, head: bytes, body: bytes) -> None:
    """``sendall(head + body)`` without joining them: one ``sendmsg``, then what it left."""
    sent = sendmsg([head, body])
    if sent < len(head):
        sock.sendall(memoryview(head)[sent:])
        sock.sendall(body)
    elif sent - len(head) < len(body):
        sock.sendall(memoryview(body)[sent - len(head):])


def end_tcp(sock: Any, *, server: bool) -> None:
    """A connection is done with TCP: a server closes it (RFC 6455 §7.1.1: the server closes
    first), a client half-closes and waits for the server's close. TLS says close_notify
    first."""
    if isinstance(sock, TlsSocket):
        sock.close_notify()
    shutdown(sock, write_only=not server)


def shutdown(sock: Any, *, write_only: bool = False) -> None:
    """``shutdown`` ignoring errors: wakes a worker blocked in ``recv`` / ``connect`` on it."""
    how = 1 if write_only else 2  # SHUT_WR / SHUT_RDWR (the same in every socket module)
    with contextlib.suppress(OSError, AttributeError, ValueError):
        sock.shutdown(how)


def open_client(rt: Runtime, connection: ClientConnection, *, url: str, host: str, port: int,
                secure: bool, ssl: _ssl.SSLContext | None,
                timeout: float | None) -> tuple[Any, list[ConnectionEvent]]:
    """Connect and run ``connection``'s opening handshake, all within ``timeout``.

    Returns the socket and the connection's first events: ``Opened`` (then the socket is the
    caller's) or ``Refused`` (the socket is closed). Failures raise ``OSError`` s naming the
    address; the socket is closed. A timeout raises
    :func:`~hyco_proto.errors.open_timeout_failure`'s ``TimeoutError`` (the stage it ran out
    in, and ``url`` without its query).
    """
    deadline = None if timeout is None else rt.monotonic() + timeout
    try:
        sock = open_connection(rt, host, port, secure=secure, ssl=ssl, timeout=timeout)
    except TimeoutError as exc:
        raise open_timeout_failure(host=host, port=port, url=url, timeout=timeout,
                                   connected=False) from exc.__cause__
    try:
        events = exchange(rt, sock, connection, deadline, "WebSocket upgrade")
    except TimeoutError as exc:
        sock.close()
        raise open_timeout_failure(host=host, port=port, url=url, timeout=timeout,
                                   connected=True) from exc
    except (OSError, ValueError) as exc:
        sock.close()
        raise connect_failure(exc, host=host, port=port, secure=secure, timeout=timeout) from exc
    first = events[0]
    if isinstance(first, HandshakeFailed):
        sock.close()
        raise handshake_failure(first, host=host, port=port, secure=secure)
    if isinstance(first, Refused):
        with contextlib.suppress(OSError):
            sock.close()
    return sock, events

