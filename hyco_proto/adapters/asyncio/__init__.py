"""asyncio adapter: the local relay service server, the listener and the sender.

Node ``hyco-ws`` names in Python spelling::

    async with RelayServiceServer(port=0) as relay:              # the local relay service
        async with RelayedServer(listen_uri, token) as server:   # a listener
            ws = await relayed_connect(send_uri, token)           # a sender
            await ws.send("hello")
            async for accepted in server:
                print(await accepted.recv())
"""

from __future__ import annotations

from .client import RelayConnectionClosed, RelayedWebSocket, relayed_connect
from .server import Accept, Decision, Reject, RelayedServer, create_relayed_server
from .service import RelayServiceServer

__all__ = [
    "Accept",
    "Decision",
    "Reject",
    "RelayConnectionClosed",
    "RelayServiceServer",
    "RelayedServer",
    "RelayedWebSocket",
    "create_relayed_server",
    "relayed_connect",
]
