"""Relayed HTTP in the threads and gevent listeners, against a stand-in relay (``fake_http_relay``).

Every test runs once per adapter. The relay runs on its own event loop thread; the test waits
for it by polling with the adapter's ``sleep``, so a gevent hub in this thread keeps running
(gevent is used un-patched here). Handlers talk to the test through the adapter's own queues
and events. Each test checks that no thread or greenlet it started is still running afterwards.
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from hyco_proto.control import AcceptCommand, RemoteEndpoint, serialize_command
from hyco_proto.drivers.http import PAUSE_ABOVE
from hyco_proto.websocket import (
    BinaryFragment,
    CloseReceived,
    ConnectionClosed,
    TextMessage,
)

from .fake_http_relay import TOKEN, WAIT, FakeRelay, Peer, ThreadedFakeRelay

ADAPTERS = ["threads", "gevent"]


def live_greenlets() -> list[Any]:
    if "gevent" not in sys.modules:
        return []
    import gevent

    return [g for g in gc.get_objects() if isinstance(g, gevent.Greenlet) and not g.dead]


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    """The adapter module; fails the test if a thread or greenlet it started survives."""
    module = importlib.import_module(f"hyco_proto.adapters.{request.param}")
    threads = set(threading.enumerate())
    greenlets = {id(g) for g in live_greenlets()}
    yield module
    rt = module.RUNTIME
    deadline = rt.monotonic() + WAIT
    while True:
        left = [t.name for t in threading.enumerate() if t not in threads and t.is_alive()]
        left += [repr(g) for g in live_greenlets() if id(g) not in greenlets]
        if not left or rt.monotonic() > deadline:
            break
        rt.sleep(0.01)
    assert not left, f"still running after the test: {left}"


@pytest.fixture
def relay(adapter: ModuleType) -> Iterator[ThreadedFakeRelay]:
    with ThreadedFakeRelay(sleep=adapter.RUNTIME.sleep) as fake:
        yield fake


class Hands:
    """The test's side of the fake relay: blocking calls, gevent-friendly waits."""

    def __init__(self, relay: ThreadedFakeRelay) -> None:
        self.relay = relay

    @property
    def fake(self) -> FakeRelay:
        return self.relay.relay

    def control(self) -> Peer:
        return self.relay.call(lambda r: r.control())

    def rendezvous(self, rid: str) -> Peer:
        return self.relay.call(lambda r: r.rendezvous(rid))

    def text(self, peer: Peer, text: str) -> None:
        self.relay.call(lambda r: peer.send_text(text))

    def binary(self, peer: Peer, data: bytes) -> None:
        self.relay.call(lambda r: peer.send_binary(data))

    def part(self, peer: Peer, data: bytes, fin: bool) -> None:
        self.relay.call(lambda r: peer.send_part(data, fin))

    def close(self, peer: Peer, code: int) -> None:
        self.relay.call(lambda r: peer.close(code))

    def recv(self, peer: Peer) -> object:
        return self.relay.call(lambda r: peer.recv())

    def until_closed(self, peer: Peer) -> list[object]:
        return self.relay.call(lambda r: peer.recv_until_closed())

    def pointer(self, control: Peer, rid: str) -> Peer:
        self.text(control, self.fake.pointer_text(rid))
        return self.rendezvous(rid)


def head(event: object) -> dict[str, Any]:
    assert isinstance(event, TextMessage), event
    doc = json.loads(event.data)
    assert list(doc) == ["response"]
    return doc["response"]  # type: ignore[no-any-return]


def joined(events: list[object]) -> list[object]:
    """Binary fragments joined per message."""
    out: list[object] = []
    parts: list[bytes] = []
    for event in events:
        if isinstance(event, BinaryFragment):
            parts.append(event.data)
            if event.fin:
                out.append(b"".join(parts))
                parts = []
        else:
            out.append(event)
    return out


def get(adapter: ModuleType, queue: Any) -> Any:
    return queue.get(True, WAIT)


def server(adapter: ModuleType, relay: ThreadedFakeRelay, **kw: Any) -> Any:
    kw.setdefault("close_timeout", 2)
    return adapter.RelayedServer(relay.listen_uri, TOKEN, keepalive_interval=None, **kw)


