"""The live web view in a real browser: headless Chromium on the emulator's ``/``.

Chromium (Debian's ``chromium`` package; ``make test`` installs it when missing) is driven over
the DevTools protocol by the small client below (a WebSocket from ``websockets``), on loopback
only. The page loads, shows its stream connected and the empty state; then a listener and a
sender open a pair and exchange bytes, a Web PubSub client joins a group, and a sender with a bad
token (on a hybrid connection whose name is HTML) is refused: the page shows each of them
without being reloaded, the hostile name as text. A screenshot is saved as ``webview.png`` in
the test's temporary folder; once the pair closes, the page shows that too. Ages are drawn by
the page from the snapshot's timestamps and count up by themselves. A page refused beyond the
watcher cap (503) says it retries, and connects once a watcher has left.

The browser is looked for as ``$HYCO_CHROMIUM``, ``chromium`` or ``chromium-browser``; a missing
one fails the test (it is not skipped).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from hyco_proto import __version__
from hyco_proto.adapters.threads import RelayedServer, WebPubSubClient, relayed_connect
from hyco_proto.service.webview import MAX_WATCHERS
from hyco_proto.testing import Relay, WebPubSub

TIMEOUT = 10.0  # every wait of this test
ROLES = ["webpubsub.joinLeaveGroup"]


def chromium_binary() -> str:
    configured = os.environ.get("HYCO_CHROMIUM")
    if configured:
        if not os.access(configured, os.X_OK):
            pytest.fail(f"HYCO_CHROMIUM={configured!r} is not an executable", pytrace=False)
        return configured
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("the web view test needs headless Chromium and found none: `make test` installs "
                "Debian's package (apt-get install chromium); or set HYCO_CHROMIUM to the "
                "browser's path", pytrace=False)


class DevTools:
    """A DevTools protocol client on one WebSocket, one flattened page session."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._id = 0
        self.session: str | None = None

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             page: bool = True) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if page and self.session is not None:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + TIMEOUT
        while True:  # events of the session come in between: skipped
            reply = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply["result"]
                return result

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, check: Any, what: str) -> Any:
        """Evaluate ``expression`` until ``check(value)`` holds (at most TIMEOUT seconds)."""
        deadline = time.monotonic() + TIMEOUT
        # Until the page has loaded, its elements are missing: that is "not yet", not an error.
        guarded = f"(() => {{ try {{ return {expression}; }} catch (e) {{ return null; }} }})()"
        while True:
            value = self.evaluate(guarded)
            if value is not None and check(value):
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"the page did not show {what} within {TIMEOUT:g} s; it shows "
                            f"{value!r}")
            time.sleep(0.1)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    profile = tmp_path / "profile"
    args = [chromium_binary(), "--headless=new", "--remote-debugging-port=0",
            f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check",
            "--disable-gpu", "--disable-dev-shm-usage", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--no-proxy-server", "--password-store=basic",
            "--use-mock-keychain", "--window-size=1280,1100", "about:blank"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    with open(tmp_path / "chromium.log", "wb") as log:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        # Chromium writes its port and browser path there once it listens.
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + TIMEOUT
        while not (active.exists() and len(active.read_text().splitlines()) >= 2):
            if proc.poll() is not None or time.monotonic() > deadline:
                output = (tmp_path / "chromium.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"Chromium did not start its DevTools endpoint: {output}")
            time.sleep(0.05)
        port, path = active.read_text().splitlines()[:2]
        with connect(f"ws://127.0.0.1:{port}{path}", max_size=None, proxy=None,
                     open_timeout=TIMEOUT, compression=None) as ws:
            tools = DevTools(ws)
            target = tools.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            tools.session = tools.call("Target.attachToTarget", {"targetId": target,
                                                                 "flatten": True})["sessionId"]
            try:
                yield tools
            finally:
                # Already gone: the process is ended below either way.
                with contextlib.suppress(Exception):
                    tools.call("Browser.close", page=False)
    finally:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def rows(table: str) -> str:
    return (f'[...document.getElementById("{table}").tBodies[0].rows]'
            '.map(r => [...r.cells].map(c => c.textContent))')


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def refused_with_bad_token(port: int, hc: str) -> bytes:
    """A WebSocket sender with a token the relay cannot verify; the relay's answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(f"GET /$hc/{hc}?sb-hc-action=connect HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nServiceBusAuthorization: "
                     "SharedAccessSignature sr=x&sig=bad&se=99999999999&skn=nobody\r\n\r\n"
                     .encode())
        return sock.recv(4096)


def test_web_view_updates_live_in_chromium(browser: DevTools, relay: Relay,
                                           webpubsub: WebPubSub, tmp_path: Path) -> None:
    browser.call("Page.enable")
    browser.call("Page.navigate", {"url": f"http://127.0.0.1:{relay.port}/"})
    state = 'document.getElementById("state").textContent'
    browser.wait_for(state, lambda v: v == "connected", "its event stream connected")
    assert browser.evaluate('document.getElementById("version").textContent') == \
        f"hyco_proto {__version__}"
    browser.wait_for(rows("pairs"), lambda v: v == [["no relayed pairs"]], "no pairs")
    assert browser.evaluate(rows("refusals")) == [["no refusals"]]

    listen_uri, send_uri = relay.listen_uri("webview-demo"), relay.send_uri("webview-demo")
    with RelayedServer(listen_uri, relay.token(listen_uri)) as server:
        browser.wait_for(rows("hc"), lambda v: any(r[0] == "webview-demo" and r[1] == "1"
                                                   for r in v), "the listener")
        with relayed_connect(send_uri, relay.token(send_uri)) as sender:
            sender.send(b"x" * 2048)
            accepted = server.accept(timeout=TIMEOUT)
            assert accepted.recv(timeout=TIMEOUT) == b"x" * 2048
            accepted.send(b"y" * 1024)
            assert sender.recv(timeout=TIMEOUT) == b"y" * 1024
            pair = browser.wait_for(
                rows("pairs"), lambda v: len(v) == 1 and v[0][0] == "webview-demo"
                and v[0][3:5] == ["2.0 KiB", "1.0 KiB"], "the pair with its bytes")
            assert pair[0][1].startswith("127.0.0.1:") and pair[0][2].startswith("127.0.0.1:")
            # Ages come from timestamps; the page redraws them itself, once a second.
            assert re.fullmatch(r"\d+ s", pair[0][5]), pair[0][5]
            browser.wait_for(f"{rows('pairs')}[0][5]", lambda v: v != pair[0][5],
                             "the pair's age counting up")

            with WebPubSubClient(webpubsub.client_url("chat", user_id="alice",
                                                      roles=ROLES)) as client:
                client.join_group("room")
                browser.wait_for(rows("hubs"), lambda v: v == [["chat", "1", "room (1)"]],
                                 "the hub with its group")

                hostile = "<i>x</i>"
                answer = refused_with_bad_token(relay.port, hostile)
                assert answer.startswith(b"HTTP/1.1 401 ")
                refusals = browser.wait_for(
                    rows("refusals"), lambda v: len(v[0]) > 2 and v[0][2] == "401",
                    "the refusal")
                assert len(refusals) == 1
                refusal = refusals[0]
                assert refusal[3] == f"/$hc/{hostile}", "the name is shown as text"
                assert refusal[1].startswith("127.0.0.1:") and refusal[5] in refusal[4]
                assert browser.evaluate(
                    'document.querySelectorAll("tbody i, tbody img, tbody script").length') == 0

                shot = base64.b64decode(browser.call("Page.captureScreenshot",
                                                     {"format": "png"})["data"])
                (tmp_path / "webview.png").write_bytes(shot)
                width, height = png_size(shot)
                assert width >= 800 and height >= 600 and len(shot) > 20_000, (width, height)

    browser.wait_for(rows("pairs"), lambda v: v == [["no relayed pairs"]],
                     "the pair gone once closed")
    assert browser.evaluate(state) == "connected"


def test_a_refused_page_retries_until_a_stream_is_free(browser: DevTools, relay: Relay) -> None:
    """Beyond the watcher cap the stream is refused (503) and EventSource gives up; the page
    says so, counts down and opens it again once a watcher has left."""
    watchers = []
    try:
        for _ in range(MAX_WATCHERS):
            sock = socket.create_connection(("127.0.0.1", relay.port), timeout=TIMEOUT)
            watchers.append(sock)
            sock.sendall(b"GET /$events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")
        browser.call("Page.enable")
        browser.call("Page.navigate", {"url": f"http://127.0.0.1:{relay.port}/"})
        state = 'document.getElementById("state").textContent'
        shown = browser.wait_for(state, lambda v: v.startswith("disconnected — retrying in"),
                                 "that it retries")
        assert re.fullmatch(r"disconnected — retrying in [1-5] s", shown), shown
        watchers.pop().close()
        browser.wait_for(state, lambda v: v == "connected", "its stream connected on retry")
        browser.wait_for(rows("pairs"), lambda v: v == [["no relayed pairs"]], "a snapshot")
    finally:
        for sock in watchers:
            sock.close()
