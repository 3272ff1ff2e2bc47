"""``relayed_request`` (HTTP over Hybrid Connections, the sender side) in every adapter.

Until the relay relays HTTP these run against :class:`~tests.adapters.http_server.HttpTestServer`,
a small h11 server on 127.0.0.1: a relayed request is an ordinary HTTP/1.1 request, so what is
checked here is the client — framing (Content-Length, chunked), streaming both ways without
holding a body whole, HEAD / 204 / 304, repeated headers, the token header, TLS, and that every
failure is bounded and names the address. Each scenario is written once against the harness
facades (asyncio on its loop thread, threads directly, gevent in its own hub's thread) and runs
for each adapter; the harness checks that nothing is left running afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import pytest

from hyco_proto.errors import LocalProtocolError
from hyco_proto.headers import Headers

from .harness import ADAPTERS, WAIT, Facade, Harness, free_port
from .http_server import HttpTestServer, Received, Responder, wait_for

each_adapter = pytest.mark.parametrize("name", ADAPTERS)
MiB = 1024 * 1024
TOKEN = "SharedAccessSignature sr=http%3A%2F%2F127.0.0.1%2Fmyhc&sig=abc%3D&se=9999999999&skn=x"


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        h.close()


# ------------------------------------------------------------------------------------------
# one synchronous client over each adapter


def call(facade: Facade, fn: Any, bound: float = 2 * WAIT) -> Any:
    """``facade.run(fn, bound)``, but an exception ``fn`` raises comes back as it is (the
    asyncio facade reports any ``TimeoutError`` as its own bound expiring)."""
    async def guarded() -> tuple[bool, Any]:
        try:
            result = fn()
            if inspect.isawaitable(result):
                result = await result
            return True, result
        except Exception as exc:
            return False, exc

    def plain() -> tuple[bool, Any]:
        try:
            return True, fn()
        except Exception as exc:
            return False, exc

    ok, value = facade.run(guarded if facade.name == "asyncio" else plain, bound)
    if not ok:
        raise value
    return value


class Resp:
    """An adapter's response behind blocking, bounded calls."""

    def __init__(self, facade: Facade, raw: Any) -> None:
        self.facade = facade
        self.raw = raw
        self._it: Any = None

    @property
    def aio(self) -> bool:
        return self.facade.name == "asyncio"

    def next_chunk(self, timeout: float = WAIT) -> bytes | None:
        """The next ``stream()`` chunk; None at the end."""
        if self._it is None:
            self._it = self.raw.stream()
        it = self._it
        if self.aio:
            async def step() -> bytes | None:
                try:
                    return await it.__anext__()  # type: ignore[no-any-return]
                except StopAsyncIteration:
                    return None

            return call(self.facade, step, timeout)  # type: ignore[no-any-return]
        return call(self.facade, lambda: next(it, None), timeout)  # type: ignore[no-any-return]

    def chunks(self, timeout: float = WAIT) -> Iterator[bytes]:
        while (chunk := self.next_chunk(timeout)) is not None:
            yield chunk

    def read(self, timeout: float = WAIT) -> bytes:
        return call(self.facade, self.raw.read, timeout)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.facade.run(self.raw.close)


def request(facade: Facade, method: str, url: str, token: Any = None, *,
            bound: float = 2 * WAIT, **kwargs: Any) -> Resp:
    """``relayed_request`` (awaited in asyncio: the ``await`` form), bounded by ``bound``."""
    module = facade.module
    return Resp(facade, call(
        facade, lambda: module.relayed_request(method, url, token, **kwargs), bound))


def fetch(facade: Facade, method: str, url: str, token: Any = None,
          **kwargs: Any) -> tuple[Any, bytes]:
    """The response and its whole body, through ``with`` / ``async with``."""
    module = facade.module
    if facade.name == "asyncio":
        async def go() -> tuple[Any, bytes]:
            async with module.relayed_request(method, url, token, **kwargs) as response:
                return response, await response.read()

        return call(facade, go)  # type: ignore[no-any-return]

    def run() -> tuple[Any, bytes]:
        with module.relayed_request(method, url, token, **kwargs) as response:
            return response, response.read()

    return call(facade, run)  # type: ignore[no-any-return]


