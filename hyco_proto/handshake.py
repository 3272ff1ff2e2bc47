"""Sans-IO WebSocket opening handshake (RFC 6455 §4) on top of h11.

``ClientHandshake`` writes the upgrade request and checks the server's answer; ``ServerHandshake``
parses a request, refuses bad ones with the right HTTP status, and writes the 101 (or any
rejection) for its owner. Both hand over to ``WebSocketConnection`` with ``trailing_data``: bytes
that arrived right behind the HTTP message belong to the frame layer and are never lost.

We never negotiate extensions: a client offers none and fails a 101 that selects one, a server
never answers with ``Sec-WebSocket-Extensions`` (so it also ignores junk such as the header named
``0`` that hyco-ws sends on rendezvous, whose value looks like an extension offer).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from ._syntax import is_token
from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "WEBSOCKET_GUID",
    "ClientHandshake",
    "HandshakeAccepted",
    "HandshakeRejected",
    "HandshakeRequest",
    "RefusedRequest",
    "ServerHandshake",
    "WebSocketURL",
    "accept_token",
    "parse_ws_url",
]

#: RFC 6455 §1.3: appended to the client's key before hashing.
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

Headers = Sequence[tuple[str, str]] | Mapping[str, str]

_BAD_VALUE_RE = re.compile(r"[\x00\r\n]")

# Headers the handshake writes itself; callers may not pass them as extra headers.
_CLIENT_OWNED = frozenset((
    "upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
    "sec-websocket-protocol", "sec-websocket-extensions",
))
_SERVER_OWNED = frozenset((
    "upgrade", "connection", "sec-websocket-accept", "sec-websocket-protocol",
    "sec-websocket-extensions",
))
_BODY_HEADERS = frozenset(("content-length", "transfer-encoding"))

#: The start of every 101 ``ServerHandshake.accept`` writes, up to the accept token.
_ACCEPT_HEAD = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: ")

#: Rejection bodies kept by ``ClientHandshake`` are cut at this size.
MAX_REJECTION_BODY = 65536


def accept_token(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key``: base64(SHA-1(key + GUID)) (§4.2.2)."""
    return _accept_bytes(key).decode("ascii")


def _accept_bytes(key: str) -> bytes:
    """:func:`accept_token` as bytes (what the 101 carries)."""
    digest = hashlib.sha1((key + WEBSOCKET_GUID).encode("ascii")).digest()
    return binascii.b2a_base64(digest, newline=False)


#: The canonical base64 form of 16 bytes (the last character before ``==`` carries 2 bits):
#: every such key is valid, without decoding it; anything else is decoded.
_CANONICAL_KEY = re.compile(r"[A-Za-z0-9+/]{21}[AQgw]==")


def _key_is_valid(key: str) -> bool:
    """A key is the base64 encoding of 16 bytes (§4.1, §4.2.1)."""
    if _CANONICAL_KEY.fullmatch(key) is not None:
        return True
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return False
    return len(raw) == 16


def _header_items(headers: Headers) -> list[tuple[str, str]]:
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2
                and isinstance(item[0], str) and isinstance(item[1], str)):
            raise LocalProtocolError(
                f"headers must be (name, value) pairs of str or a str->str mapping, got {item!r}"
            )
        name, value = item
        if not is_token(name):
            raise LocalProtocolError(f"invalid header name {name!r}: use an HTTP token")
        if _BAD_VALUE_RE.search(value):
            raise LocalProtocolError(
                f"header {name!r} has CR, LF or NUL in its value; remove them"
            )
    return items


def _tokens(values: Sequence[str]) -> list[str]:
    """Comma-separated list values of every occurrence of a header, trimmed, empties dropped."""
    return [t.strip() for v in values for t in v.split(",") if t.strip()]


