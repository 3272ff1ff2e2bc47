"""``hyco_proto.drivers.listener.ListenerDriver`` driven by hand, and ``drivers.decisions``.

``Relay`` below runs the driver's actions itself: each transport the driver opens gets a
``ServerConnection`` playing the relay's end, and each test decides when (and whether) that end
answers, and moves the virtual clock with ``handle_timer``. A first-open 401 also runs against
the real relay service through ``hyco_proto.memory``.
"""

from __future__ import annotations

import random
from urllib.parse import parse_qs, urlsplit

import pytest

from hyco_proto.control import AcceptCommand, RemoteEndpoint, serialize_command
from hyco_proto.drivers.connection import RequestReceived, ServerConnection
from hyco_proto.drivers.decisions import Accept, Reject
from hyco_proto.drivers.listener import (
    AbortTransport,
    HandOver,
    ListenerDriver,
    OpenTransport,
    StartFailed,
    Write,
)
from hyco_proto.errors import (
    AuthorizationError,
    ConnectionLostError,
    ForbiddenError,
    LocalProtocolError,
    RelayError,
)
from hyco_proto.handshake import HandshakeRequest
from hyco_proto.listener import (
    Closed,
    ConnectionRequested,
    Disconnected,
    Listener,
    ListenerState,
    Listening,
    Reconnecting,
    RendezvousCompleted,
    RendezvousFailed,
)
from hyco_proto.memory import MemoryNetwork
from hyco_proto.sas import create_relay_token
from hyco_proto.service.broker import RelayBroker
from hyco_proto.service.config import DEFAULT_RULE_NAME, ServiceConfig
from hyco_proto.service.router import RelayService
from hyco_proto.websocket import CloseReceived, ConnectionClosed, TextMessage
from tests.wsutil import OP_TEXT, frame

T0 = 1_700_000_000.0
ADDR = "ws://relay.test:9090/$hc/myhc"
FIXED = "SharedAccessSignature sr=x&sig=y&se=4102444800&skn=k"  # expires in 2100


class Relay:
    """Runs a ListenerDriver's actions; the relay's end of each transport is a ServerConnection."""

    def __init__(self, driver: ListenerDriver, *, open_transports: bool = True) -> None:
        self.driver = driver
        self.now = T0
        self.open_transports = open_transports  # report each OpenTransport as open at once
        self.opens: dict[int, OpenTransport] = {}
        self.peers: dict[int, ServerConnection] = {}
        self.closed: list[int] = []  # the driver closed TCP (Write b"")
        self.aborted: list[int] = []
        self.handovers: list[HandOver] = []
        self.events: list[object] = []

    def run(self) -> None:
        while True:
            actions = self.driver.actions_to_take()
            for action in actions:
                self._do(action)
            events = self.driver.events_received()
            self.events += events
            if not (actions or events):
                return

    def _do(self, action: object) -> None:
        if isinstance(action, OpenTransport):
            assert action.key not in self.opens
            self.opens[action.key] = action
            if self.open_transports:
                self.open(action.key)
        elif isinstance(action, Write):
            assert action.key not in self.closed and action.key not in self.aborted, action
            peer = self.peers[action.key]
            if action.data:
                peer.receive_data(action.data)
            else:
                self.closed.append(action.key)
                peer.receive_eof()
        elif isinstance(action, AbortTransport):
            self.aborted.append(action.key)
            self.peers.pop(action.key, None)
        else:
            assert isinstance(action, HandOver)
            self.handovers.append(action)
            self.peers.pop(action.key, None)

    # -- the test's hands -------------------------------------------------------------------

    def open(self, key: int) -> None:
        self.peers[key] = ServerConnection()
        self.driver.transport_open(key, self.now)

    def request(self, key: int) -> HandshakeRequest:
        """The upgrade request the relay's end of ``key`` received."""
        (event,) = self.peers[key].events_received()
        assert isinstance(event, RequestReceived)
        return event.request

    def deliver(self, key: int) -> None:
        """Everything the relay's end of ``key`` queued, as one read (then EOF if it closed)."""
        out = self.peers[key].data_to_send()
        data = b"".join(out)
        if data:
            self.driver.data_received(key, data, self.now)
            self.run()
        if b"" in out:
            self.driver.connection_lost(key, self.now)
            self.run()

    def advance(self, now: float) -> None:
        self.now = now
        self.driver.handle_timer(now)
        self.run()

    def keys(self, *, control: bool) -> list[int]:
        return [k for k, a in self.opens.items() if a.control is control]


