"""The asyncio adapter's plain WebSocket ``connect`` / ``serve`` (no relay), over loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hyco_proto.adapters.asyncio import ConnectionClosedError, WebSocket, connect, serve
from hyco_proto.errors import AuthorizationError

from .asyncio_util import async_test, bounded


async def echo(ws: WebSocket) -> None:
    async for message in ws:
        await ws.send(message)


@async_test
async def test_echo_subprotocol_ping_and_close() -> None:
    async with serve(echo, "127.0.0.1", 0, subprotocols=["b", "a"]) as server:
        url = f"ws://127.0.0.1:{server.port}/path?q=1"
        async with connect(url, subprotocols=["a", "b"]) as ws:
            assert ws.subprotocol == "b"  # the server's preference wins
            await ws.send("hi")
            assert await bounded(ws.recv()) == "hi"
            big = bytes(range(256)) * 4096
            await ws.send(big)
            assert await bounded(ws.recv()) == big
            pong = await ws.ping()
            assert await bounded(pong) > 0
        assert ws.close_code == 1000


@async_test
async def test_handler_sees_request_and_its_error_closes_1011() -> None:
    seen: list[str] = []

    async def handler(ws: WebSocket) -> None:
        assert ws.request is not None
        seen.append(ws.request.target)
        raise RuntimeError("boom")

    async with serve(handler, "127.0.0.1", 0) as server:
        ws = await bounded(connect(f"ws://127.0.0.1:{server.port}/where"))
        with pytest.raises(ConnectionClosedError) as info:
            await bounded(ws.recv())
        assert info.value.code == 1011 and not info.value.ok
    assert seen == ["/where"]


@async_test
async def test_server_close_cancels_the_handler_and_closes_1001() -> None:
    """The handler runs in a task of its own: closing the server still cancels it (it sees
    CancelledError) and the client gets 1001."""
    started = asyncio.Event()
    seen: list[str] = []

    async def handler(ws: WebSocket) -> None:
        started.set()
        try:
            await ws.recv()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    server = await serve(handler, "127.0.0.1", 0)
    ws = await bounded(connect(f"ws://127.0.0.1:{server.port}/"))
    await bounded(started.wait())
    server.close()
    await bounded(server.wait_closed())
    with pytest.raises(ConnectionClosedError) as info:
        await bounded(ws.recv())
    assert info.value.code == 1001 and info.value.reason == "server shutting down"
    assert seen == ["cancelled"]


@async_test
async def test_unreachable_and_tls_mismatch_name_the_address() -> None:
    async with serve(echo, "127.0.0.1", 0) as server:
        port = server.port
        with pytest.raises(ConnectionError, match=f"not speaking TLS on {port}"):
            await bounded(connect(f"wss://127.0.0.1:{port}/"))
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        await bounded(connect(f"ws://127.0.0.1:{port}/"))


@async_test
async def test_refused_upgrade_and_silent_server_time_out() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    refusing = await asyncio.start_server(refuse, "127.0.0.1", 0)
    quiet = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        port = refusing.sockets[0].getsockname()[1]
        with pytest.raises(AuthorizationError, match="401"):
            await bounded(connect(f"ws://127.0.0.1:{port}/"))
        port = quiet.sockets[0].getsockname()[1]
        with pytest.raises(TimeoutError, match=f"127.0.0.1:{port}"):
            await bounded(connect(f"ws://127.0.0.1:{port}/", open_timeout=0.3))
    finally:
        refusing.close()
        quiet.close()


@async_test
async def test_recv_timeout_keeps_the_connection_usable() -> None:
    async with serve(echo, "127.0.0.1", 0) as server, \
            connect(f"ws://127.0.0.1:{server.port}/") as ws:
        with pytest.raises(TimeoutError, match=r"no message within 0\.05 s"):
            await ws.recv(timeout=0.05)
        await ws.send("after")
        assert await ws.recv(timeout=5) == "after"


@async_test
async def test_peer_close_escaping_the_handler_is_a_normal_end(
        caplog: pytest.LogCaptureFixture) -> None:
    async def handler(ws: WebSocket) -> None:
        while True:  # recv() raises ConnectionClosedError when the client closes
            await ws.send(await ws.recv())

    async with serve(handler, "127.0.0.1", 0) as server:
        ws = await bounded(connect(f"ws://127.0.0.1:{server.port}/"))
        await ws.send("x")
        assert await bounded(ws.recv()) == "x"
        await bounded(ws.close(4001, "bye"))
        assert ws.close_code == 4001
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")]


@async_test
async def test_a_server_closing_without_a_word_suggests_wss() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()  # what a TLS server does with a plain-text upgrade

    mute = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        port = mute.sockets[0].getsockname()[1]
        with pytest.raises(ConnectionError, match=r"127\.0\.0\.1:\d+ failed: .*without "
                                                  r"answering.*use wss://"):
            await bounded(connect(f"ws://127.0.0.1:{port}/"))
    finally:
        mute.close()


@async_test
async def test_a_handler_error_hidden_by_a_closing_server_is_still_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    """The handler fails and the server closes in the same loop step, before the connection's
    task sees the failure (it is cancelled instead): the error is logged all the same."""
    servers: list[Any] = []

    async def handler(ws: WebSocket) -> None:
        asyncio.get_running_loop().call_soon(servers[0].close)  # runs before the awaiter
        raise RuntimeError("boom in the handler")

    server = await serve(handler, "127.0.0.1", 0)
    servers.append(server)
    with caplog.at_level("ERROR", logger="hyco_proto.adapters.asyncio"):
        ws = await bounded(connect(f"ws://127.0.0.1:{server.port}/"))
        with pytest.raises(ConnectionClosedError):
            await bounded(ws.recv())
        await bounded(server.wait_closed())
    errors = [record for record in caplog.records
              if record.exc_info and "boom in the handler" in str(record.exc_info[1])]
    assert errors, [r.getMessage() for r in caplog.records]
