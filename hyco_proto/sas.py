"""Shared Access Signature tokens: create, append, parse, verify; and a renewing token source.

Tokens made here are byte-identical to Microsoft's ``hyco-ws`` ``createRelayToken`` for the same
inputs and clock (hybrid-connections-wire §2.1-§2.3), including its odd resource normalisation
(legacy Node ``url.parse`` / ``url.format``: the port survives, the first ``$hc/`` is removed).
Verification follows what the relay service accepts: the HMAC covers the raw ``sr`` as received
(§2.2), and the resource is matched as a segment prefix of the target path (§2.3).

Nothing here reads the clock except through :mod:`hyco_proto._wallclock`, and only when a
user-facing helper gets no explicit ``now``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import quote, unquote, unquote_plus, urlsplit

from . import _wallclock
from .errors import TokenError

__all__ = [
    "DEFAULT_EXPIRATION_SECONDS",
    "MAX_EXPIRY",
    "SAS_PREFIX",
    "SasToken",
    "TokenSource",
    "append_relay_token",
    "create_relay_token",
    "encode_uri_component",
    "normalize_token_resource",
    "parse_token",
    "token_expiry",
    "verify_token",
]

#: Default token lifetime, as in hyco-ws and .NET (hybrid-connections-wire §2.6).
DEFAULT_EXPIRATION_SECONDS = 3600
#: Scheme word of a SAS token, followed by exactly one space (§2.1).
SAS_PREFIX = "SharedAccessSignature "


# --------------------------------------------------------------------------------------------
# JavaScript string helpers
# --------------------------------------------------------------------------------------------

def encode_uri_component(text: str) -> str:
    """JavaScript ``encodeURIComponent``: UTF-8, upper-case hex, ``A-Za-z0-9-_.!~*'()`` kept.

    Raises ``ValueError`` for lone surrogates, where JavaScript throws ``URIError``.
    """
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"cannot percent-encode {text!r}: lone surrogate") from exc
    return quote(raw, safe="!*'()")


# --------------------------------------------------------------------------------------------
# Emulation of Node's legacy url.parse / url.format, the subset hyco-ws relies on
# --------------------------------------------------------------------------------------------

# JavaScript's \s class (ECMAScript WhiteSpace + LineTerminator).
_PROTOCOL_RE = re.compile(r"[a-z0-9.+\-]+:", re.IGNORECASE)
_PORT_RE = re.compile(r":[0-9]*\Z")
_SLASHED_PROTOCOLS = frozenset(
    ["http", "http:", "https", "https:", "ftp", "ftp:", "gopher", "gopher:",
     "file", "file:", "ws", "ws:", "wss", "wss:"])
_HOSTLESS_PROTOCOLS = frozenset(["javascript", "javascript:"])
# Characters that end the host part without being host-ending (RFC 2396 "never allowed").
_NON_HOST_CHARS = frozenset(" \"%';<>\\^`{|}")
_FORBIDDEN_HOST_CHARS = frozenset("\0\t\n\r #%/:<>?@[\\]^|")
_FORBIDDEN_HOST_CHARS_IPV6 = frozenset("\0\t\n\r #%/<>?@\\^|")
# url.parse escapes these in the path/query/fragment, even if the caller did not.
_AUTO_ESCAPE = {
    "\t": "%09", "\n": "%0A", "\r": "%0D", " ": "%20", '"': "%22", "'": "%27",
    "<": "%3C", ">": "%3E", "\\": "%5C", "^": "%5E", "`": "%60", "{": "%7B",
    "|": "%7C", "}": "%7D",
}
_AUTO_ESCAPE_RE = re.compile("[" + re.escape("".join(_AUTO_ESCAPE)) + "]")
# Full stops that UTS #46 maps to "." before IDNA encoding.
_IDEOGRAPHIC_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
# Characters where IDNA 2003 (Python's codec) and Node's non-transitional UTS #46 disagree.
_IDNA_DEVIATIONS = frozenset("\u00df\u03c2\u200c\u200d")


def _is_js_whitespace_for_trim(ch: str) -> bool:
    # url.parse trims code units < 33, U+00A0 and U+FEFF from both ends.
    return ord(ch) < 33 or ch in ("\u00a0", "\ufeff")


@dataclass(frozen=True, slots=True)
class _NodeUrl:
    protocol: str           # lower-cased, with the trailing ":"
    slashes: bool
    host: str               # hostname (lower-cased, punycode) + ":port" if a port was written
    hostname: str
    pathname: str | None
    search: str | None
    hash: str | None


def _to_ascii_host(hostname: str, uri: str) -> str:
    """Node's ``toASCII`` for the hosts a relay URI can sensibly have; ``ValueError`` otherwise."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in hostname):
        raise ValueError(f"invalid URL {uri!r}: control character in host")
    if hostname.isascii():
        labels = hostname.split(".")
        for label in labels:
            if label.startswith("xn--"):
                _check_punycode_label(label, uri)
        return hostname
    if any(c in _IDNA_DEVIATIONS for c in hostname):
        raise ValueError(
            f"unsupported host in {uri!r}: it contains a character (ß, ς, ZWJ, ZWNJ) whose IDNA "
            "form differs between IDNA 2003 and Node; pass the punycode (xn--) form instead")
    mapped = hostname.translate(_IDEOGRAPHIC_DOTS)
    try:
        return mapped.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"invalid URL {uri!r}: host {hostname!r} is not a valid IDNA name"
                         ) from exc


