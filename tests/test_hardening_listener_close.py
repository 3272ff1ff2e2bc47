"""Issue 12 defect 4: a listener the service closed stops being a listener at once.

When the service closes a control channel (token expired, a malformed control message, ...) and
the client never answers the close, the listener is never chosen for a sender or an HTTP request
again, stops counting against the 25-listener limit at once, and its TCP connection is dropped
after ``close_timeout``. Driven byte by byte with the harness of ``tests/test_http_relay.py``.
"""

from __future__ import annotations

import json

import pytest

from hyco_proto.drivers.connection import Opened, Refused
from hyco_proto.sas import create_relay_token
from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY
from hyco_proto.service.handler import ConnectionKind
from hyco_proto.websocket import ConnectionClosed
from tests.test_http_relay import (
    BASE,
    NOW,
    Net,
    WsClient,
    listen,
    parse_response,
    request_bytes,
    token,
)

LISTEN = f"{BASE}/$hc/myhc?sb-hc-action=listen"
TTL = 100


class SilentListener(WsClient):
    """A listener's control channel that, once ``silent``, never writes again (no close reply)."""

    silent = False

    def flush(self, pump: bool = True) -> None:
        if self.silent:
            self.conn.data_to_send()  # dropped: the client is stuck
            if pump:
                self.net.pump()
            return
        super().flush(pump)


def stuck_listener(net: Net, how: str) -> SilentListener:
    """A listener the service closes (``how``) and that never answers the close."""
    ttl = TTL if how == "token" else 3600
    client = SilentListener(net, LISTEN, [(
        "ServiceBusAuthorization",
        create_relay_token(LISTEN, DEFAULT_RULE_NAME, DEVELOPMENT_KEY, ttl, now=NOW))])
    assert isinstance(client.events[0], Opened)
    client.take()
    return client


def close_it(net: Net, client: SilentListener, how: str) -> None:
    if how == "token":
        client.silent = True
        net.advance(TTL + net.svc.broker.config.token_grace + 1)
    else:
        client.conn.send_text("{not json")
        client.silent = True  # this message goes out, nothing after it
        for chunk in client.conn.data_to_send():
            net.svc.receive_data(net.now, client.id, chunk)
        net.pump()
    closed = [e for e in client.take() if isinstance(e, ConnectionClosed)]
    assert closed and closed[0].code == 1008, "the service closed the channel"
    assert client.id not in net.closed, "the client has not answered: TCP is still up"


def ws_sender(net: Net) -> WsClient:
    uri = f"{BASE}/$hc/myhc?sb-hc-action=connect"
    return WsClient(net, uri, [("ServiceBusAuthorization", token(f"{BASE}/$hc/myhc"))])


@pytest.mark.parametrize("how", ["token", "malformed"])
def test_closing_listener_is_not_chosen_for_senders(how: str) -> None:
    net = Net()
    stuck = stuck_listener(net, how)
    close_it(net, stuck, how)
    live = listen(net)
    for _ in range(8):
        ws_sender(net)
    assert len([t for t in live.texts() if "accept" in t]) == 8
    assert not stuck.take(), "nothing more goes to the closing listener"


@pytest.mark.parametrize("how", ["token", "malformed"])
def test_sender_gets_no_listener_answer_at_once_not_a_504(how: str) -> None:
    net = Net()
    stuck = stuck_listener(net, how)
    close_it(net, stuck, how)
    sender = ws_sender(net)
    assert sender.events, "answered at once, not after the accept timeout"
    assert isinstance(sender.events[0], Refused) and sender.events[0].response.status == 404
    http = net.connect_raw(request_bytes("GET", "/myhc/x"))
    assert parse_response(net.raw[http])[0].status_code == 502  # no listener, not a 504 later


@pytest.mark.parametrize("how", ["token", "malformed"])
def test_closing_listener_frees_its_slot_of_the_limit_at_once(how: str) -> None:
    net = Net()
    stuck = stuck_listener(net, how)
    others = [listen(net) for _ in range(net.svc.broker.config.max_listeners - 1)]
    assert len(others) == 24
    full = WsClient(net, LISTEN, [("ServiceBusAuthorization", token(LISTEN))])
    assert isinstance(full.events[0], Refused) and full.events[0].response.status == 403
    close_it(net, stuck, how)
    again = WsClient(net, LISTEN, [("ServiceBusAuthorization", token(LISTEN))])
    assert isinstance(again.events[0], Opened)


