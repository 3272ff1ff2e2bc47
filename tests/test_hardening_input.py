"""Hostile input to the relay service (issue 12, defects 1 and 5): every request gets a
well-formed HTTP status or close code, nothing escapes ``RelayService.receive_data``, reason
phrases and log lines carry no raw control characters, token numbers are range-checked before
they are used, deep JSON and huge control messages are refused while they arrive."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import struct
from urllib.parse import quote, quote_plus, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyco_proto._text import close_reason, printable
from hyco_proto.control import parse_command
from hyco_proto.errors import RemoteProtocolError, TokenError
from hyco_proto.frames import apply_mask
from hyco_proto.handshake import ClientHandshake
from hyco_proto.memory import MemoryNetwork
from hyco_proto.sas import parse_token, token_expiry, verify_token
from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY, ServiceConfig
from hyco_proto.service.relay import ControlChannel
from hyco_proto.service.router import RelayService
from tests.relayutil import LISTEN, SEND, RawSender, token_for
from tests.wsutil import parse_frames

NOW = 1_700_000_000.0
UPGRADE = ("Host: 127.0.0.1:9090\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
#: Raw control characters that must never reach a status line or a log line.
RAW_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def signed_token(uri: str, se: str, key: str = DEVELOPMENT_KEY) -> str:
    """A token with a correct signature over any ``se`` text (create_relay_token only makes
    sensible ones)."""
    sr = quote_plus(uri)
    sig = base64.b64encode(
        hmac.new(key.encode(), f"{sr}\n{se}".encode(), hashlib.sha256).digest()).decode()
    return (f"SharedAccessSignature sr={sr}&sig={quote(sig, safe='')}&se={se}"
            f"&skn={DEFAULT_RULE_NAME}")


def exchange(service: RelayService, data: bytes) -> bytes:
    """One connection, ``data`` in, everything the service said out (no exception may leave)."""
    conn = service.connection_made(NOW, ("127.0.0.1", 40000))
    service.receive_data(NOW, conn, data)
    out = [d for cid, d in service.data_to_send() if cid == conn]
    return b"".join(out)


def status_line(raw: bytes) -> tuple[int, str]:
    line = raw.split(b"\r\n", 1)[0]
    match = re.fullmatch(rb"HTTP/1\.1 ([1-5]\d\d) ([\t\x20-\x7e\x80-\xff]*)", line)
    assert match is not None, f"not a well-formed status line: {line[:200]!r}"
    return int(match.group(1)), match.group(2).decode("latin-1")


# -- defect 1: control characters ----------------------------------------------------------

ACTIONS = ["%0D%0AX-Injected:%201", "%00", "%1B%5B31m", "%C2%85next", "%E2%80%A8x", "a%0Ab%0Dc"]


@pytest.mark.parametrize("action", ACTIONS)
def test_control_characters_in_the_action_get_a_clean_400(
        action: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    raw = exchange(RelayService(), f"GET /$hc/x?sb-hc-action={action} HTTP/1.1\r\n{UPGRADE}"
                                   "\r\n".encode())
    status, reason = status_line(raw)
    assert status == 400 and "sb-hc-action" in reason
    assert "\\x" in reason or "\\u" in reason  # escaped, still readable
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"X-Injected" not in head.split(b"\r\n", 1)[1]  # no header of the client's making
    for record in caplog.records:
        assert not RAW_CONTROL.search(record.getMessage()), record.getMessage()


def test_a_listeners_reject_description_reaches_the_sender_escaped(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    net = MemoryNetwork()
    listener, _ = open_control_channel(net)
    sender = RawSender(net, ClientHandshake.from_url(
        SEND, headers=[("ServiceBusAuthorization", token_for(net, SEND))]))
    net.pump()
    accept = json.loads(parse_frames(listener.raw())[0].payload)["accept"]
    address = urlsplit(accept["address"])
    target = (f"{address.path}?{address.query}&sb-hc-statusCode=403"
              "&sb-hc-statusDescription=%0D%0AX-Evil:%201%00%1B%5B2J%C2%85")
    rendezvous = RawSender(net)
    rendezvous.write(f"GET {target} HTTP/1.1\r\n{UPGRADE}\r\n".encode())
    assert status_line(rendezvous.raw())[0] == 410
    assert sender.rejected is not None
    assert sender.rejected.status == 403
    assert "X-Evil" in sender.rejected.reason and not RAW_CONTROL.search(sender.rejected.reason)
    for record in caplog.records:
        assert not RAW_CONTROL.search(record.getMessage()), record.getMessage()


def test_printable_escapes_and_bounds() -> None:
    assert printable("a\r\nb\x00\x85\u2028\u202e") == "a\\x0d\\x0ab\\x00\\x85\\u2028\\u202e"
    assert printable("plain text é 中") == "plain text é 中"
    assert printable("中", latin1=True) == "\\u4e2d"
    assert len(printable("x" * 10_000, 100)) == 100
    assert len(close_reason("é" * 200).encode()) <= 123
    assert close_reason("\ud800") == "\\ud800"


# -- defect 1: numbers in tokens -----------------------------------------------------------

HUGE_SE = "9" * 5000
#: 9999-12-31T23:59:59Z, the last expiry a token may carry (hyco_proto.sas.MAX_EXPIRY).
MAX_EXPIRY = 253402300799


def test_a_huge_se_is_refused_before_int_and_signature() -> None:
    token = f"SharedAccessSignature sr=a&sig=b&se={HUGE_SE}&skn=c"
    with pytest.raises(TokenError, match="se is not a valid expiry") as err:
        parse_token(token)
    assert err.value.status == 401


@pytest.mark.parametrize("se", [str(MAX_EXPIRY + 1), "1" + "0" * 20, "9" * 400])
def test_a_validly_signed_se_beyond_any_date_is_401(se: str) -> None:
    token = signed_token("http://ns/hc", se)
    with pytest.raises(TokenError, match="se is not a valid expiry"):
        verify_token(token, keys={DEFAULT_RULE_NAME: DEVELOPMENT_KEY}, target_path="/hc",
                     now=NOW)


def test_leading_zeros_and_the_last_valid_second_still_parse() -> None:
    assert parse_token(f"SharedAccessSignature sr=a&sig=b&se=000{MAX_EXPIRY}&skn=c").expiry \
        == MAX_EXPIRY


def test_a_jwt_exp_of_infinity_has_no_expiry() -> None:
    payload = base64.urlsafe_b64encode(b'{"exp": 1e999}').decode().rstrip("=")
    assert token_expiry(f"e30.{payload}.sig") is None
    deep = base64.urlsafe_b64encode(b"[" * 100_000).decode().rstrip("=")
    assert token_expiry(f"e30.{deep}.sig") is None


@pytest.mark.parametrize("where", ["header", "query"])
@pytest.mark.parametrize("se", [HUGE_SE, "9" * 400, str(MAX_EXPIRY + 1)])
def test_huge_se_through_the_service_is_a_401(where: str, se: str) -> None:
    uri = "http://127.0.0.1:9090/$hc/x"
    token = signed_token(uri, se)
    if where == "header":
        request = (f"GET /$hc/x?sb-hc-action=listen HTTP/1.1\r\n{UPGRADE}"
                   f"ServiceBusAuthorization: {token}\r\n\r\n")
    else:
        request = (f"GET /$hc/x?sb-hc-action=listen&sb-hc-token={quote(token, safe='')} "
                   f"HTTP/1.1\r\n{UPGRADE}\r\n")
    status, reason = status_line(exchange(RelayService(), request.encode()))
    assert status == 401 and "se is not a valid expiry" in reason


# -- defect 1: hostile messages on a control channel ---------------------------------------


def masked(opcode: int, payload: bytes, *, fin: bool = True, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | opcode
    if n > 0xFFFF:
        head = bytes((b0, 0x80 | 127)) + struct.pack("!Q", n)
    elif n > 125:
        head = bytes((b0, 0x80 | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, 0x80 | n))
    key = b"\x12\x34\x56\x78"
    return head + key + apply_mask(payload, key)


def open_control_channel(net: MemoryNetwork) -> tuple[RawSender, ControlChannel]:
    uri = f"{LISTEN}?sb-hc-action=listen"
    shake = ClientHandshake.from_url(
        uri, headers=[("ServiceBusAuthorization", token_for(net, LISTEN))])
    channel = RawSender(net, shake)
    net.pump()
    assert channel.accepted is not None
    handler = net.service.handler(channel.conn_id)
    assert isinstance(handler, ControlChannel)
    return channel, handler


def close_code(channel: RawSender) -> int | None:
    frames = parse_frames(channel.raw())
    closes = [f for f in frames if f.opcode == 0x8]
    assert closes, f"no close frame in {channel.raw()[:200]!r}"
    return int.from_bytes(closes[0].payload[:2], "big")


HOSTILE_CONTROL = [
    ("nested 100,000 deep", "[" * 100_000, 1008),
    ("nested object", '{"a":' * 20_000 + "1" + "}" * 20_000, 1008),
    ("renewToken with a huge se",
     '{"renewToken": {"token": "SharedAccessSignature sr=a&sig=b&se=' + HUGE_SE + '&skn=c"}}',
     1008),
    ("renewToken with a signed se of 400 digits", None, 1008),
    ("renewToken with control characters",
     '{"renewToken": {"token": "SharedAccessSignature sr=a\\r\\n&sig=b&se=1&skn=\\u0000é\\ud800"}}',
     1008),
]


@pytest.mark.parametrize("name,text,code", HOSTILE_CONTROL, ids=[h[0] for h in HOSTILE_CONTROL])
def test_hostile_control_messages_are_closed_with_a_code(
        name: str, text: str | None, code: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    net = MemoryNetwork()
    channel, _ = open_control_channel(net)
    if text is None:
        token = signed_token("http://127.0.0.1:9090/$hc/myhc", "9" * 400)
        text = '{"renewToken": {"token": "' + token + '"}}'
    channel.write(masked(0x1, text.encode("utf-8", "surrogatepass")))
    assert close_code(channel) == code
    assert channel.tcp_closed or net.service.kind(channel.conn_id) is not None
    for record in caplog.records:
        assert not RAW_CONTROL.search(record.getMessage()), record.getMessage()


def test_nesting_is_refused_without_recursion() -> None:
    with pytest.raises(RemoteProtocolError, match="nested") as err:
        parse_command("[" * 100_000)
    assert err.value.close_code == 1008
    # Brackets inside strings do not count; normal messages parse.
    command = parse_command('{"renewToken": {"token": "' + "[" * 100 + '"}}')
    assert type(command).__name__ == "RenewTokenCommand"


# -- defect 5: control-channel message size -------------------------------------------------


def test_a_frame_header_announcing_100_mb_is_1009_at_once() -> None:
    net = MemoryNetwork()
    channel, handler = open_control_channel(net)
    header = masked(0x1, b"", length=100 * 1024 * 1024)
    channel.write(header)
    assert close_code(channel) == 1009
    assert channel.tcp_closed
    # Nothing of the announced payload is held: the decoder has at most the header's bytes and
    # the connection is gone, so more bytes go nowhere.
    assert handler.ws._decoder.buffered <= len(header)
    assert net.service.handler(channel.conn_id) is None


def test_fragments_beyond_the_cap_are_1009_before_the_message_ends() -> None:
    config = ServiceConfig(max_control_message=4096)
    net = MemoryNetwork(RelayService(config))
    channel, handler = open_control_channel(net)
    channel.write(masked(0x1, b"[" + b" " * 2000, fin=False))
    assert not channel.raw()
    channel.write(masked(0x0, b" " * 2000, fin=False))
    assert not channel.raw()
    channel.write(masked(0x0, b" " * 2000, fin=False))  # 6001 > 4096, and not final
    assert close_code(channel) == 1009
    assert handler.ws._decoder.buffered < 4096


def test_the_default_cap_allows_a_large_legitimate_response_head() -> None:
    assert 128 * 1024 <= ServiceConfig().max_control_message < 1024 * 1024
    net = MemoryNetwork()
    channel, _ = open_control_channel(net)
    # A response head with 32 KiB of headers whose JSON escaping doubled it.
    headers = {f"x-h{i}": '"\\' * 512 for i in range(32)}
    text = json.dumps({"response": {"requestId": "nope", "statusCode": 200,
                                    "responseHeaders": headers}})
    assert len(text) > 64 * 1024
    channel.write(masked(0x1, text.encode()))
    assert not channel.raw(), "not closed"


# -- no exception escapes receive_data ------------------------------------------------------

HOSTILE_REQUESTS = [
    b"GET /$hc/x?sb-hc-action=%0D%0A HTTP/1.1\r\n" + UPGRADE.encode() + b"\r\n",
    b"GET /$hc/x?sb-hc-action=%00 HTTP/1.1\r\n" + UPGRADE.encode() + b"\r\n",
    b"GET /$hc/x?sb-hc-action=accept&sb-hc-id=%0D%0A HTTP/1.1\r\n" + UPGRADE.encode() + b"\r\n",
    b"GET /$hc/x?sb-hc-action=accept&sb-hc-statusCode=999999999999999999999999&sb-hc-id=a"
    b" HTTP/1.1\r\n" + UPGRADE.encode() + b"\r\n",
    b"GET /$hc/x?sb-hc-action=listen&sb-hc-id=%0D%0A%00 HTTP/1.1\r\n" + UPGRADE.encode()
    + b"\r\n",
    b"GET /$hc/x?sb-hc-action=listen&sb-hc-token=SharedAccessSignature%20sr%3D%0D%0A%26sig%3D"
    b"%00%26se%3D1%26skn%3D%0A HTTP/1.1\r\n" + UPGRADE.encode() + b"\r\n",
    b"GET /$hc/x?sb-hc-action=connect&sb-hc-token=SharedAccessSignature%20sr%3Da%26sig%3Db%26se%3D"
    + b"9" * 5000 + b"%26skn%3Dc HTTP/1.1\r\n" + UPGRADE.encode() + b"\r\n",
    b"GET /$hc/x?sb-hc-action=listen HTTP/1.1\r\n" + UPGRADE.encode()
    + b"ServiceBusAuthorization: SharedAccessSignature sr=a&sig=b&se=" + b"1" * 4400
    + b"&skn=c\r\n\r\n",
    b"GET /$hc/x?sb-hc-action=listen HTTP/1.1\r\n" + UPGRADE.encode()
    + b"ServiceBusAuthorization: SharedAccessSignature sr=\x85\xff&sig=\x7f&se=1&skn=\xe9\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: a\r\nServiceBusAuthorization: SharedAccessSignature sr=a&sig=b&se="
    + b"9" * 5000 + b"&skn=c\r\nContent-Length: 0\r\n\r\n",
    b"POST /x?sb-hc-token=%00%0D%0A HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"GET /$status?%0D%0A HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /%0D%0A%00 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /\x7f\x85 HTTP/1.1\r\nHost: \x85\r\n\r\n",
    b"GET /$hc/x HTTP/1.1\r\n" + UPGRADE.encode() + b"Sec-WebSocket-Protocol: \x85\xff\r\n\r\n",
    b"GET /$hc/x?sb-hc-action=" + b"%FF" * 2000 + b" HTTP/1.1\r\n" + UPGRADE.encode() + b"\r\n",
    b"\x00\r\n\r\n",
]


@pytest.mark.parametrize("data", HOSTILE_REQUESTS, ids=range(len(HOSTILE_REQUESTS)))
def test_hostile_requests_get_a_status_and_nothing_escapes(
        data: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    service = RelayService()
    raw = exchange(service, data)
    if raw:  # an upgrade with no listener may wait (a sender) rather than answer
        status_line(raw)
    for record in caplog.records:
        assert not RAW_CONTROL.search(record.getMessage()), record.getMessage()
    # Time passing and the client leaving raise nothing either.
    service.handle_timer(NOW + 3600)
    service.data_to_send()


request_lines = st.builds(
    lambda method, target, version, upgrade, headers: (
        method + b" " + target + b" " + version + b"\r\n" + (UPGRADE.encode() if upgrade else b"")
        + b"".join(headers) + b"\r\n"),
    st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"G\x00T"]),
    st.one_of(st.binary(max_size=60),
              st.builds(lambda q: b"/$hc/x?" + q, st.binary(max_size=60)),
              st.builds(lambda q: b"/$hc/x?sb-hc-action=" + q, st.sampled_from(
                  [b"listen", b"connect", b"accept", b"request", b"%0D%0A", b"%00", b"\x85",
                   b"listen&sb-hc-token=SharedAccessSignature%20sr%3Da%26sig%3Db%26skn%3Dc%26se%3D"
                   + b"9" * 4400]))),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9", b""]),
    st.booleans(),
    st.lists(st.one_of(st.sampled_from([s.encode() + b"\r\n" for s in UPGRADE.split("\r\n") if s]),
                       st.builds(lambda k, v: k + b": " + v + b"\r\n",
                                 st.sampled_from([b"ServiceBusAuthorization", b"Content-Length",
                                                  b"Transfer-Encoding", b"X"]),
                                 st.binary(max_size=40))), max_size=8),
)


QUERY_PIECES = [b"sb-hc-action=", b"listen", b"connect", b"accept", b"request", b"&", b"=",
                b"%0D%0A", b"%00", b"%1B", b"%C2%85", b"%FF", b"sb-hc-id=", b"sb-hc-token=",
                b"sb-hc-statusCode=", b"sb-hc-statusDescription=", b"se%3D" + b"9" * 4400,
                b"SharedAccessSignature%20sr%3Da%26sig%3Db%26skn%3Dc%26se%3D", b"1" * 30]
#: Well-formed upgrades to /$hc/ whose query is made of pieces like these.
hostile_upgrades = st.builds(
    lambda pieces, headers: (b"GET /$hc/x?" + b"".join(pieces) + b" HTTP/1.1\r\n"
                             + UPGRADE.encode() + b"".join(headers) + b"\r\n"),
    st.lists(st.sampled_from(QUERY_PIECES), max_size=8),
    st.lists(st.builds(lambda v: b"ServiceBusAuthorization: " + v + b"\r\n",
                       st.sampled_from([b"SharedAccessSignature sr=a&sig=b&skn=c&se=" + b"9" * 4400,
                                        b"SharedAccessSignature sr=\x85&sig=\xff&skn=\x7f&se=1"])),
             max_size=1),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.binary(max_size=200), request_lines, hostile_upgrades),
                min_size=1, max_size=4))
def test_random_input_never_raises(chunks: list[bytes]) -> None:
    service = RelayService()
    conn = service.connection_made(NOW, ("127.0.0.1", 1))
    for chunk in chunks:
        service.receive_data(NOW, conn, chunk)
    for _, data in service.data_to_send():
        if data.startswith(b"HTTP/"):
            status_line(data)
    service.receive_eof(NOW, conn)
    service.handle_timer(NOW + 100)
    service.data_to_send()


# -- defect 5: the request rendezvous caps its text (the response head), not its body --------


def test_a_request_rendezvous_refuses_a_huge_text_message_while_it_streams() -> None:
    from tests.test_http_relay import Net, listen, open_rendezvous, request_bytes

    net = Net()
    control = listen(net)
    net.connect_raw(request_bytes("POST", "/myhc/c", chunked=True))
    pointer = control.texts()[0]["request"]
    rendezvous = open_rendezvous(net, pointer["address"])
    handler = net.svc.handler(rendezvous.id)
    assert handler is not None
    cap = ServiceConfig().max_control_message
    key = b"\x12\x34\x56\x78"
    net.svc.receive_data(net.now, rendezvous.id,
                         bytes((0x81, 0x80 | 127)) + struct.pack("!Q", 100 * 2**20) + key)
    chunk = 64 * 1024
    sent = 0
    while rendezvous.id not in net.closed:
        assert sent <= cap + chunk, "still reading past the cap"
        net.send(rendezvous.id, apply_mask(b"a" * chunk, key))
        sent += chunk
        held = sum(len(part) for part in handler.ws._text_parts)  # type: ignore[attr-defined]
        assert held <= cap
    assert sent <= cap + chunk
    closed = [e for e in rendezvous.take() if getattr(e, "code", None) is not None]
    assert closed and closed[0].code == 1009  # type: ignore[attr-defined]


def test_a_request_rendezvous_still_streams_a_body_bigger_than_the_cap() -> None:
    from tests.test_http_relay import Net, listen, open_rendezvous, parse_response, request_bytes

    net = Net()
    control = listen(net)
    sender = net.connect_raw(request_bytes("POST", "/myhc/c", chunked=True))
    pointer = control.texts()[0]["request"]
    rendezvous = open_rendezvous(net, pointer["address"])
    net.send(sender, b"0\r\n\r\n")
    body = b"b" * (2 * ServiceConfig().max_control_message)
    rendezvous.conn.send_text(json.dumps({"response": {
        "requestId": pointer["id"], "statusCode": 200, "responseHeaders": {}, "body": True}}))
    rendezvous.conn.send_binary(body)  # one frame, twice the cap
    rendezvous.flush()
    head, whole, complete = parse_response(net.raw[sender], "POST")
    assert head.status_code == 200 and complete and whole == body


def test_max_text_size_caps_text_and_leaves_binary_alone() -> None:
    from hyco_proto.websocket import BinaryMessage, ConnectionClosed, Role, WebSocketConnection

    ws = WebSocketConnection(Role.SERVER, max_text_size=10)
    ws.receive_data(masked(0x2, b"x" * 1000))
    assert [type(e) for e in ws.events_received()] == [BinaryMessage]
    ws.receive_data(masked(0x1, b"y" * 11))
    closed = [e for e in ws.events_received() if isinstance(e, ConnectionClosed)]
    assert closed and closed[0].code == 1009
    fragmented = WebSocketConnection(Role.SERVER, max_text_size=10)
    fragmented.receive_data(masked(0x1, b"y" * 6, fin=False) + masked(0x0, b"y" * 6))
    closed = [e for e in fragmented.events_received() if isinstance(e, ConnectionClosed)]
    assert closed and closed[0].code == 1009


@pytest.mark.parametrize("action", ["listen", "connect"])
def test_a_client_chosen_id_cannot_forge_a_log_line(
        action: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    net = MemoryNetwork()
    if action == "connect":
        open_control_channel(net)
    uri = f"{LISTEN}?sb-hc-action={action}&sb-hc-id=%0D%0AFORGED%20line%1B%5B2J%00"
    shake = ClientHandshake.from_url(
        uri, headers=[("ServiceBusAuthorization", token_for(net, LISTEN))])
    client = RawSender(net, shake)
    net.pump()
    assert client.accepted is not None or action == "connect"
    messages = [r.getMessage() for r in caplog.records]
    assert any("FORGED" in m for m in messages) or action == "connect"
    for message in messages:
        assert not RAW_CONTROL.search(message), message
    for record in caplog.records:
        for field in ("what", "why", "tracking"):
            value = getattr(record, field, "")
            assert not RAW_CONTROL.search(str(value)), (field, value)


def test_max_control_message_is_a_server_setting_of_the_config_file() -> None:
    from hyco_proto.service.tomlconfig import ConfigError, parse_config

    assert parse_config("").service.max_control_message == 256 * 1024
    config = parse_config("[server]\nmax_control_message = 4096\n")
    assert config.service.max_control_message == 4096
    with pytest.raises(ConfigError, match="max_control_message"):
        parse_config("[server]\nmax_control_message = 10\n")
