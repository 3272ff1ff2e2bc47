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
from urllib.parse import parse_qsl, urlsplit

from ..frames import OP_CLOSE, Forwarder, encode_frame
from ..handshake import HandshakeRequest, ServerHandshake
from ..sender import REJECTED_BY_HEADER
from ..websocket import (
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
from .stats import ServiceStats
from .status import RefusalLog, service_endpoint

__all__ = ["ConnectionKind", "RelayService", "ServiceStats"]

_HC_PREFIX = "/$hc/"
_LEGACY_PREFIX = "/$servicebus/hybridconnection/"

#: Who refused a handshake (emulator only, hyco_proto.sender.REJECTED_BY_HEADER).
_BY_RELAY = ((REJECTED_BY_HEADER, "relay"),)
_BY_LISTENER = ((REJECTED_BY_HEADER, "listener"),)


class ConnectionKind(enum.Enum):
    HANDSHAKE = "handshake"  # reading the HTTP upgrade request
    LISTENER = "listener"  # a listener's control channel
    WAITING = "waiting"  # a sender whose handshake waits for accept/reject
    RELAY = "relay"  # one leg of a joined pair
    CLOSED = "closed"


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
    # Relay legs only: the forwarder re-framing this leg's frames for the peer leg.
    fwd: Forwarder | None = None
    close_in: bool = False  # this leg's close frame has passed to the peer
    eof: bool = False  # this leg's TCP connection has ended
    closing_deadline: float | None = None  # tear the pair down by then


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
    for key, value in parse_qsl(query, keep_blank_values=True):
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
        half_close_timeout: float = 3600.0,
        close_timeout: float = 10.0,
        max_frame_size: int = 0,
    ) -> None:
        self.broker = broker or RelayBroker(config)
        #: Seconds a client has to send a complete upgrade request.
        self.handshake_timeout = handshake_timeout
        #: After one leg's close passed, the other leg may keep sending this long (half-close).
        self.half_close_timeout = half_close_timeout
        #: After the relay closed a leg itself (peer failed or left), seconds to wait for a reply.
        self.close_timeout = close_timeout
        #: Largest data frame relayed (0: no limit); bigger ones fail the leg with 1009.
        self.max_frame_size = max_frame_size
        #: Bytes a waiting sender may send before its 101 (they are relayed once it is joined).
        self.max_early_bytes = 65536
        self.stats = ServiceStats()
        #: Throttled log of refused handshakes (with their TrackingId).
        self.refusal_log = RefusalLog()
        self._conns: dict[int, _Conn] = {}
        #: Connections that have (or had) a deadline of their own; see ``next_deadline``.
        self._timed: set[int] = set()
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
        self._timed.add(conn.id)  # the handshake timeout
        self._next_id += 1
        self._conns[conn.id] = conn
        return conn.id

    def receive_data(self, now: float, conn_id: int, data: bytes | memoryview) -> None:
        """Bytes read from a connection. A view may be lent: nothing keeps it after the call."""
        conn = self._conns.get(conn_id)
        if conn is None or conn.kind is ConnectionKind.CLOSED:
            return
        if conn.kind is ConnectionKind.HANDSHAKE:
            conn.handshake.receive_data(bytes(data))  # kept (trailing data): copy a lent view
            self._advance_handshake(now, conn)
        elif conn.kind is ConnectionKind.WAITING:
            # A client should not send frames before its 101; tolerate a little, not a flood.
            conn.early += data
            if len(conn.early) > self.max_early_bytes:
                self._reject(conn, 400, "Frames sent before the WebSocket handshake completed.")
        elif conn.fwd is not None:
            self._relay_data(now, conn, data)
        elif conn.ws is not None:
            conn.ws.receive_data(bytes(data))
            self._pump(now, conn)
        self._run_broker(now)

    def receive_eof(self, now: float, conn_id: int) -> None:
        """The peer half-closed or the connection died; treated alike."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        if conn.fwd is not None:
            self._relay_eof(now, conn)
        elif conn.ws is not None:
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
        if conn.fwd is not None:
            self._relay_eof(now, conn)
        elif conn.ws is not None and conn.ws.state is not State.CLOSED:
            conn.ws.receive_eof()
            self._pump(now, conn)
        self._drop(now, conn)
        self._conns.pop(conn_id, None)
        self._run_broker(now)

    def data_to_send(self) -> list[tuple[int, bytes]]:
        out, self._out = self._out, []
        return out

    def _deadline_of(self, conn: _Conn) -> float | None:
        """The connection's own deadline: its handshake's, or its relayed pair's closing one."""
        if conn.kind is ConnectionKind.HANDSHAKE:
            return conn.opened + self.handshake_timeout
        if conn.kind is ConnectionKind.RELAY:
            return conn.closing_deadline
        return None

    def next_deadline(self) -> float | None:
        # Only connections that ever had a deadline are looked at (not every relayed pair on
        # every read); the ones whose deadline has gone are dropped on the way.
        best = self.broker.next_deadline()
        for conn_id in list(self._timed):
            conn = self._conns.get(conn_id)
            deadline = self._deadline_of(conn) if conn is not None else None
            if deadline is None:
                self._timed.discard(conn_id)
            elif best is None or deadline < best:
                best = deadline
        return best

    def handle_timer(self, now: float) -> None:
        for conn_id in list(self._timed):
            conn = self._conns.get(conn_id)
            deadline = self._deadline_of(conn) if conn is not None else None
            if conn is None or deadline is None or now < deadline:
                continue
            if conn.kind is ConnectionKind.HANDSHAKE:
                # A client that never finishes its request must not hold a connection forever.
                self.stats.handshake_errors += 1
                self._send(conn, conn.handshake.reject(408, "Request Timeout", _BY_RELAY))
            # else: a relayed leg whose close never completed is torn down (its peer has its own
            # deadline).
            self._close_tcp(conn)
        self.broker.handle_timer(now)
        self._run_broker(now)

    def peer_of(self, conn_id: int) -> int | None:
        """The other leg of a relayed pair (the connection this one's bytes are written to)."""
        conn = self._conns.get(conn_id)
        return conn.peer if conn is not None and conn.kind is ConnectionKind.RELAY else None

    def shutdown(
        self, now: float, code: int = 1001, reason: str = "The relay is shutting down."
    ) -> None:
        """Close everything cleanly: listeners and relayed legs hear ``code`` (1001: going
        away, hybrid-connections-wire §4.4), waiting senders get 503, half-read requests end."""
        for conn in list(self._conns.values()):
            if conn.kind is ConnectionKind.LISTENER and conn.ws is not None:
                if _can_send(conn.ws):
                    conn.ws.send_close(code, reason)
                    self._flush(conn)
                self._close_tcp(conn)
            elif conn.kind is ConnectionKind.RELAY:
                if self._can_inject(conn, self._peer(conn)):
                    self._send(conn, self._close_frame(code, reason))
                self._close_tcp(conn)
            elif conn.kind is ConnectionKind.WAITING:
                self._reject(conn, 503, reason)
            elif conn.kind is ConnectionKind.HANDSHAKE:
                self._close_tcp(conn)

    def kind(self, conn_id: int) -> ConnectionKind | None:
        conn = self._conns.get(conn_id)
        return conn.kind if conn else None

    # -- handshake dispatch ----------------------------------------------------------------

    def _advance_handshake(self, now: float, conn: _Conn) -> None:
        event = conn.handshake.next_event()
        if event is None:
            if conn.handshake.rejection is not None:
                refused = conn.handshake.refused_request
                endpoint = (service_endpoint(refused.method, refused.target)
                            if refused is not None else None)
                if endpoint is not None:
                    # The service's own plain-HTTP endpoints on the relay's port (not upgrades).
                    kinds: dict[str, int] = {}
                    for other in self._conns.values():
                        if other is conn:
                            continue  # the request itself
                        kinds[other.kind.value] = kinds.get(other.kind.value, 0) + 1
                    content_type, render = endpoint
                    body = render(now=now, stats=self.stats, broker=self.broker,
                                  connections=kinds)
                    headers = [("Content-Type", content_type), ("Cache-Control", "no-store")]
                    self._send(conn, conn.handshake.reject(200, "OK", headers, body))
                    self._close_tcp(conn)
                    return
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
        # The description carries the TrackingId; logged throttled (hyco-ws retries 401s in a
        # tight loop, hybrid-connections-wire §4.2). Only the path: the query may hold a token.
        target = conn.request.target if conn.request is not None else "/"
        self.refusal_log.refused(conn.opened, status, target, description)
        self._send(conn, conn.handshake.reject(status, description, _BY_RELAY))
        self._close_tcp(conn)

    def _accept_listener(self, conn: _Conn) -> None:
        """Answer a listener's upgrade: its control channel is a WebSocket the service speaks."""
        self._send(conn, conn.handshake.accept(None))
        trailing = conn.handshake.trailing_data + bytes(conn.early)
        conn.early.clear()
        conn.kind = ConnectionKind.LISTENER
        conn.ws = WebSocketConnection(Role.SERVER, trailing_data=trailing)

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
        self._accept_listener(conn)
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
                # Emulator only: tell our sender it was the listener, not the relay (Azure
                # sends no such header; there a description without TrackingId says it).
                self._send(sender, sender.handshake.reject(result.status, result.description,
                                                           _BY_LISTENER))
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
        conn.peer, sender.peer = sender.id, conn.id
        self.stats.relayed_pairs += 1
        for leg in (conn, sender):
            self._send(leg, leg.handshake.accept(chosen))
            leg.kind = ConnectionKind.RELAY
            leg.fwd = Forwarder(masked=True, max_frame_size=self.max_frame_size)
        for leg in (conn, sender):
            # Frames that came with (or after) the upgrade request go through the forwarder.
            early = leg.handshake.trailing_data + bytes(leg.early)
            leg.early = bytearray()
            leg.request = None
            if early:
                self._relay_data(now, leg, early)

    def _sender_for(self, pending: PendingConnect) -> _Conn | None:
        conn_id = self._by_connect.pop(pending.id, None)
        conn = self._conns.get(conn_id) if conn_id is not None else None
        return conn if conn is not None and conn.kind is ConnectionKind.WAITING else None

    # -- established connections -----------------------------------------------------------

    def _pump(self, now: float, conn: _Conn) -> None:
        ws = conn.ws
        assert ws is not None
        for event in ws.events_received():
            self._listener_event(now, conn, event)
        self._flush(conn)

    def _listener_event(self, now: float, conn: _Conn, event: object) -> None:
        assert conn.listener_id is not None
        if isinstance(event, TextMessage):
            self.broker.listener_message(now, conn.listener_id, event.data)
        elif isinstance(event, ConnectionClosed):
            self._drop(now, conn)

    # -- relayed pairs ---------------------------------------------------------------------
    #
    # Each leg's bytes go through its Forwarder to the other leg: frames are re-framed, not
    # interpreted (the service relays frames "with no interpretation", hybrid-connections-wire
    # §3.1), so pings, pongs and closes travel end to end. A close passes like any frame and the
    # pair is torn down only when both closes have passed (port bridges carry TCP half-close as a
    # one-sided close). The relay speaks for itself only when a leg breaks the protocol or drops.

    def _peer(self, conn: _Conn) -> _Conn | None:
        peer = self._conns.get(conn.peer) if conn.peer is not None else None
        return peer if peer is not None and peer.kind is ConnectionKind.RELAY else None

    def _relay_data(self, now: float, conn: _Conn, data: bytes | memoryview) -> None:
        fwd = conn.fwd
        assert fwd is not None
        bytes_before, frames_before = fwd.payload_bytes, fwd.frames
        out = fwd.feed(data)
        peer = self._peer(conn)
        if out and peer is not None:
            self._send(peer, out)
        self.stats.bytes_relayed += fwd.payload_bytes - bytes_before
        self.stats.messages_relayed += fwd.frames - frames_before
        if fwd.error_code:
            self._leg_failed(now, conn, fwd.error_code, fwd.error_reason)
        elif fwd.close_code >= 0 and not conn.close_in:
            conn.close_in = True
            if peer is None or peer.close_in or peer.eof:
                self._finish_pair(conn, peer)
            elif conn.closing_deadline is None:
                conn.closing_deadline = now + self.half_close_timeout
                peer.closing_deadline = conn.closing_deadline
                self._timed.update((conn.id, peer.id))

    def _close_frame(self, code: int, reason: str) -> bytes:
        payload = code.to_bytes(2, "big") + reason.encode("utf-8")[:123]
        return encode_frame(OP_CLOSE, payload)

    def _can_inject(self, toward: _Conn, source: _Conn | None) -> bool:
        """A frame may be written to ``toward`` only between frames of the stream it gets from
        ``source``, and not after a close has already gone its way."""
        if toward.kind is not ConnectionKind.RELAY or toward.eof:
            return False
        if source is None or source.fwd is None:
            return True
        return not source.fwd.mid_frame and not source.close_in

    def _leg_failed(self, now: float, conn: _Conn, code: int, reason: str) -> None:
        """``conn`` broke the protocol: fail it with ``code`` (RFC 6455 §7.1.7); its peer hears
        1001 and gets a short time to answer the close."""
        peer = self._peer(conn)
        if self._can_inject(conn, peer):
            self._send(conn, self._close_frame(code, reason))
        self._close_tcp(conn)
        if peer is not None:
            self._leg_gone(now, peer, conn, "The other side of the relayed connection failed.")

    def _relay_eof(self, now: float, conn: _Conn) -> None:
        """``conn``'s TCP connection ended (with or without its close frame)."""
        if conn.eof:
            return
        conn.eof = True
        peer = self._peer(conn)
        if conn.kind is ConnectionKind.RELAY:
            self._close_tcp(conn)
        if peer is None:
            return
        if conn.close_in and (peer.close_in or peer.eof):
            self._finish_pair(conn, peer)
        elif not conn.close_in:
            # One leg dropped: the other gets 1001 (hybrid-connections-wire §4.4).
            self._leg_gone(now, peer, conn, "The other side of the relayed connection went away.")

    def _leg_gone(self, now: float, peer: _Conn, gone: _Conn, reason: str) -> None:
        """``gone`` can no longer carry ``peer``'s traffic: tell ``peer`` (1001), let it close."""
        if self._can_inject(peer, gone):
            self._send(peer, self._close_frame(1001, reason))
            gone.close_in = True
            if peer.close_in:
                self._close_tcp(peer)
            else:
                peer.closing_deadline = now + self.close_timeout
                self._timed.add(peer.id)
        elif peer.kind is ConnectionKind.RELAY:
            self._close_tcp(peer)  # mid-frame: nothing clean can be said any more

    def _finish_pair(self, conn: _Conn, peer: _Conn | None) -> None:
        """Both closes have passed: the server closes TCP first (RFC 6455 §7.1.1)."""
        for leg in (conn, peer):
            if leg is not None and leg.kind is ConnectionKind.RELAY:
                self._close_tcp(leg)

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
                    self._send(sender, sender.handshake.reject(action.status, action.description,
                                                               _BY_RELAY))
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
