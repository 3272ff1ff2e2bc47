"""One scenario suite for every adapter (asyncio, threads, gevent) against the local relay.

Each scenario is written once against the synchronous facades of ``harness.py`` and runs for
each adapter: echo, 1 MiB / 16 MiB messages, 200 concurrent connections, reject, token renewal,
an unreachable or refusing relay, reconnect after the relay restarts, clean shutdown, mixed
pairings (a listener of one adapter with senders of the others), and Microsoft's hyco-ws as the
other end (marked ``node``). The relay is our service (``Emulator``) on a free loopback port.

After every scenario the harness checks that nothing is left running: the threads the scenario
started (the adapters' and the facades'), the gevent greenlets, the asyncio tasks. Every wait
is bounded; nothing sleeps to order events.
"""

from __future__ import annotations

import base64
import contextlib
import faulthandler
import hashlib
import os
import socket
import time
from collections.abc import Iterator

import pytest

from hyco_proto import errors
from hyco_proto.drivers.stream import ConnectionClosedError
from hyco_proto.errors import AuthorizationError, RelayError
from hyco_proto.sas import token_expiry
from hyco_proto.service.config import ServiceConfig
from tests.interop import NodePeer
from tests.interop import listen_uri as node_listen_uri
from tests.interop import send_uri as node_send_uri

from .harness import (
    ADAPTERS,
    WAIT,
    Emulator,
    Harness,
    Recorder,
    echo_all,
    free_port,
    parallel,
    token,
    wait_until,
)