def _check_punycode_label(label: str, uri: str) -> None:
    try:
        decoded = label[4:].encode("ascii").decode("punycode")
        if any(c in _IDNA_DEVIATIONS for c in decoded):
            # Python's IDNA 2003 codec maps ß to "ss" (and so on), so it cannot round-trip the
            # IDNA 2008 labels Node produces for these characters (xn--fa-hia is faß): check
            # them with plain punycode instead.
            ok = "xn--" + decoded.encode("punycode").decode("ascii") == label.lower()
        else:
            ok = bool(decoded) and not decoded.isascii() and \
                decoded.encode("idna").decode("ascii") == label
    except (UnicodeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"invalid URL {uri!r}: bad punycode label {label!r}")


def _trim_and_fix_backslashes(url: str) -> str:
    """Trim JS whitespace at both ends; turn backslashes before the first ``?``/``#`` into ``/``."""
    start = 0
    end = len(url)
    while start < end and _is_js_whitespace_for_trim(url[start]):
        start += 1
    while end > start and _is_js_whitespace_for_trim(url[end - 1]):
        end -= 1
    rest = url[start:end]
    out: list[str] = []
    for i, ch in enumerate(rest):
        if ch in "?#":
            out.append(rest[i:])
            break
        out.append("/" if ch == "\\" else ch)
    return "".join(out)


def _node_url_parse(uri: str) -> _NodeUrl:
    """Parse like Node's legacy ``url.parse(uri)``, restricted to absolute URIs with a host.

    Anything else (relative references, user info, empty or invalid hosts, ``javascript:``)
    raises ``ValueError``: a relay token or address needs a host.
    """
    if not isinstance(uri, str):
        raise TypeError(f"uri must be a str, not {type(uri).__name__}")
    rest = _trim_and_fix_backslashes(uri)
    proto_match = _PROTOCOL_RE.match(rest)
    if proto_match is None:
        raise ValueError(f"not an absolute URI: {uri!r} (expected e.g. 'wss://ns/$hc/name')")
    proto = proto_match.group(0)
    lower_proto = proto.lower()
    if lower_proto in _HOSTLESS_PROTOCOLS:
        raise ValueError(f"not a relay URI: {uri!r}")
    rest = rest[len(proto):]
    slashes = rest.startswith("//")
    if slashes:
        rest = rest[2:]
    if not (slashes or proto not in _SLASHED_PROTOCOLS):
        raise ValueError(f"URI has no host: {uri!r}")

    # The first '/', '?' or '#' ends the host; RFC 2396 "never allowed" chars end it too.
    at_sign = -1
    non_host = -1
    chars = list(rest)
    i = 0
    while i < len(chars):
        ch = chars[i]
        if ch in "\t\n\r":
            del chars[i]  # WHATWG-style removal, as url.parse does in the host part
            continue
        if ch in _NON_HOST_CHARS:
            if non_host == -1:
                non_host = i
        elif ch in "#/?":
            if non_host == -1:
                non_host = i
            break  # host end
        elif ch == "@":
            at_sign = i
            non_host = -1
        i += 1
    rest = "".join(chars)
    if at_sign != -1:
        raise ValueError(f"user info is not allowed in a relay URI: {uri!r}")
    if non_host == -1:
        host, rest = rest, ""
    else:
        host, rest = rest[:non_host], rest[non_host:]

    port = ""
    port_match = _PORT_RE.search(host)
    if port_match is not None:
        if port_match.group(0) != ":":
            port = port_match.group(0)[1:]
        host = host[: port_match.start()]
    hostname = host
    ipv6 = len(hostname) >= 2 and hostname[0] == "[" and hostname[-1] == "]"
    if not ipv6:
        for j, ch in enumerate(hostname):
            if ch in "/\\#?:":
                rest = "/" + hostname[j:] + rest
                hostname = hostname[:j]
                break
    hostname = "" if len(hostname) > 255 else hostname.lower()
    if hostname == "":
        raise ValueError(f"URI has no host: {uri!r}")
    if ipv6:
        if any(c in _FORBIDDEN_HOST_CHARS_IPV6 for c in hostname):
            raise ValueError(f"invalid URL {uri!r}: bad IPv6 host")
    else:
        hostname = _to_ascii_host(hostname, uri)
        if hostname == "" or any(c in _FORBIDDEN_HOST_CHARS for c in hostname):
            raise ValueError(f"invalid URL {uri!r}: bad host {hostname!r}")
    full_host = hostname + (":" + port if port else "")
    if ipv6:
        hostname = hostname[1:-1]
        if not rest.startswith("/"):
            rest = "/" + rest

    rest = _AUTO_ESCAPE_RE.sub(lambda m: _AUTO_ESCAPE[m.group(0)], rest)
    hash_idx = rest.find("#")
    fragment: str | None = None
    if hash_idx != -1:
        fragment = rest[hash_idx:]
        rest = rest[:hash_idx]
    q_idx = rest.find("?")
    search: str | None = None
    if q_idx != -1:
        search = rest[q_idx:]
        rest = rest[:q_idx]
    pathname: str | None = rest or None
    if lower_proto in _SLASHED_PROTOCOLS and not pathname:
        pathname = "/"
    return _NodeUrl(lower_proto, slashes, full_host, hostname, pathname, search, fragment)


