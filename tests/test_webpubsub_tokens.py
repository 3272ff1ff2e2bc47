"""Web PubSub client access tokens: made as the server SDKs do, checked as the service does."""

from __future__ import annotations

import base64
import json
import sys
import time
from typing import Any

import jwt
import pytest

from hyco_proto.errors import TokenError
from hyco_proto.webpubsub.tokens import (
    DEFAULT_LEEWAY,
    ClientTokenClaims,
    WebPubSubTokenError,
    create_client_access,
    create_client_token,
    verify_client_token,
)

ENDPOINT = "http://127.0.0.1:8080"
KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG="
NOW = 1_796_000_000.0


def payload(token: str) -> dict[str, Any]:
    body = token.split(".")[1]
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return result


def forge(claims: dict[str, Any], key: str = KEY, algorithm: str = "HS256") -> str:
    token: str = jwt.encode(claims, key, algorithm=algorithm)
    return token


def good_claims(**over: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"aud": f"{ENDPOINT}/client/hubs/Hub1", "iat": int(NOW),
                              "exp": int(NOW) + 3600}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def refuse(token: str, *, status: int = 401, **kw: Any) -> str:
    args: dict[str, Any] = {"key": KEY, "endpoint": ENDPOINT, "hub": "Hub1", "now": NOW}
    args.update(kw)
    with pytest.raises(WebPubSubTokenError) as info:
        verify_client_token(token, **args)
    err = info.value
    assert isinstance(err, TokenError)
    assert err.status == status
    assert err.reason == str(err)
    # Neither the token nor any of its parts is echoed.
    for part in token.split("."):
        if len(part) >= 8:
            assert part not in err.reason
    return err.reason


def test_exact_header_and_claims() -> None:
    token = create_client_token(ENDPOINT, "Hub1", KEY, user_id="alice",
                                roles=["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup.g1"],
                                groups=["initial"], ttl=300, now=NOW + 0.9)
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    body = payload(token)
    assert list(body) == ["aud", "iat", "exp", "sub", "role", "webpubsub.group"]
    assert body == {"aud": "http://127.0.0.1:8080/client/hubs/Hub1", "iat": int(NOW),
                    "exp": int(NOW) + 300, "sub": "alice",
                    "role": ["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup.g1"],
                    "webpubsub.group": ["initial"]}
    # Signed with the UTF-8 bytes of the key text.
    assert jwt.decode(token, KEY.encode(), algorithms=["HS256"],
                      audience=body["aud"], options={"verify_exp": False}) == body


def test_minimal_claims_leave_out_empty_ones() -> None:
    token = create_client_token("https://Demo.WebPubSub.Azure.com/", "Hub_1", KEY, now=NOW)
    assert payload(token) == {"aud": "https://demo.webpubsub.azure.com/client/hubs/Hub_1",
                              "iat": int(NOW), "exp": int(NOW) + 3600}


def test_round_trip() -> None:
    token = create_client_token(ENDPOINT, "Hub1", KEY, user_id="bob",
                                roles=["webpubsub.sendToGroup"], groups=["a", "b"], now=NOW)
    claims = verify_client_token(token, key=KEY, endpoint=ENDPOINT, hub="Hub1", now=NOW + 10)
    assert claims == ClientTokenClaims(
        audience="http://127.0.0.1:8080/client/hubs/Hub1", user_id="bob",
        roles=("webpubsub.sendToGroup",), groups=("a", "b"), expires_at=int(NOW) + 3600,
        issued_at=int(NOW), not_before=None, extra={})
    assert claims.permissions.can_send("anything")
    assert not claims.permissions.can_join("a")


def test_anonymous_token_and_extra_claims() -> None:
    token = forge(good_claims(nbf=int(NOW), name="Ann", role="webpubsub.joinLeaveGroup.x"))
    claims = verify_client_token(token, key=KEY, endpoint=ENDPOINT, hub="Hub1", now=NOW)
    assert claims.user_id is None
    assert claims.roles == ("webpubsub.joinLeaveGroup.x",)  # a single string is one role
    assert claims.groups == ()
    assert claims.not_before == int(NOW)
    assert claims.extra == {"name": "Ann"}


