"""Relayed HTTP on the listener side (``hyco_proto.drivers.http`` through ``ListenerDriver``).

``Relay`` plays the relay service by hand: every transport the driver opens gets a
``ServerConnection`` (streaming binary messages, so fragments are visible), the test writes
control messages and rendezvous frames, and reads exactly what the listener wrote back.
"""

from __future__ import annotations

import json

import pytest

from hyco_proto.control import RemoteEndpoint, RequestCommand, serialize_command
from hyco_proto.drivers.connection import RequestReceived, ServerConnection
from hyco_proto.drivers.http import (
    CONTROL_BODY_LIMIT,
    PAUSE_ABOVE,
    BodyBuffer,
    HttpRequestCancelled,
    HttpRequestData,
    HttpRequestStarted,
    HttpResponseWritable,
    PauseReading,
    RelayedRequest,
    RequestCancelled,
    Response,
    ResumeReading,
    split_target,
)
from hyco_proto.drivers.listener import (
    AbortTransport,
    HandOver,
    ListenerDriver,
    OpenTransport,
    Write,
)
from hyco_proto.errors import LocalProtocolError
from hyco_proto.listener import ControlMessageIgnored, Listener, Listening
from hyco_proto.websocket import (
    BinaryFragment,
    CloseReceived,
    ConnectionClosed,
    TextMessage,
)

T0 = 1_700_000_000.0
ADDR = "ws://relay.test:9090/$hc/myhc"
FIXED = "SharedAccessSignature sr=x&sig=y&se=4102444800&skn=k"  # expires in 2100


class Relay:
    """Runs a ListenerDriver's actions; the relay's end of each transport is a ServerConnection."""

    def __init__(self, driver: ListenerDriver) -> None:
        self.driver = driver
        self.now = T0
        self.opens: dict[int, OpenTransport] = {}
        self.peers: dict[int, ServerConnection] = {}
        self.writes: list[Write] = []
        self.closed: list[int] = []  # the driver closed TCP (Write b"")
        self.aborted: list[int] = []
        self.paused: set[int] = set()
        self.pauses: list[PauseReading | ResumeReading] = []
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
            self.opens[action.key] = action
        elif isinstance(action, Write):
            assert action.key not in self.closed and action.key not in self.aborted, action
            self.writes.append(action)
            peer = self.peers[action.key]
            if action.data:
                peer.receive_data(action.data)
            else:
                self.closed.append(action.key)
                peer.receive_eof()
        elif isinstance(action, AbortTransport):
            self.aborted.append(action.key)
            self.peers.pop(action.key, None)
        elif isinstance(action, PauseReading):
            self.pauses.append(action)
            self.paused.add(action.key)
        elif isinstance(action, ResumeReading):
            self.pauses.append(action)
            self.paused.discard(action.key)
        else:
            assert not isinstance(action, HandOver), "HTTP rendezvous are never handed over"
            raise AssertionError(action)

    # -- the test's hands -------------------------------------------------------------------

    def open(self, key: int, *, accept: bool = True) -> RequestReceived:
        """TCP up for ``key``; the relay's end reads the upgrade and (``accept``) answers 101."""
        peer = ServerConnection()
        peer.stream_binary = True
        self.peers[key] = peer
        self.driver.transport_open(key, self.now)
        self.run()
        (event,) = peer.events_received()
        assert isinstance(event, RequestReceived)
        if accept:
            peer.accept()
            self.deliver(key)
        return event

    def deliver(self, key: int) -> None:
        """What the relay's end of ``key`` queued, as one read (then EOF if it closed TCP)."""
        out = self.peers[key].data_to_send()
        data = b"".join(out)
        if data:
            self.driver.data_received(key, data, self.now)
            self.run()
        if b"" in out:
            self.driver.connection_lost(key, self.now)
            self.run()

    def text(self, key: int, text: str) -> None:
        self.peers[key].send_text(text)
        self.deliver(key)

    def received(self, key: int) -> list[object]:
        """What the listener sent on ``key`` since the last call, as the relay parsed it."""
        return self.peers[key].events_received()

    def take_events(self) -> list[object]:
        events, self.events = self.events, []
        return events

    def new_keys(self, before: set[int]) -> list[int]:
        return [k for k in self.opens if k not in before]


