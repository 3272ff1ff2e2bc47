"""The relay's plain-HTTP status endpoint (``GET /$status``, ``/health``) and refusal log."""

from __future__ import annotations

import json
import logging
import random
from typing import Any
from urllib.parse import quote

import pytest

from hyco_proto.handshake import ServerHandshake
from hyco_proto.listener import Listener
from hyco_proto.memory import MemoryNetwork
from hyco_proto.sas import create_relay_token
from hyco_proto.service.broker import RelayBroker
from hyco_proto.service.config import (
    DEFAULT_RULE_NAME,
    DEVELOPMENT_KEY,
    HybridConnectionConfig,
    ServiceConfig,
)
from hyco_proto.service.router import RelayService
from hyco_proto.service.status import RefusalLog, is_status_target

NOW = 1_700_000_000.0
BASE = "ws://127.0.0.1:9090"


def http_get(service: RelayService, target: str, *, method: str = "GET",
             chunked: bool = False) -> tuple[int, dict[str, str], bytes]:
    conn = service.connection_made(NOW, ("127.0.0.1", 40000))
    request = (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:9090\r\n"
               "Connection: close\r\n\r\n").encode()
    if chunked:
        for i in range(len(request)):
            service.receive_data(NOW, conn, request[i : i + 1])
    else:
        service.receive_data(NOW, conn, request)
    out = service.data_to_send()
    assert out[-1] == (conn, b""), "the connection is closed after the answer"
    raw = b"".join(data for cid, data in out if cid == conn)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert int(headers["content-length"]) == len(body)
    return status, headers, body


def status_doc(service: RelayService, target: str = "/$status") -> dict[str, Any]:
    status, headers, body = http_get(service, target)
    assert status == 200
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize("target", ["/$status", "/health", "/$STATUS", "/health/",
                                    "/$status?verbose=1", "/healthz"])
def test_status_routes_answer_json(target: str) -> None:
    doc = status_doc(RelayService(), target)
    assert doc["status"] == "ok"
    assert doc["counters"]["listeners"] == 0
    assert doc["connections"] == {}, "the status request itself is not counted"


def test_status_request_fed_byte_by_byte() -> None:
    status, _, body = http_get(RelayService(), "/$status", chunked=True)
    assert status == 200 and json.loads(body)["status"] == "ok"


@pytest.mark.parametrize(("method", "target", "expected"), [
    ("GET", "/$hc/myhc", 426),  # /$hc/ is WebSocket only
    ("POST", "/$status", 405),
])
def test_other_plain_requests_keep_their_refusal(method: str, target: str, expected: int) -> None:
    service = RelayService()
    status, _, _ = http_get(service, target, method=method)
    assert status == expected
    assert service.stats.handshake_errors == 1


@pytest.mark.parametrize("target", ["/$statusx", "/$eventsx", "/nosuchhc/a", "//"])
def test_other_paths_are_relayed_http_requests(target: str) -> None:
    """Anything that is not a WebSocket path or an endpoint of the service (``/`` is the web
    view's, test_webview.py) is relayed HTTP: with no such hybrid connection (strict config)
    it is a 404 from the relay."""
    service = RelayService(ServiceConfig(strict=True))
    status, headers, body = http_get(service, target)
    assert status == 404 and b"no hybrid connection matches" in body
    assert headers["x-hyco-rejected-by"] == "relay"
    assert service.stats.handshake_errors == 0


