"""Our HTTP listener (each adapter) behind our relay, called by curl, Node's ``http`` and Python.

The listener answers a few routes the same way in every adapter; the senders are the tools
people really use: ``curl`` (a subprocess), Node's ``http`` module (``node/http_sender.js``) and
Python's ``http.client`` / a raw socket. Bodies are checked by length and SHA-256 at the other
end; 8 MiB each way crosses the relay by rendezvous, streamed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import http.client
import importlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hyco_proto.sas import create_relay_token
from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY
from tests.interop import NODE_DIR, ThreadedEmulator, node_binary
from tests.interop.test_hycohttps import curl_binary, pattern

T = TypeVar("T")
WAIT = 20.0
ADAPTERS = ("asyncio", "threads", "gevent")
BIG = 8 << 20


def token(uri: str) -> str:
    return create_relay_token(uri, DEFAULT_RULE_NAME, DEVELOPMENT_KEY, 3600)


def answer(method: str, path: str, query: str, body: bytes) -> tuple[int, list[tuple[str, str]],
                                                                    bytes | None]:
    """The routes, whatever the adapter: (status, headers, body); None body = streamed BIG."""
    if path == "/nocontent":
        return 204, [], b""
    if path == "/big":
        return 200, [("Content-Type", "application/octet-stream")], None
    digest = hashlib.sha256(body).hexdigest()
    headers = [("X-Method", method), ("X-Path", path), ("X-Query", query),
               ("X-Length", str(len(body))), ("X-Sha256", digest),
               ("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Expires=Wed, 21 Oct 2037 "
                                                             "07:28:00 GMT"),
               ("Content-Type", "text/plain")]
    return 200, headers, b"ok"


def big_chunks() -> Iterator[bytes]:
    data = pattern(BIG)
    for start in range(0, BIG, 256 * 1024):
        yield data[start:start + 256 * 1024]


class Running:
    """A listener of one adapter, serving ``answer`` plus ``/stream`` (first chunk, then waits
    for ``gate``), on a thread of its own where the adapter needs one."""

    def __init__(self, adapter: str, relay: ThreadedEmulator) -> None:
        self.name = adapter
        self.module = importlib.import_module(f"hyco_proto.adapters.{adapter}")
        self.uri = f"{relay.url}/$hc/myhc"
        self.gate = threading.Event()
        self.cancelled = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None

    # -- handlers --------------------------------------------------------------------------

    def _sync_handler(self, request: Any) -> Any:
        response = self.module.Response
        if request.path == "/stream":
            def produce() -> Iterator[bytes]:
                yield b"first\n"
                self.gate.wait(WAIT)
                yield b"second\n"
            return response(200, [("Content-Type", "text/event-stream")], produce())
        try:
            body = request.body(timeout=WAIT)
        except self.module.RequestCancelled:
            self.cancelled.set()
            raise
        status, headers, data = answer(request.method, request.path, request.query, body)
        return response(status, headers, big_chunks() if data is None else data)

    async def _async_handler(self, request: Any) -> Any:
        response = self.module.Response
        if request.path == "/stream":
            async def produce() -> AsyncIterator[bytes]:
                yield b"first\n"
                await asyncio.to_thread(self.gate.wait, WAIT)
                yield b"second\n"
            return response(200, [("Content-Type", "text/event-stream")], produce())
        try:
            body = await request.body()
        except (self.module.RequestCancelled, asyncio.CancelledError):
            self.cancelled.set()
            raise

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in big_chunks():
                yield chunk

        status, headers, data = answer(request.method, request.path, request.query, body)
        return response(status, headers, chunks() if data is None else data)

    # -- life ------------------------------------------------------------------------------

    def __enter__(self) -> Running:
        if self.name == "asyncio":
            loop = self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=loop.run_forever, daemon=True)
            self._thread.start()
            self._server = self.module.RelayedServer(self.uri, lambda: token(self.uri),
                                                     request_handler=self._async_handler)
            asyncio.run_coroutine_threadsafe(self._server.start(), loop).result(WAIT)
        else:
            self._server = self.module.RelayedServer(self.uri, lambda: token(self.uri),
                                                     request_handler=self._sync_handler)
            self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._server.close(), self._loop).result(WAIT)
            self._loop.call_soon_threadsafe(self._loop.stop)
            assert self._thread is not None
            self._thread.join(WAIT)
            self._loop.close()
        else:
            self._server.close()

    def call(self, fn: Callable[[], T]) -> T:
        """Run a blocking sender; a gevent listener lives in this thread, so keep its hub
        turning while the sender runs elsewhere."""
        if self.name != "gevent":
            return fn()
        rt = self.module.RUNTIME
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            future = pool.submit(fn)
            deadline = rt.monotonic() + 2 * WAIT
            while not future.done():
                assert rt.monotonic() < deadline, "the sender did not finish in time"
                rt.sleep(0.005)
            return future.result()


@pytest.fixture(scope="module")
def relay() -> Iterator[ThreadedEmulator]:
    with ThreadedEmulator() as emulator:
        yield emulator


@pytest.fixture(params=ADAPTERS)
def listener(request: pytest.FixtureRequest, relay: ThreadedEmulator) -> Iterator[Running]:
    with Running(request.param, relay) as running:
        yield running


def http_url(relay: ThreadedEmulator, tail: str) -> str:
    return f"http://127.0.0.1:{relay.port}/myhc{tail}"


def sas(relay: ThreadedEmulator) -> str:
    return token(f"http://127.0.0.1:{relay.port}/myhc")


def curl(relay: ThreadedEmulator, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([curl_binary(), "-sS", "--max-time", str(WAIT), "-H",
                           f"ServiceBusAuthorization: {sas(relay)}", *args],
                          capture_output=True, timeout=WAIT + 5, check=False)


def headers_of(raw: bytes) -> tuple[int, list[tuple[str, str]]]:
    """Status and headers from ``curl -i`` / ``-D -`` output (the last response head)."""
    head = raw.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    pairs = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":")
                                                             for line in head[1:])]
    return status, pairs


# -- curl ----------------------------------------------------------------------------------------


def test_curl_get_with_query_and_cookies(listener: Running, relay: ThreadedEmulator) -> None:
    done = listener.call(lambda: curl(relay, "-i", http_url(relay, "/a/b?x=1&sb-hc-id=9&y=2")))
    assert done.returncode == 0, done.stderr
    status, headers = headers_of(done.stdout)
    got = dict(headers)
    assert status == 200 and done.stdout.endswith(b"\r\n\r\nok")
    assert (got["x-method"], got["x-path"], got["x-query"]) == ("GET", "/a/b", "x=1&y=2")
    # Two Set-Cookie headers again at the sender (the control message joins them with ", ").
    assert [v for k, v in headers if k == "set-cookie"] == [
        "a=1; Path=/", "b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT"]


def test_curl_uploads_100_kib_and_heads(listener: Running, relay: ThreadedEmulator,
                                        tmp_path: Path) -> None:
    data = pattern(100 * 1024)
    (tmp_path / "body").write_bytes(data)
    done = listener.call(lambda: curl(relay, "-i", "--data-binary", f"@{tmp_path / 'body'}",
                                      http_url(relay, "/up")))
    assert done.returncode == 0, done.stderr
    got = dict(headers_of(done.stdout)[1])
    assert (got["x-method"], got["x-length"]) == ("POST", str(len(data)))
    assert got["x-sha256"] == hashlib.sha256(data).hexdigest()
    head = listener.call(lambda: curl(relay, "-I", http_url(relay, "/h")))
    assert head.returncode == 0, head.stderr
    status, headers = headers_of(head.stdout)
    assert status == 200 and dict(headers)["x-method"] == "HEAD"


def test_curl_downloads_8_mib_streamed(listener: Running, relay: ThreadedEmulator) -> None:
    done = listener.call(lambda: curl(relay, http_url(relay, "/big")))
    assert done.returncode == 0, done.stderr
    assert len(done.stdout) == BIG
    assert hashlib.sha256(done.stdout).digest() == hashlib.sha256(pattern(BIG)).digest()


# -- Node ----------------------------------------------------------------------------------------


def node_send(relay: ThreadedEmulator, config: dict[str, Any]) -> dict[str, Any]:
    config = {"timeoutMs": int(WAIT * 1000), **config,
              "headers": {"ServiceBusAuthorization": sas(relay), **config.get("headers", {})}}
    done = subprocess.run([node_binary("hyco-https"), str(NODE_DIR / "http_sender.js"),
                           json.dumps(config)], capture_output=True, timeout=WAIT + 5,
                          check=False, cwd=NODE_DIR)
    lines = done.stdout.decode().strip().splitlines()
    assert lines, done.stderr.decode()
    result: dict[str, Any] = json.loads(lines[-1])
    assert "error" not in result, result
    return result


def test_node_chunked_upload_and_204(listener: Running, relay: ThreadedEmulator) -> None:
    size = 1 << 20
    result = listener.call(lambda: node_send(relay, {
        "url": http_url(relay, "/n?z=3"), "method": "POST", "bodySize": size, "chunked": True}))
    assert result["status"] == 200 and result["body"] == "ok"
    assert result["headers"]["x-length"] == str(size)
    assert result["headers"]["x-sha256"] == hashlib.sha256(pattern(size)).hexdigest()
    assert result["headers"]["x-query"] == "z=3"
    empty = listener.call(lambda: node_send(relay, {"url": http_url(relay, "/nocontent")}))
    assert empty["status"] == 204 and empty["bodyLength"] == 0


# -- Python ----------------------------------------------------------------------------------------


def test_python_8_mib_upload_and_keep_alive(listener: Running, relay: ThreadedEmulator) -> None:
    data = pattern(BIG)

    def run() -> list[tuple[int, dict[str, str], bytes]]:
        conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=WAIT)
        out = []
        try:
            for method, tail, body in (("PUT", "/p", data), ("GET", "/g", None),
                                       ("POST", "/small", b"0123456789")):
                conn.request(method, f"/myhc{tail}", body=body,
                             headers={"ServiceBusAuthorization": sas(relay)})
                response = conn.getresponse()
                out.append((response.status, dict(response.getheaders()), response.read()))
        finally:
            conn.close()
        return out

    results = listener.call(run)
    assert [(status, body) for status, _, body in results] == [(200, b"ok")] * 3
    assert results[0][1]["X-Sha256"] == hashlib.sha256(data).hexdigest()
    assert results[2][1]["X-Length"] == "10"


def test_streamed_response_reaches_the_sender_before_the_handler_finishes(
        listener: Running, relay: ThreadedEmulator) -> None:
    def run() -> bytes:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=WAIT) as sock:
            sock.sendall(f"GET /myhc/stream HTTP/1.1\r\nHost: x\r\nServiceBusAuthorization: "
                         f"{sas(relay)}\r\n\r\n".encode())
            seen = b""
            deadline = time.monotonic() + WAIT
            while b"first\n" not in seen:
                assert time.monotonic() < deadline, seen
                chunk = sock.recv(65536)
                assert chunk, "closed before the first chunk"
                seen += chunk
            assert b"second" not in seen
            listener.gate.set()  # only now may the handler finish
            while not seen.endswith(b"0\r\n\r\n"):
                chunk = sock.recv(65536)
                assert chunk, "closed before the end"
                seen += chunk
            return seen

    raw = listener.call(run)
    assert b"text/event-stream" in raw and b"second\n" in raw


def test_sender_leaving_mid_upload_cancels_the_handler(listener: Running,
                                                       relay: ThreadedEmulator) -> None:
    def run() -> None:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=WAIT) as sock:
            sock.sendall(f"POST /myhc/up HTTP/1.1\r\nHost: x\r\nServiceBusAuthorization: "
                         f"{sas(relay)}\r\nContent-Length: {BIG}\r\n\r\n".encode()
                         + b"u" * 200_000)
            time.sleep(0.3)
        assert listener.cancelled.wait(WAIT), "the handler never saw the cancellation"

    listener.call(run)