def test_client_access_matches_sdk_shape() -> None:
    access = create_client_access(ENDPOINT, "Hub1", KEY, user_id="u", now=NOW)
    assert access.base_url == "ws://127.0.0.1:8080/client/hubs/Hub1"
    assert access.url == f"{access.base_url}?access_token={access.token}"
    assert access.token not in repr(access)
    verify_client_token(access.token, key=KEY, endpoint=ENDPOINT, hub="Hub1", now=NOW)


@pytest.mark.parametrize("endpoint,hub", [
    ("HTTP://127.0.0.1:8080/", "hub1"),           # case-insensitive, trailing slash
    ("ws://127.0.0.1:8080", "Hub1"),              # the ws form names the same endpoint
])
def test_audience_compared_like_the_emulator(endpoint: str, hub: str) -> None:
    token = create_client_token(ENDPOINT, "Hub1", KEY, now=NOW)
    verify_client_token(token, key=KEY, endpoint=endpoint, hub=hub, now=NOW)


def test_default_port_is_no_port() -> None:
    # .NET's Uri drops a default port from the audience; the Python SDK keeps what was written.
    token = forge(good_claims(aud="https://demo.webpubsub.azure.com/client/hubs/Hub1"))
    verify_client_token(token, key=KEY, endpoint="https://demo.webpubsub.azure.com:443",
                        hub="Hub1", now=NOW)
    token = forge(good_claims(aud=["https://other/client/hubs/Hub1",
                                   "https://demo.webpubsub.azure.com:443/client/hubs/hub1/"]))
    claims = verify_client_token(token, key=KEY, endpoint="https://demo.webpubsub.azure.com",
                                 hub="Hub1", now=NOW)
    assert claims.audience == "https://demo.webpubsub.azure.com:443/client/hubs/hub1/"


def test_leeway_on_both_sides() -> None:
    token = forge(good_claims(iat=int(NOW) - 60, exp=int(NOW)))
    verify_client_token(token, key=KEY, endpoint=ENDPOINT, hub="Hub1",
                        now=NOW + DEFAULT_LEEWAY - 1)
    token = forge(good_claims(iat=int(NOW) + 200, nbf=int(NOW) + 200))
    verify_client_token(token, key=KEY, endpoint=ENDPOINT, hub="Hub1", now=NOW)


def test_expired() -> None:
    token = create_client_token(ENDPOINT, "Hub1", KEY, ttl=60, now=NOW)
    reason = refuse(token, now=NOW + 60 + DEFAULT_LEEWAY)
    # UTC times, as the relay's refusals give them (NOW is 2026-11-30T00:53:20Z)
    assert reason == "token expired at 2026-11-30T00:54:20Z (now 2026-11-30T00:59:20Z)"
    assert "expired" in refuse(token, now=NOW + 61, leeway=0)


def test_not_yet_valid() -> None:
    assert refuse(forge(good_claims(nbf=int(NOW) + 3000))) == (
        "token is not valid before 2026-11-30T01:43:20Z (now 2026-11-30T00:53:20Z)")
    assert "issued in the future" in refuse(forge(good_claims(iat=int(NOW) + 3000,
                                                              exp=int(NOW) + 6000)))
    token = create_client_token(ENDPOINT, "Hub1", KEY, now=NOW + 10)
    assert "issued in the future" in refuse(token, leeway=0)


def test_wrong_key() -> None:
    token = create_client_token(ENDPOINT, "Hub1", "another key of more than 32 bytes", now=NOW)
    reason = refuse(token)
    assert "signature" in reason
    assert "another key" not in reason
    assert KEY not in reason


