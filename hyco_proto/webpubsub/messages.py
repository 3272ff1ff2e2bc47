"""Messages of the Azure Web PubSub JSON client subprotocols, without I/O.

Two subprotocols share one message set: ``json.webpubsub.azure.v1`` and its reliable variant
``json.reliable.webpubsub.azure.v1``, which adds a ``sequenceId`` to every ``type:"message"`` frame,
a ``reconnectionToken`` to the ``connected`` system message, and the client's ``sequenceAck``.
Each WebSocket *text* frame holds one JSON object whose ``type`` key says what it is.

This module turns such text into frozen dataclasses and back:

* :func:`parse_client_message` reads what a client sends (``joinGroup``, ``leaveGroup``,
  ``sendToGroup``, ``event``, ``sequenceAck``, ``ping``); a service or emulator uses it. Anything it
  does not understand is an error, because the service declines such a client.
* :func:`parse_service_message` reads what the service sends (``ack``, ``message`` from a group or
  from the server, ``system`` ``connected`` / ``disconnected``, ``pong``); a client uses it. A
  well-formed frame with a ``type``, ``from`` or ``event`` it does not know becomes an
  :class:`UnknownMessage` to be logged and ignored, as the JavaScript client does.
* :func:`serialize` writes any of them as compact JSON.

Errors are :class:`WebPubSubProtocolError` with the WebSocket close code that fits (1007 for a
frame that is not valid JSON or does not match the format, 1009 for a frame over ``max_size``) and
a message that names the field (``"sendToGroup.group is missing"``).

Serialization writes the field names and the key order the official client SDKs write, leaves out
optional keys whose value is ``None`` (``ackId``, ``sequenceId``, ``reconnectionToken``) and always
writes the keys the Python client SDK reads without a default (``ackId``, ``success``, ``from``,
``group``, ``dataType``, ``data``, ``connectionId``), plus the nullable ``fromUserId`` and
``userId``.

Payloads (``data`` with its ``dataType``) are :class:`JsonData`, :class:`TextData`,
:class:`BinaryData` (bytes, base64 on the wire) or :class:`ProtobufData` (bytes, base64 on the
wire; the JavaScript client can send it and protobuf-subprotocol senders produce it).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

from ..errors import RemoteProtocolError

__all__ = [
    "CLOSE_INVALID_PAYLOAD",
    "CLOSE_MESSAGE_TOO_BIG",
    "DATA_TYPES",
    "DEFAULT_MAX_SIZE",
    "JSON_RELIABLE_SUBPROTOCOL",
    "JSON_SUBPROTOCOL",
    "SUBPROTOCOLS",
    "AckError",
    "AckMessage",
    "BinaryData",
    "ClientMessage",
    "ConnectedMessage",
    "Data",
    "DisconnectedMessage",
    "EventMessage",
    "GroupDataMessage",
    "JoinGroupMessage",
    "JsonData",
    "JsonValue",
    "LeaveGroupMessage",
    "PingMessage",
    "PongMessage",
    "ProtobufData",
    "SendToGroupMessage",
    "SequenceAckMessage",
    "ServerDataMessage",
    "ServiceMessage",
    "TextData",
    "UnknownMessage",
    "WebPubSubProtocolError",
    "data_value",
    "make_data",
    "parse_client_message",
    "parse_service_message",
    "serialize",
]

#: The JSON subprotocol (no recovery, no sequence ids).
JSON_SUBPROTOCOL = "json.webpubsub.azure.v1"
#: The reliable JSON subprotocol, which both official client SDKs offer by default.
JSON_RELIABLE_SUBPROTOCOL = "json.reliable.webpubsub.azure.v1"
#: Both JSON subprotocols, reliable first.
SUBPROTOCOLS = (JSON_RELIABLE_SUBPROTOCOL, JSON_SUBPROTOCOL)

#: Close code for a frame that is not valid JSON or does not match the message format.
CLOSE_INVALID_PAYLOAD = 1007
#: Close code for a frame larger than the limit.
CLOSE_MESSAGE_TOO_BIG = 1009
#: The service's frame limit: 1 MiB.
DEFAULT_MAX_SIZE = 1024 * 1024

_UINT64_MAX = 2**64 - 1


class WebPubSubProtocolError(RemoteProtocolError):
    """A Web PubSub JSON frame is malformed; ``close_code`` says how to close the connection."""

    def __init__(self, message: str, *, close_code: int = CLOSE_INVALID_PAYLOAD) -> None:
        super().__init__(message, close_code=close_code)
        self.close_code: int = close_code


# --------------------------------------------------------------------------------------------
# payloads

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"


@dataclass(frozen=True, slots=True)
class JsonData:
    """``dataType:"json"``: ``value`` is any JSON value, written as is."""

    data_type: ClassVar[str] = "json"
    value: JsonValue


@dataclass(frozen=True, slots=True)
class TextData:
    """``dataType:"text"``: ``data`` is a JSON string."""

    data_type: ClassVar[str] = "text"
    text: str


@dataclass(frozen=True, slots=True)
class BinaryData:
    """``dataType:"binary"``: ``data`` is the base64 of these bytes."""

    data_type: ClassVar[str] = "binary"
    data: bytes

    def __post_init__(self) -> None:
        if type(self.data) is not bytes:  # bytearray / memoryview: keep an immutable copy
            object.__setattr__(self, "data", bytes(self.data))


@dataclass(frozen=True, slots=True)
class ProtobufData:
    """``dataType:"protobuf"``: ``data`` is the base64 of an encoded ``google.protobuf.Any``."""

    data_type: ClassVar[str] = "protobuf"
    data: bytes

    def __post_init__(self) -> None:
        if type(self.data) is not bytes:
            object.__setattr__(self, "data", bytes(self.data))


Data: TypeAlias = JsonData | TextData | BinaryData | ProtobufData

#: The ``dataType`` values this module understands; ``json`` is the default when it is absent.
DATA_TYPES = ("json", "text", "binary", "protobuf")


def make_data(value: object, data_type: str = "text") -> Data:
    """Wrap an application value as the payload of ``data_type``, as the SDKs' ``send_*`` take it.

    ``"text"``: a str; ``"json"``: any JSON-serialisable value; ``"binary"`` / ``"protobuf"``:
    bytes-like. A value that does not fit raises ``TypeError`` / ``ValueError`` here, before
    anything is sent.
    """
    if data_type == "text":
        if not isinstance(value, str):
            raise TypeError(f"data_type 'text' needs a str, not {type(value).__name__}")
        return TextData(value)
    if data_type == "json":
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"data_type 'json' needs a JSON value: {exc}") from None
        return JsonData(value)  # type: ignore[arg-type]
    if data_type in ("binary", "protobuf"):
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"data_type {data_type!r} needs bytes, not {type(value).__name__}")
        return BinaryData(bytes(value)) if data_type == "binary" else ProtobufData(bytes(value))
    raise ValueError(f"data_type must be one of {', '.join(DATA_TYPES)}, not {data_type!r}")


def data_value(data: Data) -> JsonValue | bytes:
    """The application value of a payload: the JSON value, the str, or the bytes."""
    if isinstance(data, JsonData):
        return data.value
    if isinstance(data, TextData):
        return data.text
    return data.data


# --------------------------------------------------------------------------------------------
# client -> service


@dataclass(frozen=True, slots=True)
class JoinGroupMessage:
    """``joinGroup``: add this connection to ``group``; with ``ack_id``, the service acks."""

    type: ClassVar[str] = "joinGroup"
    group: str
    ack_id: int | None = None


@dataclass(frozen=True, slots=True)
class LeaveGroupMessage:
    """``leaveGroup``: remove this connection from ``group``."""

    type: ClassVar[str] = "leaveGroup"
    group: str
    ack_id: int | None = None


@dataclass(frozen=True, slots=True)
class SendToGroupMessage:
    """``sendToGroup``: publish ``data`` to ``group``; ``no_echo`` skips the sender's copy."""

    type: ClassVar[str] = "sendToGroup"
    group: str
    data: Data
    ack_id: int | None = None
    no_echo: bool = False