def new_driver(**kw: object) -> ListenerDriver:
    kw.setdefault("keepalive_interval", None)
    return ListenerDriver(Listener(ADDR, FIXED, **kw))  # type: ignore[arg-type]


def started(*, open_transports: bool = True, **kw: object) -> tuple[Relay, int]:
    relay = Relay(new_driver(**kw), open_transports=open_transports)
    relay.driver.start(T0)
    relay.run()
    (key,) = relay.opens
    return relay, key


def listening(**kw: object) -> tuple[Relay, int]:
    relay, key = started(**kw)
    relay.request(key)
    relay.peers[key].accept()
    relay.deliver(key)
    assert relay.events == [Listening()]
    relay.events.clear()
    return relay, key


def accept_command(cid: str = "abc", protocols: str | None = "chat, superchat") -> str:
    headers = {"Sec-WebSocket-Key": "k==", "Sec-WebSocket-Version": "13"}
    if protocols is not None:
        headers["Sec-WebSocket-Protocol"] = protocols
    address = f"ws://relay.test:9090/$hc/myhc?sb-hc-action=accept&sb-hc-id={cid}"
    return serialize_command(AcceptCommand(address, cid, headers,
                                           RemoteEndpoint("10.0.0.1", 1234)))


def offer(relay: Relay, control: int, cid: str = "abc",
          protocols: str | None = "chat, superchat") -> ConnectionRequested:
    relay.peers[control].send_text(accept_command(cid, protocols))
    relay.deliver(control)
    (event,) = relay.events
    relay.events.clear()
    assert isinstance(event, ConnectionRequested) and event.id == cid
    return event


def query(action: OpenTransport) -> dict[str, list[str]]:
    return parse_qs(urlsplit(action.url.url).query)


def start_failures(relay: Relay) -> list[StartFailed]:
    return [e for e in relay.events if isinstance(e, StartFailed)]


# ---- starting -----------------------------------------------------------------------------------


def test_start_opens_the_control_channel_with_the_token() -> None:
    relay, key = started()
    action = relay.opens[key]
    assert action.control
    assert (action.url.host, action.url.port, action.url.secure) == ("relay.test", 9090, False)
    assert action.url.path == "/$hc/myhc"
    assert query(action)["sb-hc-action"] == ["listen"]
    request = relay.request(key)
    assert ("ServiceBusAuthorization", FIXED) in request.headers
    assert relay.driver.state is ListenerState.CONNECTING
    assert relay.events == []


def test_the_101_and_a_control_message_in_one_read() -> None:
    relay, key = started()
    relay.request(key)
    relay.peers[key].accept()
    relay.peers[key].send_text(accept_command())
    relay.deliver(key)
    assert [type(e) for e in relay.events] == [Listening, ConnectionRequested]
    assert relay.driver.is_listening


def test_first_open_401_from_the_relay_service_fails_the_start() -> None:
    broker = RelayBroker(ServiceConfig(), rng=random.Random(7))
    net = MemoryNetwork(RelayService(broker=broker))
    uri = "ws://127.0.0.1:9090/$hc/myhc"
    token = create_relay_token(uri, DEFAULT_RULE_NAME, "wrong-key", 3600, now=net.now)
    mem = net.listen(Listener(uri, token, keepalive_interval=None), fail_first_open=True)
    failures = [e for e in mem.events if isinstance(e, StartFailed)]
    assert len(failures) == 1, mem.events
    error = failures[0].error
    assert type(error) is AuthorizationError
    assert error.status == 401
    assert f"cannot listen at {uri}" in str(error)
    assert mem.driver.ended and mem.driver.error is error
    assert mem.driver.state is ListenerState.CLOSED
    net.advance(120)  # no reconnect, ever
    assert len(mem.attempts) == 1
    assert not any(isinstance(e, (Listening, Reconnecting)) for e in mem.events)


@pytest.mark.parametrize(("status", "cls"), [(401, AuthorizationError),
                                             (403, ForbiddenError)])
def test_first_open_refusal_fails_the_start_and_closes_tcp(status: int,
                                                           cls: type[RelayError]) -> None:
    relay, key = started()
    relay.request(key)
    relay.peers[key].reject(status, "Nope")
    relay.deliver(key)
    (failed,) = relay.events
    assert isinstance(failed, StartFailed)
    assert type(failed.error) is cls and failed.error.status == status
    assert failed.error.message.startswith(f"cannot listen at {ADDR}: ")
    assert key in relay.closed
    assert relay.driver.next_deadline() is None
    relay.advance(T0 + 600)
    assert list(relay.opens) == [key]  # no reconnect


