"""Upstream event handlers against our hub: Microsoft's ``@azure/web-pubsub-express`` and a plain
Python HTTP server receive ``connect``, ``connected``, ``disconnected`` and user events from our
hub, after the abuse-protection handshake, and what they answer takes effect (a user id and
group set by ``connect``, a refusal, a reply to a user event)."""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import threading
from base64 import b64encode
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from azure.messaging.webpubsubclient import WebPubSubClient, WebPubSubClientCredential
from azure.messaging.webpubsubclient.models import (
    CallbackType,
    SendMessageError,
    WebPubSubDataType,
)
from azure.messaging.webpubsubservice import WebPubSubServiceClient

from hyco_proto.adapters.asyncio import RelayServiceThread
from hyco_proto.service.config import ServiceConfig
from hyco_proto.service.router import RelayService
from hyco_proto.service.webpubsub import WebPubSubService
from hyco_proto.webpubsub.events import EventHandler
from hyco_proto.webpubsub.hub import Hub
from tests.interop import NODE_DIR, NodeProcess
from tests.interop.wps_proxy import HUB, KEY, ROLES, NodeWps, PyWps, connection_string

WAIT = 15.0
ALL_SYSTEM = frozenset({"connect", "connected", "disconnected"})


@contextlib.contextmanager
def hub_with(handler: EventHandler, timeout: float = 5.0) -> Iterator[int]:
    wps = WebPubSubService(KEY, event_handlers={HUB: [handler]}, event_timeout=timeout)
    # @azure/web-pubsub-client's stop() closes without a status code, as its keepalive timeout
    # does before it recovers: the hub keeps such a reliable session for the recovery window,
    # and `disconnected` fires when the window ends (1 s here instead of 30).
    wps.hubs[HUB] = Hub(HUB, recovery_window=1.0, report_departures=True)
    service = RelayService(ServiceConfig(), webpubsub=wps)
    with RelayServiceThread(service, port=0, routes="webpubsub") as thread:
        yield thread.port


def client_url(port: int, user: str, roles: list[str], query: str = "") -> str:
    svc = WebPubSubServiceClient.from_connection_string(connection_string(port), hub=HUB)
    return str(svc.get_client_access_token(user_id=user, roles=roles)["url"]) + query


def raw_upgrade(url: str) -> tuple[int, str]:
    """Open the client URL as a WebSocket upgrade by hand: (status, body)."""
    rest = url.split("://", 1)[1]
    authority, _, target = rest.partition("/")
    host, _, port = authority.partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=WAIT)
    try:
        conn.request("GET", "/" + target, headers={
            "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": b64encode(b"0123456789abcdef").decode(),
            "Sec-WebSocket-Protocol": "json.webpubsub.azure.v1"})
        response = conn.getresponse()
        body = b"" if response.status == 101 else response.read()
        return response.status, body.decode("utf-8", "replace")
    finally:
        conn.close()


# -- Microsoft's @azure/web-pubsub-express ------------------------------------------------------

class ExpressHandler(NodeProcess):
    label = "@azure/web-pubsub-express handler"

    def __init__(self, allowed: str | None = None) -> None:
        args = [HUB] + ([allowed] if allowed else [])
        super().__init__(NODE_DIR / "wps_event_handler.js", args,
                         package="@azure/web-pubsub-express/dist/commonjs")
        first = self._queue.get(timeout=WAIT)  # {"port": N} comes first
        if first is None or "port" not in first:
            self.kill()
            raise AssertionError(f"{self.label} did not start: {first!r}; {self.stderr!r}")
        self.port = int(first["port"])

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/eventhandler"


