"""Microsoft's Python Web PubSub service SDK drives our REST API; real clients see the effects.

``azure-messaging-webpubsubservice`` (from a connection string: HS256 bearer tokens with
``aud`` = the request URL) calls every data-plane operation against a hub served by
``RelayServiceThread(..., routes="webpubsub")``; ``azure-messaging-webpubsubclient`` (sync)
clients are connected and observe each effect: messages of each content type, exclusions and
filters, closes (with their reason), group membership, and permissions granted and revoked.
"""

from __future__ import annotations

import base64
import json
import queue
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.messaging.webpubsubclient import WebPubSubClient, WebPubSubClientCredential
from azure.messaging.webpubsubclient.models import (
    CallbackType,
    SendMessageError,
    WebPubSubDataType,
)
from azure.messaging.webpubsubservice import WebPubSubServiceClient
from azure.messaging.webpubsubservice._operations._operations import (
    WebPubSubServiceClientOperationsMixin as GeneratedOperations,
)

from hyco_proto.adapters.asyncio import RelayServiceThread
from hyco_proto.service.config import ServiceConfig
from hyco_proto.service.router import RelayService
from hyco_proto.service.webpubsub import WebPubSubService
from tests.procutil import free_port

KEY = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH"
WAIT = 15.0
QUIET = 0.5  # how long "nothing arrives" is watched
# One retry (0.8 s) per refused message: with none, azure-messaging-webpubsubclient 1.1 holds
# the next message after a refused one for its 30 s ack timeout (observed).
RETRIES = 1
# azure-messaging-webpubsubclient 1.1 waits for "connected" and for each ack with a bare
# ``cv.wait(timeout)`` (no predicate): an answer that lands before the wait starts (easy against
# a local service) is only noticed when the timeout ends. Short timeouts bound that stall; the
# outcome is still checked (is_connected, the ack's error) after the wait.
SDK_TIMEOUT = 3.0


@pytest.fixture()
def hub_port() -> Iterator[int]:
    service = RelayService(ServiceConfig(), webpubsub=WebPubSubService(KEY))
    with RelayServiceThread(service, port=free_port(), routes="webpubsub") as thread:
        yield thread.port


def service_client(port: int, key: str = KEY, **kwargs: Any) -> WebPubSubServiceClient:
    return WebPubSubServiceClient.from_connection_string(
        f"Endpoint=http://127.0.0.1:{port};AccessKey={key};Version=1.0;", hub="chat", **kwargs)


class Peer:
    """A connected SDK client and queues of what it received."""

    def __init__(self, svc: WebPubSubServiceClient, user: str, roles: list[str] | None = None,
                 groups: list[str] | None = None, url: str | None = None) -> None:
        def mint() -> str:
            return url or str(svc.get_client_access_token(
                user_id=user, roles=roles or [], groups=groups or [])["url"])

        # No reconnection: a REST close must stay closed.
        self.client = WebPubSubClient(WebPubSubClientCredential(mint), reconnect_retry_total=0,
                                      message_retry_total=RETRIES, start_timeout=SDK_TIMEOUT,
                                      ack_timeout=SDK_TIMEOUT)
        self.connected: queue.Queue[Any] = queue.Queue()
        self.server: queue.Queue[Any] = queue.Queue()
        self.group: queue.Queue[Any] = queue.Queue()
        self.disconnected: queue.Queue[Any] = queue.Queue()
        self.client.subscribe(CallbackType.CONNECTED, self.connected.put)
        self.client.subscribe(CallbackType.SERVER_MESSAGE, self.server.put)
        self.client.subscribe(CallbackType.GROUP_MESSAGE, self.group.put)
        self.client.subscribe(CallbackType.DISCONNECTED, self.disconnected.put)
        self.client.open()
        self.id = str(self.connected.get(timeout=WAIT).connection_id)

    def next_server(self) -> tuple[Any, Any]:
        msg = self.server.get(timeout=WAIT)
        data = bytes(msg.data) if msg.data_type == WebPubSubDataType.BINARY else msg.data
        return msg.data_type, data

    def next_group(self) -> tuple[str, Any]:
        msg = self.group.get(timeout=WAIT)
        return msg.group, msg.data

    def close(self) -> None:
        self.client.close()


def nothing(q: queue.Queue[Any]) -> bool:
    try:
        q.get(timeout=QUIET)
    except queue.Empty:
        return True
    return False


