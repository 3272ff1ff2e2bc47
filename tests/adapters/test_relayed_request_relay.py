"""``relayed_request`` through the local relay (the emulator relays HTTP, §1.3, §3.2, §3.3).

The listener is raw and written here (a WebSocket on a plain socket, run by the sans-IO
``ClientConnection``), so these tests depend on the relay and the sender only: it answers on the
control channel, on the rendezvous the relay points it to (a chunked request), and on a
rendezvous it opens itself to stream a Server-Sent-Events answer in fragments. Each adapter's
``relayed_request`` is the sender; the relay's own answers (401 for a bad token, 502 with no
listener) come back as responses, not exceptions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest

from hyco_proto.drivers.connection import ClientConnection, Opened
from hyco_proto.websocket import BinaryMessage, ConnectionClosed, TextMessage

from .harness import ADAPTERS, WAIT, Emulator, Harness, token
from .test_relayed_request import body_of, fetch, request

each_adapter = pytest.mark.parametrize("name", ADAPTERS)


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        h.close()


class RawWs:
    """A client WebSocket on a blocking socket, driven by ``ClientConnection``."""

    def __init__(self, url: str, headers: list[tuple[str, str]] | None = None) -> None:
        self.conn = ClientConnection.from_url(url, headers=headers or [])
        target = self.conn.url
        self.sock = socket.create_connection((target.host, target.port), WAIT)
        self.sock.settimeout(WAIT)
        self.events: deque[Any] = deque()
        self._flush()
        opened = self._next()
        assert isinstance(opened, Opened), opened

    def _flush(self) -> None:
        for chunk in self.conn.data_to_send():
            if chunk:
                self.sock.sendall(chunk)
            else:
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_WR)

    def _next(self) -> Any:
        while not self.events:
            data = self.sock.recv(65536)
            if data:
                self.conn.receive_data(data)
            else:
                self.conn.receive_eof()
            self.events.extend(self.conn.events_received())
            self._flush()
            if not data and not self.events:
                return None  # TCP ended
        return self.events.popleft()

    def recv(self) -> str | bytes | None:
        """The next message; None once the connection closed."""
        while True:
            event = self._next()
            if isinstance(event, (TextMessage, BinaryMessage)):
                return event.data
            if event is None or isinstance(event, ConnectionClosed):
                return None

    def send_text(self, text: str) -> None:
        self.conn.send_text(text)
        self._flush()

    def send_part(self, data: bytes, fin: bool) -> None:
        self.conn.send_binary_part(data, fin)
        self._flush()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send_close(1000)
            self._flush()
            while self.recv() is not None:
                pass
        self.sock.close()


class RawListener:
    """A listener answering relayed HTTP requests by target, in a thread.

    ``/myhc/echo...``: 201 with the body echoed and what it saw in headers (where it arrived:
    ``x-via`` control / rendezvous). ``/myhc/events``: 200 ``text/event-stream`` sent on a
    rendezvous it opens, one fragment, then (after ``go``) the rest.
    """

    def __init__(self, emulator: Emulator) -> None:
        listen = emulator.listen_uri() + "?sb-hc-action=listen"
        self.control = RawWs(listen, [("ServiceBusAuthorization", token(listen))])
        self.go = threading.Event()
        self.first_sent = threading.Event()
        self.finished = threading.Event()
        self.errors: list[BaseException] = []
        self.closing = False
        self.seen: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._run, name="raw-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while (message := self.control.recv()) is not None:
                assert isinstance(message, str), message
                self._answer(json.loads(message)["request"])
        except (OSError, AssertionError, ValueError) as exc:
            if not self.closing:
                self.errors.append(exc)
        finally:
            self.control.sock.close()

    def _answer(self, request: dict[str, Any]) -> None:
        channel, via = self.control, "control"
        if "method" not in request:  # a pointer: the request comes on a rendezvous
            channel, via = RawWs(request["address"]), "rendezvous"
            text = channel.recv()
            assert isinstance(text, str)
            request = json.loads(text)["request"]
        body = channel.recv() if request.get("body") else b""
        assert isinstance(body, bytes)
        self.seen.append(request)
        headers = request.get("requestHeaders", {})
        if request["requestTarget"] == "/myhc/events":
            stream = RawWs(request["address"])
            stream.send_text(json.dumps({"response": {
                "requestId": request["id"], "statusCode": 200,
                "responseHeaders": {"content-type": "text/event-stream"}, "body": True}}))
            stream.send_part(b"data: one\n\n", False)
            self.first_sent.set()
            self.go.wait(WAIT)
            stream.send_part(b"data: two\n\n", False)
            stream.send_part(b"data: three\n\n", True)
            self.finished.set()
            stream.close()
            return
        channel.send_text(json.dumps({"response": {
            "requestId": request["id"], "statusCode": 201, "statusDescription": "Made",
            "responseHeaders": {
                "x-target": request["requestTarget"], "x-via": via,
                "x-sha": hashlib.sha256(body).hexdigest(),
                "x-user": headers.get("X-User", ""),
                "x-auth-seen": str(any(k.lower() == "servicebusauthorization"
                                       for k in headers))},
            "body": True}}))
        channel.send_part(body, True)
        if channel is not self.control:
            channel.close()

    def close(self) -> None:
        """Drop the control channel (its reader is the listener's thread, which closes it)."""
        self.closing = True
        with contextlib.suppress(OSError):
            self.control.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(WAIT)
        assert not self._thread.is_alive()


@each_adapter
def test_through_the_relay(harness: Harness, name: str) -> None:
    facade = harness(name)
    with Emulator() as emulator:
        base = f"http://127.0.0.1:{emulator.port}/myhc"
        listener = RawListener(emulator)
        try:
            # A small request travels on the control channel.
            url = f"{base}/echo?x=1"
            response, body = fetch(facade, "POST", url, token(url), body=b"hello",
                                   headers={"X-User": "ann"})
            assert (response.status, response.reason, body) == (201, "Made", b"hello")
            assert response.headers["x-target"] == "/myhc/echo?x=1"
            assert response.headers["x-via"] == "control"
            assert response.headers["x-user"] == "ann"
            assert response.headers["x-auth-seen"] == "False"  # the relay keeps the token

            # A chunked one (length unknown) is streamed to the listener over a rendezvous.
            pieces = [bytes([i]) * 100_000 for i in range(3)]
            url = f"{base}/echo"
            response, body = fetch(facade, "POST", url, lambda: token(url),
                                   body=body_of(facade, pieces))
            assert response.status == 201 and body == b"".join(pieces)
            assert response.headers["x-via"] == "rendezvous"
            assert response.headers["x-sha"] == hashlib.sha256(b"".join(pieces)).hexdigest()

            # The answer streams: the first event arrives while the listener still waits.
            url = f"{base}/events"
            streamed = request(facade, "GET", url, token(url))
            assert streamed.raw.status == 200
            assert streamed.raw.headers["content-type"] == "text/event-stream"
            assert streamed.next_chunk() == b"data: one\n\n"
            assert not listener.finished.is_set()
            listener.go.set()
            assert b"".join(streamed.chunks()) == b"data: two\n\ndata: three\n\n"
            assert listener.finished.wait(WAIT)

            # The relay's own refusal is an answer, not an exception.
            response, body = fetch(facade, "GET", f"{base}/echo", "SharedAccessSignature bad")
            assert response.status == 401 and "TrackingId" in response.reason
            assert [r["method"] for r in listener.seen] == ["POST", "POST", "GET"]
            assert listener.errors == []
        finally:
            listener.close()
        # With nobody listening: 502 from the relay.
        response, _ = fetch(facade, "GET", base, token(base))
        assert response.status == 502


@each_adapter
def test_with_our_own_listener(harness: Harness, name: str) -> None:
    """Each adapter's sender against hyco_proto's own (threads) HTTP listener: 2 MiB up by
    rendezvous (chunked), a streamed answer back, repeated request headers joined."""
    from hyco_proto.adapters import threads

    facade = harness(name)
    seen: list[tuple[str, str, int]] = []

    def handle(req: Any) -> Any:
        data = req.body(timeout=WAIT)
        seen.append((req.method, req.target, len(data)))
        pieces = [data[i:i + 65536] for i in range(0, len(data), 65536)]
        return threads.Response(200, {"x-sha": hashlib.sha256(data).hexdigest(),
                                      "x-tags": req.headers.get("x-tag", "")}, iter(pieces))

    with Emulator() as emulator:
        listen = emulator.listen_uri()
        with threads.RelayedServer(listen, lambda: token(listen), request_handler=handle):
            url = f"http://127.0.0.1:{emulator.port}/myhc/upload?n=1"
            up = [bytes([i]) * 262144 for i in range(8)]
            response = request(facade, "PUT", url, token(url), body=body_of(facade, up),
                               headers=[("X-Tag", "a"), ("X-Tag", "b")])
            digest = hashlib.sha256()
            for chunk in response.chunks():
                digest.update(chunk)
            assert response.raw.status == 200
            assert digest.hexdigest() == hashlib.sha256(b"".join(up)).hexdigest()
            assert response.raw.headers["x-sha"] == digest.hexdigest()
            assert response.raw.headers["x-tags"] == "a, b"
            assert seen == [("PUT", "/myhc/upload?n=1", 2 * 1024 * 1024)]