def test_express_handler_gets_every_event_and_its_answers_take_effect() -> None:
    with ExpressHandler() as express, \
            hub_with(EventHandler(express.url(), system_events=ALL_SYSTEM)) as port, \
            NodeWps(port, "alice") as alice:
        connected = alice.event("connected")
        # connect answered userId "<sub>-via-express" and the group "express-group".
        assert connected["userId"] == "alice-via-express"
        connect = express.wait_event("connect")
        assert connect["userId"] == "alice" and connect["claims"]["sub"] == ["alice"]
        assert connect["subprotocols"] == ["json.reliable.webpubsub.azure.v1"]
        assert connect["connectionId"] == connected["connectionId"]
        preflight = express.named("preflight")
        assert preflight == [{"event": "preflight", "origin": f"127.0.0.1:{port}"}]
        assert express.wait_event("connected")["userId"] == "alice-via-express"

        # A message to the group the handler chose reaches alice.
        with PyWps(port, "bob") as bob:
            bob.send("express-group", "from bob")
            message = alice.until(lambda e: e.get("event") == "group-message", "group message")
            assert (message["group"], message["data"], message["fromUserId"]) == (
                "express-group", "from bob", "bob-via-express")

        # A user event goes to the handler; its answer comes back as a server message.
        alice.ok("event", event="echo", dataType="text", data="hi there")
        user = express.wait_event("user")
        assert (user["name"], user["dataType"], user["data"], user["userId"]) == (
            "echo", "text", "hi there", "alice-via-express")
        assert user["signature"].startswith("sha256=")
        reply = alice.event("server-message")
        assert (reply["dataType"], reply["data"]) == ("text", "echo: hi there")
        alice.ok("event", event="other", dataType="json", data={"n": 1})
        assert express.wait_event("user")["data"] == {"n": 1}

        alice.close()
        gone = express.wait_event("disconnected")
        assert gone["connectionId"] == connected["connectionId"] and gone["reason"]


def test_express_handler_refusal_reaches_the_client_as_its_status() -> None:
    with ExpressHandler() as express, \
            hub_with(EventHandler(express.url(), system_events=ALL_SYSTEM)) as port:
        status, body = raw_upgrade(client_url(port, "mallory", ROLES, "&refuse=1"))
        assert status == 401 and "refused by express" in body
        assert express.wait_event("connect")["query"]["refuse"] == ["1"]
        # A client it accepts still gets in.
        assert raw_upgrade(client_url(port, "carol", ROLES))[0] == 101


def test_express_allowed_endpoints_that_exclude_us_fail_abuse_protection() -> None:
    with ExpressHandler(allowed="http://somewhere-else.example") as express, \
            hub_with(EventHandler(express.url(), system_events=ALL_SYSTEM)) as port:
        status, body = raw_upgrade(client_url(port, "dave", ROLES))
        assert status == 500 and "abuse protection failed" in body
        assert express.named("connect") == []


# -- a plain Python HTTP server -----------------------------------------------------------------

