"""What the ASGI and WSGI bridges (:mod:`.asgi`, :mod:`.wsgi`) share: where the listener's
senders call it, and how a relayed request's target becomes the application's path.

A sender of relayed HTTP calls ``http(s)://{namespace}/{hc}/{suffix}?{query}``; the listener
sees ``requestTarget`` ``/{hc}/{suffix}?{query}`` (``sb-hc-*`` parameters removed by the relay).
The bridges give the application ``/{suffix}`` as its path (``"/"`` when there is none) with an
empty root path / ``SCRIPT_NAME``: an application written for the root of a web server routes
the same way behind a hybrid connection.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
import traceback
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

from ..drivers.http import RESERVED_STATUSES
from ..uris import parse_relay_uri

__all__ = ["AppEndpoint", "app_kind", "load_app", "relay_status", "split_path", "wsgi_path"]


def relay_status(status: int, log: logging.Logger, method: str, target: str) -> int:
    """The application's status, except 502 / 504, which Azure Relay keeps for itself: those
    go out as 500 (with the application's headers and body), and the log says so."""
    if status in RESERVED_STATUSES:
        log.warning("the application answered %s %s with %d, which Azure Relay reserves for "
                    "the relay (%s); sent as 500", method, target, status,
                    RESERVED_STATUSES[status])
        return 500
    return status


@dataclass(frozen=True, slots=True)
class AppEndpoint:
    """Where a listen URI's senders call: ``http`` / ``https`` (for ``ws`` / ``wss``), the
    relay's host and port (the default port of the scheme when the URI has none) and the
    hybrid connection's name."""

    scheme: str
    host: str
    port: int
    hybrid_connection: str

    @classmethod
    def from_listen_uri(cls, listen_uri: str) -> AppEndpoint:
        """Raises ``ValueError`` for a URI that is not a relay listen URI."""
        address = parse_relay_uri(listen_uri)
        secure = address.scheme in ("wss", "https", "sb")
        port = address.port if address.port is not None else (443 if secure else 80)
        return cls("https" if secure else "http", address.host, port,
                   address.hybrid_connection)

    @property
    def ws_scheme(self) -> str:
        return "wss" if self.scheme == "https" else "ws"

    @property
    def authority(self) -> str:
        """``host[:port]`` (IPv6 in brackets; the port only when it is not the default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def send_url(self) -> str:
        """``http(s)://{namespace}/{hc}``: the URL senders call (plus any suffix and query)."""
        return f"{self.scheme}://{self.authority}/{self.hybrid_connection}"


def split_path(path: str) -> tuple[str, bytes]:
    """``(decoded, raw)`` of a request path as the relay passed it (percent-encoded): the path
    with ``%XX`` sequences decoded as UTF-8 (invalid sequences become U+FFFD, as most servers
    do), and the path's bytes as sent."""
    return unquote(path, encoding="utf-8", errors="replace"), path.encode("latin-1", "replace")


def wsgi_path(path: str) -> str:
    """A request path as WSGI's ``PATH_INFO``: percent-decoded bytes, read as latin-1 (PEP 3333:
    the application re-encodes to latin-1 and decodes as it sees fit)."""
    return unquote_to_bytes(path).decode("latin-1")


def load_app(spec: str, *, app_dir: str | None = ".") -> object:
    """The object ``module:attribute`` names (``attribute`` may be dotted: ``pkg.mod:obj.app``).

    ``app_dir`` (default: the current directory) goes first on ``sys.path`` while importing,
    as ``python -m`` would have it. Raises ``ValueError`` saying what is wrong.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{spec!r}: expected 'module:attribute', e.g. 'myapp:app'")
    if app_dir is not None and app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name is not None and (module_name == exc.name
                                       or module_name.startswith(exc.name + ".")):
            raise ValueError(f"cannot import module {module_name!r}: {exc}") from None
        # A module the application itself imports is missing: say which, and where.
        raise ValueError(f"importing {module_name!r} failed: {_raised_at(exc)}") from exc
    except (Exception, SystemExit) as exc:  # its own code failed, or exited (argparse)
        raise ValueError(f"importing {module_name!r} failed: {_raised_at(exc)}") from exc
    obj: object = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from None
    return obj


def _raised_at(exc: BaseException) -> str:
    """``Type: message (file, line N)``: the exception and where it was raised (a syntax
    error: where the bad line is), on one line."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{type(exc).__name__}: {exc.msg} ({exc.filename}, line {exc.lineno})"
    frames = traceback.extract_tb(exc.__traceback__)
    # The deepest frame outside the import machinery (importlib's frames are "<frozen ...>").
    for frame in reversed(frames):
        if not frame.filename.startswith("<frozen "):
            return f"{text} ({frame.filename}, line {frame.lineno})"
    return text


def app_kind(app: Any) -> str | None:
    """``"asgi"`` or ``"wsgi"`` when the callable's shape says so, else None (unknown).

    ASGI 3 applications are coroutine functions (or objects whose ``__call__`` is one) of
    ``(scope, receive, send)``; WSGI ones plain callables of ``(environ, start_response)``.
    """
    if not callable(app):
        return None
    call = app if inspect.isfunction(app) or inspect.ismethod(app) else app.__call__
    if inspect.iscoroutinefunction(call):
        return "asgi"
    try:
        params = [p for p in inspect.signature(call).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return None
    return "wsgi" if len(params) == 2 else None
