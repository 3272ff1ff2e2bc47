"""Control-channel messages of Hybrid Connections (hybrid-connections-wire §3).

Each control message is one WebSocket *text* message holding a JSON object whose single top-level
key names the command: ``accept``, ``request``, ``response`` or ``renewToken``. This module turns
that text into frozen dataclasses and back, validating strictly: a malformed message raises
:class:`~hyco_proto.errors.RemoteProtocolError` whose message names the offending field
(``"accept.address is missing"``).

Unknown top-level commands are *not* errors: .NET logs and ignores them, and a future service may
add commands (§3). :func:`parse_command` returns an :class:`UnknownCommand` for them so the caller
can log it and carry on; it never returns ``None``.

Serialization writes the exact field names and the .NET field order (§3.1 to §3.4), and always
writes ``connectHeaders`` / ``remoteEndpoint`` on ``accept``: the Java listener throws without them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any, TypeAlias

from .errors import RemoteProtocolError
from .headers import Headers

__all__ = [
    "AcceptCommand",
    "Command",
    "RemoteEndpoint",
    "RenewTokenCommand",
    "RequestCommand",
    "ResponseCommand",
    "UnknownCommand",
    "parse_command",
    "serialize_command",
]


@dataclass(frozen=True, slots=True)
class RemoteEndpoint:
    """The sender's network address as the relay saw it."""

    address: str
    port: int


@dataclass(frozen=True, slots=True)
class AcceptCommand:
    """``accept``: a WebSocket sender is waiting; connect ``address`` to accept it (§3.1).

    ``connect_headers`` holds every header of the sender's upgrade request (with the relay's
    spelling; names are looked up case-insensitively). The address is valid for about 30 s and
    one connection attempt.
    """

    address: str
    id: str
    connect_headers: Headers = field(default_factory=Headers)
    remote_endpoint: RemoteEndpoint = field(default_factory=lambda: RemoteEndpoint("", 0))

    def __post_init__(self) -> None:
        if type(self.connect_headers) is not Headers:  # a plain mapping given: wrap it
            object.__setattr__(self, "connect_headers", Headers(self.connect_headers))

    @property
    def requested_subprotocols(self) -> list[str]:
        """The sender's ``Sec-WebSocket-Protocol`` offers, in order (header name case-insensitive).

        hyco-ws and .NET offer the *first* of these on the rendezvous (§3.1).
        """
        value = self.connect_headers.get("Sec-WebSocket-Protocol")
        return [p.strip() for p in value.split(",") if p.strip()] if value else []


@dataclass(frozen=True, slots=True)
class RequestCommand:
    """``request``: an HTTP request for the listener (§3.2).

    Two forms share this class:

    * the *full* request (``method``, ``request_target`` and ``body`` set). ``address`` is present
      when it arrives on the control channel and absent when it arrives on a request rendezvous;
    * the rendezvous-only *pointer* (only ``address`` and ``id``): the listener must connect to
      ``address`` to receive the full request. :attr:`is_pointer` tells them apart.
    """

    id: str
    address: str | None = None
    request_target: str | None = None
    method: str | None = None
    remote_endpoint: RemoteEndpoint | None = None
    request_headers: dict[str, str] = field(default_factory=dict)
    body: bool | None = None

    @property
    def is_pointer(self) -> bool:
        """True for the ``{address, id}`` pointer that asks the listener to open a rendezvous."""
        return self.method is None


@dataclass(frozen=True, slots=True)
class ResponseCommand:
    """``response``: the listener's answer to a request (§3.3); a binary body follows if set."""

    request_id: str
    status_code: int
    status_description: str | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    body: bool = False


@dataclass(frozen=True, slots=True)
class RenewTokenCommand:
    """``renewToken``: the listener hands the relay a fresh token; there is no reply (§3.4)."""

    token: str


@dataclass(frozen=True, slots=True)
class UnknownCommand:
    """A well-formed control message with a top-level key we do not know; log it and ignore it."""

    name: str
    value: Any = None


Command: TypeAlias = AcceptCommand | RequestCommand | ResponseCommand | RenewTokenCommand


# --------------------------------------------------------------------------------------------
# parsing


def _fail(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, close_code=1002)


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _req_str(obj: Mapping[str, Any], cmd: str, key: str) -> str:
    if key not in obj:
        raise _fail(f"{cmd}.{key} is missing")
    value = obj[key]
    if not isinstance(value, str):
        raise _fail(f"{cmd}.{key} must be a string, not {_describe(value)}")
    return value


def _opt_str(obj: Mapping[str, Any], cmd: str, key: str) -> str | None:
    if obj.get(key) is None:
        return None
    return _req_str(obj, cmd, key)


def _headers(obj: Mapping[str, Any], cmd: str, key: str, *, required: bool) -> dict[str, str]:
    if obj.get(key) is None:
        if required:
            raise _fail(f"{cmd}.{key} is missing")
        return {}
    value = obj[key]
    if not isinstance(value, dict):
        raise _fail(f"{cmd}.{key} must be an object, not {_describe(value)}")
    for name, item in value.items():
        if not isinstance(item, str):
            raise _fail(f"{cmd}.{key}[{name!r}] must be a string, not {_describe(item)}")
    return dict(value)


