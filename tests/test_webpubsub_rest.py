"""The Web PubSub REST API through the service's router (sans-IO, byte level).

HTTP requests are h11 bytes on the ``"webpubsub"`` routes, signed as the Python server SDK signs
them (HS256, ``aud`` = the request URL); clients are our own WebSocket ``ClientConnection`` (see
``test_webpubsub_route``), so every REST effect is observed on a client: messages received,
connections closed, group membership and granted permissions in force.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import h11
import jwt
import pytest

from hyco_proto.webpubsub import verify_client_token
from hyco_proto.webpubsub.hub import Hub
from hyco_proto.webpubsub.odata import FilterSubject, parse_filter
from hyco_proto.webpubsub.permissions import Permissions
from hyco_proto.websocket import ConnectionClosed
from tests.test_webpubsub_route import ENDPOINT, KEY, NOW, Client, Net, connect, token

API = "api-version=2024-12-01"


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class HttpPeer:
    """One TCP connection speaking HTTP/1.1 to the service (h11 on the client side)."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.h11 = h11.Connection(h11.CLIENT)
        self.id = net.svc.connection_made(net.now, ("127.0.0.1", 6000), service="webpubsub")
        self.tcp_closed = False
        self.conn = self  # Net.pump feeds ``client.conn``
        self.inbox = bytearray()
        net.clients[self.id] = self  # type: ignore[assignment]

    def receive_data(self, data: bytes) -> None:
        self.inbox += data

    def receive_eof(self) -> None:
        pass

    def collect(self) -> None:
        pass

    def send(self, data: bytes) -> None:
        self.net.svc.receive_data(self.net.now, self.id, data)
        self.net.pump()

    def request(self, method: str, target: str, body: bytes = b"", *,
                headers: list[tuple[str, str]] | None = None, auth: str | None = "sdk",
                chunked: bool = False) -> Response:
        hdrs = [("Host", "127.0.0.1:8080"), *(headers or [])]
        if auth == "sdk":
            hdrs.append(("Authorization", f"Bearer {rest_token(target)}"))
        elif auth is not None:
            hdrs.append(("Authorization", auth))
        if chunked:
            hdrs.append(("Transfer-Encoding", "chunked"))
        elif body or method in ("POST", "PUT"):
            hdrs.append(("Content-Length", str(len(body))))
        out = self.h11.send(h11.Request(method=method, target=target, headers=hdrs)) or b""
        if body:
            out += self.h11.send(h11.Data(data=body)) or b""
        out += self.h11.send(h11.EndOfMessage()) or b""
        self.send(out)
        return self.response()

    def response(self) -> Response:
        self.h11.receive_data(bytes(self.inbox))
        self.inbox.clear()
        head = self.h11.next_event()
        assert isinstance(head, h11.Response), head
        body = b""
        while True:
            event = self.h11.next_event()
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"incomplete response: {event}")
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        headers = {k.decode().lower(): v.decode() for k, v in head.headers}
        return Response(head.status_code, headers, body)


def rest_token(target: str, *, key: str = KEY, exp: float = NOW + 60,
               aud: str | None = None) -> str:
    """What ``JwtCredentialPolicy`` signs: ``aud`` the full URL (query included)."""
    return jwt.encode({"aud": aud or f"{ENDPOINT}{target}", "exp": exp}, key,
                      algorithm="HS256")


def call(net: Net, method: str, target: str, body: bytes = b"", **kwargs: Any) -> Response:
    return HttpPeer(net).request(method, target, body, **kwargs)


def hub_path(rest: str, query: str = API) -> str:
    return f"/api/hubs/chat/{rest}" + (f"?{query}" if query else "")


def text(net: Net, target: str, data: str) -> Response:
    return call(net, "POST", target, data.encode(), headers=[("Content-Type", "text/plain")])


def cid(client: Client) -> str:
    frames = client.frames()
    return str(frames[0]["connectionId"])


def messages(client: Client) -> list[Any]:
    return [f if isinstance(f, bytes) else (f.get("dataType"), f.get("data"), f.get("from"))
            for f in client.frames()]


