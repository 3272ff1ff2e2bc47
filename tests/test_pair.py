"""End to end in memory: listener and sender cores against the relay service core.

Every byte goes through the real handshakes, WebSocket connections, control messages, SAS tokens
and broker decisions; only the sockets are replaced by ``hyco_proto.memory`` on a virtual clock.
"""

from __future__ import annotations

import random
from urllib.parse import quote

import pytest

from hyco_proto.errors import AuthorizationError, EndpointNotFoundError, ListenerRejectedError
from hyco_proto.listener import (
    ConnectionRequested,
    Disconnected,
    Listener,
    ListenerState,
    Listening,
    Offline,
    RendezvousCompleted,
    TokenRenewed,
)
from hyco_proto.memory import MemoryNetwork
from hyco_proto.sas import create_relay_token
from hyco_proto.sender import error_for_rejection
from hyco_proto.service.broker import RelayBroker
from hyco_proto.service.config import (
    DEFAULT_RULE_NAME,
    DEVELOPMENT_KEY,
    HybridConnectionConfig,
    Right,
    SasRule,
    ServiceConfig,
)
from hyco_proto.service.router import RelayService

BASE = "ws://127.0.0.1:9090"
LISTEN = f"{BASE}/$hc/myhc"
SEND = f"{BASE}/$hc/myhc?sb-hc-action=connect"


def make_net(config: ServiceConfig | None = None) -> MemoryNetwork:
    broker = RelayBroker(config or ServiceConfig(), rng=random.Random(7))
    return MemoryNetwork(RelayService(broker=broker))


def token_for(
    net: MemoryNetwork,
    uri: str,
    *,
    key: str = DEVELOPMENT_KEY,
    rule: str = DEFAULT_RULE_NAME,
    ttl: int = 3600,
) -> str:
    return create_relay_token(uri, rule, key, ttl, now=net.now)


def start_listener(net: MemoryNetwork, uri: str = LISTEN, **kwargs: object):  # type: ignore[no-untyped-def]
    on_request = kwargs.pop("on_request", None)
    token = kwargs.pop("token", None) or (lambda: token_for(net, uri))
    listener = Listener(uri, token, **kwargs)  # type: ignore[arg-type]
    return net.listen(listener, on_request=on_request)  # type: ignore[arg-type]


def sender(
    net: MemoryNetwork,
    uri: str = SEND,
    *,
    token: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    subprotocols: tuple[str, ...] = (),
):  # type: ignore[no-untyped-def]
    hdrs = list(headers or [])
    hdrs.append(("ServiceBusAuthorization", token or token_for(net, uri)))
    ws = net.connect(uri, headers=hdrs, subprotocols=subprotocols)
    net.pump()
    return ws


def test_accept_and_exchange_both_ways() -> None:
    net = make_net()
    lst = start_listener(net)
    assert lst.events == [Listening()]
    uri = f"{BASE}/$hc/myhc/some/suffix?foo=bar&sb-hc-action=connect"
    s = sender(net, uri, headers=[("X-Custom", "hello")], subprotocols=("proto-a", "proto-b"))
    assert s.accepted is not None and s.rejected is None
    requested = [e for e in lst.events if isinstance(e, ConnectionRequested)]
    assert len(requested) == 1
    accept = requested[0].command
    # The accept message carries the suffix and app query, and every sender header but auth.
    assert "/$hc/myhc/some/suffix?foo=bar&sb-hc-action=accept&sb-hc-id=" in accept.address
    assert accept.connect_headers["X-Custom"] == "hello"
    assert "Sec-WebSocket-Key" in accept.connect_headers
    assert accept.connect_headers["Sec-WebSocket-Version"] == "13"
    assert "ServiceBusAuthorization" not in accept.connect_headers
    assert accept.remote_endpoint.address == "127.0.0.1"
    # The listener chose the sender's first subprotocol; both legs echo it.
    assert s.subprotocol == "proto-a"
    assert lst.connections[0].subprotocol == "proto-a"
    leg = lst.connections[0]
    s.send("hello")
    s.send(b"\x00\x01binary")
    net.pump()
    assert leg.messages == ["hello", b"\x00\x01binary"]
    leg.send("echo:hello")
    leg.send(b"x" * 100_000)
    net.pump()
    assert s.messages == ["echo:hello", b"x" * 100_000]
    s.close(1000, "bye")
    net.pump()
    assert leg.close_received is not None and leg.close_received.code == 1000
    assert s.closed is not None and s.closed.code == 1000 and s.tcp_closed
    assert leg.closed is not None and leg.tcp_closed