def _node_url_format(u: _NodeUrl, *, protocol: str, pathname: str, search: str,
                     fragment: str) -> str:
    """Node's legacy ``url.format`` for a parsed URL with some fields replaced."""
    if protocol and not protocol.endswith(":"):
        protocol += ":"
    pathname = pathname.replace("#", "%23").replace("?", "%3F")
    host = u.host
    if u.slashes or protocol in _SLASHED_PROTOCOLS:
        if u.slashes or host:
            if pathname and not pathname.startswith("/"):
                pathname = "/" + pathname
            host = "//" + host
        elif protocol.startswith("file"):
            host = "//"
    search = search.replace("#", "%23")
    if fragment and not fragment.startswith("#"):
        fragment = "#" + fragment
    if search and not search.startswith("?"):
        search = "?" + search
    return protocol + host + pathname + search + fragment


def normalize_token_resource(uri: str) -> str:
    """The resource URI hyco-ws signs for ``uri`` (hybrid-connections-wire §2.3), not yet encoded.

    ``url.parse``; protocol forced to ``http``; query, fragment and ``port`` dropped, but ``host``
    keeps the port, so ``url.format`` writes it; the first ``$hc/`` in the path removed.
    ``wss://NS:443/$hc/hc/x?a=b`` becomes ``http://ns:443/hc/x``. Where hyco-ws would crash (a
    non-http(s)/ws(s) URI without a path, e.g. ``sb://ns``) the path is taken as ``/``.
    """
    parsed = _node_url_parse(uri)
    pathname = (parsed.pathname or "/").replace("$hc/", "", 1)
    return _node_url_format(parsed, protocol="http", pathname=pathname, search="", fragment="")


# --------------------------------------------------------------------------------------------
# Creating tokens
# --------------------------------------------------------------------------------------------

def _expiry_seconds(now: float, expiration_seconds: float | None) -> int:
    """``moment().add(expirationSeconds, 'seconds').unix()`` with ``Date.now()`` = ``now``.

    ``Date.now()`` is whole milliseconds (floored); moment adds ``seconds * 1e3`` milliseconds as
    a double, ``Date.setTime`` truncates, and ``unix()`` floors to seconds.
    """
    if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
        raise ValueError(f"now must be a finite number of seconds, not {now!r}")
    # hyco-ws: `if (!expirationSeconds) expirationSeconds = 3600;` (0 means the default).
    if expiration_seconds is None or expiration_seconds == 0:
        expiration_seconds = DEFAULT_EXPIRATION_SECONDS
    if (isinstance(expiration_seconds, bool)
            or not isinstance(expiration_seconds, (int, float))
            or not math.isfinite(expiration_seconds) or expiration_seconds < 0):
        raise ValueError(
            f"expiration_seconds must be a non-negative number, not {expiration_seconds!r}")
    now_ms = math.floor(Decimal(repr(now)) * 1000)
    if isinstance(expiration_seconds, int):
        total_ms = now_ms + expiration_seconds * 1000
    else:
        total_ms = math.trunc(now_ms + expiration_seconds * 1e3)
    return total_ms // 1000