@pytest.fixture()
def svc(hub_port: int) -> WebPubSubServiceClient:
    return service_client(hub_port)


def test_sends_of_each_content_type_with_exclusions_and_filters(
        svc: WebPubSubServiceClient) -> None:
    alice, bob = Peer(svc, "alice", groups=["room"]), Peer(svc, "bob", groups=["room"])
    try:
        svc.send_to_all("hello", content_type="text/plain")
        svc.send_to_all({"a": [1, 2]})  # the SDK's default content type: application/json
        svc.send_to_all(b"\x00\x01\xff", content_type="application/octet-stream")
        for peer in (alice, bob):
            assert peer.next_server() == (WebPubSubDataType.TEXT, "hello")
            assert peer.next_server() == (WebPubSubDataType.JSON, {"a": [1, 2]})
            assert peer.next_server() == (WebPubSubDataType.BINARY, b"\x00\x01\xff")
        svc.send_to_all("not bob", content_type="text/plain", excluded=[bob.id])
        svc.send_to_all("only bob", content_type="text/plain", filter="userId eq 'bob'")
        assert alice.next_server()[1] == "not bob"
        assert bob.next_server()[1] == "only bob", "the excluded send must not reach bob"
        svc.send_to_group("room", "to room", content_type="text/plain", excluded=[alice.id])
        assert bob.next_group() == ("room", "to room") and nothing(alice.group)
        svc.send_to_group("room", "filtered", content_type="text/plain",
                          filter="userId ne 'bob'")
        assert alice.next_group() == ("room", "filtered") and nothing(bob.group)
        svc.send_to_user("alice", "to alice", content_type="text/plain")
        svc.send_to_connection(bob.id, "to bob's connection", content_type="text/plain")
        assert alice.next_server()[1] == "to alice"
        assert bob.next_server()[1] == "to bob's connection"
        assert nothing(alice.server) and nothing(bob.server)
        with pytest.raises(HttpResponseError) as info:
            svc.send_to_all("x", content_type="text/plain", filter="length(userId) gt 1")
        assert info.value.status_code == 400
    finally:
        alice.close()
        bob.close()


def test_existence_group_membership_and_listing(svc: WebPubSubServiceClient) -> None:
    alice, bob = Peer(svc, "alice"), Peer(svc, "bob")
    try:
        assert svc.connection_exists(alice.id) and not svc.connection_exists("nobody")
        assert svc.user_exists("bob") and not svc.user_exists("carol")
        assert not svc.group_exists("room")
        svc.add_connection_to_group("room", alice.id)
        svc.add_user_to_group("room", "bob")
        assert svc.group_exists("room")
        members = {(m.connection_id, m.user_id) for m in svc.list_connections(group="room")}
        assert members == {(alice.id, "alice"), (bob.id, "bob")}
        pages = list(svc.list_connections(group="room", maxpagesize=1).by_page())
        assert [len(list(p)) for p in pages] == [1, 1]
        assert len(list(svc.list_connections(group="room", top=1))) == 1
        svc.send_to_group("room", "both", content_type="text/plain")
        assert alice.next_group() == ("room", "both") and bob.next_group() == ("room", "both")
        svc.remove_connection_from_group("room", alice.id)
        svc.send_to_group("room", "bob only", content_type="text/plain")
        assert bob.next_group()[1] == "bob only" and nothing(alice.group)
        svc.remove_user_from_group("room", "bob")
        assert not svc.group_exists("room")
        svc.add_user_to_group("a", "bob")
        svc.add_user_to_group("b", "bob")
        svc.add_connection_to_group("c", alice.id)
        svc.remove_user_from_all_groups("bob")
        svc.remove_connection_from_all_groups(alice.id)
        assert not any(svc.group_exists(g) for g in ("a", "b", "c"))
        with pytest.raises(HttpResponseError) as info:
            svc.add_connection_to_group("room", "nobody")
        assert info.value.status_code == 404
    finally:
        alice.close()
        bob.close()


