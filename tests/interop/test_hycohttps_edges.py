"""Edges the hyco-https interop tests found in the relay service (fixed; kept as regressions):
error responses that announced a body they never sent, and ``Expect: 100-continue`` never
answered (curl stalled a second on every upload over 1 MiB)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.interop import TIMEOUT, ThreadedEmulator
from tests.interop.test_hycohttps import (
    HC,
    HycoHttpsListener,
    KiB,
    curl_binary,
    pattern,
    sha256,
    start_listener,
    token_for,
)

pytestmark = pytest.mark.node


@pytest.fixture(scope="module")
def relay() -> Iterator[ThreadedEmulator]:
    with ThreadedEmulator(http_timeout=10.0, handshake_timeout=0.5) as emu:
        yield emu


@pytest.fixture(scope="module")
def listener(relay: ThreadedEmulator) -> Iterator[HycoHttpsListener]:
    process = start_listener(relay)
    try:
        yield process
    finally:
        process.stop()


def read_response(sock: socket.socket) -> tuple[bytes, dict[str, str], bytes]:
    """One whole response read until the peer closes (status line, headers, body bytes)."""
    sock.settimeout(TIMEOUT)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:])}
    return lines[0].encode(), headers, body


@pytest.mark.parametrize("request_bytes", [
    b"GET /myhc/hello?q=\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",  # raw UTF-8 in the target
    b"GET /myhc/hello HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"",  # nothing at all: the handshake timeout's 408
])
def test_error_responses_send_the_body_they_announce(relay: ThreadedEmulator,
                                                     request_bytes: bytes) -> None:
    """BUG: FrontDoor.respond() sends a body only when ``self.head is not None`` (meant to
    skip HEAD responses). When h11 could not parse the request head (400), or none came (408),
    head is None: the response announces Content-Length: N, the body is never sent, and the
    connection closes (h11 refuses the short EndOfMessage). Clients see a truncated
    response (curl: "transfer closed with N bytes remaining to read", exit 18)."""
    with socket.create_connection(("127.0.0.1", relay.port), timeout=TIMEOUT) as sock:
        sock.sendall(request_bytes)
        status, headers, body = read_response(sock)
    assert status.startswith(b"HTTP/1.1 4"), status
    assert int(headers["content-length"]) > 0
    assert len(body) == int(headers["content-length"]), (status, headers, body)


def test_curl_with_a_raw_non_ascii_query_gets_a_complete_400(relay: ThreadedEmulator) -> None:
    """The same bug as curl meets it: curl 7.88 percent-encodes a non-ASCII path but sends a
    non-ASCII query raw; the relay's 400 then arrives truncated (curl exit code 18)."""
    url = f"http://127.0.0.1:{relay.port}/{HC}/hello?q=é"
    out = subprocess.run([curl_binary(), "-sS", "--max-time", str(int(TIMEOUT)), "-o",
                          "/dev/null", "-w", "%{http_code}", "-H",
                          f"ServiceBusAuthorization: {token_for(relay)}", url],
                         capture_output=True, text=True, timeout=TIMEOUT + 5, check=False)
    assert out.stdout == "400"
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("size", [10, 100 * KiB])
def test_expect_100_continue_is_answered(relay: ThreadedEmulator, listener: HycoHttpsListener,
                                         size: int) -> None:
    """DEFECT: a request with ``Expect: 100-continue`` never gets ``100 Continue``: the
    relay waits for the body (and forwards ``expect: 100-continue`` to the listener, which
    has no way to answer it over the Hybrid Connections protocol). The client sends the body
    only after its own expectation timeout: every curl upload over 1 MiB stalls 1 s
    (measured 1.04 s for 3 MiB); .NET Framework's HttpWebRequest sends the header by default.
    The relay reads and forwards the body itself, so it should send 100 Continue when it is
    ready to read it (h11: ``client_is_waiting_for_100_continue``, then an
    InformationalResponse(100))."""
    token = token_for(relay)
    with socket.create_connection(("127.0.0.1", relay.port), timeout=TIMEOUT) as sock:
        sock.sendall((f"POST /{HC}/echo?expect={size} HTTP/1.1\r\nHost: x\r\n"
                      f"ServiceBusAuthorization: {token}\r\nContent-Length: {size}\r\n"
                      "Expect: 100-continue\r\nConnection: close\r\n\r\n").encode())
        # curl waits 1 s for the interim response; allow three.
        sock.settimeout(3.0)
        started = time.monotonic()
        try:
            interim = sock.recv(65536)
        except TimeoutError:
            interim = b""
        waited = time.monotonic() - started
        sock.sendall(pattern(size))
        status, headers, body = read_response(sock)
    if "chunked" in headers.get("transfer-encoding", ""):
        body = body.split(b"\r\n")[1]  # one chunk
    assert interim.startswith(b"HTTP/1.1 100 "), (
        f"no 100 Continue within {waited:.1f} s (got {interim!r}); the final response "
        f"after the body was {status!r}")
    assert status == b"HTTP/1.1 200 OK"
    assert json.loads(body)["sha256"] == sha256(pattern(size))
