"""An in-memory network: the relay service, listeners and senders driven without sockets.

Everything here is sans-IO and runs on a virtual clock, so tests (and ``make demo``'s first act)
can run a whole Hybrid Connections exchange — control channel, accept, rendezvous, relayed
messages, reject, token renewal and expiry, reconnects — deterministically, in one thread.

It is also the smallest complete adapter of the drivers (:mod:`hyco_proto.drivers`):
``MemoryNetwork`` plays the event loop, ``MemoryTransport`` a TCP connection,
``MemoryWebSocket`` a socket over a :class:`~hyco_proto.drivers.ClientConnection`, and
``MemoryListener`` runs a :class:`~hyco_proto.drivers.listener.ListenerDriver`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .drivers.connection import ClientConnection, HandshakeFailed, Opened, Refused
from .drivers.listener import (
    AbortTransport,
    HandOver,
    ListenerDriver,
    OpenTransport,
    Write,
)
from .errors import RemoteProtocolError
from .frames import FORWARD_HEADROOM
from .handshake import ClientHandshake, HandshakeAccepted, HandshakeRejected
from .listener import ConnectionRequested, Listener
from .listener import Event as ListenerEvent
from .service.router import Lane, RelayService
from .websocket import (
    BinaryMessage,
    CloseReceived,
    ConnectionClosed,
    Pong,
    State,
    TextMessage,
    WebSocketConnection,
)

__all__ = ["MemoryListener", "MemoryNetwork", "MemoryTransport", "MemoryWebSocket"]

Message = str | bytes


class MemoryNetwork:
    """Connects client endpoints to a ``RelayService`` through in-memory byte queues."""

    def __init__(
        self,
        service: RelayService | None = None,
        *,
        now: float = 1_700_000_000.0,
        remote_host: str = "127.0.0.1",
        lanes: bool = True,
    ) -> None:
        self.service = service or RelayService()
        #: Relayed legs' reads go through ``RelayService.lane`` once it grants one (as the
        #: asyncio driver's do); False: always ``forward_into``.
        self.lanes = lanes
        self._lanes: dict[int, tuple[Lane, int]] = {}
        self.now = now
        self._remote_host = remote_host
        self._next_port = 50000
        self._endpoints: dict[int, MemoryTransport] = {}
        self._listeners: list[MemoryListener] = []
        self.bytes_moved = 0
        #: What RelayService.forward_into handed over directly, in order, for pump().
        self._fast: list[tuple[int, bytes | memoryview]] = []

    # -- connections -----------------------------------------------------------------------

    def _attach(self, transport: MemoryTransport) -> int:
        self._next_port += 1
        conn_id = self.service.connection_made(
            self.now, (self._remote_host, self._next_port), scheme="ws"
        )
        self._endpoints[conn_id] = transport
        return conn_id

    def _to_service(self, conn_id: int, data: bytes) -> None:
        self.bytes_moved += len(data)
        if data:
            # Lent like a socket driver's read buffer (scratch space first), so relayed legs
            # re-frame in place here too; its views are copied out in pump().
            buffer = bytearray(FORWARD_HEADROOM) + data
            lane = self._lanes.get(conn_id)
            if lane is not None:
                view = lane[0](self.now, memoryview(buffer), FORWARD_HEADROOM, len(buffer))
                if view is None:  # it has left plain relaying: the usual calls from now on
                    del self._lanes[conn_id]
                elif view:
                    self._fast.append((lane[1], view))
                return
            fast = self.service.forward_into(self.now, conn_id, memoryview(buffer),
                                             FORWARD_HEADROOM, len(buffer))
            if fast is not None:  # plain relayed data, nothing else queued
                if fast[1]:
                    self._fast.append(fast)
                granted = self.service.lane(conn_id) if self.lanes else None
                if granted is not None:
                    self._lanes[conn_id] = granted
        else:
            self._lanes.pop(conn_id, None)
            self.service.receive_eof(self.now, conn_id)
            self.service.connection_lost(self.now, conn_id)
            self._endpoints.pop(conn_id, None)

    def pump(self, *, limit: int = 100_000) -> None:
        """Move bytes both ways until nothing moves any more."""
        for _ in range(limit):
            moved = False
            fast, self._fast = self._fast, []  # it came before anything queued since
            for conn_id, data in fast + self.service.data_to_send():
                moved = True
                endpoint = self._endpoints.get(conn_id)
                self.bytes_moved += len(data)
                if data:
                    if endpoint is not None:
                        endpoint._from_relay(bytes(data))
                else:
                    # The service closed TCP: the endpoint sees EOF; the service forgets it.
                    if endpoint is not None:
                        endpoint._from_relay(b"")
                    self.service.connection_lost(self.now, conn_id)
                    self._endpoints.pop(conn_id, None)
                    self._lanes.pop(conn_id, None)
            for endpoint in list(self._endpoints.values()):
                moved |= endpoint._flush()
            for listener in self._listeners:
                moved |= listener._step()
            if not moved:
                return
        raise RuntimeError("the in-memory network did not settle (a loop between endpoints?)")

    # -- time ------------------------------------------------------------------------------

    def _deadlines(self) -> list[float]:
        found = [d for d in [self.service.next_deadline()] if d is not None]
        found += [d for lst in self._listeners if (d := lst.driver.next_deadline()) is not None]
        return found

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass, firing every timer that falls due on the way."""
        end = self.now + seconds
        self.pump()
        while True:
            due = [d for d in self._deadlines() if d <= end]
            if not due:
                break
            self.now = max(self.now, min(due))
            self.service.handle_timer(self.now)
            for lst in self._listeners:
                deadline = lst.driver.next_deadline()
                if deadline is not None and deadline <= self.now:
                    lst.driver.handle_timer(self.now)
            self.pump()
        self.now = end
        self.pump()

    # -- clients ---------------------------------------------------------------------------

    def connect(
        self, url: str, *, headers: Sequence[tuple[str, str]] = (), subprotocols: Sequence[str] = ()
    ) -> MemoryWebSocket:
        """Open a client WebSocket to the relay (a sender, typically); call ``pump()`` next."""
        return MemoryWebSocket(
            self, ClientConnection.from_url(url, headers=headers, subprotocols=subprotocols)
        )

    def listen(
        self,
        listener: Listener,
        *,
        on_request: Callable[[ConnectionRequested], object] | None = None,
        reply_to_close: bool = True,
        fail_first_open: bool = False,
    ) -> MemoryListener:
        """Run a listener core on this network.

        ``on_request`` decides each ``ConnectionRequested``: ``None`` accepts (offering the
        sender's first subprotocol), a ``(status, description)`` tuple rejects, anything else
        leaves the request unanswered. ``reply_to_close=False`` keeps accepted connections
        half-open after the sender's close, so the listener can still send. The core's own
        retry policy applies from the first open unless ``fail_first_open``.
        """
        driver = ListenerDriver(listener, reply_to_close=reply_to_close,
                                fail_first_open=fail_first_open)
        runner = MemoryListener(self, driver, on_request)
        self._listeners.append(runner)
        driver.start(self.now)
        self.pump()
        return runner


