"""A stand-in relay for the listener's relayed-HTTP tests: a plain asyncio server that speaks the
relay's side with hyco_proto's own ``ServerConnection``, and lets the test write the control
messages and rendezvous frames and read what the listener answers.

Every upgrade is accepted. ``sb-hc-action=listen`` makes the connection the control channel;
any other action (``request``, ``accept``) a rendezvous, found by its ``sb-hc-id``. Binary
messages are read fragment by fragment (``BinaryFragment``), so a test sees how a response was
framed (a big frame arrives as the pieces TCP delivered).

``FakeRelay`` runs on the caller's event loop (asyncio tests); ``ThreadedFakeRelay`` runs it on
a loop of its own in a thread, for the blocking adapters: its calls wait by polling with the
adapter's ``sleep`` so a gevent hub in the test's thread keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from hyco_proto.control import RemoteEndpoint, RequestCommand, serialize_command
from hyco_proto.drivers.connection import RequestReceived, ServerConnection
from hyco_proto.websocket import ConnectionClosed, Ping, Pong

T = TypeVar("T")

#: Bound of every wait (seconds).
WAIT = 10.0
#: A token the fake relay never checks (expires in 2100, so the listener does not renew it).
TOKEN = "SharedAccessSignature sr=x&sig=y&se=4102444800&skn=k"


class Peer:
    """The relay's end of one connection the listener opened."""

    def __init__(self, connection: ServerConnection, writer: asyncio.StreamWriter,
                 target: str) -> None:
        self.connection = connection
        self.writer = writer
        self.target = target
        self.events: asyncio.Queue[object] = asyncio.Queue()
        self.closed = asyncio.Event()  # TCP ended

    def _flush(self) -> None:
        for chunk in self.connection.data_to_send():
            if chunk:
                self.writer.write(chunk)
            elif not self.writer.is_closing():
                self.writer.close()

    async def send_text(self, text: str) -> None:
        self.connection.send_text(text)
        self._flush()
        await self.writer.drain()

    async def send_binary(self, data: bytes) -> None:
        self.connection.send_binary(data)
        self._flush()
        await self.writer.drain()

    async def send_part(self, data: bytes, fin: bool) -> None:
        self.connection.send_binary_part(data, fin)
        self._flush()
        await self.writer.drain()

    async def close(self, code: int = 1001, reason: str = "") -> None:
        self.connection.send_close(code, reason)
        self._flush()
        await self.writer.drain()

    def drop(self) -> None:
        self.writer.transport.abort()

    async def recv(self, timeout: float = WAIT) -> object:
        """The next event from the listener (pings and pongs skipped)."""
        while True:
            event = await asyncio.wait_for(self.events.get(), timeout)
            if not isinstance(event, (Ping, Pong)):
                return event

    async def recv_until_closed(self, timeout: float = WAIT) -> list[object]:
        """Every event up to and including ``ConnectionClosed``."""
        events = []
        while True:
            event = await self.recv(timeout)
            events.append(event)
            if isinstance(event, ConnectionClosed):
                return events


