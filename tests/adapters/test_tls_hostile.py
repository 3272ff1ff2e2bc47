"""TLS with the development certificate under hostile input (issue 12, "TLS with a development
certificate"): the asyncio ``RelayServiceServer`` serving ``wss://`` with the emulator's dev
cert, while hostile clients send plaintext HTTP to the TLS port, half a ClientHello and then
nothing, random bytes, garbage or oversized headers after a completed TLS handshake, nothing at
all after it, or leave in the middle of the handshake.

Throughout, a healthy TLS listener/sender pair keeps exchanging messages (it must make progress
after every hostile client), and a new TLS pair can still be made at the end. No exception
reaches the event loop (its exception handler records every call; none is allowed), and every
failure is logged by the service with the hostile client's address and port. Each hostile case
is bounded by the service's handshake timeout (1 s here) plus a margin.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest

from hyco_proto.adapters.asyncio import (
    RelayedServer,
    RelayedWebSocket,
    RelayServiceServer,
    connect,
    relayed_connect,
)
from hyco_proto.service.front import MAX_HEAD
from hyco_proto.service.router import RelayService

from .asyncio_util import WAIT, async_test, bounded, token

#: The service's handshake timeout in these tests: the TLS handshake and the request head
#: must each be done within it.
HANDSHAKE_TIMEOUT = 1.0
#: How long a hostile client may be held, at most (the timeout plus a margin for slow CI).
HOSTILE_BOUND = HANDSHAKE_TIMEOUT + 4.0
LOGGER = "hyco_proto"


def client_hello(client_ctx: ssl.SSLContext) -> bytes:
    """The first flight of a real TLS client (its ClientHello record)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100, hello[:8]
    return hello


async def echo(ws: RelayedWebSocket) -> None:
    with suppress(Exception):
        async for message in ws:
            await ws.send(message)


class Chatter:
    """A healthy TLS pair exchanging messages in the background; counts round trips."""

    def __init__(self, ws: RelayedWebSocket) -> None:
        self.ws = ws
        self.round_trips = 0
        self.failure: BaseException | None = None
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                message = f"healthy {self.round_trips}"
                await self.ws.send(message)
                got = await bounded(self.ws.recv())
                assert got == message, (got, message)
                self.round_trips += 1
                await asyncio.sleep(0.01)  # pacing only; nothing is ordered by it
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.failure = exc

    async def progresses(self, more: int = 3) -> None:
        """Wait (bounded) for ``more`` round trips beyond the current count."""
        target = self.round_trips + more
        deadline = time.monotonic() + WAIT
        while self.round_trips < target:
            assert self.failure is None, f"the healthy pair failed: {self.failure!r}"
            assert time.monotonic() < deadline, "the healthy pair made no progress"
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.task.cancel()
        with suppress(asyncio.CancelledError):
            await self.task
        assert self.failure is None, f"the healthy pair failed: {self.failure!r}"


@asynccontextmanager
async def tls_relay(server_ctx: ssl.SSLContext) -> AsyncIterator[RelayServiceServer]:
    service = RelayService(handshake_timeout=HANDSHAKE_TIMEOUT)
    # All hostile clients come from 127.0.0.1: no throttling, so each one's line is there.
    service.refusal_log.burst = service.refusal_log.address_burst = 10_000
    async with RelayServiceServer(service, port=0, ssl=server_ctx) as relay:
        assert relay.url.startswith("wss://127.0.0.1:")
        yield relay


async def open_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    reader, writer = await bounded(asyncio.open_connection("127.0.0.1", port))
    return reader, writer, int(writer.get_extra_info("sockname")[1])


