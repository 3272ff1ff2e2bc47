"""Our WebPubSubClient (threads and asyncio) and Microsoft's ``azure-messaging-webpubsubclient``
(sync) in one group of our hub: each receives what the other sends (text, JSON, binary), with
the sender's user id. URLs for both are minted by Microsoft's service SDK."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator
from typing import Any

import pytest
from azure.messaging.webpubsubclient import WebPubSubClient as MsClient
from azure.messaging.webpubsubclient import WebPubSubClientCredential
from azure.messaging.webpubsubclient.models import CallbackType, WebPubSubDataType
from azure.messaging.webpubsubservice import WebPubSubServiceClient

from hyco_proto.adapters import asyncio as ours_asyncio
from hyco_proto.adapters import threads as ours_threads
from hyco_proto.adapters.asyncio import RelayServiceThread
from tests.adapters.webpubsub_util import HUB, KEY, ROLES, hub_server

WAIT = 15.0


@pytest.fixture()
def hub() -> Iterator[RelayServiceThread]:
    with hub_server() as thread:
        yield thread


def url_for(port: int, user: str) -> str:
    svc = WebPubSubServiceClient.from_connection_string(
        f"Endpoint=http://127.0.0.1:{port};AccessKey={KEY};Version=1.0;", hub=HUB)
    return str(svc.get_client_access_token(user_id=user, roles=list(ROLES))["url"])


#: The sync SDK can miss an open or an ack that comes before it waits (a lost wakeup: it then
#: waits its whole start_timeout / ack_timeout, 30 s by default, and succeeds, the outcome having
#: been recorded); short ones keep such a wait short.
MS_TIMEOUT = 2.0


def ms_client(port: int, received: queue.Queue[Any]) -> MsClient:
    client = MsClient(WebPubSubClientCredential(lambda: url_for(port, "microsoft")),
                      ack_timeout=MS_TIMEOUT, start_timeout=MS_TIMEOUT)
    client.subscribe(CallbackType.GROUP_MESSAGE, received.put)
    return client


def check_ms_received(received: queue.Queue[Any]) -> None:
    got = [received.get(timeout=WAIT) for _ in range(3)]
    assert [(m.group, m.data_type, m.from_user_id) for m in got] == [
        ("mixed", WebPubSubDataType.TEXT, "ours"), ("mixed", WebPubSubDataType.JSON, "ours"),
        ("mixed", WebPubSubDataType.BINARY, "ours")]
    assert got[0].data == "from ours" and got[1].data == {"n": 1}
    assert bytes(got[2].data) == b"\x01\x02"


def test_our_threads_client_and_microsofts_share_a_group(hub: RelayServiceThread) -> None:
    ms_received: queue.Queue[Any] = queue.Queue()
    ms = ms_client(hub.port, ms_received)
    ours = ours_threads.WebPubSubClient(lambda: url_for(hub.port, "ours"))
    with ms, ours:
        inbox = ours.messages(timeout=WAIT)
        ms.join_group("mixed")
        ours.join_group("mixed")
        ms.send_to_group("mixed", "from microsoft", WebPubSubDataType.TEXT, no_echo=True)
        ms.send_to_group("mixed", {"m": [1]}, WebPubSubDataType.JSON, no_echo=True)
        first, second = next(inbox), next(inbox)
        assert (first.value, first.from_user_id, first.data_type) == (
            "from microsoft", "microsoft", "text")
        assert (second.value, second.data_type) == ({"m": [1]}, "json")
        ours.send_to_group("mixed", "from ours", no_echo=True)
        ours.send_to_group("mixed", {"n": 1}, "json", no_echo=True)
        ours.send_to_group("mixed", b"\x01\x02", "binary", no_echo=True)
        check_ms_received(ms_received)


def test_our_asyncio_client_and_microsofts_share_a_group(hub: RelayServiceThread) -> None:
    ms_received: queue.Queue[Any] = queue.Queue()
    ms = ms_client(hub.port, ms_received)

    async def main() -> None:
        async def fresh_url() -> str:
            return url_for(hub.port, "ours")

        async with ours_asyncio.WebPubSubClient(fresh_url) as ours:
            inbox = ours.messages(timeout=WAIT)
            await ours.join_group("mixed")
            await asyncio.to_thread(ms.join_group, "mixed")
            await asyncio.to_thread(ms.send_to_group, "mixed", "hi", WebPubSubDataType.TEXT,
                                    no_echo=True)
            message = await inbox.__anext__()
            assert (message.value, message.from_user_id) == ("hi", "microsoft")
            await ours.send_to_group("mixed", "from ours", no_echo=True)
            await ours.send_to_group("mixed", {"n": 1}, "json", no_echo=True)
            await ours.send_to_group("mixed", b"\x01\x02", "binary", no_echo=True)
            await asyncio.to_thread(check_ms_received, ms_received)

    with ms:
        asyncio.run(asyncio.wait_for(main(), 3 * WAIT))
