"""Upstream event handlers of a Web PubSub hub: CloudEvents over HTTP, without I/O.

A hub can have event handlers: HTTP endpoints of the application server that receive the hub's
system events (``connect``, ``connected``, ``disconnected``) and its clients' user events as
CloudEvents in HTTP *binary* mode — the attributes in ``ce-*`` headers, the data in the body —
which is what ``@azure/web-pubsub-express`` (and Azure's own service) speak. This module builds
those requests and reads their answers; it does no I/O and keeps no state (the service's
``EventDispatcher`` sends them and waits).

* :class:`EventHandler` — a handler's settings, named as in the Azure portal: a URL template
  (``{hub}``, ``{event}`` and ``{category}`` are replaced), which user events (``"*"``, or names
  separated by commas) and which system events it takes.
* :func:`validation_request` / :func:`validation_passed` — the abuse-protection handshake:
  ``OPTIONS`` with ``WebHook-Request-Origin: {our host}``; the handler must answer
  ``WebHook-Allowed-Origin`` with ``*`` or that host before it gets any event.
* :func:`event_request` — one event as an :class:`HttpCall`.
* :func:`parse_connect_answer` / :func:`parse_user_event_answer` — what the handler decided:
  for ``connect`` 204 (accept as is), 200 with ``{"userId", "groups", "roles",
  "subprotocol"}`` (accept with those), anything else refuses the client with that status and the
  body as the reason; for a user event, a 200 body with a text / JSON / binary content type is
  sent back to the client as a server message.
* ``ce-connectionState``: a handler may keep per-connection state (base64 of a JSON object) in
  this response header; the service sends it back on every later event of that connection.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlsplit

from .._text import printable
from .messages import BinaryData, Data, JsonData, TextData

__all__ = [
    "SYSTEM_EVENTS",
    "ConnectAnswer",
    "EventHandler",
    "HttpCall",
    "UserEventAnswer",
    "event_request",
    "origin_of",
    "parse_connect_answer",
    "parse_user_event_answer",
    "validation_passed",
    "validation_request",
]

#: The system events a handler may take.
SYSTEM_EVENTS = ("connect", "connected", "disconnected")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PLACEHOLDERS = ("hub", "event", "category")
_MAX_REASON = 200


@dataclass(frozen=True, slots=True)
class EventHandler:
    """Where a hub's events go (the settings of one event handler).

    ``url_template``: ``http(s)://host[:port]/path``, where ``{hub}``, ``{event}`` (the event
    name, e.g. ``connect`` or ``message``) and ``{category}`` (``system`` or ``user``) are
    replaced. ``user_events``: ``"*"`` (every user event), ``""`` (none), or event names
    separated by commas. ``system_events``: some of ``connect``, ``connected``,
    ``disconnected``.
    """

    url_template: str
    user_events: str = "*"
    system_events: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url_template)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"event handler URL {self.url_template!r} is not an http:// or "
                             "https:// address")
        for name in _PLACEHOLDER.findall(self.url_template):
            if name not in _PLACEHOLDERS:
                raise ValueError(f"event handler URL {self.url_template!r}: unknown placeholder "
                                 f"{{{name}}} (known: {{hub}}, {{event}}, {{category}})")
        unknown = set(self.system_events) - set(SYSTEM_EVENTS)
        if unknown:
            raise ValueError(f"unknown system events {sorted(unknown)} (known: "
                             f"{', '.join(SYSTEM_EVENTS)})")
        object.__setattr__(self, "system_events", frozenset(self.system_events))

    def takes_user_event(self, event: str) -> bool:
        pattern = self.user_events.strip()
        if pattern == "*":
            return True
        return event in {name.strip() for name in pattern.split(",") if name.strip()}

    def takes_system_event(self, event: str) -> bool:
        return event in self.system_events

    def url(self, hub: str, event: str, category: str) -> str:
        values = {"hub": hub, "event": event, "category": category}
        return _PLACEHOLDER.sub(lambda m: quote(values[m.group(1)], safe=""),
                                self.url_template)


@dataclass(frozen=True, slots=True)
class HttpCall:
    """An HTTP request the service makes to an event handler."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""


