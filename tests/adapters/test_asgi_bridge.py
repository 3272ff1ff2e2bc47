"""hyco_proto.adapters.asgi: the scope mapping, receive/send and the lifespan, first against a
fake relayed request (no relay), then what only ASGI has through the relay emulator: WebSockets
(accept with a subprotocol, close before accepting → 403), the sender leaving mid-upload
(``http.disconnect``), lifespan startup/shutdown around listening, and ``serve`` until
cancelled."""

from __future__ import annotations

import asyncio
import http.client
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from hyco_proto.adapters import asgi
from hyco_proto.adapters._apps import AppEndpoint
from hyco_proto.adapters.asgi import (
    AsgiBridge,
    AsgiServer,
    ClientDisconnected,
    LifespanError,
    _Lifespan,
)
from hyco_proto.adapters.asyncio import relayed_connect
from hyco_proto.drivers.http import RequestCancelled, Response, split_target
from hyco_proto.errors import ListenerRejectedError
from hyco_proto.headers import Headers
from hyco_proto.testing import Relay
from tests.adapters import http_apps
from tests.adapters.app_client import WAIT, LoopThread, call, listen_uri, send_headers, token
from tests.adapters.asyncio_util import async_test, bounded

ENDPOINT = AppEndpoint.from_listen_uri("wss://ns.example/$hc/myhc")


class FakeRequest:
    """A relayed request as the adapters hand it over, without a relay."""

    def __init__(self, target: str = "/myhc/", method: str = "GET",
                 headers: tuple[tuple[str, str], ...] = (), chunks: tuple[bytes, ...] = (),
                 cancel: bool = False, remote: tuple[str, int] = ("10.1.2.3", 4567)) -> None:
        self.method = method
        self.target = target
        self.path, self.query = split_target(target, "myhc")
        self.headers = Headers(headers)
        self.remote_address = remote
        self.id = "req-1"
        self.has_body = bool(chunks) or cancel
        self._chunks = chunks
        self._cancel = cancel

    async def stream(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            await asyncio.sleep(0)
            yield chunk
        if self._cancel:
            raise RequestCancelled("request req-1 cancelled: the sender went away",
                                   close_code=1001)


def bridge(app: Any) -> AsgiBridge:
    return AsgiBridge(app, ENDPOINT)


async def drain(response: Response) -> bytes:
    body = response.body
    if isinstance(body, bytes):
        return body
    assert hasattr(body, "__aiter__")
    return b"".join([chunk async for chunk in body])  # type: ignore[union-attr]


async def settle(b: AsgiBridge) -> None:
    if b.tasks:
        await bounded(asyncio.wait(set(b.tasks)))


# --------------------------------------------------------------------------------------------
# scopes


def test_http_scope() -> None:
    request = FakeRequest("/myhc/caf%C3%A9/x%2Fy?q=1&r=%20", "post",
                          headers=(("Content-Type", "text/plain"), ("X-Two", "a, b")))
    scope = bridge(None).http_scope(request)
    assert scope == {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": "/café/x/y",
        "raw_path": b"/caf%C3%A9/x%2Fy",
        "query_string": b"q=1&r=%20",
        "root_path": "",
        "headers": [(b"content-type", b"text/plain"), (b"x-two", b"a, b")],
        "client": ("10.1.2.3", 4567),
        "server": ("ns.example", 443),
        "extensions": {},
    }


def test_http_scope_of_the_hybrid_connection_itself() -> None:
    b = bridge(None)
    for target in ("/myhc", "/myhc/", "/MyHC"):
        scope = b.http_scope(FakeRequest(target, remote=("", 0)))
        assert (scope["path"], scope["raw_path"], scope["query_string"]) == ("/", b"/", b"")
        assert scope["client"] is None


def test_http_scope_plain_relay_and_lifespan_state() -> None:
    endpoint = AppEndpoint.from_listen_uri("ws://127.0.0.1:9090/$hc/myhc")
    assert endpoint.send_url == "http://127.0.0.1:9090/myhc"
    b = AsgiBridge(None, endpoint, state={"db": "x"})  # type: ignore[arg-type]
    scope = b.http_scope(FakeRequest())
    assert (scope["scheme"], scope["server"]) == ("http", ("127.0.0.1", 9090))
    assert scope["state"] == {"db": "x"}
    scope["state"]["db"] = "changed"  # each request gets its own copy
    assert b.state == {"db": "x"}


# --------------------------------------------------------------------------------------------
# receive / send


@async_test
async def test_whole_response_and_the_request_body_as_messages() -> None:
    received: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            received.append(message)
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2"),
                                (b"x-a", b"1")]})
        await send({"type": "http.response.body", "body": b"ok"})
        received.append(await receive())  # after the response: disconnect

    b = bridge(app)
    response = await bounded(b.handle_http(FakeRequest(method="PUT", chunks=(b"ab", b"c"))))
    assert not response.streaming
    assert (response.status, response.body) == (201, b"ok")
    assert ("x-a", "1") in response.headers
    await settle(b)
    assert received == [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"c", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": False},
        {"type": "http.disconnect"},
    ]


