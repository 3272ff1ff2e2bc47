"""Web PubSub client connections through the service's router (sans-IO, byte level).

Clients are our own ``ClientConnection`` over the service's ``"webpubsub"`` routes, with tokens
from ``create_client_token``: the upgrade (401 before it, subprotocol echo), the ``connected``
frame, group traffic between two clients, raw clients, recovery and its refusal (101, then
1008), and that the Web PubSub and relay routes do not leak into each other's port.
"""

from __future__ import annotations

import json
from typing import Any

from hyco_proto.drivers.connection import ClientConnection, Opened, Refused
from hyco_proto.service.config import ServiceConfig
from hyco_proto.service.handler import ConnectionKind
from hyco_proto.service.router import RelayService
from hyco_proto.service.webpubsub import WebPubSubService
from hyco_proto.webpubsub import JSON_RELIABLE_SUBPROTOCOL, create_client_token
from hyco_proto.websocket import BinaryMessage, ConnectionClosed, TextMessage

NOW = 1_700_000_000.0
KEY = "a-web-pubsub-access-key-for-tests-only-0123456789"
ENDPOINT = "http://127.0.0.1:8080"
ROLES = ("webpubsub.joinLeaveGroup", "webpubsub.sendToGroup")


class Net:
    def __init__(self) -> None:
        self.svc = RelayService(ServiceConfig(), webpubsub=WebPubSubService(KEY))
        self.now = NOW
        self.clients: dict[int, Client] = {}

    def pump(self) -> None:
        for _ in range(1000):
            out = self.svc.data_to_send()
            self.svc.reading_changes()
            if not out:
                return
            for conn, data in out:
                client = self.clients.get(conn)
                if client is None:
                    continue
                if data:
                    client.conn.receive_data(data)
                elif not client.tcp_closed:
                    client.tcp_closed = True
                    client.conn.receive_eof()
                    self.svc.connection_lost(self.now, conn)
                client.collect()
        raise AssertionError("the service never went quiet")


class Client:
    def __init__(self, net: Net, target: str, *, subprotocols: tuple[str, ...] = (
            JSON_RELIABLE_SUBPROTOCOL,), headers: list[tuple[str, str]] | None = None,
                 service: str = "webpubsub") -> None:
        self.net = net
        self.conn = ClientConnection.from_url(f"ws://127.0.0.1:8080{target}",
                                              subprotocols=subprotocols, headers=headers or [])
        self.id = net.svc.connection_made(net.now, ("127.0.0.1", 5000), service=service)
        self.tcp_closed = False
        self.events: list[object] = []
        net.clients[self.id] = self
        self.flush()

    def collect(self) -> None:
        self.events += self.conn.events_received()
        for chunk in self.conn.data_to_send():
            if chunk:
                self.net.svc.receive_data(self.net.now, self.id, chunk)

    def flush(self) -> None:
        self.collect()
        self.net.pump()

    def send(self, **message: Any) -> None:
        self.conn.send_text(json.dumps(message))
        self.flush()

    def frames(self) -> list[Any]:
        out: list[Any] = []
        for event in self.events:
            if isinstance(event, TextMessage):
                out.append(json.loads(event.data))
            elif isinstance(event, BinaryMessage):
                out.append(event.data)
        self.events = [e for e in self.events if not isinstance(e, (TextMessage,
                                                                     BinaryMessage))]
        return out

    def drop(self) -> None:
        """The TCP connection breaks (no closing handshake)."""
        self.tcp_closed = True
        self.net.svc.connection_lost(self.net.now, self.id)
        self.net.pump()


def token(user: str | None = "alice", roles: tuple[str, ...] = ROLES, key: str = KEY,
          hub: str = "chat") -> str:
    return create_client_token(ENDPOINT, hub, key, user_id=user, roles=roles, now=NOW)


def connect(net: Net, user: str = "alice", **kwargs: Any) -> Client:
    client = Client(net, f"/client/hubs/chat?access_token={token(user)}", **kwargs)
    assert isinstance(client.events[0], Opened), client.events
    client.events.pop(0)
    return client