def test_wrong_audience() -> None:
    token = create_client_token(ENDPOINT, "Hub1", KEY, now=NOW)
    reason = refuse(token, hub="Hub2")
    assert reason == ("failed to validate audience: the token is for "
                      "'http://127.0.0.1:8080/client/hubs/Hub1', expected "
                      "'http://127.0.0.1:8080/client/hubs/Hub2'")
    assert "audience" in refuse(token, endpoint="http://127.0.0.1:8081")
    assert "audience" in refuse(token, endpoint="https://127.0.0.1:8080")
    # The ws form is not the audience the SDKs sign.
    assert "audience" in refuse(forge(good_claims(aud="ws://127.0.0.1:8080/client/hubs/Hub1")))
    assert "audience" in refuse(forge(good_claims(aud="http://127.0.0.1:8080/client/?hub=Hub1")))
    assert "'aud'" in refuse(forge(good_claims(aud=5)))


@pytest.mark.parametrize("token", [
    "garbage", "a.b.c", "a.b", "....", "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.W10.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
])
def test_garbage(token: str) -> None:
    reason = refuse(token)
    assert "malformed" in reason or "signature" in reason


def test_absurd_tokens() -> None:
    assert "absurdly far" in refuse(forge(good_claims(exp=int(NOW) + 400 * 86400)))
    assert "absurdly far" in refuse(forge(good_claims(exp=10**30)))
    verify_client_token(forge(good_claims(exp=10**30)), key=KEY, endpoint=ENDPOINT,
                        hub="Hub1", now=NOW, max_lifetime=None)
    assert "before it is issued" in refuse(forge(good_claims(iat=int(NOW), exp=int(NOW) - 1)),
                                           leeway=DEFAULT_LEEWAY)
    for bad in ("1796003600", True, None, [1]):
        claims = good_claims()
        claims["exp"] = bad
        reason = refuse(forge(claims))
        assert "'exp'" in reason
    # PyJWT's JSON parser accepts NaN and Infinity; they are not times.
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
    for literal in ("NaN", "Infinity", "-Infinity"):
        body = (f'{{"aud":"{ENDPOINT}/client/hubs/Hub1","exp":{literal}}}').encode()
        unsigned = header + "." + base64.urlsafe_b64encode(body).rstrip(b"=").decode()
        signature = jwt.api_jws.PyJWS().encode(body, KEY, algorithm="HS256").split(".")[2]
        reason = refuse(unsigned + "." + signature)
        assert "'exp'" in reason
    assert "too long" in refuse("a" * 20000)
    assert "no access token" in refuse("")


def test_missing_required_claims() -> None:
    assert "'exp'" in refuse(forge({"aud": f"{ENDPOINT}/client/hubs/Hub1"}))
    assert "'aud'" in refuse(forge({"exp": int(NOW) + 10}))


def test_other_algorithms_refused() -> None:
    claims = good_claims()
    assert "algorithm" in refuse(forge(claims, key=KEY * 2, algorithm="HS512"))
    unsigned = jwt.encode(claims, None, algorithm="none")
    assert "algorithm" in refuse(unsigned)


def test_bad_claim_types() -> None:
    assert "'sub'" in refuse(forge(good_claims(sub=42)))
    assert "'role'" in refuse(forge(good_claims(role=["ok", 3])))
    assert "'role'" in refuse(forge(good_claims(role={"a": 1})))
    reason = refuse(forge(good_claims(**{"webpubsub.group": ["ok", "  "]})), status=400)
    assert "webpubsub.group" in reason
    refuse(forge(good_claims(**{"webpubsub.group": "x" * 1025})), status=400)


def test_create_argument_checks() -> None:
    with pytest.raises(ValueError, match="hub"):
        create_client_token(ENDPOINT, "1hub", KEY, now=NOW)
    with pytest.raises(ValueError, match="endpoint"):
        create_client_token("ftp://x", "Hub1", KEY, now=NOW)
    with pytest.raises(ValueError, match="key"):
        create_client_token(ENDPOINT, "Hub1", "", now=NOW)
    with pytest.raises(ValueError, match="ttl"):
        create_client_token(ENDPOINT, "Hub1", KEY, ttl=0, now=NOW)
    with pytest.raises(ValueError, match="now"):
        create_client_token(ENDPOINT, "Hub1", KEY, now=float("nan"))
    with pytest.raises(ValueError, match="group"):
        create_client_token(ENDPOINT, "Hub1", KEY, groups=[""], now=NOW)
    with pytest.raises(TypeError, match="roles"):
        create_client_token(ENDPOINT, "Hub1", KEY, roles="webpubsub.sendToGroup", now=NOW)
    with pytest.raises(ValueError, match="user_id"):
        create_client_token(ENDPOINT, "Hub1", KEY, user_id="", now=NOW)