def test_status_keeps_the_connection_alive_for_a_second_request() -> None:
    service = RelayService()
    conn = service.connection_made(NOW, ("127.0.0.1", 40000))
    one = b"GET /$status HTTP/1.1\r\nHost: localhost\r\n\r\n"
    service.receive_data(NOW, conn, one + b"HEAD /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
    out = service.data_to_send()
    assert (conn, b"") not in out, "keep-alive: the connection stays open"
    raw = b"".join(data for _, data in out)
    assert raw.count(b"HTTP/1.1 200 OK\r\n") == 2
    first, _, rest = raw.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in first.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    second_head = rest[length:]
    assert second_head.startswith(b"HTTP/1.1 200 OK\r\n") and second_head.endswith(b"\r\n\r\n")
    assert b"text/plain; version=0.0.4" in second_head  # HEAD: the head only


def test_refused_request_is_exposed_by_the_handshake() -> None:
    hs = ServerHandshake()
    hs.receive_data(b"GET /$status?x=1 HTTP/1.1\r\nHost: h\r\nX-A: b\r\n\r\n")
    assert hs.next_event() is None
    assert hs.rejection_status == 426
    assert hs.refused_request is not None
    assert (hs.refused_request.method, hs.refused_request.target) == ("GET", "/$status?x=1")
    assert ("X-A", "b") in hs.refused_request.headers
    malformed = ServerHandshake()
    malformed.receive_data(b"NOT HTTP\r\n\r\n")
    assert malformed.next_event() is None
    assert malformed.rejection_status == 400 and malformed.refused_request is None


def test_is_status_target() -> None:
    assert is_status_target("GET", "/$status")
    assert not is_status_target("HEAD", "/$status")
    assert not is_status_target("GET", "/$hc/$status")


def test_counters_with_a_listener_a_pair_and_refusals() -> None:
    config = ServiceConfig()
    config.hybrid_connections["other"] = HybridConnectionConfig("other",
                                                                requires_client_authorization=False)
    net = MemoryNetwork(RelayService(broker=RelayBroker(config, rng=random.Random(1))), now=NOW)

    def token(uri: str, key: str = DEVELOPMENT_KEY) -> str:
        return create_relay_token(uri, DEFAULT_RULE_NAME, key, 3600, now=net.now)

    listen_uri = f"{BASE}/$hc/myhc"
    listener = net.listen(Listener(listen_uri, lambda: token(listen_uri)))
    send_uri = f"{BASE}/$hc/myhc?sb-hc-action=connect"
    ws = net.connect(send_uri, headers=[("ServiceBusAuthorization", token(send_uri))])
    net.pump()
    assert ws.accepted is not None
    ws.send(b"12345")
    ws.ping(b"p")  # a frame, not a message
    ws.send("text")
    net.pump()
    bad = net.connect(send_uri, headers=[("ServiceBusAuthorization", token(send_uri, "nope"))])
    net.pump()
    assert bad.rejected is not None and bad.rejected.status == 401

    doc = status_doc(net.service)
    assert doc["counters"]["listeners"] == 1
    assert doc["counters"]["relayed_pairs"] == 1
    assert doc["counters"]["bytes_relayed"] == 5 + 1 + 4 + 1  # the listener's pong came back
    assert doc["counters"]["messages_relayed"] == 2
    assert doc["counters"]["frames_relayed"] == 4  # two messages, the ping and its pong
    assert doc["counters"]["auth_failures"] == 1
    assert doc["live_relayed_pairs"] == 1
    assert doc["connections"] == {"listener": 1, "relay": 2}
    by_name = {hc["name"]: hc for hc in doc["hybrid_connections"]}
    assert by_name["myhc"]["listeners"] == 1
    assert by_name["other"] == {"name": "other", "requires_client_authorization": False,
                                "listeners": 0, "rules": []}
    assert listener.connections


def test_refusal_log_names_tracking_id_and_throttles(caplog: pytest.LogCaptureFixture) -> None:
    log = RefusalLog(burst=2, window=10.0)
    with caplog.at_level(logging.INFO, logger="hyco_proto.service"):
        for i in range(50):
            log.refused(100.0 + i * 0.01, 401, "/$hc/myhc?sb-hc-token=SECRET",
                        "InvalidToken: bad. TrackingId:abc-123, SystemTracker:x")
        log.refused(200.0, 401, "/$hc/myhc", "again TrackingId:def")
    text = caplog.text
    assert text.count("refused /$hc/myhc with 401") == 3
    assert "TrackingId:abc-123" in text and "TrackingId:def" in text
    assert "48 more refusals" in text
    assert "SECRET" not in text, "tokens in the query are never logged"


def test_service_logs_refusals(caplog: pytest.LogCaptureFixture) -> None:
    service = RelayService(ServiceConfig(strict=True))
    conn = service.connection_made(NOW + 12345, ("127.0.0.1", 1))
    with caplog.at_level(logging.INFO, logger="hyco_proto.service"):
        service.receive_data(NOW + 12345, conn, (
            b"GET /$hc/nothere?sb-hc-action=listen HTTP/1.1\r\nHost: h\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"))
    assert "refused /$hc/nothere with 404" in caplog.text
    assert "TrackingId:" in caplog.text


def test_metrics_in_the_prometheus_text_format() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    net = MemoryNetwork(RelayService(broker=RelayBroker(ServiceConfig(),
                                                        rng=random.Random(1))), now=NOW)

    def token(uri: str) -> str:
        return create_relay_token(uri, DEFAULT_RULE_NAME, DEVELOPMENT_KEY, 3600, now=net.now)

    listen_uri = f"{BASE}/$hc/my\"hc"
    net.listen(Listener(listen_uri, lambda: token(listen_uri)))
    send_uri = f"{BASE}/$hc/my\"hc?sb-hc-action=connect"
    ws = net.connect(send_uri, headers=[("ServiceBusAuthorization", token(send_uri))])
    net.pump()
    assert ws.accepted is not None
    ws.send(b"12345")
    net.pump()
    status, headers, body = http_get(net.service, "/metrics")
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body.decode())
               for s in family.samples}
    assert samples[("hyco_listeners", (("hybrid_connection", 'my"hc'),))] == 1
    assert samples[("hyco_connections", (("kind", "relay"),))] == 2
    assert samples[("hyco_relayed_pairs_live", ())] == 1
    assert samples[("hyco_relayed_pairs_total", ())] == 1
    assert samples[("hyco_bytes_relayed_total", ())] == 5
    assert samples[("hyco_messages_relayed_total", ())] == 1
    assert samples[("hyco_frames_relayed_total", ())] == 1
    assert http_get(net.service, "/metrics", method="POST")[0] != 200  # GET only
    # Large counters in full, not rounded (``%g`` wrote 9,393,932 as 9.39393e+06).
    for _ in range(3):
        ws.send(bytes(3_131_310))
        net.pump()
    body = http_get(net.service, "/metrics")[2].decode()
    assert "\nhyco_bytes_relayed_total 9393935\n" in body


