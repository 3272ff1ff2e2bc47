"""Refusals that say what to do: the emulator's two ports used the wrong way round, a strict
service's unknown hybrid connection, a sender with no listener, an expired Web PubSub token.

Driven in memory with raw bytes (``RelayService`` with its ``"relay"`` and ``"webpubsub"``
route sets), as the adapters drive it; no sockets.
"""

from __future__ import annotations

import json

import pytest

from hyco_proto.handshake import ClientHandshake
from hyco_proto.sas import create_relay_token
from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY, ServiceConfig
from hyco_proto.service.router import RelayService
from hyco_proto.service.webpubsub import WebPubSubService
from hyco_proto.webpubsub.rest import RestApi, RestRequest
from hyco_proto.webpubsub.tokens import create_service_token

NOW = 1_796_000_000.0  # 2026-11-30T00:53:20Z
RELAY = "ws://127.0.0.1:9090"
HUB = "http://127.0.0.1:8080"


def service(*, strict: bool = False, addresses: bool = True) -> RelayService:
    svc = RelayService(ServiceConfig(strict=strict),
                       webpubsub=WebPubSubService(DEVELOPMENT_KEY))
    if addresses:
        svc.addresses.update(relay=RELAY, webpubsub=HUB)
    return svc


def exchange(svc: RelayService, request: bytes, *, port: str = "relay",
             conn: int | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection (or ``conn``); the status line's code, the headers and
    the answer's text: its body (without the final newline), or its reason phrase when the
    body is empty (an upgrade's refusal by the relay)."""
    if conn is None:
        conn = svc.connection_made(NOW, ("127.0.0.1", 40000), service=port)
    svc.receive_data(NOW, conn, request)
    raw = b"".join(data for cid, data in svc.data_to_send() if cid == conn)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    status, reason = lines[0].split(" ", 2)[1:]
    return int(status), headers, body.rstrip(b"\n") or reason.encode("latin-1")


def rest_call(path: str = "/api/hubs/chat/:send?api-version=2024-01-01",
              authorization: str | None = None) -> bytes:
    """What Microsoft's Web PubSub server SDK sends for ``send_to_all`` (POST, Bearer JWT
    signed with the access key for the addressed URL, a body)."""
    if authorization is None:
        authorization = "Bearer " + create_service_token(f"{HUB}{path}", DEVELOPMENT_KEY,
                                                         now=NOW)
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:9090\r\nAuthorization: {authorization}\r\n"
            "Content-Type: text/plain\r\nContent-Length: 1\r\n\r\nx").encode()


def upgrade(url: str, *, host: str = "127.0.0.1:9090", token: bool = True,
            headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    extra = list(headers)
    if token:
        uri = url.split("?")[0]
        extra.append(("ServiceBusAuthorization",
                      create_relay_token(uri, DEFAULT_RULE_NAME, DEVELOPMENT_KEY, 3600, now=NOW)))
    data = ClientHandshake.from_url(url, headers=extra).data_to_send()
    return data.replace(b"Host: 127.0.0.1:9090", f"Host: {host}".encode(), 1)


def listen(svc: RelayService, hc: str) -> int:
    """A listener's control channel on ``hc``, open."""
    status, _, _ = exchange(svc, upgrade(f"{RELAY}/$hc/{hc}?sb-hc-action=listen"))
    assert status == 101
    return len(svc.broker.registry.listeners_of(hc))


# -- 1. the Web PubSub REST API sent to the relay port -----------------------------------------

HINT = ("This looks like a Web PubSub REST API call (/api/... with a Bearer token) sent to the "
        "emulator's relay port: the REST API is on the emulator's Web PubSub port, "
        "http://127.0.0.1:8080.")


def test_rest_call_on_the_relay_port_says_where_the_rest_api_is() -> None:
    status, headers, body = exchange(service(), rest_call())
    text = body.decode()
    assert status == 401, "the refusal a relay gives anyway (the Bearer JWT is no SAS token)"
    assert text.startswith("InvalidToken: malformed token. " + HINT + " TrackingId:"), text
    assert headers["x-hyco-rejected-by"] == "relay"


def test_rest_call_hint_without_known_addresses() -> None:
    _, _, body = exchange(service(addresses=False), rest_call())
    assert ("the REST API is on the emulator's Web PubSub port (the address `hyco emulator` "
            "prints as 'Web PubSub hubs on'; 8080 by default). TrackingId:") in body.decode()


def test_rest_call_on_a_strict_relay_gets_the_hint_with_its_404() -> None:
    status, _, body = exchange(service(strict=True), rest_call())
    assert status == 404 and HINT in body.decode()
    assert "no hybrid connection matches '/api/hubs/chat/:send'" in body.decode()


@pytest.mark.parametrize("request_bytes", [
    rest_call(authorization="SharedAccessSignature sr=x&sig=y&se=1&skn=z"),  # not Bearer
    rest_call(path="/apix/hubs/chat/:send"),  # not under /api
])
def test_no_hint_for_other_requests(request_bytes: bytes) -> None:
    status, _, body = exchange(service(), request_bytes)
    assert status == 401 and b"Web PubSub" not in body


def test_a_real_hybrid_connection_named_api_keeps_its_plain_refusal() -> None:
    svc = service()
    assert listen(svc, "api") == 1
    status, _, body = exchange(svc, rest_call(authorization="Bearer not-a-sas-token"))
    assert status == 401 and b"Web PubSub" not in body


def test_a_client_upgrade_on_the_relay_port_names_the_hub_address() -> None:
    status, _, body = exchange(service(), upgrade(f"{RELAY}/client/hubs/chat", token=False))
    assert status == 404
    assert body.decode().endswith("Web PubSub clients connect to the emulator's Web PubSub "
                                  "port, http://127.0.0.1:8080.")


# -- 2. relay tools on the hub port ------------------------------------------------------------

RELAY_HINT = ("Not a Web PubSub address: this is the emulator's Web PubSub port; Hybrid "
              "Connections (/$hc/...) are served on its relay port, ws://127.0.0.1:9090.")


@pytest.mark.parametrize("path", ["/$hc/x?sb-hc-action=listen", "/$hc/x", "/$HC/x",
                                  "/$servicebus/hybridconnection/x"])
def test_relay_upgrades_on_the_hub_port_say_where_the_relay_is(path: str) -> None:
    svc = service()
    status, headers, body = exchange(svc, upgrade(f"{RELAY}{path}", host="127.0.0.1:8080"),
                                     port="webpubsub")
    assert status == 404 and body.decode() == RELAY_HINT
    assert headers["x-hyco-rejected-by"] == "relay"
    assert svc.stats.refusals == {404: 1}


def test_relayed_http_on_the_hub_port_says_where_the_relay_is() -> None:
    request = b"GET /$hc/x/y HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
    svc = service(addresses=False)
    status, _, body = exchange(svc, request, port="webpubsub")
    assert status == 404
    assert body.decode() == ("Not a Web PubSub address: this is the emulator's Web PubSub port; "
                             "Hybrid Connections (/$hc/...) are served on its relay port (the "
                             "address `hyco emulator` prints as 'listening on'; 9090 by "
                             "default).")


def test_other_unknown_paths_on_the_hub_port_stay_not_found() -> None:
    status, _, body = exchange(service(), b"GET /nothing HTTP/1.1\r\nHost: localhost\r\n\r\n",
                               port="webpubsub")
    assert status == 404 and body == b"Not found."


@pytest.mark.parametrize("path", ["/$status", "/metrics"])
def test_status_and_metrics_on_the_hub_port(path: str) -> None:
    svc = service()
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n".encode()
    status, _, body = exchange(svc, request, port="webpubsub")
    assert status == 200
    if path == "/$status":
        assert json.loads(body)["status"] == "ok"
    else:
        assert b"hyco_listeners" in body


# -- 3. refusals that say what to do -----------------------------------------------------------

def test_strict_unknown_hybrid_connection_says_how_to_declare_one() -> None:
    status, _, body = exchange(service(strict=True),
                               upgrade(f"{RELAY}/$hc/unknown?sb-hc-action=connect"))
    assert status == 404
    assert body.decode().startswith(
        "Endpoint does not exist: no hybrid connection matches '/unknown'. This emulator serves "
        "declared ones only (--strict): declare it with `hyco emulator --hc NAME`, or a "
        "[hybrid_connections.NAME] table in its --config file. TrackingId:")


def test_not_strict_empty_path_gives_no_declare_hint() -> None:
    status, _, body = exchange(service(), b"GET // HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == 404 and b"no hybrid connection matches" in body
    assert b"--strict" not in body


def test_sender_without_listener_is_told_to_start_one() -> None:
    status, _, body = exchange(service(), upgrade(f"{RELAY}/$hc/known?sb-hc-action=connect"))
    assert status == 404
    assert body.decode().startswith(
        "Endpoint does not exist: no listener is connected to hybrid connection 'known'. "
        "A listener must connect to it first (for example `hyco listen --path known`): senders "
        "are not held until one does. TrackingId:")


def test_relayed_http_without_listener_is_told_to_start_one() -> None:
    svc = service()
    token = create_relay_token(f"{RELAY}/known", DEFAULT_RULE_NAME, DEVELOPMENT_KEY, 3600, now=NOW)
    request = (f"GET /known/x HTTP/1.1\r\nHost: 127.0.0.1:9090\r\n"
               f"ServiceBusAuthorization: {token}\r\n\r\n").encode()
    status, _, body = exchange(svc, request)
    assert status == 502
    assert "A listener must connect to it first (for example `hyco listen --path known`)" \
        in body.decode()


def test_sender_pinned_away_from_the_listeners_gets_no_start_one_hint() -> None:
    svc = service()
    assert listen(svc, "known") == 1
    status, _, body = exchange(svc, upgrade(
        f"{RELAY}/$hc/known?sb-hc-action=connect",
        headers=(("Microsoft-Relay-AllowedListeners", "nobody"),)))
    assert status == 404 and b"no listener is connected" in body
    assert b"must connect" not in body


def test_rest_api_expired_token_in_utc() -> None:
    url = f"{HUB}/api/hubs/chat/:send?api-version=2024-01-01"
    token = create_service_token(url, DEVELOPMENT_KEY, ttl=60, now=NOW - 7200)
    api = RestApi(WebPubSubService(DEVELOPMENT_KEY).hub, DEVELOPMENT_KEY)
    result = api.handle(RestRequest("POST", "/api/hubs/chat/:send?api-version=2024-01-01", HUB,
                                    f"Bearer {token}", "text/plain", b"x"), NOW)
    assert result.response.status == 401
    assert (b"the token expired at 2026-11-29T22:54:20Z (now 2026-11-30T00:53:20Z)"
            in result.response.body)


def test_the_asyncio_server_tells_each_port_the_others_address() -> None:
    # RelayServiceServer fills RelayService.addresses once bound: the hints name real ports.
    import socket

    from hyco_proto.adapters.asyncio import RelayServiceThread

    def ask(port: int, request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        return answer

    with RelayServiceThread(service(addresses=False), port=0, webpubsub_port=0) as relay:
        hub_port = relay.server.webpubsub_port
        assert relay.server.service.addresses == {
            "relay": f"ws://127.0.0.1:{relay.port}",
            "webpubsub": f"http://127.0.0.1:{hub_port}"}
        on_hub = ask(hub_port, b"GET /$hc/orders HTTP/1.1\r\nHost: localhost\r\n"
                               b"Connection: close\r\n\r\n")
        assert on_hub.startswith(b"HTTP/1.1 404 ")
        assert f"relay port, ws://127.0.0.1:{relay.port}.".encode() in on_hub
        on_relay = ask(relay.port, b"POST /api/hubs/chat/:send HTTP/1.1\r\nHost: localhost\r\n"
                                   b"Authorization: Bearer a.b.c\r\nContent-Length: 0\r\n"
                                   b"Connection: close\r\n\r\n")
        assert f"Web PubSub port, http://127.0.0.1:{hub_port}.".encode() in on_relay, on_relay
