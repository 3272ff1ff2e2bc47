"""Serve a WSGI application (PEP 3333) through Azure Relay Hybrid Connections, blocking.

::

    from hyco_proto.adapters.wsgi import serve
    serve(app, "wss://ns.servicebus.windows.net/$hc/myhc", token)     # until Ctrl-C

A threads :class:`~hyco_proto.adapters.threads.RelayedServer` listens on the hybrid connection;
each relayed HTTP request calls the application once, in the listener's worker for that
request (requests run concurrently: ``wsgi.multithread`` is true). Senders call
``https://{namespace}/{hc}/{path}``; the application sees ``SCRIPT_NAME`` ``""`` and
``PATH_INFO`` ``/{path}``. See docs/http-apps.md for the whole environ.

* ``wsgi.input`` streams the request body as the relay delivers it (read / readline /
  iteration); the relay sends no ``Content-Length``, so ``wsgi.input_terminated`` is true:
  read to the end. A read after the sender went away raises
  :class:`~hyco_proto.drivers.http.RequestCancelled`.
* The response goes out when the first non-empty body chunk is known (PEP 3333), whole when
  the application's iterable is done by then, else streamed chunk by chunk as the iterable
  yields; its ``close()`` is always called. ``write()`` works; what it writes is sent before
  the iterable's chunks (it does not bypass them).
* ``start_response`` may be called again with ``exc_info`` until the response has gone out;
  after that the exception is raised again, as PEP 3333 asks. An application that raises
  before its response went out answers 500.
* Relayed WebSocket senders are turned away (404) unless a ``connection`` hook is given.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol, TypeAlias

from ..drivers.decisions import Reject
from ..drivers.http import Response
from ..listener import ConnectionRequested
from ._apps import AppEndpoint, relay_status, wsgi_path
from .threads import RelayedServer

__all__ = ["WSGIApp", "WsgiBridge", "create_server", "serve"]

logger = logging.getLogger("hyco_proto.adapters.wsgi")

ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse: TypeAlias = Callable[..., Callable[[bytes], object]]
#: A WSGI application: ``def app(environ, start_response) -> iterable of bytes``.
WSGIApp: TypeAlias = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_FAILED = Response(500, [("Content-Type", "text/plain; charset=utf-8")],
                   b"Internal Server Error")
#: A response that declares a ``Content-Length`` up to this is collected and sent whole (the
#: relay's control channel takes whole responses up to 64 KiB).
WHOLE_LIMIT = 64 * 1024
_NO_WEBSOCKETS = Reject(404, "this listener serves a WSGI application: no WebSockets")


class _Request(Protocol):
    """What the bridge uses of the adapter's relayed request."""

    method: str
    target: str
    path: str
    query: str
    id: str
    has_body: bool

    @property
    def headers(self) -> Any: ...

    @property
    def remote_address(self) -> tuple[str, int]: ...

    def stream(self) -> Iterable[bytes]: ...


class _Input:
    """``wsgi.input``: the request body, read from the relay as the application asks."""

    def __init__(self, request: _Request) -> None:
        self._request = request
        self._chunks: Iterator[bytes] | None = None
        self._buffer = bytearray()
        self._eof = not request.has_body

    def _fill(self) -> bool:
        """One more chunk into the buffer; False at the end of the body."""
        if self._eof:
            return False
        if self._chunks is None:
            self._chunks = iter(self._request.stream())
        for chunk in self._chunks:
            if chunk:
                self._buffer += chunk
                return True
        self._eof = True
        return False

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            return self._take(len(self._buffer))
        while len(self._buffer) < size and self._fill():
            pass
        return self._take(size)

    def read1(self, size: int = -1) -> bytes:
        """What is there (reading once if nothing is): at most ``size`` bytes."""
        if not self._buffer:
            self._fill()
        return self._take(len(self._buffer) if size < 0 else size)

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end >= 0:
                stop = end + 1
                break
            if 0 <= limit <= len(self._buffer):
                stop = limit
                break
            start = len(self._buffer)
            if not self._fill():
                stop = len(self._buffer)
                break
        if 0 <= limit < stop:
            stop = limit
        return self._take(stop)

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines, total = [], 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release: the request's body belongs to the listener."""


class _Call:
    """One request's ``start_response`` and ``write``."""

    def __init__(self) -> None:
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.sent = False  # the response head has gone to the adapter
        self.written: list[bytes] = []

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: ExcInfo | None = None) -> Callable[[bytes], object]:
        if exc_info is not None:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle (PEP 3333)
        elif self.status is not None:
            raise AssertionError("start_response called twice without exc_info")
        if not isinstance(status, str):
            raise TypeError(f"status must be a str like '200 OK', not {type(status).__name__}")
        if not isinstance(headers, list):
            raise TypeError(f"response headers must be a list of (name, value), not "
                            f"{type(headers).__name__}")
        self.status = status
        self.headers = list(headers)
        self.written.clear()  # a replaced response drops what the first one wrote
        return self.write

    def write(self, data: bytes) -> None:
        if self.status is None:
            raise AssertionError("write() before start_response()")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        if data:
            self.written.append(bytes(data))

    def content_length(self) -> int | None:
        """The ``Content-Length`` the application declared, if a valid one."""
        for name, value in self.headers:
            if name.lower() == "content-length":
                text = value.strip()
                return int(text) if text.isdigit() else None
        return None

    def take_written(self) -> list[bytes]:
        written, self.written = self.written, []
        return written

    def response(self, body: bytes | Iterable[bytes], request: _Request) -> Response:
        if self.status is None:
            raise AssertionError("the application never called start_response")
        code, _, reason = self.status.partition(" ")
        if not (len(code) == 3 and code.isdigit()):
            raise ValueError(f"status {self.status!r} does not start with a 3-digit code")
        status = relay_status(int(code), logger, request.method, request.target)
        if status != int(code):
            reason = ""
        response = Response(status, self.headers, body, reason.strip() or None)
        self.sent = True
        return response


