"""The threads and gevent adapters (one blocking implementation, two runtimes), focused tests.

Every test runs once per adapter. Plain ``connect`` / ``serve`` over loopback; relayed sockets
through the local relay service (``ThreadedEmulator``: asyncio in a background thread). gevent
runs in this thread's hub, un-patched; the monkey-patched case runs in a subprocess. Each test
checks that no thread or greenlet it started is still running afterwards. Waits are bounded;
nothing sleeps to order events (the only sleeps are bounded polls for a condition).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from hyco_proto.errors import (
    AuthorizationError,
    ListenerRejectedError,
    RelayError,
)
from hyco_proto.listener import ConnectionRequested
from tests.adapters.asyncio_util import token
from tests.interop import ThreadedEmulator
from tests.procutil import free_port

#: Upper bound for every wait in these tests (seconds).
WAIT = 10.0
ADAPTERS = ["threads", "gevent"]
ROOT = Path(__file__).resolve().parents[2]


def live_greenlets() -> list[Any]:
    if "gevent" not in sys.modules:
        return []
    import gevent

    return [g for g in gc.get_objects() if isinstance(g, gevent.Greenlet) and not g.dead]


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    """The adapter module; fails the test if a thread or greenlet it started survives."""
    module = importlib.import_module(f"hyco_proto.adapters.{request.param}")
    threads = set(threading.enumerate())
    greenlets = {id(g) for g in live_greenlets()}
    yield module
    left = [t.name for t in threading.enumerate() if t not in threads and t.is_alive()]
    left += [repr(g) for g in live_greenlets() if id(g) not in greenlets]
    assert not left, f"still running after the test: {left}"


@pytest.fixture(scope="module")
def relay() -> Iterator[ThreadedEmulator]:
    with ThreadedEmulator() as emulator:
        yield emulator


def hc_uri(relay_: ThreadedEmulator, hc: str = "myhc") -> str:
    return f"{relay_.url}/$hc/{hc}"


def echo(ws: Any) -> None:
    for message in ws:
        ws.send(message)


def poll(adapter: ModuleType, condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Wait (bounded) until ``condition()``; cooperative under gevent."""
    rt = adapter.RUNTIME
    deadline = rt.monotonic() + timeout
    while not condition():
        if rt.monotonic() > deadline:
            return False
        rt.sleep(0.005)
    return True


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections (kernel backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A TCP port whose accept queue is full: a connect() to it hangs (SYNs are dropped)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(0)
        port = int(sock.getsockname()[1])
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT):
            yield port


# ------------------------------------------------------------------------------------------
# plain connect / serve


def test_plain_echo_text_binary_and_1_mib(adapter: ModuleType) -> None:
    accepted: list[Any] = []

    def handler(ws: Any) -> None:
        accepted.append(ws)
        echo(ws)

    big = os.urandom(1024 * 1024)
    with adapter.serve(handler, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.port}/path?q=1"
        with adapter.connect(url, headers={"X-Test": "yes"}) as ws:
            ws.send("héllo")
            assert ws.recv(timeout=WAIT) == "héllo"
            ws.send(b"\x00\x01binary")
            assert ws.recv(timeout=WAIT) == b"\x00\x01binary"
            ws.send(memoryview(big))
            got = ws.recv(timeout=WAIT)
            assert isinstance(got, bytes) and got == big
        assert (ws.close_code, ws.closed) == (1000, True)
    request = accepted[0].request
    assert request.target == "/path?q=1"
    assert ("X-Test", "yes") in request.headers or ("x-test", "yes") in request.headers
    assert accepted[0].close_code == 1000


def test_plain_subprotocol_is_the_servers_preference(adapter: ModuleType) -> None:
    with adapter.serve(echo, "127.0.0.1", 0, subprotocols=["v2", "v1"]) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        with adapter.connect(url, subprotocols=["v1", "v2"]) as ws:
            assert ws.subprotocol == "v2"
        with adapter.connect(url, subprotocols=["other"]) as ws:
            assert ws.subprotocol is None


