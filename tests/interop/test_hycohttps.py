"""Microsoft's hyco-https@1.4.5 as the LISTENER behind our relay service's HTTP relaying.

``node/hycohttps_listener.js`` is a hyco-https ``createRelayedServer`` listener on
``ws://127.0.0.1:PORT/$hc/myhc`` that prints a JSON line for every request it sees (method, url,
headers, body length and SHA-256, and the request's / response's / rendezvous's close events).
Senders are plain HTTP clients, as with the real service (hybrid-connections-wire §1.3): Python's
``http.client`` (and a raw socket), Node's ``http`` module (``node/http_sender.js``) and ``curl``.
The relay forwards small requests on the listener's control channel and big or chunked ones
over a request rendezvous (§3.2); hyco-https buffers responses and moves those over 64 KiB to a
rendezvous of its own (§3.3). A raw Python listener covers the malformed response hyco-https
cannot produce.

One emulator (``http_timeout`` 10 s, so a hung exchange still ends inside ``TIMEOUT``) and one
hyco-https listener serve the module; the 504 test has its own emulator with a 1.5 s timeout.
Every request carries a marker in its query, so the listener's events are matched exactly.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from hyco_proto.adapters.asyncio import connect
from hyco_proto.sas import create_relay_token
from tests.interop import (
    KEY,
    KEY_NAME,
    NODE_DIR,
    TIMEOUT,
    Event,
    NodeProcess,
    ThreadedEmulator,
    node_binary,
)

pytestmark = pytest.mark.node

HC = "myhc"
LISTENER = NODE_DIR / "hycohttps_listener.js"
SENDER = NODE_DIR / "http_sender.js"
#: The shared emulator's response timeout (60 s in Azure): a hung exchange ends in a 504
#: well inside TIMEOUT, yet an 8 MiB body on a loaded machine has ample time.
HTTP_TIMEOUT = 10.0
#: The 504 test's emulator answers a silent listener after this long.
SHORT_TIMEOUT = 1.5
TIMEOUT_TEXT = ("The request was routed to the listener but the listener did not respond in "
                "the required time.")
KiB = 1024
MiB = 1024 * KiB


def pattern(size: int) -> bytes:
    """The bodies both Node scripts produce: the first ``size`` bytes of SHAKE256."""
    return hashlib.shake_256(b"hyco-pattern").digest(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def quote_token(token: str) -> str:
    """A token as an ``sb-hc-token`` query value."""
    return quote(token, safe="")


def marker() -> str:
    return uuid.uuid4().hex[:12]


class HycoHttpsListener(NodeProcess):
    """``node hycohttps_listener.js`` for hybrid connection ``hc`` on ``emulator``."""

    label = "hyco-https listener"

    def __init__(self, emulator: ThreadedEmulator, hc: str = HC) -> None:
        env = {"HYCO_RELAY": f"ws://127.0.0.1:{emulator.port}", "HYCO_KEY": KEY,
               "HYCO_KEY_NAME": KEY_NAME, "HYCO_HC": hc,
               # The watchdog outlives the module; teardown kills the process anyway.
               "HYCO_TIMEOUT_MS": str(int(TIMEOUT * 1000 * 10))}
        super().__init__(LISTENER, [], env=env, package="hyco-https")

    def find(self, name: str, where: Callable[[Event], bool],
             timeout: float = TIMEOUT) -> Event:
        """The first event ``name`` (seen so far or within ``timeout``) that ``where`` accepts;
        it looks at every event, however earlier waits consumed them."""
        deadline = time.monotonic() + timeout
        while True:
            for event in list(self.events):
                if event.get("event") == name and where(event):
                    return event
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.label}: no matching {name!r} event; events "
                                     f"{self.events!r}; stderr {self.stderr!r}")
            time.sleep(0.01)

    def request(self, mark: str, name: str = "request") -> Event:
        """The listener's ``request`` (body ended) or ``request-start`` event for ``mark``."""
        return self.find(name, lambda e: mark in e.get("url", ""))

    def saw(self, mark: str) -> bool:
        return any(mark in e.get("url", "") for e in self.events)

    def of(self, n: int) -> list[str]:
        """The names of request ``n``'s events so far."""
        return [e["event"] for e in self.events if e.get("n") == n]