def echo(request: Any) -> Any:
    body = request.body(timeout=WAIT)
    return Response(201, {"X-Path": request.path, "X-Query": request.query}, b"echo:" + body)


Response: Any = None  # set per adapter by the autouse fixture below


@pytest.fixture(autouse=True)
def _names(adapter: ModuleType) -> None:
    global Response
    Response = adapter.Response


def test_a_small_request_is_answered_back_to_back_on_the_control_channel(
        adapter: ModuleType, relay: ThreadedFakeRelay) -> None:
    hands = Hands(relay)
    with server(adapter, relay, request_handler=echo):
        control = hands.control()
        hands.text(control, hands.fake.request_text("r1", target="/myhc/orders/7?x=1"))
        hands.binary(control, b"hello")
        text, body = hands.recv(control), hands.recv(control)
        assert head(text) == {"requestId": "r1", "statusCode": 201,
                              "statusDescription": "Created", "body": True,
                              "responseHeaders": {"X-Path": "/orders/7", "X-Query": "x=1"}}
        assert body == BinaryFragment(b"echo:hello", True)
        assert hands.fake.peers == [control]


def test_a_pointer_request_body_streams_to_the_handler_and_the_answer_streams_back(
        adapter: ModuleType, relay: ThreadedFakeRelay) -> None:
    hands = Hands(relay)
    seen = adapter.RUNTIME.queue()

    def handler(request: Any) -> Any:
        for chunk in request.stream(timeout=WAIT):
            seen.put(chunk)

        def produce() -> Iterator[bytes]:
            yield b"first,"
            yield b"second"

        return Response(200, [("Content-Type", "text/csv")], produce())

    with server(adapter, relay, request_handler=handler):
        control = hands.control()
        rdv = hands.pointer(control, "p1")
        hands.text(rdv, hands.fake.request_text("p1", on_control=False))
        hands.part(rdv, b"part one,", False)
        assert get(adapter, seen) == b"part one,"  # before the rest is even sent
        hands.part(rdv, b"part two", True)
        assert get(adapter, seen) == b"part two"
        events = hands.until_closed(rdv)
        assert head(events[0])["responseHeaders"] == {"Content-Type": "text/csv"}
        assert events[1:] == [BinaryFragment(b"first,", False), BinaryFragment(b"second", False),
                              BinaryFragment(b"", True), CloseReceived(1000, ""),
                              ConnectionClosed(1000, "", None)]


def test_a_streamed_answer_to_a_control_request_goes_on_a_rendezvous(
        adapter: ModuleType, relay: ThreadedFakeRelay) -> None:
    hands = Hands(relay)

    def handler(request: Any) -> Any:
        return Response(200, body=iter([b"a" * 10, b"b" * 10]))

    with server(adapter, relay, request_handler=handler):
        control = hands.control()
        hands.text(control, hands.fake.request_text("c1", method="GET", body=False))
        rdv = hands.rendezvous("c1")
        events = hands.until_closed(rdv)
        assert head(events[0])["body"] is True
        assert events[1:4] == [BinaryFragment(b"a" * 10, False), BinaryFragment(b"b" * 10, False),
                               BinaryFragment(b"", True)]
        assert relay.call(lambda r: _empty(control))


async def _empty(peer: Peer) -> bool:
    return peer.events.empty()


def test_without_a_request_handler_the_answer_is_501(adapter: ModuleType,
                                                     relay: ThreadedFakeRelay) -> None:
    hands = Hands(relay)
    with server(adapter, relay):
        control = hands.control()
        hands.text(control, hands.fake.request_text("r1", body=False))
        text, body = hands.recv(control), hands.recv(control)
        assert head(text)["statusCode"] == 501
        assert isinstance(body, BinaryFragment)
        assert b"serves WebSocket connections only" in body.data


def test_a_failing_handler_answers_500_and_is_logged(adapter: ModuleType,
                                                     relay: ThreadedFakeRelay,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    hands = Hands(relay)

    def handler(request: Any) -> Any:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, f"hyco_proto.adapters.{adapter.RUNTIME.name}"), \
            server(adapter, relay, request_handler=handler):
        control = hands.control()
        hands.text(control, hands.fake.request_text("r1", body=False))
        assert head(hands.recv(control))["statusCode"] == 500
    assert any("request handler failed" in r.getMessage() and r.exc_info
               and str(r.exc_info[1]) == "boom" for r in caplog.records)


