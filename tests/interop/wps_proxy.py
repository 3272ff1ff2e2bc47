"""Helpers for the Web PubSub interop tests: our hub, Microsoft's clients, a cutting proxy.

:func:`serve_hub` serves our Web PubSub hub route (``RelayServiceThread(routes="webpubsub")``)
on a free loopback port. :class:`NodeWps` drives ``node/wps_client.js``
(``@azure/web-pubsub-client`` with URLs minted by ``@azure/web-pubsub``) over stdin/stdout JSON
lines; :class:`PyWps` drives Microsoft's Python client (``azure-messaging-webpubsubclient``),
sync or aio (on an event loop thread of its own), with URLs minted by
``azure-messaging-webpubsubservice``. Both record what happens as ``events`` (dicts with an
``"event"`` name) and wait for them with bounds.

``CuttingProxy(target_port)`` listens on ``127.0.0.1`` (a free port) and forwards each accepted
connection to ``127.0.0.1:target_port``, on an asyncio loop of its own in a background thread.
:meth:`CuttingProxy.cut` ends every current connection at once, on both sides: ``"rst"`` aborts
the sockets with ``SO_LINGER`` 0 (a TCP reset), ``"fin"`` closes them normally (a FIN, no
WebSocket closing handshake). ``block_for`` keeps refusing new connections (accepted, then reset
at once) for that many seconds after the cut, so a client's recovery attempts fail until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

from azure.messaging.webpubsubclient import WebPubSubClient, WebPubSubClientCredential
from azure.messaging.webpubsubclient import aio as wps_aio
from azure.messaging.webpubsubclient.models import CallbackType, WebPubSubDataType
from azure.messaging.webpubsubservice import WebPubSubServiceClient

from hyco_proto.adapters.asyncio import RelayServiceThread
from hyco_proto.service.config import ServiceConfig
from hyco_proto.service.router import RelayService
from hyco_proto.service.webpubsub import WebPubSubService
from hyco_proto.webpubsub.hub import Hub
from tests.interop import NODE_DIR, NodeProcess

__all__ = ["HUB", "KEY", "ROLES", "CuttingProxy", "NodeWps", "PyWps", "serve_hub"]

KEY = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH"  # the official emulator's documented key
HUB = "chat"
ROLES = ["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"]
#: Upper bound for one wait (a proxy step, a client's answer, a message).
WAIT = 10.0
#: ack_timeout and start_timeout of the sync Python clients (see PyWps).
SYNC_TIMEOUT = 1.5
SCRIPT = NODE_DIR / "wps_client.js"
# NodeProcess checks that this file exists (npm install ran).
CLIENT_PACKAGE = "@azure/web-pubsub-client/dist/commonjs"

Event = dict[str, Any]


def connection_string(port: int) -> str:
    return f"Endpoint=http://127.0.0.1:{port};AccessKey={KEY};Version=1.0;"


@contextlib.contextmanager
def serve_hub(**hub_options: Any) -> Iterator[tuple[int, WebPubSubService]]:
    """Our hub route on a free loopback port: ``(port, the WebPubSubService)``.

    ``hub_options`` (e.g. ``recovery_window=0.5``) make the hub :data:`HUB` up front."""
    wps = WebPubSubService(KEY)
    if hub_options:
        wps.hubs[HUB] = Hub(HUB, **hub_options)
    service = RelayService(ServiceConfig(), webpubsub=wps)
    with RelayServiceThread(service, port=0, routes="webpubsub") as thread:
        yield thread.port, wps


def _until(events: list[Event], what: str, pred: Callable[[Event], bool], timeout: float,
           alive: Callable[[], bool], describe: Callable[[], str]) -> Event:
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        snapshot = list(events)
        for event in snapshot[seen:]:
            if pred(event):
                return event
        seen = len(snapshot)
        if time.monotonic() >= deadline:
            raise AssertionError(f"no {what} within {timeout} s: {describe()}")
        if not alive():
            raise AssertionError(f"gone before {what}: {describe()}")
        time.sleep(0.02)


class NodeWps(NodeProcess):
    """``node wps_client.js``: Microsoft's Node client, connecting to ``port``."""

    label = "@azure/web-pubsub-client"

    def __init__(self, port: int, user: str, roles: list[str] | None = None, *,
                 timeout: float = 45.0, **config: Any) -> None:
        full: dict[str, Any] = {"connectionString": connection_string(port), "hub": HUB,
                                "user": user, "roles": ROLES if roles is None else roles,
                                "timeoutMs": int(timeout * 1000)}
        full.update(config)
        self.config = full
        self._ids = itertools.count(1)
        super().__init__(SCRIPT, [json.dumps(full)], package=CLIENT_PACKAGE)

    def describe(self) -> str:
        return f"{self.label} {self.config['user']}: events {self.events!r}; " \
               f"stderr {self.stderr[-20:]!r}"

    def until(self, pred: Callable[[Event], bool], what: str, timeout: float = WAIT) -> Event:
        """The first event (from the start) that ``pred`` accepts; fails after ``timeout``."""
        return _until(self.events, what, pred, timeout, lambda: self.popen.poll() is None,
                      self.describe)

    def event(self, name: str, timeout: float = WAIT) -> Event:
        return self.until(lambda e: e.get("event") == name, repr(name), timeout)

    def command(self, cmd: str, **args: Any) -> int:
        number = next(self._ids)
        assert self.popen.stdin is not None
        line = json.dumps({"cmd": cmd, "id": number, **args}) + "\n"
        self.popen.stdin.write(line.encode())
        self.popen.stdin.flush()
        return number

    def result(self, number: int, timeout: float = WAIT) -> Event:
        return self.until(lambda e: e.get("event") == "result" and e.get("id") == number,
                          f"result of command {number}", timeout)

    def call(self, cmd: str, *, timeout: float = WAIT, **args: Any) -> Event:
        """Run a command and wait for its result (``ok`` true or false)."""
        return self.result(self.command(cmd, **args), timeout)

    def ok(self, cmd: str, *, timeout: float = WAIT, **args: Any) -> None:
        result = self.call(cmd, timeout=timeout, **args)
        assert result["ok"], (result, self.describe())

    def messages(self) -> list[Event]:
        return [e for e in list(self.events) if e.get("event") == "group-message"]

    def close(self) -> None:
        """Stop the client (bounded), then make sure the process is gone."""
        if self.popen.poll() is None:
            with contextlib.suppress(OSError, AssertionError):
                self.command("stop")
                self.popen.wait(5)
        self.kill()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.close()