def start_listener(emulator: ThreadedEmulator, hc: str = HC) -> HycoHttpsListener:
    listener = HycoHttpsListener(emulator, hc)
    try:
        listener.wait_event("listening")
        deadline = time.monotonic() + TIMEOUT
        while not any(h["name"] == hc and h["listeners"] == 1
                      for h in emulator.status()["hybrid_connections"]):
            assert time.monotonic() < deadline, emulator.status()
            time.sleep(0.02)
    except BaseException:
        listener.kill()
        raise
    return listener


@pytest.fixture(scope="module")
def relay() -> Iterator[ThreadedEmulator]:
    with ThreadedEmulator(http_timeout=HTTP_TIMEOUT) as emu:
        yield emu


@pytest.fixture(scope="module")
def listener(relay: ThreadedEmulator) -> Iterator[HycoHttpsListener]:
    process = start_listener(relay)
    try:
        yield process
    finally:
        process.stop()  # SIGTERM, then SIGKILL after a bound


def token_for(emu: ThreadedEmulator, hc: str = HC, key: str = KEY) -> str:
    return create_relay_token(f"http://127.0.0.1:{emu.port}/{hc}", KEY_NAME, key)


# -- senders -------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def send(emu: ThreadedEmulator, method: str, target: str, *, body: bytes | None = None,
         headers: dict[str, str] | None = None, token: bool = True,
         conn: http.client.HTTPConnection | None = None) -> Reply:
    """One request with Python's http.client (``conn`` to reuse a keep-alive connection)."""
    own = conn is None
    client = conn or http.client.HTTPConnection("127.0.0.1", emu.port, timeout=TIMEOUT)
    hc = target.lstrip("/").split("/")[0].split("?")[0]
    all_headers = {"ServiceBusAuthorization": token_for(emu, hc)} if token else {}
    all_headers.update(headers or {})
    try:
        client.request(method, target, body=body, headers=all_headers)
        response = client.getresponse()
        data = response.read()
        return Reply(response.status, response.reason, response.getheaders(), data)
    finally:
        if own:
            client.close()


def node_send(emu: ThreadedEmulator, config: dict[str, Any]) -> dict[str, Any]:
    """One request with Node's http module (``node/http_sender.js``); its JSON result."""
    node = node_binary()
    full: dict[str, Any] = {"timeoutMs": int(TIMEOUT * 1000)}
    full.update(config)
    full["url"] = f"http://127.0.0.1:{emu.port}{config['url']}"
    out = subprocess.run([node, str(SENDER), json.dumps(full)], cwd=NODE_DIR,
                         capture_output=True, text=True, timeout=TIMEOUT + 5, check=False)
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert isinstance(result, dict)
    return result


def curl_binary() -> str:
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is not installed (the interop tests drive it as a sender): install "
                    "it, e.g. `apt-get install curl`", pytrace=False)
    return curl


def curl(args: list[str], tmp_path: Path) -> tuple[int, list[tuple[str, str]], bytes]:
    """``curl -sS <args>``: status, response headers (in order) and body."""
    head, body = tmp_path / "curl-head.txt", tmp_path / "curl-body.bin"
    out = subprocess.run([curl_binary(), "-sS", "--max-time", str(int(TIMEOUT)),
                          "-D", str(head), "-o", str(body), *args],
                         capture_output=True, text=True, timeout=TIMEOUT + 5, check=False)
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr)
    lines = head.read_bytes().decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = [(k.strip(), v.strip()) for k, _, v in
               (line.partition(":") for line in lines[1:] if ":" in line)]
    return status, headers, body.read_bytes() if body.exists() else b""


def assert_serving(emu: ThreadedEmulator, listener: HycoHttpsListener) -> None:
    """A normal GET through the relay and the hyco-https listener still works."""
    mark = marker()
    reply = send(emu, "GET", f"/{HC}/hello?after={mark}")
    assert (reply.status, reply.body) == (200, f"hello /{HC}/hello?after={mark}".encode())
    assert listener.request(mark)["method"] == "GET"


# -- requests: methods, bodies, the control channel and the rendezvous ----------------------


