"""What both blocking adapters export besides their runtime-bound names (``RelayedServer``,
``connect``, ``serve``, ``relayed_connect``, ``create_relayed_server``, ``RUNTIME``,
``WebPubSubClient``); also the relayed HTTP names a ``request_handler`` uses
(``RelayedRequest``, ``Response``, ``RequestCancelled``) and the Web PubSub client's errors."""

from __future__ import annotations

from ...drivers.decisions import Accept, Decision, Reject
from ...drivers.http import RequestCancelled, Response
from ...drivers.stream import ConnectionClosedError, RelayConnectionClosed
from ...listener import ConnectionRequested
from ...webpubsub.client import AckTimeoutError, SendMessageError
from .http_listener import RelayedRequest
from .server import Server
from .sockets import PongWaiter, RelayedWebSocket, WebSocket

__all__ = [
    "Accept",
    "AckTimeoutError",
    "ConnectionClosedError",
    "ConnectionRequested",
    "Decision",
    "PongWaiter",
    "Reject",
    "RelayConnectionClosed",
    "RelayedRequest",
    "RelayedWebSocket",
    "RequestCancelled",
    "Response",
    "SendMessageError",
    "Server",
    "WebSocket",
]
