"""The live web view's sans-IO part: ``GET /`` (the page) and ``GET /$events`` (SSE snapshots).

The service runs on a ``MemoryNetwork`` (virtual clock); watchers are raw HTTP connections whose
bytes are parsed here (head, chunked framing, SSE events), so every byte the stream writes is
checked. The browser test is ``test_webview_browser.py``.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from typing import Any

from hyco_proto.adapters.asyncio import RelayServiceServer
from hyco_proto.frames import OP_BINARY, encode_frame
from hyco_proto.handshake import ClientHandshake
from hyco_proto.memory import MemoryNetwork
from hyco_proto.service import webview
from hyco_proto.service.config import ServiceConfig
from hyco_proto.service.router import RelayService
from hyco_proto.service.webpubsub import WebPubSubService
from hyco_proto.service.webview import HEARTBEAT, MAX_NESTED, MAX_ROWS, MAX_WATCHERS, TICK
from hyco_proto.service.webview_page import PAGE
from tests.procutil import Proc
from tests.relayutil import BASE, SEND, RawSender, raw_sender, start_echo_listener, token_for

KEY = "a-web-pubsub-access-key-for-tests-only-0123456789"


def network() -> MemoryNetwork:
    return MemoryNetwork(RelayService(ServiceConfig(), webpubsub=WebPubSubService(KEY)))


def request(net: MemoryNetwork, method: str, target: str, *, version: str = "1.1",
            extra: str = "") -> RawSender:
    client = RawSender(net)
    client.write(f"{method} {target} HTTP/{version}\r\nHost: 127.0.0.1:9090\r\n{extra}\r\n"
                 .encode())
    return client


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {raw[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """The payload of a chunked body so far, and whether its last chunk came."""
    out, pos = bytearray(), 0
    while True:
        end = body.find(b"\r\n", pos)
        if end < 0:
            return bytes(out), False
        size = int(body[pos:end], 16)
        if size == 0:
            return bytes(out), True
        chunk = body[end + 2 : end + 2 + size]
        assert len(chunk) == size and body[end + 2 + size : end + 4 + size] == b"\r\n"
        out += chunk
        pos = end + 4 + size


class Watcher:
    """A ``GET /$events`` stream read by the test."""

    def __init__(self, net: MemoryNetwork, *, version: str = "1.1") -> None:
        self.client = request(net, "GET", "/$events", version=version)
        self.status, self.headers, _ = split_response(self.client.raw())

    def stream(self) -> str:
        _, _, body = split_response(self.client.raw())
        if self.headers.get("transfer-encoding") == "chunked":
            body, _ = dechunk(body)
        return body.decode("utf-8")

    def events(self) -> list[tuple[str, str]]:
        """``(event, data)`` of every complete event; comments as ``(":", text)``."""
        out = []
        for block in self.stream().split("\n\n")[:-1]:
            name, data = "message", []
            for line in block.split("\n"):
                if line.startswith(":"):
                    out.append((":", line[1:].strip()))
                elif line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data.append(line[6:])
            if data:
                out.append((name, "\n".join(data)))
        return out

    def snapshots(self) -> list[dict[str, Any]]:
        return [json.loads(data) for name, data in self.events() if name == "snapshot"]

    def last(self) -> dict[str, Any]:
        snaps = self.snapshots()
        assert snaps, "no snapshot yet"
        return snaps[-1]


# -- the page ----------------------------------------------------------------------------------


def test_root_serves_the_self_contained_page() -> None:
    net = network()
    client = request(net, "GET", "/")
    status, headers, body = split_response(client.raw())
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert int(headers["content-length"]) == len(body) and body == PAGE
    assert "default-src 'none'" in headers["content-security-policy"]
    text = body.decode()
    assert 'new EventSource("$events")' in text
    # Its icon is an empty data: URL, so a browser asks for no /favicon.ico (which would be a
    # relayed HTTP request, refused); beyond it: no external address, no polling, no HTML
    # built from data.
    icon = '<link rel="icon" href="data:,">'
    assert text.count(icon) == 1
    text = text.replace(icon, "")
    assert not re.search(r"https?:|//[a-z]|\bsrc=|\bhref=|@import", text, re.I)
    for banned in ("fetch(", "XMLHttpRequest", "WebSocket", "sendBeacon", "import(",
                   "innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert banned not in text, banned
    # Its timers fetch nothing: one redraws the ages, one counts down to re-opening the stream
    # once the browser gave it up; the stream is its only request.
    assert re.findall(r"setInterval\([^)]*\)", text) == ["setInterval(showAges, 1000)"]
    assert re.findall(r"setTimeout\([^)]*\)", text) == ["setTimeout(countDown, 1000)"]
    assert text.count("new EventSource(") == 1


def test_root_on_the_webpubsub_port_and_head_and_other_methods() -> None:
    net = network()
    conn = net.service.connection_made(net.now, ("127.0.0.1", 1), service="webpubsub")
    net.service.receive_data(net.now, conn, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    raw = b"".join(data for cid, data in net.service.data_to_send() if cid == conn)
    assert split_response(raw)[0] == 200 and raw.endswith(PAGE)

    status, headers, body = split_response(request(net, "HEAD", "/").raw())
    assert (status, body) == (200, b"") and headers["content-length"] == str(len(PAGE))
    for method, target in (("POST", "/"), ("DELETE", "/$events"), ("PUT", "/$EVENTS/")):
        status, headers, _ = split_response(
            request(net, method, target, extra="Content-Length: 0\r\n").raw())
        assert status == 405 and headers["allow"] == "GET, HEAD", (method, target)
    # Those refusals are in the refusal log the web view shows.
    assert [r.status for r in net.service.refusal_log.recent] == [405, 405, 405]


def test_other_paths_are_still_relayed_http() -> None:
    net = network()
    # Relayed HTTP as before (no token: the relay's 401); /index.html is a hybrid connection.
    for target in ("/myhc", "/index.html", "/$eventsx"):
        status, headers, _ = split_response(request(net, "GET", target).raw())
        assert status == 401 and headers["x-hyco-rejected-by"] == "relay", target


# -- the event stream --------------------------------------------------------------------------


def test_stream_opens_with_a_snapshot() -> None:
    net = network()
    watcher = Watcher(net)
    assert watcher.status == 200
    assert watcher.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert watcher.headers["transfer-encoding"] == "chunked"
    assert watcher.headers["cache-control"] == "no-store"
    assert watcher.stream().startswith("retry: 2000\n\n")
    snap = watcher.last()
    assert snap["time"] == net.now == 1_700_000_000  # seconds since the epoch
    assert snap["hybrid_connections"] == [] and snap["pairs"] == [] and snap["requests"] == []
    assert snap["hubs"] == [] and snap["refusals"] == [] and snap["webpubsub"] is True
    assert snap["connections"] == {"watcher": 1}
    assert snap["counters"]["listeners"] == 0
    assert net.service.kind(watcher.client.conn_id).value == "watcher"  # type: ignore[union-attr]


def test_snapshot_shows_listeners_pairs_requests_hubs_and_refusals() -> None:
    net = network()
    watcher = Watcher(net)
    start = net.now
    start_echo_listener(net)
    sender = raw_sender(net)
    assert sender.accepted is not None
    sender.write(encode_frame(OP_BINARY, b"x" * 1000, masked=True))  # echoed: 1000 each way
    # A relayed HTTP request in flight to a listener (a bare control channel) that never
    # answers: 5 body bytes.
    api = f"{BASE}/$hc/api"
    mute = RawSender(net, ClientHandshake.from_url(
        f"{api}?sb-hc-action=listen", headers=[("ServiceBusAuthorization", token_for(net, api))]))
    net.pump()
    assert mute.accepted is not None
    http = RawSender(net)
    auth = token_for(net, "http://127.0.0.1:9090/api")
    http.write(f"POST /api/items HTTP/1.1\r\nHost: 127.0.0.1:9090\r\n"
               f"ServiceBusAuthorization: {auth}\r\nContent-Length: 5\r\n\r\nhello".encode())
    assert http.raw() == b"", "in flight: no answer yet"
    # A Web PubSub hub with two connections, one in a group.
    hub = net.service.webpubsub.hub("Chat")  # type: ignore[union-attr]
    hub.connect(net.now, user_id="alice", groups=["room"])
    hub.connect(net.now, user_id="bob")
    # A refusal: a sender with a bad token.
    bad = RawSender(net, ClientHandshake.from_url(SEND, headers=[
        ("ServiceBusAuthorization", "SharedAccessSignature sr=x&sig=y&se=1&skn=z")]))
    net.pump()
    assert bad.rejected is not None and bad.rejected.status == 401
    before = len(watcher.snapshots())
    net.advance(3.0)
    snaps = watcher.snapshots()
    # One more: the state changed before the first tick, then only time went by.
    assert len(snaps) == before + 1
    snap = snaps[-1]
    assert snap["time"] == start + TICK

    mute_hc, hc = snap["hybrid_connections"]
    assert (mute_hc["name"], len(mute_hc["listeners"]), hc["name"]) == ("api", 1, "myhc")
    assert (mute_hc["listener_count"], hc["listener_count"]) == (1, 1)
    (row,) = hc["listeners"]
    (record,) = net.service.broker.registry.listeners_of("myhc")
    assert row["id"] == record.id
    assert re.fullmatch(r"127\.0\.0\.1:\d+", row["address"]) and row["opened"] == start

    (pair,) = snap["pairs"]
    assert pair["hc"] == "myhc" and pair["id"] not in ("", "-")
    assert re.fullmatch(r"127\.0\.0\.1:\d+", pair["sender"])
    assert re.fullmatch(r"127\.0\.0\.1:\d+", pair["listener"])
    assert (pair["bytes_up"], pair["bytes_down"], pair["joined"]) == (1000, 1000, start)
    assert pair["sender"] != pair["listener"] and pair["listener_id"] == row["id"]
    assert snap["pair_count"] == 1

    (req,) = snap["requests"]
    assert (req["hc"], req["method"], req["path"]) == ("api", "POST", "/api/items")
    assert (req["bytes_in"], req["bytes_out"], req["status"], req["started"]) == \
        (5, 0, None, start)

    (chat,) = snap["hubs"]
    assert chat == {"name": "chat", "connections": 2, "group_count": 1,
                    "groups": [{"name": "room", "members": 1}]}

    (refusal,) = snap["refusals"]
    assert refusal["status"] == 401 and refusal["what"] == "/$hc/myhc"
    assert refusal["time"] == "2023-11-14T22:13:20Z"
    assert refusal["tracking"] not in ("", "-") and refusal["tracking"] in refusal["reason"]
    assert re.fullmatch(r"127\.0\.0\.1:\d+", refusal["client"])
    assert snap["connections"]["relay"] == 2 and snap["connections"]["listener"] == 2


def test_names_from_clients_are_escaped_and_bounded() -> None:
    net = network()
    watcher = Watcher(net)
    path = "/$hc/" + "<b>" + "a" * 5000 + "?sb-hc-action=listen"
    request(net, "GET", path, extra="Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")
    net.advance(TICK)
    (refusal,) = watcher.last()["refusals"]
    assert refusal["what"].startswith("/$hc/<b>aaa") and len(refusal["what"]) <= 200
    assert "sb-hc-action" not in refusal["what"]  # never the query (it may hold a token)


def test_snapshot_size_is_bounded_with_counts_of_what_is_left_out() -> None:
    """Nested rows count against their section's budget: 200 hubs of 200 groups (the review's
    3.8 MB snapshot) give at most MAX_ROWS rows, MAX_NESTED groups per hub."""
    net = network()
    wps = net.service.webpubsub
    assert wps is not None
    for h in range(200):
        hub = wps.hub(f"hub-{h:03}")
        for g in range(200):
            hub.connect(net.now, user_id=f"u{g}", groups=[f"group-{g:03}-" + "x" * 40])
    api = f"{BASE}/$hc/api"
    listeners = [RawSender(net, ClientHandshake.from_url(
        f"{api}?sb-hc-action=listen", headers=[("ServiceBusAuthorization", token_for(net, api))]))
        for _ in range(MAX_NESTED + 5)]
    net.pump()
    assert all(listener.accepted is not None for listener in listeners)
    watcher = Watcher(net)
    raw = watcher.stream()
    assert len(raw) < 100_000, len(raw)
    snap = watcher.last()
    assert snap["max_rows"] == MAX_ROWS and snap["max_nested"] == MAX_NESTED
    assert snap["hub_count"] == 200
    hubs = snap["hubs"]
    assert sum(1 + len(hub["groups"]) for hub in hubs) == MAX_ROWS
    assert len(hubs) == MAX_ROWS // (1 + MAX_NESTED) + 1  # the last one gets what is left
    assert all(hub["group_count"] == 200 and hub["connections"] == 200 for hub in hubs)
    assert [len(hub["groups"]) for hub in hubs[:-1]] == [MAX_NESTED] * (len(hubs) - 1)
    assert hubs[0]["groups"][0]["name"] == "group-000-" + "x" * 40
    (hc,) = snap["hybrid_connections"]
    assert (hc["listener_count"], len(hc["listeners"])) == (MAX_NESTED + 5, MAX_NESTED)


def test_a_snapshot_is_built_once_per_change(monkeypatch: Any) -> None:
    """Streams opening within a tick share one snapshot; the timer builds one only when the
    service's activity changed (or after HEARTBEAT seconds, the safety net)."""
    built = []
    real = webview.build_snapshot

    def counting(service: Any, now: float) -> dict[str, Any]:
        built.append(now)
        return real(service, now)

    monkeypatch.setattr(webview, "build_snapshot", counting)
    net = network()
    first = Watcher(net)
    start_echo_listener(net)  # after the first stream's snapshot
    others = [Watcher(net) for _ in range(5)]
    assert len(built) == 1, "one snapshot for six streams opened within a tick"
    assert all(w.last() == first.last() for w in others)
    net.advance(TICK)  # something happened since: the timer builds, the listener shows
    assert len(built) == 2
    assert all(len(w.last()["hybrid_connections"]) == 1 for w in [first, *others])
    net.advance(10 * TICK)  # nothing happened: nothing built, nothing sent
    assert len(built) == 2 and len(first.snapshots()) == 2
    sender = raw_sender(net)
    net.advance(TICK)
    assert len(built) == 3 and first.last()["pair_count"] == 1
    sender.write(encode_frame(OP_BINARY, b"x", masked=True))
    net.advance(TICK)
    assert len(built) == 4 and first.last()["pairs"][0]["bytes_up"] == 1
    net.advance(HEARTBEAT - TICK)
    assert len(built) == 4
    net.advance(TICK)  # the safety net: one look after HEARTBEAT seconds without activity
    assert len(built) == 5 and len(first.snapshots()) == 4, "the same state: not sent"
    net.advance(TICK / 2)
    latest = Watcher(net)  # its request is activity, but a snapshot less than a tick old is
    assert len(built) == 5 and latest.last()["time"] == net.now  # reused, with the time now