#: What the relay's end sees when the listener closes a rendezvous (it replies at once).
CLOSED = [CloseReceived(1000, ""), ConnectionClosed(1000, "", None)]


def listening(*, serve: bool = True) -> tuple[Relay, int]:
    driver = ListenerDriver(Listener(ADDR, FIXED, keepalive_interval=None), serve_http=serve)
    relay = Relay(driver)
    driver.start(T0)
    relay.run()
    (control,) = relay.opens
    relay.open(control)
    assert relay.take_events() == [Listening()]
    return relay, control


def request_json(rid: str = "r1", *, body: bool = True, address: bool = True,
                 target: str = "/myhc/orders/7?x=1&y=2", method: str = "POST") -> str:
    command = RequestCommand(
        id=rid,
        address=(f"ws://relay.test:9090/$hc/myhc?sb-hc-action=request&sb-hc-id={rid}"
                 if address else None),
        request_target=target, method=method,
        remote_endpoint=RemoteEndpoint("10.0.0.1", 4321),
        request_headers={"Content-Type": "text/plain", "X-Trace": "t-1"}, body=body)
    return serialize_command(command)


def pointer_json(rid: str = "r1") -> str:
    address = f"ws://relay.test:9090/$hc/myhc?sb-hc-action=request&sb-hc-id={rid}"
    return serialize_command(RequestCommand(id=rid, address=address))


def response_of(message: object) -> dict[str, object]:
    assert isinstance(message, TextMessage), message
    doc = json.loads(message.data)
    assert list(doc) == ["response"]
    return doc["response"]  # type: ignore[no-any-return]


def control_request(relay: Relay, control: int, rid: str = "r1", body: bytes | None = b"hello",
                    **kw: object) -> None:
    peer = relay.peers[control]
    peer.send_text(request_json(rid, body=body is not None, **kw))  # type: ignore[arg-type]
    if body is not None:
        peer.send_binary(body)  # back to back, one read
    relay.deliver(control)


def pointer_request(relay: Relay, control: int, rid: str = "r1") -> int:
    """A pointer on the control channel; returns the rendezvous the listener opens (accepted)."""
    before = set(relay.opens)
    relay.text(control, pointer_json(rid))
    (key,) = relay.new_keys(before)
    action = relay.opens[key]
    assert not action.control
    assert action.url.url == f"ws://relay.test:9090/$hc/myhc?sb-hc-action=request&sb-hc-id={rid}"
    relay.open(key)
    return key


# ---- the request as the application sees it ----------------------------------------------------


def test_a_small_request_with_its_body_arrives_on_the_control_channel() -> None:
    relay, control = listening()
    control_request(relay, control)
    started, data = relay.take_events()
    assert isinstance(started, HttpRequestStarted) and started.id == "r1"
    request = started.request
    assert (request.method, request.target) == ("POST", "/myhc/orders/7?x=1&y=2")
    assert (request.path, request.query) == ("/orders/7", "x=1&y=2")
    assert request.headers["content-type"] == "text/plain"  # case-insensitive
    assert request.remote_address == ("10.0.0.1", 4321)
    assert request.has_body and request.id == "r1"
    assert data == HttpRequestData("r1", b"hello", True)
    assert relay.driver.http_requests == 1


def test_a_request_without_body_ends_its_body_at_once() -> None:
    relay, control = listening()
    control_request(relay, control, body=None, method="GET")
    started, data = relay.take_events()
    assert isinstance(started, HttpRequestStarted) and not started.request.has_body
    assert data == HttpRequestData("r1", b"", True)


@pytest.mark.parametrize(("target", "path", "query"), [
    ("/myhc", "/", ""),
    ("/myhc/", "/", ""),
    ("/myhc?a=1", "/", "a=1"),
    ("/MyHC/a/b?q", "/a/b", "q"),
    ("/myhcx/a", "/myhcx/a", ""),
    ("/other/a?z=%20", "/other/a", "z=%20"),
])
def test_path_drops_the_hybrid_connection_name(target: str, path: str, query: str) -> None:
    assert split_target(target, "myhc") == (path, query)
    command = RequestCommand(id="1", request_target=target, method="GET", body=False)
    request = RelayedRequest(command, "myhc")
    assert (request.target, request.path, request.query) == (target, path, query)
    assert request.remote_address == ("", 0)


