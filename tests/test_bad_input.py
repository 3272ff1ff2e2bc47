"""Bad input, layer by layer: each malformed input maps to a clear error; nothing crashes or
hangs, and the relay service keeps serving everyone else."""

from __future__ import annotations

import pytest

from hyco_proto.control import parse_command
from hyco_proto.errors import RemoteProtocolError, TokenError
from hyco_proto.frames import FrameDecoder
from hyco_proto.handshake import ServerHandshake
from hyco_proto.listener import Listener
from hyco_proto.memory import MemoryNetwork
from hyco_proto.sas import create_relay_token, parse_token, verify_token
from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY
from hyco_proto.uris import parse_connection_string, parse_relay_uri
from hyco_proto.websocket import ConnectionClosed, Role, WebSocketConnection

KEY = b"\x01\x02\x03\x04"

FRAMES = [
    ("unmasked client frame", b"\x81\x05hello", 1002, "masked"),
    ("reserved opcode", b"\x83\x80" + KEY, 1002, "reserved opcode"),
    ("rsv bit", b"\xc1\x80" + KEY, 1002, "reserved bits"),
    ("huge ping", b"\x89\xfe\x00\x7e" + KEY, 1002, "125"),
    ("continuation first", b"\x80\x80" + KEY, 1002, "continuation"),
    ("msb length", b"\x82\xff\xff" + b"\x00" * 7 + KEY, 1002, "significant"),
]


@pytest.mark.parametrize("name,data,code,reason", FRAMES, ids=[f[0] for f in FRAMES])
def test_bad_frames_fail_the_connection_with_a_code(
    name: str, data: bytes, code: int, reason: str
) -> None:
    dec = FrameDecoder(masked=True)
    dec.feed(data)
    assert dec.error_code == code and reason in dec.error_reason
    ws = WebSocketConnection(Role.SERVER)
    ws.receive_data(data)
    closed = [e for e in ws.events_received() if isinstance(e, ConnectionClosed)]
    assert closed and closed[0].code == code
    assert ws.data_to_send()[-1] == b""  # the server closes TCP


def test_oversized_message_is_1009() -> None:
    ws = WebSocketConnection(Role.SERVER, max_message_size=10)
    ws.receive_data(b"\x82\x8b" + KEY + bytes(11))
    closed = [e for e in ws.events_received() if isinstance(e, ConnectionClosed)]
    assert closed and closed[0].code == 1009


