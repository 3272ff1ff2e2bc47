"""Real applications behind a hybrid connection: a Starlette app through
``hyco_proto.adapters.asgi`` and a Flask app through ``hyco_proto.adapters.wsgi``, served via our
relay emulator and called with ``http.client`` like any web server (and once with
``hyco_proto.adapters.threads.relayed_request``).

Each test runs against both bridges (``served`` is parametrized); what only one of them has
(WebSockets, ``http.disconnect``, lifespan) is in ``test_asgi_bridge.py`` /
``test_wsgi_bridge.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from hyco_proto.adapters.asgi import AsgiServer
from hyco_proto.adapters.asyncio import relayed_connect
from hyco_proto.adapters.wsgi import create_server
from hyco_proto.errors import ListenerRejectedError
from hyco_proto.testing import Relay
from tests.adapters import http_apps
from tests.adapters.app_client import (
    WAIT,
    LoopThread,
    Reply,
    call,
    connection,
    listen_uri,
    read_until,
    send_headers,
    token,
)

HC = "apps"
MiB = 1024 * 1024


@pytest.fixture
def relay(relay_session: Relay) -> Relay:
    """The session's emulator (hyco_proto.testing, our pytest plugin)."""
    return relay_session


@dataclass
class Served:
    kind: str
    port: int
    gates: http_apps.Gates

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> Reply:
        return call(self.port, HC, method, path, body, headers)


@pytest.fixture(params=["asgi", "wsgi"])
def served(request: pytest.FixtureRequest, relay: Relay) -> Iterator[Served]:
    gates = http_apps.reset()
    uri = listen_uri(relay.port, HC)
    if request.param == "asgi":
        with LoopThread() as loop:
            async def make() -> AsgiServer:
                return AsgiServer(http_apps.asgi_app, uri, token(uri))
            server = loop.run(make())
            loop.run(server.start())
            try:
                yield Served("asgi", relay.port, gates)
            finally:
                gates.release.set()
                loop.run(server.close(), timeout=3 * WAIT)
    else:
        wsgi = create_server(http_apps.wsgi_app, uri, token(uri))
        with wsgi:
            try:
                yield Served("wsgi", relay.port, gates)
            finally:
                gates.release.set()


def test_get(served: Served) -> None:
    reply = served.call("GET", "/")
    assert (reply.status, reply.reason, reply.body) == (200, "OK", b"hello")
    # Starlette's PlainTextResponse, Flask's default for a str.
    expected = "text/plain" if served.kind == "asgi" else "text/html"
    assert reply.header("content-type") == f"{expected}; charset=utf-8"
    assert reply.header("transfer-encoding") is None  # whole: the relay sent its length
    assert reply.header("content-length") == "5"


def test_path_and_query_mapping(served: Served) -> None:
    reply = served.call("GET", "/echo/caf%C3%A9/a%20b?x=1&y=%C3%A9&x=2",
                        headers={"X-Custom": "v1", "Accept": "application/json"})
    assert reply.status == 200, reply
    seen = json.loads(reply.body)
    assert seen["rest"] == "café/a b"
    assert seen["args"]["y"] == "é"
    if served.kind == "asgi":
        assert seen["path"] == "/echo/café/a b"
        assert seen["raw_path"] == "/echo/caf%C3%A9/a%20b"
        assert seen["query"] == "x=1&y=%C3%A9&x=2"
        assert seen["root_path"] == ""
        assert seen["method"] == "GET"
        assert seen["scheme"] == "http"
        assert seen["http_version"] == "1.1"
        headers = dict(seen["headers"])
        assert headers["x-custom"] == "v1"
        assert headers["accept"] == "application/json"
        assert all(name == name.lower() for name, _ in seen["headers"])
        assert "servicebusauthorization" not in headers  # the relay keeps the token
        assert seen["server"] == ["127.0.0.1", served.port]
        assert seen["client"][0] == "127.0.0.1" and seen["client"][1] > 0
    else:
        assert seen["PATH_INFO"] == "/echo/café/a b".encode().decode("latin-1")
        assert seen["SCRIPT_NAME"] == ""
        assert seen["QUERY_STRING"] == "x=1&y=%C3%A9&x=2"
        assert seen["REQUEST_METHOD"] == "GET"
        assert seen["SERVER_NAME"] == "127.0.0.1"
        assert seen["SERVER_PORT"] == str(served.port)
        assert seen["SERVER_PROTOCOL"] == "HTTP/1.1"
        assert seen["wsgi.url_scheme"] == "http"
        assert seen["RAW_URI"] == "/echo/caf%C3%A9/a%20b?x=1&y=%C3%A9&x=2"
        assert seen["REMOTE_ADDR"] == "127.0.0.1" and int(seen["REMOTE_PORT"]) > 0
        assert seen["http"]["HTTP_X_CUSTOM"] == "v1"
        assert "HTTP_SERVICEBUSAUTHORIZATION" not in seen["http"]


