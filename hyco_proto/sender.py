"""Sender connect: the parameters of a sender's WebSocket handshake, and its failures as errors.

A sender opens a WebSocket to ``wss://{ns}/$hc/{hc}[/suffix][?query]`` with
``sb-hc-action=connect`` and a token in the ``ServiceBusAuthorization`` header or the
``sb-hc-token`` query parameter (hybrid-connections-wire §1.2, §2.5). The relay holds the
handshake until a listener accepts or rejects; a reject fails it with the listener's status and
reason. This module computes what to send (:meth:`SenderConnect.handshake` gives the sans-IO
:class:`~hyco_proto.handshake.ClientHandshake`) and maps refusals and close codes to
:mod:`hyco_proto.errors` types. The adapter connects to ``hostname``:``port`` (TLS if ``secure``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import quote

from ._syntax import is_token
from .errors import (
    ListenerRejectedError,
    RelayError,
    extract_tracking_id,
    relay_error_for_close,
    relay_error_for_status,
)
from .handshake import ClientHandshake, HandshakeRejected, parse_ws_url

__all__ = [
    "ALLOWED_LISTENERS_HEADER",
    "DISALLOWED_LISTENERS_HEADER",
    "REJECTED_BY_HEADER",
    "SenderConnect",
    "error_for_close",
    "error_for_rejection",
    "error_for_status",
]

#: Undocumented listener-pinning headers; comma-separated listener ids (§4.6).
ALLOWED_LISTENERS_HEADER = "Microsoft-Relay-AllowedListeners"
DISALLOWED_LISTENERS_HEADER = "Microsoft-Relay-DisallowedListeners"
AUTH_HEADER = "ServiceBusAuthorization"
#: Emulator only (not an Azure header): on a refused sender handshake, ``listener`` when the
#: status is a listener's reject passed through, ``relay`` when the emulator refused by itself.
REJECTED_BY_HEADER = "X-Hyco-Rejected-By"

# Headers the WebSocket handshake writes itself; a caller-supplied copy would clash.
_RESERVED_HEADERS = frozenset({
    "host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
    "sec-websocket-protocol", "sec-websocket-extensions", "content-length", "transfer-encoding",
})

def _listener_ids(name: str, ids: Sequence[str]) -> str | None:
    if isinstance(ids, str):
        raise TypeError(f"{name} must be a sequence of listener ids, not a single string")
    for item in ids:
        if not item or "," in item or item != item.strip():
            raise ValueError(f"{name}: listener id {item!r} must be non-empty, without commas "
                             "or surrounding spaces")
    return ",".join(ids) if ids else None


def error_for_status(status: int, reason: str | None = None) -> RelayError:
    """The error for the relay refusing a sender handshake with ``status`` (§4.3).

    401 → ``AuthorizationError``, 403 → ``ForbiddenError`` (``QuotaExceededError`` when the
    description mentions a quota), 404 → ``EndpointNotFoundError``, anything else →
    ``RelayError`` with ``status`` set. ``tracking_id`` is parsed from ``reason``. Use
    :func:`error_for_rejection` for a whole answer: it also tells a listener's reject apart.
    """
    return relay_error_for_status(status, reason or None)


def _rejected_by(rejected: HandshakeRejected) -> str | None:
    for name, value in rejected.headers:
        if name.lower() == REJECTED_BY_HEADER.lower():
            return value.strip().lower()
    return None


def error_for_rejection(rejected: HandshakeRejected) -> RelayError:
    """The error for a :class:`~hyco_proto.handshake.HandshakeRejected` answer to a sender.

    The relay (or a rejecting listener) puts its description in the reason phrase (§3.1, §4.3).
    A listener's own reject becomes :class:`~hyco_proto.errors.ListenerRejectedError`, whatever
    its status (401 and 404 included), so it is not mistaken for the relay refusing the sender:

    * the emulator says who refused in ``X-Hyco-Rejected-By`` (``listener`` or ``relay``);
    * without that header (the Azure service), the relay's own refusals always carry a
      ``TrackingId:`` in their description, and a listener's reject passes through unchanged,
      so a description without one is the listener's. A web server at a mistyped address
      answers the same way, though: the message says both ("rejected with 404: Not Found (by
      the listener, or by something that is not a relay at this address ...)"); only the
      emulator's ``listener`` mark gives the plain "the listener rejected ...".

    Everything else maps by status as in :func:`error_for_status`.
    """
    by = _rejected_by(rejected)
    # A listener rejects with 400..599 only: another status without the relay's marks comes
    # from something that is not a relay (a web server at the wrong address).
    unmarked = (by is None and extract_tracking_id(rejected.reason) is None
                and 400 <= rejected.status <= 599)
    if by == "listener" or unmarked:
        status = f"{rejected.status}: {rejected.reason}" if rejected.reason \
            else str(rejected.status)
        if by == "listener":
            text = f"the listener rejected the connection with {status}"
        else:
            text = (f"rejected with {status} (by the listener, or by something that is not a "
                    "relay at this address: the answer carries no relay TrackingId)")
        return ListenerRejectedError(text, status=rejected.status,
                                     description=rejected.reason or None)
    return error_for_status(rejected.status, rejected.reason)


def error_for_close(code: int, reason: str = "") -> RelayError | None:
    """The error for a close of an established sender connection, or None for a normal one.

    1000 is a normal closure (the listener shut the socket down, §4.4); 1008 (token expired)
    becomes ``AuthorizationError``; 1001, 1006, 1011 and the rest ``ConnectionLostError``.
    """
    if code == 1000:
        return None
    return relay_error_for_close(code, reason)


class SenderConnect:
    """The handshake parameters of one sender connection.

    ``address`` is the send URI (``ws://`` or ``wss://``, ``/$hc/{hc}[/suffix]``, optional app
    query). ``sb-hc-action=connect`` is added when missing (a different action is an error).
    ``token`` goes into ``ServiceBusAuthorization``, or into ``sb-hc-token`` when
    ``token_in_query`` (for stacks that cannot set headers). ``allowed_listeners`` /
    ``disallowed_listeners`` pin or exclude listener ids (§4.6).

    Attributes: ``scheme``, ``secure``, ``host`` (the ``Host`` header value), ``hostname``,
    ``port``, ``target`` (path and query), ``url``, ``headers`` (name/value pairs to add to the
    handshake, in order), ``subprotocols``.
    """

    __slots__ = ("headers", "host", "hostname", "port", "scheme", "secure", "subprotocols",
                 "target", "token", "url")

    def __init__(self, address: str, *, token: str | None = None, token_in_query: bool = False,
                 headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
                 subprotocols: Sequence[str] = (),
                 allowed_listeners: Sequence[str] = (),
                 disallowed_listeners: Sequence[str] = ()) -> None:
        parsed = parse_ws_url(address, what="send address")
        self.scheme = parsed.scheme
        self.secure = parsed.secure
        self.hostname = parsed.host
        self.port = parsed.port
        self.host = parsed.host_header
        self.token = token

        query = [kv for kv in parsed.query.split("&") if kv]
        actions = [kv.split("=", 1)[1] if "=" in kv else "" for kv in query
                   if kv.split("=", 1)[0].lower() == "sb-hc-action"]
        if any(a.lower() != "connect" for a in actions):
            raise ValueError(f"send address has sb-hc-action={actions[0]!r}; a sender connects "
                             "with sb-hc-action=connect (or none)")
        if not actions:
            query.append("sb-hc-action=connect")
        if token_in_query:
            if token is None:
                raise ValueError("token_in_query=True needs a token")
            query = [kv for kv in query if kv.split("=", 1)[0].lower() != "sb-hc-token"]
            query.append("sb-hc-token=" + quote(token, safe=""))
        self.target = f"{parsed.path}?{'&'.join(query)}"
        self.url = f"{self.scheme}://{self.host}{self.target}"

        items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
        out: list[tuple[str, str]] = []
        for name, value in items:
            lower = name.lower()
            if lower in _RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is written by the WebSocket handshake; pass "
                                 "subprotocols as `subprotocols` and leave the rest out")
            if lower == AUTH_HEADER.lower() and token is not None:
                raise ValueError(f"pass the token either as `token` or as a {AUTH_HEADER} "
                                 "header, not both")
            if lower in (ALLOWED_LISTENERS_HEADER.lower(), DISALLOWED_LISTENERS_HEADER.lower()):
                raise ValueError(f"use allowed_listeners / disallowed_listeners, not a {name} "
                                 "header")
            if any(c in name + value for c in "\r\n\0"):
                raise ValueError(f"header {name!r} contains CR, LF or NUL")
            out.append((name, value))
        if token is not None and not token_in_query:
            out.append((AUTH_HEADER, token))
        allowed = _listener_ids("allowed_listeners", allowed_listeners)
        if allowed is not None:
            out.append((ALLOWED_LISTENERS_HEADER, allowed))
        disallowed = _listener_ids("disallowed_listeners", disallowed_listeners)
        if disallowed is not None:
            out.append((DISALLOWED_LISTENERS_HEADER, disallowed))
        self.headers: tuple[tuple[str, str], ...] = tuple(out)

        if isinstance(subprotocols, str):
            raise TypeError("subprotocols must be a sequence of names, not a single string")
        for proto in subprotocols:
            if not is_token(proto):
                raise ValueError(f"subprotocol {proto!r} is not a valid token")
        self.subprotocols: tuple[str, ...] = tuple(subprotocols)

    def __repr__(self) -> str:
        # The token is a credential: keep it out of logs.
        url = self.url
        if self.token is not None:
            url = url.replace(quote(self.token, safe=""), "***")
        return f"SenderConnect({url!r}, subprotocols={list(self.subprotocols)!r})"

    def handshake(self, *, key: bytes | None = None) -> ClientHandshake:
        """A fresh sans-IO opening handshake for this connection (``key``: for tests only)."""
        return ClientHandshake(self.host, self.target, subprotocols=self.subprotocols,
                               headers=self.headers, key=key)

    def error_for_rejection(self, rejected: HandshakeRejected) -> RelayError:
        """The typed error for a refused handshake (see :func:`error_for_rejection`), its
        message naming the send address (without query: no token in messages)."""
        error = error_for_rejection(rejected)
        error.message = f"{self.scheme}://{self.host}{self.target.split('?', 1)[0]}: " \
                        f"{error.message}"
        error.args = (error.message,)
        return error

    def error_for_status(self, status: int, reason: str | None = None) -> RelayError:
        """The typed error for this handshake being refused with ``status`` (see module docs)."""
        return error_for_status(status, reason)

    def error_for_close(self, code: int, reason: str = "") -> RelayError | None:
        """The typed error for the established connection closing with ``code`` (None: normal)."""
        return error_for_close(code, reason)