HANDSHAKES = [
    ("garbage", b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400),
    ("not GET", b"POST /$hc/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 405),
    ("no upgrade", b"GET /$hc/x HTTP/1.1\r\nHost: a\r\n\r\n", 426),
    (
        "bad version",
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        426,
    ),
    (
        "bad key",
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n",
        400,
    ),
    ("headers too big", b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
]


@pytest.mark.parametrize("name,data,status", HANDSHAKES, ids=[h[0] for h in HANDSHAKES])
def test_bad_handshakes_get_a_status(name: str, data: bytes, status: int) -> None:
    hs = ServerHandshake()
    hs.receive_data(data)
    assert hs.next_event() is None
    assert hs.rejection_status == status
    assert hs.rejection is not None and hs.rejection.startswith(f"HTTP/1.1 {status} ".encode())


CONTROL = [
    ("not json", "{accept", "JSON"),
    ("not an object", "[1, 2]", "object"),
    ("missing address", '{"accept": {"id": "x"}}', "accept.address"),
    ("bad status", '{"response": {"requestId": "1", "statusCode": "abc"}}', "statusCode"),
]


@pytest.mark.parametrize("name,text,fragment", CONTROL, ids=[c[0] for c in CONTROL])
def test_bad_control_json_names_the_problem(name: str, text: str, fragment: str) -> None:
    with pytest.raises(RemoteProtocolError, match=fragment):
        parse_command(text)


def test_unknown_control_command_is_not_fatal() -> None:
    assert (
        type(parse_command('{"injectFault": {"delay": "00:01:00"}}')).__name__ == "UnknownCommand"
    )


TOKENS = [
    ("empty", "", "SharedAccessSignature"),
    ("no prefix", "sr=a&sig=b&se=1&skn=c", "SharedAccessSignature"),
    ("missing se", "SharedAccessSignature sr=a&sig=b&skn=c", "se"),
    ("bad se", "SharedAccessSignature sr=a&sig=b&se=soon&skn=c", "se"),
]


@pytest.mark.parametrize("name,token,fragment", TOKENS, ids=[t[0] for t in TOKENS])
def test_bad_tokens_say_why(name: str, token: str, fragment: str) -> None:
    with pytest.raises(TokenError, match=fragment):
        parse_token(token)


def test_wrong_key_and_wrong_path_are_401_and_403() -> None:
    token = create_relay_token("http://ns/hc", "rule", "key", now=1000)
    with pytest.raises(TokenError) as bad_sig:
        verify_token(token, keys={"rule": "other"}, target_path="/hc", now=1000)
    assert bad_sig.value.status == 401 and "signature" in bad_sig.value.reason
    with pytest.raises(TokenError) as wrong_path:
        verify_token(token, keys={"rule": "key"}, target_path="/other", now=1000)
    assert wrong_path.value.status == 403


@pytest.mark.parametrize("text", ["", "SharedAccessKey=x;EntityPath=y", "garbage without equals"])
def test_bad_connection_strings(text: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_connection_string(text)
    assert str(err.value)


@pytest.mark.parametrize("uri", ["", "http://", "ws://host/not-a-relay-path", "ftp://x/$hc/y"])
def test_bad_relay_uris(uri: str) -> None:
    with pytest.raises(ValueError):
        parse_relay_uri(uri)


def test_relay_service_survives_garbage_and_keeps_serving() -> None:
    net = MemoryNetwork()
    listen = "ws://127.0.0.1:9090/$hc/hc"
    runner = net.listen(
        Listener(
            listen,
            lambda: create_relay_token(listen, DEFAULT_RULE_NAME, DEVELOPMENT_KEY, now=net.now),
            keepalive_interval=None,
        )
    )
    service = net.service
    # Raw garbage, a half handshake that never finishes, and a control channel with bad JSON.
    garbage = service.connection_made(net.now)
    service.receive_data(net.now, garbage, b"\x00\xff" * 1000 + b"\r\n\r\n")
    out = service.data_to_send()
    assert out[0][0] == garbage and out[0][1].startswith(b"HTTP/1.1 400")
    assert out[-1] == (garbage, b"")  # and the connection is closed
    half = service.connection_made(net.now)
    service.receive_data(net.now, half, b"GET /$hc/hc HTTP/1.1\r\nHost: x\r\n")
    control = runner.driver.control_connection
    assert runner.control is not None and control is not None
    control.send_text("{not json")
    control.send_text('{"renewToken": {"token": "SharedAccessSignature junk"}}')
    for chunk in control.data_to_send():
        runner.control.write(chunk)
    net.pump()
    # The listener with the bad renewToken is closed with 1008 and reconnects; a sender still
    # gets through.
    net.advance(5)
    uri = "ws://127.0.0.1:9090/$hc/hc?sb-hc-action=connect"
    token = create_relay_token(uri, DEFAULT_RULE_NAME, DEVELOPMENT_KEY, now=net.now)
    sender = net.connect(uri, headers=[("ServiceBusAuthorization", token)])
    net.pump()
    assert sender.accepted is not None
    sender.send("still serving")
    net.pump()
    assert runner.connections[-1].messages == ["still serving"]
    # The half-finished handshake is answered 408 and closed once its time is up.
    assert service.kind(half) is not None
    net.advance(service.handshake_timeout)
    assert service.kind(half) is None