class Recorder(BaseHTTPRequestHandler):
    """Answers like an app server that sets roles at connect and replies to user events."""

    seen: queue.Queue[dict[str, Any]]

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_OPTIONS(self) -> None:
        self.seen.put({"method": "OPTIONS",
                       "origin": self.headers.get("WebHook-Request-Origin")})
        self.send_response(200)
        self.send_header("WebHook-Allowed-Origin", "*")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        kind = self.headers.get("ce-type", "")
        self.seen.put({"method": "POST", "type": kind, "body": body,
                       "user": self.headers.get("ce-userId"),
                       "content_type": self.headers.get("Content-Type")})
        if kind == "azure.webpubsub.sys.connect":
            answer = json.dumps({"roles": ["webpubsub.joinLeaveGroup.lobby"],
                                 "groups": ["lobby"]}).encode()
            self._answer(200, "application/json", answer)
        elif kind.startswith("azure.webpubsub.user."):
            doc = json.loads(body) if body else None
            self._answer(200, "application/json", json.dumps({"got": doc}).encode())
        else:
            self._answer(204, None, b"")

    def _answer(self, status: int, content_type: str | None, body: bytes) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        if status != 204:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def plain_handler() -> Iterator[tuple[str, queue.Queue[dict[str, Any]]]]:
    seen: queue.Queue[dict[str, Any]] = queue.Queue()
    handler_class = type("Handler", (Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_class)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{{hub}}/{{event}}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_plain_python_handler_sets_roles_and_answers_user_events(
        plain_handler: tuple[str, queue.Queue[dict[str, Any]]]) -> None:
    template, seen = plain_handler
    handler = EventHandler(template, system_events=ALL_SYSTEM)
    with hub_with(handler) as port:
        svc = WebPubSubServiceClient.from_connection_string(connection_string(port), hub=HUB)
        # No role in the token: the connect handler grants join/leave on "lobby" only.
        client = WebPubSubClient(WebPubSubClientCredential(
            lambda: str(svc.get_client_access_token(user_id="erin")["url"])), ack_timeout=5)
        server_messages: queue.Queue[Any] = queue.Queue()
        client.subscribe(CallbackType.SERVER_MESSAGE, server_messages.put)
        with client:
            client.leave_group("lobby")
            with pytest.raises(SendMessageError) as info:
                client.join_group("elsewhere")
            assert info.value.error_detail.name == "Forbidden"  # type: ignore[attr-defined]
            client.send_event("ask", {"q": 1}, WebPubSubDataType.JSON)
            reply = server_messages.get(timeout=WAIT)
            assert reply.data == {"got": {"q": 1}}
        events = []
        while len(events) < 5:
            events.append(seen.get(timeout=WAIT))
    assert events[0] == {"method": "OPTIONS", "origin": f"127.0.0.1:{port}"}
    assert [e.get("type") for e in events[1:]] == [
        "azure.webpubsub.sys.connect", "azure.webpubsub.sys.connected",
        "azure.webpubsub.user.ask", "azure.webpubsub.sys.disconnected"]
    connect = json.loads(events[1]["body"])
    assert connect["claims"]["sub"] == ["erin"] and "access_token" not in connect["query"]
    assert events[3]["content_type"] == "application/json" and events[3]["user"] == "erin"
    assert json.loads(events[4]["body"])["reason"]


def test_an_unreachable_handler_refuses_connect_with_500_and_says_where() -> None:
    with socket_port() as dead_port, \
            hub_with(EventHandler(f"http://127.0.0.1:{dead_port}/x",
                                  system_events=frozenset({"connect"})), timeout=3.0) as port:
        status, body = raw_upgrade(client_url(port, "frank", ROLES))
    assert status == 500
    assert f"127.0.0.1:{dead_port}" in body


@contextlib.contextmanager
def socket_port() -> Iterator[int]:
    """A loopback port nobody listens on (bound, never listening, so it refuses)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


class RawAppHandler(Recorder):
    """Chooses a raw client's own subprotocol at connect and answers its frames."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        kind = self.headers.get("ce-type", "")
        self.seen.put({"type": kind, "body": body,
                       "content_type": self.headers.get("Content-Type")})
        if kind == "azure.webpubsub.sys.connect":
            offered = json.loads(body)["subprotocols"]
            self._answer(200, "application/json",
                         json.dumps({"subprotocol": offered[-1], "userId": "raw-user"}).encode())
        elif kind == "azure.webpubsub.user.message":
            self._answer(200, "text/plain", b"you said " + body)
        else:
            self._answer(204, None, b"")


def test_raw_client_with_its_own_subprotocol_talks_to_the_handler() -> None:
    from hyco_proto.adapters.threads import connect

    seen: queue.Queue[dict[str, Any]] = queue.Queue()
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (RawAppHandler,), {"seen": seen}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        handler = EventHandler(f"http://127.0.0.1:{server.server_address[1]}/x",
                               system_events=frozenset({"connect"}))
        with hub_with(handler) as port:
            url = client_url(port, "anon", []).replace("http://", "ws://")
            with connect(url, subprotocols=["chat.v1", "chat.v2"], open_timeout=WAIT) as ws:
                assert ws.subprotocol == "chat.v2"
                ws.send("hello")
                assert ws.recv(WAIT) == "you said hello"
                ws.send(b"\x00\x01")
                assert ws.recv(WAIT) == "you said \x00\x01"
        events = [seen.get(timeout=WAIT) for _ in range(4)]
    finally:
        server.shutdown()
        server.server_close()
    assert [e.get("type", e.get("method")) for e in events] == [
        "OPTIONS", "azure.webpubsub.sys.connect", "azure.webpubsub.user.message",
        "azure.webpubsub.user.message"]
    assert json.loads(events[1]["body"])["subprotocols"] == ["chat.v1", "chat.v2"]
    assert events[2]["content_type"].startswith("text/plain")
    assert events[3]["content_type"] == "application/octet-stream"
