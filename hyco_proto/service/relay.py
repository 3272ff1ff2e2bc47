"""Hybrid Connections over WebSocket: the ``/$hc/`` route and the handlers it switches to.

:class:`HybridConnectionsRoute` validates the upgrade and dispatches on ``sb-hc-action``
(hybrid-connections-wire §1.2): ``listen`` opens a :class:`ControlChannel`, ``connect`` parks a
:class:`WaitingSender` until its listener answers, ``accept`` joins the waiting sender and the
listener's rendezvous as two :class:`RelayLeg` handlers, and ``request`` (a listener's rendezvous
for a relayed HTTP request) goes to the HTTP relay's handler. Decisions (auth, listener choice,
accept addresses, token expiry) are the broker's; these handlers only move bytes and frames.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .._text import close_reason, printable
from ..control import ResponseCommand
from ..handshake import HandshakeRequest, ServerHandshake
from ..sender import REJECTED_BY_HEADER
from ..websocket import (
    BinaryMessage,
    ConnectionClosed,
    Role,
    State,
    TextMessage,
    WebSocketConnection,
)
from .broker import (
    BadResponse,
    Refused,
    RendezvousAccepted,
    RendezvousRejected,
    query_params,
)
from .events import client_text, log_enabled, log_event
from .front import FrontDoor, RequestHead, reason_phrase
from .handler import Connection, ConnectionKind, Handler, ServiceCore, WebSocketHandler
from .legs import RelayLeg

__all__ = [
    "HC_PREFIX",
    "ControlChannel",
    "HybridConnectionsRoute",
    "WaitingSender",
    "refuse_upgrade",
]

HC_PREFIX = "/$hc/"
_LEGACY_PREFIX = "/$servicebus/hybridconnection/"

#: Who refused a handshake (emulator only, hyco_proto.sender.REJECTED_BY_HEADER).
BY_RELAY = ((REJECTED_BY_HEADER, "relay"),)
BY_LISTENER = ((REJECTED_BY_HEADER, "listener"),)

#: Opens the handler for ``sb-hc-action=request`` (the HTTP relay's request rendezvous).
RequestOpener = Callable[[FrontDoor, ServerHandshake, HandshakeRequest, str, float], None]


def relay_path(path: str) -> str | None:
    """``/$hc/hc/suffix`` → ``hc/suffix``; None when not a Hybrid Connections WebSocket path."""
    if path.startswith(HC_PREFIX):  # as written (the usual), without lowering the path
        return path[len(HC_PREFIX):]
    lower = path.lower()
    for prefix in (HC_PREFIX, _LEGACY_PREFIX):
        if lower.startswith(prefix):
            return path[len(prefix):]
    return None


def _action(query: str) -> str:
    # A missing action means connect (hybrid-connections-wire §1.2).
    return query_params(query).get("sb-hc-action", "connect").lower()


def can_send(ws: WebSocketConnection) -> bool:
    """Whether ``ws`` has not sent its close frame yet (it may have received the peer's)."""
    return ws.state is State.OPEN or (ws.state is State.CLOSING and not ws.close_expected())


def refuse_upgrade(svc: ServiceCore, door: FrontDoor, handshake: ServerHandshake, status: int,
                   description: str, opened: float) -> None:
    """Refuse a WebSocket upgrade with the relay's status description as reason phrase."""
    if status in (401, 403):
        svc.stats.auth_failures += 1
    # The description carries the TrackingId; logged throttled (hyco-ws retries 401s in a
    # tight loop, hybrid-connections-wire §4.2). Only the path: the query may hold a token.
    target = handshake.request.target if handshake.request is not None else "/"
    # Parts of the description (the action, token fields) and the path come from the client:
    # escaped once here, for the log line and the status line alike.
    description = reason_phrase(status, description)
    target = printable(target)
    # A refusal the broker tracked names its TrackingId; the others (a bad sb-hc-action, a
    # sender gone before the rendezvous) are tracked by the connection, as documented.
    tracking = None if "TrackingId:" in description else f"conn-{door.id}"
    svc.refusal_log.refused(opened, status, target, description, remote=door.conn.remote,
                            tracking=tracking)
    door.send_raw(handshake.reject(status, description, BY_RELAY))


class HybridConnectionsRoute:
    """WebSocket upgrades under ``/$hc/`` (and the legacy ``/$servicebus/hybridconnection/``)."""

    def __init__(self, svc: ServiceCore, open_request: RequestOpener) -> None:
        self.svc = svc
        self.open_request = open_request

    def match(self, head: RequestHead) -> bool:
        return relay_path(head.path) is not None

    def handle(self, door: FrontDoor, head: RequestHead, now: float) -> None:
        svc = self.svc
        handshake, _ = door.upgrade()
        request = handshake.request
        if request is None:
            # Not a valid upgrade (405, 426, 400 bad key, 431): `/$hc/` is WebSocket only.
            svc.stats.handshake_errors += 1
            if not head.is_upgrade:
                # Most likely a relayed HTTP request sent to the WebSocket address.
                name = relay_path(head.path) or "{hybrid connection}"
                text = (f"/$hc/ addresses are for WebSocket connections (expected Upgrade: "
                        f"websocket). Relayed HTTP requests go to /{name} without $hc.")
                svc.refusal_log.refused(now, 426, head.path,
                                        "not a WebSocket upgrade (expected Upgrade: websocket; "
                                        f"relayed HTTP requests go to /{name} without $hc)",
                                        remote=door.conn.remote, tracking=f"conn-{door.id}",
                                        event="handshake-failed")
                door.respond(now, 426, text, close=True,
                             headers=[("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")])
                return
            assert handshake.rejection is not None
            status = handshake.rejection_status or 400
            # The handshake's own reason (405 method, 426 version, 400 key, 431 size); it may
            # quote the client (a version, a method): refused() escapes it.
            why = str(handshake.error) if handshake.error is not None else ""
            svc.refusal_log.refused(now, status, head.path,
                                    why[:200] or "invalid WebSocket upgrade request.",
                                    remote=door.conn.remote, tracking=f"conn-{door.id}",
                                    event="handshake-failed")
            door.send_raw(handshake.rejection)
            return
        path = relay_path(head.path)
        assert path is not None
        action = _action(head.query)
        if action == "listen":
            self._listen(door, handshake, request, path, head.query, now)
        elif action == "connect":
            self._connect(door, handshake, request, path, head.query, now)
        elif action == "accept":
            self._accept(door, handshake, request, path, head.query, now)
        elif action == "request":
            self.open_request(door, handshake, request, head.query, now)
        else:
            refuse_upgrade(svc, door, handshake, 400,
                           f"Unsupported sb-hc-action '{action[:40]}' on a WebSocket connection "
                           "(expected listen, connect, accept or request).", door.conn.opened)

    def _listen(self, door: FrontDoor, handshake: ServerHandshake, request: HandshakeRequest,
                path: str, query: str, now: float) -> None:
        svc = self.svc
        host = next((v for k, v in request.headers if k.lower() == "host"), "localhost")
        result = svc.broker.open_listener(now, path, headers=request.headers, query=query,
                                          base_url=f"{door.conn.scheme}://{host}")
        if isinstance(result, Refused):
            refuse_upgrade(svc, door, handshake, result.status, result.description,
                           door.conn.opened)
            return
        svc.send(door.id, handshake.accept(None))
        log_event(logging.INFO, "listener-accepted", f"/$hc/{path}", remote=door.conn.remote,
                  tracking=result.id)
        channel = ControlChannel(svc, door.conn, result.id, handshake.trailing_data)
        svc.switch(door.id, channel)
        channel.pump(now)

    def _connect(self, door: FrontDoor, handshake: ServerHandshake, request: HandshakeRequest,
                 path: str, query: str, now: float) -> None:
        svc = self.svc
        result = svc.broker.connect(now, path, headers=request.headers, query=query,
                                    remote=door.conn.remote, subprotocols=request.subprotocols)
        if isinstance(result, Refused):
            refuse_upgrade(svc, door, handshake, result.status, result.description,
                           door.conn.opened)
            return
        # DEBUG: the sender's outcome is its INFO line (pair-relayed, or refused / rejected by
        # WaitingSender.refuse), so a busy run logs one line per pair, not two.
        if log_enabled(logging.DEBUG):
            log_event(logging.DEBUG, "sender-accepted", f"/$hc/{path}",
                      remote=door.conn.remote, tracking=result.id,
                      why=f"waiting for listener {result.listener_id}")
        svc.switch(door.id, WaitingSender(svc, door.conn, handshake, result.id))

    def _accept(self, door: FrontDoor, handshake: ServerHandshake, request: HandshakeRequest,
                path: str, query: str, now: float) -> None:
        svc = self.svc
        result = svc.broker.rendezvous(now, query, path)
        if isinstance(result, Refused):
            refuse_upgrade(svc, door, handshake, result.status, result.description,
                           door.conn.opened)
            return
        name = f"connect:{result.pending.id}"
        sender = svc.lookup(name)
        svc.unbind(name)
        waiting = sender if isinstance(sender, WaitingSender) else None
        if isinstance(result, RendezvousRejected):
            svc.stats.rejects += 1
            # 410 tells the listener its reject went through (hybrid-connections-wire §3.1).
            door.send_raw(handshake.reject(410, "Gone: the connection was rejected."))
            if waiting is not None:
                # Emulator only: tell our sender it was the listener, not the relay (Azure
                # sends no such header; there a description without TrackingId says it).
                waiting.refuse(now, result.status, result.description, BY_LISTENER)
            return
        assert isinstance(result, RendezvousAccepted)
        if waiting is None:
            refuse_upgrade(svc, door, handshake, 410,
                           "Gone: the sender left before the rendezvous.", door.conn.opened)
            return
        # The listener offers the subprotocol it chose; both legs echo it (§5.6 item 7).
        chosen = request.subprotocols[0] if request.subprotocols else None
        if chosen is not None and chosen not in result.pending.subprotocols:
            chosen = None
        svc.stats.relayed_pairs += 1
        if log_enabled(logging.INFO):
            log_event(logging.INFO, "pair-relayed", f"/$hc/{result.pending.hc.name}",
                      remote=waiting.conn.remote, tracking=result.pending.id,
                      why=f"listener {result.pending.listener_id} at "
                          f"{client_text(door.conn.remote)}")
        pending = result.pending
        listener_leg = RelayLeg(svc, door.conn, waiting.id)
        sender_leg = RelayLeg(svc, waiting.conn, door.id)
        listener_leg.tracking = sender_leg.tracking = pending.id
        # What the web view shows of the pair (set once; the byte path does not touch them).
        listener_leg.hc_name = sender_leg.hc_name = pending.hc.name
        listener_leg.listener_id = sender_leg.listener_id = pending.listener_id
        listener_leg.joined = sender_leg.joined = now
        sender_leg.from_sender = True
        listener_early = handshake.trailing_data
        sender_early = waiting.handshake.trailing_data
        if waiting.early:
            sender_early += bytes(waiting.early)
        svc.send(door.id, handshake.accept(chosen))
        svc.switch(door.id, listener_leg)
        svc.send(waiting.id, waiting.handshake.accept(chosen))
        svc.switch(waiting.id, sender_leg)
        # Frames that came with (or after) the upgrade requests go through the forwarders.
        if listener_early:
            listener_leg.receive_data(now, listener_early)
        if sender_early:
            sender_leg.receive_data(now, sender_early)


class ControlChannel(WebSocketHandler):
    """A listener's control channel: a WebSocket the service speaks (§3)."""

    kind = ConnectionKind.LISTENER

    def __init__(self, svc: ServiceCore, conn: Connection, listener_id: str,
                 trailing: bytes) -> None:
        super().__init__(svc, conn)
        self.listener_id = listener_id
        # Capped while streaming: a frame header announcing more fails with 1009 at once.
        self.ws = WebSocketConnection(Role.SERVER, trailing_data=trailing,
                                      max_message_size=svc.broker.config.max_control_message)
        #: The request whose response announced a body: the next binary message is it.
        self._body_for: str | None = None
        svc.bind(f"listener:{listener_id}", conn.id)
        svc.stats.listeners += 1
        svc.stats.listeners_opened += 1
        self._registered = True
        #: Counted in ``stats.listeners`` (until the service closes it or it is gone).
        self._counted = True
        #: Set when the service closed the channel: drop TCP by then if the client is silent.
        self.closing_deadline: float | None = None

    def gone(self, now: float) -> None:
        self._unregister(now)

    def _unregister(self, now: float) -> None:
        if not self._registered:
            return
        self._registered = False
        self.svc.unbind(f"listener:{self.listener_id}", self.id)
        self.svc.broker.close_listener(now, self.listener_id)
        self._uncount()
        self.svc.listener_gone(now, self.listener_id)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.svc.stats.listeners -= 1

    def pump(self, now: float) -> None:
        for event in self.ws.events_received():
            if isinstance(event, TextMessage):
                self._text(now, event.data)
            elif isinstance(event, BinaryMessage):
                self._binary(now, event.data)
            elif isinstance(event, ConnectionClosed):
                if event.error is not None:
                    log_event(logging.INFO, "protocol-close", f"listener {event.code}",
                              remote=self.conn.remote, tracking=self.listener_id,
                              why=str(event.error)[:200], code=event.code)
                self._unregister(now)
        self.flush()

    def _text(self, now: float, text: str) -> None:
        self._body_for = None  # a body must follow its response directly (§3.3)
        result = self.svc.broker.listener_message(now, self.listener_id, text)
        if isinstance(result, ResponseCommand):
            exchange = self.svc.exchange(result.request_id)
            if exchange is not None and exchange.response(now, result, self.id) and result.body:
                self._body_for = result.request_id
        elif isinstance(result, BadResponse):
            exchange = self.svc.exchange(result.request_id)
            if exchange is not None:
                exchange.fail(now, 502, result.description)

    def _binary(self, now: float, data: bytes) -> None:
        request_id, self._body_for = self._body_for, None
        if request_id is None:
            return  # hyco-https sends an empty binary after "body": false (§3.3 quirk 2)
        exchange = self.svc.exchange(request_id)
        if exchange is not None:
            exchange.response_body(now, data, True)

    def send_messages(self, text: str, body: bytes | None = None) -> bool:
        """``text`` and (back to back, §5.6 item 8) a binary ``body``; False if closing."""
        if not can_send(self.ws):
            return False
        self.ws.send_text(text)
        if body is not None:
            self.ws.send_binary(body)
        self.flush()
        return True

    def close_channel(self, now: float, code: int, reason: str) -> None:
        """The service closes the channel: the listener is unchosen at once, and the client
        has ``close_timeout`` seconds to answer before TCP is dropped and it is unregistered."""
        if can_send(self.ws):
            self.ws.send_close(code, close_reason(reason))
            self.flush()
        if self.kind is ConnectionKind.LISTENER and self.closing_deadline is None:
            self.svc.broker.listener_closing(now, self.listener_id)
            self._uncount()  # /$status counts live listeners only
            self.closing_deadline = now + self.svc.close_timeout
            self.svc.watch(self.id)
            # Its relayed HTTP requests without a rendezvous get 502 now, not once the client
            # answered the close (or close_timeout passed): the service no longer serves them
            # through it (a response it still sends is dropped).
            self.svc.listener_gone(now, self.listener_id)

    def deadline(self) -> float | None:
        return self.closing_deadline if self.kind is ConnectionKind.LISTENER else None

    def handle_timer(self, now: float) -> None:
        # The client never answered the service's close: drop it (like a relayed leg).
        self.svc.close(self.id)
        self.kind = ConnectionKind.CLOSED
        self._unregister(now)

    def shutdown(self, now: float, code: int, reason: str) -> None:
        self.close_channel(now, code, reason)
        self._unregister(now)
        self.svc.close(self.id)
        self.kind = ConnectionKind.CLOSED


class WaitingSender(Handler):
    """A WebSocket sender whose upgrade waits for its listener's accept or reject."""

    kind = ConnectionKind.WAITING

    def __init__(self, svc: ServiceCore, conn: Connection, handshake: ServerHandshake,
                 connect_id: str) -> None:
        super().__init__(svc, conn)
        self.handshake = handshake
        self.connect_id = connect_id
        self.early = bytearray()  # frames sent before our 101
        svc.bind(f"connect:{connect_id}", conn.id)

    def receive_data(self, now: float, data: bytes | memoryview) -> None:
        # A client should not send frames before its 101; tolerate a little, not a flood.
        self.early += data
        if len(self.early) > self.svc.max_early_bytes:
            self.refuse(now, 400, "Frames sent before the WebSocket handshake completed.",
                        BY_RELAY)

    def connection_lost(self, now: float) -> None:
        if self.svc.unbind(f"connect:{self.connect_id}", self.id):
            self.svc.broker.cancel_connect(now, self.connect_id)

    def refuse(self, now: float, status: int, description: str,
               headers: tuple[tuple[str, str], ...], *, log: bool = True) -> None:
        """Answer the waiting sender with ``status`` (the relay's refusal, or the listener's
        reject when ``headers`` is :data:`BY_LISTENER`): its one INFO line, throttled like
        every refusal (``refused`` / ``rejected``, tracking its connect id)."""
        phrase = reason_phrase(status, description)
        if log:
            request = self.handshake.request
            self.svc.refusal_log.refused(
                now, status, request.target if request is not None else "/", phrase,
                remote=self.conn.remote, tracking=self.connect_id,
                event="rejected" if headers is BY_LISTENER else "refused")
        self.svc.send(self.id, self.handshake.reject(status, phrase, headers))
        self.close(now)

    def shutdown(self, now: float, code: int, reason: str) -> None:
        self.refuse(now, 503, reason, BY_RELAY, log=False)  # one goodbye, not one per sender