def test_first_open_transport_failure_fails_the_start_with_its_cause() -> None:
    relay, key = started(open_transports=False)
    cause = "cannot connect to relay.test:9090: [Errno 111] Connection refused"
    relay.driver.transport_failed(key, T0 + 0.1, cause)
    relay.run()
    (failed,) = relay.events
    assert isinstance(failed, StartFailed)
    assert isinstance(failed.error, RelayError)
    assert failed.error.message == f"cannot listen at {ADDR}: {cause}"
    assert relay.driver.ended and relay.driver.error is failed.error
    assert relay.driver.state is ListenerState.CLOSED
    assert relay.driver.next_deadline() is None
    relay.advance(T0 + 600)
    assert list(relay.opens) == [key]
    assert relay.events == [failed]


@pytest.mark.parametrize("tcp_opens", [False, True])
def test_first_open_timeout_fails_the_start(tcp_opens: bool) -> None:
    relay, key = started(open_transports=tcp_opens, open_timeout=5)
    assert relay.driver.next_deadline() == T0 + 5
    relay.advance(T0 + 4.9)
    assert relay.events == [] and relay.aborted == []
    relay.advance(T0 + 5)
    (failed,) = relay.events
    assert isinstance(failed, StartFailed)
    assert failed.error.message == (f"cannot listen at {ADDR}: "
                                    "control channel did not open within 5 s")
    assert relay.aborted == [key]  # the attempt is dropped
    assert relay.driver.ended and relay.driver.next_deadline() is None
    relay.advance(T0 + 600)
    assert list(relay.opens) == [key]
    if not tcp_opens:
        # TCP comes up too late: the driver drops it again.
        relay.driver.transport_open(key, T0 + 601)
        relay.run()
        assert relay.aborted == [key, key]
        assert relay.events == [failed]


def test_close_after_a_failed_start_is_quiet() -> None:
    relay, key = started(open_transports=False)
    relay.driver.transport_failed(key, T0, "unreachable")
    relay.run()
    relay.events.clear()
    relay.driver.close(T0 + 1)
    relay.run()
    assert relay.events == [] and relay.aborted == []


def test_a_drop_after_the_start_reconnects() -> None:
    relay, first = listening()
    relay.now = T0 + 10
    relay.driver.connection_lost(first, relay.now)
    relay.run()
    assert not start_failures(relay)
    disconnected, reconnecting = relay.events
    assert isinstance(disconnected, Disconnected)
    assert isinstance(disconnected.error, ConnectionLostError)
    assert reconnecting == Reconnecting(0.0, 1)
    (second,) = relay.keys(control=True)[1:]
    assert relay.opens[second].control
    relay.events.clear()
    relay.request(second)
    relay.peers[second].accept()
    relay.deliver(second)
    assert relay.events == [Listening()]
    assert not relay.driver.ended


def test_a_refusal_after_the_start_reconnects_with_backoff() -> None:
    relay, first = listening(reconnect_delays=(3,))
    relay.peers[first].send_close(1011, "relay restarting")
    relay.deliver(first)
    assert not start_failures(relay)
    assert [type(e) for e in relay.events] == [Disconnected, Reconnecting]
    assert len(relay.keys(control=True)) == 1
    assert relay.driver.next_deadline() == T0 + 3
    relay.events.clear()
    relay.advance(T0 + 3)
    second = relay.keys(control=True)[-1]
    assert second != first
    relay.request(second)
    relay.peers[second].reject(401, "Unauthorized")  # not the first open: no StartFailed
    relay.deliver(second)
    assert [type(e) for e in relay.events] == [Disconnected, Reconnecting]
    assert isinstance(relay.events[0], Disconnected)
    assert type(relay.events[0].error) is AuthorizationError
    assert not relay.driver.ended


# ---- answering requests -------------------------------------------------------------------------


def test_answer_none_offers_the_senders_first_subprotocol_and_hands_over() -> None:
    relay, control = listening()
    request = offer(relay, control)
    relay.driver.answer(request, None, relay.now)
    relay.run()
    (key,) = relay.keys(control=False)
    action = relay.opens[key]
    assert query(action)["sb-hc-id"] == ["abc"]
    assert relay.request(key).subprotocols == ["chat"]
    # The relay's 101 and the sender's first messages arrive in one read.
    peer = relay.peers[key]
    peer.accept("chat")
    peer.send_text("hello")
    peer.send_text("again")
    relay.deliver(key)
    assert relay.events == [RendezvousCompleted("abc", False)]
    (handover,) = relay.handovers
    assert handover.key == key and handover.request is request
    assert handover.events == (TextMessage("hello"), TextMessage("again"))
    connection = handover.connection
    assert connection.is_open and connection.subprotocol == "chat"
    assert connection.events_received() == []  # the events travel in the HandOver