def test_get_headers_via_and_no_credentials(relay: ThreadedEmulator,
                                            listener: HycoHttpsListener) -> None:
    mark = marker()
    reply = send(relay, "GET", f"/{HC}/hello/a/b?m={mark}",
                 headers={"X-Custom": "custom value", "User-Agent": "hyco-test/1"})
    assert reply.status == 200 and reply.reason == "OK"
    assert reply.body == f"hello /{HC}/hello/a/b?m={mark}".encode()
    assert reply.header("Content-Type") == "text/plain"
    assert reply.header("Content-Length") == str(len(reply.body))
    assert reply.header("Via") == "1.1 localhost"
    seen = listener.request(mark)
    assert seen["method"] == "GET" and seen["url"] == f"/{HC}/hello/a/b?m={mark}"
    assert seen["rendezvous"] is False  # small: on the control channel
    headers = seen["headers"]  # hyco-https lower-cases request header names
    assert headers["x-custom"] == "custom value" and headers["user-agent"] == "hyco-test/1"
    # The relay annotates Via, strips the token and the hop-by-hop headers (§3.2).
    assert headers["via"] == "1.1 localhost"
    assert "servicebusauthorization" not in headers
    assert "host" not in headers and "content-length" not in headers
    assert seen["bodyLength"] == 0


@pytest.mark.parametrize(("query", "expected"), [
    ("a=1&sb-hc-token=x&b=2", "?a=1&b=2"),
    ("sb-hc-id=abc&x=%20y&SB-HC-Other=1&p=%2B&sb-hc-undefined", "?x=%20y&p=%2B&sb-hc-undefined"),
    ("&&a=1&a=2&sb-hc-action=request&", "?&&a=1&a=2&"),
    ("sb-hc-token=x&sb-hc-id=y", ""),
    ("v=%e2%9c%93&sb-hc-id=1", "?v=%E2%9C%93"),  # escapes of non-ASCII bytes: upper-case
])
def test_sb_hc_query_parameters_are_stripped(relay: ThreadedEmulator,
                                             listener: HycoHttpsListener,
                                             query: str, expected: str) -> None:
    """§1.5: every ``sb-hc-xxx=`` segment goes (any case); a key without ``=``, empty segments,
    order and escapes stay; with nothing left the ``?`` goes too. The header token is used:
    ``sb-hc-token=x`` is not a valid token."""
    mark = marker()
    path = f"/{HC}/hello/{mark}"
    reply = send(relay, "GET", f"{path}?{query}")
    assert reply.status == 200, reply
    assert reply.body == f"hello {path}{expected}".encode()
    assert listener.request(mark)["url"] == path + expected


def test_token_in_query_and_authorization_header(relay: ThreadedEmulator,
                                                 listener: HycoHttpsListener) -> None:
    """``sb-hc-token`` alone authorizes (and is stripped); ``Authorization`` authorizes only
    when neither is there, and is then removed; otherwise it is the application's and passes."""
    token = token_for(relay)
    mark = marker()
    quoted = quote_token(token)
    reply = send(relay, "GET", f"/{HC}/hello?q={mark}&sb-hc-token={quoted}", token=False)
    assert reply.status == 200 and reply.body == f"hello /{HC}/hello?q={mark}".encode()
    assert "sb-hc-token" not in json.dumps(listener.request(mark))

    mark = marker()
    reply = send(relay, "GET", f"/{HC}/hello?auth={mark}", token=False,
                 headers={"Authorization": token})
    assert reply.status == 200
    assert "authorization" not in listener.request(mark)["headers"]

    mark = marker()
    reply = send(relay, "GET", f"/{HC}/hello?app={mark}",
                 headers={"Authorization": "Bearer app-token"})
    assert reply.status == 200
    headers = listener.request(mark)["headers"]
    assert headers["authorization"] == "Bearer app-token"
    assert "servicebusauthorization" not in headers


@pytest.mark.parametrize(("size", "rendezvous"), [(10, False), (100 * KiB, True),
                                                  (8 * MiB, True)])