@dataclass(frozen=True, slots=True)
class EventMessage:
    """``event``: a custom event named ``event`` for the upstream server."""

    type: ClassVar[str] = "event"
    event: str
    data: Data
    ack_id: int | None = None


@dataclass(frozen=True, slots=True)
class SequenceAckMessage:
    """``sequenceAck`` (reliable only): every message with ``sequenceId <= sequence_id`` arrived."""

    type: ClassVar[str] = "sequenceAck"
    sequence_id: int


@dataclass(frozen=True, slots=True)
class PingMessage:
    """``ping``: application-level keepalive; the service answers :class:`PongMessage`."""

    type: ClassVar[str] = "ping"


ClientMessage: TypeAlias = (
    JoinGroupMessage
    | LeaveGroupMessage
    | SendToGroupMessage
    | EventMessage
    | SequenceAckMessage
    | PingMessage
)


# --------------------------------------------------------------------------------------------
# service -> client


@dataclass(frozen=True, slots=True)
class AckError:
    """Why a request failed; ``name`` is e.g. ``Forbidden``, ``Duplicate`` or ``NotFound``."""

    name: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class AckMessage:
    """``ack``: the outcome of the request that carried ``ack_id``."""

    type: ClassVar[str] = "ack"
    ack_id: int
    success: bool
    error: AckError | None = None

    @property
    def is_duplicate(self) -> bool:
        """True when the service had already run a request with this ``ackId``."""
        return self.error is not None and self.error.name == "Duplicate"

    @property
    def ok(self) -> bool:
        """Success as both client SDKs read it: ``success`` or a ``Duplicate`` error."""
        return self.success or self.is_duplicate


