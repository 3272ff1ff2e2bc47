"""Helpers for the interop tests against Microsoft's Node clients (``tests/interop/node``).

``ThreadedEmulator`` runs our relay service (``RelayServiceServer``, port 0) on its own event
loop in a background thread, so tests can run Node processes and our asyncio clients against it
and read its counters. ``NodePeer`` runs ``node/hycows_peer.js`` and collects its JSON event
lines (``NodeProcess`` does the same for any script in ``node/``). Node or the npm packages
missing is a test *failure* telling to run ``make test``: a missing interop setup must never
pass as skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest

from hyco_proto.adapters.asyncio import RelayServiceServer
from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY, ServiceConfig
from hyco_proto.service.router import RelayService

NODE_DIR = Path(__file__).resolve().parent / "node"
PEER = NODE_DIR / "hycows_peer.js"
KEY_NAME = DEFAULT_RULE_NAME
KEY = DEVELOPMENT_KEY
#: Upper bound for any single wait in these tests (and for each Node process).
TIMEOUT = 20.0

Event = dict[str, Any]
P = TypeVar("P", bound="NodeProcess")


def node_binary(package: str = "hyco-ws") -> str:
    """The ``node`` executable, or a failure that says to run ``make test`` (also when the npm
    ``package`` is not installed under ``node/node_modules``)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is not installed: install Node 18+ and run `make test` (it runs "
                    f"`npm install` in {NODE_DIR})", pytrace=False)
    if not (NODE_DIR / "node_modules" / package / "index.js").is_file():
        pytest.fail(f"{package} is not installed under tests/interop/node/node_modules: run "
                    f"`make test` (or `make node`, which runs `npm install` in {NODE_DIR})",
                    pytrace=False)
    return node


class ThreadedEmulator:
    """Our relay service on 127.0.0.1 (a free port), served from a background thread."""

    def __init__(self, config: ServiceConfig | None = None, *,
                 ssl: Any = None, **service_options: Any) -> None:
        # service_options go to RelayService (e.g. http_timeout=2.0 for a short 504).
        self.service = RelayService(config, **service_options)
        self._ssl = ssl
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="emulator",
                                        daemon=True)
        self.server: RelayServiceServer | None = None

    def __enter__(self) -> ThreadedEmulator:
        self._thread.start()

        async def start() -> RelayServiceServer:
            server = RelayServiceServer(self.service, port=0, ssl=self._ssl)
            await server.start()
            return server

        self.server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(TIMEOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.server is not None:
                asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(TIMEOUT)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(TIMEOUT)
            self._loop.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT`` (``wss://`` with TLS)."""
        assert self.server is not None
        return self.server.url

    def alive(self) -> bool:
        return self._thread.is_alive() and self._loop.is_running()

    def status(self, *, scheme: str = "http", context: Any = None) -> dict[str, Any]:
        """The emulator's ``/$status`` document, fetched over HTTP like any client would."""
        url = f"{scheme}://127.0.0.1:{self.port}/$status"
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            doc = json.loads(response.read())
        assert isinstance(doc, dict)
        return doc

    def run(self, fn: Callable[[], Any]) -> Any:
        """Call ``fn`` on the emulator's loop (to read service state safely)."""
        async def call() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(TIMEOUT)


class NodeProcess:
    """``node <script> <args…>`` in ``node/``: events are parsed JSON lines from its stdout."""

    label = "node process"

    def __init__(self, script: Path, args: list[str], *, env: dict[str, str] | None = None,
                 package: str = "hyco-ws") -> None:
        node = node_binary(package)
        process_env = dict(os.environ)
        process_env.update(env or {})
        self.popen = subprocess.Popen(
            [node, str(script), *args], cwd=NODE_DIR,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=process_env)
        self.events: list[Event] = []
        self.stderr: list[str] = []
        self._queue: queue.Queue[Event | None] = queue.Queue()
        assert self.popen.stdout is not None and self.popen.stderr is not None
        self._threads = [
            threading.Thread(target=self._read, args=(self.popen.stdout,), daemon=True),
            threading.Thread(target=self._read_err, args=(self.popen.stderr,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read(self, pipe: IO[bytes]) -> None:
        for raw in pipe:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "stdout", "line": line}
            self.events.append(event)
            self._queue.put(event)
        self._queue.put(None)

    def _read_err(self, pipe: IO[bytes]) -> None:
        for raw in pipe:
            self.stderr.append(raw.decode("utf-8", "replace").rstrip())

    def wait_event(self, name: str, *, timeout: float = TIMEOUT,
                   where: Callable[[Event], bool] | None = None) -> Event:
        """The next event called ``name`` (events before it are kept in ``events``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.label}: no {name!r} event within {timeout} s; "
                                     f"events {self.events!r}; stderr {self.stderr!r}")
            try:
                event = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if event is None:
                self._queue.put(None)
                raise AssertionError(f"{self.label} exited ({self.popen.poll()}) before a "
                                     f"{name!r} event; events {self.events!r}; "
                                     f"stderr {self.stderr!r}")
            if event.get("event") == name and (where is None or where(event)):
                return event

    def named(self, name: str) -> list[Event]:
        return [e for e in self.events if e.get("event") == name]

    def finish(self, timeout: float = TIMEOUT) -> list[Event]:
        """Wait for the process to exit by itself; all its events."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.label} did not exit within {timeout} s; events "
                                 f"{self.events!r}; stderr {self.stderr!r}") from None
        self._drain()
        assert self.popen.returncode == 0, (self.popen.returncode, self.events, self.stderr)
        return self.events

    def stop(self) -> None:
        """SIGTERM (the peer closes its listener), then SIGKILL after a bound."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        self._drain()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)
        self._drain()

    def _drain(self) -> None:
        """Once the process is gone, let the readers reach EOF so ``events`` is complete."""
        if self.popen.poll() is not None:
            for thread in self._threads:
                thread.join(2)
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()

    def __enter__(self: P) -> P:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class NodePeer(NodeProcess):
    """``node hycows_peer.js <config>``: events are parsed JSON lines from its stdout."""

    label = "hyco-ws peer"

    def __init__(self, config: dict[str, Any], *, env: dict[str, str] | None = None) -> None:
        full = {"keyName": KEY_NAME, "key": KEY, "timeoutMs": int(TIMEOUT * 1000)}
        full.update(config)
        self.config = full
        super().__init__(PEER, [json.dumps(full)], env=env)


def listen_uri(emulator: ThreadedEmulator, hc: str = "myhc", host: str = "127.0.0.1") -> str:
    scheme = "wss" if emulator.url.startswith("wss") else "ws"
    return f"{scheme}://{host}:{emulator.port}/$hc/{hc}?sb-hc-action=listen"


def send_uri(emulator: ThreadedEmulator, path: str = "myhc", query: str = "",
             host: str = "127.0.0.1") -> str:
    scheme = "wss" if emulator.url.startswith("wss") else "ws"
    sep = "&" if query else ""
    return f"{scheme}://{host}:{emulator.port}/$hc/{path}?{query}{sep}sb-hc-action=connect"