class FakeRelay:
    """``async with FakeRelay() as relay``: ``listen_uri``, ``control()``, ``rendezvous(id)``."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._control: asyncio.Future[Peer] | None = None
        self._rendezvous: dict[str, asyncio.Future[Peer]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.peers: list[Peer] = []

    async def __aenter__(self) -> FakeRelay:
        self._control = asyncio.get_running_loop().create_future()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for peer in self.peers:
            peer.drop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=WAIT)
        await self._server.wait_closed()

    @property
    def listen_uri(self) -> str:
        return f"ws://127.0.0.1:{self.port}/$hc/myhc"

    def address(self, rid: str) -> str:
        return f"ws://127.0.0.1:{self.port}/$hc/myhc?sb-hc-action=request&sb-hc-id={rid}"

    async def control(self, timeout: float = WAIT) -> Peer:
        assert self._control is not None
        return await asyncio.wait_for(asyncio.shield(self._control), timeout)

    async def rendezvous(self, rid: str, timeout: float = WAIT) -> Peer:
        future = self._future(rid)
        return await asyncio.wait_for(asyncio.shield(future), timeout)

    def _future(self, rid: str) -> asyncio.Future[Peer]:
        if rid not in self._rendezvous:
            self._rendezvous[rid] = asyncio.get_running_loop().create_future()
        return self._rendezvous[rid]

    # -- what the relay sends ---------------------------------------------------------------

    def request_text(self, rid: str, *, method: str = "POST", target: str = "/myhc/api?x=1",
                     headers: dict[str, str] | None = None, body: bool = True,
                     on_control: bool = True) -> str:
        return serialize_command(RequestCommand(
            id=rid, address=self.address(rid) if on_control else None, request_target=target,
            method=method, remote_endpoint=RemoteEndpoint("10.1.2.3", 5555),
            request_headers=headers if headers is not None else {"Content-Type": "text/plain"},
            body=body))

    def pointer_text(self, rid: str) -> str:
        return serialize_command(RequestCommand(id=rid, address=self.address(rid)))

    # -- connections ------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        connection = ServerConnection()
        connection.stream_binary = True
        peer: Peer | None = None
        try:
            while True:
                data = await reader.read(65536)
                if data:
                    connection.receive_data(data)
                else:
                    connection.receive_eof()
                events = connection.events_received()
                if peer is None and events and isinstance(events[0], RequestReceived):
                    target = events[0].request.target
                    connection.accept()
                    peer = Peer(connection, writer, target)
                    self.peers.append(peer)
                    events = events[1:]
                    query = parse_qs(urlsplit(target).query)
                    action = query.get("sb-hc-action", [""])[0]
                    if action == "listen":
                        assert self._control is not None
                        if not self._control.done():
                            self._control.set_result(peer)
                    elif action:  # request (or accept): a rendezvous, by its id
                        future = self._future(query["sb-hc-id"][0])
                        if not future.done():
                            future.set_result(peer)
                for event in events:
                    if peer is not None:
                        peer.events.put_nowait(event)
                if peer is not None:
                    peer._flush()
                else:
                    for chunk in connection.data_to_send():
                        if chunk:
                            writer.write(chunk)
                if not data:
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            if peer is not None:
                peer.closed.set()
            with contextlib.suppress(Exception):
                writer.close()
            self._tasks.discard(task)


class ThreadedFakeRelay:
    """A :class:`FakeRelay` on its own event loop thread; ``call(fn)`` runs ``await fn(relay)``
    there and waits for the result, polling with ``sleep`` (a gevent-friendly wait)."""

    def __init__(self, sleep: Callable[[float], None] = time.sleep) -> None:
        self._sleep = sleep
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-relay",
                                        daemon=True)
        self.relay = FakeRelay()

    def __enter__(self) -> ThreadedFakeRelay:
        self._thread.start()
        self.call(lambda relay: relay.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(lambda relay: relay.__aexit__(None, None, None))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(WAIT)
            self._loop.close()

    @property
    def listen_uri(self) -> str:
        return self.relay.listen_uri

    def submit(self, fn: Callable[[FakeRelay], Awaitable[T]]) -> Any:
        """Start ``await fn(relay)`` on the relay's loop; a concurrent future."""

        async def run() -> T:
            return await fn(self.relay)

        coro: Coroutine[Any, Any, T] = run()
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def wait(self, future: Any, timeout: float = 2 * WAIT) -> Any:
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                future.cancel()
                raise TimeoutError(f"the fake relay did not finish within {timeout} s")
            self._sleep(0.002)
        return future.result()

    def call(self, fn: Callable[[FakeRelay], Awaitable[T]], timeout: float = 2 * WAIT) -> T:
        return self.wait(self.submit(fn), timeout)  # type: ignore[no-any-return]