def _sign(key: str, string_to_sign: str) -> str:
    digest = hmac.new(key.encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha256)
    return base64.b64encode(digest.digest()).decode("ascii")


def create_relay_token(uri: str, rule_name: str, key: str,
                       expiration_seconds: float | None = DEFAULT_EXPIRATION_SECONDS,
                       *, now: float | None = None) -> str:
    """A SAS token for ``uri``, byte-identical to hyco-ws ``createRelayToken``.

    ``key`` is the rule's key *text*; its UTF-8 bytes are the HMAC key (it is not base64-decoded,
    §2.1). ``expiration_seconds`` of 0 or ``None`` means 3600, as in hyco-ws. ``now`` (seconds
    since the epoch) defaults to the wall clock.
    """
    if not isinstance(rule_name, str) or not rule_name:
        raise ValueError("rule_name must be a non-empty string (the SAS rule's key name)")
    if not isinstance(key, str) or not key:
        raise ValueError("key must be a non-empty string (the SAS rule's key)")
    if now is None:
        now = _wallclock.now()
    expiry = _expiry_seconds(now, expiration_seconds)
    resource = encode_uri_component(normalize_token_resource(uri))
    signature = _sign(key, f"{resource}\n{expiry}")
    return (f"{SAS_PREFIX}sr={resource}&sig={encode_uri_component(signature)}"
            f"&se={expiry}&skn={rule_name}")


def append_relay_token(uri: str, rule_name: str, key: str,
                       expiration_seconds: float | None = DEFAULT_EXPIRATION_SECONDS,
                       *, now: float | None = None) -> str:
    """``uri`` with ``sb-hc-token=<token for uri>`` added to its query.

    For URIs with a query this is byte-identical to hyco-ws ``appendRelayToken`` (which also
    re-formats the URI: lower-case scheme and host, escaped spaces). Unlike hyco-ws, a URI
    without a query (or with an empty one) gets ``?sb-hc-token=…`` instead of ``?null&…``.
    """
    token = create_relay_token(uri, rule_name, key, expiration_seconds, now=now)
    parsed = _node_url_parse(uri)
    param = "sb-hc-token=" + encode_uri_component(token)
    if parsed.search is None or parsed.search == "?":
        search = "?" + param
    else:
        search = parsed.search + "&" + param
    return _node_url_format(parsed, protocol=parsed.protocol, pathname=parsed.pathname or "",
                            search=search, fragment=parsed.hash or "")


# --------------------------------------------------------------------------------------------
# Parsing and verifying tokens
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SasToken:
    """A parsed ``SharedAccessSignature`` token.

    ``resource`` is the decoded audience URI; ``raw_sr`` and ``raw_se`` are the fields exactly as
    received (the HMAC covers them, §2.2); ``signature`` is the percent-decoded base64 text.
    """

    resource: str
    raw_sr: str
    signature: str
    expiry: int
    key_name: str
    raw: str
    raw_se: str


_FIELDS = ("sr", "sig", "se", "skn")
#: The largest ``se`` a token may carry: 9999-12-31T23:59:59Z in seconds since 1970.
MAX_EXPIRY = 253402300799
_MAX_EXPIRY_TEXT = str(MAX_EXPIRY)