class PyWps:
    """Microsoft's Python client (``aio=True``: the asyncio one, on a loop thread of its own),
    connecting to ``port``; what its callbacks see is recorded in ``events`` as dicts shaped
    like :class:`NodeWps` events."""

    def __init__(self, port: int, user: str, roles: list[str] | None = None, *,
                 aio: bool = False, **client_options: Any) -> None:
        self.user = user
        self.aio = aio
        self.events: list[Event] = []
        self.tokens = 0
        svc = WebPubSubServiceClient.from_connection_string(connection_string(port), hub=HUB)
        granted = ROLES if roles is None else roles

        def url() -> str:
            self.tokens += 1
            self.events.append({"event": "token", "n": self.tokens})
            return str(svc.get_client_access_token(user_id=user, roles=granted)["url"])

        if not aio:
            # The sync client (1.1.0) misses wake-ups: it starts its socket thread, then waits
            # on a condition that on_open notifies, and sends, then waits on one the ack
            # notifies; an open or an ack that comes before the wait starts (loopback is fast)
            # is missed, and the call returns only when the wait times out (start_timeout,
            # ack_timeout: 30 s by default) — then successfully, as the outcome was recorded.
            # Short timeouts keep such a miss short.
            client_options.setdefault("ack_timeout", SYNC_TIMEOUT)
            client_options.setdefault("start_timeout", SYNC_TIMEOUT)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.client: Any
        if aio:
            async def aurl() -> str:
                return url()

            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever,
                                            name=f"wps-aio-{user}", daemon=True)
            self._thread.start()

            async def make() -> Any:
                return wps_aio.WebPubSubClient(wps_aio.WebPubSubClientCredential(aurl),
                                               **client_options)

            self.client = self._run(make())
        else:
            self.client = WebPubSubClient(WebPubSubClientCredential(url), **client_options)
        self._subscribe()

    def _run(self, coro: Any, timeout: float = WAIT) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _subscribe(self) -> None:
        record = self.events.append

        def connected(e: Any) -> None:
            record({"event": "connected", "connectionId": e.connection_id, "userId": e.user_id})

        def disconnected(e: Any) -> None:
            record({"event": "disconnected", "connectionId": e.connection_id,
                    "message": getattr(e, "message", None)})

        def group_message(e: Any) -> None:
            data_type = getattr(e.data_type, "value", e.data_type)
            record({"event": "group-message", "group": e.group, "dataType": data_type,
                    "data": e.data, "fromUserId": e.from_user_id, "sequenceId": e.sequence_id})

        def stopped(e: Any = None) -> None:
            record({"event": "stopped"})

        def rejoin_failed(e: Any) -> None:
            record({"event": "rejoin-group-failed", "group": e.group, "error": str(e.error)})

        handlers: list[tuple[CallbackType, Callable[..., None]]] = [
            (CallbackType.CONNECTED, connected), (CallbackType.DISCONNECTED, disconnected),
            (CallbackType.GROUP_MESSAGE, group_message), (CallbackType.STOPPED, stopped),
            (CallbackType.REJOIN_GROUP_FAILED, rejoin_failed)]
        for kind, fn in handlers:
            if self.aio:
                self._run(self.client.subscribe(kind, _coroutine(fn)))
            else:
                self.client.subscribe(kind, fn)

    def describe(self) -> str:
        flavour = "aio" if self.aio else "sync"
        return f"Python {flavour} client {self.user}: events {self.events!r}"

    def until(self, pred: Callable[[Event], bool], what: str, timeout: float = WAIT) -> Event:
        return _until(self.events, what, pred, timeout, lambda: True, self.describe)

    def event(self, name: str, timeout: float = WAIT) -> Event:
        return self.until(lambda e: e.get("event") == name, repr(name), timeout)

    def messages(self) -> list[Event]:
        return [e for e in list(self.events) if e.get("event") == "group-message"]

    def open(self) -> None:
        if self.aio:
            self._run(self.client.open())
        else:
            self.client.open()

    def join(self, group: str) -> None:
        if self.aio:
            self._run(self.client.join_group(group))
        else:
            self.client.join_group(group)

    def send(self, group: str, data: Any, data_type: str = "text", *,
             no_echo: bool = False) -> None:
        kind = WebPubSubDataType(data_type)
        if self.aio:
            self._run(self.client.send_to_group(group, data, kind, no_echo=no_echo))
        else:
            self.client.send_to_group(group, data, kind, no_echo=no_echo)

    def close(self) -> None:
        try:
            if self.aio:
                self._run(self.client.close())
            else:
                # Bounded: the sync close joins the client's threads (each with its own bound).
                closer = threading.Thread(target=self.client.close, daemon=True)
                closer.start()
                closer.join(WAIT)
                assert not closer.is_alive(), f"close() hung: {self.describe()}"
        finally:
            if self._loop is not None and self._thread is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(WAIT)
                if not self._thread.is_alive():
                    self._loop.close()

    def __enter__(self) -> PyWps:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _coroutine(fn: Callable[..., None]) -> Callable[..., Any]:
    async def call(*args: Any) -> None:
        fn(*args)
    return call


