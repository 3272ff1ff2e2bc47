"""What every connection handler of the relay service has, and what it may ask of the service.

The service (:class:`~hyco_proto.service.router.RelayService`) owns the connection table, the
output and the timers; each TCP connection is served by one handler for its kind at a time (the
front door, a listener's control channel, a waiting sender, a relayed leg, a request rendezvous).
A handler has the same small surface — bytes in, deadline, timer — and reaches other connections
only through :class:`ServiceCore`, never through their state.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..websocket import State, WebSocketConnection

if TYPE_CHECKING:
    from .broker import RelayBroker
    from .http_relay import HttpExchange
    from .stats import ServiceStats
    from .status import RefusalLog

__all__ = ["Connection", "ConnectionKind", "Handler", "ServiceCore", "WebSocketHandler"]


class ConnectionKind(enum.Enum):
    HANDSHAKE = "handshake"  # the front door: reading an HTTP request
    LISTENER = "listener"  # a listener's control channel
    WAITING = "waiting"  # a WebSocket sender whose handshake waits for accept/reject
    RELAY = "relay"  # one leg of a joined pair
    HTTP = "http"  # a relayed HTTP request in flight (the sender's connection)
    REQUEST = "request"  # a listener's rendezvous for one HTTP request
    WEBPUBSUB = "webpubsub"  # a Web PubSub client's WebSocket
    WATCHER = "watcher"  # the web view's event stream (GET /$events)
    CLOSED = "closed"


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__ (one
# per connection, issue 14); nothing changes or hashes it.
@dataclass(slots=True)
class Connection:
    """A TCP connection as the service sees it (not to be changed)."""

    id: int
    remote: tuple[str, int]
    scheme: str  # "ws" or "wss": the scheme addresses handed to this client use
    opened: float


class ServiceCore(Protocol):
    """The service, as handlers see it."""

    broker: RelayBroker
    stats: ServiceStats
    refusal_log: RefusalLog
    close_timeout: float
    half_close_timeout: float
    max_frame_size: int
    max_early_bytes: int
    handshake_timeout: float
    http_timeout: float
    #: The service's base addresses by route set (``"relay"``, ``"webpubsub"``), when known.
    addresses: dict[str, str]
    #: More host names its own pages answer (``FrontDoor.refuse_rebound_host``).
    allowed_hosts: set[str]

    def send(self, conn_id: int, data: bytes | memoryview) -> None:
        """Queue ``data`` for connection ``conn_id`` (in order with everything else). A view
        may only be of the buffer lent to ``receive_into`` in the same call."""
        ...

    def close(self, conn_id: int) -> None:
        """Close that TCP connection once what is queued for it is written."""
        ...

    def switch(self, conn_id: int, handler: Handler) -> None:
        """From now on ``handler`` serves the connection (an upgrade, a join)."""
        ...

    def handler(self, conn_id: int) -> Handler | None:
        """The handler of a live connection."""
        ...

    def watch(self, conn_id: int) -> None:
        """The connection's handler has (or may have) a deadline: ask it at every timer."""
        ...

    def pause_reading(self, conn_id: int, paused: bool) -> None:
        """Stop (or resume) reading a connection whose input has nowhere to go yet."""
        ...

    def bind(self, name: str, conn_id: int) -> None:
        """Name a connection (``listener:<id>``, ``connect:<id>``) for others to find."""
        ...

    def unbind(self, name: str, conn_id: int | None = None) -> bool:
        """Drop a name (only if it names ``conn_id``, when given); True if it was dropped."""
        ...

    def lookup(self, name: str) -> Handler | None:
        """The live handler a name points to."""
        ...

    def exchange(self, request_id: str) -> HttpExchange | None:
        """The relayed HTTP request in flight with that id."""
        ...

    def register_exchange(self, exchange: HttpExchange) -> None: ...

    def unregister_exchange(self, exchange: HttpExchange) -> None: ...

    def listener_gone(self, now: float, listener_id: str) -> None:
        """A control channel ended: requests that depended on it fail."""
        ...


class Handler:
    """Serves one TCP connection. Subclasses override what their kind needs."""

    kind: ConnectionKind = ConnectionKind.CLOSED
    #: What log lines about this connection name it by (a listener, connect or request id).
    tracking: str = "-"

    def __init__(self, svc: ServiceCore, conn: Connection) -> None:
        self.svc = svc
        self.conn = conn
        #: ``conn.id``, an attribute (not a property: handlers ask for it often).
        self.id = conn.id
        #: The connection this one's input is written to (flow control: while that one's write
        #: buffer is full, the driver stops reading this one).
        self.peer: int | None = None

    def receive_data(self, now: float, data: bytes | memoryview) -> None:
        """Bytes read from the connection; a lent view must not be kept after the call."""

    def receive_into(self, now: float, buffer: memoryview, start: int, end: int) -> None:
        """Bytes read into ``buffer[start:end]`` of a writable buffer lent for this call
        (``RelayService.receive_into``); handlers that do not rewrite in place just read them."""
        self.receive_data(now, buffer[start:end])

    def receive_eof(self, now: float) -> None:
        """The peer half-closed (or the connection died; treated alike)."""
        self.close(now)

    def connection_lost(self, now: float) -> None:
        """The TCP connection is gone: drop every registration; nothing more is written."""

    def deadline(self) -> float | None:
        """When :meth:`handle_timer` must run (None: no deadline)."""
        return None

    def handle_timer(self, now: float) -> None:
        """The deadline has come."""

    def shutdown(self, now: float, code: int, reason: str) -> None:
        """The service is stopping: say goodbye the way this kind of connection can."""
        self.close(now)

    def close(self, now: float) -> None:
        """Close TCP and forget registrations (the default end of every handler)."""
        self.connection_lost(now)
        self.svc.close(self.id)
        self.kind = ConnectionKind.CLOSED


class WebSocketHandler(Handler):
    """A connection the service itself speaks WebSocket on (server role, in ``ws``): a
    listener's control channel, a request rendezvous, a Web PubSub client. Subclasses handle
    the events in :meth:`pump` and let go of what they registered in :meth:`gone`."""

    ws: WebSocketConnection

    def receive_data(self, now: float, data: bytes | memoryview) -> None:
        self.ws.receive_data(bytes(data))
        self.pump(now)

    def receive_eof(self, now: float) -> None:
        self.ws.receive_eof()
        self.pump(now)

    def connection_lost(self, now: float) -> None:
        if self.ws.state is not State.CLOSED:
            self.ws.receive_eof()
            self.pump(now)
        self.gone(now)

    def pump(self, now: float) -> None:
        """Handle what ``ws`` received, then :meth:`flush`."""
        raise NotImplementedError

    def gone(self, now: float) -> None:
        """The TCP connection is over (called once it is lost; may run more than once)."""

    def flush(self) -> None:
        """Write what ``ws`` has to send; its ``b""`` closes the connection."""
        for chunk in self.ws.data_to_send():
            if chunk == b"":
                self.svc.close(self.id)
                self.kind = ConnectionKind.CLOSED
            else:
                self.svc.send(self.id, chunk)
