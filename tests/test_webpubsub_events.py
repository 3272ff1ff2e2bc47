"""Upstream event handlers: the CloudEvents requests, the answers, and the dispatcher's rules
(abuse protection first, one connection's events in order, timeouts, connection state)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest

from hyco_proto.service.webpubsub_events import EventDispatcher, OutboundCall
from hyco_proto.webpubsub.events import (
    EventHandler,
    event_request,
    origin_of,
    parse_connect_answer,
    parse_user_event_answer,
    validation_passed,
    validation_request,
)
from hyco_proto.webpubsub.messages import BinaryData, JsonData, TextData

KEY = "k" * 44
ORIGIN = "127.0.0.1:8080"
T0 = 1_800_000_000.0
ALLOW = [("WebHook-Allowed-Origin", "*")]


def headers_of(call: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in call.headers}


# -- the handler settings -----------------------------------------------------------------------

def test_handler_url_template_and_event_selection() -> None:
    handler = EventHandler("http://localhost:7071/{hub}/{category}/{event}",
                           user_events="message, chat", system_events=frozenset({"connect"}))
    assert handler.url("my hub", "connect", "system") == \
        "http://localhost:7071/my%20hub/system/connect"
    assert handler.takes_user_event("chat") and not handler.takes_user_event("other")
    assert handler.takes_system_event("connect") and not handler.takes_system_event("connected")
    assert EventHandler("http://h/x").takes_user_event("anything")
    assert not EventHandler("http://h/x", user_events="").takes_user_event("anything")


@pytest.mark.parametrize("template, message", [
    ("ftp://h/x", "not an http:// or https://"),
    ("http:///nohost", "not an http:// or https://"),
    ("http://h/{nope}", "unknown placeholder {nope}"),
])
def test_bad_handler_settings_say_what_is_wrong(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        EventHandler(template)


def test_unknown_system_event_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown system events"):
        EventHandler("http://h/x", system_events=frozenset({"conect"}))


# -- requests ---------------------------------------------------------------------------------

def test_user_event_request_is_a_binary_mode_cloudevent() -> None:
    handler = EventHandler("http://h:1/api/{hub}")
    call = event_request(handler, hub="chat", event="message", connection_id="c1",
                         user_id="alice", keys=[KEY], request_origin=ORIGIN, event_id="e1",
                         now=T0, subprotocol="json.webpubsub.azure.v1",
                         states={"n": 1}, data=JsonData({"a": [1, 2]}))
    h = headers_of(call)
    assert (call.method, call.url) == ("POST", "http://h:1/api/chat")
    assert h["content-type"] == "application/json"
    assert json.loads(call.body) == {"a": [1, 2]}
    assert h["ce-type"] == "azure.webpubsub.user.message"
    assert h["ce-specversion"] == "1.0" and h["ce-awpsversion"] == "1.0"
    assert (h["ce-hub"], h["ce-connectionid"], h["ce-userid"], h["ce-eventname"]) == (
        "chat", "c1", "alice", "message")
    assert h["ce-source"] == "/hubs/chat/client/c1" and h["ce-id"] == "e1"
    assert h["ce-time"].startswith("2027-01-15T") and h["ce-time"].endswith("Z")
    assert h["webhook-request-origin"] == ORIGIN
    expected = hmac.new(KEY.encode(), b"c1", hashlib.sha256).hexdigest()
    assert h["ce-signature"] == f"sha256={expected}"
    assert json.loads(base64.b64decode(h["ce-connectionstate"])) == {"n": 1}


@pytest.mark.parametrize("data, content_type, body", [
    (TextData("héllo"), "text/plain; charset=utf-8", "héllo".encode()),
    (BinaryData(b"\x00\xff"), "application/octet-stream", b"\x00\xff"),
])
def test_user_event_body_per_data_type(data: Any, content_type: str, body: bytes) -> None:
    call = event_request(EventHandler("http://h/x"), hub="h", event="e", connection_id="c",
                         user_id=None, keys=[KEY], request_origin=ORIGIN, event_id="1",
                         now=T0, data=data)
    assert headers_of(call)["content-type"] == content_type and call.body == body
    assert "ce-userid" not in headers_of(call)


def test_system_event_request() -> None:
    call = event_request(EventHandler("http://h/{event}"), hub="h", event="disconnected",
                         connection_id="c", user_id="u", keys=[KEY], request_origin=ORIGIN,
                         event_id="1", now=T0, system={"reason": "bye"})
    assert call.url == "http://h/disconnected"
    assert headers_of(call)["ce-type"] == "azure.webpubsub.sys.disconnected"
    assert json.loads(call.body) == {"reason": "bye"}


def test_validation_handshake() -> None:
    call = validation_request("http://h:9/x", ORIGIN)
    assert call.method == "OPTIONS" and headers_of(call)["webhook-request-origin"] == ORIGIN
    assert validation_passed(200, ALLOW, ORIGIN)
    assert validation_passed(200, [("webhook-allowed-origin", "a, 127.0.0.1:8080")], ORIGIN)
    assert not validation_passed(200, [("WebHook-Allowed-Origin", "other:1")], ORIGIN)
    assert not validation_passed(200, [], ORIGIN)
    assert not validation_passed(404, ALLOW, ORIGIN)
    assert origin_of("HTTP://Host/x") == "http://host:80"
    assert origin_of("https://h:8443/x?q") == "https://h:8443"


# -- answers ----------------------------------------------------------------------------------

def test_connect_answers() -> None:
    assert parse_connect_answer(204, [], b"").accepted
    ok = parse_connect_answer(200, [], json.dumps({
        "userId": "bob", "groups": ["g"], "roles": ["webpubsub.sendToGroup"],
        "subprotocol": "json.webpubsub.azure.v1"}).encode())
    assert (ok.accepted, ok.user_id, ok.groups, ok.roles, ok.subprotocol) == (
        True, "bob", ("g",), ("webpubsub.sendToGroup",), "json.webpubsub.azure.v1")
    refused = parse_connect_answer(401, [], b"no such user\r\nX-Forged: 1")
    assert (refused.accepted, refused.status) == (False, 401)
    assert "\r" not in refused.reason and "\n" not in refused.reason
    assert parse_connect_answer(503, [], b"").status == 500
    broken = parse_connect_answer(200, [], b'{"groups": "g"}')
    assert (broken.accepted, broken.status) == (False, 500)
    assert "groups must be an array" in broken.reason
    state = base64.b64encode(b'{"a":1}').decode()
    assert parse_connect_answer(204, [("ce-connectionState", state)], b"").states == {"a": 1}


def test_user_event_answers() -> None:
    text = parse_user_event_answer(200, [("Content-Type", "text/plain; charset=utf-8")], b"hi")
    assert text.ok and text.data == TextData("hi")
    js = parse_user_event_answer(200, [("Content-Type", "application/json")], b'{"x":1}')
    assert js.data == JsonData({"x": 1})
    binary = parse_user_event_answer(200, [("Content-Type", "application/octet-stream")], b"\1")
    assert binary.data == BinaryData(b"\1")
    assert parse_user_event_answer(204, [], b"").data is None
    failed = parse_user_event_answer(500, [], b"boom")
    assert not failed.ok and failed.reason == "boom"


# -- the dispatcher ---------------------------------------------------------------------------

class Upstream:
    """Answers the dispatcher's calls like a handler would."""

    def __init__(self, dispatcher: EventDispatcher) -> None:
        self.d = dispatcher
        self.seen: list[OutboundCall] = []

    def take(self) -> list[OutboundCall]:
        calls = self.d.calls_to_make()
        self.seen.extend(calls)
        return calls

    def answer(self, call: OutboundCall, status: int = 200,
               headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> None:
        self.d.answered(T0, call.call_id, status, headers or [], body)


def dispatcher(**kw: Any) -> EventDispatcher:
    handler = EventHandler("http://app:3000/events/{event}",
                           system_events=frozenset({"connect", "connected", "disconnected"}),
                           **kw)
    return EventDispatcher({"chat": [handler]}, [KEY])


def connect(d: EventDispatcher, decided: list[Any]) -> None:
    d.connect(T0, hub="chat", connection_id="c1", user_id="u", request_origin=ORIGIN,
              claims={"sub": ["u"]}, query={"q": ["1"]}, headers={"Host": [ORIGIN]},
              subprotocols=["json.webpubsub.azure.v1"],
              decide=lambda now, answer: decided.append(answer))


def test_abuse_protection_runs_once_before_the_first_event() -> None:
    d = dispatcher()
    up = Upstream(d)
    decided: list[Any] = []
    connect(d, decided)
    (options,) = up.take()
    assert options.method == "OPTIONS" and options.url == "http://app:3000/events/connect"
    up.answer(options, headers=ALLOW)
    (event,) = up.take()
    assert headers_of(event)["ce-type"] == "azure.webpubsub.sys.connect"
    body = json.loads(event.body)
    assert body["claims"] == {"sub": ["u"]} and body["query"] == {"q": ["1"]}
    assert body["subprotocols"] == ["json.webpubsub.azure.v1"]
    up.answer(event, 200, body=b'{"userId": "x"}')
    assert decided[0].accepted and decided[0].user_id == "x"
    # The origin is trusted from now on: the next event goes straight out.
    d.connected(T0, hub="chat", connection_id="c1", user_id="x", subprotocol=None,
                request_origin=ORIGIN)
    (connected,) = up.take()
    assert connected.method == "POST"


def test_failed_abuse_protection_refuses_the_connect_with_500() -> None:
    d = dispatcher()
    up = Upstream(d)
    decided: list[Any] = []
    connect(d, decided)
    (options,) = up.take()
    up.answer(options, 200, headers=[("WebHook-Allowed-Origin", "elsewhere.example")])
    assert up.take() == []
    assert not decided[0].accepted and decided[0].status == 500
    assert "abuse protection failed for http://app:3000" in decided[0].reason
    assert "'elsewhere.example', which does not allow 127.0.0.1:8080" in decided[0].reason


def test_one_connections_events_go_in_order_and_state_is_kept() -> None:
    d = dispatcher()
    up = Upstream(d)
    d.connected(T0, hub="chat", connection_id="c1", user_id=None, subprotocol=None,
                request_origin=ORIGIN)
    replies: list[Any] = []
    d.user_event(T0, hub="chat", connection_id="c1", event="message", data=TextData("1"),
                 reply=lambda now, data: replies.append(data))
    d.user_event(T0, hub="chat", connection_id="c1", event="message", data=TextData("2"),
                 reply=lambda now, data: replies.append(data))
    d.disconnected(T0, hub="chat", connection_id="c1", reason="gone")
    d.disconnected(T0, hub="chat", connection_id="c1", reason="twice")  # ignored
    (options,) = up.take()
    up.answer(options, headers=ALLOW)
    order = []
    state = base64.b64encode(b'{"seen":1}').decode()
    for _ in range(4):
        calls = up.take()
        assert len(calls) == 1, "one event of a connection at a time"
        call = calls[0]
        h = headers_of(call)
        order.append((h["ce-type"], call.body))
        if h["ce-type"] == "azure.webpubsub.user.message" and call.body == b"1":
            up.answer(call, 200, [("Content-Type", "text/plain"),
                                  ("ce-connectionState", state)], b"echo 1")
        elif h["ce-type"] == "azure.webpubsub.user.message":
            assert json.loads(base64.b64decode(h["ce-connectionstate"])) == {"seen": 1}
            up.answer(call, 204)
        else:
            up.answer(call, 200)
    assert [t for t, _ in order] == ["azure.webpubsub.sys.connected",
                                     "azure.webpubsub.user.message",
                                     "azure.webpubsub.user.message",
                                     "azure.webpubsub.sys.disconnected"]
    assert json.loads(order[3][1]) == {"reason": "gone"}
    assert replies == [TextData("echo 1")]
    assert up.take() == []
    # Forgotten: a later user event of that connection is not sent.
    assert not d.user_event(T0, hub="chat", connection_id="c1", event="message",
                            data=TextData("3"), reply=lambda now, data: None)


def test_a_call_without_answer_fails_at_its_deadline() -> None:
    d = dispatcher()
    up = Upstream(d)
    decided: list[Any] = []
    connect(d, decided)
    (options,) = up.take()
    assert options.method == "OPTIONS"
    assert d.next_deadline() == T0 + 8.0
    d.handle_timer(T0 + 7.9)
    assert decided == []
    d.handle_timer(T0 + 8.0)
    assert decided[0].status == 500 and "no answer within 8 s" in decided[0].reason
    assert d.next_deadline() is None


def test_hubs_without_handlers_are_not_tracked() -> None:
    d = EventDispatcher({}, [KEY])
    d.connected(T0, hub="other", connection_id="c", user_id=None, subprotocol=None,
                request_origin=ORIGIN)
    assert not d.takes_connect("other")
    assert not d.user_event(T0, hub="other", connection_id="c", event="message",
                            data=TextData("x"), reply=lambda now, data: None)
    assert d.calls_to_make() == []