def test_verify_argument_checks() -> None:
    token = create_client_token(ENDPOINT, "Hub1", KEY, now=NOW)
    with pytest.raises(ValueError, match="key"):
        verify_client_token(token, key="", endpoint=ENDPOINT, hub="Hub1", now=NOW)
    with pytest.raises(ValueError, match="hub"):
        verify_client_token(token, key=KEY, endpoint=ENDPOINT, hub="", now=NOW)
    with pytest.raises(ValueError, match="now"):
        verify_client_token(token, key=KEY, endpoint=ENDPOINT, hub="Hub1", now=float("inf"))
    with pytest.raises(WebPubSubTokenError, match="must be a str"):
        verify_client_token(token.encode(), key=KEY, endpoint=ENDPOINT,  # type: ignore[arg-type]
                            hub="Hub1", now=NOW)


def test_missing_pyjwt_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jwt", None)
    with pytest.raises(ImportError, match=r"pip install PyJWT \(hyco_proto's webpubsub extra\)"):
        create_client_token(ENDPOINT, "Hub1", KEY, now=NOW)
    with pytest.raises(ImportError, match=r"pip install PyJWT \(hyco_proto's webpubsub extra\)"):
        verify_client_token("x.y.z", key=KEY, endpoint=ENDPOINT, hub="Hub1", now=NOW)


# --------------------------------------------------------------------------------------------
# Interop with the official Python server SDK (offline: access-key credential, no network)
# --------------------------------------------------------------------------------------------

def sdk_client(connection_string: str, hub: str) -> Any:
    from azure.messaging.webpubsubservice import WebPubSubServiceClient

    return WebPubSubServiceClient.from_connection_string(connection_string, hub=hub)


def test_sdk_token_verifies_and_is_byte_identical_to_ours() -> None:
    cs = f"Endpoint={ENDPOINT};AccessKey={KEY};Version=1.0;"
    got = sdk_client(cs, "Hub1").get_client_access_token(
        user_id="alice", roles=["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup.g1"],
        groups=["g1"], minutes_to_expire=5)
    now = time.time()
    claims = verify_client_token(got["token"], key=KEY, endpoint=ENDPOINT, hub="Hub1", now=now)
    assert claims.user_id == "alice"
    assert claims.roles == ("webpubsub.joinLeaveGroup", "webpubsub.sendToGroup.g1")
    assert claims.groups == ("g1",)
    assert claims.permissions.can_send("g1") and not claims.permissions.can_send("g2")
    # Same second, same inputs: the same bytes.
    iat = payload(got["token"])["iat"]
    ttl = payload(got["token"])["exp"] - iat
    access = create_client_access(ENDPOINT, "Hub1", KEY, user_id="alice",
                                  roles=["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup.g1"],
                                  groups=["g1"], ttl=ttl, now=iat)
    assert access.token == got["token"]
    assert access.base_url == got["baseUrl"]
    assert access.url == got["url"]


def test_sdk_port_key_and_our_token() -> None:
    cs = f"Endpoint=http://127.0.0.1;Port=8770;AccessKey={KEY};Version=1.0;"
    got = sdk_client(cs, "Hub1").get_client_access_token()
    assert got["baseUrl"] == "ws://127.0.0.1:8770/client/hubs/Hub1"
    verify_client_token(got["token"], key=KEY, endpoint="http://127.0.0.1:8770", hub="Hub1",
                        now=time.time())
    # The other way round: our token passes PyJWT's own audience check against the SDK's aud.
    ours = create_client_token("http://127.0.0.1:8770", "Hub1", KEY, user_id="u", now=time.time())
    decoded = jwt.decode(ours, KEY, algorithms=["HS256"], audience=payload(got["token"])["aud"])
    assert decoded["sub"] == "u"