def test_post_bodies_reach_the_listener(relay: ThreadedEmulator, listener: HycoHttpsListener,
                                        size: int, rendezvous: bool) -> None:
    """10 B on the control channel; 100 KiB and 8 MiB (over 64 KiB) via the rendezvous-only
    pointer, the body streamed on the rendezvous (§3.2). SHA-256 checked at the listener."""
    body = pattern(size)
    mark = marker()
    reply = send(relay, "POST", f"/{HC}/echo?m={mark}", body=body,
                 headers={"Content-Type": "application/octet-stream"})
    assert reply.status == 200, reply
    assert json.loads(reply.body) == {"length": size, "sha256": sha256(body)}
    seen = listener.request(mark)
    assert (seen["method"], seen["bodyLength"], seen["bodySha256"]) == ("POST", size,
                                                                         sha256(body))
    assert seen["rendezvous"] is rendezvous
    assert seen["headers"]["content-type"] == "application/octet-stream"
    if rendezvous:
        # The relay closes the request's rendezvous with 1000 once the response is complete.
        closed = listener.find("rendezvous-close", lambda e: e["n"] == seen["n"])
        assert closed["code"] == 1000 and closed["complete"] is True


@pytest.mark.parametrize(("size", "upload"), [(200 * KiB, 0), (8 * MiB, 0),
                                              (200 * KiB, 100 * KiB)])
def test_big_responses(relay: ThreadedEmulator, listener: HycoHttpsListener,
                       size: int, upload: int) -> None:
    """hyco-https buffers the response; past 64 KiB it opens a rendezvous with the request's
    address and writes the response there (§3.3). With a 100 KiB upload the request itself
    came on a rendezvous, and the response goes back on it. The sender gets every byte."""
    mark = marker()
    reply = send(relay, "POST" if upload else "GET", f"/{HC}/big?size={size}&m={mark}",
                 body=pattern(upload) if upload else None)
    assert reply.status == 200
    assert len(reply.body) == size and sha256(reply.body) == sha256(pattern(size))
    assert reply.header("Content-Type") == "application/octet-stream"
    assert reply.header("Via") == "1.1 localhost"
    seen = listener.request(mark)
    assert seen["rendezvous"] is bool(upload) and seen["bodyLength"] == upload


def test_head_and_204_then_the_connection_stays_usable(relay: ThreadedEmulator,
                                                       listener: HycoHttpsListener) -> None:
    """hyco-https answers HEAD and 204 with ``"body":false`` and then a stray empty binary
    message (§3.3 quirk 2); the relay ignores it: the keep-alive connection carries the next
    requests and their bodies intact."""
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=TIMEOUT)
    try:
        mark = marker()
        head = send(relay, "HEAD", f"/{HC}/hello?h={mark}", conn=conn)
        assert (head.status, head.body) == (200, b"")
        assert head.header("X-Head") == "yes" and head.header("Via") == "1.1 localhost"
        assert listener.request(mark)["method"] == "HEAD"
        sock = conn.sock
        empty = send(relay, "GET", f"/{HC}/nocontent?e={mark}", conn=conn)
        assert (empty.status, empty.reason, empty.body) == (204, "No Content", b"")
        assert empty.header("X-Empty") == "yes"
        assert empty.header("Content-Length") is None
        assert empty.header("Transfer-Encoding") is None
        after = send(relay, "GET", f"/{HC}/hello?after={mark}", conn=conn)
        assert (after.status, after.body) == (200, f"hello /{HC}/hello?after={mark}".encode())
        echo = send(relay, "POST", f"/{HC}/echo?p={mark}", body=b"0123456789", conn=conn)
        assert json.loads(echo.body)["sha256"] == sha256(b"0123456789")
        assert conn.sock is sock  # one connection throughout
    finally:
        conn.close()