def closed(client: Client) -> ConnectionClosed | None:
    return next((e for e in client.events if isinstance(e, ConnectionClosed)), None)


# -- sends ----------------------------------------------------------------------------------


def test_health_needs_no_token() -> None:
    net = Net()
    assert call(net, "GET", "/api/health", auth=None).status == 200
    assert call(net, "HEAD", "/api/health", auth=None).status == 200
    assert call(net, "POST", "/api/health", auth=None).status == 405


def test_send_to_all_by_content_type_to_json_and_raw_clients() -> None:
    net = Net()
    alice = connect(net, "alice")
    raw = connect(net, "carol", subprotocols=())
    alice.frames()
    assert text(net, hub_path(":send"), "hi").status == 202
    assert call(net, "POST", hub_path(":send"), b'{"a":1}',
                headers=[("Content-Type", "application/json")]).status == 202
    assert call(net, "POST", hub_path(":send"), b"\x00\xff",
                headers=[("Content-Type", "application/octet-stream")]).status == 202
    assert messages(alice) == [("text", "hi", "server"), ("json", {"a": 1}, "server"),
                               ("binary", base64.b64encode(b"\x00\xff").decode(), "server")]
    raw_frames = [e.data for e in raw.events if hasattr(e, "data")]
    assert raw_frames == ["hi", '{"a":1}', b"\x00\xff"]


def test_send_excluded_and_filter() -> None:
    net = Net()
    alice, bob = connect(net, "alice"), connect(net, "bob")
    a, b = cid(alice), cid(bob)
    assert text(net, hub_path(":send", f"{API}&excluded={a}"), "x").status == 202
    assert (messages(alice), messages(bob)) == ([], [("text", "x", "server")])
    target = hub_path(":send", f"{API}&filter=userId%20eq%20%27alice%27")
    assert text(net, target, "y").status == 202
    assert (messages(alice), messages(bob)) == ([("text", "y", "server")], [])
    bad = text(net, hub_path(":send", f"{API}&filter=length(userId)%20gt%201"), "z")
    assert bad.status == 400 and "filter" in bad.json()["message"]
    assert (messages(alice), messages(bob)) == ([], [])
    assert b


def test_send_to_group_user_and_connection() -> None:
    net = Net()
    alice, bob = connect(net, "alice"), connect(net, "bob")
    a, b = cid(alice), cid(bob)
    for client in (alice, bob):
        client.send(type="joinGroup", group="room", ackId=1)
        client.frames()
    assert text(net, hub_path("groups/room/:send", f"{API}&excluded={b}"), "g").status == 202
    (msg,) = alice.frames()
    assert (msg["from"], msg["group"], msg["data"], msg.get("fromUserId")) == (
        "group", "room", "g", None)
    assert bob.frames() == []
    assert text(net, hub_path("users/bob/:send"), "u").status == 202
    assert (messages(alice), messages(bob)) == ([], [("text", "u", "server")])
    assert text(net, hub_path(f"connections/{a}/:send"), "c").status == 202
    assert (messages(alice), messages(bob)) == ([("text", "c", "server")], [])
    assert text(net, hub_path("connections/nobody/:send"), "c").status == 202


def test_hub_names_are_case_insensitive() -> None:
    net = Net()
    alice = connect(net, "alice")
    alice.frames()
    assert text(net, f"/api/hubs/CHAT/:send?{API}", "hi").status == 202
    assert messages(alice) == [("text", "hi", "server")]


# -- errors ---------------------------------------------------------------------------------


