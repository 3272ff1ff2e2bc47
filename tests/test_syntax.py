"""One token rule and one ws:// URL parser, shared by the handshake, the sender and the listener."""

from __future__ import annotations

import pytest

from hyco_proto._syntax import is_token
from hyco_proto.control import AcceptCommand, RemoteEndpoint, serialize_command
from hyco_proto.errors import LocalProtocolError
from hyco_proto.handshake import ServerHandshake, parse_ws_url
from hyco_proto.listener import ConnectionRequested, Listener
from hyco_proto.sender import SenderConnect

KEY_REQUEST = (b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


@pytest.mark.parametrize("value", ["chat", "a.b-c_d~e!#$%&'*+^`|", "X-Custom", "0"])
def test_tokens(value: str) -> None:
    assert is_token(value)


@pytest.mark.parametrize("value", ["", "a b", "a,b", "a\tb", "a/b", 'a"', "é", "chat\n",
                                   "\nchat", "a\x7f", None, b"chat"])
def test_not_tokens(value: object) -> None:
    assert not is_token(value)


def test_server_refuses_header_name_with_trailing_newline() -> None:
    # The old "^...$" pattern let "X-A\n" through, and the server writes its headers itself.
    hs = ServerHandshake()
    hs.receive_data(KEY_REQUEST)
    assert hs.next_event() is not None
    with pytest.raises(LocalProtocolError, match="HTTP token"):
        hs.accept(headers=[("X-A\n", "v")])


def test_listener_refuses_trailing_newline_subprotocol() -> None:
    accept = serialize_command(AcceptCommand(
        "wss://h/$hc/x?sb-hc-action=accept&sb-hc-id=c1", "c1",
        {"Sec-WebSocket-Protocol": "chat\n"}, RemoteEndpoint("10.0.0.1", 1)))
    lis = Listener("wss://h/$hc/x", "tok", keepalive_interval=None)
    lis.start(0.0)
    lis.channel_opened(0.0)
    lis.channel_message(0.0, accept)
    req = lis.events_received()[-1]
    assert isinstance(req, ConnectionRequested)
    with pytest.raises(LocalProtocolError, match="not a valid token"):
        lis.accept(0.0, req, subprotocol="chat\n")


def test_ws_url_parts() -> None:
    u = parse_ws_url("WSS://Ns.Example:443/$hc/x/y?a=1&b")
    assert (u.scheme, u.path, u.query) == ("wss", "/$hc/x/y", "a=1&b")
    assert u.url == "wss://ns.example/$hc/x/y?a=1&b"
    v = parse_ws_url("ws://[::1]:9090")
    assert (v.scheme, v.path, v.query, v.url) == ("ws", "/", "", "ws://[::1]:9090/")


BAD_URLS = [
    ("https://h/$hc/x", "ws:// or wss://"),
    ("wss:///$hc/x", "no host"),
    ("wss://user:pw@h/$hc/x", "user:password@"),
    ("wss://h/$hc/x#frag", "fragment"),
    ("wss://h:99999/$hc/x", "invalid port"),
    ("wss://h:port/$hc/x", "invalid port"),
    ("ws://h:0/$hc/x", "invalid port"),
]


@pytest.mark.parametrize(("url", "message"), BAD_URLS)
def test_parse_ws_url_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ws_url(url)


@pytest.mark.parametrize(("url", "message"), BAD_URLS)
def test_sender_refuses_what_the_parser_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^send address.*{message}"):
        SenderConnect(url)


@pytest.mark.parametrize(("url", "message"), BAD_URLS)
def test_listener_refuses_what_the_parser_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^listener address.*{message}"):
        Listener(url, "tok")


def test_listener_url_is_normalised_like_the_handshake_target() -> None:
    lis = Listener("WSS://Ns.Example:443/$hc/x?a=1", "tok")
    assert lis.url == "wss://ns.example/$hc/x?a=1&sb-hc-action=listen"


def test_parse_ws_url_type() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        parse_ws_url(b"ws://h/")  # type: ignore[arg-type]
