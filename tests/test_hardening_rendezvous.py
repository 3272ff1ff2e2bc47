"""Issue 12 defect 2: a rendezvous address cannot be taken over.

The accept address (and a relayed HTTP request's rendezvous address) carries a secret of at least
128 bits from the service's CSPRNG, whatever ``sb-hc-id`` the sender chose; it is only valid on
the hybrid connection it was issued for; refusals do not use it up. Driven byte by byte with the
harness of ``tests/test_http_relay.py``.
"""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlsplit

from hyco_proto.drivers.connection import Opened, Refused
from hyco_proto.service.broker import RENDEZVOUS_SECRET, RelayBroker
from hyco_proto.service.config import ServiceConfig
from hyco_proto.service.router import RelayService
from hyco_proto.websocket import TextMessage
from tests.test_http_relay import BASE, Net, WsClient, listen, request_bytes, token

SEND = f"{BASE}/$hc/myhc?sb-hc-action=connect"


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
