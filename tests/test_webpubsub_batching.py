"""Web PubSub writes per driver call (``WebPubSubService(batch_writes=...)``), at the byte level.

The service is driven directly (``RelayService``: bytes in, ``data_to_send()`` out) so each test
sees every send it makes: with batching, one read carrying several ``sendToGroup`` messages gives
each recipient one send of all its frames; without, one send per frame. Both put the same frames
in the same order on the wire, a fan-out's frame is encoded once and shared, a close the hub
starts mid-batch comes after the frames before it, and a REST call is one driver call too.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest

from hyco_proto.frames import FrameDecoder
from hyco_proto.handshake import ClientHandshake
from hyco_proto.service.config import ServiceConfig
from hyco_proto.service.router import RelayService
from hyco_proto.service.webpubsub import WebPubSubService
from hyco_proto.webpubsub import JSON_RELIABLE_SUBPROTOCOL, JSON_SUBPROTOCOL, create_client_token
from hyco_proto.websocket import Role, WebSocketConnection

NOW = 1_700_000_000.0
KEY = "a-web-pubsub-access-key-for-tests-only-0123456789"
ENDPOINT = "http://127.0.0.1:8080"
HUB = "chat"


class Peer:
    """One client socket: what the service sent it, send by send."""

    def __init__(self, svc: RelayService, token: str, subprotocol: str | None) -> None:
        self.svc = svc
        self.id = svc.connection_made(NOW, ("127.0.0.1", 5000), service="webpubsub")
        handshake = ClientHandshake("127.0.0.1:8080", f"/client/hubs/{HUB}?access_token={token}",
                                    subprotocols=[subprotocol] if subprotocol else [])
        svc.receive_data(NOW, self.id, handshake.data_to_send())
        self.sends: list[bytes] = []
        self.closed = False
        self.ws = WebSocketConnection(Role.CLIENT)
        self.head = b""

    def take(self, data: bytes) -> None:
        if not self.head.endswith(b"\r\n\r\n") and b"\r\n\r\n" not in self.head:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            self.head, rest = self.head.split(b"\r\n\r\n", 1)
            self.head += b"\r\n\r\n"
            assert self.head.startswith(b"HTTP/1.1 101"), self.head
            if rest:
                self.sends.append(rest)
            return
        self.sends.append(data)

    def frames(self) -> list[tuple[int, bytes]]:
        """Every whole frame sent so far (opcode, payload), in order."""
        decoder = FrameDecoder(masked=False)
        out: list[tuple[int, bytes]] = []
        for opcode, payload, fin in decoder.feed(b"".join(self.sends)):
            assert fin
            out.append((opcode, bytes(payload)))
        assert not decoder.error_code
        return out

    def messages(self) -> list[Any]:
        return [json.loads(p) for op, p in self.frames() if op == 1]

    def send_text(self, *texts: str) -> None:
        """Every text as its own frame, all in ONE read of the service."""
        for text in texts:
            self.ws.send_text(text)
        self.svc.receive_data(NOW, self.id, b"".join(self.ws.data_to_send()))


class Net:
    def __init__(self, batch: bool) -> None:
        self.svc = RelayService(ServiceConfig(),
                                webpubsub=WebPubSubService(KEY, batch_writes=batch))
        self.peers: dict[int, Peer] = {}

    def connect(self, *, groups: tuple[str, ...] = (), roles: tuple[str, ...] = (),
                user: str | None = None,
                subprotocol: str | None = JSON_SUBPROTOCOL) -> Peer:
        token = create_client_token(ENDPOINT, HUB, KEY, user_id=user, roles=roles,
                                    groups=groups, now=NOW)
        peer = Peer(self.svc, token, subprotocol)
        self.peers[peer.id] = peer
        self.drain()
        peer.sends.clear()  # the 101 and the connected message
        return peer

    def drain(self) -> list[tuple[int, bytes]]:
        """Hand every send to its peer; returns them as ``(peer id, bytes)``."""
        out = self.svc.data_to_send()
        for conn, data in out:
            peer = self.peers.get(conn)
            if peer is None:
                continue
            if data:
                peer.take(data)
            else:
                peer.closed = True
        return out


def _group_msg(i: int, group: str = "g") -> str:
    return json.dumps({"type": "sendToGroup", "group": group, "dataType": "text",
                       "data": f"m{i}"})


def _setup(batch: bool, receivers: int = 3) -> tuple[Net, Peer, list[Peer]]:
    net = Net(batch)
    members = [net.connect(groups=("g",)) for _ in range(receivers)]
    sender = net.connect(roles=("webpubsub.sendToGroup",), user="bob")
    return net, sender, members


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "unbatched"])
def test_one_read_of_several_messages(batch: bool) -> None:
    net, sender, members = _setup(batch)
    sender.send_text(*(_group_msg(i) for i in range(4)))
    out = net.drain()
    for member in members:
        assert [m["data"] for m in member.messages()] == ["m0", "m1", "m2", "m3"]
        assert all(m["fromUserId"] == "bob" and m["group"] == "g" for m in member.messages())
        # Batched: one send per recipient for the whole read; unbatched: one per frame.
        assert len(member.sends) == (1 if batch else 4)
    assert sum(1 for conn, _ in out if conn == members[0].id) == (1 if batch else 4)
    assert sender.sends == []  # not in the group, no ack asked


def test_a_fan_out_frame_is_encoded_once_and_shared() -> None:
    net, sender, members = _setup(False)
    sender.send_text(_group_msg(7))
    out = net.drain()
    sent = [data for conn, data in out if conn in {m.id for m in members}]
    assert len(sent) == 3 and sent[0] is sent[1] is sent[2]


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "unbatched"])
def test_recipients_differ_per_message_and_acks_stay_in_order(batch: bool) -> None:
    net = Net(batch)
    a = net.connect(groups=("g", "h"))
    b = net.connect(groups=("h",))
    sender = net.connect(roles=("webpubsub.sendToGroup",), user="bob", groups=("g",))
    sender.send_text(
        json.dumps({"type": "sendToGroup", "group": "g", "data": "1", "dataType": "text",
                    "ackId": 1}),
        json.dumps({"type": "sendToGroup", "group": "h", "data": "2", "dataType": "text",
                    "ackId": 2}),
        json.dumps({"type": "sendToGroup", "group": "g", "data": "3", "dataType": "text",
                    "ackId": 3, "noEcho": True}))
    net.drain()
    assert [m["data"] for m in a.messages()] == ["1", "2", "3"]
    assert [m["data"] for m in b.messages()] == ["2"]
    mine = sender.messages()
    assert [(m["type"], m.get("data", m.get("ackId"))) for m in mine] == [
        ("message", "1"), ("ack", 1), ("ack", 2), ("ack", 3)]
    assert len(a.sends) == (1 if batch else 3)
    assert len(sender.sends) == (1 if batch else 4)


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "unbatched"])
def test_a_close_mid_batch_comes_after_the_frames_before_it(batch: bool) -> None:
    net = Net(batch)
    reliable = net.connect(groups=("g",), subprotocol=JSON_RELIABLE_SUBPROTOCOL)
    other = net.connect(groups=("g",))
    sender = net.connect(roles=("webpubsub.sendToGroup",), user="bob")
    assert net.svc.webpubsub is not None
    net.svc.webpubsub.hub(HUB).max_unacked_messages = 2  # the third message overflows it
    sender.send_text(*(_group_msg(i) for i in range(4)))
    net.drain()
    frames = reliable.frames()
    texts = [json.loads(p) for op, p in frames if op == 1]
    assert [t.get("data") for t in texts] == ["m0", "m1", None]
    assert texts[2]["type"] == "system" and texts[2]["event"] == "disconnected"
    assert frames[-1][0] == 8 and int.from_bytes(frames[-1][1][:2], "big") == 1008
    assert [m["data"] for m in other.messages()] == ["m0", "m1", "m2", "m3"]
    # Batched: what waited (two messages, the disconnected message) is one send before the close.
    assert len(reliable.sends) == (2 if batch else 4)


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "unbatched"])
def test_raw_and_json_clients_in_one_batch(batch: bool) -> None:
    net = Net(batch)
    raw = net.connect(groups=("g",), subprotocol=None)
    plain = net.connect(groups=("g",))
    sender = net.connect(roles=("webpubsub.sendToGroup",), user="bob")
    sender.send_text(_group_msg(1), json.dumps({"type": "sendToGroup", "group": "g",
                                                "dataType": "json", "data": {"k": [1, 2]}}))
    net.drain()
    assert raw.frames() == [(1, b"m1"), (1, b'{"k":[1,2]}')]
    assert [m["data"] for m in plain.messages()] == ["m1", {"k": [1, 2]}]
    assert len(raw.sends) == len(plain.sends) == (1 if batch else 2)


def test_a_lone_surrogate_is_sent_as_its_json_escape() -> None:
    net, sender, members = _setup(True, receivers=1)
    sender.send_text('{"type":"sendToGroup","group":"g","dataType":"text","data":"a\\ud800b"}')
    net.drain()
    (frame,) = members[0].frames()
    assert b'"data":"a\\ud800b"' in frame[1]
    frame[1].decode("utf-8")  # valid UTF-8 on the wire
    assert members[0].messages()[0]["data"] == "a\ud800b"


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "unbatched"])
def test_a_rest_call_is_one_driver_call(batch: bool) -> None:
    net, _sender, members = _setup(batch, receivers=2)
    rest = net.svc.connection_made(NOW, ("127.0.0.1", 6000), service="webpubsub")
    body = b"hello"
    target = f"/api/hubs/{HUB}/groups/g/:send?api-version=2024-12-01"
    token = jwt.encode({"aud": f"{ENDPOINT}{target}", "exp": NOW + 60}, KEY, algorithm="HS256")
    net.svc.receive_data(NOW, rest, (
        f"POST {target} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:8080\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
    out = net.drain()
    answer = b"".join(data for conn, data in out if conn == rest)
    assert answer.startswith(b"HTTP/1.1 202"), answer
    for member in members:
        assert [(m["from"], m["data"]) for m in member.messages()] == [("group", "hello")]
        assert len(member.sends) == 1