def test_auth_errors_are_401_with_a_reason() -> None:
    net = Net()
    target = hub_path(":send")
    missing = call(net, "POST", target, b"x", auth=None, headers=[("Content-Type",
                                                                    "text/plain")])
    assert missing.status == 401 and "Bearer" in missing.json()["message"]
    other_key = "another-key-of-at-least-32-bytes-0123456789"
    for auth, why in ((f"Bearer {rest_token(target, key=other_key)}", "access key"),
                      (f"Bearer {rest_token(target, exp=NOW - 3600)}", "expired"),
                      (f"Bearer {rest_token(hub_path('groups/g/:send'))}", "audience"),
                      ("Bearer not-a-jwt", "JWT")):
        response = call(net, "POST", target, b"x", auth=auth,
                        headers=[("Content-Type", "text/plain")])
        assert response.status == 401, why
        assert response.json()["code"] == "Unauthorized" and why in response.json()["message"]
    # The official emulator's leniency: the URL without its query is a valid audience too.
    lenient = f"Bearer {rest_token(target, aud=ENDPOINT + target.split('?')[0])}"
    assert call(net, "POST", target, b"x", auth=lenient,
                headers=[("Content-Type", "text/plain")]).status == 202


def test_paths_methods_versions_and_names() -> None:
    net = Net()
    assert call(net, "GET", hub_path("nothing/here")).status == 404
    assert call(net, "GET", "/api/elsewhere").status == 404
    wrong = call(net, "GET", hub_path(":send"))
    assert wrong.status == 405 and wrong.headers["allow"] == "POST"
    bad_version = text(net, hub_path(":send", "api-version=2019-01-01"), "x")
    assert bad_version.status == 400 and "2024-12-01" in bad_version.json()["message"]
    assert text(net, hub_path(":send", ""), "x").status == 202  # missing: the latest
    assert call(net, "HEAD", hub_path("groups/%20")).status == 400
    assert text(net, f"/api/hubs/1bad/:send?{API}", "x").status == 400
    unsupported = call(net, "POST", hub_path(":send"), b"x",
                       headers=[("Content-Type", "image/png")])
    assert unsupported.status == 415
    assert call(net, "POST", hub_path(":send"), b"{", headers=[(
        "Content-Type", "application/json")]).status == 400
    unknown = call(net, "HEAD", hub_path("permissions/fly/connections/c"))
    assert unknown.status == 400


def test_bodies_over_1_mib_are_413() -> None:
    net = Net()
    big = b"x" * (1024 * 1024 + 1)
    declared = call(net, "POST", hub_path(":send"), big, headers=[("Content-Type",
                                                                   "text/plain")])
    assert declared.status == 413 and "1 MiB" in declared.json()["message"]
    chunked = call(net, "POST", hub_path(":send"), big, chunked=True,
                   headers=[("Content-Type", "text/plain")])
    assert chunked.status == 413


def test_keep_alive_serves_several_requests() -> None:
    net = Net()
    peer = HttpPeer(net)
    assert peer.request("GET", "/api/health", auth=None).status == 200
    assert peer.request("HEAD", hub_path("users/nobody")).status == 404
    assert peer.request("POST", hub_path(":send"), b"x",
                        headers=[("Content-Type", "text/plain")]).status == 202
    assert not peer.tcp_closed


# -- closes and existence --------------------------------------------------------------------


def test_close_connections_all_group_user_and_one() -> None:
    net = Net()
    a1, a2, bob, dan = (connect(net, u) for u in ("alice", "alice", "bob", "dan"))
    ids = {c: cid(c) for c in (a1, a2, bob, dan)}
    bob.send(type="joinGroup", group="room", ackId=1)
    response = call(net, "POST", hub_path("users/alice/:closeConnections",
                                          f"{API}&excluded={ids[a2]}&reason=bye"))
    assert response.status == 204
    assert closed(a1) is not None and closed(a1).code == 1000  # type: ignore[union-attr]
    assert closed(a2) is None
    assert {"type": "system", "event": "disconnected", "message": "bye"} in a1.frames()
    assert call(net, "HEAD", hub_path(f"connections/{ids[a1]}")).status == 404
    assert call(net, "HEAD", hub_path(f"connections/{ids[a2]}")).status == 200
    assert call(net, "HEAD", hub_path("groups/room")).status == 200
    assert call(net, "HEAD", hub_path("users/alice")).status == 200
    assert call(net, "POST", hub_path("groups/room/:closeConnections")).status == 204
    assert closed(bob) is not None
    assert call(net, "HEAD", hub_path("groups/room")).status == 404
    assert call(net, "DELETE", hub_path(f"connections/{ids[a2]}", f"{API}&reason=x")).status \
        == 204
    assert closed(a2) is not None
    assert call(net, "HEAD", hub_path("users/alice")).status == 404
    assert call(net, "POST", hub_path(":closeConnections")).status == 204
    assert closed(dan) is not None