def gate(facade: Facade, check: Any) -> Any:
    """A wait for ``check()`` usable inside a request body: an awaitable in asyncio."""
    if facade.name == "asyncio":
        async def wait() -> None:
            deadline = time.monotonic() + WAIT
            while not check():
                assert time.monotonic() < deadline, "gate not reached"
                await asyncio.sleep(0.002)

        return wait
    return lambda: wait_for(check) or pytest.fail("gate not reached")


def body_of(facade: Facade, pieces: list[bytes], before: Any = None) -> Any:
    """A streamed request body yielding ``pieces`` (an async generator in asyncio);
    ``before(i)`` runs (awaited in asyncio) before piece ``i`` is produced."""
    if facade.name == "asyncio":
        async def agen() -> AsyncIterator[bytes]:
            for i, piece in enumerate(pieces):
                if before is not None:
                    await before(i)
                yield piece

        return agen()

    def gen() -> Iterator[bytes]:
        for i, piece in enumerate(pieces):
            if before is not None:
                before(i)
            yield piece

    return gen()


def answer(status: int = 200, body: bytes = b"", headers: list[tuple[str, str]] | None = None
           ) -> Any:
    def handler(received: Received, respond: Responder) -> None:
        respond.head(status, (headers or []) + [("Content-Length", str(len(body)))])
        respond.send(body)
        respond.end()
    return handler


def echo(received: Received, respond: Responder) -> None:
    respond.head(200, [("Content-Length", str(len(received.body))),
                       ("X-Received-Length", str(received.length))])
    respond.send(received.body)
    respond.end()


# ------------------------------------------------------------------------------------------
# requests and responses


@each_adapter
def test_get_with_token_header(harness: Harness, name: str) -> None:
    facade = harness(name)
    with HttpTestServer(answer(200, b"hello", [("Content-Type", "text/plain")])) as server:
        response, body = fetch(facade, "get", server.url("/myhc/sub/path?a=1&b=x%20y"), TOKEN)
        assert (response.status, response.reason, body) == (200, "OK", b"hello")
        assert response.ok and response.http_version == "1.1"
        assert isinstance(response.headers, Headers)
        assert response.headers["content-type"] == "text/plain"
        assert response.url == server.url("/myhc/sub/path")  # no query: it may hold a token
        assert response.closed
        (got,) = server.received
        assert (got.method, got.target) == ("GET", "/myhc/sub/path?a=1&b=x%20y")
        assert got.header("ServiceBusAuthorization") == TOKEN
        assert got.header("Host") == f"127.0.0.1:{server.port}"
        assert got.header("Connection") == "close"
        assert got.header("User-Agent").startswith("hyco_proto/")  # type: ignore[union-attr]
        assert got.header("Content-Length") is None and not got.chunked
        assert server.errors == []


@each_adapter
def test_token_callable_and_in_query(harness: Harness, name: str) -> None:
    facade = harness(name)
    calls: list[int] = []

    def make() -> str:
        calls.append(1)
        return TOKEN

    with HttpTestServer(answer(204)) as server:
        response, _ = fetch(facade, "GET", server.url("/myhc"), make)
        assert response.status == 204 and calls == [1]
        response, _ = fetch(facade, "GET", server.url("/myhc?x=1&sb-hc-token=old"), TOKEN,
                            token_in_query=True)
        assert response.status == 204
        first, second = server.received
        assert first.header("ServiceBusAuthorization") == TOKEN
        assert second.header("ServiceBusAuthorization") is None
        assert second.target == f"/myhc?x=1&sb-hc-token={quote(TOKEN, safe='')}"
        # Without a token nothing is sent (an anonymous hybrid connection).
        fetch(facade, "GET", server.url())
        assert server.received[2].header("ServiceBusAuthorization") is None


