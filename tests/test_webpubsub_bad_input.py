"""Bad input to the Web PubSub hubs over real sockets: each gets its documented status or close
code, and two bystanders in a group keep exchanging messages throughout (nothing lost)."""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from hyco_proto.adapters.asyncio import RelayServiceThread
from hyco_proto.adapters.threads import connect
from hyco_proto.drivers.stream import ConnectionClosedError
from hyco_proto.errors import RelayError
from hyco_proto.service.config import ServiceConfig
from hyco_proto.service.router import RelayService
from hyco_proto.service.webpubsub import WebPubSubService
from hyco_proto.webpubsub import JSON_SUBPROTOCOL, create_client_token

KEY = "bad-input-tests-access-key-0123456789abcdef"
ROLES = ("webpubsub.joinLeaveGroup", "webpubsub.sendToGroup")
WAIT = 10.0


@pytest.fixture(scope="module")
def hub() -> Iterator[RelayServiceThread]:
    service = RelayService(ServiceConfig(), webpubsub=WebPubSubService(KEY))
    with RelayServiceThread(service, port=0, webpubsub_port=0) as thread:
        yield thread


def url(thread: RelayServiceThread, user: str, roles: tuple[str, ...] = ROLES, *,
        ttl: int = 600, now: float | None = None, key: str = KEY) -> str:
    endpoint = thread.webpubsub_endpoint
    token = create_client_token(endpoint=endpoint, hub="chat", key=key, user_id=user,
                                roles=roles, ttl=ttl, now=now if now is not None else time.time())
    return f"{endpoint.replace('http', 'ws', 1)}/client/hubs/chat?access_token={token}"


def json_client(thread: RelayServiceThread, user: str, **kw: Any) -> Any:
    ws = connect(url(thread, user, **kw), subprotocols=[JSON_SUBPROTOCOL], open_timeout=WAIT)
    assert json.loads(ws.recv(WAIT))["event"] == "connected"
    return ws


def closed_with(ws: Any) -> int:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            ws.recv(WAIT)
        except ConnectionClosedError as exc:
            return exc.code
    raise AssertionError("the connection was not closed")


class Bystanders:
    """Two clients in group "calm": every message one sends must reach the other."""

    def __init__(self, thread: RelayServiceThread) -> None:
        self.a = json_client(thread, "a")
        self.b = json_client(thread, "b")
        self.sent = 0
        for ws in (self.a, self.b):
            ws.send(json.dumps({"type": "joinGroup", "group": "calm", "ackId": 1}))
            assert json.loads(ws.recv(WAIT))["success"] is True

    def check(self) -> None:
        self.sent += 1
        self.a.send(json.dumps({"type": "sendToGroup", "group": "calm", "noEcho": True,
                                "dataType": "text", "data": f"m{self.sent}"}))
        got = json.loads(self.b.recv(WAIT))
        assert got["data"] == f"m{self.sent}", got


def test_bad_input_gets_its_code_and_the_hub_keeps_serving(hub: RelayServiceThread) -> None:
    calm = Bystanders(hub)

    # Malformed JSON, an unknown type, a non-object: 1007 (after system/disconnected).
    for frame in ["{not json", '{"type": "nonsense"}', "[1, 2]"]:
        ws = json_client(hub, "mallory")
        ws.send(frame)
        assert json.loads(ws.recv(WAIT))["event"] == "disconnected"
        assert closed_with(ws) == 1007
        calm.check()

    # A frame over the 1 MiB limit: 1009, refused before it is buffered whole.
    ws = json_client(hub, "mallory")
    with contextlib.suppress(ConnectionClosedError, OSError):  # it may close mid-frame
        ws.send("x" * (2 * 1024 * 1024))
    assert closed_with(ws) == 1009
    calm.check()

    # A binary frame on a JSON subprotocol: 1003.
    ws = json_client(hub, "mallory")
    ws.send(b"\x00\x01")
    assert json.loads(ws.recv(WAIT))["event"] == "disconnected"
    assert closed_with(ws) == 1003
    calm.check()

    # Forbidden group: an ack with Forbidden, and the connection stays.
    ws = json_client(hub, "nobody", roles=())
    ws.send(json.dumps({"type": "joinGroup", "group": "calm", "ackId": 7}))
    ack = json.loads(ws.recv(WAIT))
    assert (ack["ackId"], ack["success"], ack["error"]["name"]) == (7, False, "Forbidden")
    ws.send(json.dumps({"type": "ping"}))
    assert json.loads(ws.recv(WAIT)) == {"type": "pong"}
    ws.close()
    calm.check()

    # Expired and badly signed tokens: 401 before the upgrade.
    for bad in (url(hub, "late", ttl=60, now=time.time() - 3600),
                url(hub, "forger", key="not-the-key-of-this-hub-0123456789")):
        with pytest.raises(RelayError) as info:
            connect(bad, subprotocols=[JSON_SUBPROTOCOL], open_timeout=WAIT)
        assert "401" in str(info.value)
        assert "access_token" not in str(info.value), "errors never carry the token"
        calm.check()

    # Not HTTP at all, on the Web PubSub port: a 400, and the connection is closed.
    with socket.create_connection(("127.0.0.1", hub.server.webpubsub_port), WAIT) as sock:
        sock.sendall(b"\x16\x03\x01 this is not http\r\n\r\n")
        sock.settimeout(WAIT)
        assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
    calm.check()

    # REST junk: a JSON error, never a traceback.
    request = urllib.request.Request(f"{hub.webpubsub_endpoint}/api/hubs/chat/:send",
                                     data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as http_error:
        urllib.request.urlopen(request, timeout=WAIT)
    assert http_error.value.code == 401
    assert json.loads(http_error.value.read())["code"]
    calm.check()
