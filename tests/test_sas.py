"""SAS tokens: creation (hyco-ws compatible), parsing, verification, TokenSource."""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import json
from pathlib import Path
from urllib.parse import quote

import pytest

from hyco_proto import _wallclock, sas
from hyco_proto.errors import TokenError
from hyco_proto.sas import (
    SasToken,
    TokenSource,
    append_relay_token,
    create_relay_token,
    encode_uri_component,
    normalize_token_resource,
    parse_token,
    token_expiry,
    verify_token,
)

NOW = 1_700_000_000.0
KEY = "s3cr3tKeyValue=="
RULE = "RootManageSharedAccessKey"


def reference_token(sr_decoded: str, key: str, se: int, skn: str) -> str:
    """An independent spelling of §2.1, for known-answer checks."""
    sr = quote(sr_decoded, safe="!*'()")
    sig = base64.b64encode(
        hmac.new(key.encode(), f"{sr}\n{se}".encode(), hashlib.sha256).digest()).decode()
    return f"SharedAccessSignature sr={sr}&sig={quote(sig, safe='')}&se={se}&skn={skn}"


def make_token(sr_raw: str, se: int | str, key: str = KEY, skn: str = RULE) -> str:
    """A token whose ``sr`` is used exactly as given (no re-encoding)."""
    sig = base64.b64encode(
        hmac.new(key.encode(), f"{sr_raw}\n{se}".encode(), hashlib.sha256).digest()).decode()
    return f"SharedAccessSignature sr={sr_raw}&sig={quote(sig, safe='')}&se={se}&skn={skn}"


# --------------------------------------------------------------------------------------------
# encodeURIComponent and resource normalisation
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("abcXYZ019", "abcXYZ019"),
    ("-_.!~*'()", "-_.!~*'()"),
    (" +/=?&#:@$,;", "%20%2B%2F%3D%3F%26%23%3A%40%24%2C%3B"),
    ("ü😀", "%C3%BC%F0%9F%98%80"),
    ("\n%", "%0A%25"),
])
def test_encode_uri_component(text: str, expected: str) -> None:
    assert encode_uri_component(text) == expected


def test_encode_uri_component_rejects_lone_surrogate() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        encode_uri_component("a\ud800b")


@pytest.mark.parametrize(("uri", "resource"), [
    # §2.3: protocol forced to http, query dropped, the port survives, first "$hc/" removed.
    ("wss://contoso.servicebus.windows.net:443/$hc/myhc?sb-hc-action=listen",
     "http://contoso.servicebus.windows.net:443/myhc"),
    ("ws://127.0.0.1:9090/$hc/myhc?sb-hc-action=listen", "http://127.0.0.1:9090/myhc"),
    ("wss://ns:443/$hc/myhc/some/suffix?foo=bar&sb-hc-action=connect",
     "http://ns:443/myhc/some/suffix"),
    ("http://ns", "http://ns/"),                       # slashed protocol: path becomes "/"
    ("http://ns/", "http://ns/"),
    ("https://ns.example:8443", "http://ns.example:8443/"),
    ("sb://ns/hc", "http://ns/hc"),
    ("sb://ns", "http://ns/"),                         # hyco-ws crashes here; we use "/"
    ("WSS://NS.Example.COM/$hc/MyHc", "http://ns.example.com/MyHc"),  # host lower, path kept
    ("wss://ns/$hc/a/$hc/b", "http://ns/a/$hc/b"),     # first occurrence only
    ("wss://ns/x$hc/y", "http://ns/xy"),               # ... wherever it is
    ("wss://ns/$hc", "http://ns/$hc"),                 # no trailing slash: not removed
    ("wss://ns/$HC/x", "http://ns/$HC/x"),             # case-sensitive
    ("wss://ns/$hc/a b", "http://ns/a%20b"),           # url.parse auto-escapes spaces
    ("wss://ns/$hc/a\"'<>^`{|}", "http://ns/a%22%27%3C%3E%5E%60%7B%7C%7D"),
    ("wss://ns/$hc/ü/😀", "http://ns/ü/😀"),           # non-ASCII left alone
    ("wss://ns/$hc/a%20b", "http://ns/a%20b"),         # escapes left alone
    ("wss://ns/$hc/x#frag", "http://ns/x"),
    ("wss://ns\\$hc\\x?a\\b", "http://ns/x"),          # backslashes before '?' become '/'
    ("  wss://ns/$hc/x \n", "http://ns/x"),            # trimmed
    ("ws://[::1]:9090/$hc/x", "http://[::1]:9090/x"),
    ("ws://[::1]", "http://[::1]/"),
    ("wss://bücher.example/$hc/x", "http://xn--bcher-kva.example/x"),
    # The punycode form of a host Python's IDNA 2003 codec maps differently (faß.de).
    ("wss://xn--fa-hia.de/$hc/x", "http://xn--fa-hia.de/x"),
    ("wss://ns:/$hc/x", "http://ns/x"),                # empty port dropped
    ("wss://ns;x/y", "http://ns/;x/y"),                # ';' ends the host
])
def test_normalize_token_resource(uri: str, resource: str) -> None:
    assert normalize_token_resource(uri) == resource