@each_adapter
def test_post_bytes_with_content_length(harness: Harness, name: str) -> None:
    facade = harness(name)
    payload = bytes(range(256)) * 1000
    with HttpTestServer(echo) as server:
        response, body = fetch(facade, "POST", server.url(), TOKEN, body=payload,
                               headers={"Content-Type": "application/octet-stream"})
        assert response.status == 200 and body == payload
        response, body = fetch(facade, "PUT", server.url(), body="héllo")
        assert body == "héllo".encode()
        response, body = fetch(facade, "POST", server.url())
        assert body == b""
        big, text, empty = server.received
        assert big.header("Content-Length") == str(len(payload)) and not big.chunked
        assert big.complete and big.body == payload
        assert big.header("Content-Type") == "application/octet-stream"
        assert text.header("Content-Length") == "6"
        assert empty.header("Content-Length") == "0" and empty.complete


@each_adapter
def test_post_streamed_body_is_sent_chunked(harness: Harness, name: str) -> None:
    facade = harness(name)
    pieces = [b"first,", b"", b"second," * 1000, b"third"]
    with HttpTestServer(echo) as server:
        response, body = fetch(facade, "POST", server.url(), TOKEN,
                               body=body_of(facade, pieces))
        assert response.status == 200 and body == b"".join(pieces)
        (got,) = server.received
        assert got.chunked and got.header("Content-Length") is None
        assert got.complete and got.chunks == 3  # the empty piece is not a chunk (it would end)
        assert got.body == b"".join(pieces)
        # A streamed body with the caller's Content-Length goes without chunking.
        response, body = fetch(facade, "POST", server.url(), body=body_of(facade, [b"ab", b"c"]),
                               headers=[("Content-Length", "3")])
        assert body == b"abc"
        assert not server.received[1].chunked
        assert server.received[1].header("Content-Length") == "3"


@each_adapter
def test_8_mib_both_ways_streamed(harness: Harness, name: str) -> None:
    """8 MiB up and 8 MiB down, neither held whole: piece i of the request body is only
    produced once the server has read the pieces before it, and the server only sends more
    of its answer once the client has taken most of what came before."""
    facade = harness(name)
    up = [bytes([i]) * MiB for i in range(8)]
    down = [bytes([100 + i]) * MiB for i in range(8)]
    consumed = [0]
    stalls: list[str] = []

    def handler(received: Received, respond: Responder) -> None:
        respond.head(200, [("Content-Type", "application/octet-stream")])  # chunked
        for i, piece in enumerate(down):
            # Loopback buffers and the client's read limit hold a few MiB at most.
            if not wait_for(lambda i=i: consumed[0] >= (i - 3) * MiB):
                stalls.append(f"client had taken {consumed[0]} bytes before piece {i}")
                return
            for start in range(0, MiB, 64 * 1024):
                respond.send(piece[start:start + 64 * 1024])
        respond.end()

    with HttpTestServer(handler) as server:
        def before(i: int) -> Any:
            return gate(facade, lambda: server.bytes_in >= i * MiB)()

        response = request(facade, "POST", server.url(), TOKEN,
                           body=body_of(facade, up, before), bound=4 * WAIT)
        digest = hashlib.sha256()
        sizes = []
        for chunk in response.chunks():
            digest.update(chunk)
            sizes.append(len(chunk))
            consumed[0] += len(chunk)
        assert stalls == [] and server.errors == []
        assert sum(sizes) == 8 * MiB and digest.hexdigest() == hashlib.sha256(
            b"".join(down)).hexdigest()
        assert len(sizes) > 8 and max(sizes) <= MiB
        (got,) = server.received
        assert got.complete and got.chunked and got.length == 8 * MiB
        assert got.sha256 == hashlib.sha256(b"".join(up)).hexdigest()
        assert response.raw.closed


