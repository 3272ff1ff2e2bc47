"""Web PubSub client connections as a route of the service's router (work in progress).

:class:`WebPubSubService` keeps one :class:`~hyco_proto.webpubsub.hub.Hub` per hub name.
:class:`WebPubSubRoute` takes WebSocket upgrades on ``/client/hubs/{hub}`` or
``/client/?hub={hub}`` (web-pubsub-client-protocol §1.1): it checks the access token
(``access_token`` query, else ``Authorization: Bearer``; 401 before the upgrade), negotiates the
subprotocol (echoed, §0 item 1), and hands the connection to a :class:`WebPubSubSocket`, which
feeds the hub frames and applies what the hub answers. A recovery URL (``awps_*``, checked before
the token, §0 item 7) that cannot be honoured is accepted and then closed with 1008.

This route belongs on a port of its own: ``/client/…`` would otherwise shadow a hybrid connection
named ``client`` (``RelayService(webpubsub=...)`` serves it to connections made with
``service="webpubsub"``).
"""

from __future__ import annotations

import logging

from ..handshake import HandshakeRequest, ServerHandshake
from ..webpubsub.endpoints import parse_client_url
from ..webpubsub.hub import CloseTransport, Deliver, Hub, HubAction
from ..webpubsub.messages import SUBPROTOCOLS
from ..webpubsub.tokens import WebPubSubTokenError, verify_client_token
from ..websocket import (
    BinaryMessage,
    ConnectionClosed,
    Role,
    State,
    TextMessage,
    WebSocketConnection,
)
from .front import FrontDoor, RequestHead
from .handler import Connection, ConnectionKind, ServiceCore, WebSocketHandler

__all__ = ["WebPubSubRoute", "WebPubSubService", "WebPubSubSocket", "apply_hub_actions"]

logger = logging.getLogger("hyco_proto.service")


class WebPubSubService:
    """The hubs of the local Web PubSub service, created on first use (names lower-cased, like
    the official emulator), and the access key client tokens are signed with."""

    def __init__(self, access_key: str) -> None:
        self.access_key = access_key
        self.hubs: dict[str, Hub] = {}

    def hub(self, name: str) -> Hub:
        key = name.lower()
        hub = self.hubs.get(key)
        if hub is None:
            hub = self.hubs[key] = Hub(key)
        return hub

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (hub.next_deadline() for hub in self.hubs.values())
                     if d is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        for hub in self.hubs.values():
            deadline = hub.next_deadline()
            if deadline is not None and now >= deadline:
                hub.handle_timer(now)


def _token(head: RequestHead, query_token: str | None) -> str | None:
    if query_token:
        return query_token
    header = head.header("authorization") or ""
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def _subprotocol(offered: list[str]) -> str | None:
    """The first offered subprotocol we speak; ``None`` (a raw client) when none is."""
    return next((p for p in offered if p in SUBPROTOCOLS), None)


class WebPubSubRoute:
    """WebSocket upgrades on the client endpoints of the Web PubSub service."""

    def __init__(self, svc: ServiceCore, wps: WebPubSubService) -> None:
        self.svc = svc
        self.wps = wps

    def match(self, head: RequestHead) -> bool:
        path = head.path.lower()
        return path == "/client" or path.startswith("/client/")

    def handle(self, door: FrontDoor, head: RequestHead, now: float) -> None:
        try:
            url = parse_client_url(head.target)
        except ValueError as exc:
            door.respond(now, 400, f"Not a Web PubSub client address: {exc}", close=True)
            return
        handshake, _ = door.upgrade()
        request = handshake.request
        if request is None:
            self.svc.stats.handshake_errors += 1
            assert handshake.rejection is not None
            door.send_raw(handshake.rejection)
            return
        hub = self.wps.hub(url.hub)
        subprotocol = _subprotocol(request.subprotocols)
        if url.is_recovery:
            # awps_* first: the original access_token may have expired meanwhile (§0 item 7).
            self._recover(door, handshake, hub, url.connection_id or "",
                          url.reconnection_token or "", subprotocol, now)
            return
        token = _token(head, url.access_token)
        if token is None:
            self._refuse(door, handshake, 401, "Unauthorized: no access token (access_token "
                         "query parameter or Authorization: Bearer header).")
            return
        host = head.header("host") or "localhost"
        endpoint = f"{'https' if door.conn.scheme == 'wss' else 'http'}://{host}"
        try:
            claims = verify_client_token(token, key=self.wps.access_key, endpoint=endpoint,
                                         hub=url.hub, now=now)
        except WebPubSubTokenError as exc:
            self._refuse(door, handshake, exc.status, f"Unauthorized: {exc.reason}")
            return
        result = hub.connect(now, user_id=claims.user_id, roles=claims.roles,
                             groups=claims.groups, subprotocol=subprotocol)
        socket = self._open(door, handshake, request, hub, result.connection_id, subprotocol)
        socket.apply(now, result.actions)

    def _open(self, door: FrontDoor, handshake: ServerHandshake, request: HandshakeRequest,
              hub: Hub, connection_id: str, subprotocol: str | None) -> WebPubSubSocket:
        self.svc.send(door.id, handshake.accept(subprotocol))
        socket = WebPubSubSocket(self.svc, door.conn, hub, connection_id,
                                 handshake.trailing_data)
        self.svc.switch(door.id, socket)
        return socket

    def _recover(self, door: FrontDoor, handshake: ServerHandshake, hub: Hub,
                 connection_id: str, token: str, subprotocol: str | None, now: float) -> None:
        assert handshake.request is not None
        result = hub.recover(now, connection_id, token, subprotocol)
        if not result.accepted:
            # Refused: accept, then close 1008 — any HTTP error makes the SDKs retry (§0 item 7).
            self.svc.send(door.id, handshake.accept(subprotocol))
            ws = WebSocketConnection(Role.SERVER)
            ws.send_close(result.close_code or 1008, result.reason[:120])
            for chunk in ws.data_to_send():
                self.svc.send(door.id, chunk)
            door.send_raw(b"")  # and close TCP
            return
        previous = self.svc.lookup(WebPubSubSocket.name_of(hub, connection_id))
        if isinstance(previous, WebPubSubSocket):
            previous.replaced()  # the new transport takes its place
        socket = self._open(door, handshake, handshake.request, hub, connection_id, subprotocol)
        socket.apply(now, result.actions)

    def _refuse(self, door: FrontDoor, handshake: ServerHandshake, status: int,
                reason: str) -> None:
        if status in (401, 403):
            self.svc.stats.auth_failures += 1
        self.svc.refusal_log.refused(door.conn.opened, status, "/client", reason)
        door.send_raw(handshake.reject(status, reason))