# -- groups ---------------------------------------------------------------------------------


def test_group_membership_operations() -> None:
    net = Net()
    alice, bob = connect(net, "alice"), connect(net, "bob")
    a, b = cid(alice), cid(bob)
    assert call(net, "PUT", hub_path(f"groups/room/connections/{a}")).status == 200
    assert call(net, "PUT", hub_path("groups/room/connections/ghost")).status == 404
    assert call(net, "PUT", hub_path("users/bob/groups/room")).status == 200
    text(net, hub_path("groups/room/:send"), "1")
    assert (len(alice.frames()), len(bob.frames())) == (1, 1)
    assert call(net, "DELETE", hub_path(f"groups/room/connections/{a}")).status == 204
    text(net, hub_path("groups/room/:send"), "2")
    assert (len(alice.frames()), len(bob.frames())) == (0, 1)
    assert call(net, "DELETE", hub_path("users/bob/groups/room")).status == 204
    assert call(net, "HEAD", hub_path("groups/room")).status == 404
    for group in ("x", "y"):
        call(net, "PUT", hub_path(f"users/bob/groups/{group}"))
        call(net, "PUT", hub_path(f"groups/{group}/connections/{a}"))
    assert call(net, "DELETE", hub_path("users/bob/groups")).status == 204
    assert call(net, "DELETE", hub_path(f"connections/{a}/groups")).status == 204
    assert call(net, "HEAD", hub_path("groups/x")).status == 404
    assert call(net, "HEAD", hub_path("groups/y")).status == 404
    assert b


def test_add_to_and_remove_from_groups_with_a_filter() -> None:
    net = Net()
    alice, bob = connect(net, "alice"), connect(net, "bob")
    alice.frames()
    bob.frames()
    body = json.dumps({"groups": ["g1", "g2"], "filter": "userId eq 'alice'"}).encode()
    assert call(net, "POST", hub_path(":addToGroups"), body,
                headers=[("Content-Type", "application/json")]).status == 200
    text(net, hub_path("groups/g2/:send"), "hi")
    assert (len(alice.frames()), len(bob.frames())) == (1, 0)
    body = json.dumps({"groups": ["g2"], "filter": "'g1' in groups"}).encode()
    assert call(net, "POST", hub_path(":removeFromGroups"), body,
                headers=[("Content-Type", "application/json")]).status == 200
    assert call(net, "HEAD", hub_path("groups/g2")).status == 404
    assert call(net, "HEAD", hub_path("groups/g1")).status == 200
    bad = call(net, "POST", hub_path(":addToGroups"), b'{"groups": "g1"}',
               headers=[("Content-Type", "application/json")])
    assert bad.status == 400


def test_list_connections_pages_through_next_links() -> None:
    net = Net()
    clients = [connect(net, f"user{i}") for i in range(5)]
    for client in clients:
        client.send(type="joinGroup", group="room", ackId=1)
    seen: list[str] = []
    target: str | None = hub_path("groups/room/connections", f"{API}&maxpagesize=2&top=4")
    pages = 0
    while target is not None:
        page = call(net, "GET", target)
        assert page.status == 200
        doc = page.json()
        seen += [m["connectionId"] for m in doc["value"]]
        assert all(m["userId"].startswith("user") for m in doc["value"])
        link = doc.get("nextLink")
        target = link[len(ENDPOINT):] if link else None
        pages += 1
    assert pages == 2 and len(seen) == 4 and len(set(seen)) == 4
    everyone = call(net, "GET", hub_path("groups/room/connections")).json()
    assert len(everyone["value"]) == 5 and "nextLink" not in everyone


# -- permissions and tokens ------------------------------------------------------------------