def test_response_shapes_on_one_connection(relay: ThreadedEmulator,
                                           listener: HycoHttpsListener) -> None:
    """``res.end()`` with no data ("body":true and an empty binary message, §3.3 quirk 1), a
    custom status description, a 304 ("body":false and a stray empty message) and a body
    written in pieces (one fragmented binary message on the control channel), in turn on one
    keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=TIMEOUT)
    try:
        mark = marker()
        empty = send(relay, "GET", f"/{HC}/empty?m={mark}", conn=conn)
        assert (empty.status, empty.body, empty.header("Content-Length")) == (200, b"", "0")
        sock = conn.sock
        reason = send(relay, "GET", f"/{HC}/reason?m={mark}", conn=conn)
        assert (reason.status, reason.reason, reason.body) == (200, "Fine Thanks", b"reason")
        same = send(relay, "GET", f"/{HC}/notmodified?m={mark}", conn=conn)
        assert (same.status, same.body, same.header("ETag")) == (304, b"", '"v1"')
        assert same.header("Content-Length") is None
        pieces = send(relay, "GET", f"/{HC}/pieces?size=20000&m={mark}", conn=conn)
        assert pieces.status == 200 and pieces.body == pattern(20000)
        assert pieces.header("Content-Length") == "20000"
        assert conn.sock is sock
    finally:
        conn.close()
    assert_serving(relay, listener)


@pytest.mark.parametrize(("method", "body"), [("PUT", b"put body"), ("PATCH", b"{}"),
                                              ("DELETE", None), ("OPTIONS", None)])
def test_other_methods(relay: ThreadedEmulator, listener: HycoHttpsListener, method: str,
                       body: bytes | None) -> None:
    mark = marker()
    reply = send(relay, method, f"/{HC}/echo?m={mark}", body=body)
    assert reply.status == 200
    assert json.loads(reply.body) == {"length": len(body or b""),
                                      "sha256": sha256(body or b"")}
    seen = listener.request(mark)
    assert (seen["method"], seen["bodyLength"]) == (method, len(body or b""))


def test_set_cookie_and_other_response_headers(relay: ThreadedEmulator,
                                               listener: HycoHttpsListener) -> None:
    mark = marker()
    reply = send(relay, "GET", f"/{HC}/cookies?m={mark}")
    assert (reply.status, reply.body) == (200, b"cookies")
    # The listener set ['a=1; Path=/', 'b=2; HttpOnly']: hyco-https puts only the FIRST value of
    # an array header in responseHeaders (§3.3, §5.6.14), so one Set-Cookie arrives. The relay
    # passes on what it got.
    assert reply.all("Set-Cookie") == ["a=1; Path=/"]
    assert reply.header("X-Custom") == "custom value"
    assert reply.header("Cache-Control") == "no-store"
    assert reply.header("Content-Type") == "text/plain; charset=utf-8"
    assert reply.header("Via") == "1.1 localhost"
    # hyco-https lower-cases response header names; HTTP header names are case-insensitive.
    names = [k for k, _ in reply.headers]
    assert "set-cookie" in names and "x-custom" in names


def test_write_head_201(relay: ThreadedEmulator, listener: HycoHttpsListener) -> None:
    mark = marker()
    reply = send(relay, "POST", f"/{HC}/created?m={mark}", body=b"{}")
    assert (reply.status, reply.reason, reply.body) == (201, "Created", b'{"id":1}')
    assert reply.header("Location") == f"/{HC}/items/1"
    assert reply.header("X-Created") == "yes"
    assert reply.header("Content-Type") == "application/json"
    assert reply.header("Content-Length") == "8"


def test_keep_alive_two_requests_on_one_connection(relay: ThreadedEmulator,
                                                   listener: HycoHttpsListener) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=TIMEOUT)
    try:
        mark = marker()
        first = send(relay, "GET", f"/{HC}/hello?one={mark}", conn=conn)
        sock = conn.sock
        assert sock is not None
        local = sock.getsockname()
        second = send(relay, "POST", f"/{HC}/echo?two={mark}", body=pattern(100 * KiB),
                      conn=conn)
        assert first.status == 200 and first.header("Connection") is None
        assert second.status == 200
        assert json.loads(second.body)["sha256"] == sha256(pattern(100 * KiB))
        assert conn.sock is sock and sock.getsockname() == local
        assert listener.request(f"one={mark}")["method"] == "GET"
        assert listener.request(f"two={mark}")["rendezvous"] is True
    finally:
        conn.close()


# -- other senders ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [10, 1 * MiB])
def test_node_chunked_post_goes_via_rendezvous(relay: ThreadedEmulator,
                                               listener: HycoHttpsListener, size: int) -> None:
    """Node's http sends a body written in pieces with no Content-Length as chunked: the relay
    cannot know its size, so it uses the rendezvous (§3.2) even for 10 bytes."""
    mark = marker()
    result = node_send(relay, {"url": f"/{HC}/echo?m={mark}", "method": "POST",
                               "chunked": True, "bodySize": size,
                               "headers": {"ServiceBusAuthorization": token_for(relay)}})
    assert result["status"] == 200, result
    assert json.loads(result["body"]) == {"length": size, "sha256": sha256(pattern(size))}
    seen = listener.request(mark)
    assert seen["rendezvous"] is True
    assert (seen["bodyLength"], seen["bodySha256"]) == (size, sha256(pattern(size)))
    assert "transfer-encoding" not in seen["headers"]


def test_node_sender_big_response_and_201(relay: ThreadedEmulator,
                                          listener: HycoHttpsListener) -> None:
    auth = {"ServiceBusAuthorization": token_for(relay)}
    result = node_send(relay, {"url": f"/{HC}/big?size={200 * KiB}&m={marker()}",
                               "headers": auth})
    assert result["status"] == 200
    assert result["bodyLength"] == 200 * KiB
    assert result["bodySha256"] == sha256(pattern(200 * KiB))
    assert result["headers"]["via"] == "1.1 localhost"
    created = node_send(relay, {"url": f"/{HC}/created?m={marker()}", "method": "POST",
                                "bodySize": 10, "headers": auth})
    assert (created["status"], created["statusMessage"]) == (201, "Created")
    assert created["headers"]["location"] == f"/{HC}/items/1"
    assert created["body"] == '{"id":1}'


def test_curl_sender(relay: ThreadedEmulator, listener: HycoHttpsListener,
                     tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{relay.port}/{HC}"
    token = token_for(relay)
    # GET, the token in the query; repeated request headers arrive comma-joined (§3.2).
    mark = marker()
    status, headers, body = curl([f"{base}/hello?c={mark}&sb-hc-token={quote_token(token)}",
                                  "-H", "X-Repeat: one", "-H", "X-Repeat: two"], tmp_path)
    assert (status, body) == (200, f"hello /{HC}/hello?c={mark}".encode())
    assert ("Via", "1.1 localhost") in headers
    seen = listener.request(mark)
    assert seen["headers"]["x-repeat"] == "one, two"
    assert seen["headers"]["user-agent"].startswith("curl/")
    # POST 100 KiB from a file: the rendezvous path.
    upload = tmp_path / "upload.bin"
    upload.write_bytes(pattern(100 * KiB))
    mark = marker()
    status, _, body = curl([f"{base}/echo?c={mark}", "--data-binary", f"@{upload}",
                            "-H", f"ServiceBusAuthorization: {token}",
                            "-H", "Content-Type: application/octet-stream"], tmp_path)
    assert status == 200
    assert json.loads(body) == {"length": 100 * KiB, "sha256": sha256(pattern(100 * KiB))}
    assert listener.request(mark)["rendezvous"] is True
    # HEAD (curl -I; curl writes the header block as its output): curl reads no body and
    # returns at once, though the relay frames the HEAD response as chunked (it has no length).
    mark = marker()
    status, headers, _ = curl(["-I", f"{base}/hello?c={mark}",
                               "-H", f"ServiceBusAuthorization: {token}"], tmp_path)
    assert status == 200
    assert ("x-head", "yes") in headers and ("Via", "1.1 localhost") in headers
    assert listener.request(mark)["method"] == "HEAD"


# -- failures: the relay answers, and keeps serving -----------------------------------------


@pytest.mark.parametrize("token", ["wrong-key", "none"])
def test_bad_token_is_401_and_never_reaches_the_listener(
        relay: ThreadedEmulator, listener: HycoHttpsListener, token: str) -> None:
    mark = marker()
    before = relay.status()["counters"]["auth_failures"]
    headers = {"ServiceBusAuthorization": token_for(relay, key="not-the-key")} \
        if token == "wrong-key" else {}
    reply = send(relay, "GET", f"/{HC}/hello?bad={mark}", token=False, headers=headers)
    assert reply.status == 401, reply
    assert relay.status()["counters"]["auth_failures"] == before + 1
    # The listener handles requests in order: it has seen the next one, never this one.
    assert_serving(relay, listener)
    assert not listener.saw(f"bad={mark}")


def test_no_listener_is_502(relay: ThreadedEmulator, listener: HycoHttpsListener) -> None:
    reply = send(relay, "GET", "/nobody-listens/hello")
    assert reply.status == 502
    assert "no listener" in reply.reason and "nobody-listens" in reply.reason
    assert_serving(relay, listener)


def test_silent_listener_is_504() -> None:
    with ThreadedEmulator(http_timeout=SHORT_TIMEOUT) as emu:
        silent = start_listener(emu)
        try:
            mark = marker()
            started = time.monotonic()
            reply = send(emu, "GET", f"/{HC}/silent?m={mark}")
            elapsed = time.monotonic() - started
            assert reply.status == 504
            assert reply.reason == TIMEOUT_TEXT
            assert TIMEOUT_TEXT in reply.body.decode()
            assert SHORT_TIMEOUT - 0.2 <= elapsed < TIMEOUT
            assert silent.request(mark)["method"] == "GET"  # it did reach the listener
            assert_serving(emu, silent)
        finally:
            silent.stop()


def test_sender_leaving_mid_upload_cancels_the_rendezvous(
        relay: ThreadedEmulator, listener: HycoHttpsListener) -> None:
    """A sender that disconnects halfway through an 8 MiB upload: the relay closes the
    request's rendezvous with 1001 (§3.3 cancellation). hyco-https sees that close on the
    rendezvous WebSocket (req.socket) and emits 'close' on the response; it never emits
    'aborted' or 'close' on the request (its IncomingMessage has no code that would: the
    body is delivered only as one whole WebSocket message, which never completes)."""
    mark = marker()
    token = token_for(relay)
    with socket.create_connection(("127.0.0.1", relay.port), timeout=TIMEOUT) as sock:
        sock.sendall((f"POST /{HC}/hold?abort={mark} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"ServiceBusAuthorization: {token}\r\nContent-Length: {8 * MiB}\r\n"
                      "\r\n").encode())
        chunk = pattern(64 * KiB)
        for _ in range(16):  # 1 MiB of the 8
            sock.sendall(chunk)
        start = listener.request(mark, "request-start")
        assert start["rendezvous"] is True
        # SO_LINGER 0: the close is a reset, as when a client dies.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    n = start["n"]
    closed = listener.find("rendezvous-close", lambda e: e["n"] == n)
    assert closed["code"] == 1001, closed
    assert "sender went away" in closed["reason"]
    assert closed["complete"] is False and closed["received"] == 0
    listener.find("res-close", lambda e: e["n"] == n)
    assert "req-aborted" not in listener.of(n) and "request" not in listener.of(n)
    # The relay dropped the exchange: no sender connection or rendezvous left behind.
    deadline = time.monotonic() + TIMEOUT
    while True:
        connections = relay.status()["connections"]
        if not connections.get("http") and not connections.get("request"):
            break
        assert time.monotonic() < deadline, connections
        time.sleep(0.02)
    assert_serving(relay, listener)


def test_malformed_response_is_502_and_the_relay_keeps_serving(
        relay: ThreadedEmulator, listener: HycoHttpsListener) -> None:
    """hyco-https never sends a bad response, so a raw Python listener (our plain WebSocket
    client on the listen URL) answers with ``"statusCode":"abc"``: the sender gets 502, the
    control channel stays up and answers the next request."""
    hc = "rawhc"
    listen_url = f"ws://127.0.0.1:{relay.port}/$hc/{hc}?sb-hc-action=listen"
    token = create_relay_token(listen_url, KEY_NAME, KEY)

    def get(path: str) -> Reply:
        return send(relay, "GET", path)  # with a token for rawhc

    async def scenario() -> tuple[Reply, Reply]:
        async with connect(listen_url, headers={"ServiceBusAuthorization": token}) as ws:
            bad = asyncio.create_task(asyncio.to_thread(get, f"/{hc}/bad"))
            request = json.loads(await ws.recv(timeout=TIMEOUT))["request"]
            assert request["requestTarget"] == f"/{hc}/bad" and request["body"] is False
            await ws.send(json.dumps({"response": {"requestId": request["id"],
                                                   "statusCode": "abc"}}))
            bad_reply = await asyncio.wait_for(bad, TIMEOUT)
            good = asyncio.create_task(asyncio.to_thread(get, f"/{hc}/good"))
            request = json.loads(await ws.recv(timeout=TIMEOUT))["request"]
            assert request["requestTarget"] == f"/{hc}/good"
            await ws.send(json.dumps({"response": {
                "requestId": request["id"], "statusCode": 200,
                "responseHeaders": {"Content-Type": "text/plain"}, "body": True}}))
            await ws.send(b"fine")
            return bad_reply, await asyncio.wait_for(good, TIMEOUT)

    bad, good = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT * 2))
    assert bad.status == 502
    assert "malformed response" in bad.reason and "abc" in bad.reason
    # The same control channel carried the next request and its answer.
    assert (good.status, good.body) == (200, b"fine")
    assert_serving(relay, listener)
