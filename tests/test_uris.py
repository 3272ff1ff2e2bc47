"""Relay URIs: builders, reject URIs, parsing, sb-hc-* stripping, connection strings."""

from __future__ import annotations

import dataclasses

import pytest

from hyco_proto.sas import create_relay_token, parse_token, verify_token
from hyco_proto.uris import (
    ConnectionString,
    RelayAddress,
    build_reject_uri,
    create_relay_base_uri,
    create_relay_http_uri,
    create_relay_listen_uri,
    create_relay_send_uri,
    parse_connection_string,
    parse_relay_uri,
    strip_relay_query,
)

NS = "contoso.servicebus.windows.net"
NOW = 1_700_000_000.0


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------

def test_base_uri_defaults() -> None:
    assert create_relay_base_uri(NS, "myhc") == f"wss://{NS}/$hc/myhc"


def test_listen_uri_defaults_and_order() -> None:
    assert create_relay_listen_uri(NS, "myhc") == f"wss://{NS}/$hc/myhc?sb-hc-action=listen"
    uri = create_relay_listen_uri(NS, "myhc", "SharedAccessSignature sr=a%2F&sig=b", "id 1")
    assert uri == (f"wss://{NS}/$hc/myhc?sb-hc-action=listen"
                   "&sb-hc-token=SharedAccessSignature%20sr%3Da%252F%26sig%3Db&sb-hc-id=id%201")
    assert create_relay_listen_uri(NS, "myhc", id="x").endswith("listen&sb-hc-id=x")


def test_send_uri() -> None:
    assert create_relay_send_uri(NS, "myhc") == f"wss://{NS}/$hc/myhc?sb-hc-action=connect"
    assert create_relay_send_uri(NS, "myhc", "t", "i") == (
        f"wss://{NS}/$hc/myhc?sb-hc-action=connect&sb-hc-token=t&sb-hc-id=i")


@pytest.mark.parametrize(("kwargs", "prefix"), [
    ({"scheme": "ws", "port": 9090}, "ws://ns:9090/"),
    ({"scheme": "WSS", "port": 443}, "wss://ns:443/"),
    ({"scheme": "wss"}, "wss://ns/"),
])
def test_scheme_and_port_honoured(kwargs: dict[str, object], prefix: str) -> None:
    assert create_relay_listen_uri("ns", "myhc", **kwargs).startswith(  # type: ignore[arg-type]
        prefix + "$hc/myhc?")


@pytest.mark.parametrize(("namespace", "port", "authority"), [
    ("127.0.0.1:9090", None, "127.0.0.1:9090"),
    ("127.0.0.1:9090", 9090, "127.0.0.1:9090"),   # same port given twice: fine, written once
    ("ns", 9443, "ns:9443"),
    ("[::1]", 9090, "[::1]:9090"),
    ("[::1]:9090", None, "[::1]:9090"),
    (" ns ", None, "ns"),
])
def test_namespace_with_port(namespace: str, port: int | None, authority: str) -> None:
    assert create_relay_send_uri(namespace, "hc", scheme="ws", port=port) == (
        f"ws://{authority}/$hc/hc?sb-hc-action=connect")


def test_conflicting_port() -> None:
    with pytest.raises(ValueError, match=r"already names port 9090; port=443 conflicts"):
        create_relay_listen_uri("127.0.0.1:9090", "hc", port=443)