def test_answer_none_without_offers_asks_for_no_subprotocol() -> None:
    relay, control = listening()
    request = offer(relay, control, protocols=None)
    relay.driver.answer(request, None, relay.now)
    relay.run()
    (key,) = relay.keys(control=False)
    assert relay.request(key).subprotocols == []


def test_bytes_after_the_handover_are_not_the_drivers() -> None:
    relay, control = listening()
    request = offer(relay, control)
    relay.driver.answer(request, None, relay.now)
    relay.run()
    (key,) = relay.keys(control=False)
    peer = relay.peers[key]
    relay.request(key)
    peer.accept("chat")
    relay.deliver(key)
    (handover,) = relay.handovers
    relay.events.clear()
    relay.driver.data_received(key, frame(OP_TEXT, "for the socket", mask=False), relay.now)
    relay.driver.connection_lost(key, relay.now)
    assert relay.driver.actions_to_take() == []
    assert relay.driver.events_received() == []
    assert handover.connection.events_received() == []
    assert handover.connection.is_open


@pytest.mark.parametrize(("decision", "error"), [
    (42, TypeError),
    ((200, "ok"), ValueError),
    ((404,), TypeError),
    ("nope", LocalProtocolError),  # not offered
    (Accept("nope"), LocalProtocolError),
    (Accept("chat", headers=(("Sec-WebSocket-Key", "x"),)), LocalProtocolError),
])
def test_an_invalid_decision_rejects_with_500_and_raises(decision: object,
                                                         error: type[Exception]) -> None:
    relay, control = listening()
    request = offer(relay, control)
    with pytest.raises(error):
        relay.driver.answer(request, decision, relay.now)  # type: ignore[arg-type]
    relay.run()
    (key,) = relay.keys(control=False)
    params = query(relay.opens[key])
    assert params["sb-hc-statusCode"] == ["500"]
    assert params["sb-hc-statusDescription"] == ["Internal Server Error"]
    relay.request(key)
    relay.peers[key].reject(410, "Gone")  # the relay's "done"
    relay.deliver(key)
    assert relay.events == [RendezvousCompleted("abc", True)]
    assert relay.handovers == []


@pytest.mark.parametrize(("decision", "subprotocol", "status"), [
    ("superchat", "superchat", None),
    (Accept("superchat", headers=(("X-Hello", "1"),)), "superchat", None),
    (Accept(), None, None),
    (Reject(451, "Not here"), None, "451"),
    ((403, "Not today"), None, "403"),
])
def test_valid_decisions(decision: object, subprotocol: str | None, status: str | None) -> None:
    relay, control = listening()
    request = offer(relay, control)
    relay.driver.answer(request, decision, relay.now)  # type: ignore[arg-type]
    relay.run()
    (key,) = relay.keys(control=False)
    params = query(relay.opens[key])
    sent = relay.request(key)
    if status is None:
        assert "sb-hc-statusCode" not in params
        assert sent.subprotocols == ([subprotocol] if subprotocol else [])
        if isinstance(decision, Accept) and decision.headers:
            assert ("X-Hello", "1") in sent.headers
    else:
        assert params["sb-hc-statusCode"] == [status]


def test_refuse() -> None:
    relay, control = listening()
    request = offer(relay, control)
    relay.driver.refuse(request, relay.now)
    relay.run()
    (key,) = relay.keys(control=False)
    assert query(relay.opens[key])["sb-hc-statusCode"] == ["500"]
    relay.driver.refuse(request, relay.now)  # already answered: a no-op
    relay.run()
    assert relay.keys(control=False) == [key]
    relay.request(key)
    relay.peers[key].reject(410, "Gone")
    relay.deliver(key)
    assert relay.events == [RendezvousCompleted("abc", True)]
    assert key in relay.closed


def test_an_unanswered_rendezvous_is_aborted_after_the_accept_timeout() -> None:
    relay, control = listening(accept_timeout=10)
    relay.now = T0 + 1
    request = offer(relay, control)
    relay.now = T0 + 2
    relay.driver.answer(request, None, relay.now)
    relay.run()
    (key,) = relay.keys(control=False)
    relay.request(key)  # the relay never answers the upgrade
    assert relay.driver.next_deadline() == T0 + 11  # received_at + accept_timeout
    relay.advance(T0 + 10.9)
    assert relay.events == [] and relay.aborted == []
    relay.advance(T0 + 11)
    assert relay.aborted == [key]
    (failed,) = relay.events
    assert isinstance(failed, RendezvousFailed) and failed.request_id == "abc"
    assert isinstance(failed.error, ConnectionLostError)
    assert "accept timeout" in str(failed.error)
    assert relay.driver.next_deadline() is None
    # A late 101 changes nothing.
    relay.driver.data_received(key, b"HTTP/1.1 101 Switching Protocols\r\n\r\n", relay.now)
    relay.run()
    assert relay.handovers == [] and relay.events == [failed]


