"""The asyncio ``WebPubSubClient`` against our hub (``RelayServiceThread(routes="webpubsub")``).

Connect, groups, the three data types, ``no_echo``, events, Forbidden, server messages, a URL
function, recovery under a cut TCP connection (through :class:`CutProxy`), a new connection
after 1008 with groups rejoined, ``stop()``, and the timeouts. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hyco_proto.adapters.asyncio import (
    AckTimeoutError,
    RelayServiceThread,
    SendMessageError,
    WebPubSubClient,
    WebSocket,
    serve,
)
from hyco_proto.errors import AuthorizationError
from hyco_proto.webpubsub import JSON_SUBPROTOCOL, ConnectedMessage, serialize
from hyco_proto.webpubsub.client import Connected, Disconnected, GroupMessage, ServerMessage
from hyco_proto.webpubsub.tokens import create_client_access

from .asyncio_util import WAIT, async_test, bounded
from .webpubsub_util import (
    HUB,
    ROLES,
    CutProxy,
    client_url,
    free_port,
    hub_connections,
    hub_groups,
    hub_server,
    service_close,
    service_disconnect,
    service_send,
)


@pytest.fixture(scope="module")
def hub() -> Iterator[RelayServiceThread]:
    with hub_server() as thread:
        yield thread


async def until(condition: Any, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def record(client: WebPubSubClient) -> dict[str, list[Any]]:
    seen: dict[str, list[Any]] = {}
    for name in ("connected", "disconnected", "stopped", "group-message", "server-message",
                 "rejoin-group-failed"):
        seen[name] = []
        client.on(name, seen[name].append)
    return seen


@async_test
async def test_connects_joins_and_exchanges_text_json_binary(hub: RelayServiceThread) -> None:
    alice = WebPubSubClient(client_url(hub.port, "alice"))
    bob = WebPubSubClient(client_url(hub.port, "bob"))
    seen = record(alice)
    async with alice, bob:
        assert alice.connection_id and alice.user_id == "alice"
        assert seen["connected"] == [Connected(alice.connection_id, "alice")]
        inbox, own = bob.messages(timeout=WAIT), alice.messages(timeout=WAIT)
        await bob.join_group("room")
        ack = await alice.join_group("room")
        assert ack.ok and alice.groups == ("room",)
        await alice.send_to_group("room", "hello")
        await alice.send_to_group("room", {"n": [1, 2]}, "json", no_echo=True)
        await alice.send_to_group("room", b"\x00\xff", "binary")
        got = [await inbox.__anext__() for _ in range(3)]
        assert [(m.group, m.data_type, m.value, m.from_user_id) for m in got] == [
            ("room", "text", "hello", "alice"), ("room", "json", {"n": [1, 2]}, "alice"),
            ("room", "binary", b"\x00\xff", "alice")]
        assert [m.sequence_id for m in got] == [1, 2, 3]
        # alice's own copies: the no_echo one is missing
        mine = [await own.__anext__() for _ in range(2)]
        assert [m.value for m in mine] == ["hello", b"\x00\xff"]
        await until(lambda: len(seen["group-message"]) == 2)
        await alice.leave_group("room")
        assert alice.groups == ()


@async_test
async def test_event_acked_server_message_and_fire_and_forget(hub: RelayServiceThread) -> None:
    async with WebPubSubClient(client_url(hub.port, "carol")) as carol:
        seen = record(carol)
        result = await carol.send_event("hello", {"x": 1}, "json")
        assert result is not None and result.ok
        assert await carol.send_event("quiet", "t", ack=False) is None
        assert carol.connection_id is not None
        inbox = carol.messages(timeout=WAIT)
        service_send(hub, carol.connection_id, "from the server")
        message = await inbox.__anext__()
        assert isinstance(message, ServerMessage) and message.value == "from the server"
        await until(lambda: len(seen["server-message"]) == 1)


@async_test
async def test_forbidden_without_the_role_raises_a_clear_error(hub: RelayServiceThread) -> None:
    async with WebPubSubClient(client_url(hub.port, "mallory", roles=())) as mallory:
        with pytest.raises(SendMessageError) as info:
            await mallory.join_group("room")
        assert info.value.error_name == "Forbidden" and info.value.ack_id == 1
        assert "joinGroup 'room' with ackId 1 failed: Forbidden" in str(info.value)
        assert str(info.value).endswith(f"(ws://127.0.0.1:{hub.port}/client/hubs/{HUB})")
        with pytest.raises(SendMessageError, match="sendToGroup 'room' with ackId 2"):
            await mallory.send_to_group("room", "x")
        assert mallory.groups == ()


@async_test
async def test_url_function_is_called_for_each_new_connection_and_groups_rejoined(
        hub: RelayServiceThread) -> None:
    calls: list[str] = []

    async def fresh_url() -> str:
        calls.append("called")
        return client_url(hub.port, "dave")

    dave = WebPubSubClient(fresh_url)
    bob = WebPubSubClient(client_url(hub.port, "bob"))
    seen = record(dave)
    async with dave, bob:
        first = dave.connection_id
        assert first is not None and calls == ["called"]
        await dave.join_group("room")
        service_close(hub, first, 1008, "policy")
        await until(lambda: len(seen["connected"]) == 2)
        second = dave.connection_id
        assert second not in (None, first) and calls == ["called", "called"]
        assert [type(e) for e in seen["disconnected"]] == [Disconnected]
        await until(lambda: hub_groups(hub, second or "") == {"room"})  # rejoined
        inbox = dave.messages(timeout=WAIT)
        await bob.send_to_group("room", "after")
        assert (await inbox.__anext__()).value == "after"
        assert seen["rejoin-group-failed"] == []


@async_test
async def test_recovery_after_a_cut_loses_and_repeats_nothing(hub: RelayServiceThread) -> None:
    with CutProxy(hub.port) as proxy:
        alice = WebPubSubClient(client_url(proxy.port, "alice"))
        bob = WebPubSubClient(client_url(hub.port, "bob"))
        seen = record(alice)
        async with alice, bob:
            first = alice.connection_id
            inbox = alice.messages(timeout=WAIT)
            await alice.join_group("cut")
            for n in range(5):
                await bob.send_to_group("cut", n, "json")
            received = [(await inbox.__anext__()).value for _ in range(5)]
            proxy.cut()  # no sequenceAck yet (1 s batching): the hub replays 0..4 as well
            for n in range(5, 10):
                await bob.send_to_group("cut", n, "json")
            received += [(await inbox.__anext__()).value for _ in range(5)]
            assert received == list(range(10))
            await bob.send_to_group("cut", "end")  # a replay would come before it
            assert (await inbox.__anext__()).value == "end"
            assert proxy.accepted == 2  # the recovery's new TCP connection
            assert alice.connection_id == first and len(seen["connected"]) == 1
            assert seen["disconnected"] == []
            await alice.send_to_group("cut", "still here")  # the recovered socket works
            assert (await inbox.__anext__()).value == "still here"


@async_test
async def test_stop_ends_cleanly(hub: RelayServiceThread) -> None:
    client = WebPubSubClient(client_url(hub.port, "erin"))
    seen = record(client)
    await client.start()
    connection_id = client.connection_id
    inbox = client.messages()
    await client.stop()
    assert [type(e).__name__ for e in seen["stopped"]] == ["Stopped"]
    assert [e.reason for e in seen["disconnected"]] == ["client stopped"]
    assert [m async for m in inbox] == []
    with pytest.raises(RuntimeError, match="stopped"):
        await client.join_group("room")
    await until(lambda: connection_id not in hub_connections(hub))
    await client.stop()  # idempotent


@async_test
async def test_start_errors_name_the_address() -> None:
    port = free_port()
    with pytest.raises(ConnectionRefusedError, match=f"127.0.0.1:{port}"):
        await WebPubSubClient(client_url(port, "x"), open_timeout=2).start()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        client = WebPubSubClient(client_url(port, "x"), open_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=f"127.0.0.1:{port}/client/hubs/{HUB}"):
            await client.start()
        assert time.monotonic() - started < WAIT


@async_test
async def test_bad_token_raises_authorization_error(hub: RelayServiceThread) -> None:
    wrong_key = "NOT-THE-KEY-" * 4
    url = create_client_access(f"http://127.0.0.1:{hub.port}", HUB, wrong_key,
                               now=time.time()).url
    with pytest.raises(AuthorizationError, match=f"127.0.0.1:{hub.port}"):
        await WebPubSubClient(url).start()


@async_test
async def test_ack_timeout_and_non_reliable_protocol() -> None:
    async def silent_service(ws: WebSocket) -> None:  # connected, then never acks
        await ws.send(serialize(ConnectedMessage("conn-1", "u")))
        async for _ in ws:
            pass

    async with serve(silent_service, "127.0.0.1", 0, subprotocols=[JSON_SUBPROTOCOL]) as server:
        url = client_url(server.port, "u")
        async with WebPubSubClient(url, protocol=JSON_SUBPROTOCOL, ack_timeout=0.3) as client:
            assert client.connection_id == "conn-1"
            with pytest.raises(AckTimeoutError, match="ackId 1 failed: Timeout") as info:
                await bounded(client.join_group("g"))
            assert isinstance(info.value, TimeoutError)


@async_test
async def test_group_message_objects(hub: RelayServiceThread) -> None:
    async with WebPubSubClient(client_url(hub.port, "frank")) as frank:
        inbox = frank.messages(timeout=WAIT)
        await frank.join_group("solo")
        await frank.send_to_group("solo", "x")
        message = await inbox.__anext__()
        assert isinstance(message, GroupMessage) and message.group == "solo"
        inbox.close()


@async_test
async def test_service_disconnect_ends_the_logical_connection(hub: RelayServiceThread) -> None:
    client = WebPubSubClient(client_url(hub.port, "gina"))
    seen = record(client)
    async with client:
        first = client.connection_id
        assert first is not None
        service_disconnect(hub, first, "go away")
        # the recovery is refused (1008): a new connection, and the service's reason
        await until(lambda: len(seen["connected"]) == 2)
        assert [e.reason for e in seen["disconnected"]] == ["go away"]
        assert client.connection_id != first


@async_test
async def test_without_auto_reconnect_a_lost_connection_stops_the_client(
        hub: RelayServiceThread) -> None:
    client = WebPubSubClient(client_url(hub.port, "hank"), auto_reconnect=False)
    seen = record(client)
    async with client:
        inbox = client.messages(timeout=WAIT)
        assert client.connection_id is not None
        service_close(hub, client.connection_id, 1008, "policy")
        assert [m async for m in inbox] == []  # ends: the client stopped
        await until(lambda: len(seen["stopped"]) == 1)  # callbacks run in their task
        assert len(seen["disconnected"]) == 1


@async_test
async def test_a_failing_url_function_fails_start() -> None:
    def broken() -> str:
        raise LookupError("no token for you")

    with pytest.raises(LookupError, match="no token for you"):
        await WebPubSubClient(broken).start()
    with pytest.raises(TypeError, match="returned int"):
        await WebPubSubClient(lambda: 42).start()  # type: ignore[arg-type,return-value]


@async_test
async def test_keepalive_pings_and_a_silent_service_means_a_new_connection() -> None:
    pings: list[str] = []
    sockets: list[WebSocket] = []

    async def mute_service(ws: WebSocket) -> None:  # connected, then never a word
        sockets.append(ws)
        await ws.send(serialize(ConnectedMessage(f"conn-{len(sockets)}", "u")))
        async for message in ws:
            pings.append(str(message))

    async with serve(mute_service, "127.0.0.1", 0, subprotocols=[JSON_SUBPROTOCOL]) as server:
        client = WebPubSubClient(client_url(server.port, "u"), protocol=JSON_SUBPROTOCOL,
                                 keepalive_interval=0.1, keepalive_timeout=0.5,
                                 reconnect_delays=[0.0])
        seen = record(client)
        async with client:
            await until(lambda: len(seen["connected"]) == 2)
            assert [e.reason for e in seen["disconnected"]] == ["keepalive timeout"]
            assert client.connection_id == "conn-2"
            assert sockets[0].close_code == 1001
            assert '{"type":"ping"}' in pings


@async_test
async def test_unread_messages_are_bounded_by_max_queue(hub: RelayServiceThread) -> None:
    reader = WebPubSubClient(client_url(hub.port, "ivy"))
    writer = WebPubSubClient(client_url(hub.port, "jack"))
    async with reader, writer:
        await reader.join_group("flow")
        reader.messages(max_queue=1)  # dropped at once: it holds nothing back
        slow = reader.messages(timeout=WAIT, max_queue=2)
        for n in range(40):
            await writer.send_to_group("flow", n, "json")
        await until(lambda: slow._queue.qsize() >= 2)
        await asyncio.sleep(0.2)
        # The client stopped reading: max_queue, plus at most what one socket read held.
        assert 2 <= slow._queue.qsize() < 40
        assert [(await slow.__anext__()).value for _ in range(40)] == list(range(40))


@async_test
async def test_a_refused_rejoin_is_reported(hub: RelayServiceThread) -> None:
    grants = [ROLES, ()]  # the second connection's token has no role: its rejoin is refused

    def fresh_url() -> str:
        return client_url(hub.port, "kim", roles=grants.pop(0))

    client = WebPubSubClient(fresh_url)
    seen = record(client)
    async with client:
        await client.join_group("room")
        assert client.connection_id is not None
        service_close(hub, client.connection_id, 1008, "policy")
        await until(lambda: len(seen["rejoin-group-failed"]) == 1)
        failed = seen["rejoin-group-failed"][0]
        assert (failed.group, failed.error.name) == ("room", "Forbidden")
        assert client.groups == () and len(seen["connected"]) == 2


@async_test
async def test_a_request_whose_ack_was_lost_is_sent_again_and_runs_once(
        hub: RelayServiceThread) -> None:
    with CutProxy(hub.port) as proxy:
        alice = WebPubSubClient(client_url(proxy.port, "alice"))
        bob = WebPubSubClient(client_url(hub.port, "bob"))
        async with alice, bob:
            inbox = bob.messages(timeout=WAIT)
            await bob.join_group("once")
            proxy.holding = True  # the service's ack will not reach alice
            sending = asyncio.create_task(alice.send_to_group("once", "only once"))
            assert (await inbox.__anext__()).value == "only once"  # it ran
            proxy.cut()
            result = await bounded(sending)  # sent again after the recovery, same ackId
            assert result is not None and result.ok and result.duplicate
            await alice.send_to_group("once", "next")
            assert (await inbox.__anext__()).value == "next"  # nothing in between