@pytest.mark.parametrize(("uri", "message"), [
    ("/$hc/myhc", "not an absolute URI"),
    ("ns/$hc/x", "not an absolute URI"),
    ("", "not an absolute URI"),
    ("http:///x", "no host"),
    ("http:ns/x", "no host"),
    ("http://:9090/x", "no host"),
    ("http://user:pw@ns/x", "user info"),
    ("javascript://ns/x", "not a relay URI"),
    ("http://a[b/x", "bad host"),
    ("http://xn--ab/", "punycode"),
    ("http://a\x01b/", "control character"),
    ("http://faß.de/", "punycode"),
])
def test_normalize_token_resource_rejects(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_token_resource(uri)


def test_normalize_token_resource_type_error() -> None:
    with pytest.raises(TypeError):
        normalize_token_resource(b"wss://ns/$hc/x")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# create_relay_token / append_relay_token
# --------------------------------------------------------------------------------------------

def test_create_relay_token_known_answer() -> None:
    uri = "wss://contoso.servicebus.windows.net:443/$hc/myhc?sb-hc-action=listen"
    token = create_relay_token(uri, RULE, KEY, 3600, now=NOW)
    assert token == reference_token(
        "http://contoso.servicebus.windows.net:443/myhc", KEY, 1_700_003_600, RULE)
    assert token.startswith(
        "SharedAccessSignature sr=http%3A%2F%2Fcontoso.servicebus.windows.net%3A443%2Fmyhc&sig=")


def test_create_relay_token_key_is_utf8_text_not_base64() -> None:
    key = "dGVzdA=="  # base64-looking: used as text, not decoded
    token = create_relay_token("http://ns", "r", key, 60, now=NOW)
    assert token == reference_token("http://ns/", key, 1_700_000_060, "r")
    token = create_relay_token("http://ns", "r", "ключ", 60, now=NOW)
    assert token == reference_token("http://ns/", "ключ", 1_700_000_060, "r")


def test_create_relay_token_key_name_not_encoded() -> None:
    # hyco-ws appends skn raw.
    token = create_relay_token("http://ns", "a b&c", KEY, 60, now=NOW)
    assert token.endswith("&skn=a b&c")


@pytest.mark.parametrize(("now", "expiration", "se"), [
    (NOW, 3600, 1_700_003_600),
    (NOW, 1, 1_700_000_001),
    (NOW, 86400, 1_700_086_400),
    (NOW, 0, 1_700_003_600),           # hyco-ws: `if (!expirationSeconds) = 3600`
    (NOW, None, 1_700_003_600),
    (1_700_000_000.999, 1, 1_700_000_001),   # floored to seconds
    (1_700_000_000.123, 1.4, 1_700_000_001),  # moment adds 1400 ms
    (1_700_000_000.123, 0.5, 1_700_000_000),
    (1_700_000_000.123, 2.9999, 1_700_000_003),
    (1_700_000_000.5, 0.5, 1_700_000_001),
    (1_700_000_000, 10, 1_700_000_010),       # int clock
])
def test_create_relay_token_expiry(now: float, expiration: float | None, se: int) -> None:
    token = create_relay_token("http://ns/x", RULE, KEY, expiration, now=now)
    assert parse_token(token).expiry == se


@pytest.mark.parametrize("expiration", [-1, float("nan"), float("inf"), True, "10"])
def test_create_relay_token_bad_expiry(expiration: object) -> None:
    with pytest.raises(ValueError, match="expiration_seconds"):
        create_relay_token("http://ns/x", RULE, KEY, expiration, now=NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize("now", [float("nan"), float("inf"), True])
def test_create_relay_token_bad_now(now: float) -> None:
    with pytest.raises(ValueError, match="now"):
        create_relay_token("http://ns/x", RULE, KEY, 60, now=now)


@pytest.mark.parametrize(("rule", "key", "message"), [
    ("", KEY, "rule_name"), (RULE, "", "key"), (None, KEY, "rule_name"), (RULE, None, "key"),
])
def test_create_relay_token_bad_credentials(rule: object, key: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_relay_token("http://ns/x", rule, key, now=NOW)  # type: ignore[arg-type]


def test_create_relay_token_uses_wallclock_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_wallclock, "now", lambda: 1_234_567_890.5)
    token = create_relay_token("http://ns/x", RULE, KEY, 10)
    assert parse_token(token).expiry == 1_234_567_900
    assert token == create_relay_token("http://ns/x", RULE, KEY, 10, now=1_234_567_890.5)


def test_wallclock_now_is_epoch_seconds() -> None:
    assert _wallclock.now() > 1_600_000_000


@pytest.mark.parametrize(("uri", "expected_prefix"), [
    ("wss://ns/$hc/x?sb-hc-action=connect", "wss://ns/$hc/x?sb-hc-action=connect&sb-hc-token="),
    ("wss://ns/$hc/x", "wss://ns/$hc/x?sb-hc-token="),          # hyco-ws: "?null&sb-hc-token="
    ("wss://ns/$hc/x?", "wss://ns/$hc/x?sb-hc-token="),         # empty query
    ("WSS://NS:443/$hc/a b?q=1", "wss://ns:443/$hc/a%20b?q=1&sb-hc-token="),  # re-formatted
    ("http://ns", "http://ns/?sb-hc-token="),
])
def test_append_relay_token(uri: str, expected_prefix: str) -> None:
    result = append_relay_token(uri, RULE, KEY, 60, now=NOW)
    assert result.startswith(expected_prefix)
    token = create_relay_token(uri, RULE, KEY, 60, now=NOW)
    assert result == expected_prefix + encode_uri_component(token)


def test_append_relay_token_keeps_fragment_last() -> None:
    result = append_relay_token("wss://ns/$hc/x?a=1#frag", RULE, KEY, 60, now=NOW)
    assert result.endswith("#frag")
    assert "?a=1&sb-hc-token=" in result


# --------------------------------------------------------------------------------------------
# parse_token
# --------------------------------------------------------------------------------------------

def test_parse_token_roundtrip() -> None:
    token = create_relay_token("wss://ns:443/$hc/myhc?x", RULE, KEY, 60, now=NOW)
    parsed = parse_token(token)
    assert parsed == SasToken(
        resource="http://ns:443/myhc", raw_sr="http%3A%2F%2Fns%3A443%2Fmyhc",
        signature=parsed.signature, expiry=1_700_000_060, key_name=RULE, raw=token,
        raw_se="1700000060")
    assert base64.b64decode(parsed.signature, validate=True)


def test_parse_token_any_field_order_and_unknown_fields() -> None:
    token = "SharedAccessSignature skn=r&se=10&extra=1&sig=abc%3D&sr=http%3A%2F%2Fns%2F"
    parsed = parse_token(token)
    assert (parsed.resource, parsed.signature, parsed.expiry, parsed.key_name) == (
        "http://ns/", "abc=", 10, "r")


def test_parse_token_dotnet_encoding() -> None:
    # WebUtility.UrlEncode: lower-case hex in old docs, '+' for a space.
    parsed = parse_token("SharedAccessSignature sr=http%3a%2f%2fns%2fa+b&sig=x&se=1&skn=r")
    assert parsed.resource == "http://ns/a b"
    assert parsed.raw_sr == "http%3a%2f%2fns%2fa+b"


def test_parse_token_strips_outer_whitespace() -> None:
    assert parse_token("  SharedAccessSignature sr=a&sig=b&se=1&skn=c \r\n").key_name == "c"


@pytest.mark.parametrize(("token", "reason"), [
    ("sr=a&sig=b&se=1&skn=c", "missing 'SharedAccessSignature ' prefix"),
    ("Bearer sr=a&sig=b&se=1&skn=c", "missing 'SharedAccessSignature ' prefix"),
    ("sharedaccesssignature sr=a&sig=b&se=1&skn=c", "exactly one space"),
    ("SharedAccessSignature  sr=a&sig=b&se=1&skn=c", "no whitespace"),
    ("SharedAccessSignature sr=a&sig=b &se=1&skn=c", "no whitespace"),
    ("SharedAccessSignature ", "no fields after"),
    ("", "missing 'SharedAccessSignature ' prefix"),
    ("SharedAccessSignature sig=b&se=1&skn=c", "missing field 'sr'"),
    ("SharedAccessSignature sr=a&se=1&skn=c", "missing field 'sig'"),
    ("SharedAccessSignature sr=a&sig=b&skn=c", "missing field 'se'"),
    ("SharedAccessSignature sr=a&sig=b&se=1", "missing field 'skn'"),
    ("SharedAccessSignature sr=&sig=b&se=1&skn=c", "missing field 'sr'"),
    ("SharedAccessSignature sr=a&sig=b&se=1&skn=c&sr=d", "duplicate field 'sr'"),
    ("SharedAccessSignature sr=a&sig=b&se=1.5&skn=c", "'se' must be an integer"),
    ("SharedAccessSignature sr=a&sig=b&se=-1&skn=c", "'se' must be an integer"),
    ("SharedAccessSignature sr=a&sig=b&se=soon&skn=c", "'se' must be an integer"),
    ("SharedAccessSignature sr=a&sig=b&se=\uff11&skn=c", "'se' must be an integer"),
    ("SharedAccessSignature sr=a&sigb&se=1&skn=c", "has no '='"),
])
def test_parse_token_malformed(token: str, reason: str) -> None:
    with pytest.raises(TokenError) as info:
        parse_token(token)
    assert reason in info.value.reason
    assert info.value.status == 401


def test_parse_token_not_a_string() -> None:
    with pytest.raises(TokenError, match="must be a str"):
        parse_token(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# verify_token
# --------------------------------------------------------------------------------------------

KEYS = {RULE: KEY, "other": "0th3r"}


def verify(token: str | SasToken, target: str = "/myhc", **kw: object) -> SasToken:
    kw.setdefault("now", NOW)
    return verify_token(token, keys=KEYS, target_path=target, **kw)  # type: ignore[arg-type]


def test_verify_success_returns_parsed_token() -> None:
    token = create_relay_token("wss://ns:443/$hc/myhc?sb-hc-action=listen", RULE, KEY, now=NOW)
    parsed = verify(token, host="ns")
    assert parsed.key_name == RULE
    assert verify(parse_token(token)) == parsed


def test_verify_keys_callable() -> None:
    token = create_relay_token("http://ns/myhc", "other", "0th3r", now=NOW)
    seen: list[str] = []

    def lookup(name: str) -> str | None:
        seen.append(name)
        return KEYS.get(name)

    assert verify_token(token, keys=lookup, target_path="/myhc", now=NOW).key_name == "other"
    assert seen == ["other"]


def expect_error(status: int, reason: str, token: str | SasToken, target: str = "/myhc",
                 **kw: object) -> None:
    with pytest.raises(TokenError) as info:
        verify(token, target, **kw)
    assert info.value.status == status, info.value.reason
    assert reason in info.value.reason


def test_verify_unknown_key_name() -> None:
    token = create_relay_token("http://ns/myhc", "nobody", KEY, now=NOW)
    expect_error(401, "unknown key name 'nobody'", token)
    with pytest.raises(TokenError, match="unknown key name"):
        verify_token(token, keys=lambda name: None, target_path="/myhc", now=NOW)


def test_verify_bad_signature() -> None:
    token = create_relay_token("http://ns/myhc", RULE, "wrong key", now=NOW)
    expect_error(401, "bad signature", token)


def test_verify_signature_not_base64() -> None:
    expect_error(401, "not valid base64",
                 "SharedAccessSignature sr=http%3A%2F%2Fns%2F&sig=%%%%&se=1700000060&skn=" + RULE)


def test_verify_tampered_fields() -> None:
    token = create_relay_token("http://ns/myhc", RULE, KEY, 60, now=NOW)
    expect_error(401, "bad signature", token.replace("se=1700000060", "se=1800000060"))
    expect_error(401, "bad signature", token.replace("myhc", "other"), "/other")


def test_verify_hmac_over_raw_sr_as_received() -> None:
    # §2.2: lower-case hex (old .NET) must verify as written, not after re-encoding.
    raw = "http%3a%2f%2fns%2fmyhc%2f"
    token = make_token(raw, 1_700_000_060)
    assert verify(token).raw_sr == raw
    plus = make_token("http%3A%2F%2Fns%2Fmy+hc", 1_700_000_060)  # '+' is a space (.NET)
    assert verify(plus, "/my hc").resource == "http://ns/my hc"


def test_verify_uses_constant_time_compare(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    token = create_relay_token("http://ns/myhc", RULE, KEY, now=NOW)
    verify(token)
    assert len(calls) == 1
    assert calls[0][0] == calls[0][1] and len(calls[0][0]) == 32


def test_verify_expiry() -> None:
    token = create_relay_token("http://ns/myhc", RULE, KEY, 60, now=NOW)
    verify(token, now=NOW + 59.999)
    expect_error(401, "expired at 1700000060", token, now=NOW + 60)   # at se: expired
    expect_error(401, "expired", token, now=NOW + 1000)
    verify(token, now=NOW + 100, leeway=60)                            # grace period
    expect_error(401, "expired", token, now=NOW + 120, leeway=60)


def test_verify_expired_reported_before_audience() -> None:
    token = create_relay_token("http://ns/elsewhere", RULE, KEY, 60, now=NOW)
    expect_error(401, "expired", token, "/myhc", now=NOW + 61)


@pytest.mark.parametrize(("resource", "target"), [
    ("http://ns/", "/myhc"),                           # namespace token (hyco-ws README)
    ("http://ns", "/myhc/a/b"),
    ("http://ns/myhc", "/myhc"),
    ("http://ns/myhc/", "/myhc"),                      # trailing slash (.NET)
    ("http://ns/myhc", "/myhc/"),
    ("http://ns/myhc", "/myhc/some/suffix"),           # entity token, sender with a suffix
    ("http://ns:443/myhc/some/suffix", "/myhc/some/suffix"),  # hyco-ws sender token (§2.3)
    ("http://ns/myhc/some", "/myhc/some/suffix"),
    ("http://ns/MyHC", "/myhc"),                       # case-insensitive
    ("http://ns/myhc", "/MYHC/X"),
    ("http://ns/$hc/myhc", "/myhc"),                   # $hc segment dropped
    ("http://ns/$hc/", "/myhc"),
    ("http://ns/$servicebus/hybridconnection/myhc", "/myhc"),
    ("sb://ns/myhc", "/myhc"),                         # scheme ignored
    ("wss://ns:9443/myhc", "/myhc"),                   # port ignored
    ("https://127.0.0.1:9090/myhc", "/myhc"),
    ("http://ns/a%20b", "/a b"),                       # compared decoded
    ("http://ns/a b", "/a%20b"),
    ("http://ns/myhc", "/$hc/myhc"),                   # a target written with $hc
    ("http://ns/myhc", "/myhc/x?sb-hc-action=connect"),  # a query on the target is ignored
])
def test_verify_path_prefix_accepts(resource: str, target: str) -> None:
    token = make_token(encode_uri_component(resource), 1_700_000_060)
    verify(token, target)


@pytest.mark.parametrize(("resource", "target"), [
    ("http://ns/other", "/myhc"),
    ("http://ns/myhc", "/myhc2"),                      # segment prefix, not string prefix
    ("http://ns/my", "/myhc"),
    ("http://ns/myhc/a", "/myhc"),                     # token narrower than the target
    ("http://ns/myhc/a", "/myhc/b"),
    ("http://ns/myhc/some/suffix", "/myhc/some"),
    ("http://ns/$hc/other", "/myhc"),
])
def test_verify_path_prefix_rejects(resource: str, target: str) -> None:
    token = make_token(encode_uri_component(resource), 1_700_000_060)
    expect_error(403, "does not cover", token, target)


@pytest.mark.parametrize(("resource", "host", "ok"), [
    ("http://ns.example/myhc", "ns.example", True),
    ("http://NS.Example/myhc", "ns.EXAMPLE", True),
    ("http://ns.example:443/myhc", "ns.example", True),
    ("http://ns.example/myhc", "ns.example:9090", True),
    ("http://[::1]:9090/myhc", "[::1]", True),
    ("http://ns.example/myhc", "other.example", False),
    ("http://ns.example.evil/myhc", "ns.example", False),
])
def test_verify_host(resource: str, host: str, ok: bool) -> None:
    token = make_token(encode_uri_component(resource), 1_700_000_060)
    if ok:
        verify(token, host=host)
    else:
        expect_error(403, "token is for host", token, host=host)
    verify(token)  # host=None: not checked (local emulator)


def test_verify_resource_not_absolute() -> None:
    token = make_token("myhc", 1_700_000_060)
    expect_error(401, "not an absolute URI", token)


# --------------------------------------------------------------------------------------------
# TokenSource
# --------------------------------------------------------------------------------------------

class Factory:
    def __init__(self, ttl: int = 3600) -> None:
        self.calls = 0
        self.ttl = ttl
        self.clock = NOW

    def __call__(self) -> str:
        self.calls += 1
        return create_relay_token("http://ns/myhc", RULE, KEY, self.ttl, now=self.clock)


def test_token_source_fixed_string() -> None:
    token = create_relay_token("http://ns/myhc", RULE, KEY, 60, now=NOW)
    src = TokenSource(token)
    assert not src.is_renewable
    assert src.current == token
    assert src.expiry == 1_700_000_060
    assert src.next_renewal(NOW) is None
    assert not src.needs_renewal(NOW + 10_000)
    assert src.get(NOW + 10_000) == token
    assert src.renew(NOW) == token


def test_token_source_callable_renews_half_way() -> None:
    factory = Factory(ttl=3600)
    src = TokenSource(factory)
    assert src.is_renewable
    assert src.current is None
    assert src.next_renewal(NOW) == NOW and src.needs_renewal(NOW)
    first = src.get(NOW)
    assert factory.calls == 1
    assert src.expiry == NOW + 3600
    assert src.next_renewal(NOW) == NOW + 1800
    assert src.get(NOW + 1799) == first and factory.calls == 1  # cached
    assert not src.needs_renewal(NOW + 1799.9)
    assert src.needs_renewal(NOW + 1800)
    factory.clock = NOW + 1800
    second = src.get(NOW + 1800)
    assert factory.calls == 2 and second != first
    assert src.next_renewal(NOW + 1800) == NOW + 1800 + 1800


@pytest.mark.parametrize("renew_at", [0.1, 0.5, 0.8, 0.99])
def test_token_source_renews_before_expiry(renew_at: float) -> None:
    src = TokenSource(Factory(ttl=600), renew_at=renew_at)
    src.get(NOW)
    due = src.next_renewal(NOW)
    assert due is not None and src.expiry is not None
    assert NOW < due < src.expiry
    assert due == pytest.approx(NOW + renew_at * 600)


def test_token_source_explicit_renew() -> None:
    factory = Factory()
    src = TokenSource(factory)
    src.get(NOW)
    src.renew(NOW + 5)
    assert factory.calls == 2
    assert src.next_renewal(NOW) == pytest.approx(NOW + 5 + 0.5 * 3595)


def test_token_source_expired_token_retried_shortly() -> None:
    factory = Factory(ttl=60)
    factory.clock = NOW - 120                      # the callable hands out stale tokens
    src = TokenSource(factory)
    src.get(NOW)
    assert src.next_renewal(NOW) == NOW + 1.0
    assert src.get(NOW + 0.5) and factory.calls == 1


def test_token_source_unknown_expiry_uses_fallback_ttl() -> None:
    src = TokenSource(lambda: "opaque-token", fallback_ttl=100)
    assert src.get(NOW) == "opaque-token"
    assert src.expiry is None
    assert src.next_renewal(NOW) == NOW + 50


def test_token_source_jwt_expiry() -> None:
    def b64(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    jwt = f"{b64({'alg': 'none'})}.{b64({'exp': int(NOW) + 1000})}.sig"
    assert token_expiry(jwt) == int(NOW) + 1000
    src = TokenSource(lambda: jwt, renew_at=0.8)
    src.get(NOW)
    assert src.next_renewal(NOW) == NOW + 800
    assert token_expiry("a.b.c") is None
    assert token_expiry(f"{b64({})}.{b64({'exp': 'soon'})}.x") is None


@pytest.mark.parametrize("renew_at", [0, 1, -0.5, 1.5])
def test_token_source_bad_renew_at(renew_at: float) -> None:
    with pytest.raises(ValueError, match="renew_at"):
        TokenSource("t", renew_at=renew_at)


def test_token_source_bad_inputs() -> None:
    with pytest.raises(ValueError):
        TokenSource("")
    with pytest.raises(TypeError):
        TokenSource(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fallback_ttl"):
        TokenSource("t", fallback_ttl=0)
    src = TokenSource(lambda: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="non-empty str"):
        src.get(NOW)


# --------------------------------------------------------------------------------------------
# Layering
# --------------------------------------------------------------------------------------------

FORBIDDEN = {"socket", "ssl", "asyncio", "threading", "gevent", "select", "time"}


@pytest.mark.parametrize("module", ["sas.py", "uris.py"])
def test_core_modules_do_not_import_io_or_clock(module: str) -> None:
    source = (Path(sas.__file__).parent / module).read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN
