"""Relayed HTTP end to end: an HTTP client, the local relay service, a listener of each adapter.

The sender is the standard library's ``http.client`` (or a raw socket, to leave mid-upload),
run in a thread of its own; the test waits for it without blocking the adapter (asyncio:
``to_thread``; gevent: polling with ``gevent.sleep``). Small requests travel on the control
channel, big ones by pointer and rendezvous, as the relay decides.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import importlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import Any, TypeVar

import pytest

from hyco_proto.adapters.asyncio import RelayServiceServer
from tests.interop import ThreadedEmulator

from .asyncio_util import WAIT, async_test, bounded, token

T = TypeVar("T")

Reply = tuple[int, str, dict[str, str], bytes]


def send(port: int, method: str, target: str, body: Any = b"",
         headers: dict[str, str] | None = None) -> Reply:
    """One HTTP request through the relay: (status, reason, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        all_headers = {"ServiceBusAuthorization": token(f"http://127.0.0.1:{port}/myhc")}
        all_headers.update(headers or {})
        chunked = not isinstance(body, (bytes, str))
        conn.request(method, target, body=body, headers=all_headers, encode_chunked=chunked)
        response = conn.getresponse()
        data = response.read()
        return response.status, response.reason, dict(response.getheaders()), data
    finally:
        conn.close()


def leave_mid_upload(port: int, started: Callable[[], bool]) -> None:
    """Start a 1 MB POST, send part of it, wait until the listener reads it, then hang up."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        head = (f"POST /myhc/upload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"ServiceBusAuthorization: {token(f'http://127.0.0.1:{port}/myhc')}\r\n"
                "Content-Length: 1000000\r\n\r\n")
        sock.sendall(head.encode() + b"u" * 100_000)
        deadline = time.monotonic() + WAIT
        while not started() and time.monotonic() < deadline:
            time.sleep(0.01)


# ---- asyncio ------------------------------------------------------------------------------------


def asyncio_names() -> Any:
    return importlib.import_module("hyco_proto.adapters.asyncio")


@async_test
async def test_asyncio_answers_small_and_big_requests_through_the_relay() -> None:
    aio = asyncio_names()

    async def handler(request: Any) -> Any:
        body = await request.body()
        host, port = request.remote_address
        return aio.Response(200, {"X-Path": request.path, "X-Query": request.query,
                                  "X-Type": request.headers.get("content-type", ""),
                                  "X-From": str(bool(host and port))},
                            b"echo:" + body if len(body) < 1000 else b"r" * len(body))

    async with RelayServiceServer(port=0) as relay:
        uri = f"{relay.url}/$hc/myhc"
        async with aio.RelayedServer(uri, lambda: token(uri), request_handler=handler):
            status, _, headers, body = await asyncio.to_thread(
                send, relay.port, "POST", "/myhc/a/b?x=1", b"hi",
                {"Content-Type": "text/plain"})
            assert (status, body) == (200, b"echo:hi")
            assert (headers["X-Path"], headers["X-Query"], headers["X-Type"],
                    headers["X-From"]) == ("/a/b", "x=1", "text/plain", "True")
            big = b"x" * 300_000  # by pointer and rendezvous, answered there
            status, _, _, body = await asyncio.to_thread(send, relay.port, "PUT", "/myhc/big",
                                                         big)
            assert (status, body) == (200, b"r" * len(big))


@async_test
async def test_asyncio_streams_a_response_and_a_chunked_upload() -> None:
    aio = asyncio_names()

    async def handler(request: Any) -> Any:
        sizes = [len(chunk) async for chunk in request.stream()]

        async def produce() -> AsyncIterator[bytes]:
            for n in range(5):
                yield f"line {n}\n".encode()
                await asyncio.sleep(0)
            yield f"total {sum(sizes)}\n".encode()

        return aio.Response(200, {"Content-Type": "text/plain"}, produce())

    def upload() -> Iterator[bytes]:
        for _ in range(10):
            yield b"c" * 10_000

    async with RelayServiceServer(port=0) as relay:
        uri = f"{relay.url}/$hc/myhc"
        async with aio.RelayedServer(uri, lambda: token(uri), request_handler=handler):
            status, _, _, body = await asyncio.to_thread(send, relay.port, "POST", "/myhc/s",
                                                         upload())
            assert status == 200
            assert body == b"".join(f"line {n}\n".encode() for n in range(5)) + b"total 100000\n"


@async_test
async def test_asyncio_501_without_a_handler_and_500_when_it_fails() -> None:
    aio = asyncio_names()

    async def failing(request: Any) -> Any:
        raise RuntimeError("boom")

    async with RelayServiceServer(port=0) as relay:
        uri = f"{relay.url}/$hc/myhc"
        async with aio.RelayedServer(uri, lambda: token(uri)):
            status, reason, _, body = await asyncio.to_thread(send, relay.port, "GET", "/myhc/")
            assert (status, reason) == (501, "Not Implemented")
            assert b"WebSocket connections only" in body
        async with aio.RelayedServer(uri, lambda: token(uri), request_handler=failing):
            status, _, _, _ = await asyncio.to_thread(send, relay.port, "GET", "/myhc/")
            assert status == 500


@async_test
async def test_asyncio_handler_is_cancelled_when_the_sender_leaves_mid_upload() -> None:
    aio = asyncio_names()
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    reading = asyncio.Event()

    async def handler(request: Any) -> Any:
        try:
            async for _ in request.stream():
                reading.set()
        except asyncio.CancelledError:
            outcome.set_result("cancelled")
            raise
        outcome.set_result("finished")
        return aio.Response()

    async with RelayServiceServer(port=0) as relay:
        uri = f"{relay.url}/$hc/myhc"
        async with aio.RelayedServer(uri, lambda: token(uri), request_handler=handler):
            leaving = asyncio.ensure_future(asyncio.to_thread(leave_mid_upload, relay.port,
                                                              reading.is_set))
            assert await bounded(outcome) == "cancelled"
            await bounded(leaving)


@async_test
async def test_asyncio_one_listener_for_websockets_and_http() -> None:
    aio = asyncio_names()

    async def handler(request: Any) -> Any:
        return aio.Response(body=f"http {request.path}")

    async def on_connection(ws: Any) -> None:
        async for message in ws:
            await ws.send(f"ws {message}")

    async with RelayServiceServer(port=0) as relay:
        uri = f"{relay.url}/$hc/myhc"
        server = aio.create_relayed_server({"server": uri, "token": lambda: token(uri)},
                                           on_connection, request_handler=handler)
        try:
            await bounded(server.start())
            async with aio.relayed_connect(uri, token(uri)) as ws:
                await ws.send("ping")
                assert await bounded(ws.recv()) == "ws ping"
                _, _, _, body = await asyncio.to_thread(send, relay.port, "GET", "/myhc/x")
                assert body == b"http /x"
        finally:
            await server.close()


# ---- threads and gevent -------------------------------------------------------------------------


@pytest.fixture(params=["threads", "gevent"])
def adapter(request: pytest.FixtureRequest) -> ModuleType:
    return importlib.import_module(f"hyco_proto.adapters.{request.param}")


@pytest.fixture(scope="module")
def emulator() -> Iterator[ThreadedEmulator]:
    with ThreadedEmulator() as relay:
        yield relay


def off_thread(adapter: ModuleType, fn: Callable[[], T]) -> T:
    """``fn()`` in a plain thread; wait without blocking the adapter's workers."""
    rt = adapter.RUNTIME
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(fn)
        deadline = rt.monotonic() + 2 * WAIT
        while not future.done():
            assert rt.monotonic() < deadline, "the HTTP sender did not finish in time"
            rt.sleep(0.005)
        return future.result()


def test_blocking_answers_small_big_and_streamed_requests(adapter: ModuleType,
                                                          emulator: ThreadedEmulator) -> None:
    def handler(request: Any) -> Any:
        body = request.body(timeout=WAIT)
        if request.path == "/stream":
            return adapter.Response(200, body=(f"{n}," for n in range(3)))
        return adapter.Response(200, {"X-Path": request.path, "X-Query": request.query},
                                b"echo:" + body if len(body) < 1000 else b"r" * len(body))

    uri = f"{emulator.url}/$hc/myhc"
    with adapter.RelayedServer(uri, lambda: token(uri), request_handler=handler):
        status, _, headers, body = off_thread(
            adapter, lambda: send(emulator.port, "POST", "/myhc/a?q=2", b"hi"))
        assert (status, body, headers["X-Path"], headers["X-Query"]) == (
            200, b"echo:hi", "/a", "q=2")
        big = b"x" * 300_000
        status, _, _, body = off_thread(adapter, lambda: send(emulator.port, "PUT", "/myhc/b",
                                                              big))
        assert (status, body) == (200, b"r" * len(big))
        status, _, _, body = off_thread(adapter, lambda: send(emulator.port, "GET",
                                                              "/myhc/stream"))
        assert (status, body) == (200, b"0,1,2,")


def test_blocking_501_without_a_handler_and_500_when_it_fails(adapter: ModuleType,
                                                              emulator: ThreadedEmulator) -> None:
    def failing(request: Any) -> Any:
        raise RuntimeError("boom")

    uri = f"{emulator.url}/$hc/myhc"
    with adapter.RelayedServer(uri, lambda: token(uri)):
        status, _, _, body = off_thread(adapter, lambda: send(emulator.port, "GET", "/myhc/"))
        assert status == 501 and b"WebSocket connections only" in body
    with adapter.RelayedServer(uri, lambda: token(uri), request_handler=failing):
        status, _, _, _ = off_thread(adapter, lambda: send(emulator.port, "GET", "/myhc/"))
        assert status == 500


def test_blocking_body_reads_raise_when_the_sender_leaves_mid_upload(
        adapter: ModuleType, emulator: ThreadedEmulator) -> None:
    rt = adapter.RUNTIME
    reading, outcome = rt.event(), rt.queue()

    def handler(request: Any) -> Any:
        try:
            for _ in request.stream(timeout=WAIT):
                reading.set()
        except adapter.RequestCancelled as exc:
            outcome.put(f"cancelled: {exc}")
            raise
        outcome.put("finished")
        return adapter.Response()

    uri = f"{emulator.url}/$hc/myhc"
    with adapter.RelayedServer(uri, lambda: token(uri), request_handler=handler):
        off_thread(adapter, lambda: leave_mid_upload(emulator.port, reading.is_set))
        assert outcome.get(True, WAIT).startswith("cancelled: request")


def test_blocking_one_listener_for_websockets_and_http(adapter: ModuleType,
                                                       emulator: ThreadedEmulator) -> None:
    def handler(request: Any) -> Any:
        return adapter.Response(body=f"http {request.path}")

    def on_connection(ws: Any) -> None:
        for message in ws:
            ws.send(f"ws {message}")

    uri = f"{emulator.url}/$hc/myhc"
    server = adapter.create_relayed_server({"server": uri, "token": lambda: token(uri)},
                                           on_connection, request_handler=handler)
    try:
        server.start()
        with adapter.relayed_connect(uri, token(uri)) as ws:
            ws.send("ping")
            assert ws.recv(timeout=WAIT) == "ws ping"
            _, _, _, body = off_thread(adapter, lambda: send(emulator.port, "GET", "/myhc/x"))
            assert body == b"http /x"
    finally:
        server.close()


@async_test
async def test_a_sender_that_half_closes_after_its_request_still_gets_the_response() -> None:
    aio = asyncio_names()

    async def handler(request: Any) -> Any:
        await asyncio.sleep(0.05)  # answer after the sender's FIN has reached the relay
        return aio.Response(200, body=b"after half-close")

    def half_close(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(f"GET /myhc/x HTTP/1.1\r\nHost: x\r\nServiceBusAuthorization: "
                         f"{token(f'http://127.0.0.1:{port}/myhc')}\r\n\r\n".encode())
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            return answer

    async with RelayServiceServer(port=0) as relay:
        uri = f"{relay.url}/$hc/myhc"
        async with aio.RelayedServer(uri, lambda: token(uri), request_handler=handler):
            answer = await asyncio.to_thread(half_close, relay.port)
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"after half-close")