@dataclass(frozen=True, slots=True)
class GroupDataMessage:
    """``message`` ``from:"group"``: ``data`` published to ``group`` (by ``from_user_id``)."""

    type: ClassVar[str] = "message"
    group: str
    data: Data
    from_user_id: str | None = None
    sequence_id: int | None = None


@dataclass(frozen=True, slots=True)
class ServerDataMessage:
    """``message`` ``from:"server"``: ``data`` sent by the application server."""

    type: ClassVar[str] = "message"
    data: Data
    sequence_id: int | None = None


@dataclass(frozen=True, slots=True)
class ConnectedMessage:
    """``system`` ``connected``: the first frame of a new connection.

    ``reconnection_token`` is present on the reliable subprotocol only.
    """

    type: ClassVar[str] = "system"
    connection_id: str
    user_id: str | None = None
    reconnection_token: str | None = None


@dataclass(frozen=True, slots=True)
class DisconnectedMessage:
    """``system`` ``disconnected``: the service is about to close; ``message`` says why."""

    type: ClassVar[str] = "system"
    message: str = ""


@dataclass(frozen=True, slots=True)
class PongMessage:
    """``pong``: the answer to :class:`PingMessage`."""

    type: ClassVar[str] = "pong"


ServiceMessage: TypeAlias = (
    AckMessage
    | GroupDataMessage
    | ServerDataMessage
    | ConnectedMessage
    | DisconnectedMessage
    | PongMessage
)


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A well-formed service frame of a ``type`` (or ``from`` / system ``event``) not known here.

    ``fields`` is the whole JSON object, ``type`` included; log it and carry on.
    """

    type: str
    fields: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# parsing helpers


def _fail(message: str) -> WebPubSubProtocolError:
    return WebPubSubProtocolError(message, close_code=CLOSE_INVALID_PAYLOAD)


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _req_str(obj: Mapping[str, Any], where: str, key: str) -> str:
    if key not in obj:
        raise _fail(f"{where}.{key} is missing")
    value = obj[key]
    if not isinstance(value, str):
        raise _fail(f"{where}.{key} must be a string, not {_describe(value)}")
    return value


def _opt_str(obj: Mapping[str, Any], where: str, key: str) -> str | None:
    if obj.get(key) is None:
        return None
    return _req_str(obj, where, key)


def _uint64(value: Any, where: str, key: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(f"{where}.{key} must be an integer, not {_describe(value)}")
    if not minimum <= value <= _UINT64_MAX:
        raise _fail(f"{where}.{key} {value} is out of range {minimum}..2**64-1")
    return value


def _opt_uint64(obj: Mapping[str, Any], where: str, key: str, *, minimum: int = 0) -> int | None:
    if obj.get(key) is None:
        return None
    return _uint64(obj[key], where, key, minimum=minimum)


def _req_uint64(obj: Mapping[str, Any], where: str, key: str) -> int:
    if obj.get(key) is None:
        raise _fail(f"{where}.{key} is missing")
    return _uint64(obj[key], where, key)


def _bool(obj: Mapping[str, Any], where: str, key: str, *, default: bool | None) -> bool:
    value = obj.get(key)
    if value is None:
        if default is None:
            raise _fail(f"{where}.{key} is missing")
        return default
    if not isinstance(value, bool):
        raise _fail(f"{where}.{key} must be true or false, not {_describe(value)}")
    return value


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise _fail(f"{where}.data must be a base64 string, not {_describe(value)}")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise _fail(f"{where}.data is not valid base64") from None


def _data(obj: Mapping[str, Any], where: str, *, allow_null: bool) -> Data:
    data_type = obj.get("dataType")
    if data_type is None:
        data_type = "json"
    elif not isinstance(data_type, str):
        raise _fail(f"{where}.dataType must be a string, not {_describe(data_type)}")
    if data_type not in DATA_TYPES:
        raise _fail(f"{where}.dataType {data_type!r} is not one of json, text, binary, protobuf")
    if "data" not in obj:
        raise _fail(f"{where}.data is missing")
    value = obj["data"]
    if data_type == "json":
        if value is None and not allow_null:
            raise _fail(f"{where}.data must not be null")
        return JsonData(value)
    if data_type == "text":
        if not isinstance(value, str):
            raise _fail(f"{where}.data must be a string for dataType text, not {_describe(value)}")
        return TextData(value)
    if data_type == "binary":
        return BinaryData(_b64(value, where))
    return ProtobufData(_b64(value, where))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_Frame: TypeAlias = str | bytes | bytearray | memoryview


def _load(text: _Frame, max_size: int | None, side: str) -> dict[str, Any]:
    if isinstance(text, (bytes, bytearray, memoryview)):
        raw = bytes(text)
        if max_size is not None and len(raw) > max_size:
            raise WebPubSubProtocolError(
                f"{side} message is {len(raw)} bytes, over the limit of {max_size}",
                close_code=CLOSE_MESSAGE_TOO_BIG,
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _fail(f"{side} message is not valid UTF-8: {exc}") from None
    elif max_size is not None and len(text) * 4 > max_size:
        # a str may be up to 4 UTF-8 bytes per character; count exactly only when it matters
        size = len(text) if len(text) > max_size else len(text.encode("utf-8", "surrogatepass"))
        if size > max_size:
            raise WebPubSubProtocolError(
                f"{side} message is over the limit of {max_size} bytes",
                close_code=CLOSE_MESSAGE_TOO_BIG,
            )
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise _fail(f"{side} message is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _fail(f"{side} message must be a JSON object, not {_describe(doc)}")
    return doc


def _type(doc: Mapping[str, Any], side: str) -> str:
    if "type" not in doc:
        raise _fail(f"{side} message.type is missing")
    value = doc["type"]
    if not isinstance(value, str):
        raise _fail(f"{side} message.type must be a string, not {_describe(value)}")
    return value


# --------------------------------------------------------------------------------------------
# client -> service parsing


def _parse_join(obj: Mapping[str, Any]) -> ClientMessage:
    return JoinGroupMessage(
        group=_req_str(obj, "joinGroup", "group"),
        ack_id=_opt_uint64(obj, "joinGroup", "ackId"),
    )


def _parse_leave(obj: Mapping[str, Any]) -> ClientMessage:
    return LeaveGroupMessage(
        group=_req_str(obj, "leaveGroup", "group"),
        ack_id=_opt_uint64(obj, "leaveGroup", "ackId"),
    )


def _parse_send_to_group(obj: Mapping[str, Any]) -> ClientMessage:
    where = "sendToGroup"
    return SendToGroupMessage(
        group=_req_str(obj, where, "group"),
        data=_data(obj, where, allow_null=False),
        ack_id=_opt_uint64(obj, where, "ackId"),
        no_echo=_bool(obj, where, "noEcho", default=False),
    )


def _parse_event(obj: Mapping[str, Any]) -> ClientMessage:
    return EventMessage(
        event=_req_str(obj, "event", "event"),
        data=_data(obj, "event", allow_null=False),
        ack_id=_opt_uint64(obj, "event", "ackId"),
    )


def _parse_sequence_ack(obj: Mapping[str, Any]) -> ClientMessage:
    value = obj.get("sequenceId")
    # Every SDK sends a number; the docs' example quotes it ("<sequenceId>"), so take digits too.
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if value is None:
        raise _fail("sequenceAck.sequenceId is missing")
    return SequenceAckMessage(sequence_id=_uint64(value, "sequenceAck", "sequenceId"))


def _parse_ping(obj: Mapping[str, Any]) -> ClientMessage:
    return PingMessage()


_CLIENT_PARSERS: dict[str, Callable[[Mapping[str, Any]], ClientMessage]] = {
    "joinGroup": _parse_join,
    "leaveGroup": _parse_leave,
    "sendToGroup": _parse_send_to_group,
    "event": _parse_event,
    "sequenceAck": _parse_sequence_ack,
    "ping": _parse_ping,
}


def parse_client_message(
    text: _Frame, *, max_size: int | None = DEFAULT_MAX_SIZE
) -> ClientMessage:
    """Parse one text frame a client sent on a JSON Web PubSub subprotocol.

    ``text`` is the frame's text (or its UTF-8 bytes). Raises :class:`WebPubSubProtocolError`
    with ``close_code`` 1009 when it is longer than ``max_size`` bytes (``None``: no limit), and
    1007 when it is not UTF-8, not JSON, not an object, of an unknown ``type`` or ``dataType``, or
    has a missing or ill-typed field. Keys this module does not know are ignored.
    """
    doc = _load(text, max_size, "client")
    kind = _type(doc, "client")
    parser = _CLIENT_PARSERS.get(kind)
    if parser is None:
        raise _fail(f"client message.type {kind!r} is not a known client message type")
    return parser(doc)


# --------------------------------------------------------------------------------------------
# service -> client parsing


def _parse_ack(obj: Mapping[str, Any]) -> ServiceMessage | UnknownMessage:
    error: AckError | None = None
    raw_error = obj.get("error")
    if raw_error is not None:
        if not isinstance(raw_error, dict):
            raise _fail(f"ack.error must be an object, not {_describe(raw_error)}")
        error = AckError(
            name=_req_str(raw_error, "ack.error", "name"),
            message=_opt_str(raw_error, "ack.error", "message") or "",
        )
    return AckMessage(
        ack_id=_req_uint64(obj, "ack", "ackId"),
        success=_bool(obj, "ack", "success", default=None),
        error=error,
    )


def _parse_data_message(obj: Mapping[str, Any]) -> ServiceMessage | UnknownMessage:
    source = _req_str(obj, "message", "from")
    if source == "group":
        return GroupDataMessage(
            group=_req_str(obj, "message", "group"),
            data=_data(obj, "message", allow_null=True),
            from_user_id=_opt_str(obj, "message", "fromUserId"),
            sequence_id=_opt_uint64(obj, "message", "sequenceId", minimum=1),
        )
    if source == "server":
        return ServerDataMessage(
            data=_data(obj, "message", allow_null=True),
            sequence_id=_opt_uint64(obj, "message", "sequenceId", minimum=1),
        )
    return UnknownMessage("message", dict(obj))


def _parse_system(obj: Mapping[str, Any]) -> ServiceMessage | UnknownMessage:
    event = _req_str(obj, "system", "event")
    if event == "connected":
        return ConnectedMessage(
            connection_id=_req_str(obj, "system.connected", "connectionId"),
            user_id=_opt_str(obj, "system.connected", "userId"),
            reconnection_token=_opt_str(obj, "system.connected", "reconnectionToken"),
        )
    if event == "disconnected":
        return DisconnectedMessage(message=_opt_str(obj, "system.disconnected", "message") or "")
    return UnknownMessage("system", dict(obj))


def _parse_pong(obj: Mapping[str, Any]) -> ServiceMessage | UnknownMessage:
    return PongMessage()


_SERVICE_PARSERS: dict[str, Callable[[Mapping[str, Any]], ServiceMessage | UnknownMessage]] = {
    "ack": _parse_ack,
    "message": _parse_data_message,
    "system": _parse_system,
    "pong": _parse_pong,
}


def parse_service_message(
    text: _Frame, *, max_size: int | None = DEFAULT_MAX_SIZE
) -> ServiceMessage | UnknownMessage:
    """Parse one text frame the service sent on a JSON Web PubSub subprotocol.

    Returns :class:`UnknownMessage` for a JSON object whose ``type``, message ``from`` or system
    ``event`` is not known here (forward compatible; never ``None``). Raises
    :class:`WebPubSubProtocolError` (1009 over ``max_size`` bytes; 1007 for invalid UTF-8 or
    JSON, a non-object, a missing ``type``, an unknown ``dataType`` or a missing or ill-typed
    field of a known message).
    """
    doc = _load(text, max_size, "service")
    kind = _type(doc, "service")
    parser = _SERVICE_PARSERS.get(kind)
    if parser is None:
        return UnknownMessage(kind, doc)
    return parser(doc)


# --------------------------------------------------------------------------------------------
# serialization


def _put_data(out: dict[str, Any], data: Data) -> None:
    if isinstance(data, JsonData):
        out["dataType"] = "json"
        out["data"] = data.value
    elif isinstance(data, TextData):
        out["dataType"] = "text"
        out["data"] = data.text
    elif isinstance(data, (BinaryData, ProtobufData)):
        out["dataType"] = data.data_type
        out["data"] = base64.b64encode(data.data).decode("ascii")
    else:
        raise TypeError(f"cannot serialize data {type(data).__name__}; expected a Data class")


def _check_uint64(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT64_MAX:
        raise ValueError(f"{name} must be an integer in 0..2**64-1, not {value!r}")
    return value


_MESSAGE_CLASSES = (
    JoinGroupMessage, LeaveGroupMessage, SendToGroupMessage, EventMessage, SequenceAckMessage,
    PingMessage, AckMessage, GroupDataMessage, ServerDataMessage, ConnectedMessage,
    DisconnectedMessage, PongMessage, UnknownMessage,
)


def _message_json(msg: ClientMessage | ServiceMessage | UnknownMessage) -> dict[str, Any]:
    if not isinstance(msg, _MESSAGE_CLASSES):
        raise TypeError(f"cannot serialize {type(msg).__name__}; expected a Web PubSub message")
    out: dict[str, Any] = {"type": msg.type}
    # Key order follows what the JavaScript client SDK writes (jsonProtocolBase.js), §2.1/§2.2.
    if isinstance(msg, (JoinGroupMessage, LeaveGroupMessage)):
        out["group"] = msg.group
        if msg.ack_id is not None:
            out["ackId"] = _check_uint64(msg.ack_id, "ackId")
    elif isinstance(msg, SendToGroupMessage):
        out["group"] = msg.group
        if msg.ack_id is not None:
            out["ackId"] = _check_uint64(msg.ack_id, "ackId")
        out["noEcho"] = bool(msg.no_echo)
        _put_data(out, msg.data)
    elif isinstance(msg, EventMessage):
        out["event"] = msg.event
        if msg.ack_id is not None:
            out["ackId"] = _check_uint64(msg.ack_id, "ackId")
        _put_data(out, msg.data)
    elif isinstance(msg, SequenceAckMessage):
        out["sequenceId"] = _check_uint64(msg.sequence_id, "sequenceId")
    elif isinstance(msg, AckMessage):
        out["ackId"] = _check_uint64(msg.ack_id, "ackId")
        out["success"] = bool(msg.success)
        if msg.error is not None:
            out["error"] = {"name": msg.error.name, "message": msg.error.message}
    elif isinstance(msg, GroupDataMessage):
        out["from"] = "group"
        out["group"] = msg.group
        out["fromUserId"] = msg.from_user_id
        _put_data(out, msg.data)
        if msg.sequence_id is not None:
            out["sequenceId"] = _check_uint64(msg.sequence_id, "sequenceId")
    elif isinstance(msg, ServerDataMessage):
        out["from"] = "server"
        _put_data(out, msg.data)
        if msg.sequence_id is not None:
            out["sequenceId"] = _check_uint64(msg.sequence_id, "sequenceId")
    elif isinstance(msg, ConnectedMessage):
        out["event"] = "connected"
        out["userId"] = msg.user_id
        out["connectionId"] = msg.connection_id
        if msg.reconnection_token is not None:
            out["reconnectionToken"] = msg.reconnection_token
    elif isinstance(msg, DisconnectedMessage):
        out["event"] = "disconnected"
        out["message"] = msg.message
    elif isinstance(msg, UnknownMessage):
        out.update(msg.fields)
        out["type"] = msg.type
    return out


def serialize(msg: ClientMessage | ServiceMessage | UnknownMessage) -> str:
    """Return the compact JSON text of ``msg``, ready to send as one WebSocket text frame.

    Raises ``ValueError`` for a JSON payload that JSON cannot carry (NaN, infinity, a cycle) or an
    id outside 0..2**64-1, and ``TypeError`` for a value that is not a message.
    """
    return json.dumps(
        _message_json(msg), separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