def apply_hub_actions(svc: ServiceCore, hub: Hub, now: float, actions: list[HubAction]) -> None:
    """Carry out ``actions`` of ``hub`` (from a client frame, a REST call or a timer): frames and
    closes go to the sockets of the connections they name; unattached ones are skipped."""
    for action in actions:
        if isinstance(action, (Deliver, CloseTransport)):
            target = svc.lookup(WebPubSubSocket.name_of(hub, action.connection_id))
            if isinstance(target, WebPubSubSocket):
                target.deliver(now, action)
        # UpstreamEvent: no upstream (event handler) is configured in the emulator yet.


class WebPubSubSocket(WebSocketHandler):
    """One Web PubSub client's WebSocket: frames to its hub, the hub's answers to sockets."""

    kind = ConnectionKind.WEBPUBSUB

    @staticmethod
    def name_of(hub: Hub, connection_id: str) -> str:
        return f"wps:{hub.name}:{connection_id}"

    def __init__(self, svc: ServiceCore, conn: Connection, hub: Hub, connection_id: str,
                 trailing: bytes) -> None:
        super().__init__(svc, conn)
        self.hub = hub
        self.connection_id = connection_id
        # Frames over the hub's limit fail the connection with 1009 before being buffered.
        self.ws = WebSocketConnection(Role.SERVER, max_message_size=hub.max_frame_size)
        self._trailing = trailing
        self._attached = True
        svc.bind(self.name_of(hub, connection_id), conn.id)

    def gone(self, now: float) -> None:
        self._detach(now, None)

    def replaced(self) -> None:
        """A recovery gave the logical connection a new transport: this one just goes."""
        self._attached = False
        self.svc.close(self.id)
        self.kind = ConnectionKind.CLOSED

    def _detach(self, now: float, code: int | None) -> None:
        if not self._attached:
            return
        self._attached = False
        self.svc.unbind(self.name_of(self.hub, self.connection_id), self.id)
        self.hub.transport_lost(now, self.connection_id, code)

    def pump(self, now: float) -> None:
        if self._trailing:
            data, self._trailing = self._trailing, b""
            self.ws.receive_data(data)
        for event in self.ws.events_received():
            if not self._attached:
                break
            if isinstance(event, TextMessage):
                self.apply(now, self.hub.client_text(now, self.connection_id, event.data))
            elif isinstance(event, BinaryMessage):
                self.apply(now, self.hub.client_binary(now, self.connection_id, event.data))
            elif isinstance(event, ConnectionClosed):
                # 1006: no closing handshake — an unexpected drop the session survives.
                self._detach(now, None if event.code == 1006 else event.code)
        self.flush()

    def apply(self, now: float, actions: list[HubAction]) -> None:
        """Carry out what the hub answered (frames and closes for any of its connections)."""
        apply_hub_actions(self.svc, self.hub, now, actions)

    def deliver(self, now: float, action: Deliver | CloseTransport) -> None:
        ws = self.ws
        if ws.state is not State.OPEN:
            return
        if isinstance(action, Deliver):
            if isinstance(action.frame, str):
                ws.send_text(action.frame)
            else:
                ws.send_binary(action.frame)
        else:
            ws.send_close(action.code, action.reason[:120])
            self._detach(now, action.code)
        self.flush()

    def shutdown(self, now: float, code: int, reason: str) -> None:
        if self.ws.state is State.OPEN:
            self.ws.send_close(code, reason[:120])
            self.flush()
        self._detach(now, None)
        self.svc.close(self.id)
        self.kind = ConnectionKind.CLOSED
