"""Web PubSub endpoints, client URLs, recovery URLs and connection strings."""

from __future__ import annotations

import pytest

from hyco_proto.webpubsub.endpoints import (
    ClientUrl,
    build_client_url,
    build_recovery_url,
    client_audience,
    client_endpoint,
    format_connection_string,
    normalize_endpoint,
    parse_client_url,
    parse_connection_string,
    validate_hub_name,
)

KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG="


@pytest.mark.parametrize("given,http,ws", [
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080", "ws://127.0.0.1:8080"),
    ("https://Demo.WebPubSub.Azure.com/", "https://demo.webpubsub.azure.com",
     "wss://demo.webpubsub.azure.com"),
    ("wss://demo.webpubsub.azure.com:443", "https://demo.webpubsub.azure.com:443",
     "wss://demo.webpubsub.azure.com:443"),
    ("WS://localhost:9", "http://localhost:9", "ws://localhost:9"),
    ("http://[::1]:8080", "http://[::1]:8080", "ws://[::1]:8080"),
])
def test_endpoint_forms(given: str, http: str, ws: str) -> None:
    assert normalize_endpoint(given) == http
    assert client_endpoint(given) == ws


@pytest.mark.parametrize("bad", ["ftp://x", "127.0.0.1:8080", "http://", "http://h/path",
                                 "http://h?x=1", "http://u@h", "http://h:99999"])
def test_bad_endpoints(bad: str) -> None:
    with pytest.raises(ValueError, match="endpoint"):
        normalize_endpoint(bad)


def test_audience() -> None:
    assert client_audience("HTTP://127.0.0.1:8080/", "Hub1") == \
        "http://127.0.0.1:8080/client/hubs/Hub1"
    assert client_audience("wss://x.webpubsub.azure.com", "h") == \
        "https://x.webpubsub.azure.com/client/hubs/h"


@pytest.mark.parametrize("hub", ["h", "Hub_1", "a`,.[]", "A" * 128])
def test_valid_hub_names(hub: str) -> None:
    assert validate_hub_name(hub) == hub


@pytest.mark.parametrize("hub", ["", "1hub", "_h", "h-1", "h/1", "h 1", "A" * 129, "hé"])
def test_invalid_hub_names(hub: str) -> None:
    with pytest.raises(ValueError, match="hub name"):
        validate_hub_name(hub)


def test_build_client_urls() -> None:
    assert build_client_url("http://127.0.0.1:8080", "Hub1") == \
        "ws://127.0.0.1:8080/client/hubs/Hub1"
    assert build_client_url("https://x.webpubsub.azure.com", "Hub1", access_token="a.b.c") == \
        "wss://x.webpubsub.azure.com/client/hubs/Hub1?access_token=a.b.c"
    assert build_client_url("https://x.webpubsub.azure.com", "Hub1", access_token="a.b.c",
                            hub_in_query=True) == \
        "wss://x.webpubsub.azure.com/client/?hub=Hub1&access_token=a.b.c"
    assert build_client_url("http://h", "h[1]", access_token="a+b/c") == \
        "ws://h/client/hubs/h%5B1%5D?access_token=a%2Bb%2Fc"
    with pytest.raises(ValueError, match="hub"):
        build_client_url("http://h", "1")


@pytest.mark.parametrize("hub_in_query", [False, True])
def test_client_url_round_trip(hub_in_query: bool) -> None:
    url = build_client_url("http://127.0.0.1:8080", "h[1]", access_token="x y+z",
                           hub_in_query=hub_in_query)
    parsed = parse_client_url(url)
    assert parsed.hub == "h[1]"
    assert parsed.hub_in_query is hub_in_query
    assert parsed.access_token == "x y+z"
    assert parsed.endpoint == "http://127.0.0.1:8080"
    assert not parsed.is_recovery


def test_parse_request_targets() -> None:
    parsed = parse_client_url("/client/hubs/Hub1?access_token=t&webpubsub_mode=sendToGroup"
                              "&group=g&noEcho=true")
    assert parsed == ClientUrl(
        hub="Hub1", hub_in_query=False, access_token="t", connection_id=None,
        reconnection_token=None,
        query=(("access_token", "t"), ("webpubsub_mode", "sendToGroup"), ("group", "g"),
               ("noEcho", "true")),
        endpoint=None)
    assert parsed.get("group") == "g" and parsed.get("nope") is None
    assert parse_client_url("/Client/Hubs/Hub1/").hub == "Hub1"
    assert parse_client_url("/client?hub=Hub1").hub == "Hub1"
    assert parse_client_url("/client/?hub=Hub1#frag").hub_in_query
    assert parse_client_url("https://x.webpubsub.azure.com/client/hubs/h").endpoint == \
        "https://x.webpubsub.azure.com"
    # In the path form a hub query parameter is just a parameter.
    assert parse_client_url("/client/hubs/a?hub=b").hub == "a"