each_adapter = pytest.mark.parametrize("name", ADAPTERS)
MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    """A hung scenario ends the run with every thread's traceback instead of hanging it."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator() as emu:
        yield emu


@pytest.fixture
def harness() -> Iterator[Harness]:
    """Facades on demand; afterwards, no leaked threads, greenlets or asyncio tasks."""
    h = Harness()
    try:
        yield h
    finally:
        h.close()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------
# messages


@each_adapter
def test_echo_text_and_binary(emulator: Emulator, harness: Harness, name: str) -> None:
    f = harness(name)
    with f.listen(emulator.listen_uri()):
        ws = f.relayed_connect(emulator.send_uri())
        echo_all(ws, ["hello", b"\x00\x01binary", "é ü €", b"", ""])
        ws.ping()
        ws.close()
        assert ws.close_code == 1000


@pytest.mark.parametrize("size", [MiB, 16 * MiB], ids=["1MiB", "16MiB"])
@each_adapter
def test_large_message_byte_exact(emulator: Emulator, harness: Harness, name: str,
                                  size: int) -> None:
    f = harness(name)
    blob = os.urandom(size)
    with f.listen(emulator.listen_uri()):
        ws = f.relayed_connect(emulator.send_uri())
        ws.send(blob, timeout=60)
        got = ws.recv(timeout=60)
        assert isinstance(got, bytes) and len(got) == size
        assert _digest(got) == _digest(blob)
        if size == MiB:
            text = "é" * (MiB // 2)  # 1 MiB of UTF-8
            assert ws.echo(text) == text
        ws.close()


@each_adapter
def test_200_concurrent_connections(emulator: Emulator, harness: Harness, name: str) -> None:
    f = harness(name)
    with f.listen(emulator.listen_uri()):
        socks = parallel([lambda: f.relayed_connect(emulator.send_uri())] * 200)
        try:
            assert emulator.status()["live_relayed_pairs"] == 200
            parallel([lambda i=i, s=s: echo_all(s, [f"{i}-a", f"{i}-b".encode(), f"{i}-c"])
                      for i, s in enumerate(socks)])
        finally:
            parallel([s.close for s in socks])
        assert all(s.close_code == 1000 for s in socks)
        wait_until(lambda: emulator.status()["live_relayed_pairs"] == 0, what="pairs closed")


# ------------------------------------------------------------------------------------------
# refusals


@each_adapter
def test_reject_reaches_sender_with_status(emulator: Emulator, harness: Harness,
                                           name: str) -> None:
    f = harness(name)
    with pytest.raises(ValueError):
        f.module.Reject(200, "not an error status")
    with f.listen(emulator.listen_uri(), headers=lambda request: f.module.Reject(403, "no")):
        with pytest.raises(RelayError) as info:
            f.relayed_connect(emulator.send_uri())
        assert info.value.status == 403
        assert "no" in (info.value.description or str(info.value))
        rejected = getattr(errors, "ListenerRejectedError", None)
        if rejected is not None:
            assert isinstance(info.value, rejected), type(info.value)
        # The listener is still there for the next sender.
        assert emulator.listeners() == 1


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A port that completes TCP handshakes (the kernel's backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.mark.parametrize(("relay", "how"), [("refused", "start"), ("refused", "with"),
                                            ("silent", "start")])
@each_adapter
def test_unreachable_relay_raises_within_open_timeout(harness: Harness, name: str,
                                                     relay: str, how: str) -> None:
    f = harness(name)
    with contextlib.ExitStack() as stack:
        port = free_port() if relay == "refused" else stack.enter_context(silent_port())
        uri = f"ws://127.0.0.1:{port}/$hc/myhc"
        server = f.relayed_server(uri, lambda: token(uri), open_timeout=2)
        began = time.monotonic()
        with pytest.raises(Exception) as info:  # the type is checked below
            if how == "start":
                server.start(timeout=WAIT)
            else:
                server.enter(timeout=WAIT)
        elapsed = time.monotonic() - began
    assert not isinstance(info.value, TimeoutError) or "within 10" not in str(info.value), \
        "the harness's bound ran out: start() did not raise by itself"
    assert isinstance(info.value, (RelayError, OSError)), repr(info.value)
    assert f"127.0.0.1:{port}" in str(info.value), str(info.value)
    assert elapsed < 2 + 1.5, f"raised after {elapsed:.1f} s"
    if relay == "refused":
        assert "refused" in str(info.value), str(info.value)
    server.close()


@each_adapter
def test_wrong_key_raises_authorization_error_from_start(emulator: Emulator, harness: Harness,
                                                         name: str) -> None:
    f = harness(name)
    uri = emulator.listen_uri()
    errors_seen = Recorder()
    server = f.relayed_server(uri, token(uri, key="wrong-key"), error=errors_seen,
                              open_timeout=2)
    with pytest.raises(AuthorizationError) as info:
        server.start()
    assert info.value.status == 401
    server.close()
    assert emulator.listeners() == 0


# ------------------------------------------------------------------------------------------
# liveness


@each_adapter
def test_callable_token_is_renewed_and_keeps_listener_alive(harness: Harness,
                                                             name: str) -> None:
    f = harness(name)
    with Emulator(ServiceConfig(token_grace=0.2)) as emu:
        renewals = emu.count_renewals()
        uri = emu.listen_uri()
        issued: list[str] = []

        def short_lived() -> str:
            issued.append(token(uri, ttl=2))
            return issued[-1]

        errors_seen = Recorder()
        with f.listen(uri, short_lived, error=errors_seen):
            first_expiry = token_expiry(issued[0])
            assert first_expiry is not None
            # Renewed half-way through each token; wait past the first one's expiry + grace.
            wait_until(lambda: len(renewals) >= 2 and time.time() > first_expiry + 0.5,
                       what=f"two renewals and the first token expired ({len(renewals)})")
            assert errors_seen.items == []
            assert emu.listeners() == 1
            ws = f.relayed_connect(emu.send_uri())
            echo_all(ws, ["alive"])
            ws.close()
        assert len(issued) >= 3


@each_adapter
def test_listener_reconnects_after_relay_restart(harness: Harness, name: str) -> None:
    f = harness(name)
    errors_seen = Recorder()
    first = Emulator().__enter__()
    try:
        port = first.port
        server = f.listen(first.listen_uri(), error=errors_seen, reconnect_delays=(0.05, 0.1))
        try:
            ws = f.relayed_connect(first.send_uri())
            echo_all(ws, ["before"])
            first.__exit__(None, None, None)
            errors_seen.wait_for(1)
            assert isinstance(errors_seen.items[0], RelayError), errors_seen.items
            with pytest.raises((ConnectionClosedError, RelayError, OSError)):
                ws.recv()
            with Emulator(port=port) as second:
                wait_until(lambda: second.listeners() == 1, what="the listener came back")
                again = f.relayed_connect(second.send_uri())
                echo_all(again, ["after", b"restart"])
                again.close()
                server.close()
        finally:
            server.close()
    finally:
        first.__exit__(None, None, None)


@each_adapter
def test_clean_shutdown_leaves_nothing_running(emulator: Emulator, harness: Harness,
                                               name: str) -> None:
    f = harness(name)
    server = f.listen(emulator.listen_uri(), echo=False)
    sender = f.relayed_connect(emulator.send_uri())
    leg = server.accept()
    sender.send("to the listener")
    assert leg.recv() == "to the listener"
    leg.send(b"to the sender")
    assert sender.recv() == b"to the sender"
    server.close()
    assert leg.close_code == 1001
    with pytest.raises(ConnectionClosedError) as info:
        sender.recv()
    assert info.value.code == 1001
    wait_until(lambda: emulator.listeners() == 0, what="control channel closed")
    server.close()  # idempotent
    harness.close()  # threads, greenlets and tasks checked here, before the fixture's check


# ------------------------------------------------------------------------------------------
# mixed pairings


@pytest.mark.parametrize("listener", ADAPTERS)
def test_mixed_pairings(emulator: Emulator, harness: Harness, listener: str) -> None:
    with harness(listener).listen(emulator.listen_uri()):
        socks = {n: harness(n).relayed_connect(emulator.send_uri()) for n in ADAPTERS}
        assert emulator.status()["live_relayed_pairs"] == len(ADAPTERS)
        parallel([lambda n=n, s=s: echo_all(s, [f"from {n}", n.encode() * 1000])
                  for n, s in socks.items()])
        for sock in socks.values():
            sock.close()
            assert sock.close_code == 1000


# ------------------------------------------------------------------------------------------
# Microsoft's hyco-ws as the other end


@pytest.mark.node
@each_adapter
def test_hycows_sender_to_our_listener(emulator: Emulator, harness: Harness, name: str) -> None:
    f = harness(name)
    blob = base64.b64encode(os.urandom(50_000)).decode()
    with f.listen(emulator.listen_uri()), NodePeer(
            {"mode": "send", "sendUri": node_send_uri(emulator),
             "messages": ["hello", {"binary": blob}], "expect": 2}) as peer:
        events = peer.finish()
    replies = [e.get("text", e.get("binary")) for e in events if e["event"] == "message"]
    assert replies == ["hello", blob]
    assert [e["code"] for e in events if e["event"] == "close"] == [1000]


@pytest.mark.node
@each_adapter
def test_our_sender_to_hycows_listener(emulator: Emulator, harness: Harness, name: str) -> None:
    f = harness(name)
    blob = os.urandom(100_000)
    with NodePeer({"mode": "listen", "listenUri": node_listen_uri(emulator)}) as peer:
        peer.wait_event("listening")
        ws = f.relayed_connect(node_send_uri(emulator), subprotocols=["chat"])
        assert ws.subprotocol == "chat"
        assert ws.echo("hello") == "echo:hello"
        assert ws.echo(blob) == blob
        ws.close()
        assert ws.close_code == 1000
        assert peer.wait_event("listener-close")["code"] == 1000
        peer.stop()


def test_adapters_listed() -> None:
    assert ADAPTERS == ("asyncio", "threads", "gevent")
    assert WAIT <= 10
