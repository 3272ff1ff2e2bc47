"""WebPubSubClientCore driven by hand-written service frames (no sockets)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hyco_proto.errors import LocalProtocolError
from hyco_proto.webpubsub import (
    JSON_RELIABLE_SUBPROTOCOL,
    JSON_SUBPROTOCOL,
    AckError,
    AckMessage,
    ConnectedMessage,
    DisconnectedMessage,
    GroupDataMessage,
    JsonData,
    PongMessage,
    ServerDataMessage,
    TextData,
    parse_client_url,
    serialize,
)
from hyco_proto.webpubsub.client import (
    CONNECTION_LOST,
    AckResolved,
    ClientState,
    CloseConnection,
    Connected,
    Disconnected,
    FetchUrl,
    GroupMessage,
    OpenConnection,
    RejoinFailed,
    SendText,
    ServerMessage,
    Stopped,
    WebPubSubClientCore,
)

URL = "wss://x.webpubsub.azure.com/client/hubs/chat?access_token=tok1"
R = JSON_RELIABLE_SUBPROTOCOL


def sent(client: WebPubSubClientCore) -> list[dict[str, Any]]:
    """The JSON of every SendText queued; fails on any other action."""
    out = []
    for action in client.actions_to_take():
        assert isinstance(action, SendText), action
        out.append(json.loads(action.text))
    return out


def connect(client: WebPubSubClientCore, now: float = 0.0, *, conn: str = "c1",
            token: str | None = "rt1") -> None:
    client.start(now)
    assert client.actions_to_take() == [OpenConnection(URL, client.subprotocol)]
    client.connection_opened(now, client.subprotocol)
    client.text_received(now, serialize(ConnectedMessage(conn, "u1", token)))
    assert client.events_received() == [Connected(conn, "u1")]


def state(client: WebPubSubClientCore) -> ClientState:
    return client.state  # a call, so mypy does not narrow across inputs


def group_msg(seq: int | None, text: str = "hi") -> str:
    return serialize(GroupDataMessage("g", TextData(text), "u2", seq))


def test_connect_and_connected() -> None:
    client = WebPubSubClientCore(URL)
    assert state(client) is ClientState.IDLE
    client.start(0.0)
    assert client.actions_to_take() == [OpenConnection(URL, R)]
    assert state(client) is ClientState.CONNECTING
    client.connection_opened(0.1, R)
    assert state(client) is ClientState.CONNECTED
    assert client.events_received() == []
    client.text_received(0.2, serialize(ConnectedMessage("c1", "u1", "rt1")))
    assert client.events_received() == [Connected("c1", "u1")]
    assert client.actions_to_take() == []
    assert client.connection_id == "c1"


def test_ack_allocation_and_resolution() -> None:
    client = WebPubSubClientCore(URL)
    connect(client)
    a1 = client.send_to_group("g", TextData("x"), 1.0)
    a2 = client.send_event("e", JsonData({"k": 1}), 1.0)
    a3 = client.join_group("g2", 1.0)
    assert (a1, a2, a3) == (1, 2, 3)
    frames = sent(client)
    assert frames == [
        {"type": "sendToGroup", "group": "g", "ackId": 1, "noEcho": False,
         "dataType": "text", "data": "x"},
        {"type": "event", "event": "e", "ackId": 2, "dataType": "json", "data": {"k": 1}},
        {"type": "joinGroup", "group": "g2", "ackId": 3},
    ]
    client.text_received(1.1, serialize(AckMessage(1, True)))
    client.text_received(1.2, serialize(AckMessage(2, False, AckError("Duplicate", "done"))))
    client.text_received(1.3, serialize(AckMessage(3, False, AckError("Forbidden", "no"))))
    assert client.events_received() == [
        AckResolved(1, True, False, None),
        AckResolved(2, True, True, AckError("Duplicate", "done")),
        AckResolved(3, False, False, AckError("Forbidden", "no")),
    ]
    assert not client.groups  # the forbidden join did not join
    assert client.pending_acks == ()
    # an ack nobody waits for is ignored
    client.text_received(1.4, serialize(AckMessage(99, True)))
    assert client.events_received() == []
    # a user-chosen ackId, and a pending one cannot be reused
    assert client.join_group("g3", 2.0, ack_id=7) == 7
    with pytest.raises(ValueError):
        client.leave_group("g3", 2.0, ack_id=7)
    assert client.send_event("e", TextData("y"), 2.0) == 4
    client.text_received(2.1, serialize(AckMessage(7, True)))
    assert client.groups == ("g3",)
    client.events_received()


def test_fire_and_forget() -> None:
    client = WebPubSubClientCore(URL)
    connect(client)
    assert client.send_to_group("g", TextData("x"), 1.0, no_echo=True, ack=False) is None
    assert client.send_event("e", TextData("y"), 1.0, ack=False) is None
    frames = sent(client)
    assert all("ackId" not in f for f in frames)
    assert frames[0]["noEcho"] is True
    assert client.pending_acks == ()
    # the next acked request still gets id 1
    assert client.send_event("e", TextData("z"), 1.0) == 1


def test_api_needs_an_open_socket() -> None:
    client = WebPubSubClientCore(URL)
    with pytest.raises(LocalProtocolError):
        client.join_group("g", 0.0)
    client.start(0.0)
    with pytest.raises(LocalProtocolError):
        client.send_event("e", TextData("x"), 0.0)


def test_reliable_dedupe_and_sequence_ack() -> None:
    client = WebPubSubClientCore(URL, keepalive_interval=None, sequence_ack_batch=5)
    connect(client)
    client.text_received(1.0, group_msg(1, "a"))
    client.text_received(1.1, group_msg(2, "b"))
    client.text_received(1.2, group_msg(2, "b-again"))  # duplicate
    client.text_received(1.3, serialize(ServerDataMessage(JsonData(3), 3)))
    client.text_received(1.4, group_msg(1, "old"))  # duplicate
    assert client.events_received() == [
        GroupMessage("g", TextData("a"), "u2", 1),
        GroupMessage("g", TextData("b"), "u2", 2),
        ServerMessage(JsonData(3), 3),
    ]
    assert client.last_sequence_id == 3
    # batched: nothing yet, one sequenceAck when the 1 s timer of the first new id fires
    assert client.actions_to_take() == []
    assert client.next_deadline() == 2.0
    client.handle_timer(1.9)
    assert client.actions_to_take() == []
    client.handle_timer(2.0)
    assert sent(client) == [{"type": "sequenceAck", "sequenceId": 3}]
    assert client.next_deadline() is None
    # nothing new: no more sequenceAck
    client.text_received(2.5, group_msg(3, "dup"))
    assert client.next_deadline() is None
    # five unacknowledged ids: sent at once
    for seq in range(4, 9):
        client.text_received(3.0, group_msg(seq))
    assert sent(client) == [{"type": "sequenceAck", "sequenceId": 8}]
    assert client.next_deadline() is None


def test_non_reliable_has_no_dedupe_or_sequence_ack() -> None:
    client = WebPubSubClientCore(URL, subprotocol=JSON_SUBPROTOCOL, keepalive_interval=None)
    connect(client, token=None)
    client.text_received(1.0, group_msg(None))
    client.text_received(1.0, group_msg(None))
    assert len(client.events_received()) == 2
    assert client.next_deadline() is None


def test_recovery_after_abrupt_close() -> None:
    client = WebPubSubClientCore(URL, keepalive_interval=None)
    connect(client)
    client.join_group("g", 0.5)
    client.text_received(0.6, serialize(AckMessage(1, True)))
    client.text_received(0.7, group_msg(1))
    client.text_received(0.8, group_msg(2))
    pending = client.send_event("e", TextData("x"), 0.9)
    assert pending is not None
    client.events_received()
    client.actions_to_take()

    client.connection_closed(1.0, 1006, "abnormal")
    assert state(client) is ClientState.RECOVERING
    [action] = client.actions_to_take()
    assert isinstance(action, OpenConnection) and action.subprotocol == R
    parsed = parse_client_url(action.url)
    assert parsed.get("access_token") == "tok1"
    assert parsed.get("awps_connection_id") == "c1"
    assert parsed.get("awps_reconnection_token") == "rt1"
    assert client.events_received() == []  # no Disconnected, the ack still pending
    assert client.pending_acks == (pending,)

    client.connection_opened(1.5, R)
    # the pending request goes out again with the same ackId; the unacked ids are acked
    assert sent(client) == [
        {"type": "event", "event": "e", "ackId": pending, "dataType": "text", "data": "x"},
        {"type": "sequenceAck", "sequenceId": 2},
    ]
    # a replayed message is dropped; numbering continues; a new `connected` only updates
    client.text_received(1.6, group_msg(2))
    client.text_received(1.7, group_msg(3))
    client.text_received(1.8, serialize(ConnectedMessage("c1", "u1", "rt2")))
    client.text_received(1.9, serialize(AckMessage(pending, False, AckError("Duplicate"))))
    assert client.events_received() == [
        GroupMessage("g", TextData("hi"), "u2", 3),
        AckResolved(pending, True, True, AckError("Duplicate")),
    ]
    assert client.groups == ("g",)
    # the next recovery uses the updated token
    client.connection_closed(2.0, 1011, "")
    [action] = client.actions_to_take()
    assert isinstance(action, OpenConnection)
    assert parse_client_url(action.url).get("awps_reconnection_token") == "rt2"


def test_1008_means_new_connection_and_rejoin() -> None:
    client = WebPubSubClientCore(URL, keepalive_interval=None)
    connect(client)
    client.join_group("g1", 0.1)
    client.join_group("g2", 0.1)
    client.text_received(0.2, serialize(AckMessage(1, True)))
    client.text_received(0.2, serialize(AckMessage(2, True)))
    client.text_received(0.3, group_msg(5))
    lost = client.send_event("e", TextData("x"), 0.4)
    client.events_received()
    client.actions_to_take()

    client.text_received(0.9, serialize(DisconnectedMessage("ClosedByAppServer")))
    client.connection_closed(1.0, 1008, "policy")
    events = client.events_received()
    first = events[0]
    assert isinstance(first, AckResolved) and first.ack_id == lost and not first.ok
    assert first.error is not None and first.error.name == CONNECTION_LOST
    assert events[1:] == [Disconnected("ClosedByAppServer")]
    # a brand-new connection to the plain client URL, at once
    assert client.actions_to_take() == [OpenConnection(URL, R)]
    assert state(client) is ClientState.CONNECTING
    assert client.last_sequence_id == 0
    client.connection_opened(1.1, R)
    assert client.actions_to_take() == []
    client.text_received(1.2, serialize(ConnectedMessage("c2", "u1", "rt9")))
    frames = sent(client)
    assert frames == [{"type": "joinGroup", "group": "g1", "ackId": 4},
                      {"type": "joinGroup", "group": "g2", "ackId": 5}]
    assert client.events_received() == [Connected("c2", "u1")]
    client.text_received(1.3, serialize(AckMessage(4, True)))
    client.text_received(1.3, serialize(AckMessage(5, False, AckError("Forbidden", "no"))))
    assert client.events_received() == [RejoinFailed("g2", AckError("Forbidden", "no"))]
    assert client.groups == ("g1",)
    # sequence numbering restarts on the new connection
    client.text_received(1.4, group_msg(1))
    assert len(client.events_received()) == 1


def test_non_reliable_close_means_new_connection() -> None:
    client = WebPubSubClientCore(URL, subprotocol=JSON_SUBPROTOCOL, keepalive_interval=None)
    connect(client, token=None)
    client.connection_closed(1.0, 1006, "")
    assert client.events_received() == [Disconnected("connection closed with code 1006")]
    assert client.actions_to_take() == [OpenConnection(URL, JSON_SUBPROTOCOL)]


def test_recovery_gives_up_after_30_s() -> None:
    client = WebPubSubClientCore(URL, keepalive_interval=None, recovery_delays=(1.0, 2.0))
    connect(client)
    client.send_event("e", TextData("x"), 0.0)
    client.actions_to_take()
    client.connection_closed(10.0, 1006, "")
    attempts = 0
    now = 10.0
    while True:
        actions = client.actions_to_take()
        if state(client) is not ClientState.RECOVERING:
            break
        assert len(actions) == 1 and isinstance(actions[0], OpenConnection)
        assert "awps_connection_id=c1" in actions[0].url
        attempts += 1
        client.connection_closed(now, None, "502")  # the attempt failed
        assert client.events_received() == []
        deadline = client.next_deadline()
        assert deadline is not None
        now = deadline
        client.handle_timer(now)
    # attempts at 10, 11, 13, 15, ... 39 (every 2 s after the first wait), none at 41
    assert attempts == 16
    assert now == 41.0
    events = client.events_received()
    assert [type(e) for e in events] == [AckResolved, Disconnected]
    assert actions == [OpenConnection(URL, R)]
    assert state(client) is ClientState.CONNECTING


def test_recovery_attempt_failing_after_30_s_gives_up() -> None:
    client = WebPubSubClientCore(URL, keepalive_interval=None)
    connect(client)
    client.connection_closed(10.0, 1006, "")
    client.actions_to_take()
    client.connection_closed(39.9, None, "timeout")  # within the budget: retry later
    assert state(client) is ClientState.RECOVERY_WAIT
    client.handle_timer(40.9)
    assert state(client) is ClientState.CONNECTING  # out of budget: a new connection
    client2 = WebPubSubClientCore(URL, keepalive_interval=None)
    connect(client2)
    client2.connection_closed(10.0, 1006, "")
    client2.actions_to_take()
    client2.connection_closed(40.0, None, "timeout")  # the attempt hung past the budget
    assert client2.events_received() == [Disconnected("timeout")]
    assert client2.actions_to_take() == [OpenConnection(URL, R)]


def test_recovery_refused_with_1008() -> None:
    client = WebPubSubClientCore(URL, keepalive_interval=None)
    connect(client)
    client.connection_closed(1.0, 1001, "going away")
    client.actions_to_take()
    client.connection_opened(1.1, R)  # the service accepts, then refuses
    client.connection_closed(1.2, 1008, "The connection could not be recovered.")
    assert client.events_received() == [Disconnected("The connection could not be recovered.")]
    assert client.actions_to_take() == [OpenConnection(URL, R)]


def test_keepalive_ping_and_timeout() -> None:
    client = WebPubSubClientCore(URL, keepalive_interval=20.0, keepalive_timeout=50.0)
    connect(client)
    assert client.next_deadline() == 20.0
    client.handle_timer(20.0)
    assert sent(client) == [{"type": "ping"}]
    client.text_received(21.0, serialize(PongMessage()))  # the pong keeps it alive
    client.handle_timer(40.0)
    assert sent(client) == [{"type": "ping"}]
    client.handle_timer(60.0)
    assert sent(client) == [{"type": "ping"}]
    assert client.next_deadline() == 71.0
    client.handle_timer(71.0)  # no pong for 50 s
    assert client.actions_to_take() == [CloseConnection(1001, "keepalive timeout")]
    assert client.next_deadline() is None
    with pytest.raises(LocalProtocolError):
        client.send_event("e", TextData("x"), 71.5)
    client.connection_closed(72.0, 1006, "")
    # treated as lost: recovery
    assert state(client) is ClientState.RECOVERING
    [action] = client.actions_to_take()
    assert isinstance(action, OpenConnection) and "awps_reconnection_token=rt1" in action.url


def test_stop() -> None:
    client = WebPubSubClientCore(URL, keepalive_interval=None)
    connect(client)
    ack = client.send_event("e", TextData("x"), 0.5)
    client.events_received()
    client.actions_to_take()
    client.stop(1.0)
    assert client.actions_to_take() == [CloseConnection(1000, "")]
    [event] = client.events_received()
    assert isinstance(event, AckResolved) and event.ack_id == ack and not event.ok
    assert state(client) is ClientState.STOPPING
    client.connection_closed(1.1, 1000, "")
    assert client.events_received() == [Disconnected("client stopped"), Stopped()]
    assert state(client) is ClientState.STOPPED
    # nothing afterwards
    client.connection_closed(1.2, 1006, "")
    client.text_received(1.3, group_msg(1))
    client.stop(1.4)
    assert client.events_received() == [] and client.actions_to_take() == []


def test_stop_while_waiting_to_reconnect() -> None:
    client = WebPubSubClientCore(URL, keepalive_interval=None)
    client.start(0.0)
    client.actions_to_take()
    client.connection_closed(0.1, None, "refused")  # the first open failed
    assert state(client) is ClientState.RECONNECT_WAIT
    assert client.next_deadline() == pytest.approx(1.1)
    client.stop(0.5)
    assert client.events_received() == [Stopped()]
    assert client.actions_to_take() == []
    assert client.next_deadline() is None


def test_fetch_url() -> None:
    client = WebPubSubClientCore(None, keepalive_interval=None)
    client.start(0.0)
    assert client.actions_to_take() == [FetchUrl()]
    client.url_ready(0.1, URL)
    assert client.actions_to_take() == [OpenConnection(URL, R)]
    client.connection_opened(0.2, R)
    client.text_received(0.3, serialize(ConnectedMessage("c1", None, "rt1")))
    client.connection_closed(1.0, 1008, "")
    client.events_received()
    # a new connection asks for a fresh URL
    assert client.actions_to_take() == [FetchUrl()]
    client.url_failed(1.1, "token service down")
    assert state(client) is ClientState.RECONNECT_WAIT
    client.handle_timer(2.1)
    assert client.actions_to_take() == [FetchUrl()]


def test_wrong_subprotocol_and_bad_frame_close_the_socket() -> None:
    client = WebPubSubClientCore(URL, keepalive_interval=None)
    client.start(0.0)
    client.actions_to_take()
    client.connection_opened(0.1, None)
    [action] = client.actions_to_take()
    assert isinstance(action, CloseConnection) and action.code == 1002
    client.connection_closed(0.2, 1002, "")
    assert state(client) is ClientState.RECONNECT_WAIT  # the retry is delayed, not a busy loop

    client2 = WebPubSubClientCore(URL, keepalive_interval=None)
    connect(client2)
    client2.text_received(1.0, "not json")
    [action] = client2.actions_to_take()
    assert isinstance(action, CloseConnection) and action.code == 1007


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        WebPubSubClientCore(URL, subprotocol="json.webpubsub.azure.v2")
    with pytest.raises(ValueError):
        WebPubSubClientCore("wss://x/not-a-client-path")
    with pytest.raises(ValueError):
        WebPubSubClientCore(URL, recovery_delays=())


def test_left_groups_are_not_rejoined() -> None:
    client = WebPubSubClientCore(URL, keepalive_interval=None)
    connect(client)
    client.join_group("a", 0.1)
    client.join_group("b", 0.1)
    client.text_received(0.2, serialize(AckMessage(1, True)))
    client.text_received(0.2, serialize(AckMessage(2, True)))
    assert list(client.groups) == ["a", "b"]
    assert client.leave_group("a", 0.3) == 3
    assert client.groups == ("b",)
    client.actions_to_take()
    client.connection_closed(1.0, 1008, "")
    client.actions_to_take()
    client.connection_opened(1.1, R)
    client.text_received(1.2, serialize(ConnectedMessage("c2", None, "rt2")))
    assert sent(client) == [{"type": "joinGroup", "group": "b", "ackId": 4}]


def test_without_auto_reconnect_a_lost_connection_stops() -> None:
    client = WebPubSubClientCore(URL, keepalive_interval=None, auto_reconnect=False)
    connect(client)
    client.connection_closed(1.0, 1008, "bye")
    assert client.events_received() == [Disconnected("bye"), Stopped()]
    assert client.actions_to_take() == []
    assert state(client) is ClientState.STOPPED