# ---- answers on the control channel ------------------------------------------------------------


def test_a_small_whole_response_goes_back_to_back_on_the_control_channel() -> None:
    relay, control = listening()
    control_request(relay, control)
    relay.take_events()
    relay.writes.clear()
    before = set(relay.opens)
    key = relay.driver.respond("r1", Response(201, {"X-Echo": "5"}, b"hello"), relay.now)
    relay.run()
    assert key == control and relay.new_keys(before) == []
    # The text and the binary message leave in consecutive writes: nothing comes between.
    assert [w.key for w in relay.writes] == [control, control]
    text, body = relay.received(control)
    assert text == TextMessage('{"response":{"requestId":"r1","statusCode":201,'
                               '"statusDescription":"Created","responseHeaders":'
                               '{"X-Echo":"5"},"body":true}}')
    assert body == BinaryFragment(b"hello", True)
    assert relay.driver.http_requests == 0
    with pytest.raises(LocalProtocolError, match="no such request"):
        relay.driver.respond("r1", Response(), relay.now)


def test_an_empty_body_says_body_false_and_sends_no_binary() -> None:
    relay, control = listening()
    control_request(relay, control, body=None, method="GET")
    relay.driver.respond("r1", Response(204), relay.now)
    relay.run()
    (text,) = relay.received(control)
    assert response_of(text) == {"requestId": "r1", "statusCode": 204,
                                 "statusDescription": "No Content", "responseHeaders": {},
                                 "body": False}


def test_exactly_64_kib_still_goes_on_the_control_channel() -> None:
    relay, control = listening()
    control_request(relay, control)
    before = set(relay.opens)
    relay.driver.respond("r1", Response(body=b"x" * CONTROL_BODY_LIMIT), relay.now)
    relay.run()
    assert relay.new_keys(before) == []
    text, body = relay.received(control)
    assert response_of(text)["body"] is True
    assert body == BinaryFragment(b"x" * CONTROL_BODY_LIMIT, True)


def test_the_body_of_an_early_answer_still_reaches_the_application() -> None:
    relay, control = listening()
    relay.text(control, request_json(body=True))  # the body has not come yet
    relay.take_events()
    relay.driver.respond("r1", Response(body=b"early"), relay.now)
    relay.run()
    relay.peers[control].send_binary(b"late body")
    relay.deliver(control)
    assert relay.take_events() == [HttpRequestData("r1", b"late body", True)]
    assert relay.driver.http_requests == 0


# ---- answers on a rendezvous the listener opens ------------------------------------------------


def big_answer(relay: Relay, control: int, response: Response) -> int:
    control_request(relay, control)
    relay.take_events()
    before = set(relay.opens)
    assert relay.driver.respond("r1", response, relay.now) is None  # the rendezvous opens
    relay.run()
    (key,) = relay.new_keys(before)
    assert relay.opens[key].url.url == ("ws://relay.test:9090/$hc/myhc?sb-hc-action=request"
                                        "&sb-hc-id=r1")
    assert relay.received(control) == []  # nothing on the control channel
    return key


def test_a_streamed_response_goes_on_a_rendezvous_to_the_request_address() -> None:
    relay, control = listening()
    key = big_answer(relay, control, Response(200, [("Content-Type", "text/csv")],
                                              iter([b"unused"])))
    upgrade = relay.open(key)
    assert upgrade.request.target == "/$hc/myhc?sb-hc-action=request&sb-hc-id=r1"
    assert relay.take_events() == [HttpResponseWritable("r1")]
    driver = relay.driver
    assert driver.send_body("r1", b"a,b\n", relay.now) == key
    assert driver.send_body("r1", b"1,2\n", relay.now) == key
    assert driver.end_response("r1", relay.now) == key
    relay.run()
    text, *rest = relay.received(key)
    assert response_of(text) == {"requestId": "r1", "statusCode": 200,
                                 "statusDescription": "OK",
                                 "responseHeaders": {"Content-Type": "text/csv"}, "body": True}
    assert rest == [BinaryFragment(b"a,b\n", False), BinaryFragment(b"1,2\n", False),
                    BinaryFragment(b"", True), *CLOSED]
    relay.deliver(key)  # the relay's close reply, then it closes TCP
    assert relay.take_events() == []  # a finished response is not cancelled by the close
    assert driver.http_requests == 0