def parse_token(token: str) -> SasToken:
    """Parse a SAS token; fields may come in any order. ``TokenError`` (401) if malformed."""
    if not isinstance(token, str):
        raise TokenError(f"token must be a str, not {type(token).__name__}")
    raw = token.strip()
    if raw == SAS_PREFIX.strip():
        raise TokenError("malformed token: no fields after 'SharedAccessSignature'")
    if not raw.startswith(SAS_PREFIX):
        if raw[: len(SAS_PREFIX) - 1].lower() == SAS_PREFIX[:-1].lower():
            raise TokenError("malformed token: 'SharedAccessSignature' must be followed by "
                             "exactly one space and be spelled with that case")
        raise TokenError("malformed token: missing 'SharedAccessSignature ' prefix")
    body = raw[len(SAS_PREFIX):]
    if not body or any(c.isspace() for c in body):
        raise TokenError("malformed token: expected 'SharedAccessSignature sr=…&sig=…&se=…&skn=…'"
                         " with no whitespace after the prefix")
    fields: dict[str, str] = {}
    for part in body.split("&"):
        name, eq, value = part.partition("=")
        if not eq:
            raise TokenError(f"malformed token: field {part!r} has no '='")
        name = name.lower()
        if name not in _FIELDS:
            continue  # unknown fields are ignored, as the service does
        if name in fields:
            raise TokenError(f"malformed token: duplicate field {name!r}")
        fields[name] = value
    for name in _FIELDS:
        if not fields.get(name):
            raise TokenError(f"malformed token: missing field {name!r}")
    raw_se = fields["se"]
    if not (raw_se.isascii() and raw_se.isdigit()):
        raise TokenError(f"malformed token: 'se' must be an integer, not {raw_se[:40]!r}")
    # Range-checked as text before int(): thousands of digits would make int() raise (or
    # spend quadratic time), and an expiry past year 9999 is no date anyone can compare to.
    digits = raw_se.lstrip("0")
    if len(digits) > len(_MAX_EXPIRY_TEXT) or (
            len(digits) == len(_MAX_EXPIRY_TEXT) and digits > _MAX_EXPIRY_TEXT):
        raise TokenError(f"se is not a valid expiry ({len(raw_se)} digits; at most "
                         f"{MAX_EXPIRY}, the end of year 9999)")
    return SasToken(
        resource=unquote_plus(fields["sr"]),
        raw_sr=fields["sr"],
        signature=unquote(fields["sig"]),
        expiry=int(raw_se),
        key_name=unquote(fields["skn"]),
        raw=raw,
        raw_se=raw_se,
    )


_LEADING_PREFIXES = (("$hc",), ("$servicebus", "hybridconnection"))


def _segments(path: str) -> list[str]:
    """Path segments, decoded and case-folded, without empty ones or a leading ``$hc``."""
    segs = [unquote(s).casefold() for s in path.split("/") if s]
    for prefix in _LEADING_PREFIXES:
        if tuple(segs[: len(prefix)]) == prefix:
            return segs[len(prefix):]
    return segs


def _host_only(host: str) -> str:
    parsed = urlsplit("//" + host)
    try:
        return (parsed.hostname or "").casefold()
    except ValueError:
        return host.casefold()


KeyLookup = Mapping[str, str] | Callable[[str], str | None]


def verify_token(token: str | SasToken, *, keys: KeyLookup, target_path: str, now: float,
                 host: str | None = None, leeway: float = 0.0) -> SasToken:
    """Check a SAS token the way the relay service does; return it parsed, or raise ``TokenError``.

    - ``keys`` maps a rule name to its key text (a mapping, or a callable returning ``None``
      for an unknown name).
    - The HMAC is computed over the raw ``sr`` as received + ``"\\n"`` + raw ``se`` (§2.2) and
      compared in constant time.
    - The token is expired when ``now >= se + leeway``.
    - The resource's scheme and port are ignored, its host compared case-insensitively with
      ``host`` when given, a leading ``$hc`` segment dropped; its segments must be a
      case-insensitive segment prefix of ``target_path`` (``/{hc}/{suffix…}``) (§2.3).

    ``TokenError.status`` is 401 for malformed, unknown-key, bad-signature and expired tokens,
    403 for a valid token meant for another host or path.
    """
    parsed = token if isinstance(token, SasToken) else parse_token(token)
    key = keys.get(parsed.key_name) if isinstance(keys, Mapping) else keys(parsed.key_name)
    if key is None:
        raise TokenError(f"unknown key name {parsed.key_name!r}")
    try:
        provided = base64.b64decode(parsed.signature, validate=True)
    except (binascii.Error, ValueError):
        raise TokenError("bad signature: 'sig' is not valid base64") from None
    expected = hmac.new(key.encode("utf-8"),
                        f"{parsed.raw_sr}\n{parsed.raw_se}".encode(),
                        hashlib.sha256).digest()
    if not hmac.compare_digest(expected, provided):
        raise TokenError(f"bad signature for key name {parsed.key_name!r}")
    if now >= parsed.expiry + leeway:
        raise TokenError(f"token expired at {parsed.expiry} (now {math.floor(now)})")

    resource = urlsplit(parsed.resource)
    if not resource.scheme or not resource.netloc:
        raise TokenError(f"malformed token: resource {parsed.resource!r} is not an absolute URI")
    if host is not None:
        try:
            sr_host = (resource.hostname or "").casefold()
        except ValueError:
            sr_host = ""
        if sr_host != _host_only(host):
            raise TokenError(f"token is for host {sr_host!r}, not {_host_only(host)!r}",
                             status=403)
    sr_segs = _segments(resource.path)
    target_segs = _segments(target_path.split("?", 1)[0])
    if sr_segs != target_segs[: len(sr_segs)] or len(sr_segs) > len(target_segs):
        raise TokenError(
            f"token is for path '/{'/'.join(sr_segs)}', which does not cover "
            f"'/{'/'.join(target_segs)}'", status=403)
    return parsed


