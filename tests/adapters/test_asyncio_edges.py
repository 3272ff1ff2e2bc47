"""asyncio adapter edge cases found in review: each test failed before its fix."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from hyco_proto.adapters.asyncio import (
    RelayedServer,
    RelayServiceServer,
    WebSocket,
    connect,
    relayed_connect,
    serve,
)
from hyco_proto.drivers.connection import RequestReceived, ServerConnection
from hyco_proto.errors import RelayError
from hyco_proto.listener import ListenerState

from .asyncio_util import WAIT, async_test, bounded, token

FIXED = "SharedAccessSignature sr=x&sig=y&se=4102444800&skn=k"  # expires in 2100


def loop_errors() -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: seen.append(ctx))
    return seen


@async_test
async def test_close_with_a_full_queue_still_reads_the_close_reply() -> None:
    async def flood(ws: WebSocket) -> None:
        for n in range(20):
            await ws.send(f"m{n}")
        await ws.recv()  # until the client closes

    async with serve(flood, "127.0.0.1", 0) as server:
        ws = await bounded(connect(f"ws://127.0.0.1:{server.port}/", max_queue=4,
                                   close_timeout=5))
        for _ in range(200):
            if ws.reading_paused:
                break
            await asyncio.sleep(0.01)
        assert ws.reading_paused
        started = time.monotonic()
        await ws.close()
        assert ws.close_code == 1000  # a clean closing handshake, not 1006 after 5 s
        assert time.monotonic() - started < 2
        assert await ws.recv() == "m0"  # what was queued stays readable


@async_test
async def test_iteration_ends_after_close_even_with_a_full_backlog() -> None:
    async with RelayServiceServer(port=0) as relay:
        uri = f"{relay.url}/$hc/myhc"
        server = RelayedServer(uri, lambda: token(uri), backlog=1, close_timeout=1)
        await bounded(server.start())
        sender = await bounded(relayed_connect(uri, token(uri)))
        for _ in range(200):
            if server._accepted.full():
                break
            await asyncio.sleep(0.01)
        await bounded(server.close())
        got = [ws async for ws in server]  # bounded by async_test
        assert len(got) == 1
        sender.abort()


@async_test
async def test_pings_left_unanswered_or_failing_never_reach_the_loop() -> None:
    seen = loop_errors()

    async def silent(ws: WebSocket) -> None:
        await asyncio.sleep(WAIT)

    async with serve(silent, "127.0.0.1", 0) as server:
        ws = await bounded(connect(f"ws://127.0.0.1:{server.port}/"))
        await ws.ping(b"twice")
        with pytest.raises(Exception, match="already waiting"):
            await ws.ping(b"twice")
        unanswered = await ws.ping()  # nobody awaits it
        ws.abort()
        await bounded(ws.wait_closed())
        del unanswered
    import gc
    gc.collect()
    await asyncio.sleep(0)
    assert not [c for c in seen if "never retrieved" in str(c.get("message"))], seen


@async_test
async def test_serve_close_drops_connections_still_in_their_handshake() -> None:
    async with serve(lambda ws: asyncio.sleep(0), "127.0.0.1", 0) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
        await writer.drain()
        await asyncio.sleep(0.05)
    assert await bounded(reader.read(), 2) == b""  # the server closed it
    writer.close()


@async_test
async def test_close_timeout_bounds_a_relay_that_never_answers_the_close() -> None:
    class Silent(asyncio.Protocol):
        """Upgrades with 101, then ignores everything (close frames included)."""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport, self.conn, self.up = transport, ServerConnection(), False

        def data_received(self, data: bytes) -> None:
            if self.up:
                return
            self.conn.receive_data(data)
            for event in self.conn.events_received():
                if isinstance(event, RequestReceived):
                    self.conn.accept()
                    self.up = True
            for chunk in self.conn.data_to_send():
                if chunk:
                    self.transport.write(chunk)

    silent = await asyncio.get_running_loop().create_server(Silent, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        server = RelayedServer(f"ws://127.0.0.1:{port}/$hc/myhc", FIXED, close_timeout=0.5,
                               keepalive_interval=None)
        await bounded(server.start())
        started = time.monotonic()
        await bounded(server.close())
        assert time.monotonic() - started < 2
        assert server.state is ListenerState.CLOSED
    finally:
        silent.close()


def test_max_queue_is_checked_when_the_server_is_made() -> None:
    with pytest.raises(ValueError, match="max_queue"):
        RelayedServer("ws://127.0.0.1:9/$hc/x", FIXED, max_queue=0)
    with pytest.raises(ValueError, match="max_queue"):
        serve(lambda ws: asyncio.sleep(0), max_queue=0)


@async_test
async def test_an_unusable_host_name_fails_the_start_at_once() -> None:
    server = RelayedServer("ws://" + "a" * 70 + ".example/$hc/myhc", FIXED, open_timeout=5)
    started = time.monotonic()
    with pytest.raises(RelayError, match="idna"):
        await bounded(server.start())
    assert time.monotonic() - started < 2