def test_writes_before_the_rendezvous_opens_wait_for_it() -> None:
    relay, control = listening()
    key = big_answer(relay, control, Response(body=iter(())))
    relay.driver.send_body("r1", b"early", relay.now)
    relay.driver.end_response("r1", relay.now)
    relay.run()
    relay.open(key)
    text, *rest = relay.received(key)
    assert response_of(text)["body"] is True
    assert rest == [BinaryFragment(b"early", False), BinaryFragment(b"", True),
                    *CLOSED]
    assert relay.take_events() == []  # complete before it opened: nothing to wait for


def test_a_big_whole_response_goes_on_a_rendezvous_as_one_message() -> None:
    relay, control = listening()
    body = b"y" * (CONTROL_BODY_LIMIT + 1)
    key = big_answer(relay, control, Response(body=body))
    relay.open(key)
    text, *rest = relay.received(key)
    assert response_of(text)["body"] is True
    assert rest == [BinaryFragment(body, True), *CLOSED]


def test_big_headers_go_on_a_rendezvous() -> None:
    relay, control = listening()
    key = big_answer(relay, control, Response(headers={"X-Big": "h" * (33 * 1024)}, body=b"ok"))
    relay.open(key)
    text, *rest = relay.received(key)
    assert len(response_of(text)["responseHeaders"]["X-Big"]) == 33 * 1024  # type: ignore[index]
    assert rest == [BinaryFragment(b"ok", True), *CLOSED]


def test_the_relay_closing_the_response_rendezvous_cancels_the_request() -> None:
    relay, control = listening()
    key = big_answer(relay, control, Response(body=iter(())))
    relay.open(key)
    relay.take_events()
    relay.peers[key].send_close(1001, "sender gone")
    relay.deliver(key)
    (cancelled,) = relay.take_events()
    assert isinstance(cancelled, HttpRequestCancelled) and cancelled.request_id == "r1"
    assert "the sender went away" in str(cancelled.error)
    with pytest.raises(RequestCancelled):
        relay.driver.send_body("r1", b"more", relay.now)
    assert key in relay.aborted


# ---- requests on a rendezvous (pointer) --------------------------------------------------------


def test_a_pointer_request_streams_its_fragmented_body_and_is_answered_there() -> None:
    relay, control = listening()
    key = pointer_request(relay, control)
    assert relay.take_events() == []  # nothing until the request itself arrives
    peer = relay.peers[key]
    peer.send_text(request_json(address=False))
    peer.send_binary_part(b"part one,", False)
    relay.deliver(key)
    started, first = relay.take_events()
    assert isinstance(started, HttpRequestStarted) and started.request.path == "/orders/7"
    assert first == HttpRequestData("r1", b"part one,", False)  # before the rest was sent
    peer.send_binary_part(b"", False)
    peer.send_binary_part(b"part two", True)
    relay.deliver(key)
    assert relay.take_events() == [HttpRequestData("r1", b"", False),
                                   HttpRequestData("r1", b"part two", True)]
    assert relay.driver.respond("r1", Response(body=b"thanks"), relay.now) == key
    relay.run()
    text, *rest = relay.received(key)
    assert response_of(text)["body"] is True
    assert rest == [BinaryFragment(b"thanks", True), *CLOSED]
    assert relay.received(control) == []
    relay.deliver(key)
    assert relay.take_events() == [] and key not in relay.aborted


def test_the_relay_closing_a_request_rendezvous_1001_cancels_it() -> None:
    relay, control = listening()
    key = pointer_request(relay, control)
    peer = relay.peers[key]
    peer.send_text(request_json(address=False))
    peer.send_binary_part(b"half", False)
    relay.deliver(key)
    relay.take_events()
    peer.send_close(1001, "")
    relay.deliver(key)
    (cancelled,) = relay.take_events()
    assert isinstance(cancelled, HttpRequestCancelled)
    assert cancelled.error.close_code == 1001
    assert "closed its rendezvous (1001)" in str(cancelled.error)
    with pytest.raises(RequestCancelled):
        relay.driver.respond("r1", Response(), relay.now)


