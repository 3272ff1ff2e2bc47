"""End to end, in memory: N :class:`WebPubSubClientCore` wired to one :class:`Hub`.

No sockets and no WebSocket framing: a small router moves text frames between the two sans-IO
cores through per-transport FIFO queues, verifies client tokens and routes recovery URLs as the
service does, and drives both cores' timers from one virtual clock (seconds since the epoch, so
the tokens' ``iat``/``exp`` are checked against the same clock).
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pytest

from hyco_proto.webpubsub.client import (
    AckResolved,
    ClientEvent,
    ClientState,
    CloseConnection,
    Connected,
    Disconnected,
    FetchUrl,
    GroupMessage,
    OpenConnection,
    SendText,
    WebPubSubClientCore,
)
from hyco_proto.webpubsub.endpoints import build_client_url, parse_client_url
from hyco_proto.webpubsub.hub import CloseTransport, Deliver, Hub, HubAction, UpstreamEvent
from hyco_proto.webpubsub.messages import (
    JSON_RELIABLE_SUBPROTOCOL,
    JSON_SUBPROTOCOL,
    BinaryData,
    Data,
    JsonData,
    TextData,
)
from hyco_proto.webpubsub.tokens import (
    WebPubSubTokenError,
    create_client_token,
    verify_client_token,
)

ENDPOINT = "http://localhost:8080"
HUB = "chat"
KEY = "local-emulator-access-key-of-at-least-32-bytes"
T0 = 1_800_000_000.0
ALL_ROLES = ("webpubsub.joinLeaveGroup", "webpubsub.sendToGroup")
JOIN_ONLY = ("webpubsub.joinLeaveGroup",)


@dataclass
class Peer:
    """One client core and the state of its (at most one) transport."""

    name: str
    core: WebPubSubClientCore
    user_id: str
    roles: tuple[str, ...]
    events: list[ClientEvent] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)   # every OpenConnection URL, in order
    cid: str | None = None          # hub connection id of the current transport
    hub_side: bool = False          # the hub still has this transport
    client_side: bool = False       # the client core still has this transport
    inbox: deque[tuple[str, Any]] = field(default_factory=deque)   # hub -> client, in flight
    outbox: deque[str] = field(default_factory=deque)              # client -> hub, in flight
    drop_after_next_send: bool = False
    recoveries: list[tuple[bool, int]] = field(default_factory=list)  # (accepted, replayed)

    def take(self, kind: type) -> list[Any]:
        """Remove and return the collected events of ``kind``."""
        hits = [e for e in self.events if isinstance(e, kind)]
        self.events = [e for e in self.events if not isinstance(e, kind)]
        return hits


class Net:
    """The router. ``hub_timer=False``: the hub's timer is never run, so an expired recovery
    window is only noticed by :meth:`Hub.recover` (an emulator that expires lazily)."""

    def __init__(self, *, hub_timer: bool = True, **hub_kwargs: Any) -> None:
        self.hub_timer = hub_timer
        ids = (f"conn{n}" for n in itertools.count(1))
        tokens = (f"rtok{n}" for n in itertools.count(1))
        self.hub = Hub(HUB, connection_id_factory=lambda: next(ids),
                       reconnection_token_factory=lambda: next(tokens), **hub_kwargs)
        self.now = T0
        self.peers: list[Peer] = []
        self.upstream: list[UpstreamEvent] = []

    # ---- setup -------------------------------------------------------------------------------

    def url_for(self, user_id: str, roles: tuple[str, ...]) -> str:
        token = create_client_token(ENDPOINT, HUB, KEY, user_id=user_id, roles=roles,
                                    now=self.now)
        return build_client_url(ENDPOINT, HUB, access_token=token)

    def add(self, name: str, *, roles: tuple[str, ...] = ALL_ROLES, fixed_url: bool = True,
            **kwargs: Any) -> Peer:
        url = self.url_for(name, roles) if fixed_url else None
        peer = Peer(name, WebPubSubClientCore(url, **kwargs), name, roles)
        self.peers.append(peer)
        peer.core.start(self.now)
        self.pump()
        assert [type(e) for e in peer.take(Connected)] == [Connected]
        assert peer.core.state is ClientState.CONNECTED
        return peer

    # ---- the router --------------------------------------------------------------------------

    def pump(self) -> None:
        """Move actions and frames until both sides are quiet."""
        for _ in range(10_000):
            progress = False
            for p in self.peers:
                for action in p.core.actions_to_take():
                    progress = True
                    self._client_action(p, action)
                if p.outbox:
                    progress = True
                    text = p.outbox.popleft()
                    assert p.cid is not None and p.hub_side
                    self.route(self.hub.client_text(self.now, p.cid, text))
                    if p.drop_after_next_send:
                        p.drop_after_next_send = False
                        self.drop_hub_side(p)
                if p.inbox:
                    progress = True
                    kind, item = p.inbox.popleft()
                    if kind == "text":
                        p.core.text_received(self.now, item)
                    else:  # the hub closed the transport: the client sees the close frame
                        p.client_side = False
                        p.core.connection_closed(self.now, *item)
                p.events.extend(p.core.events_received())
            if not progress:
                return
        raise AssertionError("the router did not settle")

    def _client_action(self, p: Peer, action: object) -> None:
        if isinstance(action, SendText):
            if p.client_side and p.hub_side:
                p.outbox.append(action.text)
            # else: written to a transport that is dead on the far side, lost
        elif isinstance(action, CloseConnection):
            assert p.client_side
            self._detach(p)
            p.client_side = False
            p.core.connection_closed(self.now, action.code, action.reason)
        elif isinstance(action, FetchUrl):
            p.core.url_ready(self.now, self.url_for(p.user_id, p.roles))
        elif isinstance(action, OpenConnection):
            assert not p.client_side
            p.opened.append(action.url)
            self._open(p, action.url, action.subprotocol)
        else:  # pragma: no cover
            raise AssertionError(f"unexpected client action {action!r}")

    def _open(self, p: Peer, url: str, subprotocol: str) -> None:
        """What the service does with an upgrade request to ``url`` offering ``subprotocol``."""
        parsed = parse_client_url(url)
        assert parsed.hub == HUB
        if parsed.connection_id is not None and parsed.reconnection_token is not None:
            # awps_* first (the old access_token may have expired)
            result = self.hub.recover(self.now, parsed.connection_id,
                                      parsed.reconnection_token, subprotocol)
            p.recoveries.append((result.accepted, len(result.actions)))
            p.client_side = True
            p.core.connection_opened(self.now, subprotocol)
            if result.accepted:
                p.cid, p.hub_side = parsed.connection_id, True
                self.route(result.actions)
            else:  # accept the upgrade, then close it with 1008
                assert result.close_code is not None
                p.client_side = False
                p.core.connection_closed(self.now, result.close_code, result.reason)
            return
        assert parsed.access_token is not None
        try:
            claims = verify_client_token(parsed.access_token, key=KEY, endpoint=ENDPOINT,
                                         hub=HUB, now=self.now)
        except WebPubSubTokenError:  # HTTP 401 before the upgrade
            p.core.connection_closed(self.now, None, "401")
            return
        connect = self.hub.connect(self.now, user_id=claims.user_id, roles=claims.roles,
                                   groups=claims.groups, subprotocol=subprotocol)
        p.cid, p.hub_side, p.client_side = connect.connection_id, True, True
        p.core.connection_opened(self.now, subprotocol)
        self.route(connect.actions)

    def route(self, actions: list[HubAction]) -> None:
        for action in actions:
            if isinstance(action, UpstreamEvent):
                self.upstream.append(action)
                continue
            p = self._attached(action.connection_id)
            if p is None:
                raise AssertionError(f"hub addressed a detached transport: {action!r}")
            if isinstance(action, Deliver):
                assert isinstance(action.frame, str), "binary frame to a JSON client"
                p.inbox.append(("text", action.frame))
            elif isinstance(action, CloseTransport):
                p.hub_side = False
                p.outbox.clear()
                self.hub.transport_lost(self.now, action.connection_id)
                p.inbox.append(("close", (action.code, action.reason)))

    def _attached(self, cid: str) -> Peer | None:
        for p in self.peers:
            if p.cid == cid and p.hub_side:
                return p
        return None

    def _detach(self, p: Peer) -> None:
        """The transport is gone for the hub: frames in flight either way are lost."""
        if p.hub_side:
            assert p.cid is not None
            p.hub_side = False
            self.hub.transport_lost(self.now, p.cid)
        p.inbox.clear()
        p.outbox.clear()

    # ---- faults and time ---------------------------------------------------------------------

    def drop_hub_side(self, p: Peer) -> None:
        """The TCP connection breaks; only the hub notices for now."""
        self._detach(p)

    def drop(self, p: Peer, code: int = 1006) -> None:
        """The TCP connection breaks and both sides notice."""
        self._detach(p)
        if p.client_side:
            p.client_side = False
            p.core.connection_closed(self.now, code, "")
        self.pump()

    def advance(self, seconds: float) -> None:
        """Run both cores' timers, in deadline order, up to ``now + seconds``."""
        end = self.now + seconds
        while True:
            hub_deadline = self.hub.next_deadline() if self.hub_timer else None
            deadlines = [d for d in [hub_deadline,
                                     *(p.core.next_deadline() for p in self.peers)]
                         if d is not None and d <= end]
            if not deadlines:
                break
            self.now = max(self.now, min(deadlines))
            if self.hub_timer:
                self.hub.handle_timer(self.now)
            for p in self.peers:
                deadline = p.core.next_deadline()
                if deadline is not None and deadline <= self.now:
                    p.core.handle_timer(self.now)
            self.pump()
        self.now = end
        self.pump()

    # ---- helpers -----------------------------------------------------------------------------

    def join(self, p: Peer, group: str) -> None:
        ack = p.core.join_group(group, self.now)
        self.pump()
        assert p.take(AckResolved) == [AckResolved(ack, True)]
        assert group in p.core.groups


