"""Listener state machine: transitions, accept/reject, renewal, keepalive, reconnect (§3, §4)."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import parse_qsl, urlsplit

import pytest

from hyco_proto.control import AcceptCommand, RemoteEndpoint, serialize_command
from hyco_proto.errors import (
    AuthorizationError,
    ConnectionLostError,
    EndpointNotFoundError,
    ForbiddenError,
    LocalProtocolError,
    QuotaExceededError,
    RelayError,
)
from hyco_proto.listener import (
    CloseControlChannel,
    Closed,
    ConnectionRequested,
    ConnectRendezvous,
    ControlMessageIgnored,
    Disconnected,
    HttpRequestBody,
    HttpRequestReceived,
    Listener,
    ListenerState,
    Listening,
    Offline,
    OpenControlChannel,
    Reconnecting,
    RendezvousCompleted,
    RendezvousFailed,
    SendControlMessage,
    SendPing,
    TokenRenewalFailed,
    TokenRenewed,
)
from hyco_proto.sas import TokenSource, create_relay_token, parse_token

T0 = 1_700_000_000.0
ADDR = "wss://contoso.servicebus.windows.net/$hc/myhc"
ACCEPT_ADDR = ("wss://g1.servicebus.windows.net:443/$hc/myhc/sfx?foo=bar&sb-hc-action=accept"
               "&sb-hc-id=abc_G0")


class Clock:
    """The test's notion of time, shared with the token callable."""

    def __init__(self) -> None:
        self.now = T0


def token_factory(clock: Clock, ttl: float = 3600) -> Callable[[], str]:
    def make() -> str:
        return create_relay_token(ADDR, "rule", "s3cr3t", ttl, now=clock.now)
    return make


def accept_text(cid: str = "abc_G0", protocols: str | None = "chat, superchat") -> str:
    headers = {"Sec-WebSocket-Key": "k==", "Sec-WebSocket-Version": "13"}
    if protocols is not None:
        headers["Sec-WebSocket-Protocol"] = protocols
    return serialize_command(AcceptCommand(ACCEPT_ADDR.replace("abc_G0", cid), cid, headers,
                                           RemoteEndpoint("10.0.0.1", 1234)))


FIXED = "SharedAccessSignature sr=x&sig=y&se=4102444800&skn=k"  # expires in 2100


def new(token: object = FIXED, **kw: object) -> Listener:
    kw.setdefault("keepalive_interval", None)
    return Listener(ADDR, token, **kw)  # type: ignore[arg-type]


def listening(now: float = T0, **kw: object) -> Listener:
    lis = new(**kw)
    lis.start(now)
    lis.channel_opened(now)
    lis.actions_to_take()
    lis.events_received()
    return lis


def requested(lis: Listener, now: float = T0, cid: str = "abc_G0") -> ConnectionRequested:
    lis.channel_message(now, accept_text(cid))
    (event,) = lis.events_received()
    assert isinstance(event, ConnectionRequested)
    return event


