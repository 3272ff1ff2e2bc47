"""The pytest plugin (hyco_proto.testing): its fixtures, its entry point, and docs/testing.md's
example run as written."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hyco_proto.sas import parse_token
from hyco_proto.testing import Emulator, Relay, WebPubSub, _require_pyjwt
from hyco_proto.uris import parse_connection_string
from hyco_proto.webpubsub.endpoints import parse_client_url
from hyco_proto.webpubsub.endpoints import parse_connection_string as parse_wps_string
from hyco_proto.webpubsub.tokens import verify_client_token

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "test_with_fixtures.py"
DOC = ROOT / "docs" / "testing.md"


def test_entry_point_registers_the_plugin() -> None:
    points = importlib.metadata.entry_points(group="pytest11")
    assert any(p.name == "hyco_proto" and p.value == "hyco_proto.testing" for p in points), (
        "the pytest11 entry point is missing: reinstall the package (make setup)")


def test_relay_fixture(relay: Relay) -> None:
    assert relay.url == f"ws://127.0.0.1:{relay.port}"
    assert relay.namespace == f"127.0.0.1:{relay.port}"
    assert relay.listen_uri("hc") == f"{relay.url}/$hc/hc?sb-hc-action=listen"
    assert relay.send_uri("hc") == f"{relay.url}/$hc/hc?sb-hc-action=connect"
    assert relay.http_uri("hc") == f"http://{relay.namespace}/hc"
    cs = parse_connection_string(relay.connection_string("hc"))
    assert (cs.namespace, cs.entity_path) == (relay.namespace, "hc")
    assert cs.listen_uri() == relay.listen_uri("hc")
    assert parse_connection_string(relay.connection_string()).entity_path is None
    token = parse_token(relay.token(relay.send_uri("hc"), ttl=60))
    assert token.key_name == relay.key_name
    assert abs(token.expiry - (time.time() + 60)) < 5
    status = relay.status()
    assert status["status"] == "ok"


def test_webpubsub_fixture(webpubsub: WebPubSub, relay: Relay) -> None:
    assert webpubsub.endpoint == f"http://127.0.0.1:{webpubsub.port}"
    assert webpubsub.port != relay.port  # the same emulator, its second port
    parsed = parse_wps_string(webpubsub.connection_string)
    assert (parsed.endpoint, parsed.access_key) == (webpubsub.endpoint, webpubsub.access_key)
    url = webpubsub.client_url("Chat", user_id="u1", roles=["webpubsub.sendToGroup"],
                               groups=["g"], ttl=120)
    client = parse_client_url(url)
    assert client.hub == "Chat"
    assert client.access_token is not None
    claims = verify_client_token(client.access_token, key=webpubsub.access_key,
                                 endpoint=webpubsub.endpoint, hub="Chat", now=time.time())
    assert (claims.user_id, claims.roles, claims.groups) == ("u1", ("webpubsub.sendToGroup",),
                                                             ("g",))


_SEEN: list[Relay] = []


@pytest.mark.parametrize("run", [1, 2])
def test_relay_session_is_shared(relay_session: Relay, run: int) -> None:
    _SEEN.append(relay_session)
    assert all(seen is relay_session for seen in _SEEN)
    assert relay_session.status()["status"] == "ok"


def test_emulator_stops_and_frees_its_ports() -> None:
    with Emulator(timeout=5) as emulator:
        port = emulator.relay.port
        assert "ws://127.0.0.1" in repr(emulator)
    assert repr(emulator) == "Emulator(stopped)"
    with socket.socket() as sock, pytest.raises(OSError):
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
    emulator.close()  # idempotent
    with pytest.raises(RuntimeError, match="not started"):
        Emulator().relay  # noqa: B018


def test_missing_pyjwt_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jwt", None)  # import jwt raises ImportError
    with pytest.raises(pytest.fail.Exception,
                       match=r"pip install PyJWT \(hyco_proto's webpubsub extra\)"):
        _require_pyjwt()


def test_docs_show_the_example() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert EXAMPLE.read_text() in blocks, (
        "docs/testing.md must show docs/examples/test_with_fixtures.py as it is")


def test_docs_example_runs(tmp_path: Path) -> None:
    # In a directory of its own: no conftest.py, the fixtures come from the entry point.
    shutil.copy(EXAMPLE, tmp_path / EXAMPLE.name)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           EXAMPLE.name], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "3 passed" in done.stdout, done.stdout[-3000:]


def test_docs_other_examples_run(tmp_path: Path) -> None:
    blocks = [b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
              if b != EXAMPLE.read_text()]
    assert blocks
    for index, block in enumerate(blocks):
        script = tmp_path / f"block{index}.py"
        script.write_text(block)
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]


def test_plugin_can_be_left_out(tmp_path: Path) -> None:
    (tmp_path / "test_none.py").write_text("def test_no_relay(request):\n"
                                           "    assert 'relay' not in request.fixturenames\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:hyco_proto", "--fixtures", "test_none.py"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "relay_session" not in done.stdout
