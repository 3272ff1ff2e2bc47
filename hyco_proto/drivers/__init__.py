"""Sans-IO drivers: the protocol objects adapters run, one level above the protocol cores.

* :mod:`.connection` — ``ClientConnection`` / ``ServerConnection``: an opening handshake and the
  WebSocket data phase as one object (bytes in, events and bytes out).
* :mod:`.stream` — ``MessageStream``: the received-message queue with flow-control thresholds,
  the ping registry and close classification that every socket class needs.
* :mod:`.listener` — ``ListenerDriver``: a Hybrid Connections listener at the byte level (the
  ``Listener`` core, its control channel, rendezvous handshakes, accept/reject decisions).
* :mod:`.decisions` — ``Accept`` / ``Reject``: what a listener's ``headers`` hook returns.

No I/O here: an adapter opens sockets, moves bytes, runs timers and hands results back.
"""

from __future__ import annotations

from .connection import (
    ClientConnection,
    ConnectionState,
    HandshakeFailed,
    Opened,
    Refused,
    RequestReceived,
    ServerConnection,
    select_subprotocol,
)
from .decisions import Accept, Decision, Reject
from .stream import ConnectionClosedError, MessageStream, RelayConnectionClosed

__all__ = [
    "Accept",
    "ClientConnection",
    "ConnectionClosedError",
    "ConnectionState",
    "Decision",
    "HandshakeFailed",
    "MessageStream",
    "Opened",
    "Refused",
    "Reject",
    "RelayConnectionClosed",
    "RequestReceived",
    "ServerConnection",
    "select_subprotocol",
]