def test_a_request_rendezvous_dropping_before_the_response_cancels_it() -> None:
    relay, control = listening()
    key = pointer_request(relay, control)
    relay.text(key, request_json(address=False, body=False))
    relay.take_events()
    relay.driver.connection_lost(key, relay.now)
    relay.run()
    (cancelled,) = relay.take_events()
    assert isinstance(cancelled, HttpRequestCancelled) and "1006" in str(cancelled.error)


def test_a_response_complete_before_the_upload_cuts_the_rest_of_the_body() -> None:
    relay, control = listening()
    key = pointer_request(relay, control)
    peer = relay.peers[key]
    peer.send_text(request_json(address=False))
    peer.send_binary_part(b"a", False)
    relay.deliver(key)
    relay.take_events()
    relay.driver.respond("r1", Response(413, body=b"too big"), relay.now)
    relay.run()
    (cancelled,) = relay.take_events()
    assert isinstance(cancelled, HttpRequestCancelled)
    assert "rest of the body was not read" in str(cancelled.error)
    text, *rest = relay.received(key)
    assert response_of(text)["statusCode"] == 413
    assert rest == [BinaryFragment(b"too big", True), *CLOSED] and key not in relay.aborted


def test_a_big_upload_pauses_reading_until_the_handler_catches_up() -> None:
    relay, control = listening()
    key = pointer_request(relay, control)
    peer = relay.peers[key]
    peer.send_text(request_json(address=False))
    relay.deliver(key)
    relay.take_events()
    piece = b"z" * (256 * 1024)
    sent = 0
    while key not in relay.paused:
        peer.send_binary_part(piece, False)
        relay.deliver(key)
        sent += len(piece)
        assert sent <= PAUSE_ABOVE + len(piece)
    assert sent > PAUSE_ABOVE
    assert relay.pauses == [PauseReading(key)]
    relay.driver.body_consumed("r1", sent - 512 * 1024, relay.now)  # 512 KiB still queued
    relay.run()
    assert key in relay.paused
    relay.driver.body_consumed("r1", 256 * 1024, relay.now)
    relay.run()
    assert relay.pauses == [PauseReading(key), ResumeReading(key)]
    relay.driver.body_consumed("r1", 256 * 1024, relay.now)
    relay.run()
    assert len(relay.pauses) == 2


def test_the_control_channel_is_never_paused() -> None:
    relay, control = listening()
    for n in range(20):
        control_request(relay, control, rid=f"r{n}", body=b"b" * CONTROL_BODY_LIMIT)
    assert relay.pauses == []
    assert relay.driver.http_requests == 20


def test_a_request_rendezvous_that_never_opens_is_dropped_quietly() -> None:
    relay, control = listening()
    before = set(relay.opens)
    relay.text(control, pointer_json())
    (key,) = relay.new_keys(before)
    relay.now += relay.driver.listener.accept_timeout + 1
    relay.driver.handle_timer(relay.now)
    relay.run()
    assert key in relay.aborted
    assert relay.take_events() == []  # the application never heard of it
    assert relay.driver.http_requests == 0


def test_a_bad_request_on_a_rendezvous_is_reported_and_dropped() -> None:
    relay, control = listening()
    key = pointer_request(relay, control)
    relay.text(key, '{"accept":{"address":"ws://x/$hc/a","id":"1"}}')
    (ignored,) = relay.take_events()
    assert isinstance(ignored, ControlMessageIgnored) and "not a full request" in ignored.reason
    assert key in relay.aborted


# ---- without a handler, failures, cancellation by the listener ---------------------------------


def test_without_a_handler_every_request_is_answered_501() -> None:
    relay, control = listening(serve=False)
    control_request(relay, control)
    text, body = relay.received(control)
    head = response_of(text)
    assert (head["statusCode"], head["statusDescription"]) == (501, "Not Implemented")
    assert head["responseHeaders"] == {"Content-Type": "text/plain; charset=utf-8"}
    assert isinstance(body, BinaryFragment) and b"WebSocket connections only" in body.data
    key = pointer_request(relay, control, "r2")
    relay.text(key, request_json("r2", address=False, body=False))
    text, *rest = relay.received(key)
    assert response_of(text)["statusCode"] == 501
    assert rest[-2:] == CLOSED
    assert relay.take_events() == []  # the application hears nothing of them
    assert relay.driver.http_requests == 0