class MemoryTransport:
    """One TCP connection to the relay service. Bytes from the relay go to ``sink`` (``b""``:
    EOF); bytes to the relay are what was ``write``-n plus what ``source`` has queued."""

    def __init__(self, network: MemoryNetwork, sink: Callable[[bytes], None],
                 source: ClientConnection | None = None) -> None:
        self.network = network
        self.sink = sink
        self.source = source
        self.tcp_closed = False
        self._outbox: list[bytes] = []
        self.conn_id = network._attach(self)

    def write(self, data: bytes) -> None:
        self._outbox.append(data)

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (this side knows it did)."""
        if not self.tcp_closed:
            self._outbox.append(b"")

    def sever(self) -> None:
        """The link dies: both ends see the TCP connection end without a closing handshake."""
        self.abort()
        self._flush()
        self.sink(b"")

    def _from_relay(self, data: bytes) -> None:
        self.sink(data)

    def _flush(self) -> bool:
        if self.source is not None:
            self._outbox.extend(self.source.data_to_send())
        if not self._outbox:
            return False
        outbox, self._outbox = self._outbox, []
        for chunk in outbox:
            if self.tcp_closed:
                break
            self.network._to_service(self.conn_id, chunk)
            if not chunk:
                self.tcp_closed = True
        return True


@dataclass(slots=True)
class _Closed:
    code: int
    reason: str


class MemoryWebSocket:
    """A client WebSocket over the in-memory network, recording what it received."""

    def __init__(self, network: MemoryNetwork, connection: ClientConnection, *,
                 transport: MemoryTransport | None = None,
                 request: ConnectionRequested | None = None,
                 events: Sequence[object] = ()) -> None:
        self.network = network
        self.connection = connection
        self.request = request
        self.accepted: HandshakeAccepted | None = connection.response
        self.rejected: HandshakeRejected | None = None
        self.failed: RemoteProtocolError | None = None
        self.messages: list[Message] = []
        self.pongs: list[bytes] = []
        self.close_received: _Closed | None = None
        self.closed: _Closed | None = None
        self._eof = False
        self.on_event: Callable[[object], None] | None = None
        self._unseen: list[object] = []  # events that arrived before anyone subscribed
        if transport is None:
            transport = MemoryTransport(network, self._from_relay, connection)
        else:
            transport.sink = self._from_relay
            transport.source = connection
        self.transport = transport
        self._drain_events(events)

    @property
    def ws(self) -> WebSocketConnection | None:
        return self.connection.ws

    @property
    def handshake(self) -> ClientHandshake:
        return self.connection.handshake

    @property
    def subprotocol(self) -> str | None:
        return self.connection.subprotocol

    @property
    def tcp_closed(self) -> bool:
        """Whether either side has closed TCP."""
        return self._eof or self.transport.tcp_closed

    # -- application API -------------------------------------------------------------------

    def send(self, message: Message) -> None:
        if isinstance(message, str):
            self.connection.send_text(message)
        else:
            self.connection.send_binary(message)

    def ping(self, payload: bytes = b"") -> None:
        self.connection.send_ping(payload)

    def close(self, code: int = 1000, reason: str = "") -> None:
        ws = self.ws
        if ws is not None and ws.state is not State.CLOSED and not ws.close_expected():
            ws.send_close(code, reason)

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (this side knows it did)."""
        self.transport.abort()

    def sever(self) -> None:
        """The link dies: both ends see the TCP connection end without a closing handshake."""
        self.transport.sever()

    # -- network side ----------------------------------------------------------------------

    def _from_relay(self, data: bytes) -> None:
        if data:
            self.connection.receive_data(data)
        else:
            self._eof = True
            self.connection.receive_eof()
        self._drain_events()

    def subscribe(self, callback: Callable[[object], None]) -> None:
        """Receive every event from now on, starting with those that arrived unseen."""
        self.on_event = callback
        unseen, self._unseen = self._unseen, []
        for event in unseen:
            callback(event)

    def _emit(self, event: object) -> None:
        if self.on_event is not None:
            self.on_event(event)
        else:
            self._unseen.append(event)

    def _drain_events(self, earlier: Sequence[object] = ()) -> None:
        for event in [*earlier, *self.connection.events_received()]:
            if isinstance(event, (TextMessage, BinaryMessage)):
                self.messages.append(event.data)
            elif isinstance(event, Pong):
                self.pongs.append(event.payload)
            elif isinstance(event, CloseReceived):
                self.close_received = _Closed(event.code, event.reason)
            elif isinstance(event, ConnectionClosed):
                self.closed = _Closed(event.code, event.reason)
            elif isinstance(event, Opened):
                self.accepted = event.response
            elif isinstance(event, Refused):
                self.rejected = event.response
            elif isinstance(event, HandshakeFailed):
                self.failed = event.error
            self._emit(event)