def test_a_rendezvous_that_cannot_connect_is_reported() -> None:
    relay, control = listening()
    request = offer(relay, control)
    relay.open_transports = False
    relay.driver.answer(request, None, relay.now)
    relay.run()
    (key,) = relay.keys(control=False)
    relay.driver.transport_failed(key, relay.now, "no route to g1")
    relay.run()
    (failed,) = relay.events
    assert isinstance(failed, RendezvousFailed)
    assert "no route to g1" in str(failed.error)
    assert relay.driver.next_deadline() is None


# ---- closing ------------------------------------------------------------------------------------


def test_close_aborts_rendezvous_under_way_and_closes_the_control_channel() -> None:
    relay, control = listening()
    request = offer(relay, control)
    relay.driver.answer(request, None, relay.now)
    relay.run()
    (key,) = relay.keys(control=False)
    relay.request(key)  # the 101 is still to come
    relay.now = T0 + 1
    relay.driver.close(relay.now)
    relay.run()
    assert relay.aborted == [key]
    assert relay.peers[control].events_received() == [CloseReceived(1000, ""),
                                                     ConnectionClosed(1000, "", None)]
    assert relay.events == []  # Closed once the relay has answered the close
    relay.deliver(control)  # close frame, then TCP close
    assert relay.events == [Closed()]
    assert relay.driver.ended and relay.driver.state is ListenerState.CLOSED
    assert relay.driver.next_deadline() is None
    assert relay.aborted == [key]


def test_close_gives_up_on_a_silent_relay() -> None:
    relay, control = listening()
    relay.driver.close(T0 + 1)
    relay.run()
    assert relay.driver.next_deadline() == T0 + 11
    relay.advance(T0 + 11)
    assert relay.aborted == [control]
    assert relay.events == [Closed()]
    assert relay.driver.next_deadline() is None


# ---- decisions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [399, 600, 200, 101, 0, -404, True, False, "404", 404.0, None])
def test_reject_status_outside_400_599_raises_at_construction(status: object) -> None:
    with pytest.raises(ValueError, match=r"400\.\.599"):
        Reject(status)  # type: ignore[arg-type]


def test_reject_description_must_be_text() -> None:
    with pytest.raises(ValueError, match="description"):
        Reject(404, b"bytes")  # type: ignore[arg-type]


def test_decision_defaults() -> None:
    assert (Reject().status, Reject().description) == (400, "Rejected by user code")
    assert (Reject(599).status, Reject(400, "x").description) == (599, "x")
    assert (Accept().subprotocol, Accept().headers) == (None, ())
    with pytest.raises(AttributeError):
        Accept().subprotocol = "x"  # type: ignore[misc]


def test_first_open_to_a_tls_relay_over_ws_says_so() -> None:
    """A TLS server drops a plain-text upgrade without a word: the error says what to try."""
    driver = ListenerDriver(Listener(ADDR, FIXED, keepalive_interval=None))
    driver.start(T0)
    (opening,) = [a for a in driver.actions_to_take() if isinstance(a, OpenTransport)]
    driver.transport_open(opening.key, T0)
    driver.connection_lost(opening.key, T0 + 0.1)
    (failed,) = [e for e in driver.events_received() if isinstance(e, StartFailed)]
    text = str(failed.error)
    assert text.startswith(f"cannot listen at {ADDR}: ")
    assert "closed the connection without answering" in text and "wss://" in text
    assert "1006" not in text and text.count(ADDR) == 1
    assert driver.ended


def test_nothing_is_handed_over_once_the_listener_went_offline() -> None:
    r, control = listening(reconnect_delays=[0])
    request = offer(r, control)
    r.driver.answer(request, None, r.now)
    r.run()
    (rendezvous,) = r.keys(control=False)
    r.request(rendezvous)
    # The relay drops the control channel; the immediate reconnect is answered 404: offline.
    r.peers[control].fail(1011, "boom")
    r.deliver(control)
    again = next(k for k in r.keys(control=True) if k != control)
    r.request(again)
    r.peers[again].reject(404, "gone")
    r.deliver(again)
    assert r.driver.ended and r.driver.state is ListenerState.OFFLINE
    assert rendezvous in r.aborted  # the rendezvous under way was dropped
    assert not r.handovers
