"""Web PubSub client access tokens: HS256 JWTs, made and checked with PyJWT (sans-IO).

A token is what the server SDKs' ``get_client_access_token`` makes with an access key:
header ``{"alg":"HS256","typ":"JWT"}``, signed with the UTF-8 bytes of the key *text*, and the
claims, in this order, ``aud`` (``http(s)://host[:port]/client/hubs/{hub}``, see
:func:`~hyco_proto.webpubsub.endpoints.client_audience`), ``iat``, ``exp``, then ``sub`` (the
user id), ``role`` (a list) and ``webpubsub.group`` (groups joined at connect time) when given.
For the same clock second the token is byte-identical to the Python SDK's.

PyJWT is optional (``pip install PyJWT``, the ``webpubsub`` extra). It checks the header,
algorithm and signature; the time claims are checked here against the caller's ``now`` (PyJWT
would read the wall clock), and the audience is compared as the official emulator does
(case-insensitively; a default port is the same as none).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from .._wallclock import utc_text
from ..errors import TokenError
from .endpoints import build_client_url, client_audience, validate_hub_name
from .permissions import Permissions, is_valid_group_name

__all__ = [
    "DEFAULT_LEEWAY",
    "DEFAULT_MAX_LIFETIME",
    "DEFAULT_TTL",
    "MAX_TOKEN_LENGTH",
    "ClientAccess",
    "ClientTokenClaims",
    "WebPubSubTokenError",
    "create_client_access",
    "create_client_token",
    "create_service_token",
    "verify_client_token",
]

#: Token lifetime in seconds when none is given (the SDKs' 60 minutes).
DEFAULT_TTL = 3600
#: Clock skew allowed on ``exp``, ``nbf`` and ``iat`` (the official emulator's 5 minutes).
DEFAULT_LEEWAY = 300.0
#: Tokens expiring further ahead than this (one year) are refused as absurd.
DEFAULT_MAX_LIFETIME = 366 * 86400.0
#: Longer tokens are refused before any parsing.
MAX_TOKEN_LENGTH = 16384

_INSTALL_HINT = "pip install PyJWT (hyco_proto's webpubsub extra)"
_PYJWT_REASONS = {
    "InvalidSubjectError": "malformed token: claim 'sub' (user id) must be a string",
    "InvalidJTIError": "malformed token: claim 'jti' must be a string",
}
_KNOWN_CLAIMS = frozenset(["aud", "iat", "exp", "nbf", "sub", "role", "webpubsub.group"])


class WebPubSubTokenError(TokenError):
    """A client access token was refused. ``status`` is the HTTP answer for the upgrade request
    (401; 400 for an invalid ``webpubsub.group`` claim); ``reason`` says why, never quoting the
    token."""


def _jwt() -> ModuleType:
    try:
        import jwt
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ImportError("Web PubSub access tokens need PyJWT: "
                          f"{_INSTALL_HINT}") from None
    return jwt


def _check_now(now: float) -> float:
    if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
        raise ValueError(f"now must be a finite number of seconds, not {now!r}")
    return now


def _strings(name: str, values: Iterable[str] | str) -> list[str]:
    if isinstance(values, str):
        raise TypeError(f"{name} must be a list of strings, not a single string")
    out = list(values)
    for v in out:
        if not isinstance(v, str):
            raise TypeError(f"{name} must contain strings, not {type(v).__name__}")
    return out


def create_client_token(endpoint: str, hub: str, key: str, *, user_id: str | None = None,
                        roles: Iterable[str] = (), groups: Iterable[str] = (),
                        ttl: int = DEFAULT_TTL, now: float) -> str:
    """A client access token for ``hub`` at ``endpoint``, valid ``ttl`` seconds from ``now``.

    ``key`` is the access key text. ``now`` is floored to whole seconds (``iat``). Empty
    ``roles`` / ``groups`` and a ``None`` user are left out of the claims, as the SDKs do.
    """
    if not isinstance(key, str) or not key:
        raise ValueError("key must be a non-empty string (the access key)")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
        raise ValueError(f"ttl must be a positive whole number of seconds, not {ttl!r}")
    if user_id is not None and (not isinstance(user_id, str) or not user_id):
        raise ValueError("user_id must be a non-empty string or None")
    role_list = _strings("roles", roles)
    group_list = _strings("groups", groups)
    for group in group_list:
        if not is_valid_group_name(group):
            raise ValueError(f"invalid group name {group!r}")
    iat = math.floor(_check_now(now))
    payload: dict[str, Any] = {"aud": client_audience(endpoint, hub), "iat": iat,
                               "exp": iat + ttl}
    if user_id is not None:
        payload["sub"] = user_id
    if role_list:
        payload["role"] = role_list
    if group_list:
        payload["webpubsub.group"] = group_list
    token: str = _jwt().encode(payload, key, algorithm="HS256")
    return token


def create_service_token(url: str, key: str, *, ttl: int = DEFAULT_TTL, now: float) -> str:
    """A bearer token for one REST API request to ``url`` (its full URL, query included), as the
    server SDKs sign it: HS256 with the access key, ``aud`` = ``url``, ``iat`` and ``exp``."""
    if not isinstance(key, str) or not key:
        raise ValueError("key must be a non-empty string (the access key)")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
        raise ValueError(f"ttl must be a positive whole number of seconds, not {ttl!r}")
    iat = math.floor(_check_now(now))
    token: str = _jwt().encode({"aud": url, "iat": iat, "exp": iat + ttl}, key,
                               algorithm="HS256")
    return token


@dataclass(frozen=True, slots=True)
class ClientAccess:
    """What the SDKs' ``get_client_access_token`` returns: ``base_url``, ``token`` and ``url``
    (``base_url?access_token=token``)."""

    base_url: str
    token: str = field(repr=False)
    url: str = field(repr=False)


def create_client_access(endpoint: str, hub: str, key: str, *, user_id: str | None = None,
                         roles: Iterable[str] = (), groups: Iterable[str] = (),
                         ttl: int = DEFAULT_TTL, now: float) -> ClientAccess:
    """:func:`create_client_token` plus the client URL that carries it."""
    token = create_client_token(endpoint, hub, key, user_id=user_id, roles=roles,
                                groups=groups, ttl=ttl, now=now)
    return ClientAccess(build_client_url(endpoint, hub),
                        token, build_client_url(endpoint, hub, access_token=token))


@dataclass(frozen=True, slots=True)
class ClientTokenClaims:
    """The claims of a verified client access token."""

    audience: str
    user_id: str | None
    roles: tuple[str, ...]
    #: Groups the connection joins at connect time (no permission needed).
    groups: tuple[str, ...]
    expires_at: float
    issued_at: float | None
    not_before: float | None
    #: Every other claim, as sent (forwarded as ``claims`` in the upstream ``connect`` event).
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def permissions(self) -> Permissions:
        """:meth:`Permissions.from_roles` of :attr:`roles`."""
        return Permissions.from_roles(self.roles)


def _audience_key(url: str) -> tuple[str, str, int | None, str] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        return None
    if port == {"http": 80, "https": 443}[scheme]:
        port = None
    return scheme, parts.hostname.lower(), port, parts.path.rstrip("/").lower()


def _shorten(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _time_claim(claims: Mapping[str, Any], name: str) -> float | None:
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise WebPubSubTokenError(f"malformed token: claim {name!r} must be a number of "
                                  f"seconds, not {_shorten(value, 40)}")
    return value


def _string_list(claims: Mapping[str, Any], name: str) -> tuple[str, ...] | None:
    value = claims.get(name)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def verify_client_token(token: str, *, key: str, endpoint: str, hub: str, now: float,
                        leeway: float = DEFAULT_LEEWAY,
                        max_lifetime: float | None = DEFAULT_MAX_LIFETIME) -> ClientTokenClaims:
    """Check a client access token for ``hub`` at ``endpoint``; return its claims.

    PyJWT checks the header, that the algorithm is HS256 and the signature (``key`` is the
    access key text). Then, with ``now`` and ``leeway`` seconds of clock skew:

    - ``exp`` is required and must be a number with ``now < exp + leeway``; ``nbf`` and ``iat``,
      when present, must not be later than ``now + leeway``; ``exp`` must be after ``iat``;
    - ``exp`` further than ``max_lifetime`` seconds after ``now`` is absurd (``None``: no limit);
    - ``aud`` is required and must be :func:`client_audience` ``(endpoint, hub)``, compared
      case-insensitively, a default port counting as none;
    - ``sub`` must be a string; ``role`` and ``webpubsub.group`` a string or a list of strings;
      every group must be a valid group name (status 400 otherwise, as in the emulator).

    Raises :class:`WebPubSubTokenError` (status 401 unless said otherwise).
    """
    jwt = _jwt()
    _check_now(now)
    validate_hub_name(hub)
    if not isinstance(key, str) or not key:
        raise ValueError("key must be a non-empty string (the access key)")
    if not isinstance(token, str):
        raise WebPubSubTokenError(f"token must be a str, not {type(token).__name__}")
    if not token:
        raise WebPubSubTokenError("no access token")
    if len(token) > MAX_TOKEN_LENGTH:
        raise WebPubSubTokenError(f"token is too long ({len(token)} characters, at most "
                                  f"{MAX_TOKEN_LENGTH})")
    if not token.isascii():  # a JWT is base64url and dots; PyJWT cannot encode lone surrogates
        raise WebPubSubTokenError("malformed token: not a JSON Web Token (header.payload."
                                  "signature in base64url)")
    expected = client_audience(endpoint, hub)
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=["HS256"],
            options={"require": ["exp", "aud"], "verify_exp": False, "verify_nbf": False,
                     "verify_iat": False, "verify_aud": False, "verify_iss": False})
    except jwt.InvalidSignatureError:
        raise WebPubSubTokenError("bad signature: the token was not signed with this access "
                                  "key") from None
    except jwt.InvalidAlgorithmError:
        raise WebPubSubTokenError("token algorithm is not allowed (only HS256)") from None
    except jwt.MissingRequiredClaimError as exc:
        raise WebPubSubTokenError(f"token has no {exc.claim!r} claim") from None
    except jwt.DecodeError:
        raise WebPubSubTokenError("malformed token: not a JSON Web Token (header.payload."
                                  "signature, base64url-encoded JSON)") from None
    except jwt.InvalidTokenError as exc:
        # PyJWT's other claim-type checks (recent versions check sub and jti).
        reason = _PYJWT_REASONS.get(type(exc).__name__, f"invalid token ({type(exc).__name__})")
        raise WebPubSubTokenError(reason) from None

    exp = _time_claim(claims, "exp")
    nbf = _time_claim(claims, "nbf")
    iat = _time_claim(claims, "iat")
    assert exp is not None  # required above
    if now >= exp + leeway:
        raise WebPubSubTokenError(f"token expired at {utc_text(exp)} (now {utc_text(now)})")
    if nbf is not None and nbf > now + leeway:
        raise WebPubSubTokenError(f"token is not valid before {utc_text(nbf)} "
                                  f"(now {utc_text(now)})")
    if iat is not None and iat > now + leeway:
        raise WebPubSubTokenError(f"token is issued in the future, at {utc_text(iat)} "
                                  f"(now {utc_text(now)})")
    if iat is not None and exp <= iat:
        raise WebPubSubTokenError(f"token expires ({exp:.0f}) before it is issued ({iat:.0f})")
    if max_lifetime is not None and exp - now > max_lifetime:
        raise WebPubSubTokenError(f"token expiry {exp:.0f} is absurdly far in the future (more "
                                  f"than {max_lifetime:.0f} s after now {math.floor(now)})")

    aud = claims["aud"]
    auds = [aud] if isinstance(aud, str) else aud
    if not isinstance(auds, list) or not all(isinstance(a, str) for a in auds):
        raise WebPubSubTokenError("malformed token: claim 'aud' must be a string")
    want = _audience_key(expected)
    match = next((a for a in auds if _audience_key(a) == want), None)
    if match is None:
        raise WebPubSubTokenError(f"failed to validate audience: the token is for "
                                  f"{_shorten(aud)}, expected {expected!r}")

    sub = claims.get("sub")
    if sub is not None and not isinstance(sub, str):
        raise WebPubSubTokenError("malformed token: claim 'sub' (user id) must be a string")
    roles = _string_list(claims, "role")
    if roles is None:
        raise WebPubSubTokenError("malformed token: claim 'role' must be a string or a list of "
                                  "strings")
    groups = _string_list(claims, "webpubsub.group")
    if groups is None or not all(is_valid_group_name(g) for g in groups):
        raise WebPubSubTokenError("invalid 'webpubsub.group' claim: expected group names of 1 "
                                  "to 1024 characters, not only whitespace", status=400)
    extra = {k: v for k, v in claims.items() if k not in _KNOWN_CLAIMS}
    return ClientTokenClaims(match, sub or None, roles, groups, exp, iat, nbf, extra)