@async_test
async def test_no_body_is_one_empty_message() -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(await receive())
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    b = bridge(app)
    response = await bounded(b.handle_http(FakeRequest()))
    assert (response.status, response.body) == (204, b"")
    assert seen == [{"type": "http.request", "body": b"", "more_body": False}]


@async_test
async def test_sender_gone_mid_body_is_http_disconnect() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "http.disconnect":
                return

    b = bridge(app)
    response = await bounded(b.handle_http(FakeRequest(method="POST", chunks=(b"x",),
                                                       cancel=True)))
    assert response.status == 500  # nobody hears it: the sender is gone
    await settle(b)
    assert seen == ["http.request", "http.disconnect"]


@async_test
async def test_streamed_response_reaches_the_relay_before_the_app_finishes() -> None:
    go_on = asyncio.Event()
    finished = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await go_on.wait()
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        finished.set()

    b = bridge(app)
    response = await bounded(b.handle_http(FakeRequest()))
    assert response.streaming
    chunks = response.body.__aiter__()  # type: ignore[union-attr]
    assert await bounded(chunks.__anext__()) == b"data: 1\n\n"
    assert not finished.is_set()
    go_on.set()
    assert await bounded(chunks.__anext__()) == b"data: 2\n\n"
    with pytest.raises(StopAsyncIteration):
        await bounded(chunks.__anext__())
    await settle(b)
    assert finished.is_set()


@async_test
async def test_backpressure_holds_the_app_and_closing_the_body_disconnects_it() -> None:
    sent: list[int] = []
    outcome: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200})
        try:
            for i in range(100):
                await send({"type": "http.response.body", "body": b"x" * 100_000,
                            "more_body": True})
                sent.append(i)
        except OSError as exc:
            outcome.append(exc)
            raise

    b = bridge(app)
    response = await bounded(b.handle_http(FakeRequest()))
    await asyncio.sleep(0.05)
    assert len(sent) <= asgi.SEND_BUFFER // 100_000 + 1  # held back, not 100 chunks queued
    body = response.body
    assert await bounded(body.__anext__()) == b"x" * 100_000  # type: ignore[union-attr]
    await body.aclose()  # type: ignore[union-attr]  # what the adapter does when the sender left
    await settle(b)
    assert len(outcome) == 1 and isinstance(outcome[0], ClientDisconnected)


@async_test
async def test_app_failures_are_500() -> None:
    async def raises(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    async def silent(scope: Any, receive: Any, send: Any) -> None:
        return None

    async def reserved(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 502})
        await send({"type": "http.response.body", "body": b"proxy"})

    async def bad_header(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"bad name", b"x")]})
        await send({"type": "http.response.body", "body": b""})

    for app in (raises, silent, bad_header):
        response = await bounded(bridge(app).handle_http(FakeRequest()))
        assert (response.status, response.body) == (500, b"Internal Server Error"), app
    # 502 / 504 are the relay's: sent as 500, the application's body kept.
    response = await bounded(bridge(reserved).handle_http(FakeRequest()))
    assert (response.status, response.body) == (500, b"proxy")


@async_test
async def test_app_failing_mid_stream_breaks_the_response() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        await asyncio.sleep(0.01)
        raise RuntimeError("boom mid-stream")

    response = await bounded(bridge(app).handle_http(FakeRequest()))
    chunks = response.body.__aiter__()  # type: ignore[union-attr]
    assert await bounded(chunks.__anext__()) == b"part"
    with pytest.raises(RuntimeError, match="failed before completing its response"):
        await bounded(chunks.__anext__())


