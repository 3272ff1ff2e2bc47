"""Web PubSub JSON subprotocol messages: parse, serialize, strict validation, close codes."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyco_proto.errors import RemoteProtocolError
from hyco_proto.webpubsub import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_MESSAGE_TOO_BIG,
    DEFAULT_MAX_SIZE,
    JSON_RELIABLE_SUBPROTOCOL,
    JSON_SUBPROTOCOL,
    SUBPROTOCOLS,
    AckError,
    AckMessage,
    BinaryData,
    ClientMessage,
    ConnectedMessage,
    Data,
    DisconnectedMessage,
    EventMessage,
    GroupDataMessage,
    JoinGroupMessage,
    JsonData,
    JsonValue,
    LeaveGroupMessage,
    PingMessage,
    PongMessage,
    ProtobufData,
    SendToGroupMessage,
    SequenceAckMessage,
    ServerDataMessage,
    ServiceMessage,
    TextData,
    UnknownMessage,
    WebPubSubProtocolError,
    parse_client_message,
    parse_service_message,
    serialize,
)

CLIENT_MESSAGES: list[ClientMessage] = [
    JoinGroupMessage("g1"),
    JoinGroupMessage("g1", ack_id=1),
    LeaveGroupMessage("g1"),
    LeaveGroupMessage("g1", ack_id=2**64 - 1),
    SendToGroupMessage("room", TextData("hello"), ack_id=2),
    SendToGroupMessage("room", JsonData({"x": [1, 2.5, None, True, "s"]}), no_echo=True),
    SendToGroupMessage("room", BinaryData(b"\x00\x01bin"), ack_id=0),
    SendToGroupMessage("room", ProtobufData(b"\x0a\x03abc")),
    EventMessage("evt", JsonData({"x": 1}), ack_id=5),
    EventMessage("evt", TextData("")),
    EventMessage("evt", BinaryData(b"")),
    SequenceAckMessage(4),
    SequenceAckMessage(0),
    PingMessage(),
]

SERVICE_MESSAGES: list[ServiceMessage] = [
    AckMessage(1, True),
    AckMessage(2, False, AckError("Forbidden", "no permission to join g1")),
    AckMessage(3, False, AckError("Duplicate", "")),
    GroupDataMessage("g1", TextData("hi"), from_user_id="u1"),
    GroupDataMessage("g1", JsonData(None)),
    GroupDataMessage("g1", BinaryData(b"\xff\x00"), from_user_id="u", sequence_id=7),
    ServerDataMessage(JsonData([1, "two"])),
    ServerDataMessage(TextData("x"), sequence_id=2**64 - 1),
    ConnectedMessage("conn1"),
    ConnectedMessage("conn1", user_id="u1", reconnection_token="tok"),
    DisconnectedMessage("ClosedByAppServer"),
    DisconnectedMessage(),
    PongMessage(),
]


def client_error(text: str | bytes, **kwargs: Any) -> WebPubSubProtocolError:
    with pytest.raises(WebPubSubProtocolError) as info:
        parse_client_message(text, **kwargs)
    return info.value


def service_error(text: str | bytes, **kwargs: Any) -> WebPubSubProtocolError:
    with pytest.raises(WebPubSubProtocolError) as info:
        parse_service_message(text, **kwargs)
    return info.value


def test_subprotocol_names() -> None:
    assert JSON_SUBPROTOCOL == "json.webpubsub.azure.v1"
    assert JSON_RELIABLE_SUBPROTOCOL == "json.reliable.webpubsub.azure.v1"
    assert SUBPROTOCOLS == (JSON_RELIABLE_SUBPROTOCOL, JSON_SUBPROTOCOL)
    assert DEFAULT_MAX_SIZE == 1024 * 1024


# --------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("msg", CLIENT_MESSAGES, ids=repr)
def test_client_message_round_trips(msg: ClientMessage) -> None:
    text = serialize(msg)
    assert parse_client_message(text) == msg
    assert serialize(parse_client_message(text)) == text
    assert ", " not in text and ": " not in text  # compact


@pytest.mark.parametrize("msg", SERVICE_MESSAGES, ids=repr)
def test_service_message_round_trips(msg: ServiceMessage) -> None:
    text = serialize(msg)
    assert parse_service_message(text) == msg
    assert serialize(parse_service_message(text)) == text


def test_bytes_input_is_utf8_text() -> None:
    text = serialize(SendToGroupMessage("grüppe", TextData("héllo ✓")))
    assert parse_client_message(text.encode()) == SendToGroupMessage("grüppe", TextData("héllo ✓"))
    assert parse_client_message(bytearray(text.encode())).group == "grüppe"  # type: ignore[union-attr]


def test_binary_data_keeps_bytes() -> None:
    # The Python SDK hands out memoryviews; a bytes-like value is copied to immutable bytes.
    assert BinaryData(bytearray(b"ab")).data == b"ab"  # type: ignore[arg-type]
    assert type(BinaryData(memoryview(b"ab")).data) is bytes  # type: ignore[arg-type]
    assert type(ProtobufData(bytearray(b"ab")).data) is bytes  # type: ignore[arg-type]
    assert hash(BinaryData(bytearray(b"ab"))) == hash(BinaryData(b"ab"))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# exact JSON the SDKs write (reference §2.1 "what the SDKs actually write")

SDK_CLIENT_FRAMES: list[tuple[str, ClientMessage]] = [
    # Python azure-messaging-webpubsubclient 1.1.0
    ('{"type": "joinGroup", "group": "g1", "ackId": 1}', JoinGroupMessage("g1", ack_id=1)),
    (
        '{"type": "sendToGroup", "group": "g1", "ackId": 2, "dataType": "text", '
        '"data": "hello text", "noEcho": false}',
        SendToGroupMessage("g1", TextData("hello text"), ack_id=2, no_echo=False),
    ),
    (
        '{"type": "sendToGroup", "group": "g1", "ackId": 4, "dataType": "binary", '
        '"data": "AAFiaW4=", "noEcho": false}',
        SendToGroupMessage("g1", BinaryData(b"\x00\x01bin"), ack_id=4),
    ),
    (
        '{"type": "event", "event": "evt", "ackId": 5, "dataType": "json", "data": {"x": 1}}',
        EventMessage("evt", JsonData({"x": 1}), ack_id=5),
    ),
    ('{"type": "sequenceAck", "sequenceId": 4}', SequenceAckMessage(4)),
    # JavaScript @azure/web-pubsub-client 1.1.0
    (
        '{"type":"sendToGroup","group":"room","ackId":2,"noEcho":false,"dataType":"text",'
        '"data":"hello"}',
        SendToGroupMessage("room", TextData("hello"), ack_id=2),
    ),
    (
        '{"type":"event","event":"evt","ackId":5,"dataType":"text","data":"payload"}',
        EventMessage("evt", TextData("payload"), ack_id=5),
    ),
    ('{"type":"ping"}', PingMessage()),
    # fire-and-forget: no ackId
    (
        '{"type":"sendToGroup","group":"room","noEcho":true,"dataType":"json","data":[1]}',
        SendToGroupMessage("room", JsonData([1]), no_echo=True),
    ),
]


@pytest.mark.parametrize(("text", "expected"), SDK_CLIENT_FRAMES, ids=lambda v: str(v)[:40])
def test_sdk_frames_parse(text: str, expected: ClientMessage) -> None:
    assert parse_client_message(text) == expected


def test_js_sdk_frames_serialize_byte_for_byte() -> None:
    # The JS SDK writes compact JSON in this key order; we write the same.
    for text, msg in SDK_CLIENT_FRAMES[5:]:
        assert serialize(msg) == text


def test_defaults_when_optional_keys_are_absent() -> None:
    msg = parse_client_message('{"type":"sendToGroup","group":"g","data":{"a":1}}')
    assert msg == SendToGroupMessage("g", JsonData({"a": 1}), ack_id=None, no_echo=False)
    msg = parse_client_message('{"type":"event","event":"e","data":"x"}')
    assert msg == EventMessage("e", JsonData("x"))  # dataType defaults to json
    assert parse_client_message('{"type":"joinGroup","group":"g","ackId":null}') == (
        JoinGroupMessage("g")
    )


def test_unknown_keys_are_ignored() -> None:
    text = ('{"type":"sendToGroup","group":"g","dataType":"text","data":"x",'
            '"metadata":{"k":"v"},"ttlSeconds":30}')
    assert parse_client_message(text) == SendToGroupMessage("g", TextData("x"))


def test_sequence_ack_accepts_the_docs_quoted_form() -> None:
    assert parse_client_message('{"type":"sequenceAck","sequenceId":"12"}') == (
        SequenceAckMessage(12)
    )
    assert serialize(SequenceAckMessage(12)) == '{"type":"sequenceAck","sequenceId":12}'


# --------------------------------------------------------------------------------------------
# service frames: exact shapes, and the keys the Python SDK indexes directly


def test_service_frames_exact_shapes() -> None:
    assert serialize(AckMessage(1, True)) == '{"type":"ack","ackId":1,"success":true}'
    assert serialize(AckMessage(1, False, AckError("Forbidden", "denied"))) == (
        '{"type":"ack","ackId":1,"success":false,'
        '"error":{"name":"Forbidden","message":"denied"}}'
    )
    assert serialize(GroupDataMessage("g", TextData("t"), from_user_id="u", sequence_id=1)) == (
        '{"type":"message","from":"group","group":"g","fromUserId":"u",'
        '"dataType":"text","data":"t","sequenceId":1}'
    )
    assert serialize(ServerDataMessage(BinaryData(b"\x00\x01bin"))) == (
        '{"type":"message","from":"server","dataType":"binary","data":"AAFiaW4="}'
    )
    assert serialize(ConnectedMessage("c", user_id=None)) == (
        '{"type":"system","event":"connected","userId":null,"connectionId":"c"}'
    )
    assert serialize(ConnectedMessage("c", "u", "tok")) == (
        '{"type":"system","event":"connected","userId":"u","connectionId":"c",'
        '"reconnectionToken":"tok"}'
    )
    assert serialize(DisconnectedMessage("bye")) == (
        '{"type":"system","event":"disconnected","message":"bye"}'
    )
    assert serialize(PongMessage()) == '{"type":"pong"}'


PYTHON_SDK_INDEXED = {
    AckMessage: {"type", "ackId", "success"},
    GroupDataMessage: {"type", "from", "group", "dataType", "data", "fromUserId"},
    ServerDataMessage: {"type", "from", "dataType", "data"},
    ConnectedMessage: {"type", "event", "connectionId", "userId"},
    DisconnectedMessage: {"type", "event", "message"},
}


@pytest.mark.parametrize("msg", SERVICE_MESSAGES, ids=repr)
def test_service_frames_carry_the_keys_the_python_sdk_indexes(msg: ServiceMessage) -> None:
    doc = json.loads(serialize(msg))
    assert PYTHON_SDK_INDEXED.get(type(msg), {"type"}) <= set(doc)
    if isinstance(msg, AckMessage) and msg.error is not None:
        assert set(doc["error"]) == {"name", "message"}
    # None-valued optional keys are left out
    assert "sequenceId" not in doc or doc["sequenceId"] is not None
    assert "reconnectionToken" not in doc or doc["reconnectionToken"] is not None
    assert "error" not in doc or doc["error"] is not None


def test_optional_none_keys_are_dropped() -> None:
    assert "ackId" not in json.loads(serialize(JoinGroupMessage("g")))
    assert "ackId" not in json.loads(serialize(EventMessage("e", TextData("x"))))
    assert "sequenceId" not in json.loads(serialize(ServerDataMessage(TextData("x"))))
    assert "reconnectionToken" not in json.loads(serialize(ConnectedMessage("c")))
    assert "error" not in json.loads(serialize(AckMessage(1, True)))


def test_ack_success_as_the_sdks_read_it() -> None:
    assert AckMessage(1, True).ok
    assert AckMessage(1, False, AckError("Duplicate", "")).ok
    assert AckMessage(1, False, AckError("Duplicate", "")).is_duplicate
    assert not AckMessage(1, False, AckError("Forbidden", "")).ok
    assert not AckMessage(1, False).ok


def test_service_parse_lenient_forms() -> None:
    msg = parse_service_message('{"type":"ack","ackId":3,"success":false,"error":{"name":"X"}}')
    assert msg == AckMessage(3, False, AckError("X", ""))
    msg = parse_service_message('{"type":"message","from":"group","group":"g","data":1}')
    assert msg == GroupDataMessage("g", JsonData(1))
    assert parse_service_message('{"type":"system","event":"disconnected"}') == (
        DisconnectedMessage("")
    )
    msg = parse_service_message('{"type":"system","event":"connected","connectionId":"c"}')
    assert msg == ConnectedMessage("c", None, None)


# --------------------------------------------------------------------------------------------
# forward compatibility (service -> client)


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"invokeResponse","invocationId":"1","success":true}',
        '{"type":"streamAck","streamId":"s","expectedSequenceId":2}',
        '{"type":"message","from":"somewhere-new","data":1}',
        '{"type":"system","event":"reconnecting"}',
    ],
)
def test_unknown_service_frames_are_not_errors(text: str) -> None:
    msg = parse_service_message(text)
    assert isinstance(msg, UnknownMessage)
    assert msg.fields == json.loads(text)
    assert msg.type == json.loads(text)["type"]
    assert json.loads(serialize(msg)) == json.loads(text)


def test_unknown_client_types_are_errors() -> None:
    err = client_error('{"type":"invoke","invocationId":"1","target":"event","event":"e"}')
    assert err.close_code == CLOSE_INVALID_PAYLOAD
    assert "'invoke'" in err.message and "type" in err.message


# --------------------------------------------------------------------------------------------
# error paths


def test_error_is_a_remote_protocol_error() -> None:
    err = client_error("{")
    assert isinstance(err, RemoteProtocolError)
    assert err.close_code == 1007


CLIENT_ERRORS: list[tuple[str | bytes, str]] = [
    # framing
    ("{", "not valid JSON"),
    ("", "not valid JSON"),
    (b"\xff\xfe", "not valid UTF-8"),
    ('{"type":"ping"} x', "not valid JSON"),
    ('{"type":"sendToGroup","group":"g","data":NaN}', "not valid JSON"),
    ('{"type":"sendToGroup","group":"g","data":Infinity}', "not valid JSON"),
    ("[1]", "must be a JSON object, not an array"),
    ('"ping"', "must be a JSON object, not a string"),
    ("null", "must be a JSON object, not null"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    # type
    ("{}", "message.type is missing"),
    ('{"type":1}', "message.type must be a string, not an integer"),
    ('{"type":"nope"}', "'nope' is not a known client message type"),
    ('{"type":"JoinGroup","group":"g"}', "'JoinGroup' is not a known"),
    # joinGroup / leaveGroup
    ('{"type":"joinGroup"}', "joinGroup.group is missing"),
    ('{"type":"joinGroup","group":null}', "joinGroup.group must be a string, not null"),
    ('{"type":"joinGroup","group":5}', "joinGroup.group must be a string, not an integer"),
    ('{"type":"leaveGroup","group":["g"]}', "leaveGroup.group must be a string, not an array"),
    ('{"type":"joinGroup","group":"g","ackId":"1"}', "joinGroup.ackId must be an integer, not a"),
    ('{"type":"joinGroup","group":"g","ackId":1.0}', "joinGroup.ackId must be an integer, not a"),
    ('{"type":"joinGroup","group":"g","ackId":true}', "joinGroup.ackId must be an integer, not a"),
    ('{"type":"joinGroup","group":"g","ackId":-1}', "joinGroup.ackId -1 is out of range"),
    ('{"type":"leaveGroup","group":"g","ackId":18446744073709551616}', "leaveGroup.ackId"),
    # sendToGroup
    ('{"type":"sendToGroup","data":"x"}', "sendToGroup.group is missing"),
    ('{"type":"sendToGroup","group":"g"}', "sendToGroup.data is missing"),
    ('{"type":"sendToGroup","group":"g","data":null}', "sendToGroup.data must not be null"),
    ('{"type":"sendToGroup","group":"g","data":1,"noEcho":"yes"}',
     "sendToGroup.noEcho must be true or false, not a string"),
    ('{"type":"sendToGroup","group":"g","data":1,"noEcho":0}', "sendToGroup.noEcho"),
    ('{"type":"sendToGroup","group":"g","dataType":"xml","data":"<a/>"}',
     "sendToGroup.dataType 'xml' is not one of"),
    ('{"type":"sendToGroup","group":"g","dataType":"JSON","data":1}', "sendToGroup.dataType"),
    ('{"type":"sendToGroup","group":"g","dataType":1,"data":1}',
     "sendToGroup.dataType must be a string, not an integer"),
    ('{"type":"sendToGroup","group":"g","dataType":"text","data":1}',
     "sendToGroup.data must be a string for dataType text, not an integer"),
    ('{"type":"sendToGroup","group":"g","dataType":"text","data":{"a":1}}',
     "sendToGroup.data must be a string for dataType text, not an object"),
    ('{"type":"sendToGroup","group":"g","dataType":"binary","data":"!!!"}',
     "sendToGroup.data is not valid base64"),
    ('{"type":"sendToGroup","group":"g","dataType":"binary","data":"AAE"}',
     "sendToGroup.data is not valid base64"),
    ('{"type":"sendToGroup","group":"g","dataType":"binary","data":"\\u00e9AAA"}',
     "sendToGroup.data is not valid base64"),
    ('{"type":"sendToGroup","group":"g","dataType":"binary","data":[0,1]}',
     "sendToGroup.data must be a base64 string, not an array"),
    ('{"type":"sendToGroup","group":"g","dataType":"protobuf","data":5}',
     "sendToGroup.data must be a base64 string, not an integer"),
    # event
    ('{"type":"event","data":"x"}', "event.event is missing"),
    ('{"type":"event","event":false,"data":"x"}', "event.event must be a string, not a boolean"),
    ('{"type":"event","event":"e"}', "event.data is missing"),
    ('{"type":"event","event":"e","dataType":"binary","data":"a b"}', "event.data is not valid"),
    ('{"type":"event","event":"e","ackId":{},"data":1}', "event.ackId must be an integer"),
    # sequenceAck
    ('{"type":"sequenceAck"}', "sequenceAck.sequenceId is missing"),
    ('{"type":"sequenceAck","sequenceId":"x1"}', "sequenceAck.sequenceId must be an integer"),
    ('{"type":"sequenceAck","sequenceId":-3}', "sequenceAck.sequenceId -3 is out of range"),
    ('{"type":"sequenceAck","sequenceId":2.5}', "sequenceAck.sequenceId must be an integer"),
]


@pytest.mark.parametrize(("text", "expected"), CLIENT_ERRORS, ids=lambda v: repr(v)[:50])
def test_client_error_paths(text: str | bytes, expected: str) -> None:
    err = client_error(text)
    assert err.close_code == CLOSE_INVALID_PAYLOAD
    assert expected in err.message


SERVICE_ERRORS: list[tuple[str | bytes, str]] = [
    ("not json", "service message is not valid JSON"),
    (b"\xc3(", "service message is not valid UTF-8"),
    ("3", "service message must be a JSON object, not an integer"),
    ('{"ackId":1}', "service message.type is missing"),
    ('{"type":null}', "service message.type must be a string, not null"),
    # ack
    ('{"type":"ack","success":true}', "ack.ackId is missing"),
    ('{"type":"ack","ackId":"1","success":true}', "ack.ackId must be an integer, not a string"),
    ('{"type":"ack","ackId":1}', "ack.success is missing"),
    ('{"type":"ack","ackId":1,"success":"true"}', "ack.success must be true or false"),
    ('{"type":"ack","ackId":1,"success":false,"error":"Forbidden"}',
     "ack.error must be an object, not a string"),
    ('{"type":"ack","ackId":1,"success":false,"error":{"message":"m"}}',
     "ack.error.name is missing"),
    ('{"type":"ack","ackId":1,"success":false,"error":{"name":"N","message":3}}',
     "ack.error.message must be a string"),
    # message
    ('{"type":"message","group":"g","data":1}', "message.from is missing"),
    ('{"type":"message","from":7,"data":1}', "message.from must be a string"),
    ('{"type":"message","from":"group","data":1}', "message.group is missing"),
    ('{"type":"message","from":"group","group":"g"}', "message.data is missing"),
    ('{"type":"message","from":"group","group":"g","fromUserId":1,"data":1}',
     "message.fromUserId must be a string, not an integer"),
    ('{"type":"message","from":"server","dataType":"bin","data":""}', "message.dataType 'bin'"),
    ('{"type":"message","from":"server","dataType":"text","data":null}',
     "message.data must be a string for dataType text, not null"),
    ('{"type":"message","from":"server","dataType":"binary","data":"*"}',
     "message.data is not valid base64"),
    ('{"type":"message","from":"server","data":1,"sequenceId":0}',
     "message.sequenceId 0 is out of range 1..2**64-1"),
    ('{"type":"message","from":"group","group":"g","data":1,"sequenceId":0}',
     "message.sequenceId 0 is out of range 1..2**64-1"),
    ('{"type":"message","from":"group","group":"g","data":1,"sequenceId":18446744073709551616}',
     "message.sequenceId 18446744073709551616 is out of range"),
    ('{"type":"message","from":"server","data":1,"sequenceId":"5"}',
     "message.sequenceId must be an integer, not a string"),
    # system
    ('{"type":"system"}', "system.event is missing"),
    ('{"type":"system","event":1}', "system.event must be a string"),
    ('{"type":"system","event":"connected"}', "system.connected.connectionId is missing"),
    ('{"type":"system","event":"connected","connectionId":"c","userId":5}',
     "system.connected.userId must be a string, not an integer"),
    ('{"type":"system","event":"connected","connectionId":"c","reconnectionToken":[]}',
     "system.connected.reconnectionToken must be a string, not an array"),
    ('{"type":"system","event":"disconnected","message":{}}',
     "system.disconnected.message must be a string, not an object"),
]


@pytest.mark.parametrize(("text", "expected"), SERVICE_ERRORS, ids=lambda v: repr(v)[:50])
def test_service_error_paths(text: str | bytes, expected: str) -> None:
    err = service_error(text)
    assert err.close_code == CLOSE_INVALID_PAYLOAD
    assert expected in err.message


# --------------------------------------------------------------------------------------------
# size limit


_HEAD = '{"type":"sendToGroup","group":"g","dataType":"text","data":"'
_TAIL = '"}'
_OVERHEAD = len(_HEAD) + len(_TAIL)


def _frame_of_size(size: int, char: str = "a") -> str:
    head, tail = _HEAD, _TAIL
    body_bytes = size - _OVERHEAD
    width = len(char.encode())
    assert body_bytes % width == 0
    text = head + char * (body_bytes // width) + tail
    assert len(text.encode()) == size
    return text


@pytest.mark.parametrize("char", ["a", "é", "✓", "😀"])
def test_size_limit_counts_utf8_bytes(char: str) -> None:
    width = len(char.encode())
    size = _OVERHEAD + width * ((DEFAULT_MAX_SIZE - _OVERHEAD) // width)  # the largest that fits
    at_limit = _frame_of_size(size, char)
    assert parse_client_message(at_limit).group == "g"  # type: ignore[union-attr]
    over = _frame_of_size(size + len(char.encode()), char)
    for frame in (over, over.encode()):
        err = client_error(frame)
        assert err.close_code == CLOSE_MESSAGE_TOO_BIG
        assert "limit" in err.message


def test_size_limit_exact_boundary_and_parameter() -> None:
    text = _frame_of_size(200)
    assert parse_client_message(text, max_size=200) is not None
    assert client_error(text, max_size=199).close_code == CLOSE_MESSAGE_TOO_BIG
    assert client_error(text.encode(), max_size=199).close_code == CLOSE_MESSAGE_TOO_BIG
    big = _frame_of_size(DEFAULT_MAX_SIZE + 1)
    assert client_error(big).close_code == CLOSE_MESSAGE_TOO_BIG
    assert parse_client_message(big, max_size=None) is not None
    # multi-byte characters: fewer characters than bytes
    text = _frame_of_size(_OVERHEAD + 4 * 35, "😀")
    assert len(text) < len(text.encode())
    assert client_error(text, max_size=len(text.encode()) - 1).close_code == 1009
    assert parse_client_message(text, max_size=len(text.encode())) is not None


def test_service_size_limit() -> None:
    frame = serialize(ServerDataMessage(TextData("x" * 1000)))
    err = service_error(frame, max_size=len(frame) - 1)
    assert err.close_code == CLOSE_MESSAGE_TOO_BIG
    assert parse_service_message(frame, max_size=len(frame)) == ServerDataMessage(
        TextData("x" * 1000)
    )


# --------------------------------------------------------------------------------------------
# serialization misuse


def test_serialize_rejects_what_json_cannot_carry() -> None:
    with pytest.raises(ValueError):
        serialize(SendToGroupMessage("g", JsonData(float("nan"))))
    with pytest.raises(ValueError):
        serialize(JoinGroupMessage("g", ack_id=-1))
    with pytest.raises(ValueError):
        serialize(SequenceAckMessage(2**64))
    with pytest.raises(TypeError):
        serialize("ping")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        serialize(SendToGroupMessage("g", b"raw"))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# property tests: every data type round-trips

json_values: st.SearchStrategy[JsonValue] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=20,
)

data_values: st.SearchStrategy[Data] = st.one_of(
    json_values.filter(lambda v: v is not None).map(JsonData),
    st.text().map(TextData),
    st.binary().map(BinaryData),
    st.binary().map(ProtobufData),
)

ack_ids = st.none() | st.integers(min_value=0, max_value=2**64 - 1)


@given(group=st.text(), data=data_values, ack_id=ack_ids, no_echo=st.booleans())
def test_send_to_group_round_trip(
    group: str, data: Data, ack_id: int | None, no_echo: bool
) -> None:
    msg = SendToGroupMessage(group, data, ack_id=ack_id, no_echo=no_echo)
    parsed = parse_client_message(serialize(msg))
    assert parsed == msg
    assert isinstance(parsed, SendToGroupMessage)
    assert type(parsed.data) is type(data)


@given(event=st.text(), data=data_values, ack_id=ack_ids)
def test_event_round_trip(event: str, data: Data, ack_id: int | None) -> None:
    msg = EventMessage(event, data, ack_id=ack_id)
    assert parse_client_message(serialize(msg).encode()) == msg


@given(
    group=st.text(),
    data=data_values | st.just(JsonData(None)),
    user=st.none() | st.text(),
    seq=st.none() | st.integers(min_value=1, max_value=2**64 - 1),
)
def test_service_data_round_trip(
    group: str, data: Data, user: str | None, seq: int | None
) -> None:
    for msg in (GroupDataMessage(group, data, user, seq), ServerDataMessage(data, seq)):
        text = serialize(msg)
        assert parse_service_message(text) == msg
        doc = json.loads(text)
        assert doc["dataType"] == data.data_type
        if isinstance(data, (BinaryData, ProtobufData)):
            assert base64.b64decode(doc["data"]) == data.data


@given(st.binary())
def test_binary_is_standard_base64(raw: bytes) -> None:
    text = serialize(ServerDataMessage(BinaryData(raw)))
    assert json.loads(text)["data"] == base64.b64encode(raw).decode()