def test_a_stream_failing_after_the_head_aborts_the_rendezvous(
        adapter: ModuleType, relay: ThreadedFakeRelay) -> None:
    hands = Hands(relay)

    def handler(request: Any) -> Any:
        def produce() -> Iterator[bytes]:
            yield b"partial"
            raise RuntimeError("broken stream")

        return Response(body=produce())

    with server(adapter, relay, request_handler=handler):
        control = hands.control()
        rdv = hands.pointer(control, "p1")
        hands.text(rdv, hands.fake.request_text("p1", on_control=False, body=False))
        events = hands.until_closed(rdv)
        assert head(events[0])["statusCode"] == 200
        assert events[1] == BinaryFragment(b"partial", False)
        assert isinstance(events[-1], ConnectionClosed) and events[-1].code == 1006


def test_the_relay_closing_the_rendezvous_cancels_the_request(
        adapter: ModuleType, relay: ThreadedFakeRelay) -> None:
    hands = Hands(relay)
    rt = adapter.RUNTIME
    reading, outcome = rt.event(), rt.queue()

    def handler(request: Any) -> Any:
        reading.set()
        try:
            request.body(timeout=WAIT)
        except adapter.RequestCancelled as exc:
            outcome.put(f"body: {exc}")
        try:
            return Response(body=b"too late")
        finally:
            outcome.put(f"cancelled={request.cancelled}")

    with server(adapter, relay, request_handler=handler) as listener:
        control = hands.control()
        rdv = hands.pointer(control, "p1")
        hands.text(rdv, hands.fake.request_text("p1", on_control=False))
        hands.part(rdv, b"half", False)
        assert reading.wait(WAIT)
        hands.close(rdv, 1001)
        message = get(adapter, outcome)
        assert message.startswith("body: request p1 cancelled") and "1001" in message
        assert get(adapter, outcome) == "cancelled=True"
        deadline = rt.monotonic() + WAIT
        while listener._requests and rt.monotonic() < deadline:
            rt.sleep(0.01)
        assert not listener._requests


def test_response_writes_raise_once_the_sender_went_away(
        adapter: ModuleType, relay: ThreadedFakeRelay) -> None:
    hands = Hands(relay)
    rt = adapter.RUNTIME
    first_sent, dropped, outcome = rt.event(), rt.event(), rt.queue()

    def handler(request: Any) -> Any:
        def produce() -> Iterator[bytes]:
            try:
                yield b"one"
                first_sent.set()
                dropped.wait(WAIT)
                while True:
                    yield b"more"
            finally:
                outcome.put("closed")

        return Response(body=produce())

    with server(adapter, relay, request_handler=handler):
        control = hands.control()
        rdv = hands.pointer(control, "p1")
        hands.text(rdv, hands.fake.request_text("p1", on_control=False, body=False))
        assert first_sent.wait(WAIT)
        relay.call(lambda r: _drop(rdv))
        deadline = rt.monotonic() + WAIT
        while rt.monotonic() < deadline:
            rt.sleep(0.01)
            if relay.call(lambda r: _closed(rdv)):
                break
        rt.sleep(0.1)
        dropped.set()
        assert get(adapter, outcome) == "closed"  # the body's generator was closed


async def _drop(peer: Peer) -> None:
    peer.drop()


async def _closed(peer: Peer) -> bool:
    return peer.closed.is_set()


