"""One rule for ws:// versus wss:// when no scheme is given: the URI helpers and the CLI agree."""

from __future__ import annotations

import pytest

from hyco_proto import cli
from hyco_proto.sas import create_relay_token
from hyco_proto.uris import (
    create_relay_base_uri,
    create_relay_http_uri,
    create_relay_listen_uri,
    create_relay_send_uri,
    default_scheme,
    is_loopback_host,
    parse_connection_string,
)

NS = "contoso.servicebus.windows.net"

CASES = [
    ("127.0.0.1", 9090, "ws"),
    ("localhost", 9090, "ws"),
    ("LocalHost.", 8080, "ws"),
    ("relay.localhost", 9090, "ws"),
    ("127.1.2.3", 9090, "ws"),
    ("::1", 9090, "ws"),
    ("[::1]", 9090, "ws"),
    ("localhost", None, "wss"),  # no port: 443, a TLS port
    ("127.0.0.1", 443, "wss"),
    ("127.0.0.1", 9443, "wss"),  # the emulator's TLS port
    (NS, None, "wss"),
    (NS, 9090, "wss"),
    ("10.0.0.5", 9090, "wss"),
    ("128.0.0.1", 9090, "wss"),
    ("localhost.example.com", 9090, "wss"),
    ("::2", 9090, "wss"),
]


@pytest.mark.parametrize(("host", "port", "scheme"), CASES)
def test_default_scheme(host: str, port: int | None, scheme: str) -> None:
    assert default_scheme(host, port) == scheme


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True), ("[::1]", True), ("127.255.0.1", True), ("a.b.localhost.", True),
    ("", False), ("local", False), ("notlocalhost", False), ("0.0.0.0", False),
])
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(("host", "port", "scheme"), CASES)
def test_cli_uses_the_same_rule(host: str, port: int | None, scheme: str) -> None:
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    namespace = shown if port is None else f"{shown}:{port}"
    args = cli.build_parser().parse_args(["send", "--namespace", namespace, "--path", "hc"])
    assert cli._endpoint(args).scheme == scheme


def test_cli_tls_options_still_mean_wss() -> None:
    args = cli.build_parser().parse_args(
        ["send", "--namespace", "127.0.0.1:9090", "--path", "hc", "--insecure"])
    assert cli._endpoint(args).scheme == "wss"


def test_builders_pick_ws_for_a_local_emulator() -> None:
    assert create_relay_base_uri("127.0.0.1:9090", "hc") == "ws://127.0.0.1:9090/$hc/hc"
    assert create_relay_listen_uri("localhost", "hc", port=9090) == (
        "ws://localhost:9090/$hc/hc?sb-hc-action=listen")
    assert create_relay_send_uri("[::1]:9090", "hc", "t") == (
        "ws://[::1]:9090/$hc/hc?sb-hc-action=connect&sb-hc-token=t")
    assert create_relay_http_uri("127.0.0.1:9090", "hc") == "http://127.0.0.1:9090/hc"


def test_builders_keep_tls_for_real_namespaces_and_tls_ports() -> None:
    assert create_relay_listen_uri(NS, "hc") == f"wss://{NS}/$hc/hc?sb-hc-action=listen"
    assert create_relay_send_uri(NS, "hc", port=443) == f"wss://{NS}:443/$hc/hc?sb-hc-action=connect"
    assert create_relay_base_uri("127.0.0.1:9443", "hc") == "wss://127.0.0.1:9443/$hc/hc"
    assert create_relay_http_uri(NS, "hc") == f"https://{NS}/hc"


def test_explicit_scheme_wins() -> None:
    assert create_relay_listen_uri("127.0.0.1:9090", "hc", scheme="wss").startswith("wss://")
    assert create_relay_send_uri(NS, "hc", scheme="ws").startswith("ws://")
    assert create_relay_http_uri("127.0.0.1:9090", "hc", scheme="https").startswith("https://")
    with pytest.raises(ValueError, match="scheme must be one of"):
        create_relay_base_uri("127.0.0.1:9090", "hc", scheme="http")


def test_connection_string_uris_for_the_emulator() -> None:
    local = parse_connection_string(
        "Endpoint=sb://127.0.0.1:9090/;SharedAccessKeyName=k;SharedAccessKey=s;EntityPath=hc")
    assert local.listen_uri() == "ws://127.0.0.1:9090/$hc/hc?sb-hc-action=listen"
    assert local.send_uri(query="a=1") == "ws://127.0.0.1:9090/$hc/hc?a=1&sb-hc-action=connect"
    assert local.http_uri() == "http://127.0.0.1:9090/hc"
    assert local.listen_uri(scheme="wss").startswith("wss://")
    # The token signs http://{ns}/{hc} whatever the scheme: unchanged.
    assert local.create_token(now=1_700_000_000) == create_relay_token(
        "wss://127.0.0.1:9090/$hc/hc", "k", "s", now=1_700_000_000)
    remote = parse_connection_string(f"Endpoint=sb://{NS}/;EntityPath=hc")
    assert remote.listen_uri() == f"wss://{NS}/$hc/hc?sb-hc-action=listen"
    assert remote.send_uri() == f"wss://{NS}/$hc/hc?sb-hc-action=connect"