def test_granted_permissions_take_effect_and_revoking_takes_them_back() -> None:
    net = Net()
    dave = Client(net, f"/client/hubs/chat?access_token={token('dave', roles=())}")
    d = cid(dave)
    perm = hub_path(f"permissions/joinLeaveGroup/connections/{d}", f"{API}&targetName=room")
    dave.send(type="joinGroup", group="room", ackId=1)
    assert dave.frames()[0]["success"] is False
    assert call(net, "HEAD", perm).status == 404
    assert call(net, "PUT", perm).status == 200
    assert call(net, "HEAD", perm).status == 200
    dave.send(type="joinGroup", group="room", ackId=2)
    assert dave.frames()[0]["success"] is True
    send = hub_path(f"permissions/sendToGroup/connections/{d}")
    assert call(net, "PUT", send).status == 200  # every group
    dave.send(type="sendToGroup", group="other", ackId=3, dataType="text", data="x")
    assert dave.frames()[0]["success"] is True
    assert call(net, "DELETE", perm).status == 204
    assert call(net, "HEAD", perm).status == 404
    dave.send(type="leaveGroup", group="room", ackId=4)
    assert dave.frames()[0]["error"]["name"] == "Forbidden"
    assert call(net, "PUT", hub_path("permissions/sendToGroup/connections/ghost")).status == 404


def test_generate_token_makes_a_working_client_token() -> None:
    net = Net()
    response = call(net, "POST", hub_path(":generateToken", f"{API}&userId=eve&role="
                                          "webpubsub.joinLeaveGroup&role=webpubsub.sendToGroup"
                                          "&group=g1&minutesToExpire=5"))
    assert response.status == 200
    tok = response.json()["token"]
    claims = verify_client_token(tok, key=KEY, endpoint=ENDPOINT, hub="chat", now=NOW)
    assert (claims.user_id, claims.roles, claims.groups) == (
        "eve", ("webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"), ("g1",))
    assert claims.expires_at == NOW + 300 and claims.audience == f"{ENDPOINT}/client/hubs/chat"
    eve = Client(net, f"/client/hubs/chat?access_token={tok}")
    assert cid(eve)
    assert call(net, "HEAD", hub_path("groups/g1")).status == 200
    mqtt = call(net, "POST", hub_path(":generateToken", f"{API}&clientType=MQTT"))
    assert mqtt.status == 501
    assert call(net, "POST", hub_path(":generateToken", f"{API}&minutesToExpire=0")).status \
        == 400


# -- the sans-IO pieces ----------------------------------------------------------------------


def test_permissions_grant_revoke_has() -> None:
    none = Permissions.from_roles(())
    assert not none.has("sendToGroup") and not none.can_send("g")
    one = none.granted("sendToGroup", "g")
    assert one.can_send("g") and not one.can_send("h") and not one.has("sendToGroup")
    anyg = Permissions.from_roles(["webpubsub.joinLeaveGroup"])
    minus = anyg.revoked("joinLeaveGroup", "g")
    assert not minus.can_join("g") and minus.can_join("h")
    assert not minus.has("joinLeaveGroup"), "no longer every group"
    assert minus.granted("joinLeaveGroup", "g").can_join("g")
    assert minus.granted("joinLeaveGroup").has("joinLeaveGroup")
    patterned = Permissions.from_roles(["webpubsub.sendToGroups.a.*", "webpubsub.sendToGroup.b"])
    gone = patterned.revoked("sendToGroup")
    assert not gone.can_send("a.x") and not gone.can_send("b")
    with pytest.raises(ValueError):
        none.granted("fly")
    with pytest.raises(ValueError):
        none.granted("sendToGroup", " ")