@each_adapter
def test_head_204_304_have_no_body(harness: Harness, name: str) -> None:
    """The server keeps the connection open after answering: a client waiting for a body
    would time out (``timeout`` is short)."""
    facade = harness(name)
    closed_by_client: list[bool] = []

    def handler(received: Received, respond: Responder) -> None:
        status = {"HEAD": 200, "DELETE": 204}.get(received.method, 304)
        respond.head(status, [("Content-Length", "1234"), ("ETag", '"x"')]
                     if status != 204 else [])
        respond.end()
        closed_by_client.append(respond.wait_for_close())

    with HttpTestServer(handler) as server:
        for method, status in (("HEAD", 200), ("DELETE", 204), ("GET", 304)):
            started = time.monotonic()
            response, body = fetch(facade, method, server.url(), timeout=5.0)
            assert (response.status, body) == (status, b"")
            assert time.monotonic() - started < 4.0
        assert server.received[0].method == "HEAD"
        assert wait_for(lambda: len(closed_by_client) == 3)
        assert closed_by_client == [True, True, True]


@each_adapter
def test_repeated_headers_and_any_status_are_returned(harness: Harness, name: str) -> None:
    facade = harness(name)
    headers = [("Set-Cookie", "a=1; Path=/"), ("X-One", "1"), ("set-cookie", "b=2")]

    def handler(received: Received, respond: Responder) -> None:
        respond.head(418, [*headers, ("Content-Length", "2")], reason="I'm a teapot")
        respond.send(b"no")
        respond.end()

    with HttpTestServer(handler) as server:
        response, body = fetch(facade, "GET", server.url())
        assert (response.status, response.reason, body) == (418, "I'm a teapot", b"no")
        assert not response.ok
        assert response.headers.get_all("SET-COOKIE") == ["a=1; Path=/", "b=2"]
        assert response.headers["set-cookie"] == "b=2" and response.headers["x-one"] == "1"
        assert [k for k, _ in response.headers.raw_items()] == [
            "Set-Cookie", "X-One", "set-cookie", "Content-Length", "Connection"]


@each_adapter
def test_response_streams_chunk_by_chunk(harness: Harness, name: str) -> None:
    """Server-Sent-Events style: the first chunk reaches the caller while the server still
    waits to send the rest."""
    facade = harness(name)
    go = threading.Event()
    finished = threading.Event()

    def handler(received: Received, respond: Responder) -> None:
        respond.head(200, [("Content-Type", "text/event-stream")])
        respond.send(b"data: one\n\n")
        go.wait(WAIT)
        respond.send(b"data: two\n\n")
        respond.send(b"data: three\n\n")
        respond.end()
        finished.set()

    with HttpTestServer(handler) as server:
        response = request(facade, "GET", server.url("/myhc/events"), TOKEN)
        assert response.raw.headers["content-type"] == "text/event-stream"
        assert response.next_chunk() == b"data: one\n\n"
        assert not finished.is_set() and not go.is_set()
        go.set()
        assert b"".join(response.chunks()) == b"data: two\n\ndata: three\n\n"
        assert finished.wait(WAIT)
        assert response.raw.closed


# ------------------------------------------------------------------------------------------
# failures: bounded, naming the address


@each_adapter
def test_connection_refused_names_the_address(harness: Harness, name: str) -> None:
    facade = harness(name)
    port = free_port()
    with pytest.raises(ConnectionRefusedError, match=f"127.0.0.1:{port}"):
        request(facade, "GET", f"http://127.0.0.1:{port}/myhc", TOKEN)


@each_adapter
def test_server_that_never_answers_times_out(harness: Harness, name: str) -> None:
    facade = harness(name)

    def silent(received: Received, respond: Responder) -> None:
        server.stop.wait(WAIT)

    with HttpTestServer(silent) as server:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=f"no response from 127.0.0.1:{server.port}"):
            request(facade, "GET", server.url(), TOKEN, timeout=0.5)
        assert time.monotonic() - started < 5.0