@pytest.mark.parametrize(("namespace", "port", "message"), [
    ("", None, "non-empty host name"),
    ("   ", None, "non-empty host name"),
    ("sb://ns/", None, "not a URI"),
    ("wss://ns", None, "not a URI"),
    ("ns:abc", None, "is not a number"),
    ("ns:", None, "is not a number"),
    ("ns:0", None, "1 to 65535"),
    ("ns:70000", None, "1 to 65535"),
    ("ns", 0, "1 to 65535"),
    ("ns", 65536, "1 to 65535"),
    ("ns", True, "1 to 65535"),
    ("ns", "443", "1 to 65535"),
    ("::1", None, "brackets"),
    ("[::1", None, "unterminated"),
    ("[::1]x", None, "bad port"),
    ("ns/path", None, "not a valid host"),
    ("user@ns", None, "not a valid host"),
    ("n s", None, "not a valid host"),
    (":9090", None, "not a valid host"),
])
def test_bad_namespace_or_port(namespace: str, port: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_relay_listen_uri(namespace, "hc", port=port)  # type: ignore[arg-type]


@pytest.mark.parametrize(("func", "scheme"), [
    (create_relay_listen_uri, "https"), (create_relay_send_uri, "sb"),
    (create_relay_http_uri, "wss"), (create_relay_base_uri, "ftp"),
])
def test_bad_scheme(func: object, scheme: str) -> None:
    with pytest.raises(ValueError, match="scheme must be one of"):
        func("ns", "hc", scheme=scheme)  # type: ignore[operator]


@pytest.mark.parametrize(("path", "written"), [
    ("myhc", "myhc"),
    ("/myhc", "myhc"),
    ("myhc/a/b", "myhc/a/b"),
    ("myhc/a b", "myhc/a%20b"),
    ("myhc/ü", "myhc/%C3%BC"),
    ("myhc/a?b#c", "myhc/a%3Fb%23c"),
    ("myhc/a%20b", "myhc/a%20b"),
    ("myhc/x:y@z;p=1", "myhc/x:y@z;p=1"),
])
def test_path_encoding(path: str, written: str) -> None:
    assert create_relay_base_uri("ns", path) == f"wss://ns/$hc/{written}"


@pytest.mark.parametrize("path", ["", "/", "//x"])
def test_bad_path(path: str) -> None:
    with pytest.raises(ValueError, match="must name a hybrid connection"):
        create_relay_base_uri("ns", path)


def test_path_type() -> None:
    with pytest.raises(TypeError):
        create_relay_base_uri("ns", None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("query", "written"), [
    ("foo=bar", "foo=bar&"),
    ("?foo=bar&x", "foo=bar&x&"),
    ({"a": "1 2", "b": "ü"}, "a=1%202&b=%C3%BC&"),
    ([("a", "1"), ("a", "2")], "a=1&a=2&"),
    ("", ""),
    (None, ""),
])
def test_send_uri_app_query_precedes_relay_params(query: object, written: str) -> None:
    uri = create_relay_send_uri("ns", "hc/sfx", query=query)  # type: ignore[arg-type]
    assert uri == f"wss://ns/$hc/hc/sfx?{written}sb-hc-action=connect"


@pytest.mark.parametrize("query", ["sb-hc-token=x", {"SB-HC-ID": "1"}, "a=1&sb-hc-action=x"])
def test_app_query_rejects_relay_keys(query: object) -> None:
    with pytest.raises(ValueError, match="reserved"):
        create_relay_send_uri("ns", "hc", query=query)  # type: ignore[arg-type]


def test_http_uri() -> None:
    assert create_relay_http_uri(NS, "myhc") == f"https://{NS}/myhc"
    assert create_relay_http_uri(NS, "myhc/a", "tok en", "i") == (
        f"https://{NS}/myhc/a?sb-hc-token=tok%20en&sb-hc-id=i")
    assert create_relay_http_uri("127.0.0.1", "hc", scheme="http", port=9090,
                                 query="x=1") == "http://127.0.0.1:9090/hc?x=1"
    assert create_relay_http_uri("ns", "hc", "t", query={"x": "1"}) == (
        "https://ns/hc?x=1&sb-hc-token=t")


# --------------------------------------------------------------------------------------------
# Reject URIs
# --------------------------------------------------------------------------------------------

ACCEPT = "wss://g1-prod-sb.servicebus.windows.net:443/$hc/myhc?sb-hc-action=accept&sb-hc-id=G_G0"


def test_reject_uri() -> None:
    assert build_reject_uri(ACCEPT, 403, "Go away: not today") == (
        ACCEPT + "&sb-hc-statusCode=403&sb-hc-statusDescription=Go%20away%3A%20not%20today")


@pytest.mark.parametrize(("address", "expected"), [
    ("ws://h/$hc/x", "ws://h/$hc/x?sb-hc-statusCode=410&sb-hc-statusDescription=ü%C3%BC"),
    ("ws://h/$hc/x?", "ws://h/$hc/x?sb-hc-statusCode=410&sb-hc-statusDescription=ü%C3%BC"),
    ("ws://h/$hc/x?a&", "ws://h/$hc/x?a&sb-hc-statusCode=410&sb-hc-statusDescription=ü%C3%BC"),
    ("ws://h/$hc/x?a#f", "ws://h/$hc/x?a&sb-hc-statusCode=410&sb-hc-statusDescription=ü%C3%BC"),
])
def test_reject_uri_separators(address: str, expected: str) -> None:
    assert build_reject_uri(address, 410, "ü") == expected.replace("=ü%C3%BC", "=%C3%BC")


@pytest.mark.parametrize("code", [99, 600, 0, -1, True, "403", 403.0, None])
def test_reject_uri_bad_status(code: object) -> None:
    with pytest.raises(ValueError, match="100 to 599"):
        build_reject_uri(ACCEPT, code, "x")  # type: ignore[arg-type]


@pytest.mark.parametrize("code", [100, 400, 599])
def test_reject_uri_status_bounds(code: int) -> None:
    assert f"sb-hc-statusCode={code}&" in build_reject_uri(ACCEPT, code, "")


def test_reject_uri_bad_address_or_description() -> None:
    with pytest.raises(ValueError, match="accept message's address"):
        build_reject_uri("not a uri", 400, "x")
    with pytest.raises(TypeError):
        build_reject_uri(ACCEPT, 400, None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# strip_relay_query (§1.5)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("original", "output"), [
    # Rows of the live-service table (Azure/azure-relay-dotnet HybridRequestTests.QueryString).
    ("?a=1&a=2", "?a=1&a=2"),
    ("?a=1&a=2&", "?a=1&a=2&"),
    ("?&&&", "?&&&"),
    ("?foo=bar", "?foo=bar"),
    ("?foo=bar&", "?foo=bar&"),
    ("?&foo=bar", "?&foo=bar"),
    ("?sb-hc-id=1", ""),
    ("?sb-hc-id=1&custom=value", "?custom=value"),
    ("?custom=value&sb-hc-id=1", "?custom=value"),
    ("?sb-hc-undefined", "?sb-hc-undefined"),
    ("?sb-hc-undefined=true", ""),
    ("?sb-hc-whatever=", ""),
    ("?sb-hc-whatever=&foo=bar", "?foo=bar"),
    ("?CustomValue", "?CustomValue"),
    ("?custom-Value", "?custom-Value"),
    ("?custom&value", "?custom&value"),
    ("?&custom&value&", "?&custom&value&"),
    ("?&&value&&", "?&&value&&"),
    ("?+", "?+"),
    ("?%2B", "?%2B"),
    ("?%20", "?%20"),
    ("?%2f%3a%3d%26", "?%2f%3a%3d%26"),
    ("?key='value'", "?key='value'"),
    ('?key="value"', "?key=%22value%22"),
    ("?key=<value>", "?key=%3Cvalue%3E"),
    ("?api-version=abc", "?api-version=abc"),
    ("?name=%C3%b8", "?name=%C3%B8"),
    ("?name=\u00f8", "?name=%C3%B8"),
    # Further cases of the same rules.
    ("?SB-HC-Token=x&a=1", "?a=1"),                 # prefix is case-insensitive
    ("?Sb-Hc-Action=listen", ""),
    ("?sb%2Dhc-token=x&a", "?a"),                   # key compared percent-decoded
    ("?sb-hc-token", "?sb-hc-token"),               # no '=': kept
    ("?a=sb-hc-id=1", "?a=sb-hc-id=1"),             # only keys count
    ("?sb-hc=1", "?sb-hc=1"),                       # not the full prefix
    ("?x=1&sb-hc-action=connect&sb-hc-id=2&y=2", "?x=1&y=2"),
    ("?b=2&a=1&b=3", "?b=2&a=1&b=3"),
    ("?k=a b", "?k=a%20b"),
    ("?k=😀", "?k=%F0%9F%98%80"),
    ("?k=%e2%82%ac%41%7e", "?k=%E2%82%AC%41%7e"),
    ("?k=\x01", "?k=%01"),
    ("?", ""),
    ("", ""),
    ("foo=bar&sb-hc-id=1", "foo=bar"),              # without the leading '?'
    ("sb-hc-id=1", ""),
])
def test_strip_relay_query(original: str, output: str) -> None:
    assert strip_relay_query(original) == output