# --------------------------------------------------------------------------------------------
# Token source with renewal
# --------------------------------------------------------------------------------------------

def token_expiry(token: str) -> int | None:
    """Expiry (epoch seconds) of a SAS token, or of a JWT's ``exp`` claim; ``None`` if unknown."""
    try:
        return parse_token(token).expiry
    except TokenError:
        pass
    parts = token.strip().split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None  # RecursionError: a payload nested thousands of levels deep
    exp = payload.get("exp") if isinstance(payload, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
        return None  # 1e999 parses as inf, which int() refuses
    return int(exp)


#: Seconds before asking a token callable again when it returned an already-expired token.
_EXPIRED_RETRY = 1.0


class TokenSource:
    """A token that is either a fixed string or made by a callable, renewed ahead of expiry.

    A callable is called again at ``issued + renew_at * TTL`` (default half-way), well before
    the token expires; Microsoft's clients renew at expiry and race the service (§2.6). A fixed
    string is never renewed. Pure: every method takes ``now``.
    """

    def __init__(self, token: str | Callable[[], str], *, renew_at: float = 0.5,
                 fallback_ttl: float = 3600.0) -> None:
        if not 0.0 < renew_at < 1.0:
            raise ValueError(f"renew_at must be between 0 and 1 (exclusive), not {renew_at!r}")
        if fallback_ttl <= 0:
            raise ValueError(f"fallback_ttl must be positive, not {fallback_ttl!r}")
        self._renew_at = renew_at
        self._fallback_ttl = fallback_ttl
        self._factory: Callable[[], str] | None
        self._current: str | None
        self._issued_at: float | None = None
        self._expiry: int | None = None
        if isinstance(token, str):
            if not token:
                raise ValueError("token must be a non-empty string or a callable")
            self._factory = None
            self._current = token
            self._expiry = token_expiry(token)
        elif callable(token):
            self._factory = token
            self._current = None
        else:
            raise TypeError(f"token must be a str or a callable, not {type(token).__name__}")

    @property
    def is_renewable(self) -> bool:
        """Whether the token comes from a callable and is therefore renewed."""
        return self._factory is not None

    @property
    def current(self) -> str | None:
        """The token last handed out (``None`` before the first ``get`` of a callable)."""
        return self._current

    @property
    def expiry(self) -> int | None:
        """Expiry of the current token in epoch seconds, if known."""
        return self._expiry

    def next_renewal(self, now: float) -> float | None:
        """When to renew: ``now`` if no token yet; ``None`` for a fixed string."""
        if self._factory is None:
            return None
        if self._current is None or self._issued_at is None:
            return now
        if self._expiry is None:
            ttl = self._fallback_ttl
        else:
            ttl = self._expiry - self._issued_at
            if ttl <= 0:
                # The callable handed out an already-expired token: try again shortly rather
                # than in a busy loop.
                return self._issued_at + _EXPIRED_RETRY
        return self._issued_at + self._renew_at * ttl

    def needs_renewal(self, now: float) -> bool:
        """Whether :meth:`renew` is due at ``now``."""
        due = self.next_renewal(now)
        return due is not None and now >= due

    def renew(self, now: float) -> str:
        """Call the factory for a fresh token (a fixed string is returned unchanged)."""
        if self._factory is None:
            assert self._current is not None
            return self._current
        token = self._factory()
        if not isinstance(token, str) or not token:
            raise TypeError(f"the token callable returned {token!r}, not a non-empty str")
        self._current = token
        self._issued_at = now
        self._expiry = token_expiry(token)
        return token

    def get(self, now: float) -> str:
        """The token to use at ``now``, renewing it first if due."""
        if self._current is None or self.needs_renewal(now):
            return self.renew(now)
        return self._current

    def __repr__(self) -> str:
        kind = "callable" if self._factory is not None else "fixed"
        return f"TokenSource({kind}, expiry={self._expiry!r})"