def origin_of(url: str) -> str:
    """``scheme://host:port`` of ``url``: abuse protection is checked once per origin."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def validation_request(url: str, request_origin: str) -> HttpCall:
    """The abuse-protection preflight: ``OPTIONS url`` with ``WebHook-Request-Origin``."""
    return HttpCall("OPTIONS", url, (("WebHook-Request-Origin", request_origin),
                                     ("ce-awpsversion", "1.0")))


def validation_passed(status: int, headers: Iterable[tuple[str, str]],
                      request_origin: str) -> bool:
    """Did the handler allow ``request_origin``? (``WebHook-Allowed-Origin``: ``*``, or a list
    of hosts that has ours; the header may repeat and may hold a comma-separated list.)"""
    if not 200 <= status < 300:
        return False
    allowed = [item.strip().lower() for name, value in headers
               if name.lower() == "webhook-allowed-origin" for item in value.split(",")]
    return "*" in allowed or request_origin.lower() in allowed


def _signature(keys: Sequence[str], connection_id: str) -> str:
    """``ce-signature``: ``sha256=`` HMAC of the connection id with each access key."""
    return ",".join(
        "sha256=" + hmac.new(key.encode("utf-8"), connection_id.encode("utf-8"),
                             hashlib.sha256).hexdigest()
        for key in keys)


def _states_header(states: Mapping[str, Any]) -> str:
    return base64.b64encode(json.dumps(dict(states), separators=(",", ":"))
                            .encode("utf-8")).decode("ascii")


def _body(data: Data) -> tuple[str, bytes]:
    if isinstance(data, TextData):
        return "text/plain; charset=utf-8", data.text.encode("utf-8")
    if isinstance(data, JsonData):
        return "application/json", json.dumps(data.value, separators=(",", ":"),
                                              ensure_ascii=False).encode("utf-8")
    assert isinstance(data, BinaryData)
    return "application/octet-stream", bytes(data.data)


def event_request(
    handler: EventHandler,
    *,
    hub: str,
    event: str,
    connection_id: str,
    user_id: str | None,
    keys: Sequence[str],
    request_origin: str,
    event_id: str,
    now: float,
    subprotocol: str | None = None,
    states: Mapping[str, Any] | None = None,
    data: Data | None = None,
    system: Mapping[str, Any] | None = None,
) -> HttpCall:
    """One event as a CloudEvents binary-mode ``POST``.

    A user event (``data`` given) is ``azure.webpubsub.user.{event}`` with the data as the body
    (``text/plain``, ``application/json`` or ``application/octet-stream``). A system event
    (``system``: its JSON body, e.g. the ``connect`` request's claims and query, or
    ``{"reason": ...}`` for ``disconnected``) is ``azure.webpubsub.sys.{event}``.
    """
    category = "user" if data is not None else "system"
    kind = f"azure.webpubsub.{'user' if data is not None else 'sys'}.{event}"
    if data is not None:
        content_type, body = _body(data)
    else:
        content_type = "application/json; charset=utf-8"
        body = json.dumps(dict(system or {}), separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8")
    when = datetime.fromtimestamp(now, timezone.utc).isoformat().replace("+00:00", "Z")
    headers = [
        ("Content-Type", content_type),
        ("WebHook-Request-Origin", request_origin),
        ("ce-specversion", "1.0"),
        ("ce-type", kind),
        ("ce-source", f"/hubs/{hub}/client/{connection_id}"),
        ("ce-id", event_id),
        ("ce-time", when),
        ("ce-awpsversion", "1.0"),
        ("ce-hub", hub),
        ("ce-connectionId", connection_id),
        ("ce-eventName", event),
        ("ce-signature", _signature(keys, connection_id)),
    ]
    if user_id:
        headers.append(("ce-userId", user_id))
    if subprotocol:
        headers.append(("ce-subprotocol", subprotocol))
    if states:
        headers.append(("ce-connectionState", _states_header(states)))
    return HttpCall("POST", handler.url(hub, event, category), tuple(headers), body)


def _header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    return next((value for key, value in headers if key.lower() == name), None)


def _states(headers: Iterable[tuple[str, str]]) -> dict[str, Any] | None:
    """The ``ce-connectionState`` a handler answered (None: unchanged; {} when unreadable)."""
    raw = _header(headers, "ce-connectionstate")
    if raw is None:
        return None
    try:
        value = json.loads(base64.b64decode(raw, validate=True))
    except (binascii.Error, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _reason(body: bytes, status: int) -> str:
    # A reason goes into an HTTP status line and a log line: no raw control characters.
    text = printable(body[:_MAX_REASON].decode("utf-8", "replace").strip(), _MAX_REASON)
    return text or f"the event handler answered {status}"


@dataclass(frozen=True, slots=True)
class ConnectAnswer:
    """The handler's decision on a ``connect`` event."""

    accepted: bool
    #: When refused: the status the client gets (the handler's 4xx, else 500) and why.
    status: int = 200
    reason: str = ""
    user_id: str | None = None
    groups: tuple[str, ...] | None = None
    roles: tuple[str, ...] | None = None
    subprotocol: str | None = None
    states: dict[str, Any] | None = None