def query(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


# ---- construction and the control-channel URL ---------------------------------------------


class TestOpen:
    def test_listen_url_and_auth_header(self) -> None:
        lis = new(listener_id="guid-1", headers=[("Relay-User-Agent", "hyco_proto/0")])
        assert lis.state is ListenerState.IDLE
        lis.start(T0)
        (action,) = lis.actions_to_take()
        assert action == OpenControlChannel(
            ADDR + "?sb-hc-action=listen&sb-hc-id=guid-1",
            (("ServiceBusAuthorization", FIXED),
             ("Relay-User-Agent", "hyco_proto/0")))
        assert lis.state is ListenerState.CONNECTING
        assert lis.events_received() == []

    def test_listen_url_keeps_query_and_replaces_action_and_id(self) -> None:
        lis = Listener("ws://127.0.0.1:9090/$hc/myhc?a=1&sb-hc-action=connect&SB-HC-ID=old&b",
                       "tok")
        assert lis.url == "ws://127.0.0.1:9090/$hc/myhc?a=1&b&sb-hc-action=listen"

    def test_listener_id_is_url_encoded(self) -> None:
        assert Listener(ADDR, "t", listener_id="a b&c").url.endswith("sb-hc-id=a%20b%26c")

    @pytest.mark.parametrize("address", ["https://h/$hc/x", "sb://h/x", "wss:///$hc/x"])
    def test_bad_address(self, address: str) -> None:
        with pytest.raises(ValueError, match=r"ws:// or wss://|no host"):
            Listener(address, "t")

    @pytest.mark.parametrize("kw", [{"reconnect_delays": ()}, {"reconnect_delays": (0, -1)},
                                    {"keepalive_interval": 0}, {"keepalive_timeout": -1},
                                    {"accept_timeout": 0}, {"open_timeout": 0}])
    def test_bad_options(self, kw: dict[str, object]) -> None:
        with pytest.raises(ValueError):
            Listener(ADDR, "t", **kw)  # type: ignore[arg-type]

    def test_auth_header_in_headers_is_refused(self) -> None:
        with pytest.raises(ValueError, match="token"):
            Listener(ADDR, "t", headers=[("servicebusauthorization", "x")])

    def test_callable_token_is_wrapped_and_called_on_open(self) -> None:
        clock = Clock()
        lis = new(token_factory(clock))
        lis.start(T0)
        (action,) = lis.actions_to_take()
        assert isinstance(action, OpenControlChannel)
        token = dict(action.headers)["ServiceBusAuthorization"]
        assert parse_token(token).expiry == int(T0) + 3600

    def test_start_twice(self) -> None:
        lis = new()
        lis.start(T0)
        with pytest.raises(LocalProtocolError, match="already"):
            lis.start(T0)

    def test_opened_emits_listening(self) -> None:
        lis = new()
        lis.start(T0)
        lis.actions_to_take()
        lis.channel_opened(T0 + 0.2)
        assert lis.state is ListenerState.LISTENING
        assert lis.events_received() == [Listening()]
        assert lis.actions_to_take() == []

    def test_opened_twice_is_adapter_misuse(self) -> None:
        lis = listening()
        with pytest.raises(LocalProtocolError, match="channel_opened"):
            lis.channel_opened(T0)

    def test_message_before_open_is_adapter_misuse(self) -> None:
        lis = new()
        lis.start(T0)
        with pytest.raises(LocalProtocolError, match="channel_opened first"):
            lis.channel_message(T0, accept_text())
        with pytest.raises(LocalProtocolError):
            lis.channel_binary(T0, b"x")

    def test_token_callable_failure_on_open_is_retried(self) -> None:
        def boom() -> str:
            raise OSError("vault unreachable")
        lis = new(boom)
        lis.start(T0)
        assert lis.actions_to_take() == []
        disconnected, reconnecting = lis.events_received()
        assert isinstance(disconnected, Disconnected)
        assert "vault unreachable" in str(disconnected.error)
        # no I/O happened, so not even the first retry is immediate
        assert reconnecting == Reconnecting(1, 1)
        assert lis.state is ListenerState.RECONNECT_WAIT
        assert lis.next_deadline() == T0 + 1

    def test_always_failing_token_with_zero_delays_does_not_spin(self) -> None:
        def boom() -> str:
            raise OSError("nope")
        lis = new(boom, reconnect_delays=(0,))
        lis.start(T0)
        assert lis.next_deadline() == T0 + 1
        lis.handle_timer(T0 + 1)
        assert lis.next_deadline() == T0 + 2


# ---- accept / reject ----------------------------------------------------------------------


class TestAccept:
    def test_accept_connects_to_the_address_as_is(self) -> None:
        lis = listening()
        req = requested(lis)
        assert req.id == "abc_G0"
        assert req.received_at == T0
        assert req.command.requested_subprotocols == ["chat", "superchat"]
        lis.accept(T0 + 1, req, subprotocol="chat", headers=[("X-Listener", "1")])
        (action,) = lis.actions_to_take()
        assert action == ConnectRendezvous(ACCEPT_ADDR, (("X-Listener", "1"),), "chat", req)
        assert action.request is req and action.request_id == "abc_G0"
        assert not any(k.lower() == "servicebusauthorization" for k, _ in action.headers)
        lis.rendezvous_result(T0 + 1.5, req, 101)
        assert lis.events_received() == [RendezvousCompleted("abc_G0", rejected=False)]

    def test_accept_by_command(self) -> None:
        lis = listening()
        req = requested(lis)
        lis.accept(T0, req.command)
        (action,) = lis.actions_to_take()
        assert isinstance(action, ConnectRendezvous) and action.subprotocol is None
        # The action carries the request event itself, even when answered by its command.
        assert action.request is req and action.request.received_at == T0

    def test_accept_twice(self) -> None:
        lis = listening()
        req = requested(lis)
        lis.accept(T0, req)
        with pytest.raises(LocalProtocolError, match="already accepted"):
            lis.accept(T0, req)
        with pytest.raises(LocalProtocolError, match="already accepted"):
            lis.reject(T0, req)

    def test_unknown_request(self) -> None:
        lis = listening()
        other = listening()
        req = requested(other)
        with pytest.raises(LocalProtocolError, match="no such pending request"):
            lis.accept(T0, req)

    def test_subprotocol_must_be_offered(self) -> None:
        lis = listening()
        req = requested(lis)
        with pytest.raises(LocalProtocolError, match=r"not offered.*chat, superchat"):
            lis.accept(T0, req, subprotocol="mqtt")
        with pytest.raises(LocalProtocolError, match="not a valid token"):
            lis.accept(T0, req, subprotocol="a b")
        lis.accept(T0, req, subprotocol="superchat")  # still answerable after the mistakes

    def test_accept_within_30_s_is_fine(self) -> None:
        lis = listening()
        req = requested(lis)
        lis.accept(T0 + 30, req)
        assert len(lis.actions_to_take()) == 1

    def test_expired_accept_address_raises(self) -> None:
        lis = listening()
        req = requested(lis)
        with pytest.raises(LocalProtocolError, match=r"arrived 30\.5 s ago.*about 30 s"):
            lis.accept(T0 + 30.5, req)
        assert lis.actions_to_take() == []
        # forgotten afterwards: a second try is "unknown"
        with pytest.raises(LocalProtocolError, match="no such pending"):
            lis.reject(T0 + 31, req)

    def test_accept_timeout_is_configurable(self) -> None:
        lis = listening(accept_timeout=5)
        assert lis.accept_timeout == 5 and listening().accept_timeout == 30
        req = requested(lis)
        with pytest.raises(LocalProtocolError, match=r"expired|ago"):
            lis.accept(T0 + 6, req)

    def test_long_unanswered_requests_are_pruned(self) -> None:
        lis = listening()
        old = requested(lis, T0, "old")
        lis.handle_timer(T0 + 61)
        with pytest.raises(LocalProtocolError, match="no such pending request"):
            lis.accept(T0 + 61, old)

    def test_accept_after_close(self) -> None:
        lis = listening()
        req = requested(lis)
        lis.close(T0)
        with pytest.raises(LocalProtocolError, match="listener was closed"):
            lis.accept(T0, req)

    def test_accept_while_reconnecting_still_works(self) -> None:
        # The rendezvous does not need the control channel.
        lis = listening()
        req = requested(lis)
        lis.channel_closed(T0 + 1, 1011, "oops")
        lis.actions_to_take()
        lis.events_received()
        lis.accept(T0 + 2, req)
        assert [type(a) for a in lis.actions_to_take()] == [ConnectRendezvous]

    def test_failed_accept_rendezvous(self) -> None:
        lis = listening()
        req = requested(lis)
        lis.accept(T0, req)
        lis.rendezvous_result(T0, req, 403, "address expired. TrackingId:t-1, Timestamp:x")
        (event,) = lis.events_received()
        assert isinstance(event, RendezvousFailed)
        assert isinstance(event.error, ForbiddenError)
        assert event.error.tracking_id == "t-1"

    def test_rendezvous_transport_failure(self) -> None:
        lis = listening()
        req = requested(lis)
        lis.accept(T0, req)
        lis.rendezvous_result(T0, req.id, None, "connection refused")
        (event,) = lis.events_received()
        assert isinstance(event, RendezvousFailed)
        assert isinstance(event.error, ConnectionLostError)
        assert "connection refused" in str(event.error)

    def test_rendezvous_result_without_answer(self) -> None:
        lis = listening()
        req = requested(lis)
        with pytest.raises(LocalProtocolError, match="no rendezvous under way"):
            lis.rendezvous_result(T0, req, 101)
        lis.accept(T0, req)
        lis.rendezvous_result(T0, req, 101)
        with pytest.raises(LocalProtocolError, match="once per accept"):
            lis.rendezvous_result(T0, req, 101)

    def test_rendezvous_result_after_close_is_accepted(self) -> None:
        lis = listening()
        req = requested(lis)
        lis.accept(T0, req)
        lis.close(T0)
        lis.rendezvous_result(T0 + 1, req, 101)
        assert RendezvousCompleted("abc_G0", False) in lis.events_received()


class TestReject:
    def test_reject_builds_reject_uri_and_410_means_success(self) -> None:
        lis = listening()
        req = requested(lis)
        lis.reject(T0, req, 401, "Go away & stay: ü")
        (action,) = lis.actions_to_take()
        assert isinstance(action, ConnectRendezvous)
        assert action.reject and action.subprotocol is None and action.headers == ()
        assert action.request is req and action.request_id == req.id
        assert action.url == (ACCEPT_ADDR + "&sb-hc-statusCode=401"
                              "&sb-hc-statusDescription=Go%20away%20%26%20stay%3A%20%C3%BC")
        assert query(action.url)[-2:] == [("sb-hc-statusCode", "401"),
                                          ("sb-hc-statusDescription", "Go away & stay: ü")]
        lis.rendezvous_result(T0, req, 410)
        assert lis.events_received() == [RendezvousCompleted("abc_G0", rejected=True)]

    def test_default_reject(self) -> None:
        lis = listening()
        req = requested(lis)
        lis.reject(T0, req)
        (action,) = lis.actions_to_take()
        assert isinstance(action, ConnectRendezvous)
        assert dict(query(action.url))["sb-hc-statusCode"] == "400"
        assert dict(query(action.url))["sb-hc-statusDescription"] == "Rejected by user code"

    def test_reject_address_without_query(self) -> None:
        lis = listening()
        cmd = AcceptCommand("ws://127.0.0.1:9090/$hc/x", "i1")
        lis.channel_message(T0, serialize_command(cmd))
        lis.reject(T0, cmd, 503, "busy")
        (action,) = lis.actions_to_take()
        assert isinstance(action, ConnectRendezvous)
        assert action.request == ConnectionRequested(cmd, T0) and action.request_id == "i1"
        assert action.url == ("ws://127.0.0.1:9090/$hc/x?sb-hc-statusCode=503"
                              "&sb-hc-statusDescription=busy")

    @pytest.mark.parametrize("status", [101, 200, 302, 399, 600, True])
    def test_reject_status_must_be_an_error(self, status: int) -> None:
        lis = listening()
        req = requested(lis)
        with pytest.raises(LocalProtocolError, match=r"400\.\.599"):
            lis.reject(T0, req, status)

    @pytest.mark.parametrize(("status", "cls"), [(101, RelayError), (403, ForbiddenError),
                                                 (500, RelayError)])
    def test_reject_not_confirmed(self, status: int, cls: type[RelayError]) -> None:
        lis = listening()
        req = requested(lis)
        lis.reject(T0, req)
        lis.rendezvous_result(T0, req, status)
        (event,) = lis.events_received()
        assert isinstance(event, RendezvousFailed)
        assert type(event.error) is cls and event.error.status == status

    def test_reject_after_close(self) -> None:
        lis = listening()
        req = requested(lis)
        lis.close(T0)
        with pytest.raises(LocalProtocolError, match="closed"):
            lis.reject(T0, req)


# ---- other control messages ---------------------------------------------------------------

REQUEST = {"request": {"address": "wss://g/$hc/myhc?sb-hc-action=request&sb-hc-id=r1",
                       "id": "r1", "requestTarget": "/myhc/a?b=1", "method": "POST",
                       "remoteEndpoint": {"address": "1.2.3.4", "port": 5},
                       "requestHeaders": {"Content-Type": "text/plain"}, "body": True}}


class TestMessages:
    def test_http_request_with_body(self) -> None:
        lis = listening()
        lis.channel_message(T0, json.dumps(REQUEST))
        lis.channel_binary(T0, bytearray(b"hello"))
        received, body = lis.events_received()
        assert isinstance(received, HttpRequestReceived)
        assert received.command.method == "POST" and not received.command.is_pointer
        assert body == HttpRequestBody("r1", b"hello")

    def test_http_request_pointer(self) -> None:
        lis = listening()
        lis.channel_message(T0, '{"request":{"address":"wss://g/x","id":"p1"}}')
        (event,) = lis.events_received()
        assert isinstance(event, HttpRequestReceived) and event.command.is_pointer
        lis.channel_binary(T0, b"")  # no body expected after a pointer
        (ignored,) = lis.events_received()
        assert isinstance(ignored, ControlMessageIgnored)

    def test_text_where_body_expected(self) -> None:
        lis = listening()
        lis.channel_message(T0, json.dumps(REQUEST))
        lis.channel_message(T0, accept_text())
        events = lis.events_received()
        assert [type(e) for e in events] == [HttpRequestReceived, ControlMessageIgnored,
                                             ConnectionRequested]
        assert "announced a body" in events[1].reason  # type: ignore[union-attr]

    def test_stray_binary_is_ignored(self) -> None:
        lis = listening()
        lis.channel_binary(T0, memoryview(b"\x00\x01"))
        (event,) = lis.events_received()
        assert event == ControlMessageIgnored("binary message with no request body expected",
                                              b"\x00\x01")
        assert lis.state is ListenerState.LISTENING

    @pytest.mark.parametrize(("text", "fragment"), [
        ("not json", "not valid JSON"),
        ('{"accept":{"id":"1"}}', "accept.address is missing"),
        ('{"injectFault":{"delay":"00:01:00"}}', "unknown control command 'injectFault'"),
        ('{"renewToken":{"token":"t"}}', "renewToken travels from listener to relay"),
        ('{"response":{"requestId":"1","statusCode":200}}', "response travels"),
    ])
    def test_bad_or_unexpected_messages_are_ignored(self, text: str, fragment: str) -> None:
        lis = listening()
        lis.channel_message(T0, text)
        (event,) = lis.events_received()
        assert isinstance(event, ControlMessageIgnored)
        assert fragment in event.reason
        assert event.message == text
        assert lis.state is ListenerState.LISTENING
        assert lis.actions_to_take() == []

    def test_malformed_message_carries_the_error(self) -> None:
        lis = listening()
        lis.channel_message(T0, "[]")
        (event,) = lis.events_received()
        assert isinstance(event, ControlMessageIgnored) and event.error is not None


# ---- token renewal ------------------------------------------------------------------------


class TestRenewal:
    def test_renew_scheduled_ahead_of_expiry(self) -> None:
        clock = Clock()
        lis = listening(token=token_factory(clock, ttl=3600))
        # TokenSource renews half-way through the TTL, well ahead of expiry
        assert lis.next_deadline() == T0 + 1800
        lis.handle_timer(T0 + 1799)
        assert lis.actions_to_take() == []
        clock.now = T0 + 1800
        lis.handle_timer(clock.now)
        (action,) = lis.actions_to_take()
        assert isinstance(action, SendControlMessage)
        token = json.loads(action.text)["renewToken"]["token"]
        assert parse_token(token).expiry == int(T0) + 1800 + 3600
        assert lis.events_received() == [TokenRenewed(T0 + 1800 + 1800)]
        assert lis.next_deadline() == T0 + 3600

    def test_duck_typed_token_source(self) -> None:
        class FakeSource:
            def __init__(self) -> None:
                self.n = 0

            def get(self, now: float) -> str:
                return f"tok{self.n}"

            def next_renewal(self, now: float) -> float | None:
                return T0 + 100 * (self.n + 1)

            def renew(self, now: float) -> str:
                self.n += 1
                return f"tok{self.n}"

        lis = listening(token=FakeSource())
        assert lis.next_deadline() == T0 + 100
        lis.handle_timer(T0 + 100)
        assert lis.actions_to_take() == [SendControlMessage('{"renewToken":{"token":"tok1"}}')]
        assert lis.next_deadline() == T0 + 200

    def test_fixed_string_is_never_renewed(self) -> None:
        lis = listening(token=FIXED)
        assert lis.next_deadline() is None

    def test_real_token_source_instance(self) -> None:
        clock = Clock()
        source = TokenSource(token_factory(clock, ttl=600), renew_at=0.8)
        lis = listening(token=source)
        assert lis.next_deadline() == T0 + 480

    def test_renewal_failure_is_reported_and_retried(self) -> None:
        clock = Clock()
        good = token_factory(clock, ttl=100)
        calls = [0]

        def flaky() -> str:
            calls[0] += 1
            if calls[0] == 2:
                raise RuntimeError("key vault down")
            return good()

        lis = listening(token=flaky)
        lis.handle_timer(T0 + 50)
        assert lis.actions_to_take() == []
        (event,) = lis.events_received()
        assert isinstance(event, TokenRenewalFailed)
        assert "key vault down" in str(event.error)
        assert lis.next_deadline() == T0 + 60
        clock.now = T0 + 60
        lis.handle_timer(T0 + 60)
        assert [type(a) for a in lis.actions_to_take()] == [SendControlMessage]

    def test_renew_is_rescheduled_on_reconnect(self) -> None:
        clock = Clock()
        lis = listening(token=token_factory(clock, ttl=3600))
        lis.channel_closed(T0 + 10, 1011, "")
        assert lis.state is ListenerState.CONNECTING
        assert lis.next_deadline() == T0 + 10 + 60  # only the open timeout while connecting
        lis.channel_opened(T0 + 11)
        assert lis.next_deadline() == T0 + 1800  # same token, same schedule

    def test_expired_callable_token_is_renewed_on_reconnect(self) -> None:
        clock = Clock()
        lis = listening(token=token_factory(clock, ttl=100))
        clock.now = T0 + 200
        lis.channel_closed(clock.now, 1008, "token expired")
        actions = lis.actions_to_take()
        assert isinstance(actions[-1], OpenControlChannel)
        token = dict(actions[-1].headers)["ServiceBusAuthorization"]
        assert parse_token(token).expiry == int(T0) + 300


class TestFixedTokenExpiry:
    """A fixed (string) token cannot be renewed: once it has expired, retrying is pointless."""

    @staticmethod
    def fixed(expiry: float) -> str:
        return create_relay_token(ADDR, "rule", "s3cr3t", 10, now=expiry - 10)

    @staticmethod
    def offline_error(lis: Listener) -> AuthorizationError:
        assert lis.state is ListenerState.OFFLINE
        assert lis.next_deadline() is None
        events = lis.events_received()
        assert not any(isinstance(e, (Reconnecting, Listening)) for e in events)
        assert isinstance(events[-1], Offline)
        error = events[-1].error
        assert type(error) is AuthorizationError
        assert not error.transient
        return error

    def test_expired_at_start_goes_offline_without_opening(self) -> None:
        lis = new(self.fixed(T0 - 60))
        lis.start(T0)
        assert lis.actions_to_take() == []
        error = self.offline_error(lis)
        assert str(error) == ("the listener's token expired at 2023-11-14 22:12:20 UTC; pass a "
                              "callable token (or TokenSource) so it can be renewed")
        lis.close(T0 + 1)  # still idempotent
        assert lis.state is ListenerState.OFFLINE

    def test_expiring_exactly_now_counts_as_expired(self) -> None:
        lis = new(self.fixed(T0))
        lis.start(T0)
        self.offline_error(lis)

    def test_relay_closes_1008_after_expiry(self) -> None:
        lis = listening(token=self.fixed(T0 + 60))
        req = requested(lis, T0 + 10)
        lis.channel_closed(T0 + 61, 1008, "The token has expired")
        assert lis.actions_to_take() == []
        error = self.offline_error(lis)
        assert error.close_code == 1008 and error.description == "The token has expired"
        assert "expired at 2023-11-14 22:14:20 UTC" in str(error)
        with pytest.raises(LocalProtocolError):
            lis.accept(T0 + 62, req)

    def test_401_after_expiry_during_open(self) -> None:
        lis = new(self.fixed(T0 + 5))
        lis.start(T0)
        assert [type(a) for a in lis.actions_to_take()] == [OpenControlChannel]
        lis.channel_rejected(T0 + 6, 401, "ExpiredToken. TrackingId:t1")
        error = self.offline_error(lis)
        assert error.status == 401 and error.tracking_id == "t1"

    def test_expiry_noticed_when_reconnecting(self) -> None:
        lis = listening(token=self.fixed(T0 + 60), reconnect_delays=(0, 120))
        lis.channel_closed(T0 + 30, 1011, "server error")
        # delay 0: reopened at once, with a token that is still valid
        assert [type(a) for a in lis.actions_to_take()] == [OpenControlChannel]
        lis.channel_rejected(T0 + 31, 503, "busy")
        assert lis.next_deadline() == T0 + 151
        lis.events_received()
        lis.handle_timer(T0 + 151)
        assert lis.actions_to_take() == []
        self.offline_error(lis)

    def test_1008_before_expiry_still_reconnects(self) -> None:
        # e.g. a renewal the relay refused: the token itself is still valid by our clock
        lis = listening(token=self.fixed(T0 + 3600))
        lis.channel_closed(T0 + 10, 1008, "renewal refused")
        events = lis.events_received()
        assert isinstance(events[0], Disconnected)
        assert isinstance(events[0].error, AuthorizationError)
        assert isinstance(events[1], Reconnecting)
        assert lis.state is not ListenerState.OFFLINE

    def test_unknown_expiry_keeps_reconnecting(self) -> None:
        lis = new("opaque-token", reconnect_delays=(0,))
        lis.start(T0)
        for i in range(3):
            lis.actions_to_take()
            lis.channel_rejected(T0 + i, 401, "bad token")
        assert lis.state is ListenerState.CONNECTING

    def test_renewable_token_keeps_todays_behaviour(self) -> None:
        clock = Clock()
        lis = new(token_factory(clock, ttl=60), reconnect_delays=(0,))
        lis.start(T0)
        lis.channel_opened(T0)
        lis.actions_to_take()
        lis.events_received()
        lis.channel_closed(T0 + 3600, 1008, "The token has expired")
        assert [type(e) for e in lis.events_received()] == [Disconnected, Reconnecting]
        assert [type(a) for a in lis.actions_to_take()] == [OpenControlChannel]
        assert lis.state is ListenerState.CONNECTING

    def test_fixed_token_source_instance(self) -> None:
        lis = new(TokenSource(self.fixed(T0 - 1)))
        lis.start(T0)
        self.offline_error(lis)


# ---- keepalive ----------------------------------------------------------------------------


class TestKeepalive:
    def test_ping_every_interval_while_pongs_arrive(self) -> None:
        lis = listening(keepalive_interval=30, keepalive_timeout=10)
        assert lis.next_deadline() == T0 + 30
        lis.handle_timer(T0 + 30)
        assert lis.actions_to_take() == [SendPing(b"hyco-1")]
        assert lis.next_deadline() == T0 + 40  # pong deadline
        lis.pong_received(T0 + 31, b"hyco-1")
        assert lis.next_deadline() == T0 + 60
        lis.handle_timer(T0 + 60)
        assert lis.actions_to_take() == [SendPing(b"hyco-2")]
        assert lis.events_received() == []

    def test_missing_pong_reconnects(self) -> None:
        lis = listening(keepalive_interval=30, keepalive_timeout=30)
        lis.handle_timer(T0 + 30)
        lis.actions_to_take()
        lis.handle_timer(T0 + 59.9)
        assert lis.actions_to_take() == []
        lis.handle_timer(T0 + 60)
        close, reopen = lis.actions_to_take()
        assert close == CloseControlChannel(1001, "keepalive timeout", abort=True)
        assert isinstance(reopen, OpenControlChannel)
        disconnected, reconnecting = lis.events_received()
        assert isinstance(disconnected, Disconnected)
        assert isinstance(disconnected.error, ConnectionLostError)
        assert "no pong within 30 s" in str(disconnected.error)
        assert reconnecting == Reconnecting(0, 1)
        assert lis.state is ListenerState.CONNECTING

    def test_no_second_ping_while_pong_outstanding(self) -> None:
        lis = listening(keepalive_interval=10, keepalive_timeout=30)
        lis.handle_timer(T0 + 10)
        assert lis.actions_to_take() == [SendPing(b"hyco-1")]
        assert lis.next_deadline() == T0 + 40  # not T0 + 20: no busy loop on the due ping
        lis.handle_timer(T0 + 25)
        assert lis.actions_to_take() == []
        lis.pong_received(T0 + 25)
        assert lis.next_deadline() == T0 + 20  # overdue ping fires at once
        lis.handle_timer(T0 + 25)
        assert lis.actions_to_take() == [SendPing(b"hyco-2")]

    def test_defaults_ping_every_30_s(self) -> None:
        lis = Listener(ADDR, "tok")
        lis.start(T0)
        lis.channel_opened(T0)
        assert lis.next_deadline() == T0 + 30

    def test_pong_outside_listening_is_ignored(self) -> None:
        lis = new(keepalive_interval=30)
        lis.start(T0)
        lis.pong_received(T0)
        assert lis.events_received() == []

    def test_renew_and_ping_due_together(self) -> None:
        clock = Clock()
        lis = listening(token=token_factory(clock, ttl=60), keepalive_interval=30)
        clock.now = T0 + 30
        lis.handle_timer(T0 + 30)
        assert [type(a) for a in lis.actions_to_take()] == [SendControlMessage, SendPing]


# ---- failures, status codes and close codes -----------------------------------------------


class TestFailures:
    @pytest.mark.parametrize(("code", "cls"), [
        (1000, ConnectionLostError), (1001, ConnectionLostError), (1006, ConnectionLostError),
        (1008, AuthorizationError), (1011, ConnectionLostError)])
    def test_close_codes_reconnect(self, code: int, cls: type[RelayError]) -> None:
        lis = listening()
        lis.channel_closed(T0 + 5, code, "why")
        disconnected, reconnecting = lis.events_received()
        assert isinstance(disconnected, Disconnected)
        assert type(disconnected.error) is cls
        assert disconnected.error.close_code == code
        assert disconnected.error.description == "why"
        assert reconnecting == Reconnecting(0, 1)
        (action,) = lis.actions_to_take()
        assert isinstance(action, OpenControlChannel)
        assert lis.state is ListenerState.CONNECTING

    @pytest.mark.parametrize(("status", "description", "cls"), [
        (401, "ExpiredToken. TrackingId:abc, SystemTracker:x", AuthorizationError),
        (403, "Unauthorized access for 'Listen'", ForbiddenError),
        (403, "Quota exceeded: 25 listeners", QuotaExceededError),
        (410, "Gone", RelayError),
        (500, "Internal error", RelayError),
    ])
    def test_handshake_statuses_reconnect(self, status: int, description: str,
                                          cls: type[RelayError]) -> None:
        lis = new()
        lis.start(T0)
        lis.actions_to_take()
        lis.channel_rejected(T0, status, description)
        disconnected, reconnecting = lis.events_received()
        assert isinstance(disconnected, Disconnected)
        assert type(disconnected.error) is cls and disconnected.error.status == status
        assert disconnected.error.transient
        assert reconnecting == Reconnecting(0, 1)
        assert isinstance(lis.actions_to_take()[0], OpenControlChannel)

    def test_tracking_id_is_kept(self) -> None:
        lis = new()
        lis.start(T0)
        lis.channel_rejected(T0, 401, "ExpiredToken. TrackingId:abc, SystemTracker:x")
        event = lis.events_received()[0]
        assert isinstance(event, Disconnected) and event.error.tracking_id == "abc"

    def test_404_is_terminal(self) -> None:
        lis = new()
        lis.start(T0)
        lis.actions_to_take()
        lis.channel_rejected(T0, 404, "Endpoint does not exist. TrackingId:t9")
        (event,) = lis.events_received()
        assert isinstance(event, Offline)
        assert isinstance(event.error, EndpointNotFoundError)
        assert not event.error.transient
        assert lis.state is ListenerState.OFFLINE
        assert lis.actions_to_take() == []
        assert lis.next_deadline() is None
        lis.handle_timer(T0 + 1000)
        assert lis.actions_to_take() == []
        # late reports are ignored; close() is a no-op
        lis.channel_closed(T0, 1006)
        lis.close(T0)
        assert lis.state is ListenerState.OFFLINE
        assert lis.events_received() == []

    def test_404_after_reconnects_is_terminal_too(self) -> None:
        lis = listening()
        lis.channel_closed(T0, 1001, "HC deleted")
        lis.channel_rejected(T0, 404, "")
        assert lis.state is ListenerState.OFFLINE

    def test_failed_tcp_connect_reconnects(self) -> None:
        lis = new()
        lis.start(T0)
        lis.channel_closed(T0, 1006, "connection refused")
        assert isinstance(lis.events_received()[0], Disconnected)
        assert lis.state is ListenerState.CONNECTING

    def test_open_timeout(self) -> None:
        lis = new(open_timeout=20)
        lis.start(T0)
        lis.actions_to_take()
        assert lis.next_deadline() == T0 + 20
        lis.handle_timer(T0 + 20)
        close, reopen = lis.actions_to_take()
        assert close == CloseControlChannel(1001, "open timeout", abort=True)
        assert isinstance(reopen, OpenControlChannel)
        assert "did not open within 20 s" in str(lis.events_received()[0].error)  # type: ignore[union-attr]

    def test_rejected_while_listening_is_adapter_misuse(self) -> None:
        lis = listening()
        with pytest.raises(LocalProtocolError, match="channel_rejected"):
            lis.channel_rejected(T0, 401, "")

    def test_stale_close_while_waiting_is_ignored(self) -> None:
        lis = listening()
        lis.channel_closed(T0, 1011)  # 0 s: reconnecting already
        lis.channel_rejected(T0, 500)  # now waiting 1 s
        lis.events_received()
        lis.channel_closed(T0, 1006)
        assert lis.events_received() == []
        assert lis.state is ListenerState.RECONNECT_WAIT


class TestReconnectSchedule:
    def fail_until(self, lis: Listener, now: float) -> float:
        """Fail the pending attempt; return when the next attempt is due."""
        lis.channel_rejected(now, 503, "unavailable")
        events = lis.events_received()
        reconnecting = events[-1]
        assert isinstance(reconnecting, Reconnecting)
        return now + reconnecting.delay

    def test_full_schedule_then_reset_after_success(self) -> None:
        lis = new()
        now = T0
        lis.start(now)
        delays = []
        for _ in range(8):
            assert isinstance(lis.actions_to_take()[-1], OpenControlChannel)
            due = self.fail_until(lis, now)
            delays.append(due - now)
            if due > now:
                assert lis.state is ListenerState.RECONNECT_WAIT
                assert lis.next_deadline() == due
                lis.handle_timer(due - 0.001)
                assert lis.actions_to_take() == []
                lis.handle_timer(due)
            now = due
        assert delays == [0, 1, 2, 5, 10, 30, 30, 30]
        lis.channel_opened(now)
        assert lis.events_received() == [Listening()]
        lis.channel_closed(now + 100, 1011)
        assert lis.events_received()[-1] == Reconnecting(0, 1)
        lis.channel_rejected(now + 100, 500)
        assert lis.events_received()[-1] == Reconnecting(1, 2)

    def test_attempt_numbers(self) -> None:
        lis = new()
        lis.start(T0)
        lis.channel_rejected(T0, 401)
        lis.channel_rejected(T0, 401)
        attempts = [e.attempt for e in lis.events_received() if isinstance(e, Reconnecting)]
        assert attempts == [1, 2]

    def test_custom_delays(self) -> None:
        lis = new(reconnect_delays=(3,))
        lis.start(T0)
        lis.channel_rejected(T0, 500)
        assert lis.next_deadline() == T0 + 3
        lis.handle_timer(T0 + 3)
        lis.channel_rejected(T0 + 3, 500)
        assert lis.next_deadline() == T0 + 6


class TestOfflineTimeout:
    """``offline_timeout``: give up once the control channel has been down that long."""

    def test_default_retries_forever(self) -> None:
        lis = listening()
        now = T0
        for _ in range(50):  # hours of failures
            lis.channel_rejected(now, 503) if lis.state is ListenerState.CONNECTING \
                else lis.channel_closed(now, 1011)
            now = lis.next_deadline() or now
            lis.handle_timer(now)
        assert lis.state is not ListenerState.OFFLINE
        assert not [e for e in lis.events_received() if isinstance(e, Offline)]

    def test_gives_up_while_waiting_to_reconnect(self) -> None:
        lis = listening(offline_timeout=4)
        lis.channel_closed(T0 + 100, 1011, "server going away")  # down since T0 + 100
        lis.channel_rejected(T0 + 100, 503, "busy")  # 0 s retry failed: waiting 1 s
        lis.handle_timer(T0 + 101)
        lis.channel_rejected(T0 + 101, 503, "busy")  # waiting 2 s: due T0 + 103
        lis.handle_timer(T0 + 103)
        lis.channel_rejected(T0 + 103, 503, "still busy")  # next retry would be T0 + 108
        lis.events_received()
        lis.actions_to_take()  # the retries' opens
        assert lis.next_deadline() == T0 + 104  # the offline deadline comes first
        lis.handle_timer(T0 + 103.9)
        assert lis.state is ListenerState.RECONNECT_WAIT
        lis.handle_timer(T0 + 104)
        [offline] = lis.events_received()
        assert isinstance(offline, Offline)
        assert isinstance(offline.error, ConnectionLostError)
        assert not offline.error.transient
        assert "offline_timeout (4 s)" in str(offline.error)
        assert "still busy" in str(offline.error)  # the last failure, also its __cause__
        assert offline.error.__cause__ is not None and offline.error.status == 503
        assert lis.state is ListenerState.OFFLINE
        assert lis.actions_to_take() == [] and lis.next_deadline() is None

    def test_aborts_an_attempt_in_progress(self) -> None:
        lis = listening(offline_timeout=5, open_timeout=60)
        lis.channel_closed(T0 + 10, 1006, "reset")  # down since T0 + 10; retried at once
        assert isinstance(lis.actions_to_take()[-1], OpenControlChannel)
        assert lis.state is ListenerState.CONNECTING
        assert lis.next_deadline() == T0 + 15  # before the 60 s open timeout
        lis.handle_timer(T0 + 15)
        assert lis.actions_to_take() == [CloseControlChannel(1001, "offline timeout", abort=True)]
        assert isinstance(lis.events_received()[-1], Offline)
        assert lis.state is ListenerState.OFFLINE

    def test_gives_up_on_a_failure_past_the_deadline(self) -> None:
        lis = new(offline_timeout=3, reconnect_delays=(10,))
        lis.start(T0)  # never opened: down since the start
        lis.channel_rejected(T0 + 3.5, 500)
        events = lis.events_received()
        assert [type(e) for e in events] == [Disconnected, Offline]

    def test_a_reopened_channel_resets_the_clock(self) -> None:
        lis = listening(offline_timeout=5)
        lis.channel_closed(T0 + 10, 1011)  # down since T0 + 10
        lis.channel_opened(T0 + 12)  # up again
        lis.channel_closed(T0 + 40, 1011)  # down since T0 + 40, not T0 + 10
        lis.events_received()
        assert lis.state is ListenerState.CONNECTING
        assert lis.next_deadline() == T0 + 45

    def test_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="offline_timeout"):
            new(offline_timeout=0)