@async_test
async def test_protocol_misuse_raises_in_the_app() -> None:
    errors: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        for message in ({"type": "http.response.body", "body": b"early"},
                        {"type": "websocket.send", "text": "x"}):
            try:
                await send(message)
            except RuntimeError as exc:
                errors.append(exc)
        await send({"type": "http.response.start", "status": 200})
        try:
            await send({"type": "http.response.start", "status": 200})
        except RuntimeError as exc:
            errors.append(exc)
        await send({"type": "http.response.body", "body": b"fine"})

    b = bridge(app)
    response = await bounded(b.handle_http(FakeRequest()))
    assert response.body == b"fine"
    await settle(b)
    assert [str(e).split(" ")[0] for e in errors] == ["http.response.body", "unexpected",
                                                      "http.response.start"]


# --------------------------------------------------------------------------------------------
# lifespan


def lifespan_app(answer: str | None, message: str = "") -> Any:
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            event = await receive()
            calls.append(event["type"])
            if event["type"] == "lifespan.startup":
                if answer is None:
                    raise ValueError("no lifespan here")
                scope["state"]["ready"] = True
                await send({"type": answer, "message": message})
                if answer.endswith("failed"):
                    return
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    app.calls = calls  # type: ignore[attr-defined]
    return app


@async_test
async def test_lifespan_startup_and_shutdown() -> None:
    app = lifespan_app("lifespan.startup.complete")
    state: dict[str, Any] = {}
    life = _Lifespan(app, "auto", state, WAIT)
    await bounded(life.startup())
    assert state == {"ready": True}
    await bounded(life.shutdown())
    assert app.calls == ["lifespan.startup", "lifespan.shutdown"]


@async_test
async def test_lifespan_unsupported_is_ignored_in_auto_and_an_error_when_on() -> None:
    await bounded(_Lifespan(lifespan_app(None), "auto", {}, WAIT).startup())
    with pytest.raises(LifespanError, match="does not support"):
        await bounded(_Lifespan(lifespan_app(None), "on", {}, WAIT).startup())
    with pytest.raises(LifespanError, match="startup failed: no database"):
        await bounded(_Lifespan(lifespan_app("lifespan.startup.failed", "no database"),
                                "auto", {}, WAIT).startup())
    off = lifespan_app("lifespan.startup.complete")
    await bounded(_Lifespan(off, "off", {}, WAIT).startup())
    assert off.calls == []


# --------------------------------------------------------------------------------------------
# through the relay


HC = "asgi"


# `relay`: the emulator fixture of hyco_proto.testing (our pytest plugin), one per test.


@pytest.fixture
def served(relay: Relay) -> Iterator[tuple[LoopThread, AsgiServer]]:
    http_apps.reset()
    uri = listen_uri(relay.port, HC)
    with LoopThread() as loop:
        async def make() -> AsgiServer:
            return AsgiServer(http_apps.asgi_app, uri, token(uri))
        server = loop.run(make())
        loop.run(server.start())
        try:
            yield loop, server
        finally:
            loop.run(server.close(), timeout=3 * WAIT)


def send_uri(relay: Relay, path: str = "") -> str:
    return f"ws://127.0.0.1:{relay.port}/$hc/{HC}{path}"


def test_websocket_echo_with_subprotocol(relay: Relay,
                                         served: tuple[LoopThread, AsgiServer]) -> None:
    loop, _ = served
    gates = http_apps.gates

    async def talk() -> tuple[str | None, list[object]]:
        uri = send_uri(relay, "/ws")
        async with relayed_connect(uri, token(uri), subprotocols=["other", "chat"]) as ws:
            await ws.send("hi")
            got: list[object] = [await ws.recv(WAIT)]
            await ws.send(b"\x01\x02\x03")
            got.append(await ws.recv(WAIT))
            return ws.subprotocol, got

    subprotocol, got = loop.run(talk())
    assert subprotocol == "chat"
    assert got == ["echo:hi", b"\x03\x02\x01"]
    assert gates.ws_closed_event.wait(WAIT)
    assert gates.ws_closed == [1000]


def test_websocket_closed_before_accept_is_403(relay: Relay,
                                               served: tuple[LoopThread, AsgiServer]) -> None:
    loop, _ = served

    async def talk() -> None:
        uri = send_uri(relay, "/ws-deny")
        await relayed_connect(uri, token(uri), open_timeout=WAIT)

    with pytest.raises(ListenerRejectedError) as info:
        loop.run(talk())
    assert info.value.status == 403


