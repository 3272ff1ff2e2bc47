"""HTTP over Hybrid Connections in the sans-IO relay service (hybrid-connections-wire §3.2, §3.3).

The service is fed bytes directly: senders are raw HTTP bytes, the listener is our own
``ClientConnection`` on its control channel and on request rendezvous, so every JSON message and
frame the service writes can be checked exactly.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import h11
import pytest

from hyco_proto.drivers.connection import ClientConnection, Opened, Refused
from hyco_proto.sas import create_relay_token
from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY, ServiceConfig
from hyco_proto.service.handler import ConnectionKind
from hyco_proto.service.router import RelayService
from hyco_proto.websocket import BinaryFragment, BinaryMessage, ConnectionClosed, TextMessage

NOW = 1_700_000_000.0
BASE = "ws://127.0.0.1:9090"


def token(uri: str, key: str = DEVELOPMENT_KEY) -> str:
    return create_relay_token(uri, DEFAULT_RULE_NAME, key, 3600, now=NOW)


class Net:
    """The service plus byte pipes for every connection, pumped until quiet."""

    def __init__(self, **options: Any) -> None:
        self.svc = RelayService(ServiceConfig(), **options)
        self.now = NOW
        self.clients: dict[int, WsClient] = {}
        self.raw: dict[int, bytearray] = {}
        self.closed: set[int] = set()

    def connect_raw(self, data: bytes = b"") -> int:
        conn = self.svc.connection_made(self.now, ("10.0.0.7", 4321))
        self.raw[conn] = bytearray()
        if data:
            self.send(conn, data)
        return conn

    def send(self, conn: int, data: bytes) -> None:
        self.svc.receive_data(self.now, conn, data)
        self.pump()

    def eof(self, conn: int) -> None:
        self.svc.receive_eof(self.now, conn)
        self.svc.connection_lost(self.now, conn)
        self.pump()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        deadline = self.svc.next_deadline()
        if deadline is not None and deadline <= self.now:
            self.svc.handle_timer(self.now)
        self.pump()

    def pump(self) -> None:
        for _ in range(1000):
            out = self.svc.data_to_send()
            self.svc.reading_changes()
            if not out:
                return
            for conn, data in out:
                if not data:
                    if conn not in self.closed:
                        self.closed.add(conn)
                        client = self.clients.get(conn)
                        if client is not None:
                            client.conn.receive_eof()
                            client.collect()
                        self.svc.connection_lost(self.now, conn)
                elif conn in self.clients:
                    self.clients[conn].conn.receive_data(data)
                    self.clients[conn].collect()
                else:
                    self.raw[conn] += data
        raise AssertionError("the service never went quiet")


class WsClient:
    """A WebSocket client of the service (a listener's control channel or rendezvous)."""

    def __init__(self, net: Net, url: str, headers: list[tuple[str, str]] | None = None,
                 *, stream: bool = False) -> None:
        self.net = net
        self.conn = ClientConnection.from_url(url, headers=headers or [])
        self.conn.stream_binary = stream
        self.id = net.svc.connection_made(net.now, ("127.0.0.1", 5000))
        self.events: list[object] = []
        net.clients[self.id] = self
        self.flush()

    def collect(self) -> None:
        self.events += self.conn.events_received()
        self.flush(pump=False)

    def flush(self, pump: bool = True) -> None:
        for chunk in self.conn.data_to_send():
            if chunk:
                self.net.svc.receive_data(self.net.now, self.id, chunk)
        if pump:
            self.net.pump()

    def texts(self) -> list[dict[str, Any]]:
        return [json.loads(e.data) for e in self.events if isinstance(e, TextMessage)]

    def take(self) -> list[object]:
        events, self.events = self.events, []
        return events


def listen(net: Net, hc: str = "myhc") -> WsClient:
    uri = f"{BASE}/$hc/{hc}?sb-hc-action=listen"
    client = WsClient(net, uri, [("ServiceBusAuthorization", token(uri))])
    assert isinstance(client.events[0], Opened)
    client.take()
    return client


def request_bytes(method: str, target: str, *, body: bytes = b"",
                  headers: list[tuple[str, str]] | None = None, auth: bool = True,
                  chunked: bool = False) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1:9090"]
    if auth:
        lines.append(f"ServiceBusAuthorization: {token(BASE + '/myhc')}")
    lines += [f"{k}: {v}" for k, v in headers or []]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if chunked else head + body


def parse_response(raw: bytes, method: str = "GET") -> tuple[h11.Response, bytes, bool]:
    """(head, body, complete) of the first response in ``raw``."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(bytes(raw))
    head: h11.Response | None = None
    body = bytearray()
    while True:
        event = client.next_event()
        if isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return head, bytes(body), True
        else:
            assert head is not None, f"no complete response head in {bytes(raw)[:200]!r}"
            return head, bytes(body), False


def header(head: h11.Response, name: str) -> list[str]:
    return [v.decode() for k, v in head.headers if k == name.lower().encode()]


def respond(control: WsClient, request_id: str, status: Any = 200, *, body: bytes | None = None,
            headers: dict[str, str] | None = None, description: str | None = None) -> None:
    response: dict[str, Any] = {"requestId": request_id, "statusCode": status,
                                "responseHeaders": headers or {}, "body": body is not None}
    if description is not None:
        response["statusDescription"] = description
    control.conn.send_text(json.dumps({"response": response}))
    if body is not None:
        control.conn.send_binary(body)
    control.flush()


# -- the control channel -------------------------------------------------------------------


def test_small_post_goes_on_the_control_channel_with_its_body_right_behind() -> None:
    net = Net()
    control = listen(net)
    sender = net.connect_raw(request_bytes(
        "POST", "/myhc/a/b?x=1&sb-hc-token=zz&sb-hc-id=7&y=%2B", body=b"0123456789",
        headers=[("X-Multi", "one"), ("x-multi", "two"), ("Connection", "keep-alive, X-Hop"),
                 ("X-Hop", "gone"), ("Keep-Alive", "timeout=5"), ("Via", "1.0 proxy")]))
    events = control.take()
    assert isinstance(events[0], TextMessage) and isinstance(events[1], BinaryMessage)
    assert len(events) == 2 and events[1].data == b"0123456789"
    request = json.loads(events[0].data)["request"]
    assert list(request) == ["address", "id", "requestTarget", "method", "remoteEndpoint",
                             "requestHeaders", "body"]
    assert request["address"].startswith(f"{BASE}/$hc/myhc?sb-hc-action=request&sb-hc-id="
                                          f"{request['id']}&sb-hc-rendezvous=")
    assert request["requestTarget"] == "/myhc/a/b?x=1&y=%2B"
    assert request["method"] == "POST" and request["body"] is True
    assert request["remoteEndpoint"] == {"address": "10.0.0.7", "port": 4321}
    headers = {k.lower(): v for k, v in request["requestHeaders"].items()}
    assert headers["x-multi"] == "one, two"
    assert headers["via"] == "1.0 proxy, 1.1 localhost"
    for gone in ("servicebusauthorization", "connection", "keep-alive", "x-hop", "host",
                 "content-length", "transfer-encoding"):
        assert gone not in headers
    respond(control, request["id"], 201, body=b"made", headers={"Content-Type": "text/plain",
                                                                "Set-Cookie": "a=1"})
    head, body, complete = parse_response(net.raw[sender])
    assert complete and (head.status_code, head.reason, body) == (201, b"Created", b"made")
    assert header(head, "content-length") == ["4"]
    assert header(head, "via") == ["1.1 localhost"]
    assert header(head, "set-cookie") == ["a=1"]
    assert sender not in net.closed, "keep-alive: the sender may send another request"


def test_get_without_body_says_body_false_and_string_status_and_default_phrase() -> None:
    net = Net()
    control = listen(net)
    sender = net.connect_raw(request_bytes("GET", "/myhc"))
    (request,) = [m["request"] for m in control.texts()]
    assert request["body"] is False and request["requestTarget"] == "/myhc"
    control.take()
    respond(control, request["id"], "200", body=b"ok")  # the doc's string statusCode (§3.3)
    head, body, complete = parse_response(net.raw[sender])
    assert complete and (head.status_code, head.reason, body) == (200, b"OK", b"ok")


def test_head_and_204_ignore_the_stray_empty_binary_and_the_connection_stays_usable() -> None:
    net = Net()
    control = listen(net)
    sender = net.connect_raw(request_bytes("HEAD", "/myhc/h"))
    request_id = control.texts()[0]["request"]["id"]
    control.take()
    respond(control, request_id, 200, headers={"Content-Length": "42"})
    control.conn.send_binary(b"")  # hyco-https quirk 2: a stray empty binary after body:false
    control.flush()
    head, body, complete = parse_response(net.raw[sender], "HEAD")
    assert complete and head.status_code == 200 and body == b""
    assert header(head, "content-length") == ["42"]
    net.raw[sender].clear()
    net.send(sender, request_bytes("DELETE", "/myhc/d"))
    request_id = control.texts()[0]["request"]["id"]
    control.take()
    respond(control, request_id, 204, body=b"")  # body:true with an empty binary (quirk 1)
    head, body, complete = parse_response(net.raw[sender], "DELETE")
    assert complete and head.status_code == 204 and body == b""
    assert net.svc.kind(control.id) is ConnectionKind.LISTENER


def test_no_listener_is_502_and_a_bad_token_401_never_reaching_the_listener() -> None:
    net = Net()
    sender = net.connect_raw(request_bytes("GET", "/myhc"))
    head, body, _ = parse_response(net.raw[sender])
    assert head.status_code == 502 and b"no listener is connected" in body
    assert sender in net.closed
    control = listen(net)
    bad = net.connect_raw(request_bytes("GET", "/myhc", auth=False,
                                        headers=[("ServiceBusAuthorization",
                                                  token(BASE + "/myhc", "wrong"))]))
    head, _, _ = parse_response(net.raw[bad])
    assert head.status_code == 401 and b"TrackingId" in head.reason
    assert control.events == []


@pytest.mark.parametrize(("headers", "query", "passes", "listener_sees"), [
    ([("Authorization", "{token}")], "", True, None),  # used as the token: stripped
    ([("Authorization", "Bearer app"), ("ServiceBusAuthorization", "{token}")], "", True,
     "Bearer app"),  # not used: passed on untouched (§2.5)
    ([("Authorization", "Bearer app")], "sb-hc-token={qtoken}", True, "Bearer app"),
    ([("Authorization", "Bearer app")], "", False, None),  # used, and not a valid token
])
def test_authorization_header_only_when_the_others_are_absent(
        headers: list[tuple[str, str]], query: str, passes: bool,
        listener_sees: str | None) -> None:
    from urllib.parse import quote

    net = Net()
    control = listen(net)
    sas = token(BASE + "/myhc")
    filled = [(k, v.format(token=sas)) for k, v in headers]
    target = "/myhc" + ("?" + query.format(qtoken=quote(sas, safe="")) if query else "")
    sender = net.connect_raw(request_bytes("GET", target, auth=False, headers=filled))
    if not passes:
        assert parse_response(net.raw[sender])[0].status_code == 401
        return
    request = control.texts()[0]["request"]
    seen = {k.lower(): v for k, v in request["requestHeaders"].items()}
    assert seen.get("authorization") == listener_sees
    assert "servicebusauthorization" not in seen
    assert "sb-hc-token" not in request["requestTarget"]


# -- rendezvous ------------------------------------------------------------------------------


def open_rendezvous(net: Net, address: str) -> WsClient:
    rendezvous = WsClient(net, address, stream=True)
    assert isinstance(rendezvous.events[0], Opened), rendezvous.events
    rendezvous.events.pop(0)
    return rendezvous


def test_big_post_goes_by_pointer_and_streams_on_the_rendezvous() -> None:
    net = Net()
    control = listen(net)
    body = bytes(range(256)) * 1024  # 256 KiB, more than the control channel takes
    head = request_bytes("POST", "/myhc/up", body=body)[:-len(body)]
    sender = net.connect_raw(head + body[:1000])
    (pointer,) = [m["request"] for m in control.texts()]
    assert set(pointer) == {"address", "id"}, "the pointer carries nothing else (§3.2 B)"
    rendezvous = open_rendezvous(net, pointer["address"])
    events = rendezvous.take()
    request = json.loads(events[0].data)["request"]  # type: ignore[attr-defined]
    assert "address" not in request and request["body"] is True
    assert request["id"] == pointer["id"] and request["method"] == "POST"
    assert [e.data for e in events[1:]] == [body[:1000]]  # type: ignore[attr-defined]
    net.send(sender, body[1000:100_000])
    net.send(sender, body[100_000:])
    fragments = [e for e in events[1:] + rendezvous.take() if isinstance(e, BinaryFragment)]
    assert len(fragments) >= 3, "the body is streamed as it arrives, not held whole"
    assert fragments[-1].fin and not any(f.fin for f in fragments[:-1])
    received = b"".join(f.data for f in fragments)
    assert hashlib.sha256(received).digest() == hashlib.sha256(body).digest()


def test_whole_big_body_before_the_rendezvous_and_a_streamed_response() -> None:
    net = Net()
    control = listen(net)
    body = b"z" * 70_000
    sender = net.connect_raw(request_bytes("PUT", "/myhc/up", body=body))
    pointer = control.texts()[0]["request"]
    rendezvous = open_rendezvous(net, pointer["address"])
    events = rendezvous.take()
    assert isinstance(events[0], TextMessage)
    data = b"".join(e.data for e in events if isinstance(e, BinaryFragment))
    assert data == body and isinstance(events[-1], BinaryFragment) and events[-1].fin
    # The response streams: the sender has the head and the first chunk before the end.
    rendezvous.conn.send_text(json.dumps({"response": {
        "requestId": pointer["id"], "statusCode": 200,
        "responseHeaders": {"Content-Type": "text/event-stream"}, "body": True}}))
    rendezvous.conn.send_binary_part(b"data: one\n\n", False)
    rendezvous.flush()
    head, first, complete = parse_response(net.raw[sender], "PUT")
    assert head.status_code == 200 and first == b"data: one\n\n" and not complete
    assert header(head, "transfer-encoding") == ["chunked"]
    rendezvous.conn.send_binary_part(b"data: two\n\n", False)
    rendezvous.conn.send_binary_part(b"", True)
    rendezvous.flush()
    head, whole, complete = parse_response(net.raw[sender], "PUT")
    assert complete and whole == b"data: one\n\ndata: two\n\n"
    closed = [e for e in rendezvous.take() if isinstance(e, ConnectionClosed)]
    assert closed and closed[0].code == 1000, "the service closes the rendezvous after it"


def test_chunked_upload_goes_by_rendezvous() -> None:
    net = Net()
    control = listen(net)
    sender = net.connect_raw(request_bytes("POST", "/myhc/c", chunked=True))
    pointer = control.texts()[0]["request"]
    assert "method" not in pointer
    rendezvous = open_rendezvous(net, pointer["address"])
    net.send(sender, b"5\r\nhello\r\n0\r\n\r\n")
    fragments = [e for e in rendezvous.take() if isinstance(e, BinaryFragment)]
    assert b"".join(f.data for f in fragments) == b"hello" and fragments[-1].fin


def test_control_channel_request_answered_on_a_rendezvous_the_listener_opens() -> None:
    net = Net()
    control = listen(net)
    sender = net.connect_raw(request_bytes("GET", "/myhc/big"))
    request = control.texts()[0]["request"]
    rendezvous = open_rendezvous(net, request["address"])
    assert rendezvous.take() == [], "the request is not sent again"
    rendezvous.conn.send_text(json.dumps({"response": {
        "requestId": request["id"], "statusCode": 200, "body": True}}))
    rendezvous.conn.send_binary(b"x" * 200_000)
    rendezvous.flush()
    head, body, complete = parse_response(net.raw[sender])
    assert complete and body == b"x" * 200_000 and head.status_code == 200


def test_sender_leaving_mid_body_cancels_at_the_listener_with_1001() -> None:
    net = Net()
    control = listen(net)
    sender = net.connect_raw(request_bytes("POST", "/myhc/c", chunked=True))
    rendezvous = open_rendezvous(net, control.texts()[0]["request"]["address"])
    net.send(sender, b"5\r\nhello\r\n")
    net.eof(sender)
    closed = [e for e in rendezvous.take() if isinstance(e, ConnectionClosed)]
    assert closed and closed[0].code == 1001
    assert net.svc.exchange(control.texts()[0]["request"]["id"]) is None


def test_rendezvous_address_is_single_use_and_only_for_requests_in_flight() -> None:
    net = Net()
    control = listen(net)
    net.connect_raw(request_bytes("POST", "/myhc/c", chunked=True))
    address = control.texts()[0]["request"]["address"]
    open_rendezvous(net, address)
    again = WsClient(net, address)
    assert isinstance(again.events[0], Refused) and again.events[0].response.status == 403
    forged = WsClient(net, f"{BASE}/$hc/myhc?sb-hc-action=request&sb-hc-id=nope")
    assert isinstance(forged.events[0], Refused)


# -- failures ----------------------------------------------------------------------------------


def test_listener_that_never_answers_gets_504_after_the_timeout() -> None:
    net = Net(http_timeout=60.0)
    listen(net)
    sender = net.connect_raw(request_bytes("GET", "/myhc"))
    net.advance(59.0)
    assert net.raw[sender] == b""
    net.advance(1.5)
    head, _, _ = parse_response(net.raw[sender])
    assert head.status_code == 504
    assert head.reason == (b"The request was routed to the listener but the listener did "
                           b"not respond in the required time.")
    assert sender in net.closed


def test_stalled_streamed_response_is_cut_after_the_idle_timeout() -> None:
    net = Net(http_timeout=5.0)
    control = listen(net)
    sender = net.connect_raw(request_bytes("GET", "/myhc"))
    request = control.texts()[0]["request"]
    rendezvous = open_rendezvous(net, request["address"])
    rendezvous.conn.send_text(json.dumps({"response": {
        "requestId": request["id"], "statusCode": 200, "body": True}}))
    rendezvous.conn.send_binary_part(b"partial", False)
    rendezvous.flush()
    net.advance(4.0)
    assert sender not in net.closed
    net.advance(1.5)
    assert sender in net.closed
    _, body, complete = parse_response(net.raw[sender])
    assert body == b"partial" and not complete


@pytest.mark.parametrize("message", [
    '{"response":{"requestId":"{id}","statusCode":"abc"}}',
    '{"response":{"requestId":"{id}","statusCode":101}}',
])
def test_malformed_response_is_502_and_the_listener_keeps_serving(message: str) -> None:
    net = Net()
    control = listen(net)
    sender = net.connect_raw(request_bytes("GET", "/myhc/1"))
    request_id = control.texts()[0]["request"]["id"]
    control.take()
    control.conn.send_text(message.replace("{id}", request_id))
    control.flush()
    head, _, _ = parse_response(net.raw[sender])
    assert head.status_code == 502
    assert b"malformed" in head.reason or b"final status" in head.reason
    assert net.svc.kind(control.id) is ConnectionKind.LISTENER
    second = net.connect_raw(request_bytes("GET", "/myhc/2"))
    respond(control, control.texts()[0]["request"]["id"], 200, body=b"fine")
    assert parse_response(net.raw[second])[1] == b"fine"


def test_listener_gone_before_answering_is_502() -> None:
    net = Net()
    control = listen(net)
    sender = net.connect_raw(request_bytes("GET", "/myhc"))
    control.conn.send_close(1000)
    control.flush()
    head, _, _ = parse_response(net.raw[sender])
    assert head.status_code == 502


def test_late_or_foreign_responses_are_dropped() -> None:
    net = Net(http_timeout=1.0)
    control = listen(net)
    other = listen(net)
    sender = net.connect_raw(request_bytes("GET", "/myhc", headers=[
        ("Microsoft-Relay-AllowedListeners", "x")]))
    assert parse_response(net.raw[sender])[0].status_code == 502  # pinned to nobody
    sender = net.connect_raw(request_bytes("GET", "/myhc"))
    owner, stranger = (control, other) if control.texts() else (other, control)
    request_id = owner.texts()[0]["request"]["id"]
    respond(stranger, request_id, 200, body=b"not yours")
    assert net.raw[sender] == b""
    net.advance(1.5)
    assert parse_response(net.raw[sender])[0].status_code == 504
    respond(owner, request_id, 200, body=b"too late")
    assert net.svc.kind(owner.id) is ConnectionKind.LISTENER


def test_joined_set_cookie_values_reach_the_sender_as_separate_headers() -> None:
    net = Net()
    control = listen(net)
    sender = net.connect_raw(request_bytes("GET", "/myhc"))
    request_id = control.texts()[0]["request"]["id"]
    respond(control, request_id, 200, body=b"", headers={
        "Set-Cookie": "a=1; Path=/, b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT"})
    head, _, _ = parse_response(net.raw[sender])
    assert header(head, "set-cookie") == ["a=1; Path=/",
                                          "b=2; Expires=Wed, 21 Oct 2037 07:28:00 GMT"]


@pytest.mark.parametrize("headers", [{"X-Bad": "a\r\nInjected: yes"}, {"Bad Name": "v"}])
def test_response_head_http_cannot_carry_is_502(headers: dict[str, str]) -> None:
    net = Net()
    control = listen(net)
    sender = net.connect_raw(request_bytes("GET", "/myhc"))
    respond(control, control.texts()[0]["request"]["id"], 200, body=b"x", headers=headers)
    head, body, _ = parse_response(net.raw[sender])
    assert head.status_code == 502 and b"not valid HTTP" in body
    assert b"Injected" not in bytes(net.raw[sender]).split(b"\r\n\r\n")[0]
    assert net.svc.kind(control.id) is ConnectionKind.LISTENER


def test_plain_http_to_the_websocket_address_says_where_relayed_http_goes() -> None:
    net = Net()
    sender = net.connect_raw(request_bytes("GET", "/$hc/myhc/x"))
    head, body, _ = parse_response(net.raw[sender])
    assert head.status_code == 426 and b"go to /myhc/x without $hc" in body
    assert sender in net.closed


def test_relayed_http_is_counted_in_status_and_metrics() -> None:
    net = Net()
    control = listen(net)
    sender = net.connect_raw(request_bytes("POST", "/myhc", body=b"12345"))
    respond(control, control.texts()[0]["request"]["id"], 200, body=b"abc")
    assert parse_response(net.raw[sender])[2]
    control.conn.send_close(1000)
    control.flush()
    listen(net)  # a second listener: two opened, one connected
    status = net.connect_raw(b"GET /$status HTTP/1.1\r\nHost: localhost\r\n\r\n")
    counters = json.loads(parse_response(net.raw[status])[1])["counters"]
    assert (counters["http_requests"], counters["http_bytes_relayed"]) == (1, 8)
    assert (counters["listeners"], counters["listeners_opened"]) == (1, 2)
    metrics = net.connect_raw(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
    text = parse_response(net.raw[metrics])[1].decode()
    assert "hyco_http_requests_total 1\n" in text
    assert "hyco_http_bytes_relayed_total 8\n" in text
    assert "hyco_listeners_total 2\n" in text


def test_request_rendezvous_must_use_its_own_hybrid_connection() -> None:
    net = Net()
    control = listen(net)
    listen(net, "otherhc")
    net.connect_raw(request_bytes("POST", "/myhc/c", chunked=True))
    address = control.texts()[0]["request"]["address"]
    elsewhere = WsClient(net, address.replace("/$hc/myhc?", "/$hc/otherhc?"))
    assert isinstance(elsewhere.events[0], Refused)
    assert elsewhere.events[0].response.status == 404  # as for an accept address
    open_rendezvous(net, address)  # the right address still works (the refusal took nothing)
