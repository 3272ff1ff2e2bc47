"""Web PubSub endpoints, client URLs and connection strings (sans-IO).

- The *endpoint* is the service's ``http(s)://host[:port]``; it is the base of a token's
  audience. Clients connect to the ``ws(s)`` form of it (``http`` → ``ws``, ``https`` →
  ``wss``).
- A client URL has one of two forms, ``{ws}/client/hubs/{hub}`` or ``{ws}/client/?hub={hub}``,
  with ``access_token=<JWT>`` in the query (:func:`build_client_url`, :func:`parse_client_url`).
- Recovering a reliable connection reopens the *original* URL with ``awps_connection_id`` and
  ``awps_reconnection_token`` added, so the old ``access_token`` stays in the query
  (:func:`build_recovery_url`).
- A connection string is ``Endpoint=...;AccessKey=...;Version=1.0;`` (keys case-insensitive;
  an optional ``Port=`` is added to the endpoint, as the server SDKs do).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from ..uris import split_connection_string

__all__ = [
    "ACCESS_TOKEN",
    "CONNECTION_ID",
    "HUB_NAME_PATTERN",
    "RECONNECTION_TOKEN",
    "ClientUrl",
    "WebPubSubConnectionString",
    "build_client_url",
    "build_recovery_url",
    "client_audience",
    "client_endpoint",
    "format_connection_string",
    "normalize_endpoint",
    "parse_client_url",
    "parse_connection_string",
    "validate_hub_name",
]

#: Hub names the service accepts (REST path rule; the official emulator uses it too).
HUB_NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_`,.\[\]]{0,127}")

_HTTP_FOR = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_WS_FOR = {"http": "ws", "https": "wss"}
_CLIENT_PREFIX = "/client/hubs/"
#: Query parameters: the access token; the connection id and reconnection token of a recovery.
ACCESS_TOKEN = "access_token"
CONNECTION_ID = "awps_connection_id"
RECONNECTION_TOKEN = "awps_reconnection_token"
_SINGLE_PARAMS = ("hub", ACCESS_TOKEN, CONNECTION_ID, RECONNECTION_TOKEN)


def validate_hub_name(hub: str) -> str:
    """Return ``hub`` if it is a valid hub name, else raise ``ValueError``."""
    if not isinstance(hub, str) or HUB_NAME_PATTERN.fullmatch(hub) is None:
        raise ValueError(f"invalid hub name {hub!r}: expected a letter, then up to 127 letters, "
                         "digits or _`,.[]")
    return hub


def normalize_endpoint(endpoint: str) -> str:
    """The ``http(s)://host[:port]`` form of an endpoint, as the server SDKs use it.

    ``ws``/``wss`` are mapped to ``http``/``https``; scheme and host are lower-cased; a trailing
    ``/`` is dropped; a written port is kept (even a default one, as the SDKs keep it). A path,
    query, fragment or user info is a ``ValueError``.
    """
    if not isinstance(endpoint, str):
        raise TypeError(f"endpoint must be a str, not {type(endpoint).__name__}")
    try:
        parts = urlsplit(endpoint.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid endpoint {endpoint!r}: {exc}") from None
    scheme = _HTTP_FOR.get(parts.scheme.lower())
    host = parts.hostname
    if scheme is None or not host:
        raise ValueError(f"invalid endpoint {endpoint!r}: expected 'https://<name>.webpubsub."
                         "azure.com' or 'http://127.0.0.1:8080'")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"invalid endpoint {endpoint!r}: it must be scheme://host[:port] "
                         "without path, query or user info")
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


def client_endpoint(endpoint: str) -> str:
    """The ``ws(s)://host[:port]`` clients connect to for ``endpoint``."""
    http = normalize_endpoint(endpoint)
    scheme, rest = http.split("://", 1)
    return f"{_WS_FOR[scheme]}://{rest}"


def client_audience(endpoint: str, hub: str) -> str:
    """The ``aud`` of a client access token: ``http(s)://host[:port]/client/hubs/{hub}``.

    The hub keeps its case, as in the Python server SDK.
    """
    return normalize_endpoint(endpoint) + _CLIENT_PREFIX + validate_hub_name(hub)


def _q(text: str) -> str:
    return quote(text, safe="")


