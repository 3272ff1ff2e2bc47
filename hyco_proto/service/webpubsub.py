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
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from .._text import close_reason, printable
from ..frames import OP_BINARY, OP_TEXT, encode_frame
from ..handshake import HandshakeRequest, ServerHandshake
from ..webpubsub.endpoints import parse_client_url
from ..webpubsub.events import ConnectAnswer, EventHandler
from ..webpubsub.hub import CloseTransport, Deliver, Hub, HubAction, UpstreamEvent
from ..webpubsub.messages import SUBPROTOCOLS, Data
from ..webpubsub.tokens import ClientTokenClaims, WebPubSubTokenError, verify_client_token
from ..websocket import (
    BinaryMessage,
    ConnectionClosed,
    Role,
    State,
    TextMessage,
    WebSocketConnection,
)
from .front import FrontDoor, RequestHead, reason_phrase
from .handler import Connection, ConnectionKind, Handler, ServiceCore, WebSocketHandler
from .webpubsub_events import CALL_TIMEOUT, EventDispatcher

__all__ = ["Outbox", "UpstreamConnect", "WebPubSubRoute", "WebPubSubService", "WebPubSubSocket",
           "apply_hub_actions", "report_departures"]

logger = logging.getLogger("hyco_proto.service")


class WebPubSubService:
    """The hubs of the local Web PubSub service, created on first use (names lower-cased, like
    the official emulator), the access key client tokens are signed with, and each hub's
    upstream event handlers (``event_handlers``: hub name → handlers, in order).

    ``batch_writes`` (default on): within one driver call, each recipient gets all its frames
    joined in one send; off, every frame is its own send (the same code otherwise; the
    benchmarks compare both)."""

    def __init__(self, access_key: str, *,
                 event_handlers: Mapping[str, Sequence[EventHandler]] | None = None,
                 event_timeout: float = CALL_TIMEOUT, batch_writes: bool = True) -> None:
        self.access_key = access_key
        #: Whether each driver call (bytes from one client, one REST call, one timer) writes
        #: every recipient's frames as one send (True), or each frame as its own send.
        self.batch_writes = batch_writes
        self.hubs: dict[str, Hub] = {}
        self.events = EventDispatcher(event_handlers or {}, [access_key], timeout=event_timeout)

    def hub(self, name: str) -> Hub:
        key = name.lower()
        hub = self.hubs.get(key)
        if hub is None:
            # A hub with event handlers reports every departure (`disconnected` events).
            hub = self.hubs[key] = Hub(key, report_departures=self.events.watches(key))
        return hub

    def next_deadline(self) -> float | None:
        deadlines = [d for d in (hub.next_deadline() for hub in self.hubs.values())
                     if d is not None]
        events = self.events.next_deadline()
        if events is not None:
            deadlines.append(events)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        for hub in self.hubs.values():
            deadline = hub.next_deadline()
            if deadline is not None and now >= deadline:
                hub.handle_timer(now)
                report_departures(hub, self.events, now)
        self.events.handle_timer(now)


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
        origin = host  # WebHook-Request-Origin of this connection's events
        if self.wps.events.takes_connect(hub.name):
            self._ask_upstream(door, head, handshake, hub, claims, subprotocol, origin, now)
            return
        self._admit(door, handshake, hub, now, user_id=claims.user_id, roles=claims.roles,
                    groups=claims.groups, subprotocol=subprotocol, origin=origin)

    def _admit(self, door: FrontDoor, handshake: ServerHandshake, hub: Hub, now: float, *,
               user_id: str | None, roles: Sequence[str], groups: Sequence[str],
               subprotocol: str | None, origin: str, connection_id: str | None = None,
               states: Mapping[str, Any] | None = None, echo: str | None = None) -> None:
        """Add the connection to the hub and accept the upgrade (answering ``echo``, a raw
        client's own subprotocol chosen by the connect handler, or the hub's ``subprotocol``)."""
        assert handshake.request is not None
        result = hub.connect(now, user_id=user_id, roles=roles, groups=groups,
                             subprotocol=subprotocol, connection_id=connection_id)
        socket = self._open(door, handshake, handshake.request, hub, result.connection_id,
                            echo or subprotocol)
        socket.apply(now, result.actions)
        self.wps.events.connected(now, hub=hub.name, connection_id=result.connection_id,
                                  user_id=user_id or None, subprotocol=subprotocol,
                                  request_origin=origin, states=states)

    def _ask_upstream(self, door: FrontDoor, head: RequestHead, handshake: ServerHandshake,
                      hub: Hub, claims: ClientTokenClaims, subprotocol: str | None,
                      origin: str, now: float) -> None:
        """Hold the upgrade until the hub's ``connect`` handler decides (CloudEvents
        ``azure.webpubsub.sys.connect``): it may refuse, or set userId, roles, groups and the
        subprotocol (one the client offered)."""
        assert handshake.request is not None
        offered = list(handshake.request.subprotocols)
        connection_id = hub.new_connection_id()
        waiting = UpstreamConnect(self.svc, door.conn)
        self.svc.switch(door.id, waiting)
        self.svc.pause_reading(door.id, True)

        def decide(now: float, answer: ConnectAnswer) -> None:
            if waiting.lost:
                return  # the client left while the handler thought
            self.svc.pause_reading(door.id, False)
            if not answer.accepted:
                self._refuse(door, handshake, answer.status, answer.reason)
                return
            chosen, echo = subprotocol, None
            if answer.subprotocol is not None:
                if answer.subprotocol not in offered:
                    self._refuse(door, handshake, 500, "The connect event handler chose "
                                 f"subprotocol {answer.subprotocol!r}, which the client did "
                                 "not offer.")
                    return
                if answer.subprotocol in SUBPROTOCOLS:
                    chosen = answer.subprotocol
                else:  # a raw client's own subprotocol: echoed, the hub treats it as raw
                    chosen, echo = None, answer.subprotocol
            # The id was free when chosen; should another connection have taken it since, a
            # fresh one is used (the handler saw the first).
            fresh = None if hub.connection_exists(connection_id) else connection_id
            groups = list(claims.groups) + list(answer.groups or ())
            self._admit(door, handshake, hub, now,
                        user_id=answer.user_id if answer.user_id is not None
                        else claims.user_id,
                        roles=answer.roles if answer.roles is not None else claims.roles,
                        groups=groups, subprotocol=chosen, origin=origin,
                        connection_id=fresh, states=answer.states, echo=echo)

        self.wps.events.connect(
            now, hub=hub.name, connection_id=connection_id, user_id=claims.user_id,
            request_origin=origin, claims=_claims(claims), query=_query(head.query),
            headers=_headers(head.headers), subprotocols=offered, decide=decide)

    def _open(self, door: FrontDoor, handshake: ServerHandshake, request: HandshakeRequest,
              hub: Hub, connection_id: str, subprotocol: str | None) -> WebPubSubSocket:
        self.svc.send(door.id, handshake.accept(subprotocol))
        socket = WebPubSubSocket(self.svc, door.conn, hub, connection_id,
                                 handshake.trailing_data, self.wps.events,
                                 batch_writes=self.wps.batch_writes)
        self.svc.switch(door.id, socket)
        return socket

    def _recover(self, door: FrontDoor, handshake: ServerHandshake, hub: Hub,
                 connection_id: str, token: str, subprotocol: str | None, now: float) -> None:
        assert handshake.request is not None
        result = hub.recover(now, connection_id, token, subprotocol)
        report_departures(hub, self.wps.events, now)  # one past its window is gone now
        if not result.accepted:
            # Refused: accept, then close 1008 — any HTTP error makes the SDKs retry (§0 item 7).
            self.svc.send(door.id, handshake.accept(subprotocol))
            ws = WebSocketConnection(Role.SERVER)
            ws.send_close(result.close_code or 1008, close_reason(result.reason))
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
        self.svc.refusal_log.refused(door.conn.opened, status, "/client", printable(reason),
                                     remote=door.conn.remote)
        # The reason in the status line and as a text body (what clients show of a refusal).
        door.send_raw(handshake.reject(status, reason_phrase(status, reason),
                                       [("Content-Type", "text/plain; charset=utf-8")],
                                       (reason + "\n").encode("utf-8")))