def test_reject_reaches_sender_and_listener_sees_410() -> None:
    net = make_net()
    lst = start_listener(net, on_request=lambda req: (403, "Not today"))
    s = sender(net)
    assert s.accepted is None and s.rejected is not None
    assert (s.rejected.status, s.rejected.reason) == (403, "Not today")
    done = [e for e in lst.events if isinstance(e, RendezvousCompleted)]
    assert done and done[0].rejected is True
    assert net.service.stats.rejects == 1


@pytest.mark.parametrize("status", [400, 401, 404])
def test_listener_reject_is_told_apart_from_the_relays_refusals(status: int) -> None:
    net = make_net()
    start_listener(net, on_request=lambda req: (status, "Not you"))
    s = sender(net)
    assert s.rejected is not None
    assert ("X-Hyco-Rejected-By", "listener") in s.rejected.headers
    error = error_for_rejection(s.rejected)
    assert type(error) is ListenerRejectedError
    assert (error.status, error.description) == (status, "Not you")
    # The relay's own refusals: a bad token (401), a bad path (404, without a TrackingId).
    refused = sender(net, token="SharedAccessSignature sr=x&sig=y&se=1&skn=k")
    assert refused.rejected is not None
    assert ("X-Hyco-Rejected-By", "relay") in refused.rejected.headers
    assert type(error_for_rejection(refused.rejected)) is AuthorizationError
    bad_path = sender(net, "ws://127.0.0.1:9090/elsewhere?sb-hc-action=connect")
    assert bad_path.rejected is not None and "TrackingId" not in bad_path.rejected.reason
    assert type(error_for_rejection(bad_path.rejected)) is EndpointNotFoundError


def test_token_in_query_and_namespace_scoped_token() -> None:
    net = make_net()
    start_listener(net)
    tok = token_for(net, "http://127.0.0.1:9090")  # namespace-scoped: sr=http://host/
    from urllib.parse import quote

    ws = net.connect(f"{SEND}&sb-hc-token={quote(tok, safe='')}")
    net.pump()
    assert ws.accepted is not None


@pytest.mark.parametrize(
    "key,rule,rights,expected",
    [
        ("wrong-key", DEFAULT_RULE_NAME, None, 401),
        (DEVELOPMENT_KEY, "nosuchrule", None, 401),
        ("listen-key", "listenonly", frozenset({Right.LISTEN}), 403),
    ],
)
def test_sender_refusals(
    key: str, rule: str, rights: frozenset[Right] | None, expected: int
) -> None:
    config = ServiceConfig()
    if rights is not None:
        config.rules = (*config.rules, SasRule(rule, key, rights))
    net = make_net(config)
    start_listener(net)
    s = sender(net, token=token_for(net, SEND, key=key, rule=rule))
    assert s.rejected is not None and s.rejected.status == expected
    assert "TrackingId:" in s.rejected.reason
    assert net.service.stats.auth_failures == 1


def test_expired_token_is_401() -> None:
    net = make_net()
    start_listener(net)
    tok = token_for(net, SEND, ttl=10)
    net.advance(11)
    s = sender(net, token=tok)
    assert s.rejected is not None and s.rejected.status == 401
    assert "expired" in s.rejected.reason.lower()


def test_no_listener_and_strict_unknown_hybrid_connection() -> None:
    net = make_net()
    s = sender(net)
    assert s.rejected is not None and s.rejected.status == 404
    strict = make_net(
        ServiceConfig(strict=True, hybrid_connections={"known": HybridConnectionConfig("known")})
    )
    lst = start_listener(strict)
    offline = [e for e in lst.events if isinstance(e, Offline)]
    assert offline and isinstance(offline[0].error, EndpointNotFoundError)
    assert lst.listener.state is ListenerState.OFFLINE
    strict.advance(120)
    assert len(lst.attempts) == 1, "404 is terminal: no reconnect"


def test_twenty_sixth_listener_is_refused() -> None:
    net = make_net()
    runners = [start_listener(net) for _ in range(25)]
    assert all(Listening() in r.events for r in runners)
    extra = start_listener(net, reconnect_delays=(1000,))
    refused = [e for e in extra.events if isinstance(e, Disconnected)]
    assert refused and refused[0].error.status == 403
    assert "QuotaExceeded" in (refused[0].error.description or "")
    assert net.service.broker.listener_count("myhc") == 25


def test_allowed_and_disallowed_listeners_pin_the_choice() -> None:
    net = make_net()
    a = start_listener(net, listener_id="listener-a")
    b = start_listener(net, listener_id="listener-b")
    for _ in range(4):
        sender(net, headers=[("Microsoft-Relay-AllowedListeners", "listener-b")])
        sender(net, headers=[("Microsoft-Relay-DisallowedListeners", "listener-b")])
    assert len(a.connections) == 4 and len(b.connections) == 4


