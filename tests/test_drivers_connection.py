"""``hyco_proto.drivers.connection``: the opening handshake and the data phase as one object.

No sockets: the peer's bytes are written by hand (an independent 101 / upgrade request and
frames from ``tests.wsutil``), fed whole or byte by byte.
"""

from __future__ import annotations

import pytest

from hyco_proto.drivers.connection import (
    ClientConnection,
    ConnectionState,
    HandshakeFailed,
    Opened,
    Refused,
    RequestReceived,
    ServerConnection,
    select_subprotocol,
)
from hyco_proto.errors import LocalProtocolError
from hyco_proto.handshake import ClientHandshake, accept_token
from hyco_proto.websocket import (
    BinaryMessage,
    CloseReceived,
    ConnectionClosed,
    Ping,
    TextMessage,
)
from tests.wsutil import (
    EOF,
    OP_BINARY,
    OP_PING,
    OP_TEXT,
    close,
    closed,
    decode_output,
    frame,
    pong,
    split_bytes,
    text,
)

URL = "ws://relay.test:9090/$hc/myhc?a=1"
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3


def chunks(data: bytes, mode: str) -> list[bytes]:
    return [data] if mode == "whole" else split_bytes(data)


def response_101(conn: ClientConnection, *extra: str, accept: str | None = None) -> bytes:
    """A 101 written by hand for ``conn``'s key."""
    token = accept if accept is not None else accept_token(conn.handshake.key)
    lines = ["HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Accept: {token}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def upgrade(*extra: str, method: str = "GET", key: str | None = RFC_KEY,
            upgrade: bool = True) -> bytes:
    """An upgrade request written by hand."""
    lines = [f"{method} /$hc/myhc?sb-hc-action=listen HTTP/1.1", "Host: relay.test"]
    if upgrade:
        lines += ["Upgrade: websocket", "Connection: Upgrade"]
    lines.append("Sec-WebSocket-Version: 13")
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    lines += list(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def client(**kw: object) -> ClientConnection:
    conn = ClientConnection.from_url(URL, **kw)  # type: ignore[arg-type]
    conn.data_to_send()  # the upgrade request
    return conn


def opened_client() -> ClientConnection:
    conn = client()
    conn.receive_data(response_101(conn))
    (event,) = conn.events_received()
    assert isinstance(event, Opened)
    return conn


# ---- ClientConnection: the handshake ------------------------------------------------------------


def test_client_upgrade_request_is_the_first_thing_to_send() -> None:
    conn = ClientConnection.from_url(URL, subprotocols=("chat", "superchat"),
                                     headers=[("X-Custom", "1")])
    assert conn.state is ConnectionState.CONNECTING
    assert (conn.url.host, conn.url.port, conn.url.secure) == ("relay.test", 9090, False)
    out = conn.data_to_send()
    assert len(out) == 1
    request = out[0]
    assert request.startswith(b"GET /$hc/myhc?a=1 HTTP/1.1\r\n")
    assert request.endswith(b"\r\n\r\n")
    for line in (b"Host: relay.test:9090", b"Upgrade: websocket",
                 b"Sec-WebSocket-Key: " + conn.handshake.key.encode(),
                 b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Protocol: chat, superchat",
                 b"X-Custom: 1"):
        assert b"\r\n" + line + b"\r\n" in request
    assert conn.data_to_send() == []  # once
    assert conn.events_received() == []
    assert not conn.close_expected()
    assert conn.subprotocol is None and conn.response is None


def test_client_without_url_says_so() -> None:
    conn = ClientConnection(ClientHandshake("relay.test", "/x"))
    assert conn.data_to_send()[0].startswith(b"GET /x HTTP/1.1\r\n")
    with pytest.raises(LocalProtocolError, match="from_url"):
        conn.url  # noqa: B018


@pytest.mark.parametrize("mode", ["whole", "bytes"])
def test_client_101(mode: str) -> None:
    conn = client(subprotocols=("chat", "superchat"))
    data = response_101(conn, "Sec-WebSocket-Protocol: superchat")
    pieces = chunks(data, mode)
    for piece in pieces[:-1]:
        conn.receive_data(piece)
        assert conn.events_received() == []
        assert conn.state is ConnectionState.CONNECTING
    conn.receive_data(pieces[-1])
    (event,) = conn.events_received()
    assert isinstance(event, Opened)
    assert event.response is conn.response
    assert event.response.trailing_data == b""
    assert conn.subprotocol == "superchat"
    assert conn.state is ConnectionState.OPEN and conn.is_open
    assert conn.data_to_send() == []
    assert conn.events_received() == []


@pytest.mark.parametrize("mode", ["whole", "bytes"])
def test_client_frames_right_behind_the_101_come_after_opened(mode: str) -> None:
    conn = client()
    data = (response_101(conn) + frame(OP_TEXT, "first", mask=False)
            + frame(OP_BINARY, b"\x00second", mask=False) + frame(OP_PING, b"p", mask=False))
    for piece in chunks(data, mode):
        conn.receive_data(piece)
    # One batch: the handshake's outcome first, then the messages in order.
    events = conn.events_received()
    assert [type(e) for e in events] == [Opened, TextMessage, BinaryMessage, Ping]
    assert events[1:] == [TextMessage("first"), BinaryMessage(b"\x00second"), Ping(b"p")]
    # The ping was answered with a masked pong.
    assert decode_output(conn.data_to_send(), expect_masked=True) == [pong(b"p")]


def test_client_101_and_eof_in_one_go() -> None:
    conn = client()
    conn.receive_data(response_101(conn) + frame(OP_TEXT, "last words", mask=False))
    conn.receive_eof()
    events = conn.events_received()
    assert [type(e) for e in events] == [Opened, TextMessage, ConnectionClosed]
    assert isinstance(events[2], ConnectionClosed) and events[2].code == 1006
    assert conn.state is ConnectionState.CLOSED


@pytest.mark.parametrize("mode", ["whole", "bytes"])
def test_client_refused(mode: str) -> None:
    conn = client()
    data = (b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 7\r\n"
            b"Content-Type: text/plain\r\n\r\nno auth")
    for piece in chunks(data, mode):
        conn.receive_data(piece)
    (event,) = conn.events_received()
    assert isinstance(event, Refused)
    assert (event.response.status, event.response.reason, event.response.body) == (
        401, "Unauthorized", b"no auth")
    assert conn.rejection is event.response
    assert conn.data_to_send() == [b""]  # then close TCP
    assert conn.state is ConnectionState.CLOSED
    assert conn.close_expected()
    # Nothing more happens: later bytes and EOF are ignored, sending is refused.
    conn.receive_data(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    conn.receive_eof()
    assert conn.events_received() == [] and conn.data_to_send() == []
    with pytest.raises(LocalProtocolError):
        conn.send_text("x")


@pytest.mark.parametrize(("extra", "accept", "why"), [
    ((), "bm90IHRoZSByaWdodCB0b2tlbg==", "Sec-WebSocket-Accept"),
    (("Sec-WebSocket-Protocol: chat",), None, "not offered"),
    (("Sec-WebSocket-Extensions: permessage-deflate",), None, "extensions"),
])
def test_client_bad_101_fails_the_handshake(extra: tuple[str, ...], accept: str | None,
                                            why: str) -> None:
    conn = client()
    conn.receive_data(response_101(conn, *extra, accept=accept)
                      + frame(OP_TEXT, "never seen", mask=False))
    (event,) = conn.events_received()
    assert isinstance(event, HandshakeFailed)
    assert why in str(event.error)
    assert conn.data_to_send() == [b""]
    assert conn.state is ConnectionState.CLOSED
    assert conn.response is None and conn.ws is None


@pytest.mark.parametrize("before", [b"", b"HTTP/1.1 101 Switching Protocols\r\nUpgr"])
def test_client_eof_before_the_answer(before: bytes) -> None:
    conn = client()
    conn.receive_data(before)
    assert conn.events_received() == []
    conn.receive_eof()
    (event,) = conn.events_received()
    assert isinstance(event, HandshakeFailed)
    if not before:
        assert "without answering the WebSocket upgrade" in str(event.error)
    assert conn.data_to_send() == [b""]
    assert conn.state is ConnectionState.CLOSED
    conn.receive_eof()  # idempotent
    assert conn.events_received() == [] and conn.data_to_send() == []


@pytest.mark.parametrize(("method", "args"), [
    ("send_text", ("x",)), ("send_binary", (b"x",)), ("send_ping", ()), ("send_pong", ()),
    ("send_close", (1000, "bye")),
])
def test_client_sending_before_open_says_wait_for_opened(method: str,
                                                         args: tuple[object, ...]) -> None:
    conn = client()
    with pytest.raises(LocalProtocolError,
                       match="before the opening handshake has completed; wait for Opened"):
        getattr(conn, method)(*args)
    assert conn.data_to_send() == []
    assert conn.state is ConnectionState.CONNECTING


def test_client_states_through_a_close_we_start() -> None:
    conn = client()
    assert conn.state is ConnectionState.CONNECTING and not conn.close_expected()
    conn.receive_data(response_101(conn))
    conn.events_received()
    assert conn.state is ConnectionState.OPEN and not conn.close_expected()
    conn.send_text("hello")
    conn.send_close(1000, "bye")
    assert conn.state is ConnectionState.CLOSING
    assert conn.close_expected()
    assert decode_output(conn.data_to_send(), expect_masked=True) == [text("hello"),
                                                                       closed(1000)]
    conn.receive_data(close(1000, "ok", mask=False))
    assert conn.events_received() == [CloseReceived(1000, "ok"),
                                      ConnectionClosed(1000, "ok", None)]
    assert conn.state is ConnectionState.CLOSED
    assert (conn.close_code, conn.close_reason) == (1000, "ok")
    assert conn.close_expected()  # the server closes TCP first (RFC 6455 §7.1.1)
    conn.receive_eof()
    assert not conn.close_expected()
    assert conn.events_received() == []


def test_client_states_through_a_close_the_server_starts() -> None:
    conn = opened_client()
    conn.receive_data(frame(OP_BINARY, b"\x01", mask=False) + close(1001, "away", mask=False))
    assert conn.events_received() == [BinaryMessage(b"\x01"), CloseReceived(1001, "away"),
                                      ConnectionClosed(1001, "away", None)]
    assert conn.state is ConnectionState.CLOSED
    assert decode_output(conn.data_to_send(), expect_masked=True) == [closed(1001)]
    assert conn.close_expected()


def test_client_fail_before_the_handshake_closes_tcp() -> None:
    conn = client()
    conn.fail(1002)
    assert conn.data_to_send() == [b""]
    assert conn.state is ConnectionState.CLOSED
    conn.fail(1002)
    assert conn.data_to_send() == []


# ---- ServerConnection ---------------------------------------------------------------------------


def server_with_request(data: bytes | None = None) -> tuple[ServerConnection, RequestReceived]:
    conn = ServerConnection()
    conn.receive_data(upgrade("Sec-WebSocket-Protocol: chat, superchat") if data is None else data)
    (event,) = conn.events_received()
    assert isinstance(event, RequestReceived)
    return conn, event


def test_server_request_byte_by_byte() -> None:
    conn = ServerConnection()
    data = upgrade("Sec-WebSocket-Protocol: chat, superchat", "X-Custom: 1")
    for piece in split_bytes(data)[:-1]:
        conn.receive_data(piece)
        assert conn.events_received() == []
    conn.receive_data(data[-1:])
    (event,) = conn.events_received()
    assert isinstance(event, RequestReceived)
    request = event.request
    assert conn.request is request
    assert (request.method, request.target) == ("GET", "/$hc/myhc?sb-hc-action=listen")
    assert request.subprotocols == ["chat", "superchat"]
    assert request.key == RFC_KEY
    assert ("X-Custom", "1") in request.headers
    assert conn.state is ConnectionState.CONNECTING
    assert conn.data_to_send() == []
    assert conn.events_received() == []


def test_server_accept_with_a_subprotocol() -> None:
    conn, _ = server_with_request()
    with pytest.raises(LocalProtocolError, match="not offered"):
        conn.accept("other")
    assert conn.state is ConnectionState.CONNECTING and conn.data_to_send() == []
    conn.accept("superchat", headers=[("X-Server", "yes")])
    assert conn.subprotocol == "superchat"
    assert conn.state is ConnectionState.OPEN
    conn.send_text("hi")
    out = conn.data_to_send()
    head, sep, rest = out[0].partition(b"\r\n\r\n")
    assert sep and head.startswith(b"HTTP/1.1 101 ")
    lines = head.split(b"\r\n")
    assert b"Sec-WebSocket-Accept: " + accept_token(RFC_KEY).encode() in lines
    assert b"Sec-WebSocket-Protocol: superchat" in lines
    assert b"X-Server: yes" in lines
    assert rest == b""
    # Then unmasked frames.
    assert decode_output(out[1:], expect_masked=False) == [text("hi")]


def test_server_accept_without_a_subprotocol() -> None:
    conn, _ = server_with_request()
    conn.accept()
    (response,) = conn.data_to_send()
    assert b"Sec-WebSocket-Protocol" not in response
    assert conn.subprotocol is None


@pytest.mark.parametrize("split", ["same chunk", "later chunk", "byte by byte"])
def test_server_frames_right_behind_the_request_are_delivered(split: str) -> None:
    frames = frame(OP_TEXT, "early") + frame(OP_BINARY, b"\x02bird")
    conn = ServerConnection()
    if split == "same chunk":
        conn.receive_data(upgrade() + frames)
    else:
        conn.receive_data(upgrade())
        for piece in ([frames] if split == "later chunk" else split_bytes(frames)):
            conn.receive_data(piece)
    events = conn.events_received()
    assert [type(e) for e in events] == [RequestReceived]  # nothing before the answer
    assert conn.events_received() == []
    conn.accept()
    assert conn.events_received() == [TextMessage("early"), BinaryMessage(b"\x02bird")]


def test_server_eof_after_the_request_reaches_the_data_phase() -> None:
    conn, _ = server_with_request(upgrade() + frame(OP_TEXT, "bye"))
    conn.receive_eof()
    assert conn.events_received() == []
    conn.accept()
    events = conn.events_received()
    assert events[0] == TextMessage("bye")
    assert isinstance(events[-1], ConnectionClosed) and events[-1].code == 1006


@pytest.mark.parametrize(("data", "status"), [
    (upgrade(method="POST"), 405),
    (upgrade(key=None), 400),
    (upgrade(upgrade=False), 426),
    (b"NOT HTTP AT ALL\r\n\r\n", 400),
])
def test_server_bad_request_is_refused_by_itself(data: bytes, status: int) -> None:
    conn = ServerConnection()
    conn.receive_data(data)
    (event,) = conn.events_received()
    assert isinstance(event, HandshakeFailed)
    assert str(event.error)
    out = conn.data_to_send()
    assert len(out) == 2
    assert out[0].startswith(b"HTTP/1.1 %d " % status)
    assert out[1] == b""
    assert conn.state is ConnectionState.CLOSED
    assert conn.close_expected()
    conn.receive_data(upgrade())  # ignored
    assert conn.events_received() == [] and conn.data_to_send() == []
    with pytest.raises(LocalProtocolError):
        conn.send_text("x")


def test_server_reject() -> None:
    conn, _ = server_with_request()
    conn.reject(403, "Go away", headers=[("X-Why", "test")], body=b"denied")
    out = conn.data_to_send()
    assert len(out) == 2 and out[1] == b""
    head, _, body = out[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 403 Go away"
    assert b"X-Why: test" in lines and b"Content-Length: 6" in lines
    assert body == b"denied"
    assert conn.state is ConnectionState.CLOSED
    assert conn.events_received() == []
    with pytest.raises(LocalProtocolError):
        conn.send_binary(b"x")
    with pytest.raises(LocalProtocolError):
        conn.accept()


@pytest.mark.parametrize("before", [b"", b"GET /$hc/myhc HTTP/1.1\r\nHost: re"])
def test_server_eof_before_the_request_completes(before: bytes) -> None:
    conn = ServerConnection()
    conn.receive_data(before)
    conn.receive_eof()
    (event,) = conn.events_received()
    assert isinstance(event, HandshakeFailed)
    assert "closed the connection before finishing its request" in str(event.error)
    assert conn.data_to_send() == [b""]  # nobody left to answer: just close
    assert conn.state is ConnectionState.CLOSED
    conn.receive_eof()
    assert conn.events_received() == [] and conn.data_to_send() == []


def test_both_roles_talk_to_each_other() -> None:
    cli = ClientConnection.from_url(URL, subprotocols=("chat",))
    srv = ServerConnection()
    for chunk in cli.data_to_send():
        srv.receive_data(chunk)
    (event,) = srv.events_received()
    assert isinstance(event, RequestReceived)
    srv.accept(select_subprotocol(event.request.subprotocols, ["superchat", "chat"]))
    srv.send_text("welcome")
    for chunk in srv.data_to_send():
        cli.receive_data(chunk)
    assert cli.events_received()[1:] == [TextMessage("welcome")]
    assert cli.subprotocol == srv.subprotocol == "chat"
    cli.send_binary(b"\x00")
    cli.send_close(1000, "")
    for chunk in cli.data_to_send():
        srv.receive_data(chunk)
    assert srv.events_received() == [BinaryMessage(b"\x00"), CloseReceived(1000, ""),
                                     ConnectionClosed(1000, "", None)]
    # The server replies and closes TCP.
    assert decode_output(srv.data_to_send(), expect_masked=False) == [closed(1000), EOF]


# ---- select_subprotocol -------------------------------------------------------------------------


@pytest.mark.parametrize(("offered", "supported", "chosen"), [
    (["a", "b"], ["b", "a"], "b"),  # the server's preference wins
    (["a", "b"], ["a", "b"], "a"),
    (["b", "c"], ["a", "c", "b"], "c"),
    (["a"], ["x", "y"], None),
    ([], ["a"], None),
    (["a"], [], None),
])
def test_select_subprotocol_prefers_the_servers_order(offered: list[str], supported: list[str],
                                                      chosen: str | None) -> None:
    assert select_subprotocol(offered, supported) == chosen


def test_data_phase_only_once_the_handshake_output_and_events_are_collected() -> None:
    conn, _ = server_with_request()
    assert conn.data_phase() is None  # still handshaking
    conn.receive_data(frame(OP_TEXT, "early"))
    conn.accept()
    assert conn.data_phase() is None  # the 101 waits in data_to_send
    assert conn.data_to_send()[0].startswith(b"HTTP/1.1 101 ")
    ws = conn.data_phase()
    assert ws is not None and ws is conn.ws
    assert conn.events_received() == [TextMessage("early")]
    ws.receive_data(frame(OP_BINARY, b"direct"))  # feeding it directly is feeding the conn
    assert conn.events_received() == [BinaryMessage(b"direct")]


def test_data_phase_none_while_the_handshake_outcome_is_uncollected() -> None:
    client = ClientConnection(ClientHandshake("example:80", "/"))
    client.data_to_send()
    key = client.handshake.key
    client.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                        + accept_token(key).encode() + b"\r\n\r\n")
    assert client.data_phase() is None  # Opened not collected yet
    (event,) = client.events_received()
    assert isinstance(event, Opened)
    assert client.data_phase() is client.ws
    refused = ServerConnection()
    refused.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    refused.events_received()
    refused.data_to_send()
    assert refused.data_phase() is None  # never opened
