"""The Web PubSub data-plane REST API (``/api/hubs/{hub}/...``) over :class:`Hub` (sans-IO).

:class:`RestApi` takes one whole request (:class:`RestRequest`: method, target, the
``scheme://host`` it was sent to, ``Authorization``, ``Content-Type`` and body) and returns a
:class:`RestResult`: the response and the hub actions to deliver. The paths, parameters and
answers are those ``azure-messaging-webpubsubservice`` 1.3 and ``@azure/web-pubsub`` 1.2 use
(api-version 2024-12-01; 2021-10-01 to 2024-12-01 are accepted, a missing one is the latest).

Auth: ``Authorization: Bearer`` HS256 JWT signed with the access key, ``exp`` required, and
``aud`` the request URL (the SDKs put the full URL with its query; the URL without its query is
accepted too, as the official emulator does). ``GET|HEAD /api/health`` needs no token.

Errors are JSON ``{"code", "message"}`` (the SDKs' ``ErrorDetail``): 400 bad names or
parameters, 401 auth, 404 unknown path, 405 wrong method (with ``Allow``), 413 body over 1 MiB,
415 unsupported ``Content-Type``, 501 what this emulator does not do (MQTT / Socket.IO tokens).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from .._wallclock import utc_text
from .endpoints import validate_hub_name
from .hub import Hub, HubAction
from .messages import BinaryData, Data, JsonData, TextData
from .odata import FilterSubject, parse_filter
from .permissions import PERMISSION_NAMES, is_valid_group_name
from .tokens import DEFAULT_LEEWAY, create_client_token

__all__ = ["API_VERSIONS", "LATEST_API_VERSION", "MAX_BODY", "RestApi", "RestRequest",
           "RestResponse", "RestResult", "is_rest_path"]

#: The api-versions of the data-plane API that are accepted.
API_VERSIONS = ("2021-10-01", "2022-11-01", "2023-07-01", "2024-01-01", "2024-12-01")
LATEST_API_VERSION = API_VERSIONS[-1]
#: Largest request body (a REST send is one message; the client frame limit is 1 MiB too).
MAX_BODY = 1024 * 1024
_MAX_USER_ID = 1024
_MAX_PAGE = 200
_CLIENT_TYPES = {"default": None, "mqtt": "/clients/mqtt/hubs/",
                 "socketio": "/clients/socketio/hubs/"}


def is_rest_path(path: str) -> bool:
    """Whether ``path`` belongs to the REST API (everything under ``/api``)."""
    lower = path.lower()
    return lower == "/api" or lower.startswith("/api/")


@dataclass(frozen=True, slots=True)
class RestRequest:
    """One whole request; ``base`` is ``http(s)://host[:port]`` as the client addressed it."""

    method: str
    target: str
    base: str
    authorization: str | None = None
    content_type: str | None = None
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class RestResponse:
    """What to answer: status, headers (``Content-Type``, ``Allow``) and body."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class RestResult:
    """The response and what ``hub`` must deliver (frames and closes) for it."""

    response: RestResponse
    hub: Hub | None = None
    actions: list[HubAction] = field(default_factory=list)


class RestError(Exception):
    """An error answer: ``status``, ``code`` (the ``ErrorDetail`` code) and ``message``."""

    def __init__(self, status: int, code: str, message: str,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def _json_response(status: int, value: object,
                   headers: tuple[tuple[str, str], ...] = ()) -> RestResponse:
    body = json.dumps(value, separators=(",", ":")).encode("utf-8")
    return RestResponse(status, body, (("Content-Type", "application/json"), *headers))


def _bad(message: str) -> RestError:
    return RestError(400, "BadRequest", message)


# Path patterns after /api/hubs/{hub}: literals (compared case-insensitively) or {names}.
_ROUTES: tuple[tuple[tuple[str, ...], dict[str, str]], ...] = (
    ((":generateToken",), {"POST": "generate_token"}),
    ((":send",), {"POST": "send_to_all"}),
    ((":closeConnections",), {"POST": "close_all"}),
    ((":addToGroups",), {"POST": "add_to_groups"}),
    ((":removeFromGroups",), {"POST": "remove_from_groups"}),
    (("connections", "{connection}"), {"DELETE": "close_connection",
                                       "HEAD": "connection_exists"}),
    (("connections", "{connection}", ":send"), {"POST": "send_to_connection"}),
    (("connections", "{connection}", "groups"), {"DELETE": "leave_all_groups"}),
    (("groups", "{group}"), {"HEAD": "group_exists"}),
    (("groups", "{group}", ":send"), {"POST": "send_to_group"}),
    (("groups", "{group}", ":closeConnections"), {"POST": "close_group"}),
    (("groups", "{group}", "connections"), {"GET": "list_connections"}),
    (("groups", "{group}", "connections", "{connection}"), {"PUT": "add_connection",
                                                            "DELETE": "remove_connection"}),
    (("permissions", "{permission}", "connections", "{connection}"),
     {"PUT": "grant_permission", "DELETE": "revoke_permission", "HEAD": "check_permission"}),
    (("users", "{user}"), {"HEAD": "user_exists"}),
    (("users", "{user}", ":send"), {"POST": "send_to_user"}),
    (("users", "{user}", ":closeConnections"), {"POST": "close_user"}),
    (("users", "{user}", "groups"), {"DELETE": "remove_user_from_all"}),
    (("users", "{user}", "groups", "{group}"), {"PUT": "add_user", "DELETE": "remove_user"}),
)


def _route(segments: list[str]) -> tuple[dict[str, str], dict[str, str]] | None:
    """The methods of the route ``segments`` match, and its path parameters."""
    for pattern, methods in _ROUTES:
        if len(pattern) != len(segments):
            continue
        params: dict[str, str] = {}
        for want, got in zip(pattern, segments, strict=True):
            if want.startswith("{"):
                params[want[1:-1]] = got
            elif want.lower() != got.lower():
                break
        else:
            return methods, params
    return None


@dataclass(slots=True)
class _Call:
    """One routed request: the hub, path parameters and query parameters (names lower-cased)."""

    request: RestRequest
    hub_name: str
    hub: Hub
    path: dict[str, str]
    query: dict[str, list[str]]
    path_only: str
    now: float

    def one(self, name: str) -> str | None:
        values = self.query.get(name.lower())
        return values[-1] if values else None

    def many(self, name: str) -> list[str]:
        return [v for v in self.query.get(name.lower(), []) if v != ""]

    def group(self) -> str:
        group = self.path["group"]
        if not is_valid_group_name(group):
            raise _bad(f"Invalid group name {group!r}: use 1 to 1024 characters, not only "
                       "whitespace.")
        return group

    def user(self) -> str:
        user = self.path["user"]
        if not user or len(user) > _MAX_USER_ID:
            raise _bad("Invalid user id: use 1 to 1024 characters.")
        return user

    def connection(self) -> str:
        cid = self.path["connection"]
        if not cid.strip():
            raise _bad("Invalid connection id: it is empty.")
        return cid

    def int_param(self, name: str, default: int | None, low: int, high: int) -> int | None:
        text = self.one(name)
        if text is None or text == "":
            return default
        try:
            value = int(text)
        except ValueError:
            raise _bad(f"Query parameter {name}={text!r} is not a whole number.") from None
        if not low <= value <= high:
            raise _bad(f"Query parameter {name}={value} is out of range ({low} to {high}).")
        return value


class RestApi:
    """The REST API of the hubs ``hubs(name)`` returns, tokens signed with ``access_key``."""

    def __init__(self, hubs: Callable[[str], Hub], access_key: str, *,
                 leeway: float = DEFAULT_LEEWAY) -> None:
        self.hubs = hubs
        self.access_key = access_key
        self.leeway = leeway

    def handle(self, request: RestRequest, now: float) -> RestResult:
        """Answer ``request`` (see the module docstring); never raises for bad input."""
        try:
            return self._handle(request, now)
        except RestError as exc:
            return RestResult(_json_response(exc.status, {"code": exc.code,
                                                           "message": exc.message}, exc.headers))

    def _handle(self, request: RestRequest, now: float) -> RestResult:
        # An origin-form target (RFC 9112 §3.2.1) split by hand: urlsplit reads "//x]/" as an
        # authority and raises on it.
        path, _, raw_query = request.target.partition("#")[0].partition("?")
        method = request.method.upper()
        if path.lower().rstrip("/") == "/api/health":
            if method not in ("GET", "HEAD"):
                raise RestError(405, "MethodNotAllowed", "/api/health answers GET and HEAD.",
                                (("Allow", "GET, HEAD"),))
            return RestResult(RestResponse(200))
        raw = path.split("/")  # ["", "api", "hubs", hub, ...]
        if len(raw) < 5 or raw[1].lower() != "api" or raw[2].lower() != "hubs":
            raise RestError(404, "NotFound", f"No REST operation at {path!r}: the paths are "
                                             "/api/hubs/{hub}/... and /api/health.")
        segments = [unquote(s) for s in raw[4:]]
        routed = _route(segments)
        if routed is None:
            raise RestError(404, "NotFound", f"No REST operation at {path!r} (see the Web "
                                             "PubSub data-plane REST API for the paths).")
        methods, params = routed
        op = methods.get(method)
        if op is None:
            allow = ", ".join(methods)
            raise RestError(405, "MethodNotAllowed", f"{path} answers {allow}, not {method}.",
                            (("Allow", allow),))
        self._authorize(request, now)
        query: dict[str, list[str]] = {}
        for key, value in parse_qsl(raw_query, keep_blank_values=True):
            query.setdefault(key.lower(), []).append(value)
        version = (query.get("api-version") or [LATEST_API_VERSION])[-1]
        if version not in API_VERSIONS:
            raise _bad(f"Unsupported api-version {version!r}: use one of "
                       f"{', '.join(API_VERSIONS)} (or leave it out for the latest).")
        hub_name = unquote(raw[3])
        try:
            validate_hub_name(hub_name)
        except ValueError as exc:
            raise _bad(f"{exc}.") from None
        call = _Call(request, hub_name, self.hubs(hub_name), params, query, path, now)
        handler: Callable[[_Call], RestResult] = getattr(self, f"_op_{op}")
        return handler(call)

    # -- auth ---------------------------------------------------------------------------------

    def _authorize(self, request: RestRequest, now: float) -> None:
        header = request.authorization or ""
        if header[:7].lower() != "bearer " or not header[7:].strip():
            raise RestError(401, "Unauthorized", "No 'Authorization: Bearer <token>' header: "
                            "sign an HS256 JWT with the access key (aud = the request URL, "
                            "exp required), as the server SDKs do with a connection string.")
        token = header[7:].strip()
        try:
            import jwt  # PyJWT: the optional 'webpubsub' extra, as for client tokens
        except ImportError:
            raise RestError(500, "InternalServerError", "The REST API needs PyJWT: pip "
                            "install PyJWT (hyco_proto's webpubsub extra).") from None

        try:
            claims: dict[str, Any] = jwt.decode(
                token, self.access_key, algorithms=["HS256"],
                options={"require": ["exp", "aud"], "verify_exp": False, "verify_nbf": False,
                         "verify_iat": False, "verify_aud": False, "verify_iss": False})
        except jwt.InvalidSignatureError:
            raise _unauthorized("the token is not signed with this service's access key") \
                from None
        except jwt.MissingRequiredClaimError as exc:
            raise _unauthorized(f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidTokenError as exc:
            raise _unauthorized(f"the token is not a valid HS256 JWT "
                                f"({type(exc).__name__})") from None
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
            raise _unauthorized("the token's 'exp' is not a number")
        if now >= exp + self.leeway:
            raise _unauthorized(f"the token expired at {utc_text(exp)} (now {utc_text(now)})")
        nbf = claims.get("nbf")
        if isinstance(nbf, (int, float)) and not isinstance(nbf, bool) \
                and nbf > now + self.leeway:
            raise _unauthorized(f"the token is not valid before {utc_text(nbf)} "
                                f"(now {utc_text(now)})")
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud
        url = request.base + request.target
        if not isinstance(auds, list) or not any(
                isinstance(a, str) and _audience_matches(a, url) for a in auds):
            raise _unauthorized(f"the token's audience {str(aud)[:200]!r} is not this "
                                f"request's URL {url[:200]!r}")

    # -- token ------------------------------------------------------------------------------

    def _op_generate_token(self, call: _Call) -> RestResult:
        kind = (call.one("clientType") or "Default").lower()
        if kind not in _CLIENT_TYPES:
            raise _bad(f"Unknown clientType {call.one('clientType')!r}: use Default, MQTT or "
                       "SocketIO.")
        if _CLIENT_TYPES[kind] is not None:
            raise RestError(501, "NotImplemented", f"clientType {call.one('clientType')} is "
                            "not served by this emulator: use Default (WebSocket clients).")
        minutes = call.int_param("minutesToExpire", 60, 1, 366 * 24 * 60)
        assert minutes is not None
        groups = call.many("group")
        for group in groups:
            if not is_valid_group_name(group):
                raise _bad(f"Invalid group name {group!r} in 'group'.")
        user = call.one("userId") or None
        token = create_client_token(call.request.base, call.hub_name, self.access_key,
                                    user_id=user, roles=call.many("role"), groups=groups,
                                    ttl=minutes * 60, now=call.now)
        return RestResult(_json_response(200, {"token": token}))

    # -- sends ------------------------------------------------------------------------------

    def _op_send_to_all(self, call: _Call) -> RestResult:
        data = _message(call)
        skip = set(call.many("excluded")) | _filtered_out(call, call.hub.connection_ids())
        return _accepted(call, call.hub.send_to_all(data, excluded=skip))

    def _op_send_to_group(self, call: _Call) -> RestResult:
        group = call.group()
        data = _message(call)
        members = [cid for cid, _ in call.hub.group_members(group)]
        skip = set(call.many("excluded")) | _filtered_out(call, members)
        return _accepted(call, call.hub.send_to_group(group, data, excluded=skip))

    def _op_send_to_user(self, call: _Call) -> RestResult:
        user = call.user()
        data = _message(call)
        ids = call.hub.user_connection_ids(user)
        skip = _filtered_out(call, ids)
        if not skip:
            return _accepted(call, call.hub.send_to_user(user, data))
        actions: list[HubAction] = []
        for cid in ids:
            if cid not in skip:
                actions.extend(call.hub.send_to_connection(cid, data))
        return _accepted(call, actions)

    def _op_send_to_connection(self, call: _Call) -> RestResult:
        cid = call.connection()
        data = _message(call)
        return _accepted(call, call.hub.send_to_connection(cid, data))

    # -- closes -----------------------------------------------------------------------------

    def _op_close_all(self, call: _Call) -> RestResult:
        return _done(call, call.hub.close_all_connections(
            call.one("reason") or "", excluded=call.many("excluded")))

    def _op_close_group(self, call: _Call) -> RestResult:
        return _done(call, call.hub.close_group_connections(
            call.group(), call.one("reason") or "", excluded=call.many("excluded")))

    def _op_close_user(self, call: _Call) -> RestResult:
        return _done(call, call.hub.close_user_connections(
            call.user(), call.one("reason") or "", excluded=call.many("excluded")))

    def _op_close_connection(self, call: _Call) -> RestResult:
        return _done(call, call.hub.close_connection(call.connection(),
                                                     call.one("reason") or ""))

    # -- existence --------------------------------------------------------------------------

    def _op_connection_exists(self, call: _Call) -> RestResult:
        return _exists(call.hub.connection_exists(call.connection()))

    def _op_group_exists(self, call: _Call) -> RestResult:
        return _exists(call.hub.group_exists(call.group()))

    def _op_user_exists(self, call: _Call) -> RestResult:
        return _exists(call.hub.user_exists(call.user()))

    # -- groups -----------------------------------------------------------------------------

    def _op_add_connection(self, call: _Call) -> RestResult:
        group, cid = call.group(), call.connection()
        if not call.hub.add_connection_to_group(group, cid):
            raise RestError(404, "NotFound", f"Connection {cid!r} does not exist in hub "
                                             f"{call.hub_name!r}.")
        return RestResult(RestResponse(200))

    def _op_remove_connection(self, call: _Call) -> RestResult:
        call.hub.remove_connection_from_group(call.group(), call.connection())
        return _done(call, [])

    def _op_leave_all_groups(self, call: _Call) -> RestResult:
        cid = call.connection()
        for group in call.hub.connection_groups(cid):
            call.hub.remove_connection_from_group(group, cid)
        return _done(call, [])

    def _op_add_user(self, call: _Call) -> RestResult:
        call.hub.add_user_to_group(call.group(), call.user())
        return RestResult(RestResponse(200))

    def _op_remove_user(self, call: _Call) -> RestResult:
        call.hub.remove_user_from_group(call.group(), call.user())
        return _done(call, [])

    def _op_remove_user_from_all(self, call: _Call) -> RestResult:
        call.hub.remove_user_from_all_groups(call.user())
        return _done(call, [])

    def _op_add_to_groups(self, call: _Call) -> RestResult:
        groups, ids = _groups_and_targets(call)
        for cid in ids:
            for group in groups:
                call.hub.add_connection_to_group(group, cid)
        return RestResult(RestResponse(200))

    def _op_remove_from_groups(self, call: _Call) -> RestResult:
        groups, ids = _groups_and_targets(call)
        for cid in ids:
            for group in groups:
                call.hub.remove_connection_from_group(group, cid)
        return RestResult(RestResponse(200))

    def _op_list_connections(self, call: _Call) -> RestResult:
        group = call.group()
        page = call.int_param("maxpagesize", _MAX_PAGE, 1, _MAX_PAGE)
        top = call.int_param("top", None, 1, 2**31 - 1)
        assert page is not None
        members = call.hub.group_members(group)
        after = _decode_continuation(call.one("continuationToken"))
        if after is not None:
            members = [m for m in members if m[0] > after]
        size = page if top is None else min(page, top)
        value = [{"connectionId": cid, "userId": user} for cid, user in members[:size]]
        body: dict[str, object] = {"value": value}
        left = None if top is None else top - len(value)
        if len(members) > size and (left is None or left > 0):
            # Unpadded base64url: the SDKs re-quote nextLink's query values, '=' would suffer.
            token = base64.urlsafe_b64encode(
                members[size - 1][0].encode("utf-8")).decode().rstrip("=")
            link = (f"{call.request.base}{quote(call.path_only)}?maxpagesize={page}"
                    f"&continuationToken={token}")
            body["nextLink"] = link + (f"&top={left}" if left is not None else "")
        return RestResult(_json_response(200, body))

    # -- permissions ------------------------------------------------------------------------

    def _permission(self, call: _Call) -> tuple[str, str, str | None]:
        name = call.path["permission"]
        permission = next((p for p in PERMISSION_NAMES if p.lower() == name.lower()), None)
        if permission is None:
            raise _bad(f"Unknown permission {name!r}: use sendToGroup or joinLeaveGroup.")
        target = call.one("targetName") or None
        if target is not None and not is_valid_group_name(target):
            raise _bad(f"Invalid targetName {target!r}: it is a group name.")
        return permission, call.connection(), target

    def _op_grant_permission(self, call: _Call) -> RestResult:
        permission, cid, target = self._permission(call)
        if not call.hub.grant_permission(cid, permission, target):
            raise RestError(404, "NotFound", f"Connection {cid!r} does not exist in hub "
                                             f"{call.hub_name!r}.")
        return RestResult(RestResponse(200))

    def _op_revoke_permission(self, call: _Call) -> RestResult:
        permission, cid, target = self._permission(call)
        call.hub.revoke_permission(cid, permission, target)
        return _done(call, [])

    def _op_check_permission(self, call: _Call) -> RestResult:
        permission, cid, target = self._permission(call)
        return _exists(call.hub.has_permission(cid, permission, target))


def _unauthorized(why: str) -> RestError:
    return RestError(401, "Unauthorized", f"Unauthorized: {why}.")


def _audience_matches(aud: str, url: str) -> bool:
    """``aud`` names ``url``: same scheme, host, port and path (case-insensitive, a default port
    counting as none), and either the same query or none (the official emulator's leniency)."""
    def key(text: str) -> tuple[str, str, int | None, str] | None:
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError:
            return None
        scheme = parts.scheme.lower()
        if port == {"http": 80, "https": 443}.get(scheme):
            port = None
        return (scheme, (parts.hostname or "").lower(), port,
                unquote(parts.path).rstrip("/").lower())

    want = key(url)
    if want is None or key(aud) != want:
        return False
    query = urlsplit(aud).query
    return query == "" or query == urlsplit(url).query


def _message(call: _Call) -> Data:
    """The body as message data, by ``Content-Type`` (reference §2.4)."""
    call.int_param("messageTtlSeconds", None, 0, 300)  # checked, then moot: nothing is queued
    mime = (call.request.content_type or "").split(";", 1)[0].strip().lower()
    body = call.request.body
    if mime == "text/plain":
        try:
            return TextData(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise _bad("The text/plain body is not valid UTF-8.") from None
    if mime == "application/json":
        try:
            return JsonData(json.loads(body.decode("utf-8")))
        except (UnicodeDecodeError, ValueError):
            raise _bad("The application/json body is not valid JSON.") from None
    if mime == "application/octet-stream":
        return BinaryData(bytes(body))
    raise RestError(415, "UnsupportedMediaType",
                    f"Content-Type {call.request.content_type!r} is not supported: use "
                    "text/plain, application/json or application/octet-stream.")


def _compiled_filter(call: _Call, text: str | None) -> Callable[[FilterSubject], bool] | None:
    if text is None or not text.strip():
        return None
    try:
        return parse_filter(text)
    except ValueError as exc:
        raise _bad(f"Unsupported or malformed filter: {exc}.") from None


def _filtered_out(call: _Call, ids: list[str]) -> set[str]:
    """The connections of ``ids`` the request's ``filter`` excludes (none without one)."""
    predicate = _compiled_filter(call, call.one("filter"))
    if predicate is None:
        return set()
    hub = call.hub
    return {cid for cid in ids if not predicate(
        FilterSubject(cid, hub.connection_user(cid), hub.connection_groups(cid)))}


def _groups_and_targets(call: _Call) -> tuple[list[str], list[str]]:
    """``{"groups": [...], "filter": "..."}`` of ``:addToGroups`` / ``:removeFromGroups``: the
    groups and the connections the filter selects (every connection without one)."""
    try:
        doc = json.loads(call.request.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _bad('The body must be JSON: {"groups": ["g1"], "filter": "..."}.') from None
    groups = doc.get("groups") if isinstance(doc, dict) else None
    if not isinstance(groups, list) or not all(is_valid_group_name(g) for g in groups):
        raise _bad('"groups" must be a list of group names (1 to 1024 characters).')
    text = doc.get("filter")
    if text is not None and not isinstance(text, str):
        raise _bad('"filter" must be a string.')
    predicate = _compiled_filter(call, text)
    hub = call.hub
    ids = [cid for cid in hub.connection_ids() if predicate is None or predicate(
        FilterSubject(cid, hub.connection_user(cid), hub.connection_groups(cid)))]
    return groups, ids


def _decode_continuation(token: str | None) -> str | None:
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        return base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        raise _bad("Invalid continuationToken: pass the one from nextLink.") from None


def _accepted(call: _Call, actions: list[HubAction]) -> RestResult:
    return RestResult(RestResponse(202), call.hub, actions)


def _done(call: _Call, actions: list[HubAction]) -> RestResult:
    return RestResult(RestResponse(204), call.hub, actions)


def _exists(found: bool) -> RestResult:
    return RestResult(RestResponse(200 if found else 404))