def test_listener_renews_token_before_expiry_and_stays_connected() -> None:
    net = make_net()
    lst = start_listener(
        net, token=lambda: token_for(net, LISTEN, ttl=600), keepalive_interval=None
    )
    net.advance(3 * 600)
    renewed = [e for e in lst.events if isinstance(e, TokenRenewed)]
    assert len(renewed) >= 5  # every ~300 s (half the TTL)
    assert not [e for e in lst.events if isinstance(e, Disconnected)]
    assert len(lst.attempts) == 1
    assert net.service.broker.listener_count("myhc") == 1


def test_expired_fixed_listener_token_closes_1008_and_listener_stops() -> None:
    net = make_net()
    grace = net.service.broker.config.token_grace
    fixed = token_for(net, LISTEN, ttl=100)  # a string token is never renewed
    lst = start_listener(net, token=fixed, keepalive_interval=None)
    net.advance(100 + grace + 1)
    offline = [e for e in lst.events if isinstance(e, Offline)]
    assert offline and isinstance(offline[0].error, AuthorizationError)
    assert offline[0].error.close_code == 1008
    assert "token expired at" in str(offline[0].error)
    assert "callable token" in str(offline[0].error)
    assert not [e for e in lst.events if isinstance(e, Disconnected)]
    assert lst.listener.state is ListenerState.OFFLINE
    # Retrying with the same expired token could only fail: no reconnect.
    net.advance(200)
    assert len(lst.attempts) == 1


def test_fixed_listener_token_expired_before_start_never_opens() -> None:
    net = make_net()
    expired = create_relay_token(LISTEN, DEFAULT_RULE_NAME, DEVELOPMENT_KEY, 10,
                                 now=net.now - 20)
    lst = start_listener(net, token=expired)
    assert [type(e) for e in lst.events] == [Offline]
    assert isinstance(lst.events[0].error, AuthorizationError)
    assert lst.attempts == []
    assert net.service.broker.listener_count("myhc") == 0


def test_expired_listener_token_from_a_callable_reconnects() -> None:
    """A callable that keeps handing out the same (expired) token is still renewable: the
    listener keeps to its backoff schedule."""
    net = make_net()
    grace = net.service.broker.config.token_grace
    fixed = token_for(net, LISTEN, ttl=100)
    lst = start_listener(net, token=lambda: fixed, keepalive_interval=None)
    net.advance(100 + grace + 1)
    lost = [e for e in lst.events if isinstance(e, Disconnected)]
    assert lost and isinstance(lost[0].error, AuthorizationError)
    net.advance(200)
    assert len(lst.attempts) > 3
    assert lst.listener.state is not ListenerState.OFFLINE


def test_renewing_listener_reconnects_after_drop_with_reset_schedule() -> None:
    net = make_net()
    lst = start_listener(net, keepalive_interval=None)
    assert lst.control is not None
    lst.control.sever()  # the TCP link dies
    net.pump()
    assert [e for e in lst.events if isinstance(e, Disconnected)]
    net.advance(0.5)
    assert len(lst.attempts) == 2  # first retry is immediate (0 s)
    assert lst.events.count(Listening()) == 2
    s = sender(net)
    assert s.accepted is not None


def test_keepalive_pings_are_answered() -> None:
    net = make_net()
    lst = start_listener(net, keepalive_interval=30.0, keepalive_timeout=10.0)
    net.advance(300)
    assert len(lst.attempts) == 1
    assert lst.driver.keepalive_pongs >= 9


def test_one_leg_drops_other_gets_1001() -> None:
    net = make_net()
    lst = start_listener(net)
    s = sender(net)
    leg = lst.connections[0]
    leg.abort()
    net.pump()
    assert s.close_received is not None and s.close_received.code == 1001


def test_half_close_lets_data_flow_the_other_way() -> None:
    net = make_net()
    lst = net.listen(Listener(LISTEN, lambda: token_for(net, LISTEN)), reply_to_close=False)
    s = sender(net)
    leg = lst.connections[0]
    s.close(1000, "done sending")  # like a TCP half-close carried by a port bridge
    net.pump()
    assert leg.close_received is not None and leg.close_received.reason == "done sending"
    assert s.closed is None, "the relay must not finish the sender's close on its own"
    leg.send(b"late data 1")
    leg.send("late data 2")
    net.pump()
    assert s.messages == [b"late data 1", "late data 2"]
    leg.close(1000)
    net.pump()
    assert s.closed is not None and s.closed.code == 1000 and s.tcp_closed
    assert leg.closed is not None and leg.tcp_closed


def test_accept_address_is_single_use_and_expires() -> None:
    net = make_net()
    seen: list[ConnectionRequested] = []
    start_listener(net, on_request=lambda req: seen.append(req) or False)  # type: ignore[func-returns-value]
    s = sender(net)
    assert s.accepted is None and s.rejected is None  # waiting for the listener
    net.advance(31)
    assert s.rejected is not None and s.rejected.status == 504
    late = net.connect(seen[0].command.address)
    net.pump()
    assert late.rejected is not None and late.rejected.status == 403