@pytest.mark.parametrize("bad,match", [
    ("/api/hubs/h", "client path"),
    ("/clients/mqtt/hubs/h", "client path"),
    ("/client/hubs/", "hub name"),
    ("/client/hubs/a/b", "hub name"),
    ("/client/", "'hub'"),
    ("/client/?hub=", "empty 'hub'"),
    ("/client/hubs/h?access_token=a&access_token=b", "more than once"),
    ("/client/hubs/h?awps_connection_id=c", "both"),
    ("/client/hubs/h?awps_reconnection_token=r", "both"),
    ("ftp://h/client/hubs/h", "endpoint"),
])
def test_parse_refuses(bad: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_client_url(bad)


def test_recovery_url_keeps_the_original_query() -> None:
    url = "ws://127.0.0.1:8080/client/hubs/Hub1?access_token=a.b.c"
    recovery = build_recovery_url(url, "conn/1", "tok+en=")
    assert recovery == ("ws://127.0.0.1:8080/client/hubs/Hub1?access_token=a.b.c"
                        "&awps_connection_id=conn%2F1&awps_reconnection_token=tok%2Ben%3D")
    parsed = parse_client_url(recovery)
    assert parsed.is_recovery
    assert (parsed.connection_id, parsed.reconnection_token) == ("conn/1", "tok+en=")
    assert parsed.access_token == "a.b.c"
    # Recovering again replaces the earlier awps_* parameters.
    again = build_recovery_url(recovery, "c2", "t2")
    assert again == ("ws://127.0.0.1:8080/client/hubs/Hub1?access_token=a.b.c"
                     "&awps_connection_id=c2&awps_reconnection_token=t2")
    assert build_recovery_url("wss://h/client/hubs/x", "c", "t") == \
        "wss://h/client/hubs/x?awps_connection_id=c&awps_reconnection_token=t"
    assert build_recovery_url("wss://h/client/?hub=x", "c", "t") == \
        "wss://h/client/?hub=x&awps_connection_id=c&awps_reconnection_token=t"
    with pytest.raises(ValueError, match="awps_connection_id"):
        build_recovery_url(url, "", "t")
    with pytest.raises(ValueError, match="client path"):
        build_recovery_url("ws://h/other", "c", "t")


def test_emulator_connection_string() -> None:
    text = f"Endpoint=http://127.0.0.1:8080;AccessKey={KEY};Version=1.0;"
    cs = parse_connection_string(text)
    assert cs.endpoint == "http://127.0.0.1:8080"
    assert cs.access_key == KEY
    assert cs.version == "1.0"
    assert cs.client_endpoint == "ws://127.0.0.1:8080"
    assert cs.client_url("Hub1") == "ws://127.0.0.1:8080/client/hubs/Hub1"
    assert cs.to_string() == text
    assert KEY not in repr(cs)
    assert format_connection_string("http://127.0.0.1:8080/", KEY) == text


def test_connection_string_variants() -> None:
    cs = parse_connection_string(f" endpoint = https://X.webpubsub.azure.com/ ; accesskey={KEY}"
                                 " ;; AuthType=x; port=8443")
    assert cs.endpoint == "https://x.webpubsub.azure.com:8443"
    assert cs.access_key == KEY and cs.version is None
    assert cs.extras == (("AuthType", "x"),)
    # As the server SDKs: Port is added to the endpoint; no scheme means https.
    assert parse_connection_string("Endpoint=http://127.0.0.1;Port=8770;AccessKey=k;"
                                   "Version=1.0;").client_url("Hub1") == \
        "ws://127.0.0.1:8770/client/hubs/Hub1"
    assert parse_connection_string("Endpoint=x.webpubsub.azure.com;AccessKey=k").endpoint == \
        "https://x.webpubsub.azure.com"
    entra = parse_connection_string("Endpoint=https://x.webpubsub.azure.com;AuthType=aad;"
                                    "Version=1.0;")
    assert entra.access_key is None
    with pytest.raises(ValueError, match="AccessKey"):
        entra.to_string()


@pytest.mark.parametrize("bad,match", [
    ("AccessKey=k", "no Endpoint"),
    ("Endpoint=http://h;Endpoint=http://g", "more than once"),
    ("Endpoint=http://h;garbage", "Key=Value"),
    ("Endpoint=http://h;Port=0", "Port"),
    ("Endpoint=http://h;Port=x", "Port"),
    ("Endpoint=ftp://h;AccessKey=k", "endpoint"),
])
def test_bad_connection_strings(bad: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_connection_string(bad)


def test_connection_string_errors_do_not_show_the_key() -> None:
    with pytest.raises(ValueError) as info:
        parse_connection_string(f"Endpoint=http://h;AccessKey={KEY};AccessKey={KEY}")
    assert KEY not in str(info.value)
