"""hyco_proto: Azure Relay Hybrid Connections (WebSocket) for Python.

A sans-IO protocol core (listener, sender, control messages, SAS tokens, relay URIs, the relay
service side) and driver layer (``hyco_proto.drivers``), a Cython fast path for the WebSocket
byte path, and three adapters with the same names and call shapes:
``hyco_proto.adapters.asyncio``, ``.threads`` and ``.gevent`` (the ``gevent`` extra). Relayed
HTTP requests are not supported yet. See docs/architecture.md.

The names here mirror Node's ``hyco-ws`` in Python spelling (``create_relay_token`` for
``createRelayToken``), so code moves across easily.
"""

from __future__ import annotations

from ._version import __version__
from .control import (
    AcceptCommand,
    RemoteEndpoint,
    RenewTokenCommand,
    RequestCommand,
    ResponseCommand,
    parse_command,
    serialize_command,
)
from .errors import (
    AuthorizationError,
    ConnectionLostError,
    EndpointNotFoundError,
    ForbiddenError,
    ListenerRejectedError,
    LocalProtocolError,
    ProtocolError,
    QuotaExceededError,
    RelayError,
    RemoteProtocolError,
    TokenError,
)
from .headers import Headers
from .listener import ConnectionRequested, Listener, ListenerState
from .sas import (
    SasToken,
    TokenSource,
    append_relay_token,
    create_relay_token,
    parse_token,
    verify_token,
)
from .sender import SenderConnect
from .uris import (
    ConnectionString,
    RelayAddress,
    build_reject_uri,
    create_relay_base_uri,
    create_relay_http_uri,
    create_relay_listen_uri,
    create_relay_send_uri,
    default_scheme,
    parse_connection_string,
    parse_relay_uri,
    strip_relay_query,
)

__all__ = [
    "AcceptCommand",
    "AuthorizationError",
    "ConnectionLostError",
    "ConnectionRequested",
    "ConnectionString",
    "EndpointNotFoundError",
    "ForbiddenError",
    "Headers",
    "Listener",
    "ListenerRejectedError",
    "ListenerState",
    "LocalProtocolError",
    "ProtocolError",
    "QuotaExceededError",
    "RelayAddress",
    "RelayError",
    "RemoteEndpoint",
    "RemoteProtocolError",
    "RenewTokenCommand",
    "RequestCommand",
    "ResponseCommand",
    "SasToken",
    "SenderConnect",
    "TokenError",
    "TokenSource",
    "__version__",
    "append_relay_token",
    "build_reject_uri",
    "create_relay_base_uri",
    "create_relay_http_uri",
    "create_relay_listen_uri",
    "create_relay_send_uri",
    "create_relay_token",
    "default_scheme",
    "parse_command",
    "parse_connection_string",
    "parse_relay_uri",
    "parse_token",
    "serialize_command",
    "strip_relay_query",
    "verify_token",
]
