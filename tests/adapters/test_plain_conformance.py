"""The plain ``serve`` / ``connect`` of every adapter over real loopback sockets.

* Conformance, server role: every row of ``tests/test_conformance.py``'s table (the rows the
  WebSocket layer passes in memory) against each adapter's ``serve`` with an echoing handler.
  A raw client completes the opening handshake, writes the row's bytes, reads until the server
  closes TCP and compares what came back with the row; the handler's socket must end with the
  row's close code. Handshake rows 0.1-0.4 check the server's answers to bad upgrades.
* Interop with the ``websockets`` library: its client against our ``serve``, our ``connect``
  against its server.

Over TCP a row's writes may be merged or split by the network, so:

* rows the server fails, and rows with frames after the peer's close, are written in one write
  only (written frame by frame, the rest would reach a socket the server has already closed);
* rows whose valid message precedes a violation in the same write (the rows with a documented
  one-write alternative, Autobahn NON-STRICT) may get any prefix of their echoes: the handler
  echoes asynchronously, the reader fails the connection at once;
* "bytes" mode (one write per byte) runs for rows up to 4 KiB.
"""

from __future__ import annotations

import base64
import contextlib
import faulthandler
import hashlib
import os
import queue
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import websockets.sync.client
import websockets.sync.server

from hyco_proto.drivers.stream import ConnectionClosedError
from hyco_proto.handshake import ClientHandshake, HandshakeAccepted
from tests.test_conformance import GUID, SERVER_CASES, Case, _parse_response, _request
from tests.wsutil import (
    EOF,
    OP_CLOSE,
    Item,
    complete_frames_length,
    decode_output,
    parse_frames,
    writes_for,
)
from tests.wsutil import close as close_frame

from .harness import ADAPTERS, WAIT, Harness, PlainServer

#: "bytes" mode only for rows up to this size (a write per byte is slow for 64 KiB rows).
BYTES_MODE_MAX = 4096


def _frames_after_close(case: Case) -> bool:
    opcodes = [f.opcode for f in parse_frames(b"".join(case.frames))]
    return OP_CLOSE in opcodes and opcodes.index(OP_CLOSE) != len(opcodes) - 1


def modes_for(case: Case) -> tuple[str, ...]:
    if case.failed or case.whole is not None or _frames_after_close(case):
        return ("whole",)
    if sum(map(len, case.frames)) <= BYTES_MODE_MAX:
        return ("whole", "frames", "bytes")
    return ("whole", "frames")


def _params() -> list[Any]:
    return [pytest.param(case, mode, id=f"{case.id}-{mode}")
            for case in SERVER_CASES for mode in modes_for(case)]


def allowed_outputs(case: Case) -> list[list[Item]]:
    """The row's output; for NON-STRICT rows, any prefix of its echoes then the close."""
    if case.whole is None:
        return [case.expect]
    tail = case.expect[-2:]
    replies = case.expect[:-2]
    assert case.whole == tail, case.id
    return [[*replies[:n], *tail] for n in range(len(replies) + 1)]


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    """A hung row ends the run with every thread's traceback instead of hanging it."""
    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


class EchoServer:
    """One adapter's ``serve`` (echo) for a whole module, with the handler's closed sockets."""

    def __init__(self) -> None:
        self.closed: queue.Queue[Any] = queue.Queue()
        self.server: PlainServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def drain(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self.closed.get_nowait()

    def next_closed(self) -> Any:
        try:
            return self.closed.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"the handler did not end within {WAIT} s") from None


@pytest.fixture(scope="module", params=ADAPTERS)
def echo_server(request: pytest.FixtureRequest) -> Iterator[EchoServer]:
    """Module-wide per adapter; afterwards no leaked threads, greenlets or tasks."""
    harness = Harness()
    try:
        echo = EchoServer()
        with harness(request.param).serve_echo(record=echo.closed.put) as echo.server:
            yield echo
    finally:
        harness.close()


