"""Faults over real sockets (issue 12): a peer process killed mid-stream, the relay service
restarted under live listeners. Each wait is bounded; the figures asserted are the issue's."""

from __future__ import annotations

import contextlib
import importlib
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hyco_proto import create_relay_token
from hyco_proto.adapters.asyncio import RelayServiceThread
from hyco_proto.drivers.stream import ConnectionClosedError
from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY
from tests.procutil import free_port

WAIT = 10.0
FAST = {"reconnect_delays": (0.0, 0.2, 0.5)}


def token(uri: str) -> str:
    return create_relay_token(uri, DEFAULT_RULE_NAME, DEVELOPMENT_KEY, 3600)


def echo(ws: Any) -> None:
    with contextlib.suppress(ConnectionClosedError, OSError):
        for message in ws:
            ws.send(message)


@contextlib.contextmanager
def relay_on(port: int) -> Iterator[RelayServiceThread]:
    with RelayServiceThread(port=port) as thread:
        yield thread


PEER = textwrap.dedent("""
    import sys, time
    from hyco_proto import create_relay_token
    from hyco_proto.adapters.threads import RelayedServer, relayed_connect
    from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY
    role, uri = sys.argv[1], sys.argv[2]
    tok = lambda: create_relay_token(uri, DEFAULT_RULE_NAME, DEVELOPMENT_KEY, 3600)
    if role == "listener":
        def stream(ws):
            while True:
                ws.send(b"x" * 1024)
        with RelayedServer(uri, tok, connection=stream):
            print("ready", flush=True)
            time.sleep(60)
    else:
        ws = relayed_connect(uri, tok())
        print("ready", flush=True)
        while True:
            ws.send(b"y" * 1024)
""")


def spawn(role: str, uri: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", PEER, role, uri], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == b"ready", (line, proc.stderr.read() if proc.poll() is not None
                                      else b"")
    return proc


def closed_within(ws: Any, seconds: float) -> tuple[int, float]:
    """Read until the close; (close code, seconds it took)."""
    start = time.monotonic()
    with pytest.raises(ConnectionClosedError) as info:
        while time.monotonic() - start < seconds + WAIT:
            ws.recv(seconds + WAIT)
    return info.value.code, time.monotonic() - start


@pytest.mark.parametrize("killed", ["listener", "sender"])
def test_a_killed_peer_gives_the_other_leg_1001_within_a_second(killed: str) -> None:
    from hyco_proto.adapters.threads import RelayedServer, relayed_connect

    port = free_port()
    with relay_on(port) as relay:
        uri = f"{relay.url}/$hc/victim"
        calm_uri = f"{relay.url}/$hc/calm"
        accepted: list[Any] = []
        with RelayedServer(calm_uri, lambda: token(calm_uri), connection=echo), \
                relayed_connect(calm_uri, token(calm_uri)) as calm:
            if killed == "listener":
                proc = spawn("listener", uri)
                ws = relayed_connect(uri, token(uri))
                ws.recv(WAIT)  # the stream has started
            else:
                ended: list[tuple[int | None, float]] = []

                def hold(sock: Any) -> None:  # reads until the end, then notes code and time
                    accepted.append(sock)
                    with contextlib.suppress(ConnectionClosedError, OSError):
                        for _ in sock:
                            pass
                    ended.append((sock.close_code, time.monotonic()))

                with RelayedServer(uri, lambda: token(uri), connection=hold):
                    proc = spawn("sender", uri)
                    deadline = time.monotonic() + WAIT
                    while not accepted and time.monotonic() < deadline:
                        time.sleep(0.01)
                    assert accepted, "the sender was never accepted"
                    killed_at = time.monotonic()
                    proc.kill()
                    proc.wait(WAIT)
                    while not ended and time.monotonic() < killed_at + WAIT:
                        time.sleep(0.01)
                    assert ended, "the listener's leg never closed"
                    code, at = ended[0]
                    assert code == 1001 and at - killed_at < 1.0, (code, at - killed_at)
                    calm.send("still here")
                    assert calm.recv(WAIT) == "still here"
                    return
            proc.kill()
            proc.wait(WAIT)
            code, took = closed_within(ws, 1.0)
            assert code == 1001 and took < 1.0, (code, took)
            calm.send("still here")  # the other pair was not disturbed
            assert calm.recv(WAIT) == "still here"