@pytest.mark.parametrize("how", ["token", "malformed"])
def test_silent_listener_is_dropped_after_close_timeout(how: str) -> None:
    net = Net()
    stuck = stuck_listener(net, how)
    close_it(net, stuck, how)
    net.advance(net.svc.close_timeout - 1)
    assert stuck.id not in net.closed
    net.advance(2)
    assert stuck.id in net.closed, "TCP dropped after close_timeout"
    assert net.svc.kind(stuck.id) is None or net.svc.kind(stuck.id) is ConnectionKind.CLOSED
    assert net.svc.broker.listener_count("myhc") == 0, "unregistered"
    status = net.connect_raw(b"GET /$status HTTP/1.1\r\nHost: localhost\r\n\r\n")
    counters = json.loads(parse_response(net.raw[status])[1])["counters"]
    assert counters["listeners"] == 0


def test_listener_answering_the_close_is_gone_before_the_timeout() -> None:
    net = Net()
    lst = listen(net)
    lst.conn.send_text("{not json")
    lst.flush()  # the client answers the service's 1008 close at once
    assert lst.id in net.closed
    assert net.svc.broker.listener_count("myhc") == 0
    assert net.svc.next_deadline() is None or net.svc.next_deadline() > net.now  # type: ignore[operator]


def status_of(net: Net) -> dict[str, object]:
    conn = net.connect_raw(b"GET /$status HTTP/1.1\r\nHost: localhost\r\n\r\n")
    return json.loads(parse_response(net.raw[conn])[1])  # type: ignore[no-any-return]