def test_connect_echoes_the_subprotocol_and_sends_connected_first() -> None:
    net = Net()
    client = connect(net)
    assert client.conn.subprotocol == JSON_RELIABLE_SUBPROTOCOL
    (connected,) = client.frames()
    assert connected["type"] == "system" and connected["event"] == "connected"
    assert connected["userId"] == "alice" and connected["reconnectionToken"]
    assert net.svc.kind(client.id) is ConnectionKind.WEBPUBSUB


def test_bad_or_missing_token_is_401_before_the_upgrade() -> None:
    net = Net()
    for target in ("/client/hubs/chat", f"/client/hubs/chat?access_token={token(key=KEY[::-1])}",
                   f"/client/hubs/other?access_token={token()}"):
        client = Client(net, target)
        assert isinstance(client.events[0], Refused), target
        assert client.events[0].response.status == 401
    bearer = Client(net, "/client/?hub=chat",
                    headers=[("Authorization", f"Bearer {token()}")])
    assert isinstance(bearer.events[0], Opened)


def test_group_traffic_between_two_clients_and_a_raw_client() -> None:
    net = Net()
    alice, bob = connect(net, "alice"), connect(net, "bob")
    raw = connect(net, "carol", subprotocols=())
    assert raw.conn.subprotocol is None
    for client in (alice, bob):
        client.frames()
        client.send(type="joinGroup", group="g", ackId=1)
        assert client.frames() == [{"type": "ack", "ackId": 1, "success": True}]
    assert raw.frames() == [], "a raw client gets no connected message"
    alice.send(type="sendToGroup", group="g", ackId=2, dataType="text", data="hi",
               noEcho=True)
    assert {"type": "ack", "ackId": 2, "success": True} in alice.frames()
    (message,) = bob.frames()
    assert (message["from"], message["group"], message["fromUserId"], message["data"],
            message["sequenceId"]) == ("group", "g", "alice", "hi", 1)


def test_forbidden_without_the_role() -> None:
    net = Net()
    client = Client(net, f"/client/hubs/chat?access_token={token('dave', roles=())}")
    client.frames()
    client.send(type="joinGroup", group="g", ackId=7)
    (ack,) = client.frames()
    assert ack["success"] is False and ack["error"]["name"] == "Forbidden"
    assert net.svc.kind(client.id) is ConnectionKind.WEBPUBSUB, "not closed for it"


def test_recovery_replays_what_was_missed_and_a_refused_one_is_101_then_1008() -> None:
    net = Net()
    alice, bob = connect(net, "alice"), connect(net, "bob")
    connected = alice.frames()[0]
    bob.frames()
    for client in (alice, bob):
        client.send(type="joinGroup", group="g", ackId=1)
        client.frames()
    alice.drop()  # no closing handshake: the session waits for recovery
    bob.send(type="sendToGroup", group="g", dataType="text", data="while away")
    target = (f"/client/hubs/chat?access_token={token()}&awps_connection_id="
              f"{connected['connectionId']}&awps_reconnection_token="
              f"{connected['reconnectionToken']}")
    back = Client(net, target)
    assert isinstance(back.events[0], Opened)
    replay = back.frames()
    assert [(m["data"], m["sequenceId"]) for m in replay] == [("while away", 1)]
    refused = Client(net, target.replace(connected["reconnectionToken"], "wrong"))
    assert isinstance(refused.events[0], Opened), "refusing recovery is not an HTTP error"
    closed = [e for e in refused.events if isinstance(e, ConnectionClosed)]
    assert closed and closed[0].code == 1008


def test_relay_and_web_pubsub_routes_stay_on_their_own_ports() -> None:
    net = Net()
    on_relay_port = Client(net, f"/client/hubs/chat?access_token={token()}", service="relay")
    assert isinstance(on_relay_port.events[0], Refused)
    assert on_relay_port.events[0].response.status == 404  # the relay's, not a hub's
    hc_on_wps_port = Client(net, "/$hc/myhc?sb-hc-action=listen", subprotocols=())
    assert isinstance(hc_on_wps_port.events[0], Refused)
    assert hc_on_wps_port.events[0].response.status == 404