def test_a_failed_handler_answers_500_before_the_head() -> None:
    relay, control = listening()
    control_request(relay, control)
    relay.driver.handler_failed("r1", relay.now)
    relay.run()
    text, body = relay.received(control)
    assert response_of(text)["statusCode"] == 500
    assert isinstance(body, BinaryFragment) and body.fin
    relay.driver.handler_failed("r1", relay.now)  # over: a no-op
    relay.run()
    assert relay.received(control) == []


def test_a_failed_handler_after_the_head_aborts_the_rendezvous() -> None:
    relay, control = listening()
    key = pointer_request(relay, control)
    relay.text(key, request_json(address=False, body=False))
    relay.driver.respond("r1", Response(body=iter(())), relay.now)
    relay.driver.send_body("r1", b"partial", relay.now)
    relay.run()
    relay.take_events()
    relay.driver.handler_failed("r1", relay.now)
    relay.run()
    assert key in relay.aborted
    assert relay.take_events() == []  # the application knows already
    with pytest.raises(RequestCancelled, match="handler failed"):
        relay.driver.send_body("r1", b"more", relay.now)


def test_losing_the_control_channel_cancels_its_unanswered_requests() -> None:
    relay, control = listening()
    control_request(relay, control)
    relay.take_events()
    relay.peers[control].send_close(1011, "relay restarting")
    relay.deliver(control)
    cancelled = [e for e in relay.take_events() if isinstance(e, HttpRequestCancelled)]
    assert [c.request_id for c in cancelled] == ["r1"]
    assert "control channel" in str(cancelled[0].error)
    with pytest.raises(RequestCancelled):
        relay.driver.respond("r1", Response(), relay.now)


def test_closing_the_listener_cancels_every_request() -> None:
    relay, control = listening()
    control_request(relay, control, rid="a")
    key = pointer_request(relay, control, "b")
    relay.text(key, request_json("b", address=False, body=False))
    relay.take_events()
    relay.driver.close(relay.now)
    relay.run()
    cancelled = {e.request_id for e in relay.take_events() if isinstance(e, HttpRequestCancelled)}
    assert cancelled == {"a", "b"}
    assert key in relay.aborted


def test_misuse_says_what_to_do() -> None:
    relay, control = listening()
    control_request(relay, control)
    with pytest.raises(LocalProtocolError, match="no streamed response"):
        relay.driver.send_body("r1", b"x", relay.now)
    with pytest.raises(TypeError, match="takes a Response"):
        relay.driver.respond("r1", 200, relay.now)  # type: ignore[arg-type]
    relay.driver.respond("r1", Response(body=iter(())), relay.now)
    with pytest.raises(LocalProtocolError, match="already has its response head"):
        relay.driver.respond("r1", Response(), relay.now)
    with pytest.raises(LocalProtocolError, match="no such request"):
        relay.driver.respond("nope", Response(), relay.now)


# ---- Response ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [502, 504])
def test_502_and_504_are_refused(status: int) -> None:
    with pytest.raises(ValueError, match=f"status {status} is reserved for the relay"):
        Response(status)


@pytest.mark.parametrize("status", [100, 101, 199, 600, 999])
def test_only_final_statuses(status: int) -> None:
    with pytest.raises(ValueError, match=r"200\.\.599"):
        Response(status)


