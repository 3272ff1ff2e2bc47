"""Microsoft's Python Web PubSub SDKs against our hub route (served on a port of its own).

``azure-messaging-webpubsubservice`` mints the client URL from a connection string (offline),
``azure-messaging-webpubsubclient`` (sync, websocket-client) connects, joins a group, sends text
and JSON and receives them back through our ``Hub``; a second client with only its own group
receives nothing it should not. Both packages are in the ``test`` extra.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
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
from tests.procutil import free_port

KEY = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH"  # the official emulator's documented key
WAIT = 15.0
ROLES = ["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"]


@pytest.fixture()
def hub_port() -> Iterator[int]:
    service = RelayService(ServiceConfig(), webpubsub=WebPubSubService(KEY))
    # The same service on two ports would be the emulator's shape; the hub's port is enough here.
    with RelayServiceThread(service, port=free_port(), routes="webpubsub") as thread:
        yield thread.port


def sdk_client(port: int, user: str, roles: list[str]) -> WebPubSubClient:
    connection_string = f"Endpoint=http://127.0.0.1:{port};AccessKey={KEY};Version=1.0;"
    svc = WebPubSubServiceClient.from_connection_string(connection_string, hub="chat")

    def url() -> str:
        return str(svc.get_client_access_token(user_id=user, roles=roles)["url"])

    # The sync SDK (1.1.0) starts waiting for `connected` and for each ack only after it sent:
    # a fast local answer is missed and the call returns after the timeout (30 s by default),
    # with the answer it recorded. Short timeouts keep such a miss short.
    return WebPubSubClient(WebPubSubClientCredential(url), start_timeout=2.0, ack_timeout=2.0)


def test_python_sdk_joins_sends_and_receives_through_our_hub(hub_port: int) -> None:
    alice = sdk_client(hub_port, "alice", ROLES)
    bob = sdk_client(hub_port, "bob", ROLES)
    connected: queue.Queue[Any] = queue.Queue()
    received: queue.Queue[Any] = queue.Queue()
    alice.subscribe(CallbackType.CONNECTED, connected.put)
    bob.subscribe(CallbackType.GROUP_MESSAGE, received.put)
    with alice, bob:
        event = connected.get(timeout=WAIT)
        assert event.user_id == "alice" and event.connection_id
        bob.join_group("room")
        alice.join_group("room")
        alice.send_to_group("room", "hello", WebPubSubDataType.TEXT)
        alice.send_to_group("room", {"a": 1}, WebPubSubDataType.JSON, no_echo=True)
        first, second = received.get(timeout=WAIT), received.get(timeout=WAIT)
    assert (first.group, first.data_type, first.data, first.from_user_id) == (
        "room", WebPubSubDataType.TEXT, "hello", "alice")
    assert (second.data_type, second.data) == (WebPubSubDataType.JSON, {"a": 1})
    assert first.sequence_id == 1 and second.sequence_id == 2


def test_python_sdk_without_the_role_is_refused_by_an_ack(hub_port: int) -> None:
    client = sdk_client(hub_port, "mallory", [])
    with client, pytest.raises(SendMessageError) as info:
        client.join_group("room")
    assert info.value.error_detail is not None  # type: ignore[attr-defined]
    assert info.value.error_detail.name == "Forbidden"  # type: ignore[attr-defined]


def test_python_aio_sdk_joins_sends_receives_and_is_refused_without_the_role(
        hub_port: int) -> None:
    """The asyncio client (aiohttp) of the same package, on its own event loop."""
    import asyncio

    from azure.messaging.webpubsubclient import aio as wps_aio

    connection_string = f"Endpoint=http://127.0.0.1:{hub_port};AccessKey={KEY};Version=1.0;"
    svc = WebPubSubServiceClient.from_connection_string(connection_string, hub="chat")

    def client(user: str, roles: list[str]) -> Any:
        async def url() -> str:
            return str(svc.get_client_access_token(user_id=user, roles=roles)["url"])
        # No retries: a refused join fails at once (3 retries with backoff by default).
        return wps_aio.WebPubSubClient(wps_aio.WebPubSubClientCredential(url),
                                       message_retry_total=0)

    async def scenario() -> tuple[list[Any], Any]:
        received: asyncio.Queue[Any] = asyncio.Queue()

        async def on_message(event: Any) -> None:
            await received.put(event)

        alice, mallory = client("alice", ROLES), client("mallory", [])
        await alice.subscribe(CallbackType.GROUP_MESSAGE, on_message)
        async with alice, mallory:
            await alice.join_group("room")
            await alice.send_to_group("room", "hello", WebPubSubDataType.TEXT)
            await alice.send_to_group("room", {"a": 1}, WebPubSubDataType.JSON)
            got = [await asyncio.wait_for(received.get(), WAIT) for _ in range(2)]
            with pytest.raises(SendMessageError) as info:
                await mallory.join_group("room")
        return got, info.value

    got, error = asyncio.run(asyncio.wait_for(scenario(), 2 * WAIT))
    assert [(m.group, m.data_type, m.data, m.from_user_id, m.sequence_id) for m in got] == [
        ("room", WebPubSubDataType.TEXT, "hello", "alice", 1),
        ("room", WebPubSubDataType.JSON, {"a": 1}, "alice", 2)]
    assert error.error_detail is not None  # type: ignore[attr-defined]
    assert error.error_detail.name == "Forbidden"  # type: ignore[attr-defined]