def received(p: Peer) -> list[tuple[str, Data, str | None]]:
    return [(m.group, m.data, m.from_user_id) for m in p.take(GroupMessage)]


def texts(p: Peer) -> list[str]:
    out = []
    for m in p.take(GroupMessage):
        assert isinstance(m.data, TextData)
        out.append(m.data.text)
    return out


# --------------------------------------------------------------------------------------------
# 1. two reliable clients exchange messages


def test_two_reliable_clients_exchange_messages() -> None:
    net = Net()
    alice = net.add("alice", keepalive_interval=None)
    bob = net.add("bob", keepalive_interval=None)
    assert alice.cid != bob.cid
    assert alice.core.subprotocol == JSON_RELIABLE_SUBPROTOCOL
    net.join(alice, "room")
    net.join(bob, "room")

    payloads: list[Data] = [TextData("hello"), JsonData({"n": 1, "list": [1, "x", None]}),
                            BinaryData(b"\x00\x01\xffbin")]
    acks = [alice.core.send_to_group("room", d, net.now) for d in payloads]
    net.pump()
    assert alice.take(AckResolved) == [AckResolved(a, True) for a in acks if a is not None]
    expected = [("room", d, "alice") for d in payloads]
    assert received(bob) == expected
    assert received(alice) == expected  # no noEcho: the sender gets its copy

    # noEcho: bob's message reaches alice only; sequence ids run per connection from 1
    ack = bob.core.send_to_group("room", TextData("quiet"), net.now, no_echo=True)
    net.pump()
    assert bob.take(AckResolved) == [AckResolved(ack, True)]  # type: ignore[arg-type]
    assert bob.take(GroupMessage) == []
    [msg] = alice.take(GroupMessage)
    assert (msg.data, msg.from_user_id, msg.sequence_id) == (TextData("quiet"), "bob", 4)
    assert alice.core.last_sequence_id == 4 and bob.core.last_sequence_id == 3

    # fire-and-forget: no ack either way, the message still flows
    assert alice.core.send_to_group("room", TextData("ff"), net.now, ack=False) is None
    net.pump()
    assert alice.take(AckResolved) == [] and texts(bob) == ["ff"]

    # an event goes upstream with the user id; its ack resolves
    ack = alice.core.send_event("ping-event", JsonData({"x": 1}), net.now)
    net.pump()
    assert alice.take(AckResolved) == [AckResolved(ack, True)]  # type: ignore[arg-type]
    assert [(u.user_id, u.event, u.data) for u in net.upstream] == [
        ("alice", "ping-event", JsonData({"x": 1}))]

    # after leaveGroup bob gets nothing more
    net.join(bob, "other")
    ack = bob.core.leave_group("room", net.now)
    net.pump()
    assert bob.take(AckResolved) == [AckResolved(ack, True)]
    alice.core.send_to_group("room", TextData("after leave"), net.now)
    net.pump()
    assert bob.take(GroupMessage) == [] and texts(alice) == ["ff", "after leave"]
    assert [a.ok for a in alice.take(AckResolved)] == [True]
    assert not bob.events and not alice.events