# -- the refusal throttle's summary line (issue 12 new-user trial) ------------------------

T0 = 1796072530.0  # 2026-11-30T21:02:10Z


def summaries(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "refusals-not-logged"]


def test_refusal_summary_names_status_or_tls_and_counts_in_words(
        caplog: pytest.LogCaptureFixture) -> None:
    log = RefusalLog(burst=1, window=10.0)
    with caplog.at_level(logging.INFO, logger="hyco_proto.service"):
        for i in range(28):  # TLS failures have no HTTP status
            log.refused(T0 + i * 0.25, 0, "TLS", "TLS handshake failed: X",
                        remote=("127.0.0.1", 1000 + i), event="handshake-failed")
        for _ in range(2):
            log.refused(T0 + 1, 401, "/$hc/a", "bad. TrackingId:t", remote=("127.0.0.1", 9))
        log.handle_timer(T0 + 11)
    texts = sorted(r.getMessage() for r in summaries(caplog))
    assert texts == [
        "1 more refusal with 401 for /$hc/a from 127.0.0.1 at 21:02:11 UTC was not logged",
        "27 more refusals for TLS from 127.0.0.1 between 21:02:10 and 21:02:16 UTC were not "
        "logged",
    ], texts
    assert "with 0" not in caplog.text and "in the last" not in caplog.text


def test_refusal_summary_comes_on_the_timer_without_another_refusal(
        caplog: pytest.LogCaptureFixture) -> None:
    service = RelayService(ServiceConfig())
    log = service.refusal_log
    log.burst = 2
    assert service.next_deadline() is None
    with caplog.at_level(logging.INFO, logger="hyco_proto.service"):
        for i in range(5):
            service.tls_failed(T0 + i, ("10.0.0.9", 5000 + i), "TLS handshake failed: X")
        assert not summaries(caplog)
        assert service.next_deadline() == T0 + log.window  # the summary is due then
        service.handle_timer(T0 + log.window - 0.001)
        assert not summaries(caplog)
        service.handle_timer(T0 + log.window)
    [summary] = summaries(caplog)
    assert summary.getMessage() == ("3 more refusals for TLS from 10.0.0.9 between 21:02:12 "
                                    "and 21:02:14 UTC were not logged")
    assert service.next_deadline() is None, "nothing left to report"
    with caplog.at_level(logging.INFO, logger="hyco_proto.service"):
        service.tls_failed(T0 + 30, ("10.0.0.9", 6000), "TLS handshake failed: X")
    assert len(summaries(caplog)) == 1, "a count is reported once"