def test_events_only_when_something_changed_and_heartbeat() -> None:
    net = network()
    watcher = Watcher(net)
    assert net.service.next_deadline() == net.now + TICK
    net.advance(HEARTBEAT - 1)
    assert len(watcher.snapshots()) == 1, "nothing changed: no new snapshot"
    assert (":", "keep-alive") not in watcher.events()
    net.advance(1.5)
    assert watcher.events()[-1] == (":", "keep-alive")
    assert len(watcher.snapshots()) == 1
    opened = net.now
    start_echo_listener(net)
    net.advance(TICK)
    assert len(watcher.snapshots()) == 2
    assert watcher.last()["hybrid_connections"][0]["listeners"][0]["opened"] == opened
    net.advance(10 * TICK)  # the listener gets older: the page works that out, nothing is sent
    assert len(watcher.snapshots()) == 2
    sender = raw_sender(net)
    net.advance(TICK)
    assert len(watcher.snapshots()) == 3 and watcher.last()["pair_count"] == 1
    sender.write(encode_frame(OP_BINARY, b"x", masked=True))  # a byte relayed: a change
    net.advance(TICK)
    assert len(watcher.snapshots()) == 4 and watcher.last()["pairs"][0]["bytes_up"] == 1


def test_watchers_are_capped() -> None:
    net = network()
    watchers = [Watcher(net) for _ in range(MAX_WATCHERS)]
    assert all(w.status == 200 for w in watchers)
    refused = request(net, "GET", "/$events")
    status, headers, body = split_response(refused.raw())
    assert status == 503 and headers["retry-after"] == "5" and b"32 event streams" in body
    assert refused.tcp_closed
    # The page itself is still served; a watcher that leaves makes room.
    assert split_response(request(net, "GET", "/").raw())[0] == 200
    watchers[0].client.close_tcp()
    assert Watcher(net).status == 200
    assert len(net.service.webview.watchers) == MAX_WATCHERS