# --------------------------------------------------------------------------------------------
# 2. missing permission


def test_send_without_send_role_is_forbidden() -> None:
    net = Net()
    reader = net.add("reader", roles=JOIN_ONLY, keepalive_interval=None)
    writer = net.add("writer", keepalive_interval=None)
    net.join(reader, "room")
    net.join(writer, "room")
    ack = reader.core.send_to_group("room", TextData("not allowed"), net.now)
    net.pump()
    [resolved] = reader.take(AckResolved)
    assert resolved.ack_id == ack and resolved.ok is False and not resolved.duplicate
    assert resolved.error is not None and resolved.error.name == "Forbidden"
    assert writer.take(GroupMessage) == [] and reader.take(GroupMessage) == []
    # fire-and-forget: silence; the connection stays open and can still receive
    reader.core.send_to_group("room", TextData("silent"), net.now, ack=False)
    net.pump()
    assert reader.events == [] and writer.events == []
    assert reader.core.state is ClientState.CONNECTED
    writer.core.send_to_group("room", TextData("to reader"), net.now)
    net.pump()
    assert texts(reader) == ["to reader"]
    # a retry with the same ackId after a failure is not a Duplicate (only successes are kept)
    again = reader.core.send_to_group("room", TextData("again"), net.now)
    net.pump()
    [resolved] = reader.take(AckResolved)
    assert resolved.ack_id == again and resolved.error is not None
    assert resolved.error.name == "Forbidden"