def test_unknown_websocket_route_is_refused(relay: Relay,
                                            served: tuple[LoopThread, AsgiServer]) -> None:
    loop, _ = served

    async def talk() -> None:
        uri = send_uri(relay, "/nowhere")
        await relayed_connect(uri, token(uri), open_timeout=WAIT)

    with pytest.raises(ListenerRejectedError) as info:
        loop.run(talk())
    assert info.value.status == 403


def test_sender_leaving_mid_upload_is_http_disconnect(
        relay: Relay, served: tuple[LoopThread, AsgiServer]) -> None:
    gates = http_apps.gates
    head = (f"POST /{HC}/upload HTTP/1.1\r\nHost: 127.0.0.1:{relay.port}\r\n"
            f"ServiceBusAuthorization: {send_headers(relay.port, HC)['ServiceBusAuthorization']}"
            f"\r\nContent-Length: 10000000\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", relay.port), timeout=WAIT) as sock:
        sock.sendall(head + b"x" * 300_000)
        assert gates.upload_started.wait(WAIT), "the app never saw the body"
    # The sender is gone before its body ended: the app's receive() says so.
    assert gates.disconnected.wait(WAIT), "the app never heard http.disconnect"
    assert 0 < gates.uploaded < 10_000_000


def test_big_whole_response_leaves_no_task_behind(
        relay: Relay, served: tuple[LoopThread, AsgiServer]) -> None:
    """A whole response too big for the control channel goes on a rendezvous the listener
    opens; once it is out, nothing of the request is left running (the listener used to wait
    for that rendezvous forever)."""
    loop, _ = served
    reply = call(relay.port, HC, "GET", "/big?size=200000")
    assert (reply.status, len(reply.body)) == (200, 200_000)

    async def running() -> list[str]:
        return [task.get_coro().__qualname__ for task in asyncio.all_tasks()  # type: ignore[union-attr]
                if task is not asyncio.current_task()]

    deadline = time.monotonic() + WAIT
    while "RelayedServer._serve_request" in (names := loop.run(running())):
        assert time.monotonic() < deadline, names
        time.sleep(0.02)


def test_lifespan_runs_around_listening(relay: Relay) -> None:
    gates = http_apps.reset()
    uri = listen_uri(relay.port, HC)
    with LoopThread() as loop:
        async def make() -> AsgiServer:
            return AsgiServer(http_apps.asgi_app, uri, token(uri), lifespan="on")
        server = loop.run(make())
        loop.run(server.start())
        assert gates.lifespan == ["startup"]
        reply = call(relay.port, HC, "GET", "/state")
        assert (reply.status, reply.body) == (200, b'{"started":true}')
        loop.run(server.close(), timeout=3 * WAIT)
        assert gates.lifespan == ["startup", "shutdown"]


def test_serve_runs_until_cancelled(relay: Relay) -> None:
    gates = http_apps.reset()
    uri = listen_uri(relay.port, HC)
    with LoopThread() as loop:
        async def start() -> asyncio.Task[None]:
            return asyncio.ensure_future(asgi.serve(http_apps.asgi_app, uri, token(uri)))
        task = loop.run(start())

        def up() -> bool:
            try:
                return call(relay.port, HC, "GET", "/").status == 200
            except (OSError, http.client.HTTPException):
                return False

        from tests.adapters.harness import wait_until
        wait_until(up, WAIT, "serve() answering")

        async def stop() -> bool:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                return True
            return False

        assert loop.run(stop())
        assert gates.lifespan == ["startup", "shutdown"]
        # Nobody listens any more: the relay answers for itself.
        assert call(relay.port, HC, "GET", "/").status == 502


def test_start_failure_names_the_address() -> None:
    from tests.adapters.harness import free_port

    port = free_port()
    uri = listen_uri(port, HC)
    gates = http_apps.reset()
    with LoopThread() as loop:
        async def attempt() -> None:
            await AsgiServer(http_apps.asgi_app, uri, token(uri), open_timeout=2.0).start()

        with pytest.raises(Exception, match=f"127.0.0.1:{port}"):
            loop.run(attempt())
    assert gates.lifespan == ["startup", "shutdown"]  # the startup is undone