@pytest.mark.parametrize(
    "status,description,seen_status,seen_reason",
    [
        (400, "a\r\nb: injected", 400, "a\\x0d\\x0ab: injected"),  # escaped, still readable
        (150, "informational", 500,
         "informational (the listener rejected with status '150', which is not 400-599)"),
        (200, "fine", 500, "fine (the listener rejected with status '200', which is not 400-599)"),
        (301, "moved", 500,
         "moved (the listener rejected with status '301', which is not 400-599)"),
        (999, "x", 500, "x (the listener rejected with status '999', which is not 400-599)"),
        (400, "", 400, "Rejected by listener"),
        (599, "last", 599, "last"),
        (503, "100%25 busy", 503, "100%25 busy"),
    ],
)
def test_reject_with_hostile_status_or_description_is_made_safe(
    status: int, description: str, seen_status: int, seen_reason: str
) -> None:
    """A listener's reject reaches the sender as an HTTP status line: the relay must not let a
    peer's text break it (CR/LF) or its status be something a 101 upgrade cannot end with."""
    from hyco_proto.uris import build_reject_uri

    net = make_net()
    seen: list[ConnectionRequested] = []
    start_listener(net, on_request=lambda req: seen.append(req) or False)  # type: ignore[func-returns-value]
    s = sender(net)
    address = seen[0].command.address
    uri = build_reject_uri(address, 400, "x").replace(
        "sb-hc-statusCode=400", f"sb-hc-statusCode={status}"
    )
    uri = (
        uri.rsplit("sb-hc-statusDescription=", 1)[0]
        + "sb-hc-statusDescription="
        + quote(description)
    )
    rendezvous = net.connect(uri)
    net.pump()
    assert rendezvous.rejected is not None and rendezvous.rejected.status == 410
    assert s.rejected is not None
    assert (s.rejected.status, s.rejected.reason) == (seen_status, seen_reason)


def test_renew_token_is_checked_against_the_listen_path() -> None:
    """A listener on /hc/sub with a token scoped to that path must survive its renewals."""
    net = make_net()
    uri = f"{BASE}/$hc/myhc/sub"
    lst = start_listener(
        net, uri, token=lambda: token_for(net, uri, ttl=600), keepalive_interval=None
    )
    net.advance(1500)
    assert [e for e in lst.events if isinstance(e, TokenRenewed)]
    assert not [e for e in lst.events if isinstance(e, Disconnected)]


def test_listener_ids_with_g_inside_are_not_cut() -> None:
    net = make_net()
    a = start_listener(net, listener_id="team_Green")
    b = start_listener(net, listener_id="team")
    for _ in range(3):
        sender(net, headers=[("Microsoft-Relay-AllowedListeners", "team_Green")])
    assert len(a.connections) == 3 and not b.connections


def test_shutdown_says_going_away_to_everyone() -> None:
    net = make_net()
    lst = start_listener(net, keepalive_interval=None, reconnect_delays=(1000,))
    s = sender(net)
    leg = lst.connections[0]
    waiting = net.connect(SEND, headers=[("ServiceBusAuthorization", token_for(net, SEND))])
    lst.on_request = lambda req: False  # leave the next one waiting
    net.pump()
    service = net.service
    service.shutdown(net.now)
    net.pump()
    assert s.close_received is not None and s.close_received.code == 1001
    assert leg.close_received is not None and leg.close_received.code == 1001
    assert waiting.rejected is not None and waiting.rejected.status == 503
    lost = [e for e in lst.events if isinstance(e, Disconnected)]
    assert lost and lost[0].error.close_code == 1001


def test_peer_of_names_the_other_leg() -> None:
    net = make_net()
    lst = start_listener(net)
    sender(net)
    service = net.service
    legs = [c for c in range(1, 10) if service.peer_of(c) is not None]
    assert len(legs) == 2
    a, b = legs
    assert service.peer_of(a) == b and service.peer_of(b) == a
    assert service.peer_of(1) is None  # the control channel is not a relay leg
    assert lst.connections


def test_sender_flooding_before_its_101_is_refused() -> None:
    net = make_net()
    start_listener(net, on_request=lambda req: False)  # never answers
    s = sender(net)
    assert s.accepted is None and s.rejected is None
    conn_id = s.transport.conn_id
    net.service.receive_data(net.now, conn_id, b"\x82\x80abcd" * 20000)
    out = net.service.data_to_send()
    assert any(data.startswith(b"HTTP/1.1 400") for cid, data in out if cid == conn_id)
    assert (conn_id, b"") in out