def test_hybrid_connection_root_is_the_app_root(served: Served) -> None:
    # http://ns/apps (no slash) and http://ns/apps/ both reach the app's "/".
    assert served.call("GET", "").body == b"hello"
    assert served.call("GET", "/").body == b"hello"


@pytest.mark.parametrize("size", [10, 100 * 1024, 8 * MiB], ids=["10B", "100KiB", "8MiB"])
def test_post_body_sha256(served: Served, size: int) -> None:
    body = os.urandom(size)
    reply = served.call("POST", "/sha", body, {"Content-Type": "application/octet-stream"})
    assert reply.status == 200, reply
    assert json.loads(reply.body) == {"size": size,
                                      "sha256": hashlib.sha256(body).hexdigest()}


def test_post_form_content_type(served: Served) -> None:
    reply = served.call("POST", "/echo/form", b"a=1&b=2",
                        {"Content-Type": "application/x-www-form-urlencoded"})
    seen = json.loads(reply.body)
    if served.kind == "wsgi":
        assert seen["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
        assert seen["body"] == "a=1&b=2"
    else:
        assert dict(seen["headers"])["content-type"] == "application/x-www-form-urlencoded"


def test_8mib_response(served: Served) -> None:
    size = 8 * MiB
    reply = served.call("GET", f"/big?size={size}")
    assert reply.status == 200
    assert len(reply.body) == size
    assert hashlib.sha256(reply.body).digest() == hashlib.sha256(
        http_apps.pattern(size)).digest()


def test_head(served: Served) -> None:
    reply = served.call("HEAD", "/big?size=1000")
    assert reply.status == 200
    assert reply.body == b""
    assert reply.header("content-type") == "application/octet-stream"
    # The size a GET would get, when the app says it (the listener keeps it for a HEAD).
    assert reply.header("content-length") == "1000"


def test_204(served: Served) -> None:
    reply = served.call("GET", "/nocontent")
    assert (reply.status, reply.body) == (204, b"")


def test_two_set_cookies(served: Served) -> None:
    reply = served.call("GET", "/cookies")
    assert reply.status == 200 and reply.body == b"cookies"
    # The relay's response headers are a JSON object (one value per name: the listener joins
    # them with ", "); the emulator splits Set-Cookie back into one header per cookie.
    cookies = reply.header_all("set-cookie")
    assert len(cookies) == 2, cookies
    assert "a=1" in cookies[0] and "b=2" in cookies[1] and "Path=/x" in ", ".join(cookies)


def test_502_from_the_app_goes_out_as_500_with_its_body(served: Served) -> None:
    # Azure Relay keeps 502 and 504 for itself; the app's body still reaches the sender.
    reply = served.call("GET", "/upstream")
    assert (reply.status, reply.body) == (500, b"upstream down\n")


def test_app_exception_is_500(served: Served) -> None:
    reply = served.call("GET", "/boom")
    assert reply.status == 500
    # ... and the listener goes on serving.
    assert served.call("GET", "/").body == b"hello"


def test_streamed_response_first_chunk_before_the_app_finishes(served: Served) -> None:
    conn = connection(served.port)
    try:
        conn.request("GET", f"/{HC}/stream", headers=send_headers(served.port, HC))
        response = conn.getresponse()
        assert response.status == 200
        first = read_until(response, b"first\n")
        assert first == b"first\n"  # the app is still waiting for the release
        assert not served.gates.release.is_set()
        served.gates.release.set()
        rest = response.read()
        assert first + rest == b"first\nsecond released=1\n"
    finally:
        conn.close()


def test_server_sent_events(served: Served) -> None:
    reply = served.call("GET", "/sse")
    assert reply.status == 200
    assert (reply.header("content-type") or "").startswith("text/event-stream")
    assert reply.body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


def test_sender_leaving_a_stream_stops_the_app(served: Served) -> None:
    conn = connection(served.port)
    try:
        conn.request("GET", f"/{HC}/forever", headers=send_headers(served.port, HC))
        response = conn.getresponse()
        assert read_until(response, b"data: 1\n\n").startswith(b"data: 0\n\n")
    finally:
        conn.close()  # the sender goes away mid-stream
    # The app is stopped: no event more for 0.3 s (15 events' time) long before the end.
    gates = served.gates
    deadline = time.monotonic() + WAIT
    last, since = gates.produced, time.monotonic()
    while time.monotonic() - since < 0.3:
        assert time.monotonic() < deadline, "the app went on streaming"
        time.sleep(0.02)
        if gates.produced != last:
            last, since = gates.produced, time.monotonic()
    assert gates.produced < http_apps.FOREVER / 2


def test_relayed_request_sender(served: Served) -> None:
    """hyco_proto's own sender: a chunked upload (an iterable body, no Content-Length) and a
    streamed download read chunk by chunk."""
    from hyco_proto.adapters.threads import relayed_request

    pieces = [os.urandom(100_000) for _ in range(5)]
    uri = f"http://127.0.0.1:{served.port}/{HC}/sha"
    with relayed_request("POST", uri, token(uri), body=iter(pieces), timeout=WAIT) as response:
        assert response.status == 200
        assert json.loads(response.read()) == {
            "size": 500_000, "sha256": hashlib.sha256(b"".join(pieces)).hexdigest()}
    uri = f"http://127.0.0.1:{served.port}/{HC}/stream"
    with relayed_request("GET", uri, token(uri), timeout=WAIT) as response:
        chunks = response.stream()
        got = b""
        while b"\n" not in got:
            got += next(chunks)
        assert got == b"first\n" and not served.gates.release.is_set()
        served.gates.release.set()
        assert got + b"".join(chunks) == b"first\nsecond released=1\n"


def test_websocket_senders(served: Served) -> None:
    """ASGI runs the app's WebSocket route (test_asgi_bridge.py has more); WSGI has none and
    turns senders away with 404."""
    uri = f"ws://127.0.0.1:{served.port}/$hc/{HC}/ws"

    async def talk() -> object:
        async with relayed_connect(uri, token(uri), open_timeout=WAIT) as ws:
            await ws.send("x")
            return await ws.recv(WAIT)

    if served.kind == "asgi":
        assert asyncio.run(talk()) == "echo:x"
    else:
        with pytest.raises(ListenerRejectedError) as info:
            asyncio.run(talk())
        assert info.value.status == 404


def test_concurrent_requests(served: Served) -> None:
    from tests.adapters.harness import parallel

    bodies = [os.urandom(1000 + i) for i in range(16)]
    replies = parallel([lambda b=b: served.call("POST", "/sha", b) for b in bodies])
    for body, reply in zip(bodies, replies, strict=True):
        assert json.loads(reply.body)["sha256"] == hashlib.sha256(body).hexdigest()