# --------------------------------------------------------------------------------------------
# 3. recovery of a reliable connection


def test_reliable_recovery_replays_buffer_once_and_resends_pending_ack() -> None:
    net = Net()
    alice = net.add("alice", keepalive_interval=None)
    bob = net.add("bob", keepalive_interval=None)
    net.join(alice, "room")
    net.join(bob, "room")
    bob_cid = bob.cid
    assert bob_cid is not None

    # bob receives 1..2 without acknowledging them yet (sequenceAck is batched, 1 s)
    for text in ("m1", "m2"):
        alice.core.send_to_group("room", TextData(text), net.now, no_echo=True)
    net.pump()
    assert texts(bob) == ["m1", "m2"] and bob.core.last_sequence_id == 2
    alice.take(AckResolved)

    # bob sends; the hub runs it (alice gets it), but the transport breaks before bob gets
    # his echo (seq 3) and the ack
    bob.drop_after_next_send = True
    pending = bob.core.send_to_group("room", TextData("from bob"), net.now)
    net.pump()
    assert pending is not None and list(bob.core.pending_acks) == [pending]
    assert texts(alice) == ["from bob"]
    assert bob.events == []

    # meanwhile alice keeps talking: buffered for bob (seq 4..6)
    for text in ("m3", "m4", "m5"):
        alice.core.send_to_group("room", TextData(text), net.now, no_echo=True)
    net.pump()
    assert len(alice.take(AckResolved)) == 3
    net.advance(0.5)  # the hub keeps bob for its window; bob has not noticed yet

    # bob notices and recovers via the awps_* URL
    net.drop(bob)
    recovery_url = parse_client_url(bob.opened[-1])
    assert (recovery_url.connection_id, recovery_url.reconnection_token) == (bob_cid, "rtok2")
    assert recovery_url.access_token is not None  # the original URL, token kept
    assert bob.recoveries == [(True, 6)]  # everything since the last sequenceAck
    assert bob.cid == bob_cid and bob.core.connection_id == bob_cid
    assert bob.core.state is ClientState.CONNECTED
    assert bob.take(Connected) == [] and bob.take(Disconnected) == []
    # exactly once, in order: 1..2 are replays and dropped
    got = bob.take(GroupMessage)
    assert [(m.data, m.sequence_id) for m in got] == [
        (TextData("from bob"), 3), (TextData("m3"), 4), (TextData("m4"), 5),
        (TextData("m5"), 6)]
    # the pending ack was sent again with the same ackId: Duplicate, which is success
    [resolved] = bob.take(AckResolved)
    assert (resolved.ack_id, resolved.ok, resolved.duplicate) == (pending, True, True)
    assert resolved.error is not None and resolved.error.name == "Duplicate"
    assert bob.core.pending_acks == ()
    assert texts(alice) == []  # not run twice

    # the hub still has bob in the group on the same connection
    assert net.hub.connection_groups(bob_cid) == frozenset({"room"})
    alice.core.send_to_group("room", TextData("m6"), net.now, no_echo=True)
    net.pump()
    [m6] = bob.take(GroupMessage)
    assert (m6.data, m6.sequence_id) == (TextData("m6"), 7)

    # bob's sequenceAck (sent at recovery for 1..6 and batched for 7) is accepted: after
    # another break the hub has nothing left to replay
    net.advance(1.0)
    net.drop(bob)
    assert bob.recoveries[-1] == (True, 0)
    assert bob.events == [] and bob.core.state is ClientState.CONNECTED