def build_client_url(endpoint: str, hub: str, *, access_token: str | None = None,
                     hub_in_query: bool = False) -> str:
    """``ws(s)://host/client/hubs/{hub}[?access_token=...]``.

    With ``hub_in_query``: ``ws(s)://host/client/?hub={hub}[&access_token=...]``. For the usual
    hub names and a JWT this is the URL the server SDKs return.
    """
    base = client_endpoint(endpoint)
    validate_hub_name(hub)
    if hub_in_query:
        url = f"{base}/client/?hub={_q(hub)}"
        sep = "&"
    else:
        url = f"{base}{_CLIENT_PREFIX}{_q(hub)}"
        sep = "?"
    if access_token is not None:
        if not isinstance(access_token, str) or not access_token:
            raise ValueError("access_token must be a non-empty string")
        url += f"{sep}{ACCESS_TOKEN}={_q(access_token)}"
    return url


@dataclass(frozen=True, slots=True)
class ClientUrl:
    """A parsed client URL or request target (:func:`parse_client_url`)."""

    hub: str
    #: True for ``/client/?hub=...``, False for ``/client/hubs/{hub}``.
    hub_in_query: bool
    access_token: str | None
    #: ``awps_connection_id`` and ``awps_reconnection_token`` of a recovery request.
    connection_id: str | None
    reconnection_token: str | None
    #: Every query parameter, decoded, in order (``webpubsub_mode``, ``group``, ...).
    query: tuple[tuple[str, str], ...]
    #: ``http(s)://host[:port]`` for a full URL; ``None`` for a bare request target.
    endpoint: str | None

    @property
    def is_recovery(self) -> bool:
        """Whether this asks to recover a connection (``awps_connection_id`` present)."""
        return self.connection_id is not None

    def get(self, name: str) -> str | None:
        """The first value of query parameter ``name``, if any."""
        return next((v for k, v in self.query if k == name), None)


