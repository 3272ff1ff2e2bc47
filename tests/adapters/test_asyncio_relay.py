"""The asyncio adapter end to end over real loopback sockets.

``RelayedServer`` (listener) and ``relayed_connect`` (sender) talk through ``RelayServiceServer``
(the local relay service on an ephemeral port). Every wait is bounded; ordering never relies on
sleeps.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from hyco_proto.adapters.asyncio import (
    Accept,
    Reject,
    RelayConnectionClosed,
    RelayedServer,
    RelayedWebSocket,
    RelayServiceServer,
    create_relayed_server,
    relayed_connect,
)
from hyco_proto.adapters.asyncio.sockets import SocketListener
from hyco_proto.errors import (
    AuthorizationError,
    EndpointNotFoundError,
    ForbiddenError,
    ListenerRejectedError,
    QuotaExceededError,
    RelayError,
)
from hyco_proto.listener import ConnectionRequested, Disconnected, Listening, TokenRenewed
from hyco_proto.service.config import ServiceConfig

from .asyncio_util import WAIT, async_test, bounded, token


@asynccontextmanager
async def relay(**kwargs: Any) -> AsyncIterator[RelayServiceServer]:
    async with RelayServiceServer(port=0, **kwargs) as server:
        yield server


def listen_uri(relay_: RelayServiceServer, hc: str = "myhc") -> str:
    return f"{relay_.url}/$hc/{hc}"


def send_uri(relay_: RelayServiceServer, hc: str = "myhc", tail: str = "") -> str:
    return f"{relay_.url}/$hc/{hc}{tail}"


async def echo(ws: RelayedWebSocket) -> None:
    async for message in ws:
        await ws.send(message)


@asynccontextmanager
async def echo_listener(relay_: RelayServiceServer, **kwargs: Any) -> AsyncIterator[RelayedServer]:
    uri = listen_uri(relay_)
    kwargs.setdefault("connection", echo)
    async with RelayedServer(uri, lambda: token(uri), **kwargs) as server:
        yield server


async def connect(relay_: RelayServiceServer, tail: str = "", **kwargs: Any) -> RelayedWebSocket:
    uri = send_uri(relay_, tail=tail)
    tok = kwargs.pop("token", None) or token(uri)
    return await bounded(relayed_connect(uri, tok, **kwargs))


# ------------------------------------------------------------------------------------------
# the service server itself


@async_test
async def test_service_server_binds_ephemeral_port_and_closes() -> None:
    server = RelayServiceServer(port=0)
    await server.start()
    assert server.port > 0
    assert server.url == f"ws://127.0.0.1:{server.port}"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /$hc/x HTTP/1.1\r\nHost: x\r\n\r\n")  # not an upgrade
    answer = await bounded(reader.read())
    assert answer.startswith(b"HTTP/1.1 426 ")
    writer.close()
    await server.close()
    await server.close()  # idempotent
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)


@async_test
async def test_service_server_closes_open_connections() -> None:
    async with relay() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /$hc/x HTTP/1.1\r\n")  # an unfinished request
        await bounded(_until(lambda: server.connections == 1))
        await bounded(server.close())
        assert await bounded(reader.read()) == b""
        writer.close()
        assert server.connections == 0


async def _until(check: Any) -> None:
    """Poll a condition that has no event to wait on (bounded by the caller)."""
    while not check():
        await asyncio.sleep(0.005)


# ------------------------------------------------------------------------------------------
# relayed messages


@async_test
async def test_echo_text_and_binary_both_ways() -> None:
    async with relay() as r, echo_listener(r):
        ws = await connect(r)
        await ws.send("hello")
        await ws.send(b"\x00\x01binary")
        assert await bounded(ws.recv()) == "hello"
        assert await bounded(ws.recv()) == b"\x00\x01binary"
        await bounded(ws.close())
        assert ws.close_code == 1000


@async_test
async def test_listener_sends_first_and_iterates_with_async_for() -> None:
    async with relay() as r, echo_listener(r, connection=None) as server:
        sender = await connect(r)
        accepted = await bounded(server.accept())
        await accepted.send("from listener")
        await accepted.send(b"\xff" * 10)
        assert await bounded(sender.recv()) == "from listener"
        assert await bounded(sender.recv()) == b"\xff" * 10
        await sender.send("from sender")
        assert await bounded(accepted.recv()) == "from sender"
        await bounded(sender.close())
        with pytest.raises(RelayConnectionClosed) as info:
            await bounded(accepted.recv())
        assert info.value.code == 1000 and info.value.ok


@async_test
async def test_four_mib_message() -> None:
    big = bytes(range(256)) * (4 * 1024 * 1024 // 256)
    async with relay() as r, echo_listener(r):
        ws = await connect(r)
        await bounded(ws.send(big))
        assert await bounded(ws.recv()) == big
        text = "é" * (2 * 1024 * 1024)
        await bounded(ws.send(text))
        assert await bounded(ws.recv()) == text
        await bounded(ws.close())


@async_test
async def test_subprotocol_echoed_on_both_legs() -> None:
    seen: asyncio.Queue[RelayedWebSocket] = asyncio.Queue()
    async with relay() as r, echo_listener(r, connection=seen.put_nowait):
        ws = await connect(r, subprotocols=["proto-a", "proto-b"])
        leg = await bounded(seen.get())
        assert ws.subprotocol == "proto-a"
        assert leg.subprotocol == "proto-a"
        await bounded(ws.close())


@async_test
async def test_headers_hook_picks_subprotocol_async() -> None:
    async def choose(request: ConnectionRequested) -> Accept:
        await asyncio.sleep(0)
        assert request.command.requested_subprotocols == ["proto-a", "proto-b"]
        return Accept(subprotocol="proto-b")

    async with relay() as r, echo_listener(r, headers=choose):
        ws = await connect(r, subprotocols=["proto-a", "proto-b"])
        assert ws.subprotocol == "proto-b"
        await ws.send("x")
        assert await bounded(ws.recv()) == "x"
        await bounded(ws.close())


@async_test
async def test_connect_headers_path_suffix_and_query_visible_to_listener() -> None:
    seen: asyncio.Queue[RelayedWebSocket] = asyncio.Queue()
    async with relay() as r, echo_listener(r, connection=seen.put_nowait):
        ws = await connect(r, tail="/some/suffix?foo=bar&n=1",
                           headers={"X-Custom": "hello"})
        leg = await bounded(seen.get())
        assert leg.connect_headers["X-Custom"] == "hello"
        assert "ServiceBusAuthorization" not in leg.connect_headers
        assert leg.path == "/myhc/some/suffix?foo=bar&n=1"
        assert leg.request_url == "sb://127.0.0.1/myhc/some/suffix?foo=bar&n=1"
        assert leg.remote_endpoint is not None
        assert leg.remote_endpoint.address == "127.0.0.1"
        assert leg.request_id
        assert ws.connect_headers == {} and ws.remote_endpoint is None
        await bounded(ws.close())


@pytest.mark.parametrize("in_query", [False, True], ids=["header", "query"])
@async_test
async def test_token_in_header_and_in_query(in_query: bool) -> None:
    async with relay() as r, echo_listener(r):
        ws = await connect(r, token_in_query=in_query)
        await ws.send("t")
        assert await bounded(ws.recv()) == "t"
        await bounded(ws.close())


# ------------------------------------------------------------------------------------------
# refusals


@async_test
async def test_reject_gives_sender_the_status() -> None:
    def hook(request: ConnectionRequested) -> Reject:
        return Reject(403, "Not today")

    async with relay() as r, echo_listener(r, headers=hook) as server:
        with pytest.raises(ListenerRejectedError) as info:
            await connect(r)
        assert info.value.status == 403
        assert not isinstance(info.value, ForbiddenError)  # not the relay's own refusal
        assert "Not today" in (info.value.description or "")
        # A tuple works too, and any status passes through.
        server._headers_hook = lambda request: (418, "teapot")
        with pytest.raises(RelayError) as info2:
            await connect(r)
        assert info2.value.status == 418


@async_test
async def test_wrong_key_is_authorization_error() -> None:
    async with relay() as r, echo_listener(r):
        uri = send_uri(r)
        with pytest.raises(AuthorizationError) as info:
            await bounded(relayed_connect(uri, token(uri, key="wrong-key")))
        assert info.value.status == 401


@async_test
async def test_listener_first_open_401_raises() -> None:
    async with relay() as r:
        uri = listen_uri(r)
        errors: list[Exception] = []
        server = RelayedServer(uri, token(uri, key="wrong-key"), error=errors.append)
        with pytest.raises(AuthorizationError) as info:
            async with server:
                pass
        # Raised from start(), naming the address; the error hook is for later failures.
        assert f"cannot listen at {uri}" in str(info.value)
        assert info.value.status == 401
        assert errors == []


@async_test
async def test_strict_config_unknown_hc_is_404() -> None:
    config = ServiceConfig.with_hybrid_connections(["known"], strict=True)
    async with relay(config=config) as r:
        uri = send_uri(r, "unknown")
        with pytest.raises(EndpointNotFoundError):
            await bounded(relayed_connect(uri, token(uri)))
        luri = listen_uri(r, "unknown")
        with pytest.raises(EndpointNotFoundError):
            async with RelayedServer(luri, token(luri)):
                pass


@async_test
async def test_26th_listener_is_refused_403() -> None:
    async with relay() as r:
        uri = listen_uri(r)
        servers = [RelayedServer(uri, token(uri), keepalive_interval=None) for _ in range(25)]
        try:
            await bounded(asyncio.gather(*(s.start() for s in servers)))
            extra = RelayedServer(uri, token(uri))
            with pytest.raises(QuotaExceededError) as info:
                await bounded(extra.start())
            assert info.value.status == 403
            await extra.close()
        finally:
            await bounded(asyncio.gather(*(s.close() for s in servers)))


# ------------------------------------------------------------------------------------------
# liveness: keepalive, reconnect, token expiry and renewal


@async_test
async def test_keepalive_pings_get_pongs() -> None:
    async with relay() as r, echo_listener(r, keepalive_interval=0.05,
                                           keepalive_timeout=2.0) as server:
        # Three keepalive rounds pass: each ping needs its pong before the next one is sent.
        await bounded(_until(lambda: server.keepalive_pongs >= 3))
        assert server.is_listening
        assert not [e for e in server.events if isinstance(e, Disconnected)]


@async_test
async def test_application_ping_gets_pong() -> None:
    async with relay() as r, echo_listener(r):
        ws = await connect(r)
        pong = await ws.ping()
        await bounded(pong)
        await bounded(ws.close())


@async_test
async def test_listener_reconnects_after_relay_restart() -> None:
    first = RelayServiceServer(port=0)
    await first.start()
    port = first.port
    uri = listen_uri(first)
    errors: list[Exception] = []
    listening = asyncio.Event()
    server = RelayedServer(uri, lambda: token(uri), connection=echo, error=errors.append,
                           reconnect_delays=(0, 0.05))
    await bounded(server.start())
    try:
        await bounded(first.close())
        await bounded(_until(lambda: errors))
        second = RelayServiceServer(port=port)
        await second.start()
        try:
            count = sum(isinstance(e, Listening) for e in server.events)

            def relistened() -> bool:
                return sum(isinstance(e, Listening) for e in server.events) > count

            await bounded(_until(relistened))
            listening.set()
            ws = await connect(second)
            await ws.send("again")
            assert await bounded(ws.recv()) == "again"
            await bounded(ws.close())
        finally:
            await server.close()
            await second.close()
    finally:
        await server.close()
        await first.close()


@async_test
async def test_expired_listener_token_closes_1008() -> None:
    config = ServiceConfig(token_grace=0.2)
    async with relay(config=config) as r:
        uri = listen_uri(r)
        errors: list[Exception] = []
        server = RelayedServer(uri, token(uri, ttl=1), error=errors.append,
                               reconnect_delays=(5,))
        async with server:
            await bounded(_until(lambda: errors))
            assert isinstance(errors[0], AuthorizationError)
            assert errors[0].close_code == 1008


@async_test
async def test_callable_token_renewal_keeps_listener_alive() -> None:
    config = ServiceConfig(token_grace=0.2)
    async with relay(config=config) as r:
        uri = listen_uri(r)
        errors: list[Exception] = []
        server = RelayedServer(uri, lambda: token(uri, ttl=2), error=errors.append,
                               connection=echo)
        async with server:
            # Renewed half-way through each 2 s token; after 3 renewals the first token (and
            # its grace) are long past.
            await bounded(_until(
                lambda: sum(isinstance(e, TokenRenewed) for e in server.events) >= 3))
            assert errors == []
            assert server.is_listening
            ws = await connect(r)
            await ws.send("alive")
            assert await bounded(ws.recv()) == "alive"
            await bounded(ws.close())


# ------------------------------------------------------------------------------------------
# closing


@async_test
async def test_one_leg_dropping_gives_the_other_1001() -> None:
    async with relay() as r, echo_listener(r, connection=None) as server:
        sender = await connect(r)
        leg = await bounded(server.accept())
        sender.abort()
        with pytest.raises(RelayConnectionClosed) as info:
            await bounded(leg.recv())
        assert info.value.code == 1001
        await bounded(leg.wait_closed())
        assert leg.close_code == 1001


@async_test
async def test_listener_close_drains_cleanly() -> None:
    async with relay() as r:
        server = await _started(RelayedServer(listen_uri(r), lambda: token(listen_uri(r)),
                                              connection=None))
        sender = await connect(r)
        leg = await bounded(server.accept())
        await bounded(server.close())
        assert leg.close_code == 1001
        with pytest.raises(RelayConnectionClosed) as info:
            await bounded(sender.recv())
        assert info.value.code == 1001
        # The control channel is gone: a new sender finds no listener.
        with pytest.raises(RelayError):
            await connect(r)
        await bounded(_until(lambda: r.connections == 0))


async def _started(server: RelayedServer) -> RelayedServer:
    await bounded(server.start())
    return server


@async_test
async def test_create_relayed_server_starts_at_once() -> None:
    async with relay() as r:
        uri = listen_uri(r)
        server = create_relayed_server({"server": uri, "token": token(uri)}, echo)
        try:
            await bounded(server.start())
            ws = await connect(r)
            await ws.send("hi")
            assert await bounded(ws.recv()) == "hi"
            await bounded(ws.close())
        finally:
            await server.close()


@async_test
async def test_hooks_are_optional_and_errors_never_crash() -> None:
    def broken(request: ConnectionRequested) -> None:
        raise RuntimeError("boom")

    async with relay() as r, echo_listener(r, headers=broken):
        with pytest.raises(RelayError) as info:
            await connect(r)
        assert info.value.status == 500


# ------------------------------------------------------------------------------------------
# backpressure


@pytest.mark.parametrize("own_sockets", [True, False], ids=["own-sockets", "asyncio-transports"])
@async_test
async def test_slow_reader_blocks_writer_then_resumes(own_sockets: bool) -> None:
    high_water = 64 * 1024
    chunk = b"x" * (64 * 1024)
    async with relay(write_high_water=high_water, own_sockets=own_sockets) as r, \
            echo_listener(r, connection=None, max_queue=4) as server:
        sender = await connect(r, write_limit=64 * 1024)
        leg = await bounded(server.accept())
        sent = 0
        blocked = False
        # The listener does not read: its queue fills, it stops reading, the relay's buffer to
        # it fills, the relay stops reading the sender, the sender's buffer fills, send blocks.
        while sent < 256 * 1024 * 1024:
            try:
                await asyncio.wait_for(sender.send(chunk), 0.5)
            except asyncio.TimeoutError:
                blocked = True
                break
            sent += 1
        assert blocked, "send never blocked"
        # Memory stays bounded: the listener's queue, and every transport buffer.
        assert leg.queued_messages <= 4
        sender_transport = sender.transport
        assert sender_transport is not None
        assert sender_transport.get_write_buffer_size() <= 64 * 1024 + 2 * len(chunk)
        for proto in r._protocols.values():
            assert proto.transport is not None
            assert proto.transport.get_write_buffer_size() <= high_water + 2 * len(chunk) + 64
        # Reading resumes: every message sent (including the one that blocked) arrives.
        total = sent + 1
        for _ in range(total):
            assert await bounded(leg.recv()) == chunk
        await bounded(sender.send(b"last"))
        assert await bounded(leg.recv()) == b"last"
        await bounded(sender.close())


@pytest.mark.parametrize("own_sockets", [True, False], ids=["own-sockets", "asyncio-transports"])
@async_test
async def test_in_place_relaying_keeps_every_byte_under_backpressure(own_sockets: bool) -> None:
    """The relay unmasks into its one shared read buffer and writes views of it; a socket that
    takes only part of one must get the rest intact although the buffer is read into again
    (here by the other pair's sender) before that rest goes out."""
    def message(pair: int, i: int) -> bytes:
        return (b"%d:%d:" % (pair, i)) * (256 * 1024 // 8) + bytes([i % 251])

    async with relay(write_high_water=128 * 1024, own_sockets=own_sockets) as r, \
            echo_listener(r, connection=None, max_queue=2) as server:
        assert isinstance(r._server, SocketListener) is own_sockets
        senders = [await connect(r), await connect(r)]
        legs = [await bounded(server.accept()), await bounded(server.accept())]

        async def send_all(pair: int) -> None:
            for i in range(24):
                await bounded(senders[pair].send(message(pair, i)))

        async def read_slowly(pair: int) -> list[bytes]:
            got = []
            for _ in range(24):
                await asyncio.sleep(0.01)
                got.append(await bounded(legs[pair].recv()))
            return got

        results = await bounded(asyncio.gather(send_all(0), send_all(1), read_slowly(0),
                                               read_slowly(1)))
        # Which leg the relay joined to which sender is its choice: match by content.
        received = sorted(results[2] + results[3])
        assert received == sorted(message(p, i) for p in (0, 1) for i in range(24))
        for ws in senders:
            await bounded(ws.close())


class _RecordingTransport:
    """What ``write_lent`` hands the transport: it must never be a view of the read buffer."""

    def __init__(self, extra: dict[str, object] | None = None) -> None:
        self.written: list[object] = []
        self.extra = extra or {}

    def get_extra_info(self, name: str) -> object:
        return self.extra.get(name)

    def get_write_buffer_size(self) -> int:
        return sum(len(w) for w in self.written)  # type: ignore[arg-type]

    def write(self, data: object) -> None:
        self.written.append(data)


def test_write_lent_copies_only_what_the_socket_refuses() -> None:
    import socket

    from hyco_proto.adapters.asyncio.service import _ServiceProtocol

    proto = _ServiceProtocol.__new__(_ServiceProtocol)
    fake = _RecordingTransport()
    proto.transport = fake  # type: ignore[assignment]
    payload = bytes(range(256)) * (32 * 1024)  # 8 MiB: more than a socket buffer takes
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        proto.fd = a.fileno()
        buffer = bytearray(payload)
        proto.write_lent(memoryview(buffer))
        assert len(fake.written) == 1 and type(fake.written[0]) is bytes
        rest = fake.written[0]
        assert 0 < len(rest) < len(payload)  # part went straight to the socket, no copy
        buffer[:] = bytes(len(buffer))  # the next read reuses the buffer
        assert rest == payload[-len(rest):]
        # Queued bytes ahead: the whole view is copied (order), the socket is not touched.
        proto.write_lent(memoryview(bytearray(b"next")))
        assert fake.written[1] == b"next" and type(fake.written[1]) is bytes
    # TLS: always through the transport, as a copy (the descriptor is looked up once).
    with socket.socket() as raw:
        proto.fd = None
        proto.transport = fake = _RecordingTransport(  # type: ignore[assignment]
            {"socket": raw, "ssl_object": object()})
        proto.write_lent(memoryview(bytearray(b"tls")))
        assert fake.written == [b"tls"] and type(fake.written[0]) is bytes
        assert proto.fd == -1


@async_test
async def test_sender_recv_queue_is_bounded() -> None:
    async with relay() as r, echo_listener(r, connection=None) as server:
        sender = await connect(r, max_queue=2)
        leg = await bounded(server.accept())
        for i in range(50):
            await bounded(leg.send(f"m{i}"))
        await bounded(_until(lambda: sender.queued_messages >= 2))
        assert sender.reading_paused
        assert sender.queued_messages <= 2 + 50  # one read may carry several messages
        received = [await bounded(sender.recv()) for _ in range(50)]
        assert received == [f"m{i}" for i in range(50)]
        await bounded(sender.close())


def test_wait_bound_is_sane() -> None:
    assert WAIT <= 10


# ------------------------------------------------------------------------------------------
# TLS


def test_wss_end_to_end(tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls_contexts

    @async_test
    async def run() -> None:
        async with relay(ssl=server_ctx) as r:
            assert r.url.startswith("wss://127.0.0.1:")
            uri = listen_uri(r)
            async with RelayedServer(uri, lambda: token(uri), connection=echo, ssl=client_ctx):
                ws = await connect(r, ssl=client_ctx, subprotocols=["p"])
                assert ws.subprotocol == "p"
                await ws.send("secure")
                assert await bounded(ws.recv()) == "secure"
                await bounded(ws.send(b"z" * 300_000))
                assert await bounded(ws.recv()) == b"z" * 300_000
                await bounded(ws.close())
                assert ws.close_code == 1000

    run()


@async_test
async def test_async_for_over_server_ends_on_close_and_async_error_hook_runs() -> None:
    seen: asyncio.Queue[Exception] = asyncio.Queue()

    async def on_error(error: Exception) -> None:
        await seen.put(error)

    async with relay() as r:
        uri = listen_uri(r)
        server = RelayedServer(uri, lambda: token(uri), error=on_error,
                               reconnect_delays=(0.05,))
        await bounded(server.start())
        got: list[RelayedWebSocket] = []

        async def collect() -> None:
            async for ws in server:
                got.append(ws)
                await ws.send("welcome")

        collector = asyncio.ensure_future(collect())
        sender = await connect(r)
        assert await bounded(sender.recv()) == "welcome"
        await bounded(r.close())  # the relay goes away: the listener is disconnected
        assert isinstance(await bounded(seen.get()), RelayError)
        await bounded(server.close())
        await bounded(collector)  # iteration ended cleanly
        assert len(got) == 1


@async_test
async def test_accept_timeout_and_no_restart_after_close() -> None:
    async with relay() as r:
        uri = listen_uri(r)
        server = RelayedServer(uri, lambda: token(uri))
        async with server:
            with pytest.raises(TimeoutError, match="no connection accepted"):
                await server.accept(timeout=0.05)
        with pytest.raises(RelayError, match="was closed; create a new RelayedServer"):
            await server.start()


async def _until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.005)


@async_test
async def test_full_backlog_rejects_senders_with_503() -> None:
    async with relay() as r:
        uri = listen_uri(r)
        async with RelayedServer(uri, lambda: token(uri), backlog=1) as server:
            first = await connect(r)  # waits in the backlog: nobody iterates
            # The sender's 101 can come before the listener has queued its side (then the
            # next sender would be accepted and closed with 1013): wait for the backlog.
            await bounded(_until(lambda: server._accepted.qsize() >= 1))
            with pytest.raises(ListenerRejectedError) as info:
                await connect(r)
            assert info.value.status == 503 and "backlog" in (info.value.description or "")
            accepted = await server.accept(timeout=WAIT)
            await first.send("still fine")
            assert await bounded(accepted.recv()) == "still fine"
            await bounded(first.close())
