"""Relay addresses: listen / connect / HTTP / reject URIs, parsing them, connection strings.

Formats follow hybrid-connections-wire §1. Unlike hyco-ws, which always writes ``wss://{ns}:443``
(§5.1), the builders here honour ``scheme`` and ``port`` so the same code reaches a local
emulator on ``ws://127.0.0.1:9090``. Parsing strips ``sb-hc-*`` query parameters exactly as the
relay service does before the listener's application sees the rest (§1.5).

Without an explicit ``scheme`` the builders pick one with :func:`default_scheme`, the rule the
``hyco`` CLI uses: plain ``ws://`` (``http://``) for a local emulator, that is a loopback host
(``localhost``, ``*.localhost``, ``127.0.0.0/8``, ``::1``) with an explicit port other than 443
and 9443 (the emulator's TLS port); ``wss://`` (``https://``) for everything else, so a real
namespace always gets TLS.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote, unquote_plus, urlsplit

from .sas import DEFAULT_EXPIRATION_SECONDS, create_relay_token, encode_uri_component

__all__ = [
    "ConnectionString",
    "RelayAddress",
    "build_reject_uri",
    "create_relay_base_uri",
    "create_relay_http_uri",
    "create_relay_listen_uri",
    "create_relay_send_uri",
    "default_scheme",
    "is_ip_address",
    "is_loopback_host",
    "parse_connection_string",
    "parse_relay_uri",
    "strip_relay_query",
]

HC_PREFIX = "/$hc/"
#: Preview-era path prefix, accepted as an alias when parsing (§1.1).
LEGACY_HC_PREFIX = "/$servicebus/hybridconnection/"
RELAY_PARAM_PREFIX = "sb-hc-"

_WS_SCHEMES = frozenset({"ws", "wss"})
_HTTP_SCHEMES = frozenset({"http", "https"})
_RELAY_SCHEMES = _WS_SCHEMES | _HTTP_SCHEMES | {"sb"}
# Characters kept as-is in a path we build: RFC 3986 pchar plus "/" and "%" (already encoded).
_PATH_SAFE = "/!$&'()*+,;=:@%"
_BAD_HOST_CHARS = frozenset(" \t\r\n/?#@\\[]%\"<>^`{|}")
_PORT_RE = re.compile(r"[0-9]{1,5}")
QueryArg = str | Mapping[str, str] | Iterable[tuple[str, str]] | None


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------

def _check_port(port: object, what: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"{what} must be an integer from 1 to 65535, not {port!r}")
    return port


def _split_namespace(namespace: str, port: int | None) -> tuple[str, int | None]:
    """``host`` and port from ``namespace`` (``host``, ``host:port``, ``[v6]``, ``[v6]:port``)."""
    if not isinstance(namespace, str) or not namespace.strip():
        raise ValueError("namespace must be a non-empty host name, e.g. "
                         "'contoso.servicebus.windows.net' or '127.0.0.1:9090'")
    ns = namespace.strip()
    if "://" in ns:
        raise ValueError(f"namespace must be a host name, not a URI: {namespace!r} "
                         "(for a connection string use parse_connection_string)")
    if port is not None:
        port = _check_port(port, "port")
    ns_port: int | None = None
    if ns.startswith("["):
        close = ns.find("]")
        if close == -1:
            raise ValueError(f"namespace {namespace!r}: unterminated IPv6 literal")
        host, tail = ns[: close + 1], ns[close + 1:]
        if tail:
            if not tail.startswith(":") or not _PORT_RE.fullmatch(tail[1:]):
                raise ValueError(f"namespace {namespace!r}: bad port after IPv6 literal")
            ns_port = _check_port(int(tail[1:]), f"port in namespace {namespace!r}")
    else:
        if ns.count(":") > 1:
            raise ValueError(f"namespace {namespace!r}: write IPv6 addresses in brackets, "
                             "e.g. '[::1]:9090'")
        host, sep, tail = ns.partition(":")
        if sep:
            if not _PORT_RE.fullmatch(tail):
                raise ValueError(f"namespace {namespace!r}: port {tail!r} is not a number")
            ns_port = _check_port(int(tail), f"port in namespace {namespace!r}")
        if not host or any(c in _BAD_HOST_CHARS for c in host):
            raise ValueError(f"namespace {namespace!r} is not a valid host name")
    if ns_port is not None and port is not None and ns_port != port:
        raise ValueError(f"namespace {namespace!r} already names port {ns_port}; "
                         f"port={port} conflicts with it (pass one or the other)")
    return host, ns_port if ns_port is not None else port


def _authority(host: str, port: int | None) -> str:
    return host if port is None else f"{host}:{port}"


#: Ports on which a loopback host is still assumed to speak TLS: wss's default and the
#: emulator's TLS port.
_TLS_PORTS = frozenset({443, 9443})


def is_ip_address(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address (brackets allowed), not a name."""
    try:
        ipaddress.ip_address(host.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    return True


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names this machine: ``localhost`` or ``*.localhost`` (RFC 6761),
    an address in ``127.0.0.0/8``, or ``::1`` (brackets and a trailing dot allowed)."""
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    name = name.removesuffix(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def default_scheme(host: str, port: int | None = None) -> str:
    """The WebSocket scheme to use when none is given: ``"ws"`` or ``"wss"``.

    ``"ws"`` for a local emulator — a loopback host (:func:`is_loopback_host`) with an explicit
    ``port`` other than 443 and 9443 — and ``"wss"`` otherwise: every real namespace, and
    ``localhost`` without a port (that is port 443, a TLS port). The ``hyco`` CLI uses the same
    rule; for HTTP read ``"http"`` / ``"https"``.
    """
    plain = port is not None and port not in _TLS_PORTS and is_loopback_host(host)
    return "ws" if plain else "wss"


def _check_scheme(scheme: str, allowed: frozenset[str], what: str) -> str:
    if not isinstance(scheme, str) or scheme.lower() not in allowed:
        raise ValueError(f"{what} scheme must be one of {sorted(allowed)}, not {scheme!r}")
    return scheme.lower()


def _pick_scheme(scheme: str | None, host: str, port: int | None, allowed: frozenset[str],
                 what: str) -> str:
    if scheme is not None:
        return _check_scheme(scheme, allowed, what)
    ws = default_scheme(host, port)
    if "ws" in allowed:
        return ws
    return "http" if ws == "ws" else "https"


def _relay_path(path: str) -> str:
    """The hybrid connection name plus optional ``/suffix``, percent-encoded where needed."""
    if not isinstance(path, str):
        raise TypeError(f"path must be a str, not {type(path).__name__}")
    trimmed = path[1:] if path.startswith("/") else path
    if not trimmed or trimmed.startswith("/"):
        raise ValueError(f"path must name a hybrid connection, e.g. 'myhc' or 'myhc/sub', "
                         f"not {path!r}")
    try:
        return quote(trimmed, safe=_PATH_SAFE)
    except UnicodeEncodeError as exc:
        raise ValueError(f"path {path!r} contains a lone surrogate") from exc


def _app_query(query: QueryArg) -> str:
    """An application query as ``a=1&b=2`` (no ``?``); ``sb-hc-*`` keys are reserved."""
    if query is None:
        return ""
    if isinstance(query, str):
        text = query[1:] if query.startswith("?") else query
        pairs = [seg.partition("=")[0] for seg in text.split("&")]
        keys = [unquote(k) for k in pairs]
    else:
        items = list(query.items()) if isinstance(query, Mapping) else list(query)
        keys = [k for k, _ in items]
        text = "&".join(f"{encode_uri_component(k)}={encode_uri_component(v)}"
                        for k, v in items)
    for k in keys:
        if k.lower().startswith(RELAY_PARAM_PREFIX):
            raise ValueError(f"query key {k!r} is reserved: the relay strips 'sb-hc-' "
                             "parameters; use the token= and id= arguments instead")
    return text


def _relay_params(action: str | None, token: str | None, id: str | None) -> list[str]:
    params = []
    if action is not None:
        params.append(f"sb-hc-action={action}")
    if token is not None:
        params.append("sb-hc-token=" + encode_uri_component(token))
    if id is not None:
        params.append("sb-hc-id=" + encode_uri_component(id))
    return params


def _join_query(app: str, params: list[str]) -> str:
    parts = ([app] if app else []) + params
    return ("?" + "&".join(parts)) if parts else ""


def create_relay_base_uri(namespace: str, path: str, *, scheme: str | None = None,
                          port: int | None = None) -> str:
    """``{scheme}://{namespace}[:port]/$hc/{path}`` with no query.

    ``scheme=None`` picks :func:`default_scheme`: ``ws`` for a local emulator (a loopback host
    on a port other than 443/9443), ``wss`` otherwise.
    """
    if scheme is not None:
        _check_scheme(scheme, _WS_SCHEMES, "WebSocket")
    host, port = _split_namespace(namespace, port)
    scheme = _pick_scheme(scheme, host, port, _WS_SCHEMES, "WebSocket")
    return f"{scheme}://{_authority(host, port)}{HC_PREFIX}{_relay_path(path)}"


def create_relay_listen_uri(namespace: str, path: str, token: str | None = None,
                            id: str | None = None, *, scheme: str | None = None,
                            port: int | None = None) -> str:
    """Listener control channel: ``…/$hc/{path}?sb-hc-action=listen[&sb-hc-token=…][&sb-hc-id=…]``.

    Parameter order and encoding match hyco-ws ``createRelayListenUri``; ``scheme`` and ``port``
    are honoured (hyco-ws forces ``wss`` and ``:443``). Without ``scheme``,
    :func:`default_scheme` decides (``wss`` for every real namespace).
    """
    base = create_relay_base_uri(namespace, path, scheme=scheme, port=port)
    return base + _join_query("", _relay_params("listen", token, id))


def create_relay_send_uri(namespace: str, path: str, token: str | None = None,
                          id: str | None = None, *, scheme: str | None = None,
                          port: int | None = None, query: QueryArg = None) -> str:
    """Sender connect: ``…/$hc/{path}?[{query}&]sb-hc-action=connect[&sb-hc-token=…][&sb-hc-id=…]``.

    ``path`` may carry a suffix (``myhc/a/b``) and ``query`` application parameters; both reach
    the listener (§1.5). Without ``scheme``, :func:`default_scheme` decides.
    """
    base = create_relay_base_uri(namespace, path, scheme=scheme, port=port)
    return base + _join_query(_app_query(query), _relay_params("connect", token, id))


def create_relay_http_uri(namespace: str, path: str, token: str | None = None,
                          id: str | None = None, *, scheme: str | None = None,
                          port: int | None = None, query: QueryArg = None) -> str:
    """HTTP sender endpoint (no ``$hc``, §1.3): ``https://{ns}/{path}[?{query}][&sb-hc-token=…]``.

    Without ``scheme``: ``http`` for a local emulator, ``https`` otherwise (:func:`default_scheme`).
    """
    if scheme is not None:
        _check_scheme(scheme, _HTTP_SCHEMES, "HTTP")
    host, port = _split_namespace(namespace, port)
    scheme = _pick_scheme(scheme, host, port, _HTTP_SCHEMES, "HTTP")
    base = f"{scheme}://{_authority(host, port)}/{_relay_path(path)}"
    return base + _join_query(_app_query(query), _relay_params(None, token, id))


def build_reject_uri(accept_address: str, status_code: int, status_description: str) -> str:
    """``{accept address}&sb-hc-statusCode={code}&sb-hc-statusDescription={urlenc text}``.

    The listener opens a WebSocket to this URI to turn a sender away (§1.2, §1.4); the service
    answers the sender with ``status_code``.
    """
    if not isinstance(accept_address, str) or "://" not in accept_address:
        raise ValueError(f"accept_address must be the accept message's address URI, "
                         f"not {accept_address!r}")
    if isinstance(status_code, bool) or not isinstance(status_code, int) \
            or not 100 <= status_code <= 599:
        raise ValueError(f"status_code must be an HTTP status from 100 to 599, "
                         f"not {status_code!r}")
    if not isinstance(status_description, str):
        raise TypeError("status_description must be a str")
    address = accept_address.split("#", 1)[0]
    if "?" not in address:
        sep = "?"
    elif address.endswith(("?", "&")):
        sep = ""
    else:
        sep = "&"
    return (f"{address}{sep}sb-hc-statusCode={status_code}"
            f"&sb-hc-statusDescription={encode_uri_component(status_description)}")


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------

_ESCAPE_OR_ODD_CHAR = re.compile(r'%[0-9A-Fa-f]{2}|[^\x21-\x7e]|["<>]')


def _normalise_query_char(match: re.Match[str]) -> str:
    text = match.group(0)
    if text[0] == "%" and len(text) == 3:
        # ASCII escapes stay as written (%2B, %20, %2f); escapes of non-ASCII bytes go upper-case.
        return text.upper() if int(text[1:], 16) >= 0x80 else text
    try:
        return quote(text.encode("utf-8"), safe="")
    except UnicodeEncodeError as exc:
        raise ValueError(f"query contains a lone surrogate: {text!r}") from exc


def _is_relay_param(segment: str) -> bool:
    key, eq, _ = segment.partition("=")
    if "%" in key:
        key = unquote(key)
    return bool(eq) and key.lower().startswith(RELAY_PARAM_PREFIX)


def strip_relay_query(query: str) -> str:
    """Remove relay parameters from a query, as the relay service does (§1.5).

    - every segment whose key starts with ``sb-hc-`` (any case, percent-decoded) and has an
      ``=`` is removed; a key without ``=`` (``sb-hc-undefined``) is kept;
    - the other segments keep their order, duplicates and empty segments (``&&&``);
    - escapes such as ``%2B`` / ``%20`` / ``%2f`` stay as written; non-ASCII characters (and
      escapes of non-ASCII bytes) become upper-case ``%XX``; raw spaces, controls, ``"<>`` are
      escaped too;
    - a leading ``?`` is kept when something is left, dropped otherwise.
    """
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, not {type(query).__name__}")
    lead = query.startswith("?")
    body = query[1:] if lead else query
    if not body:
        return ""
    # "sb-hc-" holds no "=", so a segment that starts with it and has one is a relay parameter
    # (_is_relay_param's answer, without the call).
    kept = "&".join([seg for seg in body.split("&")
                     if not (seg.startswith(RELAY_PARAM_PREFIX) and "=" in seg)
                     and not _is_relay_param(seg)])
    if not kept:
        return ""
    if _ESCAPE_OR_ODD_CHAR.search(kept) is not None:
        kept = _ESCAPE_OR_ODD_CHAR.sub(_normalise_query_char, kept)
    return ("?" + kept) if lead else kept


@dataclass(frozen=True, slots=True)
class RelayAddress:
    """A parsed relay URI.

    ``host`` is lower-case, without IPv6 brackets; ``port`` is ``None`` when not written.
    ``hybrid_connection`` and ``path_suffix`` are as written (percent-encoding kept);
    ``logical_path`` is ``/{hc}[/{suffix}]`` with the ``$hc`` prefix dropped and a trailing
    slash kept. ``token`` and ``id`` are decoded; ``app_query`` is the query with ``sb-hc-*``
    removed (:func:`strip_relay_query`), without ``?``; ``""`` when nothing is left.
    """

    scheme: str
    host: str
    port: int | None
    hybrid_connection: str
    path_suffix: str
    action: str | None
    id: str | None
    token: str | None
    app_query: str
    logical_path: str

    @property
    def namespace(self) -> str:
        """``host[:port]``, IPv6 in brackets: what the ``create_relay_*_uri`` helpers take."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return _authority(host, self.port)

    @property
    def request_target(self) -> str:
        """Path with the HC name plus the filtered query: HTTP ``request.requestTarget`` (§1.5)."""
        return self.logical_path + (f"?{self.app_query}" if self.app_query else "")

    def request_url(self) -> str:
        """The URL a listener shows its application: ``sb://{ns}/{hc}/{suffix}?{app query}``.

        As the .NET listener builds it (§1.5): ``sb`` scheme, no port, no ``$hc``, no ``sb-hc-*``.
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"sb://{host}{self.request_target}"


def _query_param(query: str, name: str) -> str | None:
    """Raw value of the first ``name=`` parameter (key compared case-insensitively)."""
    for seg in query.split("&"):
        key, eq, value = seg.partition("=")
        if eq and unquote(key).lower() == name:
            return value
    return None


def parse_relay_uri(uri: str) -> RelayAddress:
    """Parse a listen / connect / accept / request / HTTP relay URI.

    WebSocket URIs (``ws``, ``wss``) must have a ``/$hc/`` path (or the legacy
    ``/$servicebus/hybridconnection/`` alias); ``http``, ``https`` and ``sb`` URIs may omit it
    (the HTTP endpoint has none, §1.3). Raises ``ValueError`` saying what is wrong otherwise.
    """
    if not isinstance(uri, str):
        raise TypeError(f"uri must be a str, not {type(uri).__name__}")
    try:
        parts = urlsplit(uri.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a relay URI: {uri!r} ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in _RELAY_SCHEMES:
        raise ValueError(f"not a relay URI: {uri!r} (scheme must be one of "
                         f"{sorted(_RELAY_SCHEMES)}, e.g. 'wss://ns/$hc/myhc')")
    host = parts.hostname
    if not host:
        raise ValueError(f"not a relay URI: {uri!r} has no host")
    path = parts.path
    lowered = path.lower()
    rest: str | None = None
    for prefix in (HC_PREFIX, LEGACY_HC_PREFIX):
        if lowered.startswith(prefix):
            rest = path[len(prefix):]
            break
        if lowered == prefix[:-1]:
            rest = ""
            break
    if rest is None:
        if scheme in _WS_SCHEMES:
            raise ValueError(f"not a relay URI: {uri!r} (WebSocket relay paths start with "
                             f"'/$hc/', e.g. 'wss://ns/$hc/myhc')")
        rest = path.lstrip("/") if path.startswith("/") else path
    hc, _, suffix = rest.partition("/")
    if not hc:
        raise ValueError(f"not a relay URI: {uri!r} names no hybrid connection")
    query = parts.query
    action = _query_param(query, "sb-hc-action")
    id_ = _query_param(query, "sb-hc-id")
    token = _query_param(query, "sb-hc-token")
    return RelayAddress(
        scheme=scheme,
        host=host,
        port=port,
        hybrid_connection=hc,
        path_suffix=suffix,
        action=unquote(action) if action is not None else None,
        id=unquote(id_) if id_ is not None else None,
        token=unquote_plus(token) if token is not None else None,
        app_query=strip_relay_query(query),
        logical_path="/" + rest,
    )


# --------------------------------------------------------------------------------------------
# Connection strings
# --------------------------------------------------------------------------------------------

_CS_KEYS = {
    "endpoint": "Endpoint",
    "sharedaccesskeyname": "SharedAccessKeyName",
    "sharedaccesskey": "SharedAccessKey",
    "sharedaccesssignature": "SharedAccessSignature",
    "entitypath": "EntityPath",
}


@dataclass(frozen=True, slots=True)
class ConnectionString:
    """A parsed ``Endpoint=sb://…/;SharedAccessKeyName=…;SharedAccessKey=…;EntityPath=…``.

    ``namespace`` is ``host[:port]`` as the URI helpers take it. ``extras`` holds keys this
    library does not use (e.g. ``OperationTimeout``), in order, as written.
    """

    endpoint: str
    host: str
    port: int | None
    namespace: str
    shared_access_key_name: str | None
    shared_access_key: str | None
    entity_path: str | None
    shared_access_signature: str | None
    extras: tuple[tuple[str, str], ...] = ()

    def _path(self, path: str | None) -> str:
        chosen = path if path is not None else self.entity_path
        if not chosen:
            raise ValueError("the connection string has no EntityPath; pass path='myhc'")
        return chosen

    def listen_uri(self, path: str | None = None, *, token: str | None = None,
                   id: str | None = None, scheme: str | None = None) -> str:
        """:func:`create_relay_listen_uri` for this namespace and ``EntityPath`` (or ``path``).

        Without ``scheme``: ``ws`` for a local emulator's endpoint (``sb://127.0.0.1:9090/``),
        ``wss`` otherwise (:func:`default_scheme`).
        """
        return create_relay_listen_uri(self.namespace, self._path(path), token, id,
                                       scheme=scheme)

    def send_uri(self, path: str | None = None, *, token: str | None = None,
                 id: str | None = None, scheme: str | None = None,
                 query: QueryArg = None) -> str:
        """:func:`create_relay_send_uri` for this namespace and ``EntityPath`` (or ``path``);
        the scheme as in :meth:`listen_uri`."""
        return create_relay_send_uri(self.namespace, self._path(path), token, id,
                                     scheme=scheme, query=query)

    def http_uri(self, path: str | None = None, *, token: str | None = None,
                 id: str | None = None, scheme: str | None = None,
                 query: QueryArg = None) -> str:
        """:func:`create_relay_http_uri` for this namespace and ``EntityPath`` (or ``path``);
        ``http`` for a local emulator, ``https`` otherwise."""
        return create_relay_http_uri(self.namespace, self._path(path), token, id,
                                     scheme=scheme, query=query)

    def create_token(self, path: str | None = None,
                     expiration_seconds: float | None = DEFAULT_EXPIRATION_SECONDS,
                     *, now: float | None = None) -> str:
        """A token for the entity (or ``path``; namespace-wide with neither).

        Returns the connection string's ``SharedAccessSignature`` as-is when it has one.
        """
        if self.shared_access_signature is not None:
            return self.shared_access_signature
        if self.shared_access_key_name is None or self.shared_access_key is None:
            raise ValueError("the connection string has no SharedAccessKeyName/SharedAccessKey "
                             "to sign a token with")
        chosen = path if path is not None else self.entity_path
        resource = (create_relay_base_uri(self.namespace, chosen) if chosen
                    else f"http://{self.namespace}/")
        return create_relay_token(resource, self.shared_access_key_name,
                                  self.shared_access_key, expiration_seconds, now=now)


def split_connection_string(text: str, keys: Mapping[str, str]
                            ) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """``Key=Value;…`` as (the known keys under their canonical names, the other pairs).

    ``keys`` maps lower-case names to canonical ones. Keys are case-insensitive; whitespace
    around keys and values and empty segments are ignored; a value may contain ``=``.
    ``ValueError`` for a segment that is not ``Key=Value`` (naming only what comes before any
    ``=``: values may be secrets) or a known key given twice.
    """
    if not isinstance(text, str):
        raise TypeError(f"connection string must be a str, not {type(text).__name__}")
    known: dict[str, str] = {}
    extras: list[tuple[str, str]] = []
    for segment in text.split(";"):
        if not segment.strip():
            continue
        key, eq, value = segment.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            raise ValueError(f"connection string segment {key[:40]!r} is not Key=Value")
        canonical = keys.get(key.lower())
        if canonical is None:
            extras.append((key, value))
        elif canonical in known:
            raise ValueError(f"connection string has {canonical} more than once")
        else:
            known[canonical] = value
    return known, extras


def parse_connection_string(text: str) -> ConnectionString:
    """Parse an Azure Relay connection string.

    Keys are case-insensitive; whitespace around keys and values and empty segments (a trailing
    ``;``) are ignored; a value may contain ``=`` (base64 padding). ``ValueError`` names the
    missing or bad field.
    """
    known, extras = split_connection_string(text, _CS_KEYS)
    endpoint = known.get("Endpoint")
    if not endpoint:
        raise ValueError("connection string has no Endpoint (expected "
                         "'Endpoint=sb://<namespace>.servicebus.windows.net/;…')")
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"connection string Endpoint {endpoint!r} is not valid: {exc}") from None
    host = parts.hostname
    if parts.scheme.lower() != "sb" or not host:
        raise ValueError(f"connection string Endpoint must look like 'sb://<namespace>/', "
                         f"not {endpoint!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"connection string Endpoint {endpoint!r} must not have a path or "
                         "query; put the hybrid connection name in EntityPath")
    bracketed = f"[{host}]" if ":" in host else host
    key_name = known.get("SharedAccessKeyName") or None
    key_value = known.get("SharedAccessKey") or None
    if key_name is not None and key_value is None:
        raise ValueError("connection string has SharedAccessKeyName but no SharedAccessKey")
    if key_value is not None and key_name is None:
        raise ValueError("connection string has SharedAccessKey but no SharedAccessKeyName")
    entity = (known.get("EntityPath") or "").strip("/") or None
    return ConnectionString(
        endpoint=f"sb://{_authority(bracketed, port)}/",
        host=host,
        port=port,
        namespace=_authority(bracketed, port),
        shared_access_key_name=key_name,
        shared_access_key=key_value,
        entity_path=entity,
        shared_access_signature=known.get("SharedAccessSignature") or None,
        extras=tuple(extras),
    )