async def open_tls(port: int, client_ctx: ssl.SSLContext
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    reader, writer = await bounded(asyncio.open_connection(
        "127.0.0.1", port, ssl=client_ctx, server_hostname="127.0.0.1"))
    return reader, writer, int(writer.get_extra_info("sockname")[1])


async def read_until_closed(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """Everything the service sends until it closes the connection (bounded), and how long
    that took. A reset counts as closed."""
    start = time.monotonic()
    data = b""
    with suppress(ConnectionError, ssl.SSLError):
        while True:
            chunk = await asyncio.wait_for(reader.read(65536),
                                           HOSTILE_BOUND - (time.monotonic() - start))
            if not chunk:
                break
            data += chunk
    return data, time.monotonic() - start


def close_quietly(writer: asyncio.StreamWriter) -> None:
    with suppress(Exception):
        writer.transport.abort()


def logged_for(caplog: pytest.LogCaptureFixture, port: int) -> list[str]:
    """Log lines of the service that name the client 127.0.0.1:``port``."""
    mark = f"client=127.0.0.1:{port}"
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("hyco_proto.service") and mark in r.getMessage()]


async def wait_logged(caplog: pytest.LogCaptureFixture, port: int, *words: str) -> str:
    """The (first) service log line naming that client and containing every word (bounded:
    the service may log just after closing)."""
    deadline = time.monotonic() + WAIT
    while True:
        for line in logged_for(caplog, port):
            if all(word in line for word in words):
                return line
        assert time.monotonic() < deadline, (
            f"no log line names client 127.0.0.1:{port} with {words}; lines for it: "
            f"{logged_for(caplog, port)}")
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------------------
# the hostile clients; each returns the client's port (for the log check)


async def plaintext_http(port: int, ctx: ssl.SSLContext) -> int:
    reader, writer, me = await open_raw(port)
    writer.write(b"GET /$status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data, _ = await read_until_closed(reader)
    close_quietly(writer)
    # Nothing an HTTP client could take for an answer (and no hang).
    assert not data.startswith(b"HTTP/"), data[:80]
    return me


async def truncated_hello_then_silence(port: int, ctx: ssl.SSLContext) -> int:
    hello = client_hello(ctx)
    reader, writer, me = await open_raw(port)
    writer.write(hello[: len(hello) // 2])
    data, took = await read_until_closed(reader)  # fails (timeout) if held past the bound
    close_quietly(writer)
    assert took < HOSTILE_BOUND, took
    assert not data.startswith(b"HTTP/")
    return me


async def random_bytes(port: int, ctx: ssl.SSLContext) -> int:
    reader, writer, me = await open_raw(port)
    writer.write(os.urandom(4096))
    await read_until_closed(reader)
    close_quietly(writer)
    return me


async def tls_then_garbage(port: int, ctx: ssl.SSLContext) -> int:
    reader, writer, me = await open_tls(port, ctx)
    writer.write(b"\x00\x01NOT HTTP AT ALL\r\n\r\n")
    data, _ = await read_until_closed(reader)
    close_quietly(writer)
    assert data.startswith(b"HTTP/1.1 400 "), data[:80]
    return me


async def tls_then_oversized_headers(port: int, ctx: ssl.SSLContext) -> int:
    reader, writer, me = await open_tls(port, ctx)
    writer.write(b"GET /$hc/myhc?sb-hc-action=connect HTTP/1.1\r\nHost: h\r\nX-Big: "
                 + b"a" * (MAX_HEAD + 10))
    with suppress(ConnectionError):
        await bounded(writer.drain())
    data, _ = await read_until_closed(reader)
    close_quietly(writer)
    # The 431 may be lost to a reset when the service closes with our bytes unread; the log
    # line (checked by the caller) says what happened either way.
    assert data == b"" or data.startswith(b"HTTP/1.1 431 "), data[:80]
    return me


async def tls_then_silence(port: int, ctx: ssl.SSLContext) -> int:
    reader, writer, me = await open_tls(port, ctx)
    data, took = await read_until_closed(reader)
    close_quietly(writer)
    assert data.startswith(b"HTTP/1.1 408 "), data[:80]
    # Dropped at the handshake timeout: not before it, and not long after.
    assert HANDSHAKE_TIMEOUT * 0.5 <= took < HOSTILE_BOUND, took
    return me


async def leaves_mid_handshake(port: int, ctx: ssl.SSLContext) -> int:
    hello = client_hello(ctx)
    _, writer, me = await open_raw(port)
    writer.write(hello[:40])
    with suppress(ConnectionError):
        await bounded(writer.drain())
    writer.close()  # an orderly FIN in the middle of the ClientHello
    with suppress(ConnectionError):
        await bounded(writer.wait_closed())
    return me


async def resets_mid_handshake(port: int, ctx: ssl.SSLContext) -> int:
    hello = client_hello(ctx)
    sock = socket.create_connection(("127.0.0.1", port), WAIT)
    me = int(sock.getsockname()[1])
    sock.sendall(hello[:100])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST
    return me


HOSTILE = [
    # (client, words its log line must contain besides the client address)
    (plaintext_http, ("TLS", "plain HTTP sent to a TLS port")),
    (truncated_hello_then_silence, ("TLS",)),
    (random_bytes, ("TLS",)),
    (tls_then_garbage, ("with 400",)),
    (tls_then_oversized_headers, ("with 431",)),
    (tls_then_silence, ("with 408",)),
    (leaves_mid_handshake, ("TLS",)),
    (resets_mid_handshake, ("TLS",)),
]


def test_hostile_clients_on_the_tls_port(tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
                                         caplog: pytest.LogCaptureFixture) -> None:
    server_ctx, client_ctx = tls_contexts

    @async_test
    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop_errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
        async with tls_relay(server_ctx) as relay:
            uri = f"{relay.url}/$hc/myhc"
            async with RelayedServer(uri, lambda: token(uri), connection=echo,
                                     ssl=client_ctx) as listener:
                ws = await bounded(relayed_connect(uri, token(uri), ssl=client_ctx))
                chatter = Chatter(ws)
                await chatter.progresses()
                for hostile, words in HOSTILE:
                    me = await asyncio.wait_for(hostile(relay.port, client_ctx),
                                                HOSTILE_BOUND + WAIT)
                    line = await wait_logged(caplog, me, *words)
                    assert "sb-hc-token" not in line
                    await chatter.progresses()
                    assert listener.is_listening
                    assert loop_errors == [], (hostile.__name__, loop_errors)
                await chatter.stop()
                # A new TLS pair can still be made, and the old one still works.
                fresh = await bounded(relayed_connect(uri, token(uri), ssl=client_ctx))
                await fresh.send(b"\x00new pair")
                assert await bounded(fresh.recv()) == b"\x00new pair"
                await ws.send("old pair")
                assert await bounded(ws.recv()) == "old pair"
                await bounded(fresh.close())
                await bounded(ws.close())
            # Nothing is left of the hostile clients.
            deadline = time.monotonic() + WAIT
            while relay.connections and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert relay.connections == 0
        assert loop_errors == [], loop_errors

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        run()


def test_the_web_pubsub_port_with_tls_logs_hostile_clients_and_keeps_serving(
        tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
        caplog: pytest.LogCaptureFixture) -> None:
    """The Web PubSub port of the same service (``https://`` / ``wss://``) takes the same TLS
    path: plaintext and half a ClientHello are dropped (bounded) and logged with the client's
    address, and a Web PubSub client connects over TLS afterwards."""
    from hyco_proto.service.webpubsub import WebPubSubService
    from hyco_proto.webpubsub import JSON_SUBPROTOCOL
    from hyco_proto.webpubsub.tokens import create_client_access

    server_ctx, client_ctx = tls_contexts
    key = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH"

    @async_test
    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop_errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
        service = RelayService(handshake_timeout=HANDSHAKE_TIMEOUT,
                               webpubsub=WebPubSubService(key))
        async with RelayServiceServer(service, port=0, ssl=server_ctx,
                                      webpubsub_port=0) as server:
            assert server.webpubsub_endpoint.startswith("https://127.0.0.1:")
            for hostile in (plaintext_http, truncated_hello_then_silence):
                me = await asyncio.wait_for(hostile(server.webpubsub_port, client_ctx),
                                            HOSTILE_BOUND + WAIT)
                await wait_logged(caplog, me, "TLS")
            url = create_client_access(server.webpubsub_endpoint, "chat", key, user_id="u",
                                       now=time.time()).url
            assert url.startswith("wss://")
            ws = await bounded(connect(url, subprotocols=[JSON_SUBPROTOCOL], ssl=client_ctx))
            assert '"connected"' in str(await bounded(ws.recv()))
            await bounded(ws.close())
        assert loop_errors == [], loop_errors

    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        run()


def test_a_thousand_half_open_tls_handshakes_do_not_delay_a_healthy_pair(
        tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """1,000 clients that send half a ClientHello and stall: the healthy TLS pair keeps
    exchanging while they are held, every one of them is dropped at the handshake timeout
    (counted as a handshake error), and nothing is left behind."""
    server_ctx, client_ctx = tls_contexts
    count = 1000

    @async_test
    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop_errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
        hello = client_hello(client_ctx)
        async with tls_relay(server_ctx) as relay:
            uri = f"{relay.url}/$hc/myhc"
            async with RelayedServer(uri, lambda: token(uri), connection=echo, ssl=client_ctx):
                ws = await bounded(relayed_connect(uri, token(uri), ssl=client_ctx))
                chatter = Chatter(ws)
                await chatter.progresses()
                stalled = []
                for _ in range(count):
                    reader, writer = await bounded(asyncio.open_connection("127.0.0.1",
                                                                           relay.port))
                    writer.write(hello[: len(hello) // 2])
                    stalled.append((reader, writer))
                await chatter.progresses(10)  # while all of them are held
                try:
                    ends = await asyncio.wait_for(asyncio.gather(
                        *(read_until_closed(reader) for reader, _ in stalled)),
                        HOSTILE_BOUND + WAIT)
                finally:
                    for _, writer in stalled:
                        close_quietly(writer)
                assert all(took < HOSTILE_BOUND for _, took in ends)
                assert relay.service.stats.handshake_errors == count
                await chatter.progresses()
                await chatter.stop()
                await bounded(ws.close())
        assert loop_errors == [], loop_errors[:3]

    run()