def _abort(writer: asyncio.StreamWriter, mode: str) -> None:
    if mode == "rst":
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    else:
        writer.transport.close()


class CuttingProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target_port``; :meth:`cut` breaks it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self.refused = 0
        self.cuts = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="wps-proxy",
                                        daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._blocked_until = 0.0
        self._started = time.monotonic()
        #: What happened, for failure messages: (seconds since start, what).
        self.log: list[tuple[float, str]] = []

    def _note(self, what: str) -> None:
        self.log.append((round(time.monotonic() - self._started, 3), what))

    def __enter__(self) -> CuttingProxy:
        self._thread.start()

        async def start() -> asyncio.AbstractServer:
            return await asyncio.start_server(self._handle, "127.0.0.1", 0)

        self._server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(WAIT)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            self._cut("rst")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)

        try:
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(WAIT)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(WAIT)
            if not self._thread.is_alive():
                self._loop.close()

    @property
    def open_connections(self) -> int:
        return len(self._pairs)

    def cut(self, mode: Literal["rst", "fin"] = "rst", *, block_for: float = 0.0) -> int:
        """End every current connection (both legs); the number cut."""
        async def run() -> int:
            self._blocked_until = time.monotonic() + block_for
            return self._cut(mode)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(WAIT)

    def _cut(self, mode: str) -> int:
        pairs = list(self._pairs)
        self._pairs.clear()
        for client, upstream in pairs:
            _abort(client, mode)
            _abort(upstream, mode)
        self.cuts += len(pairs)
        self._note(f"cut {len(pairs)} ({mode})")
        return len(pairs)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._blocked_until:
            self.refused += 1
            self._note("refused")
            _abort(writer, "rst")
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.target_port), WAIT)
        except (OSError, asyncio.TimeoutError):
            _abort(writer, "rst")
            return
        self.accepted += 1
        self._note(f"accepted {self.accepted}")
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            if pair in self._pairs:
                self._note("ended")
                self._pairs.discard(pair)
                writer.transport.close()
                up_writer.transport.close()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            # Pass a half-close on (the other direction keeps going until it ends too).
            if not writer.transport.is_closing() and writer.can_write_eof():
                with contextlib.suppress(OSError):
                    writer.write_eof()
