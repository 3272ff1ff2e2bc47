"""asyncio adapter: plain WebSockets, the Hybrid Connections listener and sender, the local relay.

Node ``hyco-ws`` names in Python spelling, websockets-style plain ``connect`` / ``serve``::

    async with RelayServiceServer(port=0) as relay:                 # the local relay service
        async with RelayedServer(listen_uri, token) as server:      # a listener
            async with relayed_connect(send_uri, token) as ws:      # a sender
                await ws.send("hello")
                async for accepted in server:
                    print(await accepted.recv())
                    break

    async with serve(handler, "127.0.0.1", 0) as server:           # a plain WebSocket server
        async with connect(f"ws://127.0.0.1:{server.port}/") as ws: # a plain client
            ...
"""

from __future__ import annotations

from ...drivers.decisions import Accept, Decision, Reject
from ...drivers.http import RequestCancelled, Response
from ...drivers.stream import ConnectionClosedError, RelayConnectionClosed
from ...listener import ConnectionRequested
from .http import HttpResponse, relayed_request
from .http_listener import RelayedRequest
from .serve import Server, serve
from .server import RelayedServer, create_relayed_server
from .service import RelayServiceServer, RelayServiceThread
from .webpubsub import AckTimeoutError, SendMessageError, WebPubSubClient
from .websocket import RelayedWebSocket, WebSocket, connect, relayed_connect

__all__ = [
    "Accept",
    "AckTimeoutError",
    "ConnectionClosedError",
    "ConnectionRequested",
    "Decision",
    "HttpResponse",
    "Reject",
    "RelayConnectionClosed",
    "RelayServiceServer",
    "RelayServiceThread",
    "RelayedRequest",
    "RelayedServer",
    "RelayedWebSocket",
    "RequestCancelled",
    "Response",
    "SendMessageError",
    "Server",
    "WebPubSubClient",
    "WebSocket",
    "connect",
    "create_relayed_server",
    "relayed_connect",
    "relayed_request",
    "serve",
]