# ---- close --------------------------------------------------------------------------------


class TestClose:
    def test_close_while_listening(self) -> None:
        lis = listening(keepalive_interval=30)
        lis.close(T0 + 1)
        assert lis.actions_to_take() == [CloseControlChannel(1000, "")]
        assert lis.state is ListenerState.CLOSING
        assert lis.next_deadline() == T0 + 11  # close timeout only; no pings
        lis.channel_message(T0 + 2, accept_text())  # late traffic is dropped
        lis.channel_closed(T0 + 2, 1000)
        assert lis.events_received() == [Closed()]
        assert lis.state is ListenerState.CLOSED
        assert lis.next_deadline() is None

    def test_close_stops_reconnects(self) -> None:
        lis = listening()
        lis.channel_closed(T0, 1011)
        lis.channel_rejected(T0, 500)  # waiting 1 s
        lis.actions_to_take()
        lis.events_received()
        lis.close(T0 + 0.5)
        assert lis.events_received() == [Closed()]
        assert lis.actions_to_take() == []
        lis.handle_timer(T0 + 100)
        assert lis.actions_to_take() == []
        assert lis.state is ListenerState.CLOSED

    def test_close_while_connecting_aborts(self) -> None:
        lis = new()
        lis.start(T0)
        lis.actions_to_take()
        lis.close(T0)
        assert lis.actions_to_take() == [CloseControlChannel(1000, "", abort=True)]
        assert lis.events_received() == [Closed()]
        lis.channel_opened(T0)  # a late report for the aborted channel
        assert lis.state is ListenerState.CLOSED

    def test_close_before_start(self) -> None:
        lis = new()
        lis.close(T0)
        assert lis.state is ListenerState.CLOSED
        assert lis.events_received() == [Closed()]
        with pytest.raises(LocalProtocolError):
            lis.start(T0)

    def test_close_is_idempotent(self) -> None:
        lis = listening()
        lis.close(T0)
        lis.close(T0)
        assert lis.actions_to_take() == [CloseControlChannel(1000, "")]
        lis.channel_closed(T0, 1000)
        lis.close(T0)
        assert lis.events_received() == [Closed()]

    def test_close_timeout(self) -> None:
        lis = listening(close_timeout=5)
        lis.close(T0)
        lis.actions_to_take()
        lis.handle_timer(T0 + 5)
        assert lis.actions_to_take() == [CloseControlChannel(1000, "close timeout", abort=True)]
        assert lis.events_received() == [Closed()]
        assert lis.state is ListenerState.CLOSED

    def test_no_reconnect_after_close_even_if_server_closes(self) -> None:
        lis = listening()
        lis.close(T0)
        lis.channel_closed(T0, 1011, "error")
        assert lis.events_received() == [Closed()]
        assert [a for a in lis.actions_to_take() if isinstance(a, OpenControlChannel)] == []


def test_events_and_actions_are_frozen() -> None:
    event = Reconnecting(1, 2)
    with pytest.raises(AttributeError):
        event.delay = 3  # type: ignore[misc]
    action = SendPing(b"")
    with pytest.raises(AttributeError):
        action.payload = b"x"  # type: ignore[misc]