def test_a_slow_handler_pauses_reading_the_upload(adapter: ModuleType,
                                                  relay: ThreadedFakeRelay) -> None:
    hands = Hands(relay)
    rt = adapter.RUNTIME
    go, got = rt.event(), rt.queue()

    def handler(request: Any) -> Any:
        go.wait(2 * WAIT)
        size = len(request.body(timeout=WAIT))
        got.put(size)
        return Response(body=str(size))

    piece, count = 256 * 1024, 16  # 4 MiB
    with server(adapter, relay, request_handler=handler) as listener:
        control = hands.control()
        rdv = hands.pointer(control, "p1")
        hands.text(rdv, hands.fake.request_text("p1", on_control=False))

        async def upload(_: FakeRelay) -> None:
            for n in range(count):
                await rdv.send_part(b"u" * piece, n == count - 1)

        sending = relay.submit(upload)
        deadline = rt.monotonic() + WAIT
        paused: list[Any] = []
        while not paused and rt.monotonic() < deadline:
            rt.sleep(0.01)
            paused = [t for t in list(listener._transports.values()) if not t.resume.is_set()]
        assert paused, "the listener never paused reading the upload"
        rt.sleep(0.05)
        request = listener._requests["p1"]
        queued = sum(len(c) for c in request._buffer._chunks)
        assert PAUSE_ABOVE < queued <= PAUSE_ABOVE + 64 * 1024 + 64  # one read beyond at most
        go.set()
        assert get(adapter, got) == piece * count
        relay.wait(sending)
        events = joined(hands.until_closed(rdv))
        assert events[1] == str(piece * count).encode()


def test_a_slow_handler_does_not_hold_up_the_others(adapter: ModuleType,
                                                    relay: ThreadedFakeRelay) -> None:
    hands = Hands(relay)
    release = adapter.RUNTIME.event()

    def handler(request: Any) -> Any:
        if request.path == "/slow":
            release.wait(2 * WAIT)
        return Response(body=request.path)

    with server(adapter, relay, request_handler=handler):
        control = hands.control()
        hands.text(control, hands.fake.request_text("s", body=False, target="/myhc/slow"))
        hands.text(control, hands.fake.request_text("f", body=False, target="/myhc/fast"))
        text, body = hands.recv(control), hands.recv(control)
        assert head(text)["requestId"] == "f" and body == BinaryFragment(b"/fast", True)
        release.set()
        text, body = hands.recv(control), hands.recv(control)
        assert head(text)["requestId"] == "s" and body == BinaryFragment(b"/slow", True)


def test_one_server_serves_websockets_and_http_together(adapter: ModuleType,
                                                        relay: ThreadedFakeRelay) -> None:
    hands = Hands(relay)
    paths = adapter.RUNTIME.queue()

    def on_connection(ws: Any) -> None:
        paths.put(ws.path)
        ws.send("hello")

    listener = adapter.create_relayed_server(
        {"server": relay.listen_uri, "token": TOKEN, "keepalive_interval": None,
         "close_timeout": 2}, on_connection, request_handler=echo)
    try:
        listener.start()
        control = hands.control()
        address = (f"ws://127.0.0.1:{hands.fake.port}/$hc/myhc/chat?sb-hc-action=accept"
                   "&sb-hc-id=w1")
        hands.text(control, serialize_command(AcceptCommand(
            address, "w1", {"Sec-WebSocket-Key": "k==", "Sec-WebSocket-Version": "13"},
            RemoteEndpoint("10.0.0.9", 1))))
        hands.text(control, hands.fake.request_text("h1", body=False))
        text, body = hands.recv(control), hands.recv(control)
        assert head(text)["requestId"] == "h1" and body == BinaryFragment(b"echo:", True)
        ws_peer = hands.rendezvous("w1")
        assert hands.recv(ws_peer) == TextMessage("hello")
        assert get(adapter, paths) == "/myhc/chat"
    finally:
        listener.close()


def test_closing_the_server_cancels_requests_under_way(adapter: ModuleType,
                                                       relay: ThreadedFakeRelay) -> None:
    hands = Hands(relay)
    rt = adapter.RUNTIME
    started, outcome = rt.event(), rt.queue()

    def handler(request: Any) -> Any:
        started.set()
        try:
            request.body(timeout=2 * WAIT)
        except adapter.RequestCancelled:
            outcome.put("cancelled")
            raise
        return Response()

    listener = server(adapter, relay, request_handler=handler)
    listener.start()
    control = hands.control()
    hands.text(control, hands.fake.request_text("r1"))  # its body never comes
    assert started.wait(WAIT)
    listener.close()
    assert get(adapter, outcome) == "cancelled"