# ------------------------------------------------------------------------------------------
# a raw client


def open_raw(port: int, path: str = "/") -> tuple[socket.socket, bytearray]:
    """TCP to the server and a completed opening handshake; the bytes after the 101 too."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    hs = ClientHandshake.from_url(f"ws://127.0.0.1:{port}{path}")
    sock.sendall(hs.data_to_send())
    while (event := hs.next_event()) is None:
        data = sock.recv(65536)
        hs.receive_data(data)
        if not data:
            break
    assert isinstance(event, HandshakeAccepted), event
    assert event.subprotocol is None
    return sock, bytearray(event.trailing_data)


def decoded(buf: bytes | bytearray, *, eof: bool = False) -> list[Item]:
    """What the server sent (``b""`` only marks EOF, so an empty ``buf`` is left out)."""
    chunks = [bytes(buf)] if buf else []
    return decode_output([*chunks, b""] if eof else chunks, expect_masked=False)


def read_frames(sock: socket.socket, buf: bytearray, frames: int) -> None:
    """Read into ``buf`` until it holds ``frames`` whole frames (fails on EOF first)."""
    while len(parse_frames(bytes(buf[: complete_frames_length(buf)]))) < frames:
        data = sock.recv(65536)
        assert data, f"EOF before {frames} frames: {decoded(buf)}"
        buf += data


def read_to_eof(sock: socket.socket, buf: bytearray) -> str | None:
    """Read into ``buf`` until the server closes TCP; the error if it was reset instead."""
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError as exc:
            return repr(exc)
        if not data:
            return None
        buf += data


def write_all(sock: socket.socket, writes: list[bytes]) -> None:
    for data in writes:
        sock.sendall(data)


# ------------------------------------------------------------------------------------------
# conformance rows, server role


def test_row_modes_cover_every_row() -> None:
    rows = {p.values[0].id for p in _params()}
    assert rows == {c.id for c in SERVER_CASES}
    assert len(rows) > 380


@pytest.mark.parametrize(("case", "mode"), _params())
def test_server_row(echo_server: EchoServer, case: Case, mode: str) -> None:
    echo_server.drain()
    sock, buf = open_raw(echo_server.port)
    with sock:
        write_all(sock, writes_for(mode, case.frames))
        if case.after:
            # The peer's close goes once the echoes have arrived (one frame each).
            replies = len(case.expect) - 2
            read_frames(sock, buf, replies)
            assert decoded(buf) == case.expect[:replies]
            write_all(sock, writes_for(mode, case.after))
        reset = read_to_eof(sock, buf)
    got = decoded(buf, eof=True)
    assert got in allowed_outputs(case), (got, reset)
    assert reset is None, reset
    ws = echo_server.next_closed()
    assert ws.close_code == case.code


def _raw_handshake(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(request)
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            assert data, f"EOF before a complete response: {bytes(buf)!r}"
            buf += data
        status, headers, _ = _parse_response(bytes(buf))
        if status == 101:
            sock.sendall(close_frame(1000))
            rest = bytearray(buf.partition(b"\r\n\r\n")[2])
            assert read_to_eof(sock, rest) is None
            return status, headers, bytes(rest)
        assert read_to_eof(sock, bytearray()) is None  # a refusal closes the connection
        return status, headers, b""


def test_0_1_accept_and_close(echo_server: EchoServer) -> None:
    key = base64.b64encode(bytes(range(16))).decode()
    status, headers, rest = _raw_handshake(echo_server.port, _request(key=key))
    assert status == 101
    assert headers["upgrade"].lower() == "websocket"
    assert headers["connection"].lower() == "upgrade"
    want = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    assert headers["sec-websocket-accept"] == want
    assert "sec-websocket-extensions" not in headers
    assert "sec-websocket-protocol" not in headers
    assert decoded(rest, eof=True) == [("close", 1000), EOF]


def test_0_2_wrong_version_gets_426_with_version_header(echo_server: EchoServer) -> None:
    status, headers, _ = _raw_handshake(echo_server.port, _request(version="12"))
    assert status == 426
    assert headers["sec-websocket-version"] == "13"


def test_0_3_extension_offer_not_selected(echo_server: EchoServer) -> None:
    request = _request(extra="Sec-WebSocket-Extensions: permessage-deflate\r\n"
                             "Sec-WebSocket-Protocol: chat\r\n")
    status, headers, _ = _raw_handshake(echo_server.port, request)
    assert status == 101
    assert "sec-websocket-extensions" not in headers
    assert "sec-websocket-protocol" not in headers


@pytest.mark.parametrize(
    "key", [None, "", "dGhlIHNhbXBsZQ==", "not base64!!", "AAAAAAAAAAAAAAAAAAAAAAA="])
def test_0_4_missing_or_bad_key_gets_400(echo_server: EchoServer, key: str | None) -> None:
    assert _raw_handshake(echo_server.port, _request(key=key))[0] == 400


# ------------------------------------------------------------------------------------------
# interop with websockets


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        h.close()


BLOB = os.urandom(1024 * 1024)


@pytest.mark.parametrize("name", ADAPTERS)
def test_websockets_client_to_our_serve(harness: Harness, name: str) -> None:
    closed: queue.Queue[Any] = queue.Queue()
    with harness(name).serve_echo(subprotocols=["chat.v2", "chat.v1"],
                                  record=closed.put) as server:
        url = f"ws://127.0.0.1:{server.port}/some/path?x=1"
        with websockets.sync.client.connect(url, subprotocols=["chat.v1", "chat.v2"],
                                            max_size=None, open_timeout=WAIT) as ws:
            assert ws.subprotocol == "chat.v2"  # the server's preference
            ws.send("hello")
            assert ws.recv(WAIT) == "hello"
            ws.send(BLOB)
            assert ws.recv(WAIT) == BLOB
            ws.send("é€😀")
            assert ws.recv(WAIT) == "é€😀"
            assert ws.ping().wait(WAIT)
        assert ws.close_code == 1000
        ours = closed.get(timeout=WAIT)
        assert ours.close_code == 1000


def _websockets_echo(ws: websockets.sync.server.ServerConnection) -> None:
    for message in ws:
        if message == "close-me":
            ws.close(4001, "bye")
            return
        ws.send(message)


@contextlib.contextmanager
def websockets_server() -> Iterator[int]:
    with websockets.sync.server.serve(_websockets_echo, "127.0.0.1", 0, max_size=None,
                                      subprotocols=["chat.v2", "chat.v1"]) as server:
        thread = threading.Thread(target=server.serve_forever, name="websockets-server")
        thread.start()
        try:
            yield server.socket.getsockname()[1]
        finally:
            server.shutdown()
            thread.join(WAIT)


@pytest.mark.parametrize("name", ADAPTERS)
def test_our_connect_to_websockets_server(harness: Harness, name: str) -> None:
    f = harness(name)
    with websockets_server() as port:
        url = f"ws://127.0.0.1:{port}/"
        ws = f.connect(url, subprotocols=["chat.v1", "chat.v2"])
        assert ws.subprotocol == "chat.v2"
        assert ws.echo("hello") == "hello"
        assert ws.echo(BLOB) == BLOB
        assert ws.echo("é€😀") == "é€😀"
        ws.ping()
        ws.close()
        assert ws.close_code == 1000
        # The server closes: recv raises with its code and reason.
        ws = f.connect(url, subprotocols=["chat.v1"])
        assert ws.subprotocol == "chat.v1"
        ws.send("close-me")
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv()
        assert info.value.code == 4001
        assert info.value.reason == "bye"
        assert ws.close_code == 4001
        assert ws.close_reason == "bye"
        ws.close()