def test_response_shapes_its_head() -> None:
    assert Response(503).reason == "Service Unavailable"
    assert Response(450).reason == ""  # no standard phrase: the relay picks one
    assert Response(200, reason="Fine").reason == "Fine"
    text = Response(200, body="héllo")
    assert text.body == "héllo".encode()
    assert text.headers == (("Content-Type", "text/plain; charset=utf-8"),)
    assert not text.streaming and Response(body=[b"a"]).streaming
    with pytest.raises(ValueError, match="not a valid HTTP token"):
        Response(headers={"Bad Name": "x"})
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        Response(headers={"X": "a\r\nB: c"})
    with pytest.raises(TypeError, match="body is bytes, str or an iterable"):
        Response(body=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Response(True)


def test_response_headers_are_joined_and_framing_headers_dropped() -> None:
    relay, control = listening()
    control_request(relay, control)
    headers = [("Set-Cookie", "a=1"), ("set-cookie", "b=2"), ("Content-Length", "99"),
               ("Transfer-Encoding", "chunked"), ("Connection", "close"), ("X-Ok", "1")]
    relay.driver.respond("r1", Response(200, headers, b"x"), relay.now)
    relay.run()
    text, _ = relay.received(control)
    assert response_of(text)["responseHeaders"] == {"Set-Cookie": "a=1, b=2", "X-Ok": "1"}


def test_body_buffer() -> None:
    buffer = BodyBuffer()
    assert buffer.take() is None and not buffer.done
    buffer.feed(b"a", False)
    buffer.feed(b"", False)
    buffer.feed(b"b", True)
    assert (buffer.take(), buffer.take(), buffer.take()) == (b"a", b"b", None)
    assert buffer.done
    cancelled = BodyBuffer()
    cancelled.feed(b"a", False)
    cancelled.cancel(RequestCancelled("gone"))
    with pytest.raises(RequestCancelled, match="gone"):
        cancelled.take()
    assert cancelled.done


def test_a_finished_rendezvous_closes_cleanly() -> None:
    # The closing handshake of a finished rendezvous is seen to the end: no abort, no cancel.
    relay, control = listening()
    key = pointer_request(relay, control)
    relay.text(key, request_json(address=False, body=False))
    relay.take_events()
    relay.driver.respond("r1", Response(body=b""), relay.now)
    relay.run()
    text, *rest = relay.received(key)
    assert response_of(text)["body"] is False and rest == CLOSED
    relay.deliver(key)  # the relay's close reply and its TCP close
    relay.driver.connection_lost(key, relay.now)
    relay.run()
    assert key not in relay.aborted and key in relay.closed
    assert relay.take_events() == [] and relay.driver.http_requests == 0


def test_without_an_address_a_streamed_answer_is_collected_for_the_control_channel() -> None:
    relay, control = listening()
    relay.text(control, request_json(body=False, address=False))
    relay.take_events()
    before = set(relay.opens)
    driver = relay.driver
    assert driver.respond("r1", Response(body=iter(())), relay.now) == control
    driver.send_body("r1", b"ab", relay.now)
    driver.send_body("r1", b"cd", relay.now)
    relay.run()
    assert relay.received(control) == []  # nothing until the end
    driver.end_response("r1", relay.now)
    relay.run()
    text, body = relay.received(control)
    assert response_of(text)["body"] is True and body == BinaryFragment(b"abcd", True)
    assert relay.new_keys(before) == [] and driver.http_requests == 0


def test_a_refused_request_rendezvous_is_dropped_quietly() -> None:
    relay, control = listening()
    before = set(relay.opens)
    relay.text(control, pointer_json())
    (key,) = relay.new_keys(before)
    relay.open(key, accept=False)
    relay.peers[key].reject(410, "Gone")
    relay.deliver(key)
    assert relay.take_events() == [] and relay.driver.http_requests == 0


def test_a_body_still_due_on_the_lost_control_channel_cancels_the_request() -> None:
    relay, control = listening()
    relay.text(control, request_json(body=True))  # its body never comes
    relay.take_events()
    before = set(relay.opens)
    relay.driver.respond("r1", Response(body=iter(())), relay.now)  # on a rendezvous
    relay.run()
    (key,) = relay.new_keys(before)
    relay.open(key)
    relay.take_events()
    relay.peers[control].send_close(1011, "relay restarting")
    relay.deliver(control)
    cancelled = [e for e in relay.take_events() if isinstance(e, HttpRequestCancelled)]
    assert [c.request_id for c in cancelled] == ["r1"]
    assert key in relay.aborted


def test_a_body_less_answer_keeps_its_content_length_for_head() -> None:
    from hyco_proto.drivers.http import Response, response_text

    head = json.loads(response_text("r1", Response(200, {"Content-Length": "42"}, b""),
                                    body=False))["response"]
    assert head["responseHeaders"] == {"Content-Length": "42"} and head["body"] is False
    full = json.loads(response_text("r2", Response(200, {"Content-Length": "42"}, b"x" * 42),
                                    body=True))["response"]
    assert "Content-Length" not in full["responseHeaders"]
