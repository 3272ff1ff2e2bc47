"""A small HTTP/1.1 server for the ``relayed_request`` tests (h11 on plain sockets, one thread
per connection, 127.0.0.1 on a free port), standing in for the relay until it relays HTTP.

For each request it records what arrived (:class:`Received`: method, target, headers, whether
the body came chunked, how many chunks, its length and SHA-256, whether it was complete), then
calls the test's ``handler(received, responder)``, which answers through :class:`Responder`
(``head``, ``send``, ``end``, or ``raw`` bytes). Bodies are hashed as they arrive, never kept
whole beyond ``KEEP`` bytes. ``bytes_in`` is the body bytes read so far (for gates in tests).
Every wait is bounded; ``close()`` joins every thread it started.
"""

from __future__ import annotations

import contextlib
import hashlib
import http
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import h11

WAIT = 10.0
#: Request bodies up to this size are kept in ``Received.body``.
KEEP = 1024 * 1024


@dataclass
class Received:
    method: str = ""
    target: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunked: bool = False  # the body came with Transfer-Encoding: chunked
    chunks: int = 0  # chunks seen (chunked bodies)
    length: int = 0
    sha256: str = ""
    complete: bool = False  # the body ended as its framing said
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[-1] if values else None


class Responder:
    """Answers one request through h11 (or with raw bytes)."""

    def __init__(self, sock: Any, conn: h11.Connection) -> None:
        self.sock = sock
        self.conn = conn

    def head(self, status: int, headers: Iterable[tuple[str, str]] = (),
             reason: str | None = None) -> None:
        if reason is None:
            reason = http.HTTPStatus(status).phrase
        self._write(h11.Response(status_code=status, reason=reason.encode(),
                                 headers=list(headers)))

    def send(self, data: bytes) -> None:
        self._write(h11.Data(data=data))

    def end(self) -> None:
        self._write(h11.EndOfMessage())

    def raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def wait_for_close(self, timeout: float = WAIT) -> bool:
        """Read until the client closes (True) or ``timeout`` passes (False)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except OSError:
            pass
        return True

    def _write(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            self.sock.sendall(data)


Handler = Callable[[Received, Responder], None]


class HttpTestServer:
    """``with HttpTestServer(handler) as server:`` — ``server.url("/myhc")``, ``received``."""

    def __init__(self, handler: Handler, *, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.received: list[Received] = []
        self.errors: list[BaseException] = []
        self.bytes_in = 0
        self.bad_requests = 0
        self.stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, name="http-test-accept",
                                           daemon=True)
        self._accepting.start()

    def url(self, path: str = "/myhc", scheme: str | None = None) -> str:
        scheme = scheme or ("https" if self.tls else "http")
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(sock,), name="http-test-conn",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        sock: Any = raw
        try:
            sock.settimeout(WAIT)
            if self.tls is not None:
                sock = self.tls.wrap_socket(raw, server_side=True)
            conn = h11.Connection(h11.SERVER)
            received = Received()
            digest = hashlib.sha256()
            kept: list[bytes] = []
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError:
                    # Not HTTP (a TLS ClientHello on a plain port): answer like a web server.
                    self.bad_requests += 1
                    sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
                    return
                if event is h11.NEED_DATA:
                    conn.receive_data(sock.recv(65536))
                    continue
                if isinstance(event, h11.Request):
                    received.method = event.method.decode()
                    received.target = event.target.decode()
                    received.headers = [(k.decode(), v.decode())
                                        for k, v in event.headers.raw_items()]
                    te = received.header("transfer-encoding") or ""
                    received.chunked = "chunked" in te.lower()
                    self.received.append(received)
                elif isinstance(event, h11.Data):
                    data = bytes(event.data)
                    digest.update(data)
                    received.length += len(data)
                    self.bytes_in += len(data)
                    received.chunks += int(event.chunk_end)
                    if received.length <= KEEP:
                        kept.append(data)
                elif isinstance(event, h11.EndOfMessage):
                    received.complete = True
                    break
                else:  # ConnectionClosed
                    break
            received.sha256 = digest.hexdigest()
            received.body = b"".join(kept) if received.length <= KEEP else b""
            self.handler(received, Responder(sock, conn))
        except Exception as exc:  # the test looks at server.errors
            self.errors.append(exc)
        finally:
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_RDWR)
            raw.close()

    def close(self) -> None:
        self.stop.set()
        self._accepting.join(WAIT)
        self._listener.close()
        deadline = time.monotonic() + WAIT
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not [t for t in self._threads if t.is_alive()], "server threads left running"

    def __enter__(self) -> HttpTestServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for(check: Callable[[], object], timeout: float = WAIT) -> bool:
    """Poll ``check`` until true (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True
