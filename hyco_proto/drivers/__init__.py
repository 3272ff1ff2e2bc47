"""Sans-IO drivers: the protocol objects adapters run, one level above the protocol cores.

* :mod:`.connection` — ``ClientConnection`` / ``ServerConnection``: an opening handshake and the
  WebSocket data phase as one object (bytes in, events and bytes out).
* :mod:`.stream` — ``MessageStream``: the received-message queue with flow-control thresholds,
  the ping registry and close classification that every socket class needs.
* :mod:`.listener` — ``ListenerDriver``: a Hybrid Connections listener at the byte level (the
  ``Listener`` core, its control channel, rendezvous handshakes, accept/reject decisions).
* :mod:`.decisions` — ``Accept`` / ``Reject``: what a listener's ``headers`` hook returns.
* :mod:`.http` — relayed HTTP on the listener side: ``RelayedRequest``, ``Response``,
  ``RequestCancelled`` and the exchanges ``ListenerDriver`` keeps for them.

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
from .http import (
    BodyBuffer,
    HttpRequestCancelled,
    HttpRequestData,
    HttpRequestStarted,
    HttpResponseWritable,
    PauseReading,
    RelayedRequest,
    RequestCancelled,
    Response,
    ResumeReading,
)
from .stream import ConnectionClosedError, MessageStream, RelayConnectionClosed

__all__ = [
    "Accept",
    "BodyBuffer",
    "ClientConnection",
    "ConnectionClosedError",
    "ConnectionState",
    "Decision",
    "HandshakeFailed",
    "HttpRequestCancelled",
    "HttpRequestData",
    "HttpRequestStarted",
    "HttpResponseWritable",
    "MessageStream",
    "Opened",
    "PauseReading",
    "Refused",
    "Reject",
    "RelayConnectionClosed",
    "RelayedRequest",
    "RequestCancelled",
    "RequestReceived",
    "Response",
    "ResumeReading",
    "ServerConnection",
    "select_subprotocol",
]
