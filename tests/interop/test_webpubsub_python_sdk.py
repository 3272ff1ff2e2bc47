"""Microsoft's Python Web PubSub SDKs against our hub route (served on a port of its own).

``azure-messaging-webpubsubservice`` mints the client URL from a connection string (offline),
``azure-messaging-webpubsubclient`` (sync, websocket-client) connects, joins a group, sends text
and JSON and receives them back through our ``Hub``; a second client with only its own group
receives nothing it should not. Both packages are in the ``test`` extra.
"""

from __future__ import annotations

import queue
import socket
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

KEY = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH"  # the official emulator's documented key
WAIT = 15.0
ROLES = ["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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

    return WebPubSubClient(WebPubSubClientCredential(url))


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