def test_recovery_duplicate_ack_shape() -> None:
    """The resent request's ack: ok, duplicate, with the service's Duplicate error."""
    net = Net()
    alice = net.add("alice", keepalive_interval=None)
    net.join(alice, "room")
    alice.drop_after_next_send = True
    ack = alice.core.send_to_group("room", JsonData([1, 2]), net.now)
    net.pump()
    net.drop(alice)
    [resolved] = alice.take(AckResolved)
    assert (resolved.ack_id, resolved.ok, resolved.duplicate) == (ack, True, True)
    assert resolved.error is not None and resolved.error.name == "Duplicate"
    [echo] = alice.take(GroupMessage)  # replayed once
    assert (echo.data, echo.sequence_id) == (JsonData([1, 2]), 1)


# --------------------------------------------------------------------------------------------
# 4. recovery too late -> 1008 -> new connection with auto-rejoin


@pytest.mark.parametrize("hub_timer", [True, False], ids=["hub-timer", "lazy-expiry"])
def test_recovery_after_window_gets_1008_then_new_connection_and_rejoin(
        hub_timer: bool) -> None:
    net = Net(hub_timer=hub_timer)
    alice = net.add("alice", keepalive_interval=None)
    # bob gets a fresh URL (FetchUrl) for each new connection; keepalive finds the dead link
    bob = net.add("bob", fixed_url=False, keepalive_interval=20.0, keepalive_timeout=120.0)
    net.join(alice, "room")
    net.join(bob, "room")
    old_cid = bob.cid
    alice.core.send_to_group("room", TextData("before"), net.now)
    net.pump()
    assert texts(bob) == ["before"] and texts(alice) == ["before"]

    # the link dies silently: the hub notices at once, bob only by keepalive (120 s)
    net.drop_hub_side(bob)
    net.advance(31.0)
    # the hub's 30 s window is over (dropped by its timer, or kept until recover() looks)
    assert net.hub.connection_exists(old_cid or "") is not hub_timer
    alice.core.send_to_group("room", TextData("lost"), net.now)
    net.pump()
    assert bob.core.state is ClientState.CONNECTED and bob.events == []

    net.advance(100.0)
    # bob closed for keepalive timeout, tried recovery, was refused with 1008 ...
    assert bob.recoveries == [(False, 0)]
    rec = parse_client_url(bob.opened[1])
    assert rec.connection_id == old_cid
    # ... then made a brand-new connection (fresh URL, no awps_*) and rejoined "room"
    new = parse_client_url(bob.opened[2])
    assert new.connection_id is None and new.access_token is not None
    assert len(bob.opened) == 3
    [disc] = bob.take(Disconnected)
    assert "recovered" in disc.reason
    assert not net.hub.connection_exists(old_cid or "")
    [conn] = bob.take(Connected)
    assert conn.connection_id == bob.cid != old_cid and conn.user_id == "bob"
    assert bob.core.groups == ("room",)
    assert net.hub.connection_groups(bob.cid or "") == frozenset({"room"})
    assert bob.take(GroupMessage) == [] and bob.events == []  # "lost" is gone for good

    alice.core.send_to_group("room", TextData("again"), net.now)
    bob.core.send_to_group("room", TextData("bob is back"), net.now, no_echo=True)
    net.pump()
    [again] = bob.take(GroupMessage)
    assert (again.data, again.sequence_id) == (TextData("again"), 1)  # numbering restarted
    assert texts(alice) == ["lost", "again", "bob is back"]