def test_a_closed_watcher_is_forgotten() -> None:
    net = network()
    watcher = Watcher(net)
    assert net.service.next_deadline() is not None
    watcher.client.close_tcp()
    assert net.service.webview.watchers == {}
    assert net.service.next_deadline() is None, "no timer without watchers"
    assert net.service.connection_counts() == {}


def test_a_paused_watcher_skips_updates_then_gets_the_latest() -> None:
    net = network()
    watcher = Watcher(net)
    conn = watcher.client.conn_id
    net.service.writing_paused(conn, True)
    start_echo_listener(net)
    net.advance(5 * TICK + HEARTBEAT)
    assert len(watcher.snapshots()) == 1 and (":", "keep-alive") not in watcher.events()
    net.service.writing_paused(conn, False)
    net.advance(TICK)
    snaps = watcher.snapshots()
    assert len(snaps) == 2 and len(snaps[-1]["hybrid_connections"][0]["listeners"]) == 1


def test_http10_stream_is_close_delimited() -> None:
    net = network()
    watcher = Watcher(net, version="1.0")
    assert watcher.status == 200 and watcher.headers["connection"] == "close"
    assert "transfer-encoding" not in watcher.headers
    assert watcher.last()["connections"] == {"watcher": 1}


def test_head_of_the_stream_and_shutdown() -> None:
    net = network()
    status, headers, body = split_response(request(net, "HEAD", "/$events").raw())
    assert (status, body) == (200, b"")
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert net.service.webview.watchers == {}
    watcher = Watcher(net)
    net.service.shutdown(net.now)
    net.pump()
    _, _, body = split_response(watcher.client.raw())
    assert dechunk(body)[1], "the chunked stream ends with its last chunk"
    assert watcher.client.tcp_closed and net.service.webview.watchers == {}


