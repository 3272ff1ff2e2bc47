"""Web PubSub tokens never reach a log line (issue 12, "tokens never in logs"), over real
sockets against our hub, with every ``hyco_proto`` logger (and the root) captured at DEBUG.

What happens while the logs are captured:

* clients connect with ``access_token=`` in the URL — valid, expired, with a forged signature,
  signed with another key, garbage — and with ``Authorization: Bearer`` instead of the query;
* a ``WebPubSubClient`` on the reliable subprotocol loses its TCP connection and recovers with
  ``awps_connection_id`` + ``awps_reconnection_token``; raw recoveries with a forged or garbage
  reconnection token are refused;
* REST calls carry ``Authorization: Bearer <jwt>``: valid, expired, forged, for another URL,
  garbage;
* an event handler receives ``connected`` / ``disconnected`` and user events, and fails one.

Then no token, no token's signature part and no reconnection token may appear anywhere in the
captured log text or in a record's fields, nor in a refusal's reason or body, nor in a client's
exception message. Each refusal line names the client's address. The emulator's own
``--log-format json`` output gets the same check in a subprocess (``hyco emulator``), with the
Hybrid Connections SAS tokens that the in-memory checks of ``tests/test_hardening_logging.py``
do not cover: valid tokens in ``sb-hc-token`` and ``ServiceBusAuthorization`` on real sockets,
and an adapter's own log lines.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from hyco_proto.adapters import threads
from hyco_proto.adapters.asyncio import RelayServiceThread
from hyco_proto.sas import create_relay_token
from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY, ServiceConfig
from hyco_proto.service.router import RelayService
from hyco_proto.service.webpubsub import WebPubSubService
from hyco_proto.webpubsub import JSON_SUBPROTOCOL
from hyco_proto.webpubsub.endpoints import build_client_url, build_recovery_url
from hyco_proto.webpubsub.events import EventHandler
from hyco_proto.webpubsub.tokens import create_client_token, create_service_token

from .webpubsub_util import HUB, KEY, ROLES, CutProxy

pytest.importorskip("jwt")

WAIT = 10.0
RELIABLE = "json.reliable.webpubsub.azure.v1"
MARK = "Zq7WpsSECRETx9"


def signature(jwt_token: str) -> str:
    return jwt_token.rsplit(".", 1)[-1]


def forged(jwt_token: str) -> str:
    """The same header and claims with a signature that is not the key's."""
    head, claims, sig = jwt_token.split(".")
    return f"{head}.{claims}.{sig[::-1][:20]}{MARK}"


def url_token(url: str) -> str:
    return parse_qs(urlsplit(url).query)["access_token"][0]


