"""An in-memory network: the relay service, listeners and senders driven without sockets.

Everything here is sans-IO and runs on a virtual clock, so tests (and ``make demo``'s first act)
can run a whole Hybrid Connections exchange — control channel, accept, rendezvous, relayed
messages, reject, token renewal and expiry, reconnects — deterministically, in one thread.

It is also the smallest complete driver of the cores, and so the template for the real adapters:
``MemoryNetwork`` plays the event loop, ``MemoryWebSocket`` the client connection and
``MemoryListener`` the listener adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .handshake import ClientHandshake, HandshakeAccepted, HandshakeRejected
from .listener import (
    CloseControlChannel,
    ConnectionRequested,
    ConnectRendezvous,
    Event,
    Listener,
    OpenControlChannel,
    SendControlMessage,
    SendPing,
)
from .service.relay import RelayService
from .websocket import (
    BinaryMessage,
    CloseReceived,
    ConnectionClosed,
    Pong,
    Role,
    State,
    TextMessage,
    WebSocketConnection,
)

__all__ = ["MemoryListener", "MemoryNetwork", "MemoryWebSocket"]

Message = str | bytes


class MemoryNetwork:
    """Connects client endpoints to a ``RelayService`` through in-memory byte queues."""

    def __init__(
        self,
        service: RelayService | None = None,
        *,
        now: float = 1_700_000_000.0,
        remote_host: str = "127.0.0.1",
    ) -> None:
        self.service = service or RelayService()
        self.now = now
        self._remote_host = remote_host
        self._next_port = 50000
        self._endpoints: dict[int, MemoryWebSocket] = {}
        self._listeners: list[MemoryListener] = []
        self.bytes_moved = 0

    # -- connections -----------------------------------------------------------------------

    def _attach(self, endpoint: MemoryWebSocket) -> int:
        self._next_port += 1
        conn_id = self.service.connection_made(
            self.now, (self._remote_host, self._next_port), scheme="ws"
        )
        self._endpoints[conn_id] = endpoint
        return conn_id

    def _to_service(self, conn_id: int, data: bytes) -> None:
        self.bytes_moved += len(data)
        if data:
            self.service.receive_data(self.now, conn_id, data)
        else:
            self.service.receive_eof(self.now, conn_id)
            self.service.connection_lost(self.now, conn_id)
            self._endpoints.pop(conn_id, None)

    def pump(self, *, limit: int = 100_000) -> None:
        """Move bytes both ways until nothing moves any more."""
        for _ in range(limit):
            moved = False
            for conn_id, data in self.service.data_to_send():
                moved = True
                endpoint = self._endpoints.get(conn_id)
                self.bytes_moved += len(data)
                if data:
                    if endpoint is not None:
                        endpoint._from_relay(data)
                else:
                    # The service closed TCP: the endpoint sees EOF; the service forgets it.
                    if endpoint is not None:
                        endpoint._from_relay(b"")
                    self.service.connection_lost(self.now, conn_id)
                    self._endpoints.pop(conn_id, None)
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
        found += [d for lst in self._listeners if (d := lst.listener.next_deadline()) is not None]
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
                deadline = lst.listener.next_deadline()
                if deadline is not None and deadline <= self.now:
                    lst.listener.handle_timer(self.now)
            self.pump()
        self.now = end
        self.pump()

    # -- clients ---------------------------------------------------------------------------

    def connect(
        self, url: str, *, headers: Sequence[tuple[str, str]] = (), subprotocols: Sequence[str] = ()
    ) -> MemoryWebSocket:
        """Open a client WebSocket to the relay (a sender, typically); call ``pump()`` next."""
        return MemoryWebSocket(
            self, ClientHandshake.from_url(url, headers=headers, subprotocols=subprotocols)
        )

    def listen(
        self,
        listener: Listener,
        *,
        on_request: Callable[[ConnectionRequested], object] | None = None,
        reply_to_close: bool = True,
    ) -> MemoryListener:
        """Run a listener core on this network.

        ``on_request`` decides each ``ConnectionRequested``: ``None`` accepts (offering the
        sender's first subprotocol), a ``(status, description)`` tuple rejects, anything else
        leaves the request unanswered. ``reply_to_close=False`` keeps accepted connections
        half-open after the sender's close, so the listener can still send.
        """
        runner = MemoryListener(self, listener, on_request, reply_to_close)
        self._listeners.append(runner)
        listener.start(self.now)
        self.pump()
        return runner


@dataclass(slots=True)
class _Closed:
    code: int
    reason: str


class MemoryWebSocket:
    """A client WebSocket over the in-memory network: handshake, then a client-role connection."""

    def __init__(
        self, network: MemoryNetwork, handshake: ClientHandshake, *, reply_to_close: bool = True
    ) -> None:
        self.network = network
        self.reply_to_close = reply_to_close
        self.handshake = handshake
        self.ws: WebSocketConnection | None = None
        self.accepted: HandshakeAccepted | None = None
        self.rejected: HandshakeRejected | None = None
        self.messages: list[Message] = []
        self.pongs: list[bytes] = []
        self.close_received: _Closed | None = None
        self.closed: _Closed | None = None
        self.tcp_closed = False
        self.on_event: Callable[[object], None] | None = None
        self._unseen: list[object] = []  # events that arrived before anyone subscribed
        self._outbox: list[bytes] = [handshake.data_to_send()]
        self._conn_id = network._attach(self)

    @property
    def subprotocol(self) -> str | None:
        return self.accepted.subprotocol if self.accepted else None

    # -- application API -------------------------------------------------------------------

    def send(self, message: Message) -> None:
        assert self.ws is not None, "not connected"
        if isinstance(message, str):
            self.ws.send_text(message)
        else:
            self.ws.send_binary(message)

    def ping(self, payload: bytes = b"") -> None:
        assert self.ws is not None, "not connected"
        self.ws.send_ping(payload)

    def close(self, code: int = 1000, reason: str = "") -> None:
        ws = self.ws
        if ws is not None and ws.state is not State.CLOSED and not ws.close_expected():
            ws.send_close(code, reason)

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (this side knows it did)."""
        if not self.tcp_closed:
            self.tcp_closed = True
            self._outbox.append(b"")

    def sever(self) -> None:
        """The link dies: both ends see the TCP connection end without a closing handshake."""
        self.abort()
        if self.ws is not None:
            self.ws.receive_eof()
            self._drain_events()

    # -- network side ----------------------------------------------------------------------

    def _from_relay(self, data: bytes) -> None:
        if self.ws is None:
            self.handshake.receive_data(data)
            if not data:
                self.tcp_closed = True
            event = self.handshake.next_event()
            if isinstance(event, HandshakeAccepted):
                self.accepted = event
                self.ws = WebSocketConnection(
                    Role.CLIENT,
                    reply_to_close=self.reply_to_close,
                    trailing_data=event.trailing_data,
                )
            elif isinstance(event, HandshakeRejected):
                self.rejected = event
                self.tcp_closed = True
            self._emit(event)
            if self.ws is not None and not data:
                self.ws.receive_eof()
        elif data:
            self.ws.receive_data(data)
        else:
            self.tcp_closed = True
            self.ws.receive_eof()
        self._drain_events()

    def subscribe(self, callback: Callable[[object], None]) -> None:
        """Receive every event from now on, starting with those that arrived unseen."""
        self.on_event = callback
        unseen, self._unseen = self._unseen, []
        for event in unseen:
            callback(event)

    def _emit(self, event: object) -> None:
        if event is None:
            return
        if self.on_event is not None:
            self.on_event(event)
        else:
            self._unseen.append(event)

    def _drain_events(self) -> None:
        if self.ws is None:
            return
        for event in self.ws.events_received():
            if isinstance(event, (TextMessage, BinaryMessage)):
                self.messages.append(event.data)
            elif isinstance(event, Pong):
                self.pongs.append(event.payload)
            elif isinstance(event, CloseReceived):
                self.close_received = _Closed(event.code, event.reason)
            elif isinstance(event, ConnectionClosed):
                self.closed = _Closed(event.code, event.reason)
            self._emit(event)

    def _flush(self) -> bool:
        if self.ws is not None:
            self._outbox.extend(self.ws.data_to_send())
        if not self._outbox:
            return False
        outbox, self._outbox = self._outbox, []
        for chunk in outbox:
            if chunk == b"" or chunk:
                self.network._to_service(self._conn_id, chunk)
            if chunk == b"":
                self.tcp_closed = True
                break
        return True


@dataclass(slots=True)
class _Rendezvous:
    action: ConnectRendezvous
    socket: MemoryWebSocket


class MemoryListener:
    """Executes a ``Listener`` core's actions on the in-memory network (a tiny adapter)."""

    def __init__(
        self,
        network: MemoryNetwork,
        listener: Listener,
        on_request: Callable[[ConnectionRequested], object] | None,
        reply_to_close: bool = True,
    ) -> None:
        self.network = network
        self.reply_to_close = reply_to_close
        self.listener = listener
        self.on_request = on_request
        self.control: MemoryWebSocket | None = None
        self.events: list[Event] = []
        #: Accepted connections to senders, in order.
        self.connections: list[MemoryWebSocket] = []
        #: Control-channel URLs opened, with the virtual time of each attempt.
        self.attempts: list[tuple[float, str]] = []
        self._rendezvous: list[_Rendezvous] = []
        self._control_reported = False

    def _step(self) -> bool:
        """Report what the sockets did, run the core's actions; True when anything happened."""
        now = self.network.now
        lst = self.listener
        moved = False
        control = self.control
        if control is not None and not self._control_reported:
            if control.rejected is not None:
                self._control_reported = True
                lst.channel_rejected(now, control.rejected.status, control.rejected.reason)
                moved = True
            elif control.accepted is not None and control.on_event is None:
                lst.channel_opened(now)
                control.subscribe(self._control_event)
                moved = True
            elif control.tcp_closed and control.accepted is None:
                self._control_reported = True
                lst.channel_closed(now, 1006, "connection failed")
                moved = True
        for rv in list(self._rendezvous):
            sock = rv.socket
            if sock.accepted is not None or sock.rejected is not None or sock.tcp_closed:
                self._rendezvous.remove(rv)
                status = 101 if sock.accepted else (sock.rejected.status if sock.rejected else None)
                reason = sock.rejected.reason if sock.rejected else ""
                lst.rendezvous_result(now, rv.action.request_id, status, reason)
                if sock.accepted is not None and not rv.action.reject:
                    self.connections.append(sock)
                moved = True
        for action in lst.actions_to_take():
            moved = True
            self._run(action)
        for event in lst.events_received():
            moved = True
            self.events.append(event)
            if isinstance(event, ConnectionRequested):
                decision = self.on_request(event) if self.on_request else None
                if decision is None:
                    # Like hyco-ws and .NET: offer the sender's first subprotocol (§3.1).
                    offered = event.command.requested_subprotocols
                    lst.accept(now, event, subprotocol=offered[0] if offered else None)
                elif isinstance(decision, tuple):
                    status, description = decision
                    lst.reject(now, event, status, description)
        return moved

    def _control_event(self, event: object) -> None:
        now = self.network.now
        if isinstance(event, TextMessage):
            self.listener.channel_message(now, event.data)
        elif isinstance(event, BinaryMessage):
            self.listener.channel_binary(now, event.data)
        elif isinstance(event, Pong):
            self.listener.pong_received(now, event.payload)
        elif isinstance(event, ConnectionClosed) and not self._control_reported:
            self._control_reported = True
            self.listener.channel_closed(now, event.code, event.reason)

    def _run(self, action: object) -> None:
        net = self.network
        if isinstance(action, OpenControlChannel):
            self.attempts.append((net.now, action.url))
            self._control_reported = False
            self.control = MemoryWebSocket(
                net, ClientHandshake.from_url(action.url, headers=action.headers)
            )
        elif isinstance(action, SendControlMessage):
            if self.control is not None and self.control.ws is not None:
                self.control.ws.send_text(action.text)
        elif isinstance(action, SendPing):
            if self.control is not None and self.control.ws is not None:
                self.control.ws.send_ping(action.payload)
        elif isinstance(action, CloseControlChannel):
            control = self.control
            if control is not None:
                if action.abort or control.ws is None:
                    self._control_reported = True
                    control.abort()
                else:
                    control.close(action.code, action.reason)
        elif isinstance(action, ConnectRendezvous):
            protocols = [action.subprotocol] if action.subprotocol else []
            sock = MemoryWebSocket(
                net,
                ClientHandshake.from_url(
                    action.url, headers=action.headers, subprotocols=protocols
                ),
                reply_to_close=self.reply_to_close,
            )
            self._rendezvous.append(_Rendezvous(action, sock))