def _strings(value: object, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{what} must be an array of strings")
    return tuple(value)


def parse_connect_answer(status: int, headers: Sequence[tuple[str, str]],
                         body: bytes) -> ConnectAnswer:
    """Read the handler's answer to ``connect``.

    204, or 200 with an empty body: accept unchanged. 200 with a JSON object: accept with its
    ``userId``, ``groups``, ``roles`` and ``subprotocol`` (each optional). Any other status
    refuses the client: 4xx as answered, anything else as 500; a 200 that is not such a JSON
    object is the handler's fault, so 500 as well.
    """
    states = _states(headers)
    if status == 204 or (status == 200 and not body.strip()):
        return ConnectAnswer(True, states=states)
    if status != 200:
        code = status if 400 <= status < 500 else 500
        return ConnectAnswer(False, code, _reason(body, status))
    try:
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise ValueError("the body is not a JSON object")
        user_id = doc.get("userId")
        if user_id is not None and not isinstance(user_id, str):
            raise ValueError("userId must be a string")
        subprotocol = doc.get("subprotocol")
        if subprotocol is not None and not isinstance(subprotocol, str):
            raise ValueError("subprotocol must be a string")
        return ConnectAnswer(True, user_id=user_id or None,
                             groups=_strings(doc.get("groups"), "groups"),
                             roles=_strings(doc.get("roles"), "roles"),
                             subprotocol=subprotocol or None, states=states)
    except ValueError as exc:
        return ConnectAnswer(False, 500, f"the event handler's connect answer is not valid: "
                                         f"{exc}")


@dataclass(frozen=True, slots=True)
class UserEventAnswer:
    """The handler's answer to a user event: data for the client (or None) and new states."""

    ok: bool
    data: Data | None = None
    states: dict[str, Any] | None = None
    reason: str = ""


def parse_user_event_answer(status: int, headers: Sequence[tuple[str, str]],
                            body: bytes) -> UserEventAnswer:
    """Read the handler's answer to a user event: a 2xx body is sent back to the client as a
    server message, typed by its ``Content-Type`` (``text/plain``, ``application/json``, else
    binary); other statuses are failures (logged; the client is not told)."""
    states = _states(headers)
    if not 200 <= status < 300:
        return UserEventAnswer(False, states=states, reason=_reason(body, status))
    if not body:
        return UserEventAnswer(True, states=states)
    content_type = (_header(headers, "content-type") or "").split(";")[0].strip().lower()
    data: Data
    if content_type == "text/plain":
        data = TextData(body.decode("utf-8", "replace"))
    elif content_type == "application/json":
        try:
            data = JsonData(json.loads(body))
        except ValueError:
            return UserEventAnswer(False, states=states,
                                   reason="the event handler answered invalid JSON")
    else:
        data = BinaryData(body)
    return UserEventAnswer(True, data, states)