def test_closes_reach_the_clients_with_their_reason(svc: WebPubSubServiceClient) -> None:
    a1, a2 = Peer(svc, "alice"), Peer(svc, "alice")
    bob, carol, dan = Peer(svc, "bob", groups=["room"]), Peer(svc, "carol"), Peer(svc, "dan")
    try:
        svc.close_connection(carol.id, reason="just carol")
        assert carol.disconnected.get(timeout=WAIT).message == "just carol"
        assert not svc.connection_exists(carol.id)
        svc.close_user_connections("alice", excluded=[a2.id], reason="alice go")
        assert a1.disconnected.get(timeout=WAIT).message == "alice go"
        assert nothing(a2.disconnected) and svc.connection_exists(a2.id)
        svc.close_group_connections("room", reason="room closed")
        assert bob.disconnected.get(timeout=WAIT).message == "room closed"
        svc.close_all_connections(excluded=[dan.id], reason="everyone")
        assert a2.disconnected.get(timeout=WAIT).message == "everyone"
        assert nothing(dan.disconnected) and svc.connection_exists(dan.id)
        assert not svc.user_exists("alice") and not svc.user_exists("bob")
    finally:
        for peer in (a1, a2, bob, carol, dan):
            peer.close()


def test_permissions_granted_and_revoked_at_runtime(svc: WebPubSubServiceClient) -> None:
    mallory = Peer(svc, "mallory")
    client = mallory.client
    try:
        with pytest.raises(SendMessageError) as info:
            client.join_group("room")
        assert info.value.error_detail.name == "Forbidden"  # type: ignore[attr-defined]
        assert not svc.has_permission("joinLeaveGroup", mallory.id, target_name="room")
        svc.grant_permission("joinLeaveGroup", mallory.id, target_name="room")
        assert svc.has_permission("joinLeaveGroup", mallory.id, target_name="room")
        client.join_group("room")  # no longer Forbidden
        with pytest.raises(SendMessageError):
            client.send_to_group("room", "hi", WebPubSubDataType.TEXT)
        svc.grant_permission("sendToGroup", mallory.id)  # every group
        client.send_to_group("room", "hi", WebPubSubDataType.TEXT)
        assert mallory.next_group() == ("room", "hi")
        svc.revoke_permission("sendToGroup", mallory.id, target_name="room")
        assert not svc.has_permission("sendToGroup", mallory.id, target_name="room")
        assert svc.has_permission("sendToGroup", mallory.id, target_name="elsewhere")
        with pytest.raises(SendMessageError):
            client.send_to_group("room", "again", WebPubSubDataType.TEXT)
        with pytest.raises(HttpResponseError) as bad:
            svc.grant_permission("fly", mallory.id)
        assert bad.value.status_code == 400
    finally:
        mallory.close()


def test_generate_token_over_rest_and_auth_errors(hub_port: int,
                                                  svc: WebPubSubServiceClient) -> None:
    # The access-key SDK signs tokens itself; the generated operation calls :generateToken.
    doc = GeneratedOperations.get_client_access_token(
        svc, user_id="eve", roles=["webpubsub.joinLeaveGroup"], groups=["start"],
        minutes_to_expire=5)
    url = f"ws://127.0.0.1:{hub_port}/client/hubs/chat?access_token={doc['token']}"
    eve = Peer(svc, "eve", url=url)
    try:
        assert svc.group_exists("start") and svc.user_exists("eve")
        eve.client.join_group("other")  # the role from the token
    finally:
        eve.close()
    with pytest.raises(ClientAuthenticationError):
        service_client(hub_port, key="another-key-entirely-0123456789ABCDEFGHIJ").send_to_all(
            "x", content_type="text/plain")
    with pytest.raises(HttpResponseError) as info:
        service_client(hub_port, api_version="2019-01-01").send_to_all(
            "x", content_type="text/plain")
    assert info.value.status_code == 400 and "api-version" in str(info.value)
    older = service_client(hub_port, api_version="2021-10-01")
    assert not older.user_exists("nobody")
    with urllib.request.urlopen(f"http://127.0.0.1:{hub_port}/api/health", timeout=WAIT) as r:
        assert r.status == 200


# -- @azure/web-pubsub (Node), one operation per process ------------------------------------

