"""What both blocking adapters export besides their runtime-bound names (``RelayedServer``,
``connect``, ``serve``, ``relayed_connect``, ``create_relayed_server``, ``RUNTIME``)."""

from __future__ import annotations

from ...drivers.decisions import Accept, Decision, Reject
from ...drivers.stream import ConnectionClosedError, RelayConnectionClosed
from ...listener import ConnectionRequested
from .server import Server
from .sockets import PongWaiter, RelayedWebSocket, WebSocket

__all__ = [
    "Accept",
    "ConnectionClosedError",
    "ConnectionRequested",
    "Decision",
    "PongWaiter",
    "Reject",
    "RelayConnectionClosed",
    "RelayedWebSocket",
    "Server",
    "WebSocket",
]
