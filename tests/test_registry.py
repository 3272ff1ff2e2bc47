"""The broker keeps its state behind ``service.registry.Registry``: a shared registry makes two
brokers act as one relay (the shape a relay cluster will take)."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from hyco_proto.control import AcceptCommand, parse_command
from hyco_proto.sas import create_relay_token
from hyco_proto.service.broker import (
    ListenerRecord,
    RelayBroker,
    RendezvousAccepted,
    SendControl,
)
from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY, ServiceConfig
from hyco_proto.service.registry import LocalRegistry

NOW = 1_700_000_000.0
BASE = "ws://127.0.0.1:9090"


def auth(path: str) -> list[tuple[str, str]]:
    token = create_relay_token(f"{BASE}/$hc/{path}", DEFAULT_RULE_NAME, DEVELOPMENT_KEY,
                               now=NOW)
    return [("ServiceBusAuthorization", token)]


def test_two_brokers_sharing_a_registry_act_as_one_relay() -> None:
    shared = LocalRegistry()
    a = RelayBroker(ServiceConfig(), registry=shared)
    b = RelayBroker(ServiceConfig(), registry=shared)
    record = a.open_listener(NOW, "myhc", headers=auth("myhc"), base_url=BASE)
    assert isinstance(record, ListenerRecord)
    assert b.listener_count("MyHC") == 1  # names compare case-insensitively
    pending = b.connect(NOW, "myhc", headers=auth("myhc"))
    (action,) = b.actions_to_take()
    assert isinstance(action, SendControl) and action.listener_id == record.id
    accept = parse_command(action.text)
    assert isinstance(accept, AcceptCommand) and accept.id == pending.id  # type: ignore[union-attr]
    # The listener's rendezvous may reach the other broker: the accept address is still valid
    # there, and single-use.
    query = urlsplit(accept.address).query
    assert isinstance(a.rendezvous(NOW + 1, query), RendezvousAccepted)
    assert a.rendezvous(NOW + 1, query).status == 403  # type: ignore[union-attr]
    a.close_listener(NOW + 2, record.id)
    assert b.listener_count("myhc") == 0 and list(shared.all_listeners()) == []


def test_local_registry_keeps_listeners_per_hybrid_connection() -> None:
    registry = LocalRegistry()
    broker = RelayBroker(ServiceConfig(), registry=registry)
    first = broker.open_listener(NOW, "hc", headers=auth("hc"), base_url=BASE,
                                 query="sb-hc-id=same")
    second = broker.open_listener(NOW, "hc", headers=auth("hc"), base_url=BASE,
                                  query="sb-hc-id=same")
    assert isinstance(first, ListenerRecord) and isinstance(second, ListenerRecord)
    assert (first.id, second.id) == ("same", "same_G1")  # a taken id gets a _G suffix
    assert {r.id for r in registry.listeners_of("HC")} == {"same", "same_G1"}
    assert registry.remove_listener("same") is first and registry.remove_listener("x") is None
    assert registry.listeners_of("hc") == [second]


def test_the_brokers_deadline_follows_every_change() -> None:
    # next_deadline keeps its last answer while the registry's version, the broker's record of
    # auto-created hybrid connections and the timeouts stay the same: after every step the
    # kept answer must be the one a fresh look finds.
    broker = RelayBroker(ServiceConfig(auto_expiry=50.0, token_grace=5.0))

    def step(now: float, action: Callable[[], object]) -> None:
        broker.next_deadline()  # keep an answer, then change something
        action()
        kept = broker.next_deadline()
        broker._deadline_key = None  # look again
        assert kept == broker.next_deadline(), now

    record = broker.open_listener(NOW, "hc", headers=auth("hc"), base_url=BASE)
    assert isinstance(record, ListenerRecord)
    pendings = []
    step(NOW, lambda: pendings.append(broker.connect(NOW + 1, "hc", headers=auth("hc"))))
    step(NOW, lambda: pendings.append(broker.connect(NOW + 2, "hc", headers=auth("hc"))))
    accept = parse_command(broker.actions_to_take()[0].text)  # type: ignore[union-attr]
    assert isinstance(accept, AcceptCommand)
    step(NOW, lambda: broker.rendezvous(NOW + 3, urlsplit(accept.address).query))
    step(NOW, lambda: broker.config.__setattr__("accept_timeout", 7.0))
    step(NOW, lambda: broker.config.__setattr__("token_grace", 1.0))
    renewed = create_relay_token(f"{BASE}/$hc/hc", DEFAULT_RULE_NAME, DEVELOPMENT_KEY,
                                 now=NOW + 3000)
    step(NOW, lambda: broker.listener_message(NOW + 4, record.id,
                                              f'{{"renewToken":{{"token":"{renewed}"}}}}'))
    assert record.token_expiry is not None and record.token_expiry > NOW + 3000
    step(NOW, lambda: broker.handle_timer(NOW + 20))  # the second sender's accept times out
    step(NOW, lambda: broker.listener_closing(NOW + 21, record.id))
    step(NOW, lambda: broker.close_listener(NOW + 22, record.id))
    step(NOW, lambda: broker.config.__setattr__("auto_expiry", 10.0))
    step(NOW, lambda: broker.handle_timer(NOW + 100))  # the idle hybrid connection goes
    assert broker.next_deadline() is None