def _endpoint(obj: Mapping[str, Any], cmd: str, *, required: bool) -> RemoteEndpoint | None:
    key = "remoteEndpoint"
    if obj.get(key) is None:
        if required:
            raise _fail(f"{cmd}.{key} is missing")
        return None
    value = obj[key]
    if not isinstance(value, dict):
        raise _fail(f"{cmd}.{key} must be an object, not {_describe(value)}")
    address = _req_str(value, f"{cmd}.{key}", "address")
    if "port" not in value:
        raise _fail(f"{cmd}.{key}.port is missing")
    port = value["port"]
    if isinstance(port, bool) or not isinstance(port, int):
        raise _fail(f"{cmd}.{key}.port must be an integer, not {_describe(port)}")
    if not 0 <= port <= 65535:
        raise _fail(f"{cmd}.{key}.port {port} is out of range 0..65535")
    return RemoteEndpoint(address, port)


def _bool(obj: Mapping[str, Any], cmd: str, key: str) -> bool | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _fail(f"{cmd}.{key} must be true or false, not {_describe(value)}")
    return value


def _status_code(obj: Mapping[str, Any], cmd: str) -> int:
    key = "statusCode"
    if obj.get(key) is None:
        raise _fail(f"{cmd}.{key} is missing")
    value = obj[key]
    # .NET, Java and hyco-https send a number; the doc example sends "200" (§3.3).
    if isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        code = int(value.strip())
    elif isinstance(value, int) and not isinstance(value, bool):
        code = value
    else:
        raise _fail(f"{cmd}.{key} must be an integer or a numeric string, not {value!r}")
    if not 100 <= code <= 999:
        raise _fail(f"{cmd}.{key} {code} is not a valid HTTP status (100..999)")
    return code


def _parse_accept(obj: Mapping[str, Any]) -> AcceptCommand:
    endpoint = _endpoint(obj, "accept", required=False)
    return AcceptCommand(
        address=_req_str(obj, "accept", "address"),
        id=_req_str(obj, "accept", "id"),
        connect_headers=Headers(_headers(obj, "accept", "connectHeaders", required=False)),
        remote_endpoint=endpoint if endpoint is not None else RemoteEndpoint("", 0),
    )


_FULL_REQUEST_KEYS = ("method", "requestTarget", "body")


def _parse_request(obj: Mapping[str, Any]) -> RequestCommand:
    request_id = _req_str(obj, "request", "id")
    if not any(obj.get(k) is not None for k in _FULL_REQUEST_KEYS):
        # Rendezvous-only pointer: "the remainder of the message is left empty" (§3.2 B).
        return RequestCommand(id=request_id, address=_req_str(obj, "request", "address"))
    method = _req_str(obj, "request", "method")
    if not method:
        raise _fail("request.method is empty")
    body = _bool(obj, "request", "body")
    if body is None:
        # .NET and Java tell a control-channel request from a pointer by `body` (§3.2 A).
        raise _fail("request.body is missing")
    return RequestCommand(
        id=request_id,
        address=_opt_str(obj, "request", "address"),
        request_target=_req_str(obj, "request", "requestTarget"),
        method=method,
        remote_endpoint=_endpoint(obj, "request", required=False),
        request_headers=_headers(obj, "request", "requestHeaders", required=False),
        body=body,
    )


def _parse_response(obj: Mapping[str, Any]) -> ResponseCommand:
    body = _bool(obj, "response", "body")
    return ResponseCommand(
        request_id=_req_str(obj, "response", "requestId"),
        status_code=_status_code(obj, "response"),
        status_description=_opt_str(obj, "response", "statusDescription"),
        response_headers=_headers(obj, "response", "responseHeaders", required=False),
        body=bool(body),  # a missing body means false (jbjordan's client omits it, §3.3)
    )


def _parse_renew(obj: Mapping[str, Any]) -> RenewTokenCommand:
    return RenewTokenCommand(token=_req_str(obj, "renewToken", "token"))


_PARSERS: dict[str, Callable[[Mapping[str, Any]], Command]] = {
    "accept": _parse_accept,
    "request": _parse_request,
    "response": _parse_response,
    "renewToken": _parse_renew,
}


#: Deepest nesting of arrays and objects a control message may have. The deepest legitimate one
#: is 3 (``{"response": {"responseHeaders": {...}}}``); json.loads recurses once per level and
#: would raise RecursionError on a message nested 100,000 deep.
MAX_NESTING = 32

_JSON_NESTING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def _nesting(text: str) -> int:
    """Deepest nesting of ``[``/``{`` in ``text`` outside strings, counted without recursion
    (and only looked at closely when there are enough brackets to go deep)."""
    if text.count("[") + text.count("{") <= MAX_NESTING:
        return 0
    depth = deepest = 0
    for match in _JSON_NESTING.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_NESTING:
                    return deepest
        elif token in "]}":
            depth -= 1
    return deepest