class Secrets:
    """Strings that must never be seen, with what they are (for the failure message)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def jwt(self, what: str, token: str) -> str:
        self.items += [(what, token), (f"{what} (signature)", signature(token))]
        return token

    def add(self, what: str, value: str) -> str:
        self.items.append((what, value))
        return value

    def check(self, text: str) -> None:
        for what, value in self.items:
            assert value not in text, f"{what} appears in the captured text"


def captured(caplog: pytest.LogCaptureFixture, extra: list[str]) -> str:
    return "\n".join([caplog.text, *(repr(r.__dict__) for r in caplog.records), *extra])


# ------------------------------------------------------------------------------------------
# an event handler (a plain HTTP server)


class _Events(BaseHTTPRequestHandler):
    seen: list[str]

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_OPTIONS(self) -> None:  # the abuse-protection preflight
        self.send_response(200)
        self.send_header("WebHook-Allowed-Origin", "*")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        event = self.headers.get("ce-eventName") or self.headers.get("ce-type") or "?"
        self.seen.append(event)
        status = 500 if event == "boom" else 204
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


@contextlib.contextmanager
def event_handler() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_Events,), {"seen": seen}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/events/{{event}}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)


def until(condition: Any, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.01)


def rest(port: int, path: str, auth: str | None) -> tuple[int, str]:
    """POST ``path`` with a small text body; (status, reason + body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        headers = {"Content-Type": "text/plain"}
        if auth is not None:
            headers["Authorization"] = auth
        conn.request("POST", path, body=b"hello", headers=headers)
        response = conn.getresponse()
        return response.status, f"{response.reason} {response.read().decode('latin-1')}"
    finally:
        conn.close()


def refused_connect(url: str, **kwargs: Any) -> str:
    """A raw client connect that must fail; what the client was told."""
    with pytest.raises(Exception) as info:
        threads.connect(url, subprotocols=[JSON_SUBPROTOCOL], open_timeout=WAIT, **kwargs)
    return f"{type(info.value).__name__}: {info.value}"


def refused_after_upgrade(url: str) -> str:
    """A recovery the hub refuses the Web PubSub way: 101, then a close (1008)."""
    with threads.connect(url, subprotocols=[RELIABLE], open_timeout=WAIT) as ws, \
            pytest.raises(threads.ConnectionClosedError) as info:
        ws.recv(timeout=WAIT)
    assert info.value.code == 1008, info.value
    return f"{info.value} {ws.close_reason}"


def test_web_pubsub_tokens_and_reconnection_tokens_never_reach_the_logs(
        caplog: pytest.LogCaptureFixture) -> None:
    secrets = Secrets()
    told: list[str] = []  # what clients were told: reasons, bodies, exception messages
    with event_handler() as (template, events), caplog.at_level(logging.DEBUG):
        handler = EventHandler(template, system_events=frozenset({"connected", "disconnected"}))
        service = RelayService(ServiceConfig(),
                               webpubsub=WebPubSubService(KEY, event_handlers={HUB: [handler]}))
        # Every refusal is logged (no throttling): each line is one more chance to leak.
        service.refusal_log.burst = service.refusal_log.address_burst = 10_000
        with RelayServiceThread(service, port=0, routes="webpubsub") as hub, \
                CutProxy(hub.port) as proxy:
            endpoint = f"http://127.0.0.1:{hub.port}"
            ws_base = f"ws://127.0.0.1:{hub.port}/client/hubs/{HUB}"

            def client_token(user: str, **kwargs: Any) -> str:
                kwargs.setdefault("now", time.time())
                return create_client_token(endpoint, HUB, KEY, user_id=user, roles=ROLES,
                                           **kwargs)

            # -- a real client: valid token, a cut, recovery with the reconnection token
            via_proxy = f"http://127.0.0.1:{proxy.port}"
            alice_token = secrets.jwt("alice's access token", create_client_token(
                via_proxy, HUB, KEY, user_id="alice", roles=ROLES, now=time.time()))
            alice = threads.WebPubSubClient(
                build_client_url(via_proxy, HUB, access_token=alice_token))
            with alice:
                def reconnection_token() -> str:
                    wps = hub.service.webpubsub
                    assert wps is not None
                    return str(hub.call(lambda: wps.hub(HUB)._connections[
                        alice.connection_id].reconnection_token))

                secrets.add("alice's reconnection token", reconnection_token())
                inbox = alice.messages(timeout=WAIT)
                alice.join_group("g")
                alice.send_event("hello", "hi")
                alice.send_event("boom", "bang")  # the handler answers 500: logged
                until(lambda: any("boom" in r.getMessage() for r in caplog.records),
                      "the service's line about the failed user event")
                proxy.cut()
                alice.send_to_group("g", "after the cut")  # waits for the recovery
                assert next(inbox).value == "after the cut"
                assert proxy.accepted == 2, "the client did not recover on a new socket"
                secrets.add("alice's reconnection token after recovery", reconnection_token())
                connection_id = alice.connection_id
                valid_url = build_client_url(via_proxy, HUB, access_token=alice_token)
                # Recoveries with a wrong reconnection token are refused (101, then 1008).
                for bad in (f"forged{MARK}", reconnection_token()[::-1]):
                    secrets.add("a forged reconnection token", bad)
                    told.append(refused_after_upgrade(
                        build_recovery_url(valid_url, connection_id, bad)))
            until(lambda: "disconnected" in events, "the disconnected event")

            # -- access tokens in the query and as a Bearer header
            valid = secrets.jwt("a valid access token", client_token("bob"))
            with threads.connect(f"{ws_base}?access_token={quote(valid)}",
                                 subprotocols=[JSON_SUBPROTOCOL], open_timeout=WAIT) as ws:
                assert json.loads(ws.recv(timeout=WAIT))["event"] == "connected"
            with threads.connect(ws_base, headers={"Authorization": f"Bearer {valid}"},
                                 subprotocols=[JSON_SUBPROTOCOL], open_timeout=WAIT) as ws:
                assert json.loads(ws.recv(timeout=WAIT))["event"] == "connected"
            bad_tokens = [
                secrets.jwt("an expired access token",
                            client_token("carol", ttl=60, now=time.time() - 3600)),
                secrets.jwt("a forged access token", forged(client_token("dave"))),
                secrets.jwt("a token signed with another key", create_client_token(
                    endpoint, HUB, "not-the-access-key-of-this-hub-" + MARK, user_id="eve",
                    now=time.time())),
                secrets.jwt("a token for another hub", create_client_token(
                    endpoint, "otherhub", KEY, user_id="frank", now=time.time())),
                secrets.add("a garbage access token", f"garbage-{MARK}"),
                secrets.add("a garbage JWT", f"eyJ{MARK}.eyJ{MARK}.{MARK}"),
            ]
            for bad in bad_tokens:
                told.append(refused_connect(f"{ws_base}?access_token={quote(bad)}"))
                told.append(refused_connect(ws_base, headers={"Authorization": f"Bearer {bad}"}))

            # -- REST calls with a Bearer token
            path = f"/api/hubs/{HUB}/:send?api-version=2024-01-01"
            good = secrets.jwt("a valid REST token", create_service_token(
                f"{endpoint}{path}", KEY, now=time.time()))
            status, _ = rest(hub.port, path, f"Bearer {good}")
            assert status == 202
            rest_bad = [
                secrets.jwt("an expired REST token", create_service_token(
                    f"{endpoint}{path}", KEY, ttl=60, now=time.time() - 3600)),
                secrets.jwt("a forged REST token", forged(create_service_token(
                    f"{endpoint}{path}", KEY, now=time.time()))),
                secrets.jwt("a REST token for another URL", create_service_token(
                    f"{endpoint}/api/hubs/other/:send", KEY, now=time.time())),
                secrets.add("a garbage REST token", f"garbage-{MARK}"),
            ]
            for bad in rest_bad:
                status, answer = rest(hub.port, path, f"Bearer {bad}")
                assert status == 401, (status, answer)
                told.append(answer)
            assert "hello" in events and "boom" in events
            refusals = [r.getMessage() for r in caplog.records
                        if getattr(r, "event", None) == "refused"]
        text = captured(caplog, told)
    secrets.check(text)
    # The refusals were logged (this is not a test of an empty log), each naming the client.
    assert len(refusals) >= 2 * len(bad_tokens), refusals
    for line in refusals:
        assert "client=127.0.0.1:" in line, line
    assert MARK not in text


# ------------------------------------------------------------------------------------------
# the emulator's own output (hyco emulator --log-format json)


def test_emulator_json_log_carries_no_token(caplog: pytest.LogCaptureFixture) -> None:
    """The emulator's stderr (JSON lines) and this process's own log (the adapters' lines)."""
    from tests.procutil import Proc

    caplog.set_level(logging.DEBUG)

    proc = Proc(["emulator", "--port", "0", "--webpubsub-port", "0", "--log-level", "DEBUG",
                 "--log-format", "json", "--key", DEVELOPMENT_KEY])
    secrets = Secrets()
    told: list[str] = []
    try:
        relay = proc.wait_line(r"listening on (ws://127\.0\.0\.1:(\d+))").group(1)
        cs = proc.wait_line(r"Endpoint=(http://127\.0\.0\.1:(\d+));AccessKey=([^;]+);")
        endpoint, wps_key = cs.group(1), cs.group(3)
        proc.wait_line(r"press Ctrl-C to stop")

        # Hybrid Connections: valid tokens in the header (listener) and in the query (sender),
        # a relayed HTTP request with ServiceBusAuthorization, and refused ones.
        uri = f"{relay}/$hc/logs"

        def sas(key: str = DEVELOPMENT_KEY, age: float = 0.0) -> str:
            return create_relay_token(uri, DEFAULT_RULE_NAME, key, 60, now=time.time() - age)

        listen_token = secrets.add("a listener's SAS token", sas())
        with threads.RelayedServer(uri, lambda: listen_token,
                                   connection=lambda ws: [ws.send(m) for m in ws]):
            send_token = secrets.add("a sender's SAS token", sas())
            with threads.relayed_connect(uri, send_token, token_in_query=True) as ws:
                ws.send("hi")
                assert ws.recv(timeout=WAIT) == "hi"
            for what, bad in (("a SAS token with another key", sas(key="bm90LXRoZS1rZXk=")),
                              ("an expired SAS token", sas(age=3600))):
                secrets.add(what, bad)
                secrets.add(f"{what} (signature)", parse_qs(bad.split(" ", 1)[1])["sig"][0])
                with pytest.raises(Exception) as info:
                    threads.relayed_connect(uri, bad, token_in_query=True, open_timeout=WAIT)
                told.append(str(info.value))
                host, port = urlsplit(relay).hostname, urlsplit(relay).port
                conn = http.client.HTTPConnection(str(host), port, timeout=WAIT)
                conn.request("GET", "/logs/x", headers={"ServiceBusAuthorization": bad})
                told.append(conn.getresponse().read().decode("latin-1"))
                conn.close()

        # Web PubSub: valid and invalid access tokens, a REST call.
        valid = secrets.jwt("a valid access token", create_client_token(
            endpoint, HUB, wps_key, user_id="u", now=time.time()))
        ws_base = endpoint.replace("http://", "ws://") + f"/client/hubs/{HUB}"
        with threads.connect(f"{ws_base}?access_token={quote(valid)}",
                             subprotocols=[JSON_SUBPROTOCOL], open_timeout=WAIT) as ws:
            assert json.loads(ws.recv(timeout=WAIT))["event"] == "connected"
        forged_token = secrets.jwt("a forged access token", forged(valid))
        told.append(refused_connect(f"{ws_base}?access_token={quote(forged_token)}"))
        path = f"/api/hubs/{HUB}/:send?api-version=2024-01-01"
        rest_token = secrets.jwt("a REST token", create_service_token(
            f"{endpoint}{path}", wps_key, now=time.time()))
        wps_port = int(cs.group(2))
        assert rest(wps_port, path, f"Bearer {rest_token}")[0] == 202
        assert rest(wps_port, path, f"Bearer {forged(rest_token)}")[0] == 401
        secrets.jwt("a forged REST token", forged(rest_token))
        # Wait (bounded) for the service's line about the last refusal before stopping it.
        until(lambda: sum('"event": "refused"' in line for line in proc.stderr_text) >= 3,
              "the refusals in the JSON log")
    finally:
        proc.kill()
    lines = [line for line in proc.stderr_text if line.startswith("{")]
    docs = [json.loads(line) for line in lines]
    assert any(d.get("event") == "listener-accepted" for d in docs), lines[:5]
    assert any(d.get("event") == "refused" and d.get("client", "-") != "-" for d in docs)
    secrets.check("\n".join([*proc.stderr_text, proc.stdout.decode("utf-8", "replace"), *told,
                             captured(caplog, [])]))
