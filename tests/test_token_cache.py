"""The broker's cache of verified SAS tokens (issue 14: a rendezvous does not parse and HMAC a
token it verified before): a hit must decide exactly as a full verification would."""

from __future__ import annotations

import pytest

from hyco_proto.sas import create_relay_token
from hyco_proto.service import broker as broker_module
from hyco_proto.service.broker import VERIFIED_TOKENS, PendingConnect, Refused, RelayBroker
from hyco_proto.service.config import (
    DEFAULT_RULE_NAME,
    DEVELOPMENT_KEY,
    HybridConnectionConfig,
    Right,
    SasRule,
    ServiceConfig,
)

NOW = 1_700_000_000.0
BASE = "ws://127.0.0.1:9090"


def token(path: str = "myhc", *, key: str = DEVELOPMENT_KEY, rule: str = DEFAULT_RULE_NAME,
          ttl: float = 600) -> str:
    return create_relay_token(f"{BASE}/$hc/{path}", rule, key, ttl, now=NOW)


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every full verification the broker runs (the HMAC), by token."""
    seen: list[str] = []
    real = broker_module.verify_token

    def counting(token: str, **kwargs: object) -> object:
        seen.append(token)
        return real(token, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(broker_module, "verify_token", counting)
    return seen


def listening_broker(config: ServiceConfig | None = None) -> RelayBroker:
    broker = RelayBroker(config or ServiceConfig())
    broker.open_listener(NOW, "myhc", headers=[("ServiceBusAuthorization", token())],
                         base_url=BASE)
    return broker


def connect(broker: RelayBroker, tok: str, now: float = NOW,
            path: str = "myhc") -> PendingConnect | Refused:
    return broker.connect(now, path, headers=[("ServiceBusAuthorization", tok)])


def test_a_verified_token_is_not_verified_again_until_it_expires(
        verifications: list[str]) -> None:
    broker = listening_broker()
    sender = token(ttl=600)
    for second in range(5):
        assert isinstance(connect(broker, sender, NOW + second), PendingConnect)
    assert verifications.count(sender) == 1
    late = connect(broker, sender, NOW + 600)  # se reached: expired, cached or not
    assert isinstance(late, Refused) and late.status == 401
    assert "token expired" in late.description


def test_a_cached_token_is_checked_against_the_key_and_rights_of_now(
        verifications: list[str]) -> None:
    config = ServiceConfig()
    config.hybrid_connections["myhc"] = HybridConnectionConfig(
        "myhc", rules=(SasRule("sender", "k1", frozenset({Right.SEND})),))
    broker = listening_broker(config)
    sender = token(key="k1", rule="sender")
    assert isinstance(connect(broker, sender), PendingConnect)
    # The rule's key changes: the cached verification no longer holds.
    config.hybrid_connections["myhc"] = HybridConnectionConfig(
        "myhc", rules=(SasRule("sender", "k2", frozenset({Right.SEND})),))
    refused = connect(broker, sender)
    assert isinstance(refused, Refused) and refused.status == 401
    assert "bad signature" in refused.description
    # Same key, the right taken away: 403, as without the cache.
    config.hybrid_connections["myhc"] = HybridConnectionConfig(
        "myhc", rules=(SasRule("sender", "k1", frozenset({Right.LISTEN})),))
    refused = connect(broker, sender)
    assert isinstance(refused, Refused) and refused.status == 403
    assert verifications.count(sender) == 3  # the first, and after each key change


def test_a_token_is_cached_per_path() -> None:
    broker = listening_broker()
    sender = token("myhc")
    assert isinstance(connect(broker, sender), PendingConnect)
    other = connect(broker, sender, path="otherhc")  # the token does not cover /otherhc
    assert isinstance(other, Refused) and other.status == 403


def test_the_cache_is_bounded_in_entries_and_token_size(verifications: list[str]) -> None:
    broker = listening_broker()
    for ttl in range(600, 600 + VERIFIED_TOKENS + 50):  # each ttl makes another token
        assert isinstance(connect(broker, token(ttl=ttl)), PendingConnect)
    assert len(broker._verified) == VERIFIED_TOKENS
    first = token(ttl=600)  # the oldest went first
    verifications.clear()
    connect(broker, first)
    assert verifications == [first]
    padded = token() + "&x=" + "y" * 4096  # unknown fields are ignored: still valid
    assert isinstance(connect(broker, padded), PendingConnect)
    assert isinstance(connect(broker, padded), PendingConnect)
    assert verifications.count(padded) == 2  # too long to keep