def test_hub_permission_methods() -> None:
    hub = Hub("h", connection_id_factory=iter(["c1"]).__next__)
    result = hub.connect(0.0, user_id="u", subprotocol="json.webpubsub.azure.v1")
    assert not hub.has_permission("c1", "joinLeaveGroup", "g")
    assert hub.grant_permission("c1", "joinLeaveGroup", "g")
    assert hub.has_permission("c1", "joinLeaveGroup", "g")
    actions = hub.client_text(0.0, "c1", '{"type":"joinGroup","group":"g","ackId":1}')
    assert '"success":true' in str(actions[-1])
    assert hub.revoke_permission("c1", "joinLeaveGroup", "g")
    actions = hub.client_text(0.0, "c1", '{"type":"leaveGroup","group":"g","ackId":2}')
    assert "Forbidden" in str(actions[-1])
    assert not hub.grant_permission("nobody", "sendToGroup")
    assert not hub.revoke_permission("nobody", "sendToGroup")
    assert hub.group_members("g") == [("c1", "u")] and hub.user_connection_ids("u") == ["c1"]
    assert result.connection_id == "c1"


def test_odata_filter_subset() -> None:
    s = FilterSubject("c1", "alice", frozenset({"g1"}))
    anon = FilterSubject("c2", None, frozenset())
    cases = {
        "userId eq 'alice'": (True, False),
        "userId ne 'alice'": (False, True),
        "'g1' in groups and not ('g2' in groups)": (True, False),
        "userId in ('bob', 'alice')": (True, False),
        "connectionId eq 'c2' or userId eq null": (False, True),
        "userId gt 'a'": (True, False),
        "userId eq 'o''b'": (False, False),
    }
    for text_, want in cases.items():
        f = parse_filter(text_)
        assert (f(s), f(anon)) == want, text_
    for bad in ("", "length(userId) eq 1", "userId eq", "userId eq 'a' )", "groups eq null",
                "userId has 'a'", "userId eq 'a' and"):
        with pytest.raises(ValueError):
            parse_filter(bad)


def test_a_body_that_never_ends_is_408() -> None:
    net = Net()
    peer = HttpPeer(net)
    target = hub_path(":send")
    head = peer.h11.send(h11.Request(method="POST", target=target, headers=[
        ("Host", "127.0.0.1:8080"), ("Content-Type", "text/plain"), ("Content-Length", "10"),
        ("Authorization", f"Bearer {rest_token(target)}")])) or b""
    peer.send(head + b"half")
    assert not peer.inbox, "no answer before the body is complete"
    net.now += net.svc.handshake_timeout + 1
    net.svc.handle_timer(net.now)
    net.pump()
    assert peer.response().status == 408 and peer.tcp_closed


def test_parameter_ranges_and_tokens() -> None:
    net = Net()
    assert text(net, hub_path(":send", f"{API}&messageTtlSeconds=301"), "x").status == 400
    assert text(net, hub_path(":send", f"{API}&messageTtlSeconds=abc"), "x").status == 400
    assert text(net, hub_path(":send", f"{API}&messageTtlSeconds=300"), "x").status == 202
    bad_page = call(net, "GET", hub_path("groups/g/connections", f"{API}&maxpagesize=500"))
    assert bad_page.status == 400 and "maxpagesize" in bad_page.json()["message"]
    bad_token = call(net, "GET", hub_path("groups/g/connections",
                                          f"{API}&continuationToken=%FF%FE"))
    assert bad_token.status == 400 and "continuationToken" in bad_token.json()["message"]
    assert call(net, "HEAD", hub_path("users/" + "u" * 1025)).status == 400
    assert call(net, "HEAD", hub_path("permissions/sendToGroup/connections/c",
                                      f"{API}&targetName=%20")).status == 400
    assert call(net, "POST", hub_path(":generateToken", f"{API}&clientType=Other")).status \
        == 400


def test_without_pyjwt_the_answer_is_500_saying_so(monkeypatch: pytest.MonkeyPatch) -> None:
    net = Net()
    peer = HttpPeer(net)
    target = hub_path("users/u")
    auth = f"Bearer {rest_token(target)}"
    monkeypatch.setitem(__import__("sys").modules, "jwt", None)  # import jwt now fails
    response = peer.request("HEAD", target, auth=auth)
    assert response.status == 500
    response = peer.request("POST", hub_path(":send", ""), b"x", auth=auth)
    assert response.status == 500 and "PyJWT" in response.json()["message"]
