"""Tests for ``hyco_proto.handshake``: the upgrade request/response on both sides."""

from __future__ import annotations

import base64
import subprocess
import sys

import h11
import pytest

from hyco_proto.errors import LocalProtocolError, RemoteProtocolError, extract_tracking_id
from hyco_proto.handshake import (
    ClientHandshake,
    HandshakeAccepted,
    HandshakeRejected,
    HandshakeRequest,
    ServerHandshake,
    accept_token,
    parse_ws_url,
)
from hyco_proto.websocket import (
    CloseReceived,
    ConnectionClosed,
    Role,
    TextMessage,
    WebSocketConnection,
)
from tests.wsutil import OP_TEXT, frame, split_bytes

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3 example
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def request(*extra: str, method: str = "GET", target: str = "/$hc/path?sb-hc-action=listen",
            version: str = "HTTP/1.1", key: str | None = RFC_KEY,
            ws_version: str | None = "13", upgrade: bool = True) -> bytes:
    lines = [f"{method} {target} {version}", "Host: relay.example.com"]
    if upgrade:
        lines += ["Upgrade: websocket", "Connection: keep-alive, Upgrade"]
    if ws_version is not None:
        lines.append(f"Sec-WebSocket-Version: {ws_version}")
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    lines += list(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_response(data: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """Parse with h11 acting as the client, independently of our code."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[
        ("Host", "x"), ("Upgrade", "websocket"), ("Connection", "Upgrade")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    head = conn.next_event()
    assert isinstance(head, (h11.Response, h11.InformationalResponse))
    body = b""
    if isinstance(head, h11.Response):
        while True:
            ev = conn.next_event()
            if isinstance(ev, h11.Data):
                body += ev.data
            else:
                break
    headers = [(k.decode(), v.decode()) for k, v in head.headers.raw_items()]
    return head.status_code, head.reason.decode(), headers, body


def hdr(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name]


def feed_server(data: bytes, mode: str, hs: ServerHandshake | None = None) -> ServerHandshake:
    hs = hs or ServerHandshake()
    event = None
    for chunk in ([data] if mode == "whole" else split_bytes(data)):
        hs.receive_data(chunk)
        event = event or hs.next_event()
    hs.event = event  # type: ignore[attr-defined]
    return hs


MODES = ["whole", "bytes"]


def test_accept_token_rfc_example() -> None:
    assert accept_token(RFC_KEY) == RFC_ACCEPT


# -- server ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_server_parses_request_and_keeps_trailing_data(mode: str) -> None:
    early = frame(OP_TEXT, "first frame")
    data = request("Sec-WebSocket-Protocol: chat, superchat",
                   "Sec-WebSocket-Protocol: json.reliable",
                   "ServiceBusAuthorization: SharedAccessSignature sr=x&sig=y") + early
    hs = feed_server(data, mode)
    ev = hs.event  # type: ignore[attr-defined]
    assert isinstance(ev, HandshakeRequest)
    assert ev.method == "GET"
    assert ev.target == "/$hc/path?sb-hc-action=listen"
    assert ev.key == RFC_KEY and ev.version == "13"
    assert ev.subprotocols == ["chat", "superchat", "json.reliable"]
    assert ("ServiceBusAuthorization", "SharedAccessSignature sr=x&sig=y") in ev.headers
    assert ("Sec-WebSocket-Key", RFC_KEY) in ev.headers  # original case kept
    assert hs.request is ev and hs.rejection is None
    assert hs.trailing_data == early
    assert hs.next_event() is None  # the request is reported once
    hs.receive_data(b"more")
    assert hs.trailing_data == early + b"more"


def test_server_accept_response() -> None:
    hs = feed_server(request("Sec-WebSocket-Protocol: a, b"), "whole")
    data = hs.accept("b", headers=[("X-Extra", "1")])
    status, _, headers, body = parse_response(data)
    assert status == 101 and body == b""
    assert hdr(headers, "upgrade") == ["websocket"]
    assert hdr(headers, "connection") == ["Upgrade"]
    assert hdr(headers, "sec-websocket-accept") == [RFC_ACCEPT]
    assert hdr(headers, "sec-websocket-protocol") == ["b"]
    assert hdr(headers, "x-extra") == ["1"]
    assert hdr(headers, "sec-websocket-extensions") == []
    with pytest.raises(LocalProtocolError, match="once"):
        hs.accept()
    with pytest.raises(LocalProtocolError, match="once"):
        hs.reject(403)


def test_server_accept_misuse() -> None:
    with pytest.raises(LocalProtocolError, match="next_event"):
        ServerHandshake().accept()
    hs = feed_server(request("Sec-WebSocket-Protocol: a"), "whole")
    with pytest.raises(LocalProtocolError, match="not offered"):
        hs.accept("b")
    with pytest.raises(LocalProtocolError, match="extensions"):
        hs.accept(headers={"Sec-WebSocket-Extensions": "permessage-deflate"})
    with pytest.raises(LocalProtocolError, match="CR"):
        hs.accept(headers=[("X-Bad", "a\r\nInjected: 1")])
    with pytest.raises(LocalProtocolError, match="token"):
        hs.accept(headers=[("Bad Name", "v")])
    hs.accept("a")  # the failed calls did not consume the answer


def test_server_tolerates_hyco_ws_bogus_header() -> None:
    """hyco-ws sends a header literally named ``0`` on rendezvous; it is no extension offer."""
    hs = feed_server(request("0: Sec-WebSocket-Extensions: permessage-deflate"), "whole")
    ev = hs.event  # type: ignore[attr-defined]
    assert isinstance(ev, HandshakeRequest)
    assert ("0", "Sec-WebSocket-Extensions: permessage-deflate") in ev.headers
    _, _, headers, _ = parse_response(hs.accept())
    assert hdr(headers, "sec-websocket-extensions") == []


REFUSALS = [
    ("post", request(method="POST"), 405, [("allow", "GET")]),
    ("version-12", request(ws_version="12"), 426, [("sec-websocket-version", "13")]),
    ("version-missing", request(ws_version=None), 426, [("sec-websocket-version", "13")]),
    ("not-upgrade", request(upgrade=False), 426, [("upgrade", "websocket")]),
    ("key-missing", request(key=None), 400, []),
    ("key-short", request(key=base64.b64encode(b"x" * 15).decode()), 400, []),
    ("key-not-base64", request(key="!!!!!!!!!!!!!!!!!!!!!!!="), 400, []),
    ("key-twice", request(f"Sec-WebSocket-Key: {RFC_KEY}"), 400, []),
    ("http-1.0", request(version="HTTP/1.0"), 400, []),
    ("garbage", b"HELLO\r\n\r\n", 400, []),
    ("bad-header-line", b"GET / HTTP/1.1\r\nHost x\r\n\r\n", 400, []),
    ("body", request("Content-Length: 3").replace(b"\r\n\r\n", b"\r\n\r\nabc"), 400, []),
    ("too-big", request("X-Big: " + "a" * 20000), 431, []),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("name", "data", "status", "must"), REFUSALS,
                         ids=[r[0] for r in REFUSALS])
def test_server_refuses(name: str, data: bytes, status: int, must: list[tuple[str, str]],
                        mode: str) -> None:
    if mode == "bytes" and name == "too-big":
        data = data[:17000]  # byte by byte is slow; the limit trips before the end
    hs = feed_server(data, mode)
    assert hs.event is None  # type: ignore[attr-defined]
    assert hs.request is None
    assert hs.rejection is not None, hs.error
    assert hs.rejection_status == status
    assert isinstance(hs.error, RemoteProtocolError) and hs.error.status_hint == status
    got, _, headers, body = parse_response(hs.rejection)
    assert got == status
    for name_, value in must:
        assert value in hdr(headers, name_)
    assert hdr(headers, "sec-websocket-accept") == []
    assert body  # says why
    with pytest.raises(LocalProtocolError):
        hs.accept()


def test_server_eof_before_request_complete() -> None:
    hs = ServerHandshake()
    hs.receive_data(request()[:20])
    assert hs.next_event() is None and hs.error is None
    hs.receive_data(b"")
    assert hs.next_event() is None
    assert hs.rejection is None
    assert isinstance(hs.error, RemoteProtocolError)


def test_server_reject() -> None:
    hs = feed_server(request(), "whole")
    reason = "Endpoint not found. TrackingId:abc-123_G1, SystemTracker:x, Timestamp:now"
    data = hs.reject(404, reason, headers=[("X-Why", "no")], body=b"nope")
    status, got_reason, headers, body = parse_response(data)
    assert (status, got_reason, body) == (404, reason, b"nope")
    assert hdr(headers, "content-length") == ["4"] and hdr(headers, "x-why") == ["no"]
    assert parse_response(ServerHandshake().reject(503))[1] == "Service Unavailable"


def test_server_reject_misuse() -> None:
    hs = ServerHandshake()
    for status in (101, 100, 99, 600):
        with pytest.raises(LocalProtocolError, match="accept"):
            hs.reject(status)
    with pytest.raises(LocalProtocolError, match="CR"):
        hs.reject(400, "bad\r\nreason")
    with pytest.raises(LocalProtocolError, match="body"):
        hs.reject(400, headers={"Content-Length": "9"})
    with pytest.raises(LocalProtocolError, match="bytes"):
        hs.reject(400, body="text")  # type: ignore[arg-type]


# -- client ----------------------------------------------------------------------------------

def server_view(data: bytes) -> h11.Request:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    ev = conn.next_event()
    assert isinstance(ev, h11.Request)
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    return ev


def test_client_request() -> None:
    hs = ClientHandshake("relay.example.com", "/$hc/hc1?sb-hc-action=connect",
                         subprotocols=["json.reliable", "json"],
                         headers={"ServiceBusAuthorization": "SharedAccessSignature sr=a"},
                         key=b"0123456789abcdef")
    data = hs.data_to_send()
    assert hs.data_to_send() == b""
    req = server_view(data)
    assert req.method == b"GET" and req.target == b"/$hc/hc1?sb-hc-action=connect"
    headers = [(k.decode(), v.decode()) for k, v in req.headers.raw_items()]
    assert hdr(headers, "host") == ["relay.example.com"]
    assert hdr(headers, "upgrade") == ["websocket"]
    assert hdr(headers, "connection") == ["Upgrade"]
    assert hdr(headers, "sec-websocket-version") == ["13"]
    assert hdr(headers, "sec-websocket-key") == [base64.b64encode(b"0123456789abcdef").decode()]
    assert hdr(headers, "sec-websocket-protocol") == ["json.reliable, json"]
    assert ("ServiceBusAuthorization", "SharedAccessSignature sr=a") in headers
    assert hdr(headers, "sec-websocket-extensions") == []


def test_client_generates_valid_distinct_keys() -> None:
    keys = {ClientHandshake("h", "/").key for _ in range(5)}
    assert len(keys) == 5
    assert all(len(base64.b64decode(k)) == 16 for k in keys)
    assert ClientHandshake("h", "/", key=RFC_KEY.encode()).key == RFC_KEY


def test_client_misuse() -> None:
    with pytest.raises(LocalProtocolError, match="16"):
        ClientHandshake("h", "/", key=b"short")
    with pytest.raises(LocalProtocolError, match="'/'"):
        ClientHandshake("h", "path")
    with pytest.raises(LocalProtocolError, match="written by the handshake"):
        ClientHandshake("h", "/", headers=[("Sec-WebSocket-Protocol", "x")])
    with pytest.raises(LocalProtocolError, match="sequence"):
        ClientHandshake("h", "/", subprotocols="chat")
    with pytest.raises(LocalProtocolError, match="CR"):
        ClientHandshake("h", "/", headers={"X": "a\nb"})


def test_client_host_header_can_be_overridden() -> None:
    hs = ClientHandshake("127.0.0.1:5000", "/", headers=[("Host", "ns.servicebus.windows.net")])
    raw = server_view(hs.data_to_send()).headers.raw_items()
    headers = [(k.decode(), v.decode()) for k, v in raw]
    assert hdr(headers, "host") == ["ns.servicebus.windows.net"]


def response(*extra: str, status: str = "101 Switching Protocols",
             accept: str | None = RFC_ACCEPT) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Upgrade: websocket", "Connection: Upgrade"]
    if accept is not None:
        lines.append(f"Sec-WebSocket-Accept: {accept}")
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode()


def client(subprotocols: list[str] | None = None) -> ClientHandshake:
    hs = ClientHandshake("h", "/", subprotocols=subprotocols or [], key=RFC_KEY.encode())
    hs.data_to_send()
    return hs


@pytest.mark.parametrize("mode", MODES)
def test_client_accepts_valid_101_with_trailing_frames(mode: str) -> None:
    hs = client(["a", "b"])
    early = frame(OP_TEXT, "hello", mask=False)
    data = response("Sec-WebSocket-Protocol: b") + early
    event = None
    for chunk in ([data] if mode == "whole" else split_bytes(data)):
        hs.receive_data(chunk)
        event = event or hs.next_event()
    assert isinstance(event, HandshakeAccepted)
    assert event.subprotocol == "b"
    assert ("Sec-WebSocket-Protocol", "b") in event.headers
    accepted = hs.next_event()
    assert isinstance(accepted, HandshakeAccepted) and accepted.trailing_data == early
    conn = WebSocketConnection(Role.CLIENT, trailing_data=accepted.trailing_data)
    assert conn.events_received() == [TextMessage("hello")]


def test_client_skips_100_continue() -> None:
    hs = client()
    hs.receive_data(b"HTTP/1.1 100 Continue\r\n\r\n" + response())
    assert isinstance(hs.next_event(), HandshakeAccepted)


BAD_101 = [
    ("wrong-accept", response(accept=accept_token("AAAAAAAAAAAAAAAAAAAAAA=="))),
    ("missing-accept", response(accept=None)),
    ("upgrade-wrong", response().replace(b"Upgrade: websocket", b"Upgrade: h2c")),
    ("connection-missing", response().replace(b"Connection: Upgrade\r\n", b"")),
    ("extension", response("Sec-WebSocket-Extensions: permessage-deflate")),
    ("subprotocol-not-offered", response("Sec-WebSocket-Protocol: chat")),
    ("two-subprotocols", response("Sec-WebSocket-Protocol: a, b")),
    ("not-http", b"SSH-2.0-OpenSSH\r\n\r\n"),
]


@pytest.mark.parametrize(("name", "data"), BAD_101, ids=[b[0] for b in BAD_101])
def test_client_fails_bad_101(name: str, data: bytes) -> None:
    hs = client(["a", "b"] if name == "two-subprotocols" else [])
    hs.receive_data(data)
    with pytest.raises(RemoteProtocolError):
        hs.next_event()
    with pytest.raises(RemoteProtocolError):
        hs.next_event()  # sticky


def test_client_eof_without_answer() -> None:
    hs = client()
    hs.receive_data(b"HTTP/1.1 10")
    assert hs.next_event() is None
    hs.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="invalid HTTP response"):
        hs.next_event()


def test_client_eof_before_any_byte_says_so() -> None:
    hs = client()
    hs.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed the connection without answering"):
        hs.next_event()


@pytest.mark.parametrize("mode", MODES)
def test_client_reads_rejection_body(mode: str) -> None:
    hs = client()
    reason = "Listener not found. TrackingId:4f2d_G7, Timestamp:2024-01-01"
    data = (f"HTTP/1.1 404 {reason}\r\nContent-Length: 5\r\nX-A: b\r\n\r\nnope!").encode()
    event = None
    for chunk in ([data] if mode == "whole" else split_bytes(data)):
        assert event is None
        hs.receive_data(chunk)
        event = hs.next_event()
    assert event == HandshakeRejected(404, reason, [("Content-Length", "5"), ("X-A", "b")],
                                      b"nope!")
    assert extract_tracking_id(event.reason) == "4f2d_G7"


def test_client_rejection_body_until_eof() -> None:
    hs = client()
    hs.receive_data(b"HTTP/1.1 500 Oops\r\n\r\npart one ")
    assert hs.next_event() is None
    hs.receive_data(b"part two")
    hs.receive_data(b"")
    event = hs.next_event()
    assert isinstance(event, HandshakeRejected)
    assert (event.status, event.reason, event.body) == (500, "Oops", b"part one part two")


def test_client_rejection_cut_short_still_reported() -> None:
    hs = client()
    hs.receive_data(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 50\r\n\r\nshort")
    hs.receive_data(b"")
    event = hs.next_event()
    assert isinstance(event, HandshakeRejected) and event.body == b"short"


def test_from_url() -> None:
    hs = ClientHandshake.from_url("wss://ns.example.net/$hc/hc1?sb-hc-action=connect&a=%20b",
                                  headers=[("ServiceBusAuthorization", "tok")])
    assert hs.url is not None
    assert (hs.url.secure, hs.url.host, hs.url.port) == (True, "ns.example.net", 443)
    req = server_view(hs.data_to_send())
    assert req.target == b"/$hc/hc1?sb-hc-action=connect&a=%20b"
    assert (b"host", b"ns.example.net") in list(req.headers)
    assert (b"servicebusauthorization", b"tok") in list(req.headers)


@pytest.mark.parametrize(("url", "secure", "host", "port", "host_header", "target"), [
    ("ws://localhost:8080", False, "localhost", 8080, "localhost:8080", "/"),
    ("ws://h/", False, "h", 80, "h", "/"),
    ("ws://h:80/x", False, "h", 80, "h", "/x"),
    ("wss://h:443/x?y", True, "h", 443, "h", "/x?y"),
    ("WSS://H:9443/p", True, "h", 9443, "h:9443", "/p"),
    ("ws://[::1]:5000/p", False, "::1", 5000, "[::1]:5000", "/p"),
])
def test_parse_ws_url(url: str, secure: bool, host: str, port: int, host_header: str,
                      target: str) -> None:
    u = parse_ws_url(url)
    assert (u.secure, u.host, u.port, u.host_header, u.target) == (
        secure, host, port, host_header, target)


@pytest.mark.parametrize("url", ["http://h/", "ws:///path", "wss://user:pw@h/", "h:80/x",
                                 "ws://h:notaport/"])
def test_parse_ws_url_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        parse_ws_url(url)


# -- both sides together ---------------------------------------------------------------------

def test_client_and_server_handshake_then_frames() -> None:
    client_hs = ClientHandshake.from_url("ws://localhost:9000/chat", subprotocols=["v2", "v1"])
    server_hs = ServerHandshake()
    client_ws_first = WebSocketConnection(Role.CLIENT)
    client_ws_first.send_text("sent with the request")
    server_hs.receive_data(client_hs.data_to_send() + b"".join(client_ws_first.data_to_send()))
    req = server_hs.next_event()
    assert isinstance(req, HandshakeRequest) and req.subprotocols == ["v2", "v1"]
    server_ws = WebSocketConnection(Role.SERVER, trailing_data=server_hs.trailing_data)
    server_ws.send_text("sent with the 101")
    client_hs.receive_data(server_hs.accept("v1") + b"".join(server_ws.data_to_send()))
    acc = client_hs.next_event()
    assert isinstance(acc, HandshakeAccepted) and acc.subprotocol == "v1"
    client_ws = WebSocketConnection(Role.CLIENT, trailing_data=acc.trailing_data)
    assert server_ws.events_received() == [TextMessage("sent with the request")]
    assert client_ws.events_received() == [TextMessage("sent with the 101")]
    client_ws.send_close(1000)
    for chunk in client_ws.data_to_send():
        server_ws.receive_data(chunk)
    assert server_ws.events_received() == [CloseReceived(1000, ""),
                                           ConnectionClosed(1000, "", None)]


def test_server_rejection_read_by_client() -> None:
    client_hs = ClientHandshake("h", "/")
    server_hs = ServerHandshake()
    server_hs.receive_data(client_hs.data_to_send())
    assert isinstance(server_hs.next_event(), HandshakeRequest)
    client_hs.receive_data(server_hs.reject(403, "Forbidden. TrackingId:t1", body=b"denied"))
    event = client_hs.next_event()
    assert isinstance(event, HandshakeRejected)
    assert (event.status, event.reason, event.body) == (403, "Forbidden. TrackingId:t1",
                                                        b"denied")


def test_modules_import_no_io() -> None:
    """Sans-IO: importing the WebSocket layer pulls in no sockets, event loop or threads."""
    code = ("import sys, hyco_proto.websocket, hyco_proto.handshake; "
            "print(sorted(m for m in ('socket', 'ssl', 'asyncio', 'threading', 'select', "
            "'selectors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
