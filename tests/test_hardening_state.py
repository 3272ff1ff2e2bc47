"""Issue 12, defect 3: refused requests leave no state; idle auto-created entries expire;
the refusal log's throttle is per client address as well as per name."""

from __future__ import annotations

import json
import logging

import pytest

from hyco_proto.sas import create_relay_token
from hyco_proto.service.broker import Refused, RelayBroker
from hyco_proto.service.config import (
    DEFAULT_RULE_NAME,
    DEVELOPMENT_KEY,
    HybridConnectionConfig,
    ServiceConfig,
)
from hyco_proto.service.registry import ListenerRecord
from hyco_proto.service.router import RelayService
from hyco_proto.service.status import RefusalLog

NOW = 1_700_000_000.0
BASE = "ws://127.0.0.1:9090"
UPGRADE = (b"Host: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


def _get(service: RelayService, target: str) -> bytes:
    conn = service.connection_made(NOW, ("10.0.0.9", 40000))
    service.receive_data(NOW, conn, f"GET {target} HTTP/1.1\r\nHost: localhost\r\n"
                                    "Connection: close\r\n\r\n".encode())
    out = b"".join(data for cid, data in service.data_to_send() if cid == conn)
    service.connection_lost(NOW, conn)
    return out


def _status(service: RelayService) -> list[object]:
    body = _get(service, "/$status").partition(b"\r\n\r\n")[2]
    doc = json.loads(body)
    return list(doc["hybrid_connections"])


def test_unauthorized_requests_to_distinct_names_create_nothing() -> None:
    service = RelayService(ServiceConfig())
    before_table = dict(service.broker.config.hybrid_connections)
    before_status = _status(service)
    bad = create_relay_token(f"{BASE}/$hc/x", DEFAULT_RULE_NAME, "wrong-key", 3600, now=NOW)
    for i in range(1000):
        kind = i % 5
        conn = service.connection_made(NOW, ("10.0.0.1", 50000 + i))
        if kind == 0:  # listener, no token
            data = f"GET /$hc/junk{i}?sb-hc-action=listen HTTP/1.1\r\n".encode() + UPGRADE
        elif kind == 1:  # listener, bad signature
            data = (f"GET /$hc/junk{i}?sb-hc-action=listen HTTP/1.1\r\n"
                    f"ServiceBusAuthorization: {bad}\r\n").encode() + UPGRADE
        elif kind == 2:  # sender, no token
            data = f"GET /$hc/junk{i}?sb-hc-action=connect HTTP/1.1\r\n".encode() + UPGRADE
        elif kind == 3:  # sender, malformed token
            data = (f"GET /$hc/junk{i}?sb-hc-action=connect&sb-hc-token=garbage{i} "
                    "HTTP/1.1\r\n").encode() + UPGRADE
        else:  # relayed HTTP request, no token
            data = f"POST /junk{i}/api HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n".encode()
        service.receive_data(NOW, conn, data + b"\r\n")
        out = b"".join(d for cid, d in service.data_to_send() if cid == conn)
        assert out.startswith(b"HTTP/1.1 401"), out[:80]
        service.connection_lost(NOW, conn)
    assert service.broker.config.hybrid_connections == before_table
    assert _status(service) == before_status
    assert service.broker.next_deadline() is None


def _listen(broker: RelayBroker, now: float, hc: str) -> ListenerRecord | Refused:
    uri = f"{BASE}/$hc/{hc}"
    token = create_relay_token(uri, DEFAULT_RULE_NAME, DEVELOPMENT_KEY, 36000, now=now)
    return broker.open_listener(now, hc, headers=[("ServiceBusAuthorization", token)],
                                query="sb-hc-action=listen", base_url=BASE)


def test_authorized_listener_creates_the_entry_and_it_expires_when_idle() -> None:
    config = ServiceConfig(auto_expiry=300.0)
    config.hybrid_connections["declared"] = HybridConnectionConfig("declared")
    service = RelayService(broker=RelayBroker(config))
    broker = service.broker
    record = _listen(broker, NOW, "auto")
    assert isinstance(record, ListenerRecord)
    assert "auto" in config.hybrid_connections
    assert isinstance(_listen(broker, NOW, "declared"), ListenerRecord)
    # In use (a listener): kept across expiries.
    now = NOW
    for _ in range(3):
        deadline = service.next_deadline()
        assert deadline is not None and deadline <= now + 300.0
        now = deadline
        service.handle_timer(now)
        assert "auto" in config.hybrid_connections
    broker.close_listener(now, record.id)
    closed = now
    deadline = service.next_deadline()
    assert deadline == closed + 300.0
    service.handle_timer(closed + 299.0)
    assert "auto" in config.hybrid_connections
    service.handle_timer(deadline)
    assert "auto" not in config.hybrid_connections
    assert "declared" in config.hybrid_connections, "declared entries never expire"
    names = [hc["name"] for hc in _status(service)]  # type: ignore[index]
    assert "auto" not in names and "declared" in names
    # A new authorized listener creates it again.
    assert isinstance(_listen(broker, deadline + 1, "auto"), ListenerRecord)
    assert "auto" in config.hybrid_connections


def test_entity_rules_and_client_authorization_still_apply() -> None:
    config = ServiceConfig()
    config.hybrid_connections["open"] = HybridConnectionConfig(
        "open", requires_client_authorization=False)
    broker = RelayBroker(config)
    assert isinstance(_listen(broker, NOW, "open"), ListenerRecord)
    pending = broker.connect(NOW, "open", headers=[], query="sb-hc-action=connect")
    assert not isinstance(pending, Refused), "no token needed on a declared open hc"
    refused = broker.connect(NOW, "unknown", headers=[], query="sb-hc-action=connect")
    assert isinstance(refused, Refused) and refused.status == 401
    assert "unknown" not in config.hybrid_connections


def test_refusal_log_throttle_is_per_client_address(caplog: pytest.LogCaptureFixture) -> None:
    log = RefusalLog(burst=3, window=10.0)
    with caplog.at_level(logging.INFO, logger="hyco_proto.service"):
        for i in range(500):
            log.refused(NOW + i * 0.001, 401, "/$hc/myhc", "noisy TrackingId:n",
                        remote=("10.0.0.66", 1000 + i))
        log.refused(NOW + 1, 401, "/$hc/myhc", "quiet TrackingId:q", remote=("10.0.0.7", 5))
        # Distinct names from the noisy client do not flood the log either.
        for i in range(500):
            log.refused(NOW + 2, 401, f"/$hc/junk{i}", "noisy TrackingId:n",
                        remote=("10.0.0.66", 9))
    assert "TrackingId:q" in caplog.text and "10.0.0.7" in caplog.text
    assert caplog.text.count("TrackingId:n") <= 20


def test_auto_expiry_is_configurable_in_the_config_file() -> None:
    from hyco_proto.service.tomlconfig import parse_config

    assert ServiceConfig().auto_expiry == 300.0
    parsed = parse_config("[server]\nauto_expiry = 60\n")
    assert parsed.service.auto_expiry == 60.0
