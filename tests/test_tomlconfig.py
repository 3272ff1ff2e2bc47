"""The emulator's TOML configuration file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY, Right, SasRule
from hyco_proto.service.tomlconfig import (
    ConfigError,
    apply_default_key,
    default_rule,
    load_config,
    parse_config,
)

DOCS_EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "emulator.md"

FULL = """\
[server]
host = "0.0.0.0"
port = 9191
namespace = "contoso"
strict = true
token_grace = 120
max_listeners = 3
accept_timeout = 15.5

[tls]
cert = "certs/cert.pem"
key = "certs/key.pem"

[[rules]]
name = "RootManageSharedAccessKey"
key = "root-key"

[[rules]]
name = "sender"
key = "send-key"
rights = ["send"]

[hybrid_connections.myhc]

[hybrid_connections.public]
requires_client_authorization = false

[hybrid_connections."team/a"]
[[hybrid_connections."team/a".rules]]
name = "listen-only"
key = "l-key"
rights = ["Listen"]
"""


def test_full_file(tmp_path: Path) -> None:
    path = tmp_path / "emulator.toml"
    path.write_text(FULL)
    config = load_config(path)
    assert (config.host, config.port, config.effective_port) == ("0.0.0.0", 9191, 9191)
    assert config.source == path
    svc = config.service
    assert svc.namespace == "contoso" and svc.strict
    assert (svc.token_grace, svc.max_listeners, svc.accept_timeout) == (120.0, 3, 15.5)
    assert svc.rules == (
        SasRule("RootManageSharedAccessKey", "root-key"),
        SasRule("sender", "send-key", frozenset({Right.SEND})),
    )
    assert set(svc.hybrid_connections) == {"myhc", "public", "team/a"}
    assert svc.hybrid_connections["public"].requires_client_authorization is False
    assert svc.hybrid_connections["myhc"].requires_client_authorization is True
    team = svc.hybrid_connections["team/a"]
    assert team.rules == (SasRule("listen-only", "l-key", frozenset({Right.LISTEN})),)
    # Entity rules resolve with the longest name prefix, as the broker does.
    assert svc.lookup("team/a/suffix") is team
    assert config.tls is not None
    assert config.tls.cert == tmp_path / "certs" / "cert.pem"
    assert config.tls.key == tmp_path / "certs" / "key.pem"


def test_empty_file_is_the_default_emulator() -> None:
    config = parse_config("")
    assert config.effective_port == 9090 and config.tls is None
    assert config.service.rules == (SasRule(DEFAULT_RULE_NAME, DEVELOPMENT_KEY),)
    assert not config.service.strict


def test_self_signed_defaults_to_port_9443() -> None:
    config = parse_config("[tls]\nself_signed = true\nstate_dir = 'state'\n",
                          base_dir=Path("/x"))
    assert config.tls is not None and config.tls.self_signed
    assert config.tls.state_dir == Path("/x/state")
    assert config.effective_port == 9443


def test_docs_example_parses() -> None:
    text = DOCS_EXAMPLE.read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert blocks, "docs/emulator.md has a ```toml example"
    for block in blocks:
        parse_config(block, source="docs/emulator.md")


@pytest.mark.parametrize(("text", "message"), [
    ("[server]\nprot = 9090\n", r"<config>:2: server\.prot: unknown key; did you mean 'port'\?"),
    ("[server]\nport = 99999\n", r"<config>:2: server\.port: must be between 0 and 65535"),
    ("[server]\nport = '9090'\n", r":2: server\.port: expected an integer, got a string"),
    ("[server]\nstrict = 1\n", r":2: server\.strict: expected true or false, got an integer"),
    ("[server]\nport = true\n", r":2: server\.port: expected an integer, got a boolean"),
    ("[server]\ntoken_grace = -1\n", r":2: server\.token_grace: must be a non-negative"),
    ("[server]\ntoken_grace = 1e12\n", r":2: server\.token_grace: must be at most 31536000"),
    ("[server]\nauto_expiry = 0\n", r":2: server\.auto_expiry: must be a positive number"),
    ("[server]\naccept_timeout = 0\n", r":2: server\.accept_timeout: must be a positive"),
    ("[server]\naccept_timeout = 1e6\n", r":2: server\.accept_timeout: must be at most 86400"),
    ("[server]\nmax_control_message = 1073741824\n",
     r":2: server\.max_control_message: must be between 1024 and 67108864"),
    ("colour = 1\n", r"<config>:1: colour: unknown key \(known keys: server, tls"),
    ("[server]\nport = \n", r"<config>: not valid TOML: .*line 2"),
    ("[[rules]]\nname = 'a'\n", r":1: rules\[0\]\.key: is required"),
    ("[[rules]]\nname = 'a'\nkey = ''\n", r":3: rules\[0\]\.key: must not be empty"),
    ("[[rules]]\nname = 'a'\nkey = 'k'\n\n[[rules]]\nname = 'b'\nkey = 'k'\nrights = ['Lisen']\n",
     r":8: rules\[1\]\.rights: unknown right 'Lisen' \(expected Listen, Send or Manage\)"),
    ("[[rules]]\nname = 'a'\nkey = 'k'\n[[rules]]\nname = 'a'\nkey = 'j'\n",
     r":5: rules\[1\]\.name: rule 'a' is defined twice"),
    ("[[rules]]\nname = 'a'\nkey = 'k'\nrights = []\n",
     r"rules\[0\]\.rights: expected a non-empty"),
    ("rules = 'x'\n", r"rules: expected an array of tables"),
    ("[hybrid_connections.h]\nrequires_client_auth = false\n",
     r":2: hybrid_connections\.h\.requires_client_auth: unknown key; did you mean "
     r"'requires_client_authorization'\?"),
    ("[hybrid_connections.h]\n[hybrid_connections.H]\n",
     r"hybrid_connections\.H: is defined twice"),
    ("[hybrid_connections]\nh = 3\n", r"hybrid_connections\.h: expected a table, got an integer"),
    ("[tls]\ncert = 'c.pem'\n", r"tls\.key: is required when cert is set"),
    ("[tls]\n", r"<config>:1: tls: needs cert and key, or self_signed = true"),
    ("[tls]\nself_signed = true\ncert = 'a'\nkey = 'b'\n", r"tls\.self_signed: cannot be combined"),
])
def test_errors_name_the_line_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text)


def test_missing_file_and_bad_encoding(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"[server]\nhost = '\xff'\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not UTF-8"):
        load_config(bad)


def test_default_key_override() -> None:
    config = parse_config("[[rules]]\nname = 'other'\nkey = 'o'\nrights = ['Send']\n")
    svc = config.service
    assert default_rule(svc) == SasRule("other", "o", frozenset({Right.SEND}))
    apply_default_key(svc, "k2")
    assert default_rule(svc) == SasRule(DEFAULT_RULE_NAME, "k2")
    apply_default_key(svc, "k3")
    assert [r.key for r in svc.rules] == ["o", "k3"]
    apply_default_key(svc, None)
    assert [r.key for r in svc.rules] == ["o", "k3"]


def test_webpubsub_section() -> None:
    config = parse_config(
        "[webpubsub]\nport = 0\naccess_key = 'k'\n"
        "[[webpubsub.hubs.Chat.event_handlers]]\nurl_template = 'http://h/{event}'\n"
        "system_events = ['connect']\nuser_events = ''\n"
        "[[webpubsub.hubs.Chat.event_handlers]]\nurl_template = 'http://h/all'\n")
    wps = config.webpubsub
    assert (wps.enabled, wps.port, wps.access_key) == (True, 0, "k")
    first, second = wps.event_handlers["chat"]
    assert first.system_events == frozenset({"connect"}) and not first.takes_user_event("x")
    assert second.takes_user_event("x") and not second.system_events
    assert not parse_config("[webpubsub]\nenabled = false\n").webpubsub.enabled
    assert parse_config("").webpubsub.port is None


@pytest.mark.parametrize(("text", "message"), [
    ("[webpubsub]\nprot = 1\n", r":2: webpubsub\.prot: unknown key; did you mean 'port'\?"),
    ("[[webpubsub.hubs.c.event_handlers]]\nurl_template = 'ftp://x'\n",
     r"webpubsub\.hubs\.c\.event_handlers\[0\]: event handler URL 'ftp://x' is not an http"),
    ("[[webpubsub.hubs.c.event_handlers]]\nurl_template = 'http://x'\nsystem_events = 'connect'\n",
     r"system_events: expected an array of event names"),
    ("[[webpubsub.hubs.c.event_handlers]]\n", r"url_template: is required"),
    ("[[webpubsub.hubs.\"bad hub\".event_handlers]]\nurl_template = 'http://x'\n",
     r"invalid hub name 'bad hub'"),
])
def test_webpubsub_section_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text)