def _has_token(values: Sequence[str] | None, token: str) -> bool:
    """Whether ``token`` (lower case) is one of ``_tokens(values)``, in any case."""
    if not values:
        return False
    if len(values) == 1 and "," not in values[0]:  # one value, one token (the usual)
        return values[0].strip().lower() == token
    return any(t.strip().lower() == token for v in values for t in v.split(","))


def _get_all(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name]


def _decode_headers(raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    # Original case kept (h11 ``raw_items``); latin-1 maps every byte of an HTTP/1.1 header.
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]


def _format_response(status: int, reason: str, headers: Sequence[tuple[str, str]],
                     body: bytes = b"") -> bytes:
    if _BAD_VALUE_RE.search(reason):
        raise LocalProtocolError("reason phrase may not contain CR, LF or NUL")
    phrase = reason.encode("latin-1", "replace")
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, phrase)]
    for name, value in headers:
        lines.append(f"{name}: {value}\r\n".encode("latin-1", "replace"))
    lines.append(b"\r\n")
    return b"".join(lines) + body


def _default_reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


# --------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """A valid WebSocket upgrade request, ready for ``ServerHandshake.accept`` or ``reject``."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    subprotocols: list[str]
    key: str
    version: str


@dataclass(frozen=True, slots=True)
class RefusedRequest:
    """A complete HTTP request that ``ServerHandshake`` refused as a WebSocket upgrade (426, 405,
    400 for a bad key or version). A server may still answer plain HTTP routes from it (the relay's
    status endpoint) instead of sending ``ServerHandshake.rejection``."""

    method: str
    target: str
    headers: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class HandshakeAccepted:
    """The server switched protocols; ``trailing_data`` goes to ``WebSocketConnection``."""

    subprotocol: str | None
    headers: list[tuple[str, str]]
    trailing_data: bytes


@dataclass(frozen=True, slots=True)
class HandshakeRejected:
    """The server answered with something other than 101. For the relay, ``reason`` is its
    status description (with the ``TrackingId``)."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


# --------------------------------------------------------------------------------- URLs


@dataclass(frozen=True, slots=True)
class WebSocketURL:
    """A ``ws://`` / ``wss://`` URL taken apart for connecting."""

    secure: bool
    host: str  # for connecting: no brackets around IPv6 literals
    port: int
    host_header: str  # the ``Host`` value: port only when it is not the scheme's default
    target: str  # path and query, at least "/"

    @property
    def scheme(self) -> str:
        """``"wss"`` or ``"ws"``."""
        return "wss" if self.secure else "ws"

    @property
    def path(self) -> str:
        """The path part of ``target`` (at least ``"/"``)."""
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        """The query part of ``target``, without ``?`` (``""`` when there is none)."""
        return self.target.partition("?")[2]

    @property
    def url(self) -> str:
        """The URL again, normalised: lower-case scheme and host, no default port."""
        return f"{self.scheme}://{self.host_header}{self.target}"