def test_recv_timeout_then_the_socket_still_works(adapter: ModuleType) -> None:
    with adapter.serve(echo, "127.0.0.1", 0) as server, \
            adapter.connect(f"ws://127.0.0.1:{server.port}/") as ws:
        with pytest.raises(TimeoutError, match="no message within"):
            ws.recv(timeout=0.05)
        ws.send("still here")
        assert ws.recv(timeout=WAIT) == "still here"


def test_ping_pong_and_closed_socket_errors(adapter: ModuleType) -> None:
    with adapter.serve(echo, "127.0.0.1", 0) as server:
        ws = adapter.connect(f"ws://127.0.0.1:{server.port}/")
        first, second = ws.ping(), ws.ping(b"mine")
        assert second.wait(WAIT) and first.wait(WAIT)
        assert first.latency is not None and first.latency >= 0
        ws.close()
        with pytest.raises(adapter.ConnectionClosedError) as info:
            ws.send("late")
        assert info.value.code == 1000 and info.value.ok
        with pytest.raises(adapter.ConnectionClosedError):
            ws.ping()
        with pytest.raises(adapter.ConnectionClosedError):
            ws.recv(timeout=WAIT)
        assert list(ws) == []  # a normal close ends iteration


def test_close_codes_both_ways(adapter: ModuleType) -> None:
    seen: list[Any] = []

    def handler(ws: Any) -> None:
        seen.append(ws)
        message = ws.recv(timeout=WAIT)
        if message == "fail":
            raise RuntimeError("handler failed (expected by the test)")
        if message == "wait":
            ws.recv(timeout=WAIT)  # until the client closes

    with adapter.serve(handler, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.port}/"
        with adapter.connect(url) as ws:
            ws.send("fail")
            with pytest.raises(adapter.ConnectionClosedError) as info:
                ws.recv(timeout=WAIT)
            assert info.value.code == 1011 and not info.value.ok
            assert ws.close_code == 1011
        with adapter.connect(url) as ws:
            ws.send("return")  # the handler returns: 1000, iteration just ends
            assert list(ws) == []
            assert ws.close_code == 1000
        with adapter.connect(url) as ws:
            ws.send("wait")
            ws.close(4000, "bye")
            assert ws.close_code == 4000  # the server's echo of our close
    assert (seen[2].close_code, seen[2].close_reason) == (4000, "bye")


def test_refused_upgrade_raises_the_typed_error(adapter: ModuleType,
                                                relay: ThreadedEmulator) -> None:
    # The relay refuses a sender without a token with 401.
    url = f"{hc_uri(relay)}?sb-hc-action=connect"
    with pytest.raises(AuthorizationError, match="refused the WebSocket upgrade: 401"):
        adapter.connect(url)


def test_unreachable_refused_silent_and_not_tls(adapter: ModuleType) -> None:
    port = free_port()
    with pytest.raises(ConnectionRefusedError,
                       match=f"nothing is listening at 127.0.0.1:{port}"):
        adapter.connect(f"ws://127.0.0.1:{port}/")
    with silent_server() as silent:
        start = adapter.RUNTIME.monotonic()
        with pytest.raises(TimeoutError, match=f"no answer to the WebSocket upgrade from "
                                               f"127.0.0.1:{silent} .* within 0.2 s"):
            adapter.connect(f"ws://127.0.0.1:{silent}/", open_timeout=0.2)
        assert adapter.RUNTIME.monotonic() - start < WAIT
    with adapter.serve(echo, "127.0.0.1", 0) as server, pytest.raises(
            OSError, match=rf"not speaking TLS on {server.port} \(use ws://\)"):
        adapter.connect(f"wss://127.0.0.1:{server.port}/")