# --------------------------------------------------------------------------------------------
# 5. non-reliable client: no recovery, a new connection and rejoin


def test_non_reliable_client_reconnects_and_rejoins() -> None:
    net = Net()
    alice = net.add("alice", keepalive_interval=None)
    carol = net.add("carol", subprotocol=JSON_SUBPROTOCOL, keepalive_interval=None)
    assert carol.core.reliable is False
    net.join(alice, "room")
    net.join(carol, "room")
    net.join(carol, "side")
    old_cid = carol.cid
    alice.core.send_to_group("room", TextData("one"), net.now)
    net.pump()
    [one] = carol.take(GroupMessage)
    assert (one.data, one.sequence_id) == (TextData("one"), None)  # no sequenceId

    net.drop(carol)
    # no recovery URL: straight to a new connection, then joinGroup again for each group
    assert carol.recoveries == [] and len(carol.opened) == 2
    assert parse_client_url(carol.opened[1]).connection_id is None
    assert not net.hub.connection_exists(old_cid or "")
    assert [type(e) for e in carol.events] == [Disconnected, Connected]
    carol.events.clear()
    assert carol.cid != old_cid
    assert net.hub.connection_groups(carol.cid or "") == frozenset({"room", "side"})
    assert carol.core.groups == ("room", "side")

    alice.core.send_to_group("room", TextData("two"), net.now)
    carol.core.send_to_group("room", TextData("from carol"), net.now, no_echo=True)
    net.pump()
    assert texts(carol) == ["two"]
    assert texts(alice) == ["one", "two", "from carol"]
    assert [a.ok for a in carol.take(AckResolved)] == [True]



def test_request_lost_in_flight_runs_once_after_recovery() -> None:
    """The request never reached the hub: the resend after recovery runs it (no Duplicate)."""
    net = Net()
    alice = net.add("alice", keepalive_interval=None)
    bob = net.add("bob", keepalive_interval=None)
    net.join(alice, "room")
    net.join(bob, "room")
    ack = alice.core.send_to_group("room", TextData("in flight"), net.now)
    net.drop_hub_side(alice)  # the frame was still in alice's outbox: lost
    net.pump()
    assert bob.take(GroupMessage) == []
    net.drop(alice)
    assert alice.recoveries == [(True, 0)]
    assert alice.take(AckResolved) == [AckResolved(ack, True)]  # type: ignore[arg-type]
    assert texts(bob) == ["in flight"] and texts(alice) == ["in flight"]


def test_server_close_then_refused_recovery_then_new_connection() -> None:
    """REST closeConnection: disconnected + 1000; the client tries recovery first, the hub
    refuses with 1008, the client reconnects and rejoins (reference §4 / §5.1)."""
    net = Net()
    alice = net.add("alice", keepalive_interval=None)
    bob = net.add("bob", keepalive_interval=None)
    net.join(alice, "room")
    net.join(bob, "room")
    old_cid = bob.cid
    assert old_cid is not None
    net.route(net.hub.close_connection(old_cid, "ClosedByAppServer"))
    net.pump()
    assert bob.recoveries == [(False, 0)] and len(bob.opened) == 3
    assert [type(e) for e in bob.events] == [Disconnected, Connected]
    assert bob.take(Disconnected) == [Disconnected("ClosedByAppServer")]
    assert net.hub.connection_groups(bob.cid or "") == frozenset({"room"})
    alice.core.send_to_group("room", TextData("welcome back"), net.now)
    net.pump()
    assert texts(bob) == ["welcome back"]
