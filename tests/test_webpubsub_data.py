"""The core helpers the Web PubSub client adapters share: payloads, event names, ack errors."""

from __future__ import annotations

import pytest

from hyco_proto.webpubsub.client import (
    AckResolved,
    AckTimeoutError,
    Connected,
    GroupMessage,
    SendMessageError,
    ServerMessage,
    address_of,
    event_name,
)
from hyco_proto.webpubsub.messages import (
    AckError,
    BinaryData,
    JsonData,
    ProtobufData,
    TextData,
    data_value,
    make_data,
)


def test_make_data_wraps_each_type_and_data_value_unwraps() -> None:
    assert make_data("hi") == TextData("hi")
    assert make_data({"a": [1, None]}, "json") == JsonData({"a": [1, None]})
    assert make_data(bytearray(b"\x00\x01"), "binary") == BinaryData(b"\x00\x01")
    assert make_data(b"pb", "protobuf") == ProtobufData(b"pb")
    for value, data_type in (("hi", "text"), ({"a": 1}, "json"), (b"\x00", "binary")):
        assert data_value(make_data(value, data_type)) == value


@pytest.mark.parametrize(("value", "data_type", "error"), [
    (b"x", "text", TypeError),
    ("x", "binary", TypeError),
    ({1, 2}, "json", TypeError),
    (float("nan"), "json", ValueError),
    ("x", "xml", ValueError),
])
def test_make_data_refuses_what_does_not_fit(value: object, data_type: str,
                                             error: type[Exception]) -> None:
    with pytest.raises(error):
        make_data(value, data_type)


def test_messages_expose_type_and_value() -> None:
    msg = GroupMessage("g", BinaryData(b"\x01"), "alice", 3)
    assert (msg.data_type, msg.value) == ("binary", b"\x01")
    assert ServerMessage(JsonData([1])).value == [1]


def test_event_names_and_errors() -> None:
    assert event_name(Connected("c", None)) == "connected"
    assert event_name(AckResolved(1, True)) is None
    error = SendMessageError.from_ack(AckResolved(7, False, error=AckError("Forbidden", "no")),
                                      "joinGroup 'room'")
    assert (error.ack_id, error.error_name, error.error_message) == (7, "Forbidden", "no")
    assert str(error) == "joinGroup 'room' with ackId 7 failed: Forbidden: no"
    timeout = AckTimeoutError(8, 2.5)
    assert isinstance(timeout, TimeoutError) and timeout.error_name == "Timeout"
    assert "2.5 s" in str(timeout)
    located = SendMessageError(9, "Forbidden", "no", what="event 'e'", address="ws://h/x")
    assert str(located) == "event 'e' with ackId 9 failed: Forbidden: no (ws://h/x)"
    assert address_of("ws://h/client/hubs/x?access_token=t") == "ws://h/client/hubs/x"