def metrics_of(net: Net) -> str:
    conn = net.connect_raw(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
    return parse_response(net.raw[conn])[1].decode()


@pytest.mark.parametrize("how", ["token", "malformed"])
def test_status_does_not_count_a_listener_the_service_is_closing(how: str) -> None:
    net = Net()
    stuck = stuck_listener(net, how)
    listen(net)
    before = status_of(net)
    assert before["hybrid_connections"][0]["listeners"] == 2  # type: ignore[index]
    assert before["counters"]["listeners"] == 2  # type: ignore[index]
    close_it(net, stuck, how)
    assert stuck.id not in net.closed, "still waiting for the client's close"
    doc = status_of(net)
    assert doc["hybrid_connections"][0]["listeners"] == 1  # type: ignore[index]
    assert doc["counters"]["listeners"] == 1  # type: ignore[index]
    assert net.svc.broker.listener_count("myhc") == 1
    assert 'hyco_listeners{hybrid_connection="myhc"} 1\n' in metrics_of(net)
    net.advance(net.svc.close_timeout + 1)  # dropped: counted once, not twice
    assert stuck.id in net.closed
    doc = status_of(net)
    assert doc["hybrid_connections"][0]["listeners"] == 1  # type: ignore[index]
    assert doc["counters"]["listeners"] == 1  # type: ignore[index]


# -- senders and requests waiting on a listener that closes ------------------------------------
#
# A sender the relay offered to a listener (``accept`` sent on its control channel) must not
# wait out the 30 s accept timeout when that listener's control channel closes (or the service
# closes it) before it rendezvoused: it is offered to another live listener of the hybrid
# connection that its pinning headers allow, keeping its original deadline, or else refused at
# once with the relay's "no listener" answer (404). Relayed HTTP requests waiting on such a
# listener get the HTTP relay's "no listener" answer (502) at once; they are never re-sent.


def accepts(client: WsClient) -> list[dict[str, str]]:
    return [t["accept"] for t in client.texts() if "accept" in t]


def pinned_sender(net: Net, allowed: str) -> WsClient:
    uri = f"{BASE}/$hc/myhc?sb-hc-action=connect"
    return WsClient(net, uri, [("ServiceBusAuthorization", token(f"{BASE}/$hc/myhc")),
                               ("Microsoft-Relay-AllowedListeners", allowed)])


def close_listener(net: Net, client: WsClient, how: str) -> None:
    """End ``client``'s control channel: the client closes it, its TCP connection drops, or
    the service closes it (a malformed message) and the client never answers."""
    if how == "client-close":
        client.conn.send_close(1000)
        client.flush()
    elif how == "tcp-drop":
        net.eof(client.id)
    else:
        client.conn.send_text("{not json")
        assert isinstance(client, SilentListener)
        client.silent = True
        for chunk in client.conn.data_to_send():
            net.svc.receive_data(net.now, client.id, chunk)
        net.pump()
        assert client.id not in net.closed


def offered_listener(net: Net, how: str) -> WsClient:
    if how == "service-close":
        return stuck_listener(net, "malformed")
    return listen(net)


WAYS = ["client-close", "tcp-drop", "service-close"]


@pytest.mark.parametrize("how", WAYS)
def test_sender_of_a_listener_that_closes_gets_404_at_once_without_other_listeners(
        how: str) -> None:
    net = Net()
    first = offered_listener(net, how)
    sender = ws_sender(net)
    assert len(accepts(first)) == 1 and not sender.events
    address = accepts(first)[0]["address"]
    net.advance(1)
    close_listener(net, first, how)
    assert sender.events, "refused at once, not after the 30 s accept timeout"
    refused = sender.events[0]
    assert isinstance(refused, Refused) and refused.response.status == 404
    assert sender.id in net.closed
    assert not list(net.svc.broker.registry.all_pending()), "nothing left waiting"
    # The accept address is gone with it: a late rendezvous is refused (403), never joined.
    late = WsClient(net, address)
    assert isinstance(late.events[0], Refused) and late.events[0].response.status == 403


@pytest.mark.parametrize("how", WAYS)
def test_sender_of_a_listener_that_closes_is_offered_to_another_live_listener(how: str) -> None:
    net = Net()
    first = offered_listener(net, how)
    sender = ws_sender(net)
    old = accepts(first)
    assert len(old) == 1, "offered to the first listener (the only one)"
    second = listen(net)
    close_listener(net, first, how)
    assert not sender.events, "still waiting: offered again"
    new = accepts(second)
    assert len(new) == 1
    assert new[0]["id"] == old[0]["id"], "the same sender"
    assert new[0]["address"] != old[0]["address"], "a fresh accept address (new secret)"
    stale = WsClient(net, old[0]["address"])
    assert isinstance(stale.events[0], Refused) and stale.events[0].response.status == 403
    assert not sender.events
    rendezvous = WsClient(net, new[0]["address"])
    assert isinstance(rendezvous.events[0], Opened)
    assert isinstance(sender.events[0], Opened)


def test_reoffered_sender_keeps_its_original_deadline() -> None:
    net = Net()
    first = listen(net)
    sender = ws_sender(net)
    net.advance(20)
    second = listen(net)
    close_listener(net, first, "client-close")
    assert len(accepts(second)) == 1 and not sender.events
    net.advance(9)
    assert not sender.events
    net.advance(2)  # 31 s after the sender came: the accept timeout, not 20 + 30 s
    assert isinstance(sender.events[0], Refused) and sender.events[0].response.status == 504


def test_reoffer_honours_the_senders_pinning() -> None:
    net = Net()
    pinned_to = WsClient(net, LISTEN + "&sb-hc-id=alpha",
                         [("ServiceBusAuthorization", token(LISTEN))])
    assert isinstance(pinned_to.events[0], Opened)
    pinned_to.take()
    sender = pinned_sender(net, "alpha")
    assert len(accepts(pinned_to)) == 1
    other = listen(net)
    close_listener(net, pinned_to, "client-close")
    assert not accepts(other), "not a listener the sender allows"
    assert isinstance(sender.events[0], Refused) and sender.events[0].response.status == 404


def test_closing_listener_with_several_waiting_senders_fails_each_once() -> None:
    net = Net()
    first = listen(net)
    senders = [ws_sender(net) for _ in range(5)]
    assert len(accepts(first)) == 5
    close_listener(net, first, "client-close")
    for sender in senders:
        statuses = [e.response.status for e in sender.events if isinstance(e, Refused)]
        assert statuses == [404]
    net.advance(60)
    assert all(len(s.events) == 1 for s in senders), "no second answer at the old deadline"


@pytest.mark.parametrize("how", WAYS)
def test_http_request_waiting_on_a_listener_that_closes_gets_502_at_once(how: str) -> None:
    net = Net()
    first = offered_listener(net, how)
    small = net.connect_raw(request_bytes("GET", "/myhc/a"))
    big = net.connect_raw(request_bytes("POST", "/myhc/b", chunked=True))
    texts = first.texts()
    assert len(texts) == 2 and all("request" in t for t in texts)
    listen(net)  # another listener: requests are not re-sent to it (they may have run)
    close_listener(net, first, how)
    for conn in (small, big):
        assert net.raw[conn], "answered at once, not after close_timeout or http_timeout"
        assert parse_response(net.raw[conn])[0].status_code == 502