def parse_client_url(url: str) -> ClientUrl:
    """Parse a client URL (``ws``, ``wss``, ``http`` or ``https``) or a request target
    (``/client/hubs/Hub1?access_token=...``), either endpoint form.

    The ``/client`` path is matched case-insensitively; a trailing ``/`` after the hub is
    allowed. ``ValueError`` for another path, an invalid hub name, or ``hub``, ``access_token``
    or an ``awps_*`` parameter given more than once or empty. In the path form a ``hub`` query
    parameter is not the hub; it stays in :attr:`ClientUrl.query`.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    endpoint: str | None = None
    if url.startswith("/"):
        path, _, query = url.partition("?")
        query = query.partition("#")[0]
    else:
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise ValueError(f"invalid client URL {url!r}: {exc}") from None
        endpoint = normalize_endpoint(f"{parts.scheme}://{parts.netloc}")
        path, query = parts.path, parts.query
    pairs = tuple(parse_qsl(query, keep_blank_values=True))
    single: dict[str, str] = {}
    for name, value in pairs:
        if name in _SINGLE_PARAMS:
            if name in single:
                raise ValueError(f"client URL has {name!r} more than once")
            if not value:
                raise ValueError(f"client URL has an empty {name!r}")
            single[name] = value
    lower = path.lower()
    if lower.startswith(_CLIENT_PREFIX):
        hub = unquote(path[len(_CLIENT_PREFIX):])
        if hub.endswith("/"):
            hub = hub[:-1]
        hub_in_query = False
    elif lower in ("/client", "/client/"):
        if "hub" not in single:
            raise ValueError("client URL '/client/' needs a 'hub' query parameter")
        hub = single["hub"]
        hub_in_query = True
    else:
        raise ValueError(f"not a Web PubSub client path: {path!r} (expected "
                         "'/client/hubs/{hub}' or '/client/?hub={hub}')")
    validate_hub_name(hub)
    connection_id = single.get(CONNECTION_ID)
    reconnection_token = single.get(RECONNECTION_TOKEN)
    if (connection_id is None) != (reconnection_token is None):
        raise ValueError(f"client URL needs both {CONNECTION_ID!r} and {RECONNECTION_TOKEN!r} "
                         "to recover a connection, or neither")
    return ClientUrl(hub, hub_in_query, single.get(ACCESS_TOKEN), connection_id,
                     reconnection_token, pairs, endpoint)


def build_recovery_url(url: str, connection_id: str, reconnection_token: str) -> str:
    """The URL that recovers connection ``connection_id``: ``url`` (the original client URL,
    ``access_token`` included) with ``awps_connection_id`` and ``awps_reconnection_token``
    appended. Earlier ``awps_*`` parameters are replaced; the rest of the query is kept as is.
    """
    for name, value in ((CONNECTION_ID, connection_id), (RECONNECTION_TOKEN, reconnection_token)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string")
    parse_client_url(url)  # the URL must be a client URL
    base, _, fragment = url.partition("#")
    base, _, query = base.partition("?")
    kept = [p for p in query.split("&") if p and unquote(p.split("=", 1)[0]) not in
            (CONNECTION_ID, RECONNECTION_TOKEN)]
    kept.append(f"{CONNECTION_ID}={_q(connection_id)}")
    kept.append(f"{RECONNECTION_TOKEN}={_q(reconnection_token)}")
    return f"{base}?{'&'.join(kept)}" + (f"#{fragment}" if fragment else "")


# --------------------------------------------------------------------------------------------
# Connection strings
# --------------------------------------------------------------------------------------------

_CS_KEYS = {"endpoint": "Endpoint", "accesskey": "AccessKey", "version": "Version",
            "port": "Port"}


@dataclass(frozen=True, slots=True)
class WebPubSubConnectionString:
    """A parsed ``Endpoint=...;AccessKey=...;Version=1.0;`` connection string."""

    #: ``http(s)://host[:port]``, with ``Port=`` applied (:func:`normalize_endpoint`).
    endpoint: str
    #: The key text; its UTF-8 bytes sign tokens. ``None`` for an Entra ID (``AuthType``) string.
    access_key: str | None = field(repr=False)
    version: str | None
    #: Keys we do not interpret (``AuthType``, ``ClientId``, ...), as written.
    extras: tuple[tuple[str, str], ...] = ()

    @property
    def client_endpoint(self) -> str:
        """``ws(s)://host[:port]``."""
        return client_endpoint(self.endpoint)

    def client_url(self, hub: str, *, access_token: str | None = None,
                   hub_in_query: bool = False) -> str:
        """:func:`build_client_url` for this endpoint."""
        return build_client_url(self.endpoint, hub, access_token=access_token,
                                hub_in_query=hub_in_query)

    def to_string(self) -> str:
        """The connection string again (:func:`format_connection_string`)."""
        if self.access_key is None:
            raise ValueError("this connection string has no AccessKey")
        return format_connection_string(self.endpoint, self.access_key,
                                        version=self.version or "1.0")


def parse_connection_string(text: str) -> WebPubSubConnectionString:
    """Parse a Web PubSub connection string.

    Keys are case-insensitive; empty segments and whitespace around keys and values are
    ignored; a value may contain ``=``. An endpoint without a scheme gets ``https://`` (as in
    the JS server SDK); ``Port=`` replaces the endpoint's port. ``ValueError`` names the problem
    (never the key).
    """
    known, extras = split_connection_string(text, _CS_KEYS)
    raw = known.get("Endpoint")
    if not raw:
        raise ValueError("connection string has no Endpoint (expected "
                         "'Endpoint=https://<name>.webpubsub.azure.com;AccessKey=...;"
                         "Version=1.0;')")
    if "://" not in raw:
        raw = "https://" + raw
    endpoint = normalize_endpoint(raw)
    port_text = known.get("Port")
    if port_text:
        if not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
            raise ValueError(f"connection string Port must be 1-65535, not {port_text!r}")
        host_part = urlsplit(endpoint)
        hostname = host_part.hostname or ""
        host = f"[{hostname}]" if ":" in hostname else hostname
        endpoint = f"{host_part.scheme}://{host}:{int(port_text)}"
    return WebPubSubConnectionString(endpoint, known.get("AccessKey") or None,
                                     known.get("Version") or None, tuple(extras))


def format_connection_string(endpoint: str, access_key: str, *, version: str = "1.0") -> str:
    """``Endpoint={endpoint};AccessKey={access_key};Version={version};``, the form the service
    and the emulator print."""
    if not isinstance(access_key, str) or not access_key or ";" in access_key:
        raise ValueError("access_key must be a non-empty string without ';'")
    return f"Endpoint={normalize_endpoint(endpoint)};AccessKey={access_key};Version={version};"
