"""Issue 12, defect 6: one structured log line (client address, tracking id, what, why) per
event — accepted listener / sender / relayed pair / HTTP request, handshake failures, protocol
closes, refusals — and never a token or a piece of one in a log line or an HTTP reason."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from urllib.parse import quote

import pytest

from hyco_proto.handshake import ClientHandshake
from hyco_proto.listener import Listener
from hyco_proto.memory import MemoryNetwork
from hyco_proto.sas import create_relay_token
from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY, ServiceConfig
from hyco_proto.service.front import MAX_HEAD
from hyco_proto.service.router import RelayService
from tests.relayutil import (
    BASE,
    LISTEN,
    SEND,
    RawSender,
    raw_sender,
    start_echo_listener,
    token_for,
)

LOGGER = "hyco_proto.service"
HOST = "10.20.30.40"


def make_net() -> MemoryNetwork:
    return MemoryNetwork(RelayService(ServiceConfig()), remote_host=HOST)


def lines(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


def check(record: logging.LogRecord, tracking: str | None = None) -> None:
    text = record.getMessage()
    assert re.search(rf"client={re.escape(HOST)}:\d+", text), text
    found = re.search(r"tracking=(\S+)", text)
    assert found and found.group(1) != "-", text
    if tracking is not None:
        assert found.group(1) == tracking, text


def masked(opcode: int, payload: bytes) -> bytes:
    assert len(payload) < 126
    return bytes((0x80 | opcode, 0x80 | len(payload))) + b"\0\0\0\0" + payload


def test_accepted_listener_sender_pair_and_request_are_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    net = make_net()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        start_echo_listener(net)
        sender = raw_sender(net)
        assert sender.accepted is not None
        http = RawSender(net)
        token = token_for(net, f"{BASE}/myhc")
        http.write(f"GET /myhc/x HTTP/1.1\r\nHost: h\r\nServiceBusAuthorization: {token}\r\n"
                   "\r\n".encode())
    listener_id = next(iter(net.service.broker.registry.all_listeners())).id
    [listener] = lines(caplog, "listener-accepted")
    check(listener, listener_id)
    assert "/$hc/myhc" in listener.getMessage()
    [waiting] = lines(caplog, "sender-accepted")
    check(waiting)
    [pair] = lines(caplog, "pair-relayed")
    check(pair, getattr(waiting, "tracking", None))
    [request] = lines(caplog, "request-accepted")
    check(request)
    assert "GET /myhc/x" in request.getMessage()
    assert token not in caplog.text


@pytest.mark.parametrize(("data", "status"), [
    (b"NOT HTTP AT ALL\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * (MAX_HEAD + 10), 431),
    (b"GET /$hc/myhc?sb-hc-action=listen HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
     b"Connection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n",
     400),
])
def test_handshake_failures_are_logged(caplog: pytest.LogCaptureFixture, data: bytes,
                                       status: int) -> None:
    net = make_net()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        conn = RawSender(net)
        conn.write(data)
    assert conn.raw().startswith(f"HTTP/1.1 {status}".encode()), conn.raw()[:60]
    [record] = lines(caplog, "handshake-failed")
    check(record, f"conn-{conn.conn_id}")
    assert f"with {status}" in record.getMessage()


def test_handshake_timeout_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    net = make_net()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        conn = RawSender(net)
        conn.write(b"GET /$status HTTP/1.1\r\nHost: localhost\r\n")
        net.advance(net.service.handshake_timeout + 1)
    assert conn.raw().startswith(b"HTTP/1.1 408")
    [record] = lines(caplog, "handshake-failed")
    check(record, f"conn-{conn.conn_id}")
    assert "with 408" in record.getMessage()


def test_protocol_close_of_a_relayed_leg_1002(caplog: pytest.LogCaptureFixture) -> None:
    net = make_net()
    start_echo_listener(net)
    sender = raw_sender(net)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        sender.write(b"\x81\x01a")  # unmasked client frame: 1002
    [record] = lines(caplog, "protocol-close")
    check(record)
    assert "1002" in record.getMessage()
    assert record.__dict__.get("code") == 1002  # a field of its own in JSON


def test_protocol_close_of_a_control_channel_1007(caplog: pytest.LogCaptureFixture) -> None:
    net = make_net()
    shake = ClientHandshake.from_url(
        f"{LISTEN}?sb-hc-action=listen",
        headers=[("ServiceBusAuthorization", token_for(net, LISTEN))])
    channel = RawSender(net, shake)
    net.pump()
    assert channel.accepted is not None
    listener_id = next(iter(net.service.broker.registry.all_listeners())).id
    with caplog.at_level(logging.INFO, logger=LOGGER):
        channel.write(masked(0x1, b"\xff\xfe"))  # invalid UTF-8: 1007
    [record] = lines(caplog, "protocol-close")
    check(record, listener_id)
    assert "1007" in record.getMessage()
    assert record.__dict__.get("code") == 1007  # a field of its own in JSON


def test_protocol_close_1008_when_a_listener_token_expires(
        caplog: pytest.LogCaptureFixture) -> None:
    net = make_net()
    fixed = token_for(net, LISTEN, ttl=100)
    net.listen(Listener(LISTEN, fixed, keepalive_interval=None))
    net.pump()
    listener_id = next(iter(net.service.broker.registry.all_listeners())).id
    with caplog.at_level(logging.INFO, logger=LOGGER):
        net.advance(100 + net.service.broker.config.token_grace + 1)
    records = lines(caplog, "protocol-close")
    assert records
    check(records[0], listener_id)
    assert "1008" in records[0].getMessage()
    assert records[0].__dict__.get("code") == 1008


def test_refusals_name_client_and_tracking_id(caplog: pytest.LogCaptureFixture) -> None:
    net = make_net()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        conn = RawSender(net, ClientHandshake.from_url(SEND))
        net.pump()
    assert conn.rejected is not None and conn.rejected.status == 401
    [record] = lines(caplog, "refused")
    tracking = re.search(r"TrackingId:([^,\s]+)", conn.rejected.reason or "")
    assert tracking is not None
    check(record, tracking.group(1))


MARK = "Zq7SECRETx9"


def bad_tokens(net: MemoryNetwork) -> list[tuple[str, list[str]]]:
    """(token, substrings that must never be seen)."""
    uri = f"{BASE}/$hc/myhc"
    wrong_key = create_relay_token(uri, DEFAULT_RULE_NAME, "not-the-key", 3600, now=net.now)
    expired = create_relay_token(LISTEN, DEFAULT_RULE_NAME,
                                 DEVELOPMENT_KEY, 10,
                                 now=net.now - 100)
    other = create_relay_token(f"{BASE}/$hc/other{MARK}", DEFAULT_RULE_NAME,
                               DEVELOPMENT_KEY, 3600,
                               now=net.now)

    def fields(token: str) -> list[str]:
        body = token.split(" ", 1)[1]
        found = dict(p.split("=", 1) for p in body.split("&"))
        return [found["sig"], token]

    return [
        (MARK, [MARK]),
        (f"sharedaccesssignature sr=a&sig={MARK}&se=1&skn=k", [MARK]),
        (f"SharedAccessSignature {MARK}", [MARK]),
        (f"SharedAccessSignature sr=x&sig={MARK}&se={MARK}&skn={DEFAULT_RULE_NAME}", [MARK]),
        (f"SharedAccessSignature sr=x&sig={MARK}&se=1&skn={MARK}", [MARK]),
        (f"SharedAccessSignature sr=x&sig={MARK}!!&se=1&skn={DEFAULT_RULE_NAME}", [MARK]),
        (f"SharedAccessSignature sr=x&sig=&se=1&skn={MARK}", [MARK]),
        (f"SharedAccessSignature sr={MARK}&{MARK}", [MARK]),
        (wrong_key, fields(wrong_key)),
        (expired, fields(expired)),
        (other, [*fields(other), MARK]),
    ]


def test_bad_tokens_never_appear_in_logs_or_reasons(caplog: pytest.LogCaptureFixture) -> None:
    net = make_net()
    start_echo_listener(net)
    seen: list[str] = []
    battery = bad_tokens(net)
    with caplog.at_level(logging.DEBUG):
        for token, secrets in battery:
            listen = RawSender(net, ClientHandshake.from_url(
                f"{LISTEN}?sb-hc-action=listen",
                headers=[("ServiceBusAuthorization", token)]))
            send = RawSender(net, ClientHandshake.from_url(
                f"{SEND}&sb-hc-token={quote(token, safe='')}"))
            net.pump()
            for conn in (listen, send):
                assert conn.rejected is not None and conn.rejected.status in (401, 403)
                seen.append(f"{conn.rejected.status} {conn.rejected.reason}")
                assert "InvalidToken" in (conn.rejected.reason or "")
            for header in ("ServiceBusAuthorization", "Authorization"):
                http = RawSender(net)
                http.write(f"GET /myhc/x HTTP/1.1\r\nHost: h\r\n{header}: {token}\r\n\r\n"
                           .encode())
                raw = http.raw().decode("latin-1")
                assert raw.startswith(("HTTP/1.1 401", "HTTP/1.1 403")), raw[:80]
                seen.append(raw)
            text = "\n".join([*seen, caplog.text,
                              *(str(r.__dict__) for r in caplog.records)])
            for secret in secrets:
                assert secret not in text, (token, secret)
    assert "malformed token" in "\n".join(seen)


def test_emulator_log_format_json_prints_one_object_per_line(
        caplog: pytest.LogCaptureFixture) -> None:
    import json

    from hyco_proto.cli import _JsonFormatter, build_parser

    args = build_parser().parse_args(["emulator", "--log-level", "DEBUG", "--log-format",
                                      "json"])
    assert (args.log_level, args.log_format) == ("DEBUG", "json")
    net = make_net()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        RawSender(net).write(b"NOT HTTP AT ALL\r\n\r\n")
    [record] = lines(caplog, "handshake-failed")
    line = _JsonFormatter().format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["event"] == "handshake-failed" and doc["client"].startswith(HOST + ":")
    assert doc["tracking"].startswith("conn-") and doc["status"] == 400
    assert doc["level"] == "INFO" and "malformed HTTP request" in doc["why"]


def test_failed_renew_token_closes_1008_without_quoting_the_token(
        caplog: pytest.LogCaptureFixture) -> None:
    net = make_net()
    shake = ClientHandshake.from_url(
        f"{LISTEN}?sb-hc-action=listen",
        headers=[("ServiceBusAuthorization", token_for(net, LISTEN))])
    channel = RawSender(net, shake)
    net.pump()
    assert channel.accepted is not None
    renew = f'{{"renewToken":{{"token":"SharedAccessSignature {MARK}"}}}}'.encode()
    with caplog.at_level(logging.DEBUG):
        channel.write(masked(0x1, renew))
    raw = channel.raw()
    assert raw[:1] == b"\x88" and int.from_bytes(raw[2:4], "big") == 1008
    assert b"malformed token" in raw
    [record] = lines(caplog, "protocol-close")
    assert "1008" in record.getMessage() and "malformed token" in record.getMessage()
    assert MARK.encode() not in raw and MARK not in caplog.text


def test_a_busy_healthy_run_logs_one_info_line_per_pair_not_per_leg_or_frame(
        caplog: pytest.LogCaptureFixture) -> None:
    # make demo-like traffic: one listener, many pairs each exchanging messages, then closing.
    # At INFO each pair gets one line (pair-relayed, naming both ends); the sender's "waiting
    # for listener" line is DEBUG, and relayed frames and orderly closes are never logged.
    net = make_net()
    pairs = 50
    with caplog.at_level(logging.INFO, logger=LOGGER):
        start_echo_listener(net)
        for _ in range(pairs):
            sender = raw_sender(net)
            assert sender.accepted is not None
            for _ in range(5):
                sender.write(masked(0x1, b"hello"))
            sender.write(masked(0x8, (1000).to_bytes(2, "big")))
    infos = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.INFO]
    events = [getattr(r, "event", None) for r in infos]
    assert events.count("pair-relayed") == pairs
    assert events.count("listener-accepted") == 1
    assert len(infos) == pairs + 1, sorted(set(map(str, events)))
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        raw_sender(net)
    assert lines(caplog, "sender-accepted")[-1].levelno == logging.DEBUG


@pytest.mark.parametrize("how", ["timeout", "rejected"])
def test_a_sender_that_is_never_joined_gets_its_one_info_line(
        caplog: pytest.LogCaptureFixture, how: str) -> None:
    # With "sender-accepted" at DEBUG, a sender's outcome is its INFO line: pair-relayed, or
    # refused by the relay after waiting (504 here; 404 when its listener went away), or
    # rejected by the listener.
    net = make_net()
    shake = ClientHandshake.from_url(
        f"{LISTEN}?sb-hc-action=listen",
        headers=[("ServiceBusAuthorization", token_for(net, LISTEN))])
    channel = RawSender(net, shake)
    net.pump()
    assert channel.accepted is not None
    with caplog.at_level(logging.INFO, logger=LOGGER):
        sender = RawSender(net, ClientHandshake.from_url(
            SEND, headers=[("ServiceBusAuthorization", token_for(net, SEND))]))
        sender_port = net._next_port  # MemoryNetwork numbers each new connection's port
        net.pump()
        if how == "timeout":
            net.advance(net.service.broker.config.accept_timeout + 1)
        else:
            raw = channel.raw()
            address = re.search(rb'"address":\s*"([^"]+)"', raw)
            assert address is not None, raw
            reject = ClientHandshake.from_url(
                address.group(1).decode().replace("\\u0026", "&") + "&sb-hc-statusCode=418")
            RawSender(net, reject)
            net.pump()
    assert sender.rejected is not None
    status = 504 if how == "timeout" else 418
    assert sender.rejected.status == status
    event = "refused" if how == "timeout" else "rejected"
    [record] = lines(caplog, event)
    check(record)
    assert f"with {status}" in record.getMessage()
    # The line names the sender it answers, not the listener's rendezvous socket.
    assert f"client={HOST}:{sender_port} " in record.getMessage(), record.getMessage()


# -- every refusal is logged, with its own reason (issue 12 new-user trial) ----------------

UPGRADE = (b"Host: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")


def test_plain_get_to_a_relay_address_is_logged_426(caplog: pytest.LogCaptureFixture) -> None:
    net = make_net()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        conn = RawSender(net)
        conn.write(b"GET /$hc/zzz?sb-hc-action=connect HTTP/1.1\r\nHost: h\r\n\r\n")
    assert conn.raw().startswith(b"HTTP/1.1 426"), conn.raw()[:60]
    assert net.service.stats.handshake_errors == 1
    [record] = lines(caplog, "handshake-failed")
    check(record, f"conn-{conn.conn_id}")
    text = record.getMessage()
    assert text.startswith("handshake-failed /$hc/zzz with 426:"), text
    assert "not a WebSocket upgrade" in text and "sb-hc-action" not in text, text


def test_wrong_method_on_the_status_endpoint_is_logged_405(
        caplog: pytest.LogCaptureFixture) -> None:
    net = make_net()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        conn = RawSender(net)
        conn.write(b"DELETE /$status HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert conn.raw().startswith(b"HTTP/1.1 405"), conn.raw()[:60]
    assert net.service.stats.handshake_errors == 1
    [record] = lines(caplog, "refused")
    check(record, f"conn-{conn.conn_id}")
    assert record.getMessage().startswith("refused /$status with 405:")
    assert "answers GET and HEAD only. (not DELETE)" in record.getMessage()


@pytest.mark.parametrize(("request_head", "status", "reason"), [
    (b"POST /$hc/myhc?sb-hc-action=listen HTTP/1.1\r\n" + UPGRADE +
     b"Sec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n", 405,
     "a WebSocket upgrade uses GET, not POST"),
    (b"GET /$hc/myhc?sb-hc-action=listen HTTP/1.1\r\n" + UPGRADE +
     b"Sec-WebSocket-Version: 8\x7f\r\n\r\n", 426,
     "unsupported Sec-WebSocket-Version '8\\x7f'; this server speaks 13"),
    (b"GET /$hc/myhc?sb-hc-action=listen HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
     b"Connection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n",
     400, "Sec-WebSocket-Key missing, repeated, or not the base64 form of 16 bytes"),
    (b"GET /$hc/myhc?sb-hc-action=listen HTTP/1.1\r\n" + UPGRADE +
     b"Sec-WebSocket-Version: 13\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431,
     "request headers too large"),
])
def test_invalid_upgrades_are_logged_with_their_own_reason(
        caplog: pytest.LogCaptureFixture, request_head: bytes, status: int,
        reason: str) -> None:
    net = make_net()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        conn = RawSender(net)
        conn.write(request_head)
    assert conn.raw().startswith(f"HTTP/1.1 {status}".encode()), conn.raw()[:60]
    [record] = lines(caplog, "handshake-failed")
    check(record, f"conn-{conn.conn_id}")
    text = record.getMessage()
    assert f"with {status}:" in text and reason in text, text
    assert "invalid WebSocket upgrade request" not in text
    assert "\x7f" not in text and "\x7f" not in str(getattr(record, "why", ""))


def test_bad_action_refusal_is_tracked_by_its_connection(
        caplog: pytest.LogCaptureFixture) -> None:
    net = make_net()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        conn = RawSender(net)
        conn.write(b"GET /$hc/myhc?sb-hc-action=dance%1b%5b2J HTTP/1.1\r\n" + UPGRADE +
                   b"Sec-WebSocket-Version: 13\r\n\r\n")
    assert conn.raw().startswith(b"HTTP/1.1 400"), conn.raw()[:60]
    [record] = lines(caplog, "refused")
    check(record, f"conn-{conn.conn_id}")
    assert "Unsupported sb-hc-action 'dance\\x1b[2j'" in record.getMessage()
    assert "\x1b" not in caplog.text


def test_json_fields_of_each_event_are_the_documented_ones(
        caplog: pytest.LogCaptureFixture) -> None:
    import json

    from hyco_proto.cli import _JsonFormatter

    net = make_net()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        start_echo_listener(net)
        sender = raw_sender(net)
        sender.write(b"\x81\x01a")  # unmasked client frame: 1002
        RawSender(net).write(b"NOT HTTP AT ALL\r\n\r\n")
    docs = {}
    for record in caplog.records:
        doc = json.loads(_JsonFormatter().format(record))
        docs.setdefault(doc.get("event"), doc)
    base = {"time", "level", "logger", "message", "event", "client", "tracking", "what", "why"}
    assert set(docs["listener-accepted"]) == base
    assert set(docs["pair-relayed"]) == base
    assert set(docs["handshake-failed"]) == base | {"status"}
    assert set(docs["protocol-close"]) == base | {"code"}
    assert docs["protocol-close"]["code"] == 1002
    assert docs["protocol-close"]["what"] == "relayed leg 1002"
    text = (Path(__file__).resolve().parent.parent / "docs" / "emulator.md").read_text()
    for name in ("`code`", "`status`", "`count`", "`why`"):
        assert name in text


def test_protocol_notes_state_the_head_limits_the_service_has() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "protocol-notes.md").read_text()
    section = text[text.index("### 4.3"):text.index("### 4.4")]
    assert f"{MAX_HEAD:,} bytes" in section and "`MAX_HEAD`" in section
    assert "Request head over 16 KiB" not in section
    assert "| Path not under `/$hc/` | 404 |" not in section
    # What the notes say: the front door's bound for every request, 16 KiB for an upgrade.
    net = make_net()
    big = b"X-Big: " + b"a" * 20000 + b"\r\n"
    status = RawSender(net)
    status.write(b"GET /$status HTTP/1.1\r\nHost: localhost\r\n" + big + b"\r\n")
    assert status.raw().startswith(b"HTTP/1.1 200"), status.raw()[:60]
    upgrade = RawSender(net)
    upgrade.write(b"GET /$hc/myhc?sb-hc-action=listen HTTP/1.1\r\n" + UPGRADE +
                  b"Sec-WebSocket-Version: 13\r\n" + big + b"\r\n")
    assert upgrade.raw().startswith(b"HTTP/1.1 431"), upgrade.raw()[:60]
    plain = RawSender(net)
    plain.write(b"GET /$hc/myhc HTTP/1.1\r\nHost: h\r\n\r\n")
    assert plain.raw().startswith(b"HTTP/1.1 426"), plain.raw()[:60]


def test_a_connection_that_sends_nothing_is_no_refusal(caplog: pytest.LogCaptureFixture) -> None:
    """Browsers open spare connections they may never use (the web view's page makes some):
    still answered 408 and closed in time, but neither counted nor logged as a refusal."""
    net = make_net()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        conn = RawSender(net)
        net.advance(net.service.handshake_timeout + 1)
    assert conn.raw().startswith(b"HTTP/1.1 408") and conn.tcp_closed
    [record] = lines(caplog, "handshake-failed")
    assert record.levelno == logging.DEBUG and "unused connection" in record.getMessage()
    assert net.service.stats.refusals == {} and net.service.stats.handshake_errors == 0
    assert not net.service.refusal_log.recent