def parse_ws_url(url: str, *, what: str = "WebSocket URL") -> WebSocketURL:
    """Split a WebSocket URL (RFC 6455 §3).

    Raises ``ValueError`` for another scheme, a missing host, ``user:password@``, a bad port or
    a ``#fragment``; the message starts with ``what`` (e.g. ``"send address"``) so it names the
    argument the caller passed.
    """
    if not isinstance(url, str):
        raise TypeError(f"{what} must be a str, not {type(url).__name__}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise ValueError(f"{what} must be a ws:// or wss:// URL, not {url!r}")
    if not parts.hostname:
        raise ValueError(f"{what} {url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{what} may not carry user:password@; send credentials in headers "
                         "(for the relay: pass a token)")
    if parts.fragment or url.endswith("#"):
        raise ValueError(f"{what} {url!r} must not have a #fragment (RFC 6455 §3)")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{what} {url!r} has an invalid port ({exc})") from None
    if port == 0:
        raise ValueError(f"{what} {url!r} has an invalid port (0)")
    secure = scheme == "wss"
    default = 443 if secure else 80
    if port is None:
        port = default
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return WebSocketURL(secure, host, port, host_header, target)


# --------------------------------------------------------------------------------- client


class ClientHandshake:
    """The client side: ``data_to_send()`` is the upgrade request; feed the server's bytes to
    ``receive_data`` (``b""`` for EOF) and call ``next_event()`` until it is not ``None``.

    ``next_event`` raises ``RemoteProtocolError`` when the server's answer is not valid HTTP or is
    a 101 that breaks RFC 6455 §4.1 (wrong accept token, missing Upgrade/Connection, a subprotocol
    we did not offer, any extension).
    """

    def __init__(
        self,
        host: str,
        target: str,
        *,
        subprotocols: Sequence[str] = (),
        headers: Headers = (),
        key: bytes | None = None,
    ) -> None:
        if not target.startswith("/"):
            raise LocalProtocolError(f"target must start with '/', got {target!r}")
        if isinstance(subprotocols, str):
            raise LocalProtocolError("subprotocols is a sequence of names, not one str")
        for proto in subprotocols:
            if not is_token(proto):
                raise LocalProtocolError(f"invalid subprotocol name {proto!r}: use an HTTP token")
        self.host = host
        self.target = target
        self.subprotocols = list(subprotocols)
        if key is None:
            key = os.urandom(16)
        self.key = self._encode_key(key)
        self.expected_accept = accept_token(self.key)
        #: Set by ``from_url``: where to connect and whether to use TLS.
        self.url: WebSocketURL | None = None

        extra = _header_items(headers)
        out: list[tuple[str, str]] = []
        if not any(k.lower() == "host" for k, _ in extra):
            out.append(("Host", host))
        out += [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", self.key),
            ("Sec-WebSocket-Version", "13"),
        ]
        if self.subprotocols:
            out.append(("Sec-WebSocket-Protocol", ", ".join(self.subprotocols)))
        for name, value in extra:
            if name.lower() in _CLIENT_OWNED:
                raise LocalProtocolError(
                    f"header {name!r} is written by the handshake itself; "
                    "use the subprotocols argument for Sec-WebSocket-Protocol"
                )
            out.append((name, value))
        self.request_headers = out

        self._h11 = h11.Connection(h11.CLIENT)
        try:
            request = self._h11.send(h11.Request(method="GET", target=target, headers=out))
            request_end = self._h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise LocalProtocolError(f"cannot build the upgrade request: {exc}") from exc
        self._to_send = (request or b"") + (request_end or b"")
        self._result: HandshakeAccepted | HandshakeRejected | None = None
        self._error: RemoteProtocolError | None = None
        self._rejection: h11.Response | None = None
        self._body = bytearray()
        self._heard = False  # any byte of the answer

    @staticmethod
    def _encode_key(key: bytes) -> str:
        if len(key) == 16:
            return base64.b64encode(key).decode("ascii")
        try:
            text = key.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        if _key_is_valid(text):
            return text
        raise LocalProtocolError(
            "key must be 16 random bytes (or their base64 form); leave it None to generate one"
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        subprotocols: Sequence[str] = (),
        headers: Headers = (),
        key: bytes | None = None,
    ) -> ClientHandshake:
        """Build the handshake for a ``ws://host[:port]/path?query`` or ``wss://`` URL;
        ``.url`` tells the caller where to connect and whether to use TLS."""
        parsed = parse_ws_url(url)
        hs = cls(parsed.host_header, parsed.target, subprotocols=subprotocols,
                 headers=headers, key=key)
        hs.url = parsed
        return hs

    def data_to_send(self) -> bytes:
        """The upgrade request, once; ``b""`` afterwards."""
        data, self._to_send = self._to_send, b""
        return data

    def receive_data(self, data: bytes) -> None:
        """Feed the server's bytes; ``b""`` means the server closed the connection."""
        if data:
            self._heard = True
        if self._result is not None and isinstance(self._result, HandshakeAccepted):
            # Late bytes after the 101 still belong to the frame layer.
            self._result = HandshakeAccepted(self._result.subprotocol, self._result.headers,
                                             self._result.trailing_data + data)
            return
        self._h11.receive_data(data)

    def next_event(self) -> HandshakeAccepted | HandshakeRejected | None:
        """``None`` until the answer is complete; then the same event on every call."""
        if self._error is not None:
            raise self._error
        if self._result is not None:
            return self._result
        try:
            self._result = self._advance()
        except RemoteProtocolError as exc:
            self._error = exc
            raise
        return self._result

    def _advance(self) -> HandshakeAccepted | HandshakeRejected | None:
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                if self._rejection is not None:
                    # The rejection's body was cut short: report what we have.
                    return self._rejected()
                if not self._heard:
                    raise RemoteProtocolError(
                        "the server closed the connection without answering the WebSocket "
                        "upgrade", status_hint=502) from exc
                raise RemoteProtocolError(
                    f"invalid HTTP response to the WebSocket upgrade: {exc}", status_hint=502
                ) from exc
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return None
            if isinstance(event, h11.InformationalResponse):
                if event.status_code != 101:
                    continue  # e.g. 100 Continue: not the answer yet
                return self._accepted(event)
            if isinstance(event, h11.Response):
                self._rejection = event
                continue
            if isinstance(event, h11.Data):
                room = MAX_REJECTION_BODY - len(self._body)
                self._body += event.data[:room]
                if len(self._body) >= MAX_REJECTION_BODY:
                    return self._rejected()
                continue
            if isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                if self._rejection is not None:
                    return self._rejected()
                raise RemoteProtocolError(
                    "the server closed the connection without answering the WebSocket upgrade",
                    status_hint=502,
                )

    def _rejected(self) -> HandshakeRejected:
        response = self._rejection
        assert response is not None
        return HandshakeRejected(
            response.status_code,
            response.reason.decode("latin-1"),
            _decode_headers(response.headers.raw_items()),
            bytes(self._body),
        )

    def _accepted(self, response: h11.InformationalResponse) -> HandshakeAccepted:
        headers = _decode_headers(response.headers.raw_items())

        def fail(why: str) -> RemoteProtocolError:
            return RemoteProtocolError(f"invalid 101 response: {why} (RFC 6455 §4.1)",
                                       status_hint=502)

        upgrade = _tokens(_get_all(headers, "upgrade"))
        if [u.lower() for u in upgrade] != ["websocket"]:
            raise fail(f"Upgrade must be 'websocket', got {upgrade!r}")
        if "upgrade" not in (t.lower() for t in _tokens(_get_all(headers, "connection"))):
            raise fail("Connection header does not contain 'Upgrade'")
        accept = _get_all(headers, "sec-websocket-accept")
        if accept != [self.expected_accept]:
            raise fail(f"Sec-WebSocket-Accept is {accept!r}, expected {self.expected_accept!r}")
        extensions = _tokens(_get_all(headers, "sec-websocket-extensions"))
        if extensions:
            raise fail(f"the server selected extensions {extensions!r}; we offered none")
        protocols = _tokens(_get_all(headers, "sec-websocket-protocol"))
        subprotocol: str | None = None
        if protocols:
            if len(protocols) > 1:
                raise fail(f"the server selected several subprotocols {protocols!r}")
            if protocols[0] not in self.subprotocols:
                raise fail(f"the server selected subprotocol {protocols[0]!r}, "
                           f"which was not offered ({self.subprotocols!r})")
            subprotocol = protocols[0]
        trailing, _ = self._h11.trailing_data
        return HandshakeAccepted(subprotocol, headers, bytes(trailing))


# --------------------------------------------------------------------------------- server


class ServerHandshake:
    """The server side: feed the client's bytes, call ``next_event()``.

    ``next_event()`` returns ``None`` while the request is incomplete, then the
    ``HandshakeRequest`` (answer it with ``accept()`` or ``reject()``). A request that is not a
    valid WebSocket upgrade is refused here: ``next_event()`` stays ``None`` and ``rejection`` holds
    the response to send before closing TCP (400 malformed or bad key, 405 not GET, 426 not an
    upgrade or wrong version, 431 headers too big); ``error`` says why.
    """

    # Starting values, on the class (immutable ones only): one handshake per connection, most
    # never change half of them (issue 14, rendezvous per second).
    # Made when bytes come (receive_data): validate() / validate_head() never need it.
    _parser: h11.Connection | None = None
    request: HandshakeRequest | None = None
    #: Response bytes when the handshake refused the request by itself.
    rejection: bytes | None = None
    #: HTTP status of ``rejection``.
    rejection_status: int | None = None
    #: Why the request was refused, or the client left before finishing it.
    error: RemoteProtocolError | None = None
    #: The complete request behind ``rejection`` when it was parseable HTTP but not a valid
    #: upgrade (None for malformed or oversized requests, and before a request completes).
    refused_request: RefusedRequest | None = None
    #: (method, target, headers) of the request being checked, for ``refused_request``.
    _candidate: tuple[str, str, list[tuple[str, str]]] | None = None
    #: Bytes received after the request: the first WebSocket frames. After ``accept()``, pass
    #: them on: ``WebSocketConnection(Role.SERVER, trailing_data=handshake.trailing_data)``.
    trailing_data = b""
    _pending: h11.Request | None = None
    _answered = False
    _eof = False

    def __init__(self, *, max_header_size: int = 16384) -> None:
        self._max_header_size = max_header_size

    def receive_data(self, data: bytes) -> None:
        """Feed the client's bytes; ``b""`` means the client closed the connection."""
        if self.request is not None:
            self.trailing_data += data
            if not data:
                self._eof = True
            return
        if self.error is not None:
            return
        if not data:
            self._eof = True
        self._h11.receive_data(data)

    @property
    def _h11(self) -> h11.Connection:
        parser = self._parser
        if parser is None:
            parser = self._parser = h11.Connection(
                h11.SERVER, max_incomplete_event_size=self._max_header_size)
        return parser

    def next_event(self) -> HandshakeRequest | None:
        """The request once it is complete and valid; ``None`` otherwise (see ``rejection``)."""
        if self.request is not None or self.error is not None:
            return None
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                if self._eof:
                    # The client left mid-request: nobody to answer.
                    self.error = RemoteProtocolError(
                        f"the client closed the connection before finishing its request ({exc})")
                    return None
                status = exc.error_status_hint
                if status == 431:
                    why = "request headers too large"
                else:
                    why = f"malformed HTTP request: {exc}"
                self._refuse(status, why)
                return None
            if event is h11.NEED_DATA:
                if self._eof:
                    self.error = RemoteProtocolError(
                        "the client closed the connection before finishing its request")
                return None
            if isinstance(event, h11.Request):
                self._pending = event
                continue
            if isinstance(event, h11.Data):
                if event.data:
                    self._refuse(400, "a WebSocket upgrade request has no body")
                    return None
                continue
            if isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                break
            if isinstance(event, h11.ConnectionClosed):
                self.error = RemoteProtocolError(
                    "the client closed the connection before finishing its request")
                return None
        request = self._pending
        assert request is not None
        # h11 only bounds *incomplete* heads; a big head that arrives at once is checked here.
        size = len(request.method) + len(request.target) + 12 + sum(
            len(k) + len(v) + 4 for k, v in request.headers.raw_items())
        if size > self._max_header_size:
            self._refuse(431, "request headers too large")
            return None
        trailing, _ = self._h11.trailing_data
        self.trailing_data = bytes(trailing)
        return self._validate(request)

    def validate(self, request: h11.Request, trailing_data: bytes = b"") -> HandshakeRequest | None:
        """Check a request head another parser already read (a server's front door that routes
        plain HTTP and upgrades on one port). Same outcome as :meth:`next_event`: the
        ``HandshakeRequest``, or ``None`` with ``rejection`` set; ``trailing_data`` is what came
        after the head (the first WebSocket frames)."""
        if self.request is not None or self._answered:
            raise LocalProtocolError("validate() checks one request, before it is answered")
        size = len(request.method) + len(request.target) + 12 + sum(
            len(k) + len(v) + 4 for k, v in request.headers.raw_items())
        if size > self._max_header_size:
            self._refuse(431, "request headers too large")
            return None
        self.trailing_data = bytes(trailing_data)
        return self._validate(request)

    def validate_head(self, method: str, target: str, http_version: str,
                      headers: list[tuple[str, str]], trailing_data: bytes = b"", *,
                      fields: Mapping[str, list[str]] | None = None,
                      size_at_most: int | None = None,
                      ) -> HandshakeRequest | None:
        """:meth:`validate` for a head already decoded (latin-1, header names as sent, values
        without surrounding whitespace) by a parser as strict as h11: the service's front
        door reads plain upgrade requests without h11. Same checks, same outcome.

        ``fields``: the values of ``headers`` by lower-case name, in order, when the parser
        already has them — every ``Upgrade``, ``Connection`` and ``Sec-WebSocket-*`` header
        at least (the only ones looked up). ``size_at_most``: a bound the parser knows for the
        head's size as counted here (request line and header lines with CRLF, values without
        surrounding whitespace); at or under the limit, the size is not counted again."""
        if self.request is not None or self._answered:
            raise LocalProtocolError("validate() checks one request, before it is answered")
        if size_at_most is None or size_at_most > self._max_header_size:
            size = (len(method) + len(target) + 12 + 4 * len(headers)
                    + sum([len(k) + len(v) for k, v in headers]))
        else:
            size = size_at_most
        if size > self._max_header_size:
            self._refuse(431, "request headers too large")
            return None
        self.trailing_data = bytes(trailing_data)
        return self._check(method, target, http_version, headers, fields)

    def _validate(self, request: h11.Request) -> HandshakeRequest | None:
        return self._check(request.method.decode("ascii"), request.target.decode("latin-1"),
                           request.http_version.decode("ascii"),
                           _decode_headers(request.headers.raw_items()))

    def _check(self, method: str, target: str, http_version: str,
               headers: list[tuple[str, str]],
               fields: Mapping[str, list[str]] | None = None) -> HandshakeRequest | None:
        # Kept for ``refused_request`` should any check below refuse the upgrade.
        self._candidate = (method, target, headers)
        if method != "GET":
            self._refuse(405, f"a WebSocket upgrade uses GET, not {method}", [("Allow", "GET")])
            return None
        if http_version != "1.1":
            self._refuse(400, "a WebSocket upgrade needs HTTP/1.1")
            return None
        if fields is None:
            # One pass over the headers (names compare case-insensitively), not one per name.
            found: dict[str, list[str]] = {}
            for name, value in headers:
                found.setdefault(name.lower(), []).append(value)
            fields = found
        if (not _has_token(fields.get("upgrade"), "websocket")
                or not _has_token(fields.get("connection"), "upgrade")):
            self._refuse(426, "expected a WebSocket upgrade (Upgrade: websocket, "
                         "Connection: Upgrade)",
                         [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                          ("Sec-WebSocket-Version", "13")])
            return None
        versions = fields.get("sec-websocket-version", [])
        version = versions[0].strip() if len(versions) == 1 else ", ".join(versions)
        if version != "13":
            # §4.2.2: answer an unsupported version with 426 and the versions we speak.
            self._refuse(426, f"unsupported Sec-WebSocket-Version {version!r}; this server "
                         "speaks 13", [("Sec-WebSocket-Version", "13")])
            return None
        keys = fields.get("sec-websocket-key", [])
        key = keys[0].strip() if len(keys) == 1 else ""
        if not _key_is_valid(key):
            self._refuse(400, "Sec-WebSocket-Key missing, repeated, or not the base64 form of "
                         "16 bytes (RFC 6455 §4.2.1)")
            return None
        offered = fields.get("sec-websocket-protocol")
        # (method, target, headers, subprotocols, key, version): positional, cheaper than
        # keywords for a frozen dataclass made per upgrade.
        self.request = HandshakeRequest(method, target, headers,
                                        _tokens(offered) if offered else [], key, version)
        return self.request

    def _refuse(self, status: int, why: str,
                headers: Sequence[tuple[str, str]] = ()) -> None:
        self.error = RemoteProtocolError(why, status_hint=status)
        candidate = self._candidate
        self.refused_request = RefusedRequest(*candidate) if candidate is not None else None
        self.rejection = self._response(status, _default_reason(status), headers,
                                        why.encode("utf-8") + b"\n",
                                        content_type="text/plain; charset=utf-8")
        self.rejection_status = status
        self._answered = True

    @staticmethod
    def _response(status: int, reason: str, headers: Sequence[tuple[str, str]], body: bytes,
                  content_type: str | None = None) -> bytes:
        out = list(headers)
        if content_type is not None and body:
            out.append(("Content-Type", content_type))
        out.append(("Content-Length", str(len(body))))
        if not any(k.lower() == "connection" for k, _ in out):
            out.append(("Connection", "close"))
        return _format_response(status, reason, out, body)

    def accept(self, subprotocol: str | None = None, headers: Headers = ()) -> bytes:
        """The 101 response for the request; never selects an extension."""
        if self.request is None:
            raise LocalProtocolError("accept() needs a HandshakeRequest from next_event() first")
        if self._answered:
            raise LocalProtocolError("the request was already answered; accept() or reject() once")
        if subprotocol is not None and subprotocol not in self.request.subprotocols:
            raise LocalProtocolError(
                f"subprotocol {subprotocol!r} was not offered by the client "
                f"({self.request.subprotocols!r}); pick one of those or None"
            )
        if not headers:
            # The common answer, written directly: the bytes _format_response would write.
            self._answered = True
            head = _ACCEPT_HEAD + _accept_bytes(self.request.key)
            if subprotocol is not None:
                head += (b"\r\nSec-WebSocket-Protocol: "
                         + subprotocol.encode("latin-1", "replace"))
            return head + b"\r\n\r\n"
        extra = _header_items(headers)
        out = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
               ("Sec-WebSocket-Accept", accept_token(self.request.key))]
        if subprotocol is not None:
            out.append(("Sec-WebSocket-Protocol", subprotocol))
        for name, value in extra:
            if name.lower() in _SERVER_OWNED or name.lower() in _BODY_HEADERS:
                raise LocalProtocolError(
                    f"header {name!r} is written by the handshake itself (extensions are never "
                    "negotiated); use the subprotocol argument for Sec-WebSocket-Protocol"
                )
            out.append((name, value))
        self._answered = True
        return _format_response(101, "Switching Protocols", out)

    def reject(self, status: int, reason: str = "", headers: Headers = (),
               body: bytes = b"") -> bytes:
        """A complete non-101 response (``Content-Length`` added); close TCP after sending it.
        ``reason`` is the reason phrase (the relay puts its status description there)."""
        if not isinstance(status, int) or not 200 <= status <= 599:
            raise LocalProtocolError(
                f"reject() needs a final HTTP status 200-599, got {status!r}; use accept() for 101"
            )
        if self._answered and self.rejection is None:
            raise LocalProtocolError("the request was already answered; accept() or reject() once")
        if not isinstance(body, (bytes, bytearray)):
            raise LocalProtocolError(f"body must be bytes, not {type(body).__name__}")
        extra = _header_items(headers)
        for name, _ in extra:
            if name.lower() in _BODY_HEADERS:
                raise LocalProtocolError(
                    f"header {name!r} is computed from the body; do not pass it")
        data = self._response(status, reason or _default_reason(status), extra, bytes(body))
        self._answered = True
        return data
