"""Issue 12 defect 2: a rendezvous address cannot be taken over.

The accept address (and a relayed HTTP request's rendezvous address) carries a secret of at least
128 bits from the service's CSPRNG, whatever ``sb-hc-id`` the sender chose; it is only valid on
the hybrid connection it was issued for; refusals do not use it up. Driven byte by byte with the
harness of ``tests/test_http_relay.py``.
"""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import pytest

from hyco_proto.drivers.connection import Opened, Refused
from hyco_proto.service.broker import RENDEZVOUS_SECRET, RelayBroker
from hyco_proto.service.broker import Refused as Refused_
from hyco_proto.service.config import ServiceConfig
from hyco_proto.service.router import RelayService
from hyco_proto.websocket import TextMessage
from tests.test_http_relay import BASE, NOW, Net, WsClient, listen, request_bytes, token

SEND = f"{BASE}/$hc/myhc?sb-hc-action=connect"
LISTEN_URI = f"{BASE}/$hc/myhc?sb-hc-action=listen"


def sender(net: Net, query: str = "", path: str = "myhc") -> WsClient:
    uri = f"{BASE}/$hc/{path}?sb-hc-action=connect{query}"
    return WsClient(net, uri, [("ServiceBusAuthorization", token(f"{BASE}/$hc/{path}"))])


def accept_of(control: WsClient) -> dict[str, str]:
    accepts = [t["accept"] for t in control.texts() if "accept" in t]
    assert accepts, control.events
    return accepts[-1]  # type: ignore[no-any-return]


def secret_bits(address: str) -> int:
    values = parse_qs(urlsplit(address).query)[RENDEZVOUS_SECRET]
    assert len(values) == 1
    return len(base64.urlsafe_b64decode(values[0] + "=" * (-len(values[0]) % 4))) * 8


def test_third_party_guessing_the_sender_chosen_id_is_refused_and_listener_still_joins() -> None:
    net = Net()
    control = listen(net)
    waiting = sender(net, "&sb-hc-id=my-tracking-id")
    accept = accept_of(control)
    assert accept["id"] == "my-tracking-id"  # the sender's id stays, for tracking
    for guess in (f"{BASE}/$hc/myhc?sb-hc-action=accept&sb-hc-id=my-tracking-id",
                  f"{BASE}/$hc/myhc?sb-hc-action=accept&sb-hc-id=my-tracking-id"
                  f"&{RENDEZVOUS_SECRET}=AAAAAAAAAAAAAAAAAAAAAA",
                  f"{BASE}/$hc/myhc?sb-hc-action=accept&sb-hc-id=my-tracking-id"
                  f"&sb-hc-statusCode=500"):
        thief = WsClient(net, guess)  # no token: a rendezvous takes none
        assert isinstance(thief.events[0], Refused), thief.events
        assert thief.events[0].response.status == 403
    assert not waiting.events, "the sender is still waiting for its real listener"
    rendezvous = WsClient(net, accept["address"])
    assert isinstance(rendezvous.events[0], Opened)
    assert isinstance(waiting.events[0], Opened)
    rendezvous.conn.send_text("hello")
    rendezvous.flush()
    assert any(isinstance(e, TextMessage) and e.data == "hello" for e in waiting.events)


def test_accept_on_another_hybrid_connection_is_refused_and_does_not_consume() -> None:
    net = Net()
    control = listen(net)
    listen(net, "otherhc")
    waiting = sender(net, "&sb-hc-id=abc")
    address = accept_of(control)["address"]
    assert "/$hc/myhc?" in address
    elsewhere = WsClient(net, address.replace("/$hc/myhc?", "/$hc/otherhc?"))
    assert isinstance(elsewhere.events[0], Refused)
    assert elsewhere.events[0].response.status == 404
    reject_elsewhere = WsClient(net, address.replace("/$hc/myhc?", "/$hc/otherhc?")
                                + "&sb-hc-statusCode=401")
    assert isinstance(reject_elsewhere.events[0], Refused)
    assert reject_elsewhere.events[0].response.status == 404
    assert not waiting.events
    rendezvous = WsClient(net, address)
    assert isinstance(rendezvous.events[0], Opened)
    assert isinstance(waiting.events[0], Opened)


def test_accept_address_secret_is_at_least_128_bits_and_fresh_for_each_sender() -> None:
    # Even with a predictable id generator the address stays unguessable.
    broker = RelayBroker(ServiceConfig(), new_id=lambda: "predictable")
    net = Net()
    net.svc = RelayService(broker=broker)
    control = listen(net)
    secrets_seen = set()
    for query in ("", "&sb-hc-id=chosen"):
        sender(net, query)
        address = accept_of(control)["address"]
        assert secret_bits(address) >= 128
        secrets_seen.add(parse_qs(urlsplit(address).query)[RENDEZVOUS_SECRET][0])
    assert len(secrets_seen) == 2


def test_request_rendezvous_needs_the_secret_and_a_guess_takes_nothing() -> None:
    broker = RelayBroker(ServiceConfig(), new_id=lambda: "predictable-request-id")
    net = Net()
    net.svc = RelayService(broker=broker)
    control = listen(net)
    net.connect_raw(request_bytes("POST", "/myhc/c", chunked=True))
    request = control.texts()[0]["request"]
    address = request["address"]
    assert request["id"] == "predictable-request-id"
    assert secret_bits(address) >= 128
    guess = WsClient(net, f"{BASE}/$hc/myhc?sb-hc-action=request&sb-hc-id={request['id']}")
    assert isinstance(guess.events[0], Refused) and guess.events[0].response.status == 403
    real = WsClient(net, address)
    assert isinstance(real.events[0], Opened), real.events