def _claims(claims: ClientTokenClaims) -> dict[str, list[str]]:
    """The token's claims as the ``connect`` event carries them: each a list of strings."""
    out: dict[str, list[str]] = {"aud": [claims.audience]}
    if claims.user_id:
        out["sub"] = [claims.user_id]
    if claims.roles:
        out["role"] = list(claims.roles)
    if claims.groups:
        out["webpubsub.group"] = list(claims.groups)
    out["exp"] = [str(int(claims.expires_at))]
    if claims.issued_at is not None:
        out["iat"] = [str(int(claims.issued_at))]
    for name, value in claims.extra.items():
        values = value if isinstance(value, list) else [value]
        out[name] = [str(item) for item in values]
    return out


def _query(query: str) -> dict[str, list[str]]:
    """The query of the client's request, without its access token."""
    out: dict[str, list[str]] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name != "access_token":
            out.setdefault(name, []).append(value)
    return out


def _headers(headers: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """The client's request headers (not its credentials)."""
    out: dict[str, list[str]] = {}
    for name, value in headers:
        if name.lower() not in ("authorization", "cookie"):
            out.setdefault(name, []).append(value)
    return out


class UpstreamConnect(Handler):
    """A client whose upgrade waits for the hub's ``connect`` event handler (reading paused)."""

    kind = ConnectionKind.WEBPUBSUB

    def __init__(self, svc: ServiceCore, conn: Connection) -> None:
        super().__init__(svc, conn)
        self.lost = False

    def connection_lost(self, now: float) -> None:
        self.lost = True


def apply_hub_actions(svc: ServiceCore, hub: Hub, now: float, actions: list[HubAction],
                      events: EventDispatcher | None = None, *, batch: bool = True) -> None:
    """Carry out ``actions`` of ``hub`` (from a client frame, a REST call or a timer): frames and
    closes go to the sockets of the connections they name (unattached ones are skipped); a
    service-initiated close ends the connection for the event handlers too; user events go to
    ``events`` (the handler's answer comes back to the sender as a server message).
    ``batch``: each socket's frames go out joined in one send (see :class:`Outbox`)."""
    out = Outbox(svc, hub, batch)
    out.apply(now, actions, events)
    out.flush()
    if events is not None:
        report_departures(hub, events, now)


def _wire(frame: str | bytes) -> bytes:
    """The server's WebSocket frame carrying a hub frame: text for ``str``, binary for ``bytes``."""
    if isinstance(frame, str):
        try:
            payload = frame.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate (JSON clients may send one as an escape, "\\ud800"): in a hub
            # message's JSON it can only sit in a string, where backslashreplace writes that
            # same escape back; a raw client (no subprotocol) gets the six characters "\ud800"
            # as text. Either way the frame stays valid UTF-8 (RFC 6455 §8.1).
            payload = frame.encode("utf-8", "backslashreplace")
        return encode_frame(OP_TEXT, payload)
    return encode_frame(OP_BINARY, frame)


class Outbox:
    """What one driver call (bytes from a client, a REST call, a timer) writes to a hub's sockets.

    A frame shared by many recipients (the same ``Deliver.frame`` object: a fan-out) is encoded
    into one WebSocket frame, once. With ``batch`` each socket's frames wait here and leave
    joined, one ``send`` per socket, at :meth:`flush`; a close for a socket writes what waits
    for it first. Without ``batch`` each frame is its own ``send``, at once.
    """

    __slots__ = ("_frame_bytes", "_src", "batch", "hub", "pending", "prefix", "svc", "targets")

    def __init__(self, svc: ServiceCore, hub: Hub, batch: bool = True) -> None:
        self.svc = svc
        self.hub = hub
        self.prefix = f"wps:{hub.name}:"  # WebPubSubSocket.name_of(hub, "")
        self.batch = batch
        #: Batched only: connection id -> its frame, or its frames once it has several (a list
        #: only then: most fan-outs give a recipient one frame per call) ...
        self.pending: dict[str, bytes | list[bytes]] = {}
        #: ... and its socket.
        self.targets: dict[str, WebPubSubSocket] = {}
        self._src: str | bytes | None = None  # the last hub frame encoded ...
        self._frame_bytes = b""  # ... and its WebSocket frame

    def apply(self, now: float, actions: list[HubAction],
              events: EventDispatcher | None = None) -> None:
        """Carry out ``actions`` (frames wait for :meth:`flush` when batched)."""
        svc, prefix, pending, batch = self.svc, self.prefix, self.pending, self.batch
        lookup = svc.lookup
        opened = State.OPEN
        for action in actions:
            if isinstance(action, Deliver):
                frame = action.frame
                if frame is not self._src:
                    self._src, self._frame_bytes = frame, _wire(frame)
                cid = action.connection_id
                waiting = pending.get(cid)
                if waiting is not None:
                    if isinstance(waiting, list):
                        waiting.append(self._frame_bytes)
                    else:
                        pending[cid] = [waiting, self._frame_bytes]
                    continue
                target = lookup(prefix + cid)
                if not isinstance(target, WebPubSubSocket) or target.ws.state is not opened:
                    continue
                if batch:
                    pending[cid] = self._frame_bytes
                    self.targets[cid] = target
                else:
                    svc.send(target.id, self._frame_bytes)
            elif isinstance(action, CloseTransport):
                self._flush_one(action.connection_id)
                target = lookup(prefix + action.connection_id)
                if isinstance(target, WebPubSubSocket):
                    target.close_transport(now, action)
            elif isinstance(action, UpstreamEvent) and events is not None:
                _user_event(svc, self.hub, events, now, action, batch)

    def _flush_one(self, connection_id: str) -> None:
        waiting = self.pending.pop(connection_id, None)
        target = self.targets.pop(connection_id, None)
        if waiting is not None and target is not None and target.ws.state is State.OPEN:
            self.svc.send(target.id, b"".join(waiting) if isinstance(waiting, list) else waiting)

    def flush(self) -> None:
        """Write what waits: one send per socket, in the order the sockets were first named."""
        pending, targets = self.pending, self.targets
        if not pending:
            return
        self.pending, self.targets = {}, {}
        send, opened = self.svc.send, State.OPEN
        for cid, waiting in pending.items():
            target = targets[cid]
            if target.ws.state is opened:
                send(target.id, b"".join(waiting) if isinstance(waiting, list) else waiting)


def report_departures(hub: Hub, events: EventDispatcher, now: float) -> None:
    """Send ``disconnected`` for every connection the hub removed since the last call."""
    for connection_id, reason in hub.departures():
        events.disconnected(now, hub=hub.name, connection_id=connection_id, reason=reason)


def _user_event(svc: ServiceCore, hub: Hub, events: EventDispatcher, now: float,
                event: UpstreamEvent, batch: bool) -> None:
    connection_id = event.connection_id

    def reply(now: float, data: Data) -> None:
        apply_hub_actions(svc, hub, now, hub.send_to_connection(connection_id, data), events,
                          batch=batch)

    events.user_event(now, hub=hub.name, connection_id=connection_id, event=event.event,
                      data=event.data, reply=reply)


class WebPubSubSocket(WebSocketHandler):
    """One Web PubSub client's WebSocket: frames to its hub, the hub's answers to sockets."""

    kind = ConnectionKind.WEBPUBSUB

    @staticmethod
    def name_of(hub: Hub, connection_id: str) -> str:
        return f"wps:{hub.name}:{connection_id}"

    def __init__(self, svc: ServiceCore, conn: Connection, hub: Hub, connection_id: str,
                 trailing: bytes, events: EventDispatcher | None = None, *,
                 batch_writes: bool = True) -> None:
        super().__init__(svc, conn)
        self.hub = hub
        self.events = events
        self.batch_writes = batch_writes
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
        if self.events is not None:
            report_departures(self.hub, self.events, now)

    def pump(self, now: float) -> None:
        if self._trailing:
            data, self._trailing = self._trailing, b""
            self.ws.receive_data(data)
        # One outbox for everything these bytes carried: with batching, each recipient gets
        # one send of all its frames when the events are done.
        out = Outbox(self.svc, self.hub, self.batch_writes)
        hub, events = self.hub, self.events
        for event in self.ws.events_received():
            if not self._attached:
                break
            if isinstance(event, TextMessage):
                out.apply(now, hub.client_text(now, self.connection_id, event.data), events)
            elif isinstance(event, BinaryMessage):
                out.apply(now, hub.client_binary(now, self.connection_id, event.data), events)
            elif isinstance(event, ConnectionClosed):
                # 1006: no closing handshake — an unexpected drop the session survives.
                self._detach(now, None if event.code == 1006 else event.code)
                continue
            else:
                continue  # pings and pongs: the WebSocket layer answers them
            if events is not None:
                report_departures(hub, events, now)
        out.flush()
        self.flush()

    def apply(self, now: float, actions: list[HubAction]) -> None:
        """Carry out what the hub answered (frames and closes for any of its connections)."""
        apply_hub_actions(self.svc, self.hub, now, actions, self.events,
                          batch=self.batch_writes)

    def close_transport(self, now: float, action: CloseTransport) -> None:
        """A close the hub started (frames go through :class:`Outbox`, never through ``ws``)."""
        ws = self.ws
        if ws.state is not State.OPEN:
            return
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