def test_status_and_metrics_unchanged_by_a_watcher() -> None:
    net = network()
    Watcher(net)
    status, _, body = split_response(request(net, "GET", "/$status").raw())
    assert status == 200 and json.loads(body)["connections"] == {"watcher": 1}
    status, headers, body = split_response(request(net, "GET", "/metrics").raw())
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert b'hyco_connections{kind="watcher"} 1' in body


def test_emulator_banner_names_the_web_view() -> None:
    proc = Proc(["emulator", "--port", "0", "--webpubsub-port", "0"])  # free ports only
    try:
        url = proc.wait_line(r"web view: (http://127\.0\.0\.1:\d+/) ").group(1)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
        with opener.open(url, timeout=10) as response:
            assert response.status == 200 and response.read() == PAGE
    finally:
        proc.kill()


def test_asyncio_server_reports_a_full_write_buffer() -> None:
    """The asyncio adapter tells the service when a watcher's write buffer passes its
    high-water mark (``pause_writing``) and when it drains (``resume_writing``)."""
    async def scenario() -> None:
        async with RelayServiceServer(port=0) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /$events HTTP/1.1\r\nHost: localhost\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            (conn, stream), = server.service.webview.watchers.items()
            protocol = server._protocols[conn]
            protocol.pause_writing()  # what asyncio calls over the high-water mark
            assert stream.paused
            protocol.resume_writing()
            assert not stream.paused and stream.sent == "", "the latest state goes out next"
            writer.close()
            await writer.wait_closed()
            for _ in range(100):  # the service forgets the watcher once the socket is gone
                if not server.service.webview.watchers:
                    break
                await asyncio.sleep(0.05)
            assert server.service.webview.watchers == {}

    asyncio.run(asyncio.wait_for(scenario(), 20))