def test_strip_relay_query_errors() -> None:
    with pytest.raises(TypeError):
        strip_relay_query(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="surrogate"):
        strip_relay_query("?a=\ud800")


# --------------------------------------------------------------------------------------------
# parse_relay_uri
# --------------------------------------------------------------------------------------------

def test_parse_listen_uri() -> None:
    uri = create_relay_listen_uri(NS, "myhc", "SharedAccessSignature sr=a&sig=b+c", "trk")
    addr = parse_relay_uri(uri)
    assert addr == RelayAddress(
        scheme="wss", host=NS, port=None, hybrid_connection="myhc", path_suffix="",
        action="listen", id="trk", token="SharedAccessSignature sr=a&sig=b+c", app_query="",
        logical_path="/myhc")
    assert addr.request_url() == f"sb://{NS}/myhc"
    assert addr.namespace == NS


def test_parse_send_uri_with_suffix_and_query() -> None:
    uri = ("ws://127.0.0.1:9090/$hc/myhc/some/suffix?foo=bar&sb-hc-action=connect"
           "&x=%C3%b8&&sb-hc-token=t")
    addr = parse_relay_uri(uri)
    assert (addr.scheme, addr.host, addr.port) == ("ws", "127.0.0.1", 9090)
    assert (addr.hybrid_connection, addr.path_suffix) == ("myhc", "some/suffix")
    assert addr.logical_path == "/myhc/some/suffix"
    assert (addr.action, addr.token, addr.id) == ("connect", "t", None)
    assert addr.app_query == "foo=bar&x=%C3%B8&"
    assert addr.request_url() == "sb://127.0.0.1/myhc/some/suffix?foo=bar&x=%C3%B8&"
    assert addr.request_target == "/myhc/some/suffix?foo=bar&x=%C3%B8&"
    assert addr.namespace == "127.0.0.1:9090"


