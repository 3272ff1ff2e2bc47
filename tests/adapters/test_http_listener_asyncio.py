"""Relayed HTTP in the asyncio listener, against a stand-in relay (``fake_http_relay``).

The relay's side is written by hand: control messages and rendezvous frames go in, and the test
reads exactly what the listener's ``RelayedServer`` answered, and on which socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hyco_proto.adapters.asyncio import (
    RelayedRequest,
    RelayedServer,
    RelayedWebSocket,
    RequestCancelled,
    Response,
    create_relayed_server,
)
from hyco_proto.control import AcceptCommand, RemoteEndpoint, serialize_command
from hyco_proto.drivers.http import PAUSE_ABOVE
from hyco_proto.websocket import (
    BinaryFragment,
    CloseReceived,
    ConnectionClosed,
    TextMessage,
)

from .asyncio_util import WAIT, async_test, bounded
from .fake_http_relay import TOKEN, FakeRelay, Peer


def head(event: object) -> dict[str, Any]:
    assert isinstance(event, TextMessage), event
    doc = json.loads(event.data)
    assert list(doc) == ["response"]
    return doc["response"]  # type: ignore[no-any-return]


def joined(events: list[object]) -> list[object]:
    """Binary fragments joined per message (the relay's end reports a big frame as the pieces
    TCP delivered)."""
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


async def echo(request: RelayedRequest) -> Response:
    body = await request.body()
    return Response(201, {"X-Path": request.path, "X-Query": request.query,
                          "X-Method": request.method}, b"echo:" + body)


def server_for(relay: FakeRelay, **kw: Any) -> RelayedServer:
    kw.setdefault("close_timeout", 2)
    return RelayedServer(relay.listen_uri, TOKEN, keepalive_interval=None, **kw)


async def pointer(relay: FakeRelay, control: Peer, rid: str) -> Peer:
    await control.send_text(relay.pointer_text(rid))
    return await relay.rendezvous(rid)


@async_test
async def test_a_small_request_is_answered_back_to_back_on_the_control_channel() -> None:
    async with FakeRelay() as relay, server_for(relay, request_handler=echo):
        control = await relay.control()
        await control.send_text(relay.request_text("r1", target="/myhc/orders/7?x=1"))
        await control.send_binary(b"hello")
        text, body = await control.recv(), await control.recv()
        assert head(text) == {"requestId": "r1", "statusCode": 201,
                              "statusDescription": "Created", "body": True,
                              "responseHeaders": {"X-Path": "/orders/7", "X-Query": "x=1",
                                                  "X-Method": "POST"}}
        assert body == BinaryFragment(b"echo:hello", True)
        assert relay.peers == [control]  # no rendezvous was needed


@async_test
async def test_a_pointer_request_body_streams_to_the_handler_and_the_answer_streams_back() -> None:
    seen: asyncio.Queue[bytes] = asyncio.Queue()

    async def handler(request: RelayedRequest) -> Response:
        async for chunk in request.stream():
            await seen.put(chunk)

        async def produce() -> AsyncIterator[bytes]:
            yield b"first,"
            yield b"second"

        return Response(200, [("Content-Type", "text/csv")], produce())

    async with FakeRelay() as relay, server_for(relay, request_handler=handler):
        control = await relay.control()
        rdv = await pointer(relay, control, "p1")
        assert rdv.target.endswith("sb-hc-action=request&sb-hc-id=p1")
        await rdv.send_text(relay.request_text("p1", on_control=False))
        await rdv.send_part(b"part one,", False)
        # The handler has the first fragment before the second one is even sent.
        assert await bounded(seen.get()) == b"part one,"
        await rdv.send_part(b"part two", True)
        assert await bounded(seen.get()) == b"part two"
        events = await rdv.recv_until_closed()
        assert head(events[0])["responseHeaders"] == {"Content-Type": "text/csv"}
        assert events[1:] == [BinaryFragment(b"first,", False), BinaryFragment(b"second", False),
                              BinaryFragment(b"", True), CloseReceived(1000, ""),
                              ConnectionClosed(1000, "", None)]


@async_test
async def test_a_streamed_answer_to_a_control_request_goes_on_a_rendezvous() -> None:
    async def handler(request: RelayedRequest) -> Response:
        return Response(200, body=[b"a" * 10, b"b" * 10])  # a plain iterable works too

    async with FakeRelay() as relay, server_for(relay, request_handler=handler):
        control = await relay.control()
        await control.send_text(relay.request_text("c1", method="GET", body=False))
        rdv = await relay.rendezvous("c1")
        events = await rdv.recv_until_closed()
        assert head(events[0])["body"] is True
        assert events[1:4] == [BinaryFragment(b"a" * 10, False), BinaryFragment(b"b" * 10, False),
                               BinaryFragment(b"", True)]
        assert control.events.empty()  # nothing on the control channel


@async_test
async def test_a_big_whole_answer_goes_on_a_rendezvous() -> None:
    async def handler(request: RelayedRequest) -> Response:
        return Response(body=b"z" * (100 * 1024))

    async with FakeRelay() as relay, server_for(relay, request_handler=handler):
        control = await relay.control()
        await control.send_text(relay.request_text("c1", body=False))
        rdv = await relay.rendezvous("c1")
        events = joined(await rdv.recv_until_closed())
        assert head(events[0])["body"] is True
        assert events[1:] == [b"z" * (100 * 1024), CloseReceived(1000, ""),
                              ConnectionClosed(1000, "", None)]


@async_test
async def test_without_a_request_handler_the_answer_is_501() -> None:
    async with FakeRelay() as relay, server_for(relay):
        control = await relay.control()
        await control.send_text(relay.request_text("r1"))
        await control.send_binary(b"ignored")
        text, body = await control.recv(), await control.recv()
        assert (head(text)["statusCode"], head(text)["statusDescription"]) == (
            501, "Not Implemented")
        assert isinstance(body, BinaryFragment)
        assert b"serves WebSocket connections only" in body.data


@async_test
async def test_a_failing_handler_answers_500_and_is_logged(caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    async def handler(request: RelayedRequest) -> Response:
        if request.path == "/reserved":
            return Response(502)  # refused: ValueError
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, "hyco_proto.adapters.asyncio"):
        async with FakeRelay() as relay, server_for(relay, request_handler=handler):
            control = await relay.control()
            await control.send_text(relay.request_text("r1", body=False))
            assert head(await control.recv())["statusCode"] == 500
            await control.recv()  # its body
            await control.send_text(relay.request_text("r2", body=False,
                                                       target="/myhc/reserved"))
            assert head(await control.recv())["statusCode"] == 500
    messages = [r.getMessage() for r in caplog.records]
    assert any("request handler failed" in m for m in messages)
    errors = [str(r.exc_info[1]) for r in caplog.records if r.exc_info]
    assert "boom" in errors and any("reserved for the relay" in e for e in errors)


@async_test
async def test_a_stream_failing_after_the_head_aborts_the_rendezvous() -> None:
    async def handler(request: RelayedRequest) -> Response:
        async def produce() -> AsyncIterator[bytes]:
            yield b"partial"
            raise RuntimeError("broken stream")

        return Response(body=produce())

    async with FakeRelay() as relay, server_for(relay, request_handler=handler):
        control = await relay.control()
        rdv = await pointer(relay, control, "p1")
        await rdv.send_text(relay.request_text("p1", on_control=False, body=False))
        events = await rdv.recv_until_closed()
        assert head(events[0])["statusCode"] == 200
        assert events[1] == BinaryFragment(b"partial", False)
        assert isinstance(events[-1], ConnectionClosed) and events[-1].code == 1006  # dropped


@async_test
async def test_the_relay_closing_the_rendezvous_cancels_the_handler() -> None:
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    reading = asyncio.Event()

    async def handler(request: RelayedRequest) -> Response:
        try:
            reading.set()
            await request.body()
        except asyncio.CancelledError:
            outcome.set_result(f"cancelled, request.cancelled={request.cancelled}")
            raise
        outcome.set_result("not cancelled")
        return Response()

    async with FakeRelay() as relay, server_for(relay, request_handler=handler) as server:
        control = await relay.control()
        rdv = await pointer(relay, control, "p1")
        await rdv.send_text(relay.request_text("p1", on_control=False))
        await rdv.send_part(b"half", False)
        await bounded(reading.wait())
        await rdv.close(1001)
        assert await bounded(outcome) == "cancelled, request.cancelled=True"
        for _ in range(100):
            if not server._requests:
                break
            await asyncio.sleep(0.01)
        assert not server._requests


@async_test
async def test_body_reads_raise_once_the_sender_went_away() -> None:
    requests: asyncio.Queue[RelayedRequest] = asyncio.Queue()
    done = asyncio.Event()

    async def handler(request: RelayedRequest) -> Response:
        await requests.put(request)
        await done.wait()
        return Response()

    async with FakeRelay() as relay, server_for(relay, request_handler=handler):
        control = await relay.control()
        rdv = await pointer(relay, control, "p1")
        await rdv.send_text(relay.request_text("p1", on_control=False))
        request = await bounded(requests.get())
        rdv.drop()  # the relay's socket goes away
        for _ in range(200):
            if request.cancelled:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(RequestCancelled, match="cancelled"):
            await request.body()  # read from another task: it raises


@async_test
async def test_a_slow_handler_pauses_reading_the_upload() -> None:
    go = asyncio.Event()
    got: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def handler(request: RelayedRequest) -> Response:
        await go.wait()
        size = len(await request.body())
        got.set_result(size)
        return Response(body=str(size))

    piece, count = 256 * 1024, 16  # 4 MiB
    async with FakeRelay() as relay, \
            server_for(relay, request_handler=handler) as server:
        control = await relay.control()
        rdv = await pointer(relay, control, "p1")
        await rdv.send_text(relay.request_text("p1", on_control=False))

        async def upload() -> None:
            for n in range(count):
                await rdv.send_part(b"u" * piece, n == count - 1)

        sending = asyncio.create_task(upload())
        for _ in range(500):
            links = [link for key, link in server._links.items() if link.reading_paused]
            if links:
                break
            await asyncio.sleep(0.01)
        assert links, "the listener never paused reading the upload"
        await asyncio.sleep(0.05)  # paused: nothing more is read meanwhile
        queued = sum(len(c) for c in server._requests["p1"][0]._buffer._chunks)
        assert PAUSE_ABOVE < queued <= PAUSE_ABOVE + 256 * 1024 + 64  # one read beyond at most
        go.set()
        assert await bounded(got) == piece * count
        await bounded(sending)
        events = joined(await rdv.recv_until_closed())
        assert events[1] == str(piece * count).encode()


@async_test
async def test_one_server_serves_websockets_and_http_together() -> None:
    sockets: asyncio.Queue[RelayedWebSocket] = asyncio.Queue()

    async def on_connection(ws: RelayedWebSocket) -> None:
        await sockets.put(ws)
        await ws.send(f"hello {ws.path}")

    async with FakeRelay() as relay:
        server = create_relayed_server({"server": relay.listen_uri, "token": TOKEN,
                                        "keepalive_interval": None, "close_timeout": 2},
                                       on_connection, request_handler=echo)
        try:
            await bounded(server.start())
            control = await relay.control()
            address = f"ws://127.0.0.1:{relay.port}/$hc/myhc/chat?sb-hc-action=accept&sb-hc-id=w1"
            await control.send_text(serialize_command(AcceptCommand(
                address, "w1", {"Sec-WebSocket-Key": "k==", "Sec-WebSocket-Version": "13"},
                RemoteEndpoint("10.0.0.9", 1))))
            await control.send_text(relay.request_text("h1", body=False))
            text, body = await control.recv(), await control.recv()
            assert head(text)["requestId"] == "h1" and body == BinaryFragment(b"echo:", True)
            ws_peer = await relay.rendezvous("w1")
            assert isinstance(await ws_peer.recv(), TextMessage)
            ws = await bounded(sockets.get())
            assert ws.path == "/myhc/chat"
        finally:
            await server.close()


@async_test
async def test_closing_the_server_cancels_requests_under_way() -> None:
    started = asyncio.Event()
    outcome: list[str] = []

    async def handler(request: RelayedRequest) -> Response:
        started.set()
        try:
            await asyncio.sleep(3 * WAIT)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        return Response()

    async with FakeRelay() as relay:
        server = server_for(relay, request_handler=handler)
        await bounded(server.start())
        control = await relay.control()
        await control.send_text(relay.request_text("r1", body=False))
        await bounded(started.wait())
        await bounded(server.close())
        assert outcome == ["cancelled"]


@async_test
async def test_a_request_cancelled_before_its_task_ran_is_forgotten() -> None:
    calls: list[str] = []

    async def handler(request: RelayedRequest) -> Response:
        calls.append(request.id)
        return Response()

    async with FakeRelay() as relay, server_for(relay, request_handler=handler) as server:
        control = await relay.control()
        rdv = await pointer(relay, control, "p1")
        # The request and the relay's close in one read: the task is cancelled before it runs.
        rdv.connection.send_text(relay.request_text("p1", on_control=False))
        rdv.connection.send_close(1001, "")
        rdv._flush()
        await rdv.recv_until_closed()
        for _ in range(100):
            if not server._requests:
                break
            await asyncio.sleep(0.01)
        assert not server._requests
        assert calls == []