NODE_DIR = Path(__file__).resolve().parent / "node"
# argv: port, key, then a JSON [target, method, args]; target "hub" or "group:<name>";
# {"$bytes": base64} arguments become Buffers. Prints {"result": ...} or {"status", "message"}.
JS_CALL = r"""
const { WebPubSubServiceClient } = require("@azure/web-pubsub");
const [port, key, spec] = process.argv.slice(1);
const [target, method, args] = JSON.parse(spec);
const hub = new WebPubSubServiceClient(
  `Endpoint=http://127.0.0.1:${port};AccessKey=${key};Version=1.0;`, "chat",
  { allowInsecureConnection: true });  // the JS SDK refuses plain http without it
const on = target === "hub" ? hub : hub.group(target.slice(6));
const real = args.map((a) => (a && a.$bytes !== undefined ? Buffer.from(a.$bytes, "base64") : a));
(async () => {
  try {
    let result = await on[method](...real);
    if (result && result[Symbol.asyncIterator]) {  // listConnections: a paged iterator
      const items = [];
      for await (const item of result) items.push(item);
      result = items;
    }
    console.log(JSON.stringify({ result: result === undefined ? null : result }));
  } catch (e) {
    console.log(JSON.stringify({ status: e.statusCode, message: String(e.message) }));
  }
})();
"""


def js(port: int, target: str, method: str, *args: Any) -> Any:
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "@azure" / "web-pubsub").is_dir():
        pytest.fail("Node.js with @azure/web-pubsub is needed: run `make test` (npm install in "
                    f"{NODE_DIR})", pytrace=False)
    out = subprocess.run([node, "-e", JS_CALL, str(port), KEY,
                          json.dumps([target, method, list(args)])],
                         cwd=NODE_DIR, capture_output=True, text=True, timeout=WAIT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.node
def test_node_server_sdk_operations(hub_port: int, svc: WebPubSubServiceClient) -> None:
    alice, bob = Peer(svc, "alice"), Peer(svc, "bob")
    try:
        # :addToGroups / :removeFromGroups exist only in the Node SDK (not in the Python 1.3).
        assert "result" in js(hub_port, "hub", "addConnectionsToGroups", ["g1", "g2"],
                              "userId eq 'alice'")
        assert svc.group_exists("g1") and svc.group_exists("g2")
        members = js(hub_port, "group:g1", "listConnections")["result"]
        assert [(m["connectionId"], m["userId"]) for m in members] == [(alice.id, "alice")]
        js(hub_port, "group:g2", "sendToAll", "to g2", {"contentType": "text/plain"})
        assert alice.next_group() == ("g2", "to g2") and nothing(bob.group)
        assert "result" in js(hub_port, "hub", "removeConnectionsFromGroups", ["g2"],
                              "'g1' in groups")
        assert not svc.group_exists("g2") and svc.group_exists("g1")
        js(hub_port, "hub", "sendToAll", {"k": "v"})
        js(hub_port, "hub", "sendToAll", "plain", {"contentType": "text/plain"})
        js(hub_port, "hub", "sendToUser", "bob", {"$bytes": base64.b64encode(b"\x07").decode()})
        js(hub_port, "hub", "sendToConnection", alice.id, "direct",
           {"contentType": "text/plain"})
        assert [alice.next_server(), alice.next_server(), alice.next_server()] == [
            (WebPubSubDataType.JSON, {"k": "v"}), (WebPubSubDataType.TEXT, "plain"),
            (WebPubSubDataType.TEXT, "direct")]
        assert [bob.next_server(), bob.next_server(), bob.next_server()] == [
            (WebPubSubDataType.JSON, {"k": "v"}), (WebPubSubDataType.TEXT, "plain"),
            (WebPubSubDataType.BINARY, b"\x07")]
        assert js(hub_port, "hub", "userExists", "bob") == {"result": True}
        assert js(hub_port, "hub", "connectionExists", "nobody") == {"result": False}
        js(hub_port, "hub", "grantPermission", bob.id, "joinLeaveGroup", {"targetName": "x"})
        assert js(hub_port, "hub", "hasPermission", bob.id, "joinLeaveGroup",
                  {"targetName": "x"}) == {"result": True}
        bob.client.join_group("x")
        js(hub_port, "hub", "revokePermission", bob.id, "joinLeaveGroup", {"targetName": "x"})
        assert js(hub_port, "hub", "hasPermission", bob.id, "joinLeaveGroup",
                  {"targetName": "x"}) == {"result": False}
        bad = js(hub_port, "group:g1", "addConnection", "nobody")
        assert bad["status"] == 404
        js(hub_port, "hub", "closeConnection", bob.id, {"reason": "from node"})
        assert bob.disconnected.get(timeout=WAIT).message == "from node"
    finally:
        alice.close()
        bob.close()