@each_adapter
def test_a_stalled_body_times_out(harness: Harness, name: str) -> None:
    facade = harness(name)

    def stalls(received: Received, respond: Responder) -> None:
        respond.head(200, [("Content-Length", "100")])
        respond.send(b"x" * 10)
        server.stop.wait(WAIT)

    with HttpTestServer(stalls) as server:
        response = request(facade, "GET", server.url(), timeout=0.5)
        assert response.next_chunk() == b"x" * 10
        with pytest.raises(TimeoutError, match=f"127.0.0.1:{server.port}.*stalled"):
            response.next_chunk()
        assert response.raw.closed
        with pytest.raises(LocalProtocolError):
            response.read()


@each_adapter
def test_closed_without_answer_or_mid_body(harness: Harness, name: str) -> None:
    facade = harness(name)

    def hangs_up(received: Received, respond: Responder) -> None:
        if received.target.endswith("partial"):
            respond.head(200, [("Content-Length", "100")])
            respond.send(b"x" * 10)

    with HttpTestServer(hangs_up) as server:
        with pytest.raises(ConnectionError, match=f"127.0.0.1:{server.port}.*without "
                                                  "answering"):
            request(facade, "POST", server.url(), body=b"data")
        response = request(facade, "GET", server.url("/myhc/partial"))
        with pytest.raises(ConnectionError, match=r"before the response body was complete "
                                                  r"\(10 bytes"):
            response.read()


@each_adapter
def test_closing_early_drops_the_connection(harness: Harness, name: str) -> None:
    facade = harness(name)
    dropped: list[bool] = []

    def endless(received: Received, respond: Responder) -> None:
        respond.head(200, [])
        try:
            for _ in range(10_000):
                respond.send(b"y" * 4096)
                time.sleep(0.001)
        except OSError:
            dropped.append(True)

    with HttpTestServer(endless) as server:
        response = request(facade, "GET", server.url())
        assert response.next_chunk()
        response.close()
        assert response.raw.closed
        assert wait_for(lambda: dropped == [True])


@each_adapter
def test_https(harness: Harness, name: str,
               tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    facade = harness(name)
    server_ctx, client_ctx = tls_contexts
    with HttpTestServer(echo, tls=server_ctx) as server:
        response, body = fetch(facade, "POST", server.url(), TOKEN, body=b"secret",
                               ssl=client_ctx)
        assert (response.status, body) == (200, b"secret")
        assert server.received[0].header("ServiceBusAuthorization") == TOKEN
        # The default context verifies: the development certificate is not trusted.
        with pytest.raises(ConnectionError, match=f"127.0.0.1:{server.port}.*certificate"):
            request(facade, "GET", server.url())
    with HttpTestServer(echo) as plain, pytest.raises(
            ConnectionError, match=r"not speaking TLS .*use http://"):
        request(facade, "GET", plain.url(scheme="https"), ssl=client_ctx)


def test_asyncio_await_form_and_misuse() -> None:
    from hyco_proto.adapters import asyncio as aio

    async def main(url: str) -> None:
        response = await aio.relayed_request("GET", url)
        assert response.status == 200 and not response.closed
        await response.aclose()
        assert response.closed
        with pytest.raises(LocalProtocolError, match="closed"):
            await response.read()
        async with aio.relayed_request("GET", url) as response:
            assert [c async for c in response.stream()] == [b"hello"]
            assert await response.read() == b""  # the body was taken by stream()
        with pytest.raises(TypeError, match="iterable"):
            aio.relayed_request("POST", url, body=42)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="http:// or https://"):
            aio.relayed_request("GET", url.replace("http", "ws"))

    with HttpTestServer(answer(200, b"hello")) as server:
        asyncio.run(asyncio.wait_for(main(server.url()), WAIT))


def test_blocking_adapters_refuse_async_bodies() -> None:
    from hyco_proto.adapters import threads

    async def agen() -> AsyncIterator[bytes]:
        yield b"x"

    body = agen()
    with pytest.raises(TypeError, match="asyncio adapter"):
        threads.relayed_request("POST", "http://127.0.0.1:1/myhc", body=body)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="iterable"):
        threads.relayed_request("POST", "http://127.0.0.1:1/myhc", body=42)  # type: ignore[arg-type]
    asyncio.run(body.aclose())