def test_wss_plain_and_relayed(adapter: ModuleType,
                               tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls_contexts
    with adapter.serve(echo, "127.0.0.1", 0, ssl=server_ctx) as server, \
            adapter.connect(f"wss://127.0.0.1:{server.port}/", ssl=client_ctx) as ws:
        ws.send(b"z" * 300_000)
        assert ws.recv(timeout=WAIT) == b"z" * 300_000
    with ThreadedEmulator(ssl=server_ctx) as secure:
        uri = hc_uri(secure)
        assert uri.startswith("wss://")
        with adapter.RelayedServer(uri, lambda: token(uri), connection=echo, ssl=client_ctx), \
                adapter.relayed_connect(uri, token(uri), ssl=client_ctx) as ws:
            ws.send("secure")
            assert ws.recv(timeout=WAIT) == "secure"
        assert ws.close_code == 1000


def test_reading_pauses_at_max_queue(adapter: ModuleType) -> None:
    """The reader stops while max_queue messages wait: the queue holds at most what one read
    brought in beyond max_queue; everything arrives, in order, once recv drains it."""
    count, size = 64, 16 * 1024
    sent = adapter.RUNTIME.event()

    def flood(ws: Any) -> None:
        for index in range(count):
            ws.send(index.to_bytes(4, "big") * (size // 4))
        sent.set()
        ws.recv(timeout=WAIT)  # until the client closes

    with adapter.serve(flood, "127.0.0.1", 0) as server, \
            adapter.connect(f"ws://127.0.0.1:{server.port}/", max_queue=2) as ws:
        assert poll(adapter, lambda: ws.queued_messages >= 2)
        sent.wait(0.2)  # the kernel buffers take most of it; the reader is paused meanwhile
        assert ws.queued_messages <= 2 + 65536 // size + 1
        for index in range(count):
            assert ws.recv(timeout=WAIT) == index.to_bytes(4, "big") * (size // 4)


# ------------------------------------------------------------------------------------------
# relayed


def test_relayed_echo_text_binary_and_1_mib(adapter: ModuleType,
                                            relay: ThreadedEmulator) -> None:
    uri = hc_uri(relay)
    big = os.urandom(1024 * 1024)
    accepted: list[Any] = []

    def connection(ws: Any) -> None:
        accepted.append(ws)
        echo(ws)

    with adapter.RelayedServer(uri, lambda: token(uri), connection=connection) as server:
        assert server.is_listening
        with adapter.relayed_connect(f"{uri}/sub?app=1", token(uri),
                                     headers={"X-Who": "me"}, subprotocols=["p1", "p2"]) as ws:
            assert ws.subprotocol == "p1"  # default decision: the sender's first offer
            ws.send("text")
            assert ws.recv(timeout=WAIT) == "text"
            ws.send(big)
            assert ws.recv(timeout=WAIT) == big
            assert ws.ping().wait(WAIT)
        assert ws.close_code == 1000
        listener_side = accepted[0]
        assert listener_side.path == "/myhc/sub?app=1"
        assert listener_side.connect_headers["x-who"] == "me"
        assert isinstance(listener_side.connection_request, ConnectionRequested)


def test_relayed_accept_iteration_and_close_says_1001(adapter: ModuleType,
                                                      relay: ThreadedEmulator) -> None:
    uri = hc_uri(relay)
    server = adapter.RelayedServer(uri, lambda: token(uri))
    server.start()
    try:
        with pytest.raises(TimeoutError):
            server.accept(timeout=0.05)
        sender = adapter.relayed_connect(uri, token(uri))
        accepted = server.accept(timeout=WAIT)
        sender.send("hi")
        assert accepted.recv(timeout=WAIT) == "hi"
    finally:
        server.close()
    with pytest.raises(adapter.ConnectionClosedError) as info:
        sender.recv(timeout=WAIT)
    assert info.value.code == 1001
    sender.close()
    assert accepted.close_code == 1001
    assert list(server) == []  # iteration over a closed server ends
    with pytest.raises(RelayError, match="is closed"):
        server.accept(timeout=WAIT)


def test_relayed_reject_and_failing_hook(adapter: ModuleType, relay: ThreadedEmulator) -> None:
    uri = hc_uri(relay)

    def decide(request: ConnectionRequested) -> Any:
        path = request.command.address
        if "/deny" in path:
            return adapter.Reject(403, "not you")
        if "/boom" in path:
            raise RuntimeError("hook failed (expected by the test)")
        return None

    with adapter.RelayedServer(uri, lambda: token(uri), headers=decide, connection=echo):
        with pytest.raises(ListenerRejectedError, match="403: not you") as info:
            adapter.relayed_connect(f"{uri}/deny", token(uri))
        assert info.value.status == 403
        with pytest.raises(ListenerRejectedError) as info:
            adapter.relayed_connect(f"{uri}/boom", token(uri))
        assert info.value.status == 500
        with adapter.relayed_connect(f"{uri}/ok", token(uri)) as ws:
            ws.send("fine")
            assert ws.recv(timeout=WAIT) == "fine"


def test_first_open_401_raises_from_start(adapter: ModuleType, relay: ThreadedEmulator) -> None:
    uri = hc_uri(relay)
    server = adapter.RelayedServer(uri, lambda: token(uri, key="bm90IHRoZSBrZXk="))
    start = adapter.RUNTIME.monotonic()
    with pytest.raises(AuthorizationError, match=r"cannot listen at ws://127\.0\.0\.1"):
        server.start()
    assert adapter.RUNTIME.monotonic() - start < server.open_timeout
    with pytest.raises(RelayError, match="was closed; create a new RelayedServer"):
        server.start()  # a failed (closed) listener does not silently stay closed
    with pytest.raises(AuthorizationError), adapter.RelayedServer(
            uri, lambda: token(uri, key="bm90IHRoZSBrZXk=")):
        pass


def test_unreachable_and_silent_relay_raise_within_open_timeout(adapter: ModuleType) -> None:
    port = free_port()
    uri = f"ws://127.0.0.1:{port}/$hc/x"
    with pytest.raises(RelayError, match=f"nothing is listening at 127.0.0.1:{port}"):
        adapter.RelayedServer(uri, "SharedAccessSignature sr=a&sig=b&se=9999999999&skn=c").start()
    with silent_server() as silent:
        uri = f"ws://127.0.0.1:{silent}/$hc/x"
        server = adapter.RelayedServer(uri, lambda: token(uri), open_timeout=0.3)
        start = adapter.RUNTIME.monotonic()
        with pytest.raises(RelayError, match=f"cannot listen at ws://127.0.0.1:{silent}"):
            server.start()
        assert adapter.RUNTIME.monotonic() - start < WAIT
    with pytest.raises(TimeoutError, match="no answer to the WebSocket upgrade from"), \
            silent_server() as silent:
        adapter.relayed_connect(f"ws://127.0.0.1:{silent}/$hc/x", "t", open_timeout=0.2)


def test_close_cancels_a_connect_in_progress(adapter: ModuleType) -> None:
    with unanswered_port() as port:
        uri = f"ws://127.0.0.1:{port}/$hc/x"
        server = adapter.create_relayed_server(
            {"server": uri, "token": lambda: token(uri), "open_timeout": 30.0})
        assert poll(adapter, lambda: any(t.name.endswith("-control")
                                         for t in threading.enumerate())
                    or any("control" in repr(g) for g in live_greenlets()))
        start = adapter.RUNTIME.monotonic()
        server.close()  # aborts the control channel's connect()
        assert adapter.RUNTIME.monotonic() - start < 5.0
        with pytest.raises(RelayError):
            server.start()


def test_create_relayed_server_starts_at_once(adapter: ModuleType,
                                              relay: ThreadedEmulator) -> None:
    uri = hc_uri(relay)
    server = adapter.create_relayed_server({"server": uri, "token": lambda: token(uri)}, echo)
    try:
        server.start()  # waits for the background start
        with adapter.relayed_connect(uri, token(uri)) as ws:
            ws.send("created")
            assert ws.recv(timeout=WAIT) == "created"
    finally:
        server.close()
    errors: list[Exception] = []
    failing = adapter.create_relayed_server(
        {"server": f"ws://127.0.0.1:{free_port()}/$hc/x", "token": "t", "error": errors.append})
    with pytest.raises(RelayError):
        failing.start()
    assert errors and isinstance(errors[0], RelayError)  # nobody waited: the hook heard it


# ------------------------------------------------------------------------------------------
# imports and monkey-patching


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_importing_hyco_proto_or_threads_never_imports_gevent() -> None:
    done = run_python("""
        import sys
        import hyco_proto, hyco_proto.adapters, hyco_proto.adapters.threads
        assert "gevent" not in sys.modules, sorted(m for m in sys.modules if "gevent" in m)
        import hyco_proto.adapters.gevent
        assert "gevent" in sys.modules
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_monkey_patched_program(relay: ThreadedEmulator) -> None:
    """gevent.monkey.patch_all() first, then both adapters: plain and relayed echo."""
    uri = hc_uri(relay)
    done = run_python(f"""
        from gevent import monkey
        monkey.patch_all()
        import threading
        from hyco_proto.adapters import gevent as g, threads as t
        from tests.adapters.asyncio_util import token

        def echo(ws):
            for message in ws:
                ws.send(message)

        uri = {uri!r}
        for adapter in (t, g):
            with adapter.serve(echo, "127.0.0.1", 0) as server, \\
                    adapter.connect(f"ws://127.0.0.1:{{server.port}}/") as ws:
                ws.send("plain")
                assert ws.recv(timeout=10) == "plain"
            with adapter.RelayedServer(uri, lambda: token(uri), connection=echo), \\
                    adapter.relayed_connect(uri, token(uri)) as ws:
                ws.send(b"relayed" * 10000)
                assert ws.recv(timeout=10) == b"relayed" * 10000
        assert threading.active_count() == 1, threading.enumerate()
        print("ok")
    """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_full_backlog_rejects_senders_with_503(adapter: ModuleType,
                                               relay: ThreadedEmulator) -> None:
    uri = hc_uri(relay)
    with adapter.RelayedServer(uri, lambda: token(uri), backlog=1) as server:
        first = adapter.relayed_connect(uri, token(uri))  # waits in the backlog
        # The sender's 101 can come before the listener has queued its side: wait for that,
        # or the next sender is accepted and then closed with 1013 (the race the 503 avoids).
        rt = adapter.RUNTIME
        deadline = rt.monotonic() + WAIT
        while server._accepted.qsize() < 1:
            assert rt.monotonic() < deadline, "the first connection never reached the backlog"
            rt.sleep(0.005)
        with pytest.raises(ListenerRejectedError) as info:
            adapter.relayed_connect(uri, token(uri))
        assert info.value.status == 503
        accepted = server.accept(timeout=WAIT)
        first.send("still fine")
        assert accepted.recv(timeout=WAIT) == "still fine"
        first.close()


def test_max_queue_is_checked_before_connecting(adapter: ModuleType) -> None:
    port = free_port()  # nothing listens: a check after connecting would fail differently
    for call in (lambda: adapter.connect(f"ws://127.0.0.1:{port}/", max_queue=0),
                 lambda: adapter.relayed_connect(f"ws://127.0.0.1:{port}/$hc/x", "t",
                                                 max_queue=0),
                 lambda: adapter.serve(lambda ws: None, "127.0.0.1", 0, max_queue=0)):
        with pytest.raises(ValueError, match="max_queue must be at least 1"):
            call()