class MemoryListener:
    """Runs a :class:`ListenerDriver` on the in-memory network (a tiny adapter)."""

    def __init__(
        self,
        network: MemoryNetwork,
        driver: ListenerDriver,
        on_request: Callable[[ConnectionRequested], object] | None,
    ) -> None:
        self.network = network
        self.driver = driver
        self.listener = driver.listener
        self.on_request = on_request
        self.events: list[ListenerEvent | object] = []
        #: Accepted connections to senders, in order.
        self.connections: list[MemoryWebSocket] = []
        #: Control-channel URLs opened, with the virtual time of each attempt.
        self.attempts: list[tuple[float, str]] = []
        #: The transport of the latest control channel.
        self.control: MemoryTransport | None = None
        self._transports: dict[int, MemoryTransport] = {}

    def _step(self) -> bool:
        """Run the driver's actions, hand its events to the application; True when busy."""
        return self.driver.run(self._run, self._event)

    def _event(self, event: object) -> None:
        self.events.append(event)
        if isinstance(event, ConnectionRequested):
            decision = self.on_request(event) if self.on_request else None
            if decision is None or isinstance(decision, tuple):
                self.driver.answer(event, decision, self.network.now)

    def _run(self, action: object) -> None:
        net = self.network
        driver = self.driver
        if isinstance(action, OpenTransport):
            key = action.key

            def sink(data: bytes) -> None:
                if data:
                    driver.data_received(key, data, net.now)
                else:
                    driver.connection_lost(key, net.now)
                # Run a HandOver before this transport's next bytes arrive (driver contract).
                self._step()

            transport = MemoryTransport(net, sink)
            self._transports[key] = transport
            if action.control:
                self.attempts.append((net.now, driver.listener.url))
                self.control = transport
            driver.transport_open(key, net.now)
        elif isinstance(action, Write):
            if action.key in self._transports:
                self._transports[action.key].write(action.data)
        elif isinstance(action, AbortTransport):
            if action.key in self._transports:
                self._transports.pop(action.key).abort()
        elif isinstance(action, HandOver):
            transport = self._transports.pop(action.key)
            self.connections.append(MemoryWebSocket(net, action.connection, transport=transport,
                                                    request=action.request,
                                                    events=action.events))
