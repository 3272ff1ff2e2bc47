"""Microsoft's Node Web PubSub SDKs against our hub route (served on a port of its own).

``node/wps_client.js`` mints its client URL with ``@azure/web-pubsub``'s
``WebPubSubServiceClient.getClientAccessToken`` (offline, from a connection string) and connects
with ``@azure/web-pubsub-client``'s ``WebPubSubClient``; the tests drive it with JSON lines. The
Node client exchanges text, JSON and binary with itself and with Microsoft's Python client, sync
and aio, in one group, and gets ``Forbidden`` acks without the roles.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator

import pytest

from tests.interop.wps_proxy import CuttingProxy, NodeWps, PyWps, serve_hub

pytestmark = pytest.mark.node


@pytest.fixture()
def hub_port() -> Iterator[int]:
    with serve_hub() as (port, _):
        yield port


def test_node_client_joins_and_exchanges_text_json_and_binary(hub_port: int) -> None:
    blob = base64.b64encode(os.urandom(3000)).decode()
    with NodeWps(hub_port, "alice") as alice, NodeWps(hub_port, "bob") as bob:
        assert alice.event("connected")["userId"] == "alice"
        bob_id = bob.event("connected")["connectionId"]
        assert bob_id
        alice.ok("join", group="room")
        bob.ok("join", group="room")
        bob.ok("send", group="room", dataType="text", data="hello é", noEcho=True)
        bob.ok("send", group="room", dataType="json", data={"a": [1, None, "x"]}, noEcho=True)
        bob.ok("send", group="room", dataType="binary", data=blob, noEcho=True)
        bob.ok("send", group="room", dataType="text", data="echoed", noEcho=False)
        alice.until(lambda e: e.get("data") == "echoed", "the fourth message")
        bob.until(lambda e: e.get("data") == "echoed", "bob's own echo")
        got = [(m["group"], m["dataType"], m["data"], m["fromUserId"], m["sequenceId"])
               for m in alice.messages()]
        assert got == [
            ("room", "text", "hello é", "bob", 1),
            ("room", "json", {"a": [1, None, "x"]}, "bob", 2),
            ("room", "binary", blob, "bob", 3),
            ("room", "text", "echoed", "bob", 4),
        ]
        # noEcho kept bob's first three from bob; the echoed one is his first sequenced message.
        assert [(m["data"], m["sequenceId"]) for m in bob.messages()] == [("echoed", 1)]
        # After leaving, alice gets nothing more from the group.
        alice.ok("leave", group="room")
        bob.ok("send", group="room", dataType="text", data="after leave", noEcho=False)
        bob.until(lambda e: e.get("data") == "after leave", "bob's echo after alice left")
        time.sleep(0.3)
        assert len(alice.messages()) == 4
        # One URL each, from the server SDK, and no reconnect.
        for peer in (alice, bob):
            assert [e["n"] for e in peer.named("token")] == [1]
            assert len(peer.named("connected")) == 1 and not peer.named("disconnected")
        alice.ok("stop")
        alice.event("stopped")
        assert not alice.named("error") and not bob.named("error")


def test_node_and_python_clients_share_a_group(hub_port: int) -> None:
    blob = bytes(range(256))
    with NodeWps(hub_port, "node") as node, PyWps(hub_port, "pysync") as sync, \
            PyWps(hub_port, "pyaio", aio=True) as aio:
        node.event("connected")
        sync.event("connected")
        aio.event("connected")
        for join in (lambda: node.ok("join", group="mix"), lambda: sync.join("mix"),
                     lambda: aio.join("mix")):
            join()
        node.ok("send", group="mix", dataType="text", data="from node", noEcho=True)
        node.ok("send", group="mix", dataType="binary",
                data=base64.b64encode(blob).decode(), noEcho=True)
        sync.send("mix", {"from": "sync"}, "json", no_echo=True)
        aio.send("mix", "from aio", "text", no_echo=True)

        def seen(peer: NodeWps | PyWps, count: int) -> list[tuple[str, object, str]]:
            peer.until(lambda e: len(peer.messages()) >= count, f"{count} messages")
            time.sleep(0.2)  # nothing more should come
            return sorted(((m["dataType"], m["data"], m["fromUserId"]) for m in peer.messages()),
                          key=repr)

        assert seen(node, 2) == sorted([("json", {"from": "sync"}, "pysync"),
                                        ("text", "from aio", "pyaio")], key=repr)
        expected_text = ("text", "from node", "node")
        # The Python clients decode binary data from base64 into bytes.
        expected_binary = ("binary", blob, "node")
        assert seen(sync, 3) == sorted([expected_text, expected_binary,
                                        ("text", "from aio", "pyaio")], key=repr)
        assert seen(aio, 3) == sorted([expected_text, expected_binary,
                                       ("json", {"from": "sync"}, "pysync")], key=repr)
        for peer in (sync, aio):
            assert [m["sequenceId"] for m in peer.messages()] == [1, 2, 3]


# The JS client retries a refused operation (messageRetryOptions: 3 more tries, 1 s apart by
# default, each with a new ackId) before it rejects it; 50 ms apart here.
FAST_RETRIES = {"messageRetryOptions": {"maxRetries": 3, "retryDelayInMs": 50}}


def test_node_client_without_the_roles_gets_forbidden_acks(hub_port: int) -> None:
    with NodeWps(hub_port, "mallory", roles=[], clientOptions=FAST_RETRIES) as mallory, \
            NodeWps(hub_port, "alice") as alice:
        mallory.event("connected")
        alice.event("connected")
        alice.ok("join", group="room")
        joined = mallory.call("join", group="room")
        assert not joined["ok"] and joined["error"]["name"] == "Forbidden", joined
        sent = mallory.call("send", group="room", dataType="text", data="spam")
        assert not sent["ok"] and sent["error"]["name"] == "Forbidden", sent
        # Events need no role; with no event handler configured, the hub acks them.
        assert mallory.call("event", event="hello", dataType="json", data={"k": 1})["ok"]
        time.sleep(0.2)
        assert alice.messages() == []
        # The refused acks do not end the connection.
        assert not mallory.named("disconnected")
    # A role for one group is not enough for another group.
    with NodeWps(hub_port, "carol", roles=["webpubsub.joinLeaveGroup.allowed"],
                 clientOptions=FAST_RETRIES) as carol:
        carol.event("connected")
        carol.ok("join", group="allowed")
        other = carol.call("join", group="other")
        assert not other["ok"] and other["error"]["name"] == "Forbidden", other


def test_node_client_keepalive_pings_are_answered() -> None:
    """The JS client pings every 20 s and, when nothing at all came in for keepAliveTimeoutInMs
    (120 s, checked every third of it), closes its socket and recovers. Shortened here: a client
    that pings every 100 ms gets pongs and keeps its socket through 1.5 s of silence; one that
    does not ping drops its socket and recovers (so the monitor is live)."""
    with serve_hub() as (hub_port, _), CuttingProxy(hub_port) as pinger_proxy, \
            CuttingProxy(hub_port) as silent_proxy, \
            NodeWps(pinger_proxy.port, "pinger", clientOptions={
                "keepAliveIntervalInMs": 100, "keepAliveTimeoutInMs": 600}) as pinger, \
            NodeWps(silent_proxy.port, "silent", clientOptions={
                "keepAliveIntervalInMs": 0, "keepAliveTimeoutInMs": 600}) as silent, \
            NodeWps(hub_port, "talker") as talker:
        for peer in (pinger, silent, talker):
            peer.event("connected")
        pinger.ok("join", group="room")
        silent.ok("join", group="room")
        time.sleep(1.5)
        assert pinger_proxy.accepted == 1, pinger_proxy.log
        assert silent_proxy.accepted >= 2, silent_proxy.log
        talker.ok("send", group="room", dataType="text", data="still there")
        for peer in (pinger, silent):
            peer.until(lambda e: e.get("data") == "still there", "a message after the silence")
            assert len(peer.named("connected")) == 1 and not peer.named("disconnected")
