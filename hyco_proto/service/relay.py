"""The relay service as a sans-IO byte machine: TCP connections in, TCP connections out.

``RelayService`` owns, per TCP connection, the opening handshake and then either a listener's
control channel, a sender waiting for its listener, or one leg of a relayed pair. Its driver (the
asyncio server, or an in-memory pair in tests) only moves bytes:

    conn = service.connection_made(now, remote=("127.0.0.1", 50000))
    service.receive_data(now, conn, data)          # bytes read from that TCP connection
    for conn, data in service.data_to_send():      # b"" means: close that TCP connection
        ...
    service.handle_timer(now) at service.next_deadline()

Decisions (auth, listener choice, accept/reject, token expiry) are the broker's; this module wires
them to handshakes and WebSocket connections (hybrid-connections-wire §8).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..handshake import HandshakeRequest, ServerHandshake
from ..websocket import (
    BinaryMessage,
    CloseReceived,
    ConnectionClosed,
    Role,
    State,
    TextMessage,
    WebSocketConnection,
)
from .broker import (
    CloseListener,
    FailSender,
    PendingConnect,
    Refused,
    RelayBroker,
    RendezvousAccepted,
    RendezvousRejected,
    SendControl,
)
from .config import ServiceConfig

__all__ = ["ConnectionKind", "RelayService", "ServiceStats"]

_HC_PREFIX = "/$hc/"
_LEGACY_PREFIX = "/$servicebus/hybridconnection/"


class ConnectionKind(enum.Enum):
    HANDSHAKE = "handshake"  # reading the HTTP upgrade request
    LISTENER = "listener"  # a listener's control channel
    WAITING = "waiting"  # a sender whose handshake waits for accept/reject
    RELAY = "relay"  # one leg of a joined pair
    CLOSED = "closed"


@dataclass(slots=True)
class ServiceStats:
    """Counters a health endpoint can show."""

    listeners: int = 0
    relayed_pairs: int = 0
    messages_relayed: int = 0
    bytes_relayed: int = 0
    rejects: int = 0
    auth_failures: int = 0
    handshake_errors: int = 0


@dataclass(slots=True)
class _Conn:
    id: int
    remote: tuple[str, int]
    scheme: str
    opened: float
    kind: ConnectionKind = ConnectionKind.HANDSHAKE
    handshake: ServerHandshake = field(default_factory=ServerHandshake)
    request: HandshakeRequest | None = None
    ws: WebSocketConnection | None = None
    peer: int | None = None
    listener_id: str | None = None
    connect_id: str | None = None
    early: bytearray = field(default_factory=bytearray)  # frames sent before our 101


def _split_target(target: str) -> tuple[str, str] | None:
    """``/$hc/hc/suffix?query`` → (``hc/suffix``, ``query``); None when not a relay path."""
    parts = urlsplit(target)
    path = parts.path
    for prefix in (_HC_PREFIX, _LEGACY_PREFIX):
        if path.lower().startswith(prefix):
            return path[len(prefix) :], parts.query
    return None


def _can_send(ws: WebSocketConnection) -> bool:
    """Whether ``ws`` has not sent its close frame yet (it may have received the peer's)."""
    return ws.state is State.OPEN or (ws.state is State.CLOSING and not ws.close_expected())


def _action(query: str) -> str:
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key.lower() == "sb-hc-action":
            return value.lower()
    return "connect"  # a missing action means connect (hybrid-connections-wire §1.2)


class RelayService:
    """Sans-IO relay service: see the module docstring for the driving loop."""

    def __init__(
        self,
        config: ServiceConfig | None = None,
        *,
        broker: RelayBroker | None = None,
        handshake_timeout: float = 10.0,
    ) -> None:
        self.broker = broker or RelayBroker(config)
        #: Seconds a client has to send a complete upgrade request.
        self.handshake_timeout = handshake_timeout
        self.stats = ServiceStats()
        self._conns: dict[int, _Conn] = {}
        self._next_id = 1
        self._out: list[tuple[int, bytes]] = []
        self._by_listener: dict[str, int] = {}
        self._by_connect: dict[str, int] = {}

    # -- driver API ------------------------------------------------------------------------

    def connection_made(
        self, now: float, remote: tuple[str, int] = ("127.0.0.1", 0), *, scheme: str = "ws"
    ) -> int:
        """A TCP (or TLS, ``scheme="wss"``) connection was accepted; returns its id."""
        conn = _Conn(self._next_id, remote, scheme, now)
        self._next_id += 1
        self._conns[conn.id] = conn
        return conn.id

    def receive_data(self, now: float, conn_id: int, data: bytes) -> None:
        conn = self._conns.get(conn_id)
        if conn is None or conn.kind is ConnectionKind.CLOSED:
            return
        if conn.kind is ConnectionKind.HANDSHAKE:
            conn.handshake.receive_data(data)
            self._advance_handshake(now, conn)
        elif conn.kind is ConnectionKind.WAITING:
            conn.early += data
        elif conn.ws is not None:
            conn.ws.receive_data(data)
            self._pump(now, conn)
        self._run_broker(now)

    def receive_eof(self, now: float, conn_id: int) -> None:
        """The peer half-closed or the connection died; treated alike."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        if conn.ws is not None:
            conn.ws.receive_eof()
            self._pump(now, conn)
        else:
            self._drop(now, conn)
        self._run_broker(now)

    def connection_lost(self, now: float, conn_id: int) -> None:
        """The driver closed or lost the TCP connection: forget it."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        if conn.ws is not None and conn.ws.state is not State.CLOSED:
            conn.ws.receive_eof()
            self._pump(now, conn)
        self._drop(now, conn)
        self._conns.pop(conn_id, None)
        self._run_broker(now)

    def data_to_send(self) -> list[tuple[int, bytes]]:
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float | None:
        deadlines = [c.opened + self.handshake_timeout for c in self._conns.values()
                     if c.kind is ConnectionKind.HANDSHAKE]
        broker = self.broker.next_deadline()
        if broker is not None:
            deadlines.append(broker)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        for conn in list(self._conns.values()):
            expired = now >= conn.opened + self.handshake_timeout
            if conn.kind is ConnectionKind.HANDSHAKE and expired:
                # A client that never finishes its request must not hold a connection forever.
                self.stats.handshake_errors += 1
                self._send(conn, conn.handshake.reject(408, "Request Timeout"))
                self._close_tcp(conn)
        self.broker.handle_timer(now)
        self._run_broker(now)

    def kind(self, conn_id: int) -> ConnectionKind | None:
        conn = self._conns.get(conn_id)
        return conn.kind if conn else None

    # -- handshake dispatch ----------------------------------------------------------------

    def _advance_handshake(self, now: float, conn: _Conn) -> None:
        event = conn.handshake.next_event()
        if event is None:
            if conn.handshake.rejection is not None:
                self.stats.handshake_errors += 1
                self._send(conn, conn.handshake.rejection)
                self._close_tcp(conn)
            return
        conn.request = event
        split = _split_target(event.target)
        if split is None:
            self._reject(conn, 404, "Not a relay address: expected /$hc/{hybrid connection}.")
            return
        path, query = split
        action = _action(query)
        host = next((v for k, v in event.headers if k.lower() == "host"), "localhost")
        base_url = f"{conn.scheme}://{host}"
        if action == "listen":
            self._open_listener(now, conn, path, query, base_url)
        elif action == "connect":
            self._open_sender(now, conn, path, query)
        elif action == "accept":
            self._rendezvous(now, conn, query)
        else:
            self._reject(
                conn,
                400,
                f"Unsupported sb-hc-action '{action}' on a WebSocket "
                "connection (expected listen, connect or accept).",
            )

    def _reject(self, conn: _Conn, status: int, description: str) -> None:
        if status in (401, 403):
            self.stats.auth_failures += 1
        self._send(conn, conn.handshake.reject(status, description))
        self._close_tcp(conn)

    def _accept_ws(
        self, conn: _Conn, kind: ConnectionKind, subprotocol: str | None, *, reply_to_close: bool
    ) -> None:
        self._send(conn, conn.handshake.accept(subprotocol))
        trailing = conn.handshake.trailing_data + bytes(conn.early)
        conn.early.clear()
        conn.kind = kind
        conn.ws = WebSocketConnection(
            Role.SERVER, reply_to_close=reply_to_close, trailing_data=trailing
        )

    def _open_listener(self, now: float, conn: _Conn, path: str, query: str, base: str) -> None:
        assert conn.request is not None
        result = self.broker.open_listener(
            now, path, headers=conn.request.headers, query=query, base_url=base
        )
        if isinstance(result, Refused):
            self._reject(conn, result.status, result.description)
            return
        conn.listener_id = result.id
        self._by_listener[result.id] = conn.id
        self.stats.listeners += 1
        self._accept_ws(conn, ConnectionKind.LISTENER, None, reply_to_close=True)
        self._pump(now, conn)

    def _open_sender(self, now: float, conn: _Conn, path: str, query: str) -> None:
        assert conn.request is not None
        result = self.broker.connect(
            now,
            path,
            headers=conn.request.headers,
            query=query,
            remote=conn.remote,
            subprotocols=conn.request.subprotocols,
        )
        if isinstance(result, Refused):
            self._reject(conn, result.status, result.description)
            return
        conn.kind = ConnectionKind.WAITING
        conn.connect_id = result.id
        self._by_connect[result.id] = conn.id

    def _rendezvous(self, now: float, conn: _Conn, query: str) -> None:
        result = self.broker.rendezvous(now, query)
        if isinstance(result, Refused):
            self._reject(conn, result.status, result.description)
            return
        sender = self._sender_for(result.pending)
        if isinstance(result, RendezvousRejected):
            self.stats.rejects += 1
            # 410 tells the listener its reject went through (hybrid-connections-wire §3.1).
            self._send(conn, conn.handshake.reject(410, "Gone: the connection was rejected."))
            self._close_tcp(conn)
            if sender is not None:
                self._send(sender, sender.handshake.reject(result.status, result.description))
                self._close_tcp(sender)
            return
        assert isinstance(result, RendezvousAccepted)
        if sender is None:
            self._reject(conn, 410, "Gone: the sender left before the rendezvous.")
            return
        # The listener offers the subprotocol it chose; both legs echo it (§5.6 item 7).
        assert conn.request is not None
        chosen = conn.request.subprotocols[0] if conn.request.subprotocols else None
        if chosen is not None and chosen not in result.pending.subprotocols:
            chosen = None
        self._accept_ws(conn, ConnectionKind.RELAY, chosen, reply_to_close=False)
        self._accept_ws(sender, ConnectionKind.RELAY, chosen, reply_to_close=False)
        conn.peer, sender.peer = sender.id, conn.id
        self.stats.relayed_pairs += 1
        self._pump(now, conn)
        self._pump(now, sender)

    def _sender_for(self, pending: PendingConnect) -> _Conn | None:
        conn_id = self._by_connect.pop(pending.id, None)
        conn = self._conns.get(conn_id) if conn_id is not None else None
        return conn if conn is not None and conn.kind is ConnectionKind.WAITING else None

    # -- established connections -----------------------------------------------------------

    def _pump(self, now: float, conn: _Conn) -> None:
        ws = conn.ws
        assert ws is not None
        for event in ws.events_received():
            if conn.kind is ConnectionKind.LISTENER:
                self._listener_event(now, conn, event)
            else:
                self._relay_event(now, conn, event)
        self._flush(conn)

    def _listener_event(self, now: float, conn: _Conn, event: object) -> None:
        assert conn.listener_id is not None
        if isinstance(event, TextMessage):
            self.broker.listener_message(now, conn.listener_id, event.data)
        elif isinstance(event, ConnectionClosed):
            self._drop(now, conn)

    def _relay_event(self, now: float, conn: _Conn, event: object) -> None:
        peer = self._conns.get(conn.peer) if conn.peer is not None else None
        peer_ws = peer.ws if peer is not None else None
        if isinstance(event, (TextMessage, BinaryMessage)):
            if peer_ws is not None and _can_send(peer_ws):
                if isinstance(event, TextMessage):
                    peer_ws.send_text(event.data)
                    self.stats.bytes_relayed += len(event.data.encode())
                else:
                    peer_ws.send_binary(event.data)
                    self.stats.bytes_relayed += len(event.data)
                self.stats.messages_relayed += 1
        elif isinstance(event, CloseReceived):
            # Forward the close to the other leg; each leg completes its own closing handshake
            # when the other side answers, so a one-sided close with data still flowing the
            # other way works (port bridges carry TCP half-close this way).
            code = 1000 if event.code in (1005, 1006) else event.code
            if peer_ws is not None and _can_send(peer_ws):
                peer_ws.send_close(code, event.reason)
            elif (
                (peer_ws is None or peer_ws.state is State.CLOSED)
                and conn.ws is not None
                and _can_send(conn.ws)
            ):
                conn.ws.send_close(code, event.reason)
        elif isinstance(event, ConnectionClosed):
            if peer_ws is not None and _can_send(peer_ws):
                # One leg dropped: the other gets 1001 (hybrid-connections-wire §4.4).
                code = 1001 if event.code in (1005, 1006) else event.code
                peer_ws.send_close(code, event.reason)
            conn.kind = ConnectionKind.CLOSED
        if peer is not None:
            self._flush(peer)

    def _flush(self, conn: _Conn) -> None:
        if conn.ws is None:
            return
        for chunk in conn.ws.data_to_send():
            self._send(conn, chunk)
            if chunk == b"":
                conn.kind = ConnectionKind.CLOSED

    # -- broker actions --------------------------------------------------------------------

    def _run_broker(self, now: float) -> None:
        for action in self.broker.actions_to_take():
            if isinstance(action, SendControl):
                target = self._conn_for_listener(action.listener_id)
                if target is not None and target.ws is not None and _can_send(target.ws):
                    target.ws.send_text(action.text)
                    self._flush(target)
            elif isinstance(action, CloseListener):
                target = self._conn_for_listener(action.listener_id)
                if target is not None and target.ws is not None and _can_send(target.ws):
                    target.ws.send_close(action.code, action.reason[:120])
                    self._flush(target)
            elif isinstance(action, FailSender):
                conn_id = self._by_connect.pop(action.connect_id, None)
                sender = self._conns.get(conn_id) if conn_id is not None else None
                if sender is not None and sender.kind is ConnectionKind.WAITING:
                    self._send(sender, sender.handshake.reject(action.status, action.description))
                    self._close_tcp(sender)

    def _conn_for_listener(self, listener_id: str) -> _Conn | None:
        conn_id = self._by_listener.get(listener_id)
        return self._conns.get(conn_id) if conn_id is not None else None

    # -- plumbing --------------------------------------------------------------------------

    def _send(self, conn: _Conn, data: bytes) -> None:
        self._out.append((conn.id, data))

    def _close_tcp(self, conn: _Conn) -> None:
        self._drop_registrations(conn)
        conn.kind = ConnectionKind.CLOSED
        self._out.append((conn.id, b""))

    def _drop(self, now: float, conn: _Conn) -> None:
        self._drop_registrations(conn, now)
        if conn.kind is not ConnectionKind.CLOSED:
            conn.kind = ConnectionKind.CLOSED

    def _drop_registrations(self, conn: _Conn, now: float = 0.0) -> None:
        if conn.listener_id is not None and self._by_listener.get(conn.listener_id) == conn.id:
            del self._by_listener[conn.listener_id]
            self.broker.close_listener(now, conn.listener_id)
            self.stats.listeners -= 1
        if conn.connect_id is not None and self._by_connect.get(conn.connect_id) == conn.id:
            del self._by_connect[conn.connect_id]
            self.broker.cancel_connect(now, conn.connect_id)
