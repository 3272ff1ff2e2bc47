"""hyco_proto: Azure Relay Hybrid Connections (and Web PubSub) for Python.

A sans-IO protocol core (listener, sender, control messages, SAS tokens, relay URIs, the relay
service side), a Cython fast path for the WebSocket byte path, and thin adapters for asyncio,
threads and gevent. See docs/architecture.md.
"""

from __future__ import annotations

from ._version import __version__
from .errors import (
    AuthorizationError,
    ConnectionLostError,
    EndpointNotFoundError,
    ForbiddenError,
    LocalProtocolError,
    ProtocolError,
    QuotaExceededError,
    RelayError,
    RemoteProtocolError,
    TokenError,
)

__all__ = [
    "AuthorizationError",
    "ConnectionLostError",
    "EndpointNotFoundError",
    "ForbiddenError",
    "LocalProtocolError",
    "ProtocolError",
    "QuotaExceededError",
    "RelayError",
    "RemoteProtocolError",
    "TokenError",
    "__version__",
]
