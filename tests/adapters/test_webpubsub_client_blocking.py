"""The blocking ``WebPubSubClient`` (threads and gevent) against our hub.

The same scenarios as the asyncio tests: connect, groups, the three data types, ``no_echo``,
events, Forbidden, server messages, a URL function, recovery under a cut TCP connection, a new
connection after 1008 with groups rejoined, ``stop()`` and the timeouts; also a callback that
calls the client. gevent runs un-patched in this thread's hub (skipped when not installed).
Each test checks that no thread or greenlet it started survives it.
"""

from __future__ import annotations

import importlib
import socket
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

from hyco_proto.adapters.asyncio import RelayServiceThread
from hyco_proto.webpubsub import JSON_SUBPROTOCOL, ConnectedMessage, serialize
from hyco_proto.webpubsub.client import Connected, Disconnected, ServerMessage

from .test_blocking_adapters import live_greenlets
from .webpubsub_util import (
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

WAIT = 10.0
ADAPTERS = ["threads", pytest.param("gevent", marks=pytest.mark.skipif(
    importlib.util.find_spec("gevent") is None, reason="gevent is not installed"))]


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    module = importlib.import_module(f"hyco_proto.adapters.{request.param}")
    threads = set(threading.enumerate())
    greenlets = {id(g) for g in live_greenlets()}
    yield module
    left = [t.name for t in threading.enumerate() if t not in threads and t.is_alive()]
    left += [repr(g) for g in live_greenlets() if id(g) not in greenlets]
    assert not left, f"still running after the test: {left}"


@pytest.fixture(scope="module")
def hub() -> Iterator[RelayServiceThread]:
    with hub_server() as thread:
        yield thread


def until(adapter: ModuleType, condition: Callable[[], bool], timeout: float = WAIT) -> None:
    rt = adapter.RUNTIME
    deadline = rt.monotonic() + timeout
    while not condition():
        assert rt.monotonic() < deadline, "condition not met in time"
        rt.sleep(0.01)


def record(client: Any) -> dict[str, list[Any]]:
    seen: dict[str, list[Any]] = {}
    for name in ("connected", "disconnected", "stopped", "group-message", "server-message",
                 "rejoin-group-failed"):
        seen[name] = []
        client.on(name, seen[name].append)
    return seen


def test_connects_joins_and_exchanges_text_json_binary(adapter: ModuleType,
                                                       hub: RelayServiceThread) -> None:
    alice = adapter.WebPubSubClient(client_url(hub.port, "alice"))
    bob = adapter.WebPubSubClient(client_url(hub.port, "bob"))
    seen = record(alice)
    replies: list[Any] = []
    # a callback may call the client: it runs in the dispatcher, not the runner
    bob.on("group-message", lambda m: replies.append(bob.send_event("seen", m.value, "json"
                                                                    if m.data_type == "json"
                                                                    else "text")))
    with alice, bob:
        assert alice.connection_id and alice.user_id == "alice"
        assert seen["connected"] == [Connected(alice.connection_id, "alice")]
        inbox, own = bob.messages(timeout=WAIT), alice.messages(timeout=WAIT)
        bob.join_group("room")
        ack = alice.join_group("room")
        assert ack.ok and alice.groups == ("room",)
        alice.send_to_group("room", "hello")
        alice.send_to_group("room", {"n": [1, 2]}, "json", no_echo=True)
        alice.send_to_group("room", b"\x00\xff", "binary", ack=False)
        got = [next(inbox) for _ in range(3)]
        assert [(m.group, m.data_type, m.value, m.from_user_id) for m in got] == [
            ("room", "text", "hello", "alice"), ("room", "json", {"n": [1, 2]}, "alice"),
            ("room", "binary", b"\x00\xff", "alice")]
        assert [m.sequence_id for m in got] == [1, 2, 3]
        mine = [next(own) for _ in range(2)]  # the no_echo one is missing
        assert [m.value for m in mine] == ["hello", b"\x00\xff"]
        until(adapter, lambda: len(seen["group-message"]) == 2 and len(replies) == 2)
        assert all(r.ok for r in replies)
        alice.leave_group("room")
        assert alice.groups == ()


def test_server_message_and_forbidden(adapter: ModuleType, hub: RelayServiceThread) -> None:
    with adapter.WebPubSubClient(client_url(hub.port, "mallory", roles=())) as mallory:
        seen = record(mallory)
        inbox = mallory.messages(timeout=WAIT)
        service_send(hub, mallory.connection_id, "from the server")
        message = next(inbox)
        assert isinstance(message, ServerMessage) and message.value == "from the server"
        with pytest.raises(adapter.SendMessageError) as info:
            mallory.join_group("room")
        assert info.value.error_name == "Forbidden"
        assert f"joinGroup 'room' with ackId {info.value.ack_id} failed: Forbidden" in str(
            info.value)
        assert mallory.send_event("e", "x").ok  # events need no role
        until(adapter, lambda: len(seen["server-message"]) == 1)


def test_url_function_called_again_after_1008_and_groups_rejoined(
        adapter: ModuleType, hub: RelayServiceThread) -> None:
    calls: list[str] = []

    def fresh_url() -> str:
        calls.append("called")
        return client_url(hub.port, "dave")

    dave = adapter.WebPubSubClient(fresh_url)
    bob = adapter.WebPubSubClient(client_url(hub.port, "bob"))
    seen = record(dave)
    with dave, bob:
        first = dave.connection_id
        assert first is not None and calls == ["called"]
        dave.join_group("room")
        service_close(hub, first, 1008, "policy")
        until(adapter, lambda: len(seen["connected"]) == 2)
        second = dave.connection_id
        assert second not in (None, first) and calls == ["called", "called"]
        assert [type(e) for e in seen["disconnected"]] == [Disconnected]
        until(adapter, lambda: hub_groups(hub, second or "") == {"room"})
        inbox = dave.messages(timeout=WAIT)
        bob.send_to_group("room", "after")
        assert next(inbox).value == "after"


def test_recovery_after_a_cut_loses_and_repeats_nothing(adapter: ModuleType,
                                                        hub: RelayServiceThread) -> None:
    with CutProxy(hub.port) as proxy:
        alice = adapter.WebPubSubClient(client_url(proxy.port, "alice"))
        bob = adapter.WebPubSubClient(client_url(hub.port, "bob"))
        seen = record(alice)
        with alice, bob:
            first = alice.connection_id
            inbox = alice.messages(timeout=WAIT)
            alice.join_group("cut")
            for n in range(5):
                bob.send_to_group("cut", n, "json")
            received = [next(inbox).value for _ in range(5)]
            proxy.cut()
            for n in range(5, 10):
                bob.send_to_group("cut", n, "json")
            received += [next(inbox).value for _ in range(5)]
            assert received == list(range(10))
            bob.send_to_group("cut", "end")  # a replay would come before it
            assert next(inbox).value == "end"
            assert proxy.accepted == 2
            assert alice.connection_id == first and len(seen["connected"]) == 1
            assert seen["disconnected"] == []
            alice.send_to_group("cut", "still here")
            assert next(inbox).value == "still here"


def test_stop_ends_cleanly(adapter: ModuleType, hub: RelayServiceThread) -> None:
    client = adapter.WebPubSubClient(client_url(hub.port, "erin"))
    seen = record(client)
    client.start()
    connection_id = client.connection_id
    inbox = client.messages()
    client.stop()
    assert [type(e).__name__ for e in seen["stopped"]] == ["Stopped"]
    assert [e.reason for e in seen["disconnected"]] == ["client stopped"]
    assert list(inbox) == []
    with pytest.raises(RuntimeError, match="stopped"):
        client.join_group("room")
    until(adapter, lambda: connection_id not in hub_connections(hub))
    client.stop()  # idempotent


def test_start_errors_name_the_address(adapter: ModuleType) -> None:
    port = free_port()
    with pytest.raises(ConnectionRefusedError, match=f"127.0.0.1:{port}"):
        adapter.WebPubSubClient(client_url(port, "x"), open_timeout=2).start()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        client = adapter.WebPubSubClient(client_url(port, "x"), open_timeout=0.5,
                                         close_timeout=0.5)
        # the open's own timeout or start()'s, whichever reports first: both name it
        with pytest.raises(TimeoutError, match=f"127.0.0.1:{port}"):
            client.start()


def test_ack_timeout(adapter: ModuleType) -> None:
    def silent_service(ws: Any) -> None:  # connected, then never acks
        ws.send(serialize(ConnectedMessage("conn-1", "u")))
        for _ in ws:
            pass

    with adapter.serve(silent_service, "127.0.0.1", 0,
                       subprotocols=[JSON_SUBPROTOCOL]) as server:
        url = client_url(server.port, "u")
        with adapter.WebPubSubClient(url, protocol=JSON_SUBPROTOCOL, ack_timeout=0.3,
                                     close_timeout=2) as client:
            assert client.connection_id == "conn-1"
            with pytest.raises(adapter.AckTimeoutError, match="ackId 1 failed: Timeout"):
                client.join_group("g")


def test_service_disconnect_and_no_auto_reconnect(adapter: ModuleType,
                                                  hub: RelayServiceThread) -> None:
    client = adapter.WebPubSubClient(client_url(hub.port, "gina"))
    seen = record(client)
    with client:
        first = client.connection_id
        service_disconnect(hub, first, "go away")  # recovery refused: a new connection
        until(adapter, lambda: len(seen["connected"]) == 2)
        assert [e.reason for e in seen["disconnected"]] == ["go away"]
        assert client.connection_id != first
    once = adapter.WebPubSubClient(client_url(hub.port, "hank"), auto_reconnect=False)
    seen = record(once)
    with once:
        inbox = once.messages(timeout=WAIT)
        service_close(hub, once.connection_id, 1008, "policy")
        assert list(inbox) == []  # ends: the client stopped by itself
        until(adapter, lambda: len(seen["stopped"]) == 1)  # callbacks run in their worker
        assert len(seen["disconnected"]) == 1


def test_a_failing_url_function_fails_start(adapter: ModuleType) -> None:
    def broken() -> str:
        raise LookupError("no token for you")

    with pytest.raises(LookupError, match="no token for you"):
        adapter.WebPubSubClient(broken).start()


def test_keepalive_pings_and_a_silent_service_means_a_new_connection(
        adapter: ModuleType) -> None:
    pings: list[str] = []
    sockets: list[Any] = []

    def mute_service(ws: Any) -> None:  # connected, then never a word
        sockets.append(ws)
        ws.send(serialize(ConnectedMessage(f"conn-{len(sockets)}", "u")))
        for message in ws:
            pings.append(str(message))

    with adapter.serve(mute_service, "127.0.0.1", 0,
                       subprotocols=[JSON_SUBPROTOCOL]) as server:
        client = adapter.WebPubSubClient(client_url(server.port, "u"),
                                         protocol=JSON_SUBPROTOCOL, keepalive_interval=0.1,
                                         keepalive_timeout=0.5, reconnect_delays=[0.0],
                                         close_timeout=2)
        seen = record(client)
        with client:
            until(adapter, lambda: len(seen["connected"]) == 2)
            assert [e.reason for e in seen["disconnected"]] == ["keepalive timeout"]
            assert client.connection_id == "conn-2"
            assert '{"type":"ping"}' in pings
        until(adapter, lambda: sockets[0].close_code == 1001)


SENT = 40


def test_unread_messages_are_bounded_by_max_queue(adapter: ModuleType,
                                                  hub: RelayServiceThread) -> None:
    reader = adapter.WebPubSubClient(client_url(hub.port, "ivy"))
    writer = adapter.WebPubSubClient(client_url(hub.port, "jack"))
    with reader, writer:
        reader.join_group("flow")
        reader.messages(max_queue=1)  # dropped at once: it holds nothing back
        slow = reader.messages(timeout=WAIT, max_queue=2)
        for n in range(SENT):
            writer.send_to_group("flow", n, "json")
        until(adapter, lambda: slow._queue.qsize() >= 2)
        adapter.RUNTIME.sleep(0.2)
        # The client stopped reading: max_queue, plus at most what one socket read held.
        assert 2 <= slow._queue.qsize() < SENT
        assert [next(slow).value for _ in range(SENT)] == list(range(SENT))


def test_a_refused_rejoin_is_reported(adapter: ModuleType, hub: RelayServiceThread) -> None:
    grants = [ROLES, ()]  # the second connection's token has no role: its rejoin is refused

    def fresh_url() -> str:
        return client_url(hub.port, "kim", roles=grants.pop(0))

    client = adapter.WebPubSubClient(fresh_url)
    seen = record(client)
    with client:
        client.join_group("room")
        service_close(hub, client.connection_id, 1008, "policy")
        until(adapter, lambda: len(seen["rejoin-group-failed"]) == 1)
        failed = seen["rejoin-group-failed"][0]
        assert (failed.group, failed.error.name) == ("room", "Forbidden")
        assert client.groups == () and len(seen["connected"]) == 2


def test_a_request_whose_ack_was_lost_is_sent_again_and_runs_once(
        adapter: ModuleType, hub: RelayServiceThread) -> None:
    with CutProxy(hub.port) as proxy:
        alice = adapter.WebPubSubClient(client_url(proxy.port, "alice"))
        bob = adapter.WebPubSubClient(client_url(hub.port, "bob"))
        results: list[Any] = []
        with alice, bob:
            inbox = bob.messages(timeout=WAIT)
            bob.join_group("once")
            proxy.holding = True  # the service's ack will not reach alice
            worker = adapter.RUNTIME.spawn(
                lambda: results.append(alice.send_to_group("once", "only once")), "send")
            assert next(inbox).value == "only once"  # it ran
            proxy.cut()
            worker.join(WAIT)  # sent again after the recovery, with the same ackId
            assert len(results) == 1 and results[0].ok and results[0].duplicate
            alice.send_to_group("once", "next")
            assert next(inbox).value == "next"  # nothing in between