# -- refusal statuses of rendezvous addresses ------------------------------------------------
#
# One rule for both kinds of rendezvous (docs/emulator.md, "Rendezvous refusals"): a wrong or
# missing sb-hc-rendezvous secret, and an unknown, used or expired sb-hc-id, get 403 (Azure's
# "invalid or expired rendezvous address"); a valid address on another hybrid connection's
# path gets 404; 410 only says "the rendezvous is gone": the listener's reject went through.
# A rejecting listener reads 410 as success, so no refusal of a bad address may be 410.


def _with(address: str, **params: str | None) -> str:
    """``address`` with query parameters replaced (None: removed), added when missing."""
    parts = urlsplit(address)
    pairs = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k not in params]
    pairs += [(k, v) for k, v in params.items() if v is not None]
    return parts._replace(query=urlencode(pairs, safe="$")).geturl()


ACCEPT_CASES = {
    "missing secret": (lambda a: _with(a, **{RENDEZVOUS_SECRET: None}), 403),
    "wrong secret": (lambda a: _with(a, **{RENDEZVOUS_SECRET: "A" * 22}), 403),
    "missing id": (lambda a: _with(a, **{"sb-hc-id": None}), 403),
    "unknown id": (lambda a: _with(a, **{"sb-hc-id": "no-such-sender"}), 403),
    "other hybrid connection": (lambda a: a.replace("/$hc/myhc?", "/$hc/otherhc?"), 404),
    "other hybrid connection, wrong secret": (
        lambda a: _with(a.replace("/$hc/myhc?", "/$hc/otherhc?"),
                        **{RENDEZVOUS_SECRET: "A" * 22}), 403),
}


@pytest.mark.parametrize("reject", [False, True], ids=["accept", "reject"])
@pytest.mark.parametrize("case", list(ACCEPT_CASES))
def test_accept_address_refusals_are_403_or_404_never_410(case: str, reject: bool) -> None:
    net = Net()
    control = listen(net)
    listen(net, "otherhc")
    waiting = sender(net)
    address = accept_of(control)["address"]
    change, status = ACCEPT_CASES[case]
    bad = change(address) + ("&sb-hc-statusCode=403" if reject else "")
    refused = WsClient(net, bad)
    assert isinstance(refused.events[0], Refused), refused.events
    assert refused.events[0].response.status == status
    assert not waiting.events, "a refusal takes nothing: the sender still waits"
    if reject:
        real = WsClient(net, address + "&sb-hc-statusCode=403")
        assert isinstance(real.events[0], Refused) and real.events[0].response.status == 410
        assert isinstance(waiting.events[0], Refused)
        assert waiting.events[0].response.status == 403
    else:
        real = WsClient(net, address)
        assert isinstance(real.events[0], Opened) and isinstance(waiting.events[0], Opened)


@pytest.mark.parametrize("reject", [False, True], ids=["accept", "reject"])
@pytest.mark.parametrize("when", ["used", "expired", "sender left"])
def test_accept_address_that_is_gone_as_an_address_is_403(when: str, reject: bool) -> None:
    net = Net()
    control = listen(net)
    waiting = sender(net)
    address = accept_of(control)["address"]
    if when == "used":
        assert isinstance(WsClient(net, address).events[0], Opened)
    elif when == "expired":
        net.advance(net.svc.broker.config.accept_timeout + 1)
        assert isinstance(waiting.events[0], Refused)
        assert waiting.events[0].response.status == 504
    else:
        net.eof(waiting.id)
    late = WsClient(net, address + ("&sb-hc-statusCode=500" if reject else ""))
    assert isinstance(late.events[0], Refused)
    assert late.events[0].response.status == 403


def test_expired_accept_address_is_403_even_before_the_timer_ran() -> None:
    broker = RelayBroker(ServiceConfig())
    broker.open_listener(NOW, "myhc", headers=[("ServiceBusAuthorization", token(LISTEN_URI))],
                         base_url=BASE)
    pending = broker.connect(NOW, "myhc", headers=[("ServiceBusAuthorization", token(SEND))])
    assert not isinstance(pending, Refused_)
    query = urlsplit(pending.address).query
    late = broker.rendezvous(NOW + broker.config.accept_timeout + 0.5, query, "myhc")
    assert isinstance(late, Refused_) and late.status == 403


REQUEST_CASES = {
    "missing secret": (lambda a: _with(a, **{RENDEZVOUS_SECRET: None}), 403),
    "wrong secret": (lambda a: _with(a, **{RENDEZVOUS_SECRET: "A" * 22}), 403),
    "unknown id": (lambda a: _with(a, **{"sb-hc-id": "no-such-request"}), 403),
    "other hybrid connection": (lambda a: a.replace("/$hc/myhc?", "/$hc/otherhc?"), 404),
    "other hybrid connection, wrong secret": (
        lambda a: _with(a.replace("/$hc/myhc?", "/$hc/otherhc?"),
                        **{RENDEZVOUS_SECRET: "A" * 22}), 403),
}


@pytest.mark.parametrize("case", list(REQUEST_CASES))
def test_request_rendezvous_refusals_follow_the_same_rule(case: str) -> None:
    net = Net()
    control = listen(net)
    listen(net, "otherhc")
    net.connect_raw(request_bytes("POST", "/myhc/c", chunked=True))
    address = control.texts()[0]["request"]["address"]
    change, status = REQUEST_CASES[case]
    refused = WsClient(net, change(address))
    assert isinstance(refused.events[0], Refused), refused.events
    assert refused.events[0].response.status == status
    real = WsClient(net, address)
    assert isinstance(real.events[0], Opened), "a refusal takes nothing"
    again = WsClient(net, address)
    assert isinstance(again.events[0], Refused) and again.events[0].response.status == 403