def test_refusal_summary_in_json_is_an_event_object(caplog: pytest.LogCaptureFixture) -> None:
    from hyco_proto.cli import _JsonFormatter

    log = RefusalLog(burst=1, window=10.0, address_burst=3)
    with caplog.at_level(logging.INFO, logger="hyco_proto.service"):
        for _ in range(3):
            log.refused(T0, 404, "/$hc/x", "nope. TrackingId:t", remote=("10.0.0.8", 1))
        for i in range(4):  # over the per-address budget: counted for the address
            log.refused(T0 + 1, 404, f"/$hc/y{i}", "nope. TrackingId:t", remote=("10.0.0.8", 1))
        log.handle_timer(T0 + 20)
    docs = sorted((json.loads(_JsonFormatter().format(r)) for r in summaries(caplog)),
                  key=lambda d: d["what"])
    assert [(d["event"], d["client"], d["tracking"], d["what"], d["count"]) for d in docs] == [
        ("refusals-not-logged", "10.0.0.8", "-", "*", 2),
        ("refusals-not-logged", "10.0.0.8", "-", "/$hc/x 404", 2),
    ]
    assert docs[1]["status"] == 404 and "status" not in docs[0]
    assert docs[0]["why"] == docs[0]["message"] == (
        "2 more refusals from 10.0.0.8 at 21:02:11 UTC were not logged")


def test_refusals_are_counted_by_status_in_status_and_metrics() -> None:
    """Every refusal is counted by its status, including those whose log line was throttled
    (404 unknown hybrid connection, 502 no listener for an HTTP request, 504 no accept)."""
    from prometheus_client.parser import text_string_to_metric_families

    config = ServiceConfig(strict=True)
    config.hybrid_connections["myhc"] = HybridConnectionConfig("myhc")
    net = MemoryNetwork(RelayService(broker=RelayBroker(config, rng=random.Random(1))), now=NOW)

    def token(uri: str) -> str:
        return create_relay_token(uri, DEFAULT_RULE_NAME, DEVELOPMENT_KEY, 3600, now=net.now)

    for _ in range(12):  # more than the log's burst: the count is not throttled
        missing = f"{BASE}/$hc/nothere?sb-hc-action=connect"
        ws = net.connect(missing, headers=[("ServiceBusAuthorization", token(missing))])
        net.pump()
        assert ws.rejected is not None and ws.rejected.status == 404
    assert http_get(net.service, "/myhc/api")[0] == 401  # no token
    status, _, _ = http_get(net.service,
                            f"/myhc/api?sb-hc-token={quote(token(BASE + '/myhc/api'), safe='')}")
    assert status == 502  # no listener
    send_uri = f"{BASE}/$hc/myhc?sb-hc-action=connect"
    listen_uri = f"{BASE}/$hc/myhc"
    net.listen(Listener(listen_uri, lambda: token(listen_uri)),
               on_request=lambda request: False)  # never answers
    ws = net.connect(send_uri, headers=[("ServiceBusAuthorization", token(send_uri))])
    net.pump()
    net.advance(net.service.broker.config.accept_timeout + 1)
    assert ws.rejected is not None and ws.rejected.status == 504

    expected = {404: 12, 401: 1, 502: 1, 504: 1}
    assert {int(k): v for k, v in status_doc(net.service)["counters"]["refusals"].items()} \
        == expected
    body = http_get(net.service, "/metrics")[2]
    samples = {s.labels["status"]: s.value
               for family in text_string_to_metric_families(body.decode())
               for s in family.samples if s.name == "hyco_refusals_total"}
    assert samples == {str(k): v for k, v in expected.items()}