def _close(result: object) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


class WsgiBridge:
    """A WSGI application as a relayed-request handler: ``bridge(request) -> Response``.

    ``environ(request)`` builds the environ alone (see docs/http-apps.md).
    """

    def __init__(self, app: WSGIApp, endpoint: AppEndpoint, *,
                 errors: Any = None) -> None:
        self.app = app
        self.endpoint = endpoint
        self.errors = errors

    def environ(self, request: _Request) -> dict[str, Any]:
        endpoint = self.endpoint
        target = request.target
        suffix = request.path + (f"?{request.query}" if request.query else "")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method.upper(),
            "SCRIPT_NAME": "",
            "PATH_INFO": wsgi_path(request.path),
            "QUERY_STRING": request.query,
            "RAW_URI": suffix,
            "REQUEST_URI": suffix,
            "SERVER_NAME": endpoint.host,
            "SERVER_PORT": str(endpoint.port),
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": endpoint.scheme,
            "wsgi.input": _Input(request),
            "wsgi.errors": self.errors if self.errors is not None else sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "hyco.request": request,
            "hyco.request_target": target,
        }
        host, port = request.remote_address
        if host:
            environ["REMOTE_ADDR"] = host
            environ["REMOTE_PORT"] = str(port)
        headers = request.headers
        items = headers.raw_items() if hasattr(headers, "raw_items") else headers.items()
        for name, value in items:
            key = name.upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[key] = value
                continue
            key = "HTTP_" + key
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ

    def __call__(self, request: _Request) -> Response:
        call = _Call()
        try:
            result = self.app(self.environ(request), call.start_response)
        except Exception:
            logger.exception("WSGI application failed on %s %s", request.method,
                             request.target)
            return _FAILED
        try:
            response = self._response(call, result, request)
        except Exception:
            logger.exception("WSGI application failed, or its response is unusable, on %s %s",
                             request.method, request.target)
            try:
                _close(result)
            except Exception:
                logger.exception("WSGI application: close() failed")
            return _FAILED
        return response

    def _response(self, call: _Call, result: Iterable[bytes], request: _Request) -> Response:
        """Whole when the body is known by the time its head may go (a list or tuple, or a
        small declared ``Content-Length`` reached), else streamed from the first non-empty
        chunk on (PEP 3333: the head waits for it)."""
        chunks = iter(result)
        known = isinstance(result, (list, tuple))  # in memory already: send it whole
        head: list[bytes] = []
        size = 0
        for chunk in chunks:
            if not isinstance(chunk, (bytes, bytearray, memoryview)):
                raise TypeError(f"the application's iterable yielded {type(chunk).__name__}, "
                                "not bytes")
            written = call.take_written()
            head.extend(written)
            size += sum(map(len, written))
            if chunk:
                head.append(bytes(chunk))
                size += len(chunk)
            if known or not size:
                continue
            length = call.content_length()
            if length is not None and length <= WHOLE_LIMIT:
                if size < length:
                    continue
                break  # all it declared: the rest (if any) is not sent (PEP 3333)
            return call.response(self._rest(head, chunks, result, call, request), request)
        head.extend(call.take_written())
        _close(result)
        body = b"".join(head)
        length = call.content_length()
        return call.response(body if length is None else body[:length], request)

    @staticmethod
    def _rest(head: list[bytes], chunks: Iterator[bytes], result: object, call: _Call,
              request: _Request) -> Iterator[bytes]:
        """The streamed body: what is known, then the iterable's chunks; ``close()`` at the
        end, however it comes (the adapter closes this generator when it stops early)."""
        try:
            yield from head
            for chunk in chunks:
                if call.written:
                    yield from call.take_written()
                if chunk:
                    yield bytes(chunk)
            yield from call.take_written()
        except GeneratorExit:
            raise
        except Exception:
            logger.exception("WSGI application failed while streaming its response to %s %s",
                             request.method, request.target)
            raise
        finally:
            _close(result)


def create_server(app: WSGIApp, listen_uri: str, token: Any,
                  **options: Any) -> RelayedServer:
    """A threads :class:`RelayedServer` (not started: ``with`` it, or ``start()``) whose
    relayed HTTP requests call ``app``. ``options``: :class:`RelayedServer` keywords;
    ``errors`` is the ``wsgi.errors`` stream (default ``sys.stderr``)."""
    if "request_handler" in options:
        raise TypeError("the WSGI application handles every request; pass no "
                        "'request_handler'")
    if not callable(app):
        raise TypeError(f"app must be a WSGI application (a callable), not "
                        f"{type(app).__name__}")
    bridge = WsgiBridge(app, AppEndpoint.from_listen_uri(listen_uri),
                        errors=options.pop("errors", None))
    if "connection" not in options and "headers" not in options:
        options["headers"] = _refuse_websockets
    return RelayedServer(listen_uri, token, request_handler=bridge, **options)


def _refuse_websockets(request: ConnectionRequested) -> Reject:
    return _NO_WEBSOCKETS


def serve(app: WSGIApp, listen_uri: str, token: Any, **options: Any) -> None:
    """Serve ``app`` on the hybrid connection, blocking, until the listener is closed from
    another thread, the relay ends it (its error is raised: e.g. the hybrid connection was
    deleted), or ``KeyboardInterrupt``; the listener is closed on the way out. Raises at once
    if the listener cannot start. ``options``: as for :func:`create_server`."""
    server = create_server(app, listen_uri, token, **options)
    with server:
        while not server.wait_closed(1.0):
            pass
        if server.error is not None:
            raise server.error
