"""Web PubSub hub core: connections, groups, acks, reliable delivery, recovery, REST operations."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Sequence
from typing import Any

import pytest

from hyco_proto.webpubsub import messages
from hyco_proto.webpubsub.hub import (
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    CloseTransport,
    Deliver,
    Hub,
    HubAction,
    UpstreamEvent,
)
from hyco_proto.webpubsub.messages import BinaryData, JsonData, TextData

JSON = messages.JSON_SUBPROTOCOL
RELIABLE = messages.JSON_RELIABLE_SUBPROTOCOL
ALL_ROLES = ("webpubsub.joinLeaveGroup", "webpubsub.sendToGroup")


def make_hub(**kwargs: Any) -> Hub:
    ids = (f"c{n}" for n in itertools.count(1))
    tokens = (f"t{n}" for n in itertools.count(1))
    return Hub(connection_id_factory=lambda: next(ids),
               reconnection_token_factory=lambda: next(tokens), **kwargs)


def msg(**fields: Any) -> str:
    return json.dumps(fields)


def sent(actions: Sequence[HubAction], cid: str) -> list[Any]:
    """The frames delivered to ``cid``: JSON objects for text frames that parse, else raw."""
    out: list[Any] = []
    for action in actions:
        if isinstance(action, Deliver) and action.connection_id == cid:
            if isinstance(action.frame, str):
                try:
                    out.append(json.loads(action.frame))
                    continue
                except ValueError:
                    pass
            out.append(action.frame)
    return out


def closes(actions: Sequence[HubAction]) -> list[CloseTransport]:
    return [a for a in actions if isinstance(a, CloseTransport)]


def join(hub: Hub, cid: str, group: str, ack_id: int | None = None) -> list[HubAction]:
    fields: dict[str, Any] = {"type": "joinGroup", "group": group}
    if ack_id is not None:
        fields["ackId"] = ack_id
    return hub.client_text(0.0, cid, msg(**fields))


# --------------------------------------------------------------------------------------------
# connect


def test_connected_is_first_frame_with_token_on_reliable_only() -> None:
    hub = make_hub()
    rel = hub.connect(0.0, user_id="alice", subprotocol=RELIABLE)
    assert rel.connection_id == "c1" and rel.reconnection_token == "t1"
    assert sent(rel.actions, "c1") == [{"type": "system", "event": "connected", "userId": "alice",
                                        "connectionId": "c1", "reconnectionToken": "t1"}]
    plain = hub.connect(0.0, subprotocol=JSON)
    assert plain.reconnection_token is None
    assert sent(plain.actions, "c2") == [{"type": "system", "event": "connected",
                                          "userId": None, "connectionId": "c2"}]
    raw = hub.connect(0.0, user_id="bob")
    assert raw.actions == [] and raw.reconnection_token is None
    assert hub.connection_exists("c3") and hub.user_exists("bob") and hub.user_exists("alice")
    with pytest.raises(ValueError):
        hub.connect(0.0, subprotocol="protobuf.webpubsub.azure.v1")


def test_initial_groups_are_joined_without_permission() -> None:
    hub = make_hub()
    c = hub.connect(0.0, groups=["g1", "g2", " "], subprotocol=JSON).connection_id
    assert hub.connection_groups(c) == {"g1", "g2"}
    assert hub.group_exists("g1") and not hub.group_exists(" ")


def test_id_factory_collision_is_retried() -> None:
    ids = iter(["a", "a", "b"])
    hub = Hub(connection_id_factory=lambda: next(ids))
    assert hub.connect(0.0).connection_id == "a"
    assert hub.connect(0.0).connection_id == "b"


# --------------------------------------------------------------------------------------------
# groups, acks, permissions


def test_join_send_echo_and_from_user_id() -> None:
    hub = make_hub()
    a = hub.connect(0.0, user_id="alice", roles=ALL_ROLES, subprotocol=JSON).connection_id
    b = hub.connect(0.0, roles=ALL_ROLES, subprotocol=JSON).connection_id
    assert sent(join(hub, a, "g", 1), a) == [{"type": "ack", "ackId": 1, "success": True}]
    assert join(hub, b, "g") == []
    out = hub.client_text(0.0, a, msg(type="sendToGroup", group="g", ackId=2,
                                      dataType="text", data="hi"))
    expected = {"type": "message", "from": "group", "group": "g", "fromUserId": "alice",
                "dataType": "text", "data": "hi"}
    assert sent(out, b) == [expected]
    assert sent(out, a) == [expected, {"type": "ack", "ackId": 2, "success": True}]
    # from an anonymous sender, noEcho: only b, with fromUserId null
    out = hub.client_text(0.0, b, msg(type="sendToGroup", group="g", noEcho=True,
                                      data={"x": 1}))
    assert sent(out, b) == []
    assert sent(out, a) == [{"type": "message", "from": "group", "group": "g",
                             "fromUserId": None, "dataType": "json", "data": {"x": 1}}]
    # leaving stops delivery
    hub.client_text(0.0, b, msg(type="leaveGroup", group="g", ackId=9))
    out = hub.client_text(0.0, a, msg(type="sendToGroup", group="g", data=1))
    assert sent(out, b) == []
    assert hub.connection_groups(b) == frozenset()


def test_forbidden_without_role_connection_stays_open() -> None:
    hub = make_hub()
    a = hub.connect(0.0, subprotocol=JSON).connection_id
    out = join(hub, a, "g", 1)
    assert sent(out, a) == [{"type": "ack", "ackId": 1, "success": False, "error": {
        "name": "Forbidden", "message": "The client does not have permission to join group 'g'."}}]
    assert hub.connection_groups(a) == frozenset() and not closes(out)
    out = hub.client_text(0.0, a, msg(type="sendToGroup", group="g", ackId=2, data="x"))
    assert sent(out, a)[0]["error"]["name"] == "Forbidden"
    # without ackId: silence
    assert join(hub, a, "g") == []
    # leaving is checked too (a member by REST cannot leave by itself)
    hub.add_connection_to_group("g", a)
    assert sent(hub.client_text(0.0, a, msg(type="leaveGroup", group="g", ackId=5)), a)[0][
        "error"]["message"] == "The client does not have permission to leave group 'g'."
    assert hub.connection_groups(a) == {"g"}
    # a failed ackId is not recorded: the same id may be used again, and succeed
    out = hub.client_text(0.0, a, msg(type="event", event="e", ackId=1, data=1))
    assert sent(out, a) == [{"type": "ack", "ackId": 1, "success": True}]


def test_group_scoped_roles() -> None:
    hub = make_hub()
    roles = ["webpubsub.joinLeaveGroup.g1", "webpubsub.sendToGroup.g1"]
    a = hub.connect(0.0, roles=roles, subprotocol=JSON).connection_id
    assert sent(join(hub, a, "g1", 1), a)[0]["success"] is True
    assert sent(join(hub, a, "g2", 2), a)[0]["error"]["name"] == "Forbidden"
    out = hub.client_text(0.0, a, msg(type="sendToGroup", group="g1", ackId=3, data="ok"))
    assert [f["type"] for f in sent(out, a)] == ["message", "ack"]
    out = hub.client_text(0.0, a, msg(type="sendToGroup", group="g2", ackId=4, data="no"))
    assert sent(out, a) == [{"type": "ack", "ackId": 4, "success": False, "error": {
        "name": "Forbidden",
        "message": "The client does not have permission to send to group 'g2'."}}]


def test_duplicate_ack_id_is_not_run_again() -> None:
    hub = make_hub()
    a = hub.connect(0.0, roles=ALL_ROLES, subprotocol=JSON).connection_id
    b = hub.connect(0.0, groups=["g"], subprotocol=JSON).connection_id
    send = msg(type="sendToGroup", group="g", ackId=7, data="once")
    assert len(sent(hub.client_text(0.0, a, send), b)) == 1
    out = hub.client_text(0.0, a, send)
    assert sent(out, b) == []
    assert sent(out, a) == [{"type": "ack", "ackId": 7, "success": False, "error": {
        "name": "Duplicate", "message": "Message with ack-id: 7 has been processed."}}]
    # per connection: b may use the same id
    assert sent(hub.client_text(0.0, b, msg(type="event", event="e", ackId=7, data=1)), b)[
        -1]["success"] is True


def test_event_goes_upstream_then_ack() -> None:
    hub = make_hub()
    a = hub.connect(0.0, user_id="u", subprotocol=JSON).connection_id
    out = hub.client_text(0.0, a, msg(type="event", event="chat", ackId=1, dataType="binary",
                                      data=base64.b64encode(b"\x00\x01").decode()))
    assert out[0] == UpstreamEvent(a, "u", "chat", BinaryData(b"\x00\x01"))
    assert sent(out[1:], a) == [{"type": "ack", "ackId": 1, "success": True}]
    out = hub.client_text(0.0, a, msg(type="event", event="chat", data="x", dataType="text"))
    assert out == [UpstreamEvent(a, "u", "chat", TextData("x"))]


def test_ping_pong_and_invalid_group_name() -> None:
    hub = make_hub()
    a = hub.connect(0.0, roles=ALL_ROLES, subprotocol=JSON).connection_id
    assert sent(hub.client_text(0.0, a, '{"type":"ping"}'), a) == [{"type": "pong"}]
    assert sent(join(hub, a, "", 3), a)[0]["error"]["name"] == "BadRequest"


# --------------------------------------------------------------------------------------------
# malformed frames


@pytest.mark.parametrize("frame", ["not json", "[]", '{"type":"nope"}',
                                   '{"type":"sendToGroup","group":"g"}'])
def test_malformed_frame_closes_1007_after_disconnected(frame: str) -> None:
    hub = make_hub()
    a = hub.connect(0.0, groups=["g"], subprotocol=RELIABLE).connection_id
    out = hub.client_text(0.0, a, frame)
    assert sent(out, a)[0]["type"] == "system" and sent(out, a)[0]["event"] == "disconnected"
    [close] = closes(out)
    assert close.connection_id == a and close.code == 1007
    assert not hub.connection_exists(a) and not hub.group_exists("g")
    assert not hub.recover(1.0, a, "t1", RELIABLE).accepted


def test_oversized_frames_close_1009() -> None:
    hub = make_hub(max_frame_size=100)
    a = hub.connect(0.0, subprotocol=JSON).connection_id
    out = hub.client_text(0.0, a, msg(type="event", event="e", data="x" * 200))
    assert [c.code for c in closes(out)] == [1009]
    raw = hub.connect(0.0).connection_id
    assert [c.code for c in closes(hub.client_binary(0.0, raw, b"x" * 101))] == [1009]
    raw2 = hub.connect(0.0).connection_id
    out = hub.client_text(0.0, raw2, "y" * 101)
    assert out == [CloseTransport(raw2, 1009, "The message is 101 bytes, over the limit of 100.")]


def test_default_limit_is_one_mib() -> None:
    hub = make_hub()
    a = hub.connect(0.0, subprotocol=JSON).connection_id
    ok = msg(type="event", event="e", data="x" * (1024 * 1024 - 100))
    assert closes(hub.client_text(0.0, a, ok)) == []
    big = msg(type="event", event="e", data="x" * (1024 * 1024))
    assert [c.code for c in closes(hub.client_text(0.0, a, big))] == [1009]


def test_binary_frame_on_json_subprotocol_closes_1003() -> None:
    hub = make_hub()
    a = hub.connect(0.0, subprotocol=JSON).connection_id
    assert [c.code for c in closes(hub.client_binary(0.0, a, b"{}"))] == [CLOSE_UNSUPPORTED_DATA]


# --------------------------------------------------------------------------------------------
# raw clients


def test_raw_client_frames_are_message_events() -> None:
    hub = make_hub()
    r = hub.connect(0.0, user_id="raw").connection_id
    assert hub.client_text(0.0, r, "hello") == [UpstreamEvent(r, "raw", "message",
                                                              TextData("hello"))]
    assert hub.client_binary(0.0, r, b"\x01") == [UpstreamEvent(r, "raw", "message",
                                                                BinaryData(b"\x01"))]
    # a raw client's text is not parsed as a JSON request
    assert hub.client_text(0.0, r, '{"type":"joinGroup","group":"g"}')[0] == UpstreamEvent(
        r, "raw", "message", TextData('{"type":"joinGroup","group":"g"}'))
    assert hub.connection_groups(r) == frozenset()


def test_raw_and_json_clients_in_one_group() -> None:
    hub = make_hub()
    a = hub.connect(0.0, roles=ALL_ROLES, groups=["g"], subprotocol=RELIABLE).connection_id
    r = hub.connect(0.0, groups=["g"]).connection_id
    cases: list[tuple[dict[str, Any], str | bytes]] = [
        ({"dataType": "text", "data": "plain"}, "plain"),
        ({"dataType": "json", "data": {"k": [1, "é"]}}, '{"k":[1,"é"]}'),
        ({"data": "str"}, '"str"'),
        ({"dataType": "binary", "data": base64.b64encode(b"\xff\x00").decode()}, b"\xff\x00"),
    ]
    for fields, raw_frame in cases:
        out = hub.client_text(0.0, a, msg(type="sendToGroup", group="g", noEcho=True, **fields))
        assert [(d.connection_id, d.frame) for d in out if isinstance(d, Deliver)] == [
            (r, raw_frame)]
    # raw frames carry no sequence id: the reliable sender's counter did not move
    out = hub.send_to_group("g", TextData("srv"))
    assert sent(out, a)[0]["sequenceId"] == 1 and sent(out, r) == ["srv"]
    assert hub.send_to_connection(r, BinaryData(b"b")) == [Deliver(r, b"b")]


# --------------------------------------------------------------------------------------------
# reliable


def test_sequence_ids_and_cumulative_ack() -> None:
    hub = make_hub()
    a = hub.connect(0.0, groups=["g"], subprotocol=RELIABLE).connection_id
    p = hub.connect(0.0, groups=["g"], subprotocol=JSON).connection_id
    seqs = []
    for n in range(3):
        out = hub.send_to_group("g", JsonData(n))
        seqs.append(sent(out, a)[0]["sequenceId"])
        assert "sequenceId" not in sent(out, p)[0]
    out = hub.send_to_connection(a, TextData("s"))
    assert sent(out, a) == [{"type": "message", "from": "server", "dataType": "text",
                             "data": "s", "sequenceId": 4}]
    assert seqs == [1, 2, 3]
    assert hub.client_text(0.0, a, msg(type="sequenceAck", sequenceId=2)) == []
    hub.transport_lost(1.0, a)
    res = hub.recover(2.0, a, "t1", RELIABLE)
    assert res.accepted
    assert [f["sequenceId"] for f in sent(res.actions, a)] == [3, 4]
    # sequenceAck on the plain protocol is ignored
    assert hub.client_text(0.0, p, msg(type="sequenceAck", sequenceId=1)) == []


def test_reliable_buffer_limit_closes_1008_without_recovery() -> None:
    hub = make_hub(max_unacked_messages=3)
    a = hub.connect(0.0, user_id="u", groups=["g"], subprotocol=RELIABLE).connection_id
    for n in range(3):
        assert closes(hub.send_to_user("u", JsonData(n))) == []
    hub.client_text(0.0, a, msg(type="sequenceAck", sequenceId=1))
    assert closes(hub.send_to_user("u", JsonData(3))) == []
    out = hub.send_to_user("u", JsonData(4))
    assert sent(out, a) == [{"type": "system", "event": "disconnected",
                             "message": "The reliable message buffer is full."}]
    assert closes(out) == [CloseTransport(a, CLOSE_POLICY_VIOLATION,
                                           "The reliable message buffer is full.")]
    assert not hub.connection_exists(a) and not hub.group_exists("g")
    assert not hub.recover(0.0, a, "t1", RELIABLE).accepted


def test_default_buffer_limits() -> None:
    hub = make_hub()
    a = hub.connect(0.0, subprotocol=RELIABLE).connection_id
    for n in range(1000):
        assert closes(hub.send_to_connection(a, JsonData(n))) == []
    assert [c.code for c in closes(hub.send_to_connection(a, JsonData(0)))] == [1008]
    b = hub.connect(0.0, subprotocol=RELIABLE).connection_id
    chunk = BinaryData(b"\x00" * (3 * 1024 * 1024))  # 4 MiB of base64
    codes = [[c.code for c in closes(hub.send_to_connection(b, chunk))] for _ in range(4)]
    assert codes == [[], [], [], [1008]]


# --------------------------------------------------------------------------------------------
# recovery


def test_recovery_replays_in_order_and_keeps_state() -> None:
    hub = make_hub()
    a = hub.connect(0.0, roles=ALL_ROLES, groups=["g"], subprotocol=RELIABLE).connection_id
    hub.client_text(0.0, a, msg(type="event", event="e", ackId=5, data=1))
    hub.transport_lost(10.0, a)
    assert hub.next_deadline() == 40.0
    # while detached, messages are numbered and buffered, not delivered
    assert hub.send_to_group("g", TextData("one")) == []
    assert hub.send_to_all(TextData("two")) == []
    assert hub.client_text(11.0, a, '{"type":"ping"}') == []  # no transport: ignored
    res = hub.recover(39.9, a, "t1", RELIABLE)
    assert res.accepted and res.close_code is None
    frames = sent(res.actions, a)
    assert [(f["sequenceId"], f["data"], f["from"]) for f in frames] == [
        (1, "one", "group"), (2, "two", "server")]
    assert all(f["type"] == "message" for f in frames)  # no new connected message
    assert hub.next_deadline() is None
    assert hub.connection_groups(a) == {"g"}
    out = hub.client_text(40.0, a, msg(type="event", event="e", ackId=5, data=1))
    assert sent(out, a)[0]["error"]["name"] == "Duplicate"  # ackIds survive recovery
    assert sent(hub.send_to_group("g", JsonData(3)), a)[0]["sequenceId"] == 3


def test_recovery_window_expires() -> None:
    hub = make_hub()
    a = hub.connect(0.0, user_id="u", groups=["g"], subprotocol=RELIABLE).connection_id
    hub.transport_lost(5.0, a)
    assert hub.handle_timer(34.9) == [] and hub.connection_exists(a)
    assert hub.handle_timer(35.0) == [a]
    assert not hub.connection_exists(a) and not hub.group_exists("g")
    assert not hub.user_exists("u") and hub.next_deadline() is None
    res = hub.recover(35.0, a, "t1", RELIABLE)
    assert not res.accepted and res.close_code == 1008
    # recovering late without the timer having run is refused too
    b = hub.connect(0.0, subprotocol=RELIABLE).connection_id
    hub.transport_lost(0.0, b)
    assert not hub.recover(30.0, b, "t2", RELIABLE).accepted
    assert not hub.connection_exists(b)


@pytest.mark.parametrize(("cid", "token", "proto"), [
    ("c1", "wrong", RELIABLE), ("c1", "t1", JSON), ("nope", "t1", RELIABLE),
    ("c2", "t1", JSON),
])
def test_recovery_refused(cid: str, token: str, proto: str) -> None:
    hub = make_hub()
    hub.connect(0.0, subprotocol=RELIABLE)
    hub.connect(0.0, subprotocol=JSON)
    hub.transport_lost(0.0, "c1")
    res = hub.recover(1.0, cid, token, proto)
    assert not res.accepted and res.actions == []
    assert (res.close_code, res.reason) == (1008, "The connection could not be recovered.")
    assert hub.recover(1.0, "c1", "t1", RELIABLE).accepted


def test_recovery_while_old_transport_still_attached_takes_over() -> None:
    hub = make_hub()
    a = hub.connect(0.0, subprotocol=RELIABLE).connection_id
    hub.send_to_connection(a, TextData("x"))
    res = hub.recover(1.0, a, "t1", RELIABLE)
    assert res.accepted and [f["data"] for f in sent(res.actions, a)] == ["x"]
    assert hub.next_deadline() is None


def test_non_reliable_connections_end_with_their_transport() -> None:
    hub = make_hub()
    p = hub.connect(0.0, user_id="u", groups=["g"], subprotocol=JSON).connection_id
    r = hub.connect(0.0, groups=["g"]).connection_id
    hub.transport_lost(0.0, p)
    hub.transport_lost(0.0, r)
    assert not hub.connection_exists(p) and not hub.connection_exists(r)
    assert not hub.group_exists("g") and not hub.user_exists("u")
    assert hub.next_deadline() is None


# --------------------------------------------------------------------------------------------
# REST-style operations


def test_rest_sends() -> None:
    hub = make_hub()
    a = hub.connect(0.0, user_id="u", groups=["g"], subprotocol=JSON).connection_id
    b = hub.connect(0.0, user_id="u", subprotocol=JSON).connection_id
    c = hub.connect(0.0, user_id="v", groups=["g"], subprotocol=JSON).connection_id
    server = {"type": "message", "from": "server", "dataType": "json", "data": 1}
    out = hub.send_to_all(JsonData(1), excluded=[c])
    assert sent(out, a) == [server] and sent(out, b) == [server] and sent(out, c) == []
    out = hub.send_to_user("u", JsonData(1))
    assert {d.connection_id for d in out if isinstance(d, Deliver)} == {a, b}
    out = hub.send_to_group("g", BinaryData(b"\x01"), excluded=[a])
    assert sent(out, c) == [{"type": "message", "from": "group", "group": "g",
                             "fromUserId": None, "dataType": "binary", "data": "AQ=="}]
    assert sent(out, a) == []
    assert hub.send_to_connection("missing", JsonData(1)) == []
    assert hub.send_to_user("nobody", JsonData(1)) == []
    assert hub.send_to_group("empty", JsonData(1)) == []


def test_rest_group_membership() -> None:
    hub = make_hub()
    a = hub.connect(0.0, user_id="u", subprotocol=JSON).connection_id
    b = hub.connect(0.0, user_id="u", groups=["x", "y"], subprotocol=JSON).connection_id
    assert hub.add_connection_to_group("g", a) and not hub.add_connection_to_group("g", "zz")
    assert hub.group_exists("g")
    assert hub.remove_connection_from_group("g", a)
    assert not hub.remove_connection_from_group("g", a) and not hub.group_exists("g")
    assert hub.add_user_to_group("h", "u") == 2
    hub.remove_user_from_group("h", "u")
    assert not hub.group_exists("h")
    hub.remove_user_from_all_groups("u")
    assert hub.connection_groups(b) == frozenset() and not hub.group_exists("x")
    with pytest.raises(ValueError):
        hub.add_connection_to_group("", a)


def test_rest_close_connections() -> None:
    hub = make_hub()
    a = hub.connect(0.0, user_id="u", groups=["g"], subprotocol=RELIABLE).connection_id
    r = hub.connect(0.0, user_id="u").connection_id
    c = hub.connect(0.0, user_id="v", groups=["g"], subprotocol=JSON).connection_id
    d = hub.connect(0.0, user_id="w", subprotocol=JSON).connection_id
    out = hub.close_user_connections("u", "bye")
    assert sent(out, a) == [{"type": "system", "event": "disconnected", "message": "bye"}]
    assert sent(out, r) == []  # raw clients get no envelope
    assert closes(out) == [CloseTransport(a, CLOSE_NORMAL, "bye"),
                           CloseTransport(r, CLOSE_NORMAL, "bye")]
    assert not hub.user_exists("u")
    assert not hub.recover(0.0, a, "t1", RELIABLE).accepted  # closed by the server
    assert closes(hub.close_group_connections("g", "x", excluded=[c])) == []
    assert [x.connection_id for x in closes(hub.close_group_connections("g"))] == [c]
    assert [x.connection_id for x in closes(hub.close_all_connections("end"))] == [d]
    assert hub.close_connection(d) == []
    # a connection waiting for recovery is dropped without frames
    e = hub.connect(0.0, subprotocol=RELIABLE).connection_id
    hub.transport_lost(0.0, e)
    assert hub.close_connection(e, "gone") == [] and not hub.connection_exists(e)


def test_close_reason_is_truncated_to_websocket_limit() -> None:
    hub = make_hub()
    a = hub.connect(0.0, subprotocol=JSON).connection_id
    out = hub.close_connection(a, "é" * 100)
    assert sent(out, a)[0]["message"] == "é" * 100
    assert len(closes(out)[0].reason.encode()) <= 123


def test_public_names_are_exported() -> None:
    import hyco_proto.webpubsub as wps

    assert wps.Hub is Hub and wps.Deliver is Deliver and wps.UpstreamEvent is UpstreamEvent


def test_a_reliable_client_that_closes_normally_is_gone_at_once() -> None:
    hub = make_hub()
    done = hub.connect(0.0, groups=["g"], subprotocol=RELIABLE).connection_id
    broken = hub.connect(0.0, groups=["g"], subprotocol=RELIABLE).connection_id
    hub.transport_lost(1.0, done, 1000)  # the client said goodbye: no session to keep
    hub.transport_lost(1.0, broken, 1006)  # an unexpected drop: kept for recovery
    assert not hub.connection_exists(done) and not hub.recover(2.0, done, "t1",
                                                                RELIABLE).accepted
    assert hub.connection_exists(broken)
    assert hub.group_exists("g")


def test_departures_are_reported_only_when_asked_for() -> None:
    quiet = make_hub()
    cid = quiet.connect(0.0, subprotocol=JSON).connection_id
    quiet.transport_lost(1.0, cid, 1000)
    assert quiet.departures() == []

    hub = make_hub(report_departures=True, recovery_window=5.0)
    plain = hub.connect(0.0, subprotocol=JSON).connection_id
    kept = hub.connect(0.0, subprotocol=RELIABLE).connection_id
    closed = hub.connect(0.0, subprotocol=RELIABLE).connection_id
    lost_then_closed = hub.connect(0.0, subprotocol=RELIABLE).connection_id
    hub.transport_lost(1.0, plain, None)
    hub.transport_lost(1.0, kept, 1001)  # kept for recovery: not gone yet
    hub.close_connection(closed, "bye")
    hub.transport_lost(1.0, lost_then_closed, None)
    hub.close_connection(lost_then_closed, "REST close while waiting for recovery")
    assert hub.departures() == [
        (plain, "The connection was lost."), (closed, "bye"),
        (lost_then_closed, "REST close while waiting for recovery")]
    assert hub.departures() == []
    hub.handle_timer(6.0)
    assert hub.departures() == [(kept, "The connection was not recovered in time.")]