def test_parse_accept_address() -> None:
    addr = parse_relay_uri(ACCEPT)
    assert (addr.host, addr.port, addr.action, addr.id) == (
        "g1-prod-sb.servicebus.windows.net", 443, "accept", "G_G0")
    assert addr.app_query == ""


@pytest.mark.parametrize(("uri", "hc", "suffix", "logical"), [
    ("wss://ns/$hc/myhc/", "myhc", "", "/myhc/"),        # trailing slash kept
    ("wss://ns/$HC/myhc", "myhc", "", "/myhc"),          # prefix case-insensitive
    ("wss://ns/$servicebus/hybridconnection/myhc/x", "myhc", "x", "/myhc/x"),  # legacy alias
    ("https://ns/myhc/a/b?x=1", "myhc", "a/b", "/myhc/a/b"),   # HTTP endpoint, no $hc
    ("http://127.0.0.1:9090/$hc/myhc", "myhc", "", "/myhc"),
    ("sb://ns/myhc", "myhc", "", "/myhc"),
    ("wss://ns/$hc/My%20Hc/a%2Fb", "My%20Hc", "a%2Fb", "/My%20Hc/a%2Fb"),  # as written
    ("WSS://NS.Example:443/$hc/x", "x", "", "/x"),
])
def test_parse_paths(uri: str, hc: str, suffix: str, logical: str) -> None:
    addr = parse_relay_uri(uri)
    assert (addr.hybrid_connection, addr.path_suffix, addr.logical_path) == (hc, suffix, logical)


def test_parse_host_normalised_and_ipv6() -> None:
    addr = parse_relay_uri("WSS://NS.Example:443/$hc/x")
    assert (addr.scheme, addr.host) == ("wss", "ns.example")
    v6 = parse_relay_uri("ws://[::1]:9090/$hc/x?a=1")
    assert (v6.host, v6.port, v6.namespace) == ("::1", 9090, "[::1]:9090")
    assert v6.request_url() == "sb://[::1]/x?a=1"