def parse_command(text: str | bytes) -> Command | UnknownCommand:
    """Parse one control-channel text message.

    Returns the command dataclass, or :class:`UnknownCommand` for a well-formed message with an
    unknown top-level key (to be logged and ignored). Raises ``RemoteProtocolError`` (close code
    1002) for invalid UTF-8, invalid JSON, a non-object, not exactly one top-level key, or a
    missing / ill-typed field; the message names the field.
    """
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(f"control message is not valid UTF-8: {exc}",
                                      close_code=1007) from None
    depth = _nesting(text)
    if depth > MAX_NESTING:
        raise RemoteProtocolError(f"control message is nested {depth} levels deep; at most "
                                  f"{MAX_NESTING} are allowed", close_code=1008)
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _fail(f"control message is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _fail(f"control message must be a JSON object, not {_describe(doc)}")
    if len(doc) != 1:
        keys = ", ".join(sorted(doc)) or "none"
        raise _fail(f"control message must have exactly one top-level key, got {len(doc)} ({keys})")
    ((name, payload),) = doc.items()
    parser = _PARSERS.get(name)
    if parser is None:
        return UnknownCommand(name, payload)
    if not isinstance(payload, dict):
        raise _fail(f"{name} must be an object, not {_describe(payload)}")
    return parser(payload)


# --------------------------------------------------------------------------------------------
# serialization


def _endpoint_json(endpoint: RemoteEndpoint) -> dict[str, Any]:
    return {"address": endpoint.address, "port": endpoint.port}


def _command_json(cmd: Command) -> dict[str, Any]:
    # Field order follows .NET's DataContract order (ListenerCommand.cs), §3.1-§3.4.
    if isinstance(cmd, AcceptCommand):
        return {"accept": {
            "address": cmd.address,
            "id": cmd.id,
            "connectHeaders": dict(cmd.connect_headers.last_items()),
            "remoteEndpoint": _endpoint_json(cmd.remote_endpoint),
        }}
    if isinstance(cmd, RequestCommand):
        body: dict[str, Any] = {}
        if cmd.is_pointer:
            if cmd.address is None:
                raise ValueError("a pointer request (no method) needs an address")
            return {"request": {"address": cmd.address, "id": cmd.id}}
        if cmd.address is not None:
            body["address"] = cmd.address
        body["id"] = cmd.id
        if cmd.request_target is None:
            raise ValueError("a full request (method set) needs a request_target")
        body["requestTarget"] = cmd.request_target
        body["method"] = cmd.method
        if cmd.remote_endpoint is not None:
            body["remoteEndpoint"] = _endpoint_json(cmd.remote_endpoint)
        body["requestHeaders"] = dict(cmd.request_headers)
        body["body"] = bool(cmd.body)  # must always be present on a full request (§3.2 A)
        return {"request": body}
    if isinstance(cmd, ResponseCommand):
        out: dict[str, Any] = {"requestId": cmd.request_id, "statusCode": cmd.status_code}
        if cmd.status_description is not None:
            out["statusDescription"] = cmd.status_description
        out["responseHeaders"] = dict(cmd.response_headers)
        out["body"] = cmd.body
        return {"response": out}
    if isinstance(cmd, RenewTokenCommand):
        return {"renewToken": {"token": cmd.token}}
    raise TypeError(f"cannot serialize {type(cmd).__name__}; expected a control command")


#: ``json.dumps(..., separators=(",", ":"), ensure_ascii=False)``, made once (dumps builds an
#: encoder per call when given options).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _accept_text(cmd: AcceptCommand) -> str | None:
    """``accept``'s JSON text written directly, character for character what ``_ENCODER`` writes
    for ``_command_json(cmd)`` (the relay sends one per sender): every string through
    ``encode_basestring``, the function that encoder uses with ``ensure_ascii=False``. None
    when a field is not a plain ``str`` / ``int`` (the general path decides what to write)."""
    endpoint = cmd.remote_endpoint
    port = endpoint.port
    if type(port) is not int:  # a bool or a float would be written differently
        return None
    try:
        headers = ",".join([f"{encode_basestring(k)}:{encode_basestring(v)}"
                            for k, v in cmd.connect_headers.last_items()])
        return (f'{{"accept":{{"address":{encode_basestring(cmd.address)},'
                f'"id":{encode_basestring(cmd.id)},"connectHeaders":{{{headers}}},'
                f'"remoteEndpoint":{{"address":{encode_basestring(endpoint.address)},'
                f'"port":{port}}}}}}}')
    except TypeError:  # not a str
        return None


def serialize_command(cmd: Command) -> str:
    """Return the compact JSON text of ``cmd``, ready to send as one WebSocket text message."""
    if type(cmd) is AcceptCommand:
        text = _accept_text(cmd)
        if text is not None:
            return text
    return _ENCODER.encode(_command_json(cmd))