@pytest.mark.parametrize("adapter_name", ["threads", "gevent"])
def test_blocking_listeners_reconnect_after_the_service_restarts(adapter_name: str) -> None:
    adapter = importlib.import_module(f"hyco_proto.adapters.{adapter_name}")
    port = free_port()
    uri = f"ws://127.0.0.1:{port}/$hc/restart"
    with relay_on(port):
        server = adapter.RelayedServer(uri, lambda: token(uri), connection=echo, **FAST)
        server.start()
    try:
        # The relay is gone; the listener keeps trying on its schedule. Bring the relay back.
        with relay_on(port):
            deadline = time.monotonic() + WAIT
            while True:
                try:
                    with adapter.relayed_connect(uri, token(uri), open_timeout=2.0) as ws:
                        ws.send("back")
                        assert ws.recv(WAIT) == "back"
                        break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
    finally:
        server.close()


def test_asyncio_listener_reconnects_after_the_service_restarts() -> None:
    import asyncio

    from hyco_proto.adapters.asyncio import RelayedServer, RelayServiceServer, relayed_connect

    async def aecho(ws: Any) -> None:
        with contextlib.suppress(Exception):
            async for message in ws:
                await ws.send(message)

    async def main() -> None:
        port = free_port()
        uri = f"ws://127.0.0.1:{port}/$hc/restart"
        first = RelayServiceServer(port=port)
        await first.start()
        server = RelayedServer(uri, lambda: token(uri), connection=aecho, **FAST)
        await server.start()
        await first.close()
        second = RelayServiceServer(port=port)
        await second.start()
        try:
            deadline = time.monotonic() + WAIT
            while True:
                try:
                    ws = await relayed_connect(uri, token(uri), open_timeout=2.0)
                    await ws.send("back")
                    assert await asyncio.wait_for(ws.recv(), WAIT) == "back"
                    await ws.close()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
        finally:
            await server.close()
            await second.close()

    asyncio.run(asyncio.wait_for(main(), 3 * WAIT))


def test_half_open_handshakes_and_a_reader_that_never_reads_do_not_delay_others() -> None:
    """1,000 connections that send half a request head and stall, and a listener that never
    reads a sender that floods it: a calm pair still echoes promptly."""
    from hyco_proto.adapters.threads import RelayedServer, relayed_connect

    port = free_port()
    with relay_on(port) as relay, contextlib.ExitStack() as stack:
        stalled = []
        for _ in range(1000):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), WAIT))
            sock.sendall(b"GET /$hc/x?sb-hc-action=connect HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            stalled.append(sock)
        flood_uri = f"{relay.url}/$hc/flood"
        never_reads = stack.enter_context(RelayedServer(
            flood_uri, lambda: token(flood_uri), connection=lambda s: time.sleep(WAIT)))
        flooder = stack.enter_context(relayed_connect(flood_uri, token(flood_uri)))
        blob = b"z" * 65536
        sent = 0
        flooder_done = time.monotonic() + 1.0
        with contextlib.suppress(TimeoutError, OSError, ConnectionClosedError):
            while time.monotonic() < flooder_done and sent < 64 << 20:
                flooder.send(blob)  # blocks once the relay stops reading it (backpressure)
                sent += len(blob)
        calm_uri = f"{relay.url}/$hc/calm"
        stack.enter_context(RelayedServer(calm_uri, lambda: token(calm_uri), connection=echo))
        calm = stack.enter_context(relayed_connect(calm_uri, token(calm_uri), open_timeout=2.0))
        for n in range(20):
            start = time.monotonic()
            calm.send(f"ping {n}")
            assert calm.recv(2.0) == f"ping {n}"
            assert time.monotonic() - start < 2.0
        assert never_reads is not None and len(stalled) == 1000


def test_everything_sent_before_an_orderly_close_arrives_once_in_order() -> None:
    from hyco_proto.adapters.threads import RelayedServer, relayed_connect

    got: list[str] = []
    codes: list[int | None] = []

    def collect(sock: Any) -> None:
        with contextlib.suppress(ConnectionClosedError):
            for message in sock:
                got.append(message)
        codes.append(sock.close_code)

    port = free_port()
    with relay_on(port) as relay:
        uri = f"{relay.url}/$hc/order"
        with RelayedServer(uri, lambda: token(uri), connection=collect):
            ws = relayed_connect(uri, token(uri))
            for n in range(10_000):
                ws.send(str(n))
            ws.close(1000, "done")
            deadline = time.monotonic() + WAIT
            while not codes and time.monotonic() < deadline:
                time.sleep(0.01)
    assert codes == [1000]
    assert got == [str(n) for n in range(10_000)]