def test_parse_params_case_insensitive_first_wins_and_decoded() -> None:
    addr = parse_relay_uri("wss://ns/$hc/x?SB-HC-ACTION=connect&sb-hc-action=listen"
                           "&sb-hc-id=a%20b&sb-hc-token=SharedAccessSignature+sr%3Dx%252F")
    assert addr.action == "connect"
    assert addr.id == "a b"
    assert addr.token == "SharedAccessSignature sr=x%2F"


def test_parse_roundtrips_builders() -> None:
    token = create_relay_token("ws://127.0.0.1:9090/$hc/hc", "r", "k", now=NOW)
    uri = create_relay_send_uri("127.0.0.1", "hc/a", token, "id-1", scheme="ws", port=9090,
                                query={"q": "v w"})
    addr = parse_relay_uri(uri)
    assert addr.token == token
    assert parse_token(addr.token).expiry == 1_700_003_600
    assert (addr.id, addr.action, addr.app_query) == ("id-1", "connect", "q=v%20w")
    verify_token(token, keys={"r": "k"}, target_path=addr.logical_path, now=NOW)


@pytest.mark.parametrize(("uri", "message"), [
    ("ftp://ns/$hc/x", "scheme must be one of"),
    ("ns/$hc/x", "scheme must be one of"),
    ("wss:///$hc/x", "has no host"),
    ("wss://ns/myhc", r"start with '/\$hc/'"),
    ("ws://ns/", r"start with '/\$hc/'"),
    ("wss://ns/$hc/", "names no hybrid connection"),
    ("wss://ns/$hc", "names no hybrid connection"),
    ("wss://ns/$hc//x", "names no hybrid connection"),
    ("https://ns/", "names no hybrid connection"),
    ("wss://ns:99999/$hc/x", "not a relay URI"),
    ("wss://ns:abc/$hc/x", "not a relay URI"),
])
def test_parse_rejects(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_relay_uri(uri)


def test_parse_type_error() -> None:
    with pytest.raises(TypeError):
        parse_relay_uri(None)  # type: ignore[arg-type]


def test_relay_address_is_frozen() -> None:
    addr = parse_relay_uri("wss://ns/$hc/x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        addr.host = "y"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Connection strings
# --------------------------------------------------------------------------------------------

KEY = "abc+/def=="
CS = f"Endpoint=sb://{NS}/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={KEY};EntityPath=myhc"


def test_connection_string_canonical() -> None:
    cs = parse_connection_string(CS)
    assert cs == ConnectionString(
        endpoint=f"sb://{NS}/", host=NS, port=None, namespace=NS,
        shared_access_key_name="RootManageSharedAccessKey", shared_access_key=KEY,
        entity_path="myhc", shared_access_signature=None)


@pytest.mark.parametrize("text", [
    CS + ";",                                               # trailing ';'
    CS + ";;",
    " " + CS.replace(";", " ; ").replace("=", " = ", 1) + " ",  # whitespace
    CS.lower().replace(KEY.lower(), KEY).replace("rootmanagesharedaccesskey",
                                                 "RootManageSharedAccessKey"),
    CS.upper().replace(KEY.upper(), KEY).replace("ROOTMANAGESHAREDACCESSKEY",
                                                 "RootManageSharedAccessKey")
    .replace(NS.upper(), NS).replace("MYHC", "myhc").replace("SB://", "sb://"),
    f"EntityPath=myhc;SharedAccessKey={KEY};SharedAccessKeyName=RootManageSharedAccessKey;"
    f"Endpoint=sb://{NS}",                                  # any order, no trailing '/'
    CS.replace("EntityPath=myhc", "EntityPath=/myhc/"),
])
def test_connection_string_tolerant(text: str) -> None:
    cs = parse_connection_string(text)
    assert (cs.host, cs.shared_access_key_name, cs.shared_access_key, cs.entity_path) == (
        NS, "RootManageSharedAccessKey", KEY, "myhc")


def test_connection_string_port_sas_extras() -> None:
    cs = parse_connection_string("Endpoint=sb://127.0.0.1:9090/;SharedAccessSignature="
                                 "SharedAccessSignature sr=a&sig=b=&se=1&skn=c;"
                                 "OperationTimeout=00:01:00")
    assert (cs.host, cs.port, cs.namespace, cs.endpoint) == (
        "127.0.0.1", 9090, "127.0.0.1:9090", "sb://127.0.0.1:9090/")
    assert cs.shared_access_signature == "SharedAccessSignature sr=a&sig=b=&se=1&skn=c"
    assert cs.shared_access_key_name is None and cs.entity_path is None
    assert cs.extras == (("OperationTimeout", "00:01:00"),)
    assert cs.create_token() == cs.shared_access_signature


def test_connection_string_anonymous() -> None:
    cs = parse_connection_string(f"Endpoint=sb://{NS}/;EntityPath=hc")
    assert cs.shared_access_key is None
    with pytest.raises(ValueError, match="no SharedAccessKeyName/SharedAccessKey"):
        cs.create_token()


@pytest.mark.parametrize(("text", "message"), [
    ("", "no Endpoint"),
    ("SharedAccessKeyName=a;SharedAccessKey=b", "no Endpoint"),
    ("Endpoint=;SharedAccessKeyName=a", "no Endpoint"),
    (f"Endpoint={NS}", "must look like 'sb://<namespace>/'"),
    (f"Endpoint=https://{NS}/", "must look like 'sb://<namespace>/'"),
    ("Endpoint=sb:///", "must look like 'sb://<namespace>/'"),
    (f"Endpoint=sb://{NS}/myhc", "must not have a path"),
    (f"Endpoint=sb://{NS}/?x=1", "must not have a path"),
    ("Endpoint=sb://ns:99999/", "is not valid"),
    (f"Endpoint=sb://{NS}/;SharedAccessKeyName=a", "SharedAccessKeyName but no SharedAccessKey"),
    (f"Endpoint=sb://{NS}/;SharedAccessKey=b", "SharedAccessKey but no SharedAccessKeyName"),
    (f"Endpoint=sb://{NS}/;SharedAccessKeyName=a;SharedAccessKey=", "but no SharedAccessKey"),
    (f"Endpoint=sb://{NS}/;endpoint=sb://x/", "Endpoint more than once"),
    (f"Endpoint=sb://{NS}/;garbage", "'garbage' is not Key=Value"),
    (f"Endpoint=sb://{NS}/;=value", "is not Key=Value"),
])
def test_connection_string_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_connection_string(text)


def test_connection_string_type_error() -> None:
    with pytest.raises(TypeError):
        parse_connection_string(None)  # type: ignore[arg-type]


def test_connection_string_uris() -> None:
    cs = parse_connection_string(CS)
    assert cs.listen_uri() == f"wss://{NS}/$hc/myhc?sb-hc-action=listen"
    assert cs.send_uri("other/sfx", token="t", query="a=1") == (
        f"wss://{NS}/$hc/other/sfx?a=1&sb-hc-action=connect&sb-hc-token=t")
    assert cs.http_uri(id="i") == f"https://{NS}/myhc?sb-hc-id=i"
    local = parse_connection_string("Endpoint=sb://127.0.0.1:9090/;EntityPath=hc")
    assert local.listen_uri(scheme="ws") == "ws://127.0.0.1:9090/$hc/hc?sb-hc-action=listen"
    no_entity = parse_connection_string(f"Endpoint=sb://{NS}/")
    with pytest.raises(ValueError, match="no EntityPath; pass path="):
        no_entity.listen_uri()


def test_connection_string_tokens() -> None:
    cs = parse_connection_string(CS)
    token = cs.create_token(expiration_seconds=60, now=NOW)
    assert token == create_relay_token(f"http://{NS}/myhc", "RootManageSharedAccessKey", KEY,
                                       60, now=NOW)
    parsed = verify_token(token, keys={"RootManageSharedAccessKey": KEY},
                          target_path="/myhc/x", now=NOW, host=NS)
    assert parsed.resource == f"http://{NS}/myhc"
    wide = parse_connection_string(f"Endpoint=sb://{NS}/;SharedAccessKeyName=r;"
                                   f"SharedAccessKey={KEY}").create_token(now=NOW)
    assert parse_token(wide).resource == f"http://{NS}/"
    other = cs.create_token("other", now=NOW)
    assert parse_token(other).resource == f"http://{NS}/other"
