"""Microsoft's hyco-ws@1.0.5 as listener *and* sender, through our relay service.

Each test starts our emulator (``RelayServiceServer`` on a free port, in a background thread)
and runs ``node/hycows_peer.js`` in ``pair`` mode: a hyco-ws listener and, once it listens, a
hyco-ws sender in the same Node process. URLs are built by hand (the hyco-ws helpers force
``wss://…:443``, hybrid-connections-wire §5.1).
"""

from __future__ import annotations

import base64
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.interop import NodePeer, ThreadedEmulator, listen_uri, send_uri

pytestmark = pytest.mark.node


@pytest.fixture
def emulator() -> Iterator[ThreadedEmulator]:
    with ThreadedEmulator() as emu:
        yield emu


def pair(emulator: ThreadedEmulator, **config: object) -> NodePeer:
    full: dict[str, object] = {"mode": "pair", "listenUri": listen_uri(emulator),
                               "sendUri": send_uri(emulator)}
    full.update(config)
    return NodePeer(full)


def test_text_and_binary_echo(emulator: ThreadedEmulator) -> None:
    blob = base64.b64encode(os.urandom(70_000)).decode()
    with pair(emulator, messages=["hello", {"binary": blob}, "é ✓"]) as peer:
        events = peer.finish()
    assert peer.named("open")
    assert [(e.get("text"), e.get("binary")) for e in peer.named("message")] == [
        ("echo:hello", None), (None, blob), ("echo:é ✓", None)]
    assert peer.named("listener-close")[0]["code"] == 1000
    assert peer.named("close")[0]["code"] == 1000
    assert not peer.named("error"), events
    counters = emulator.status()["counters"]
    assert counters["relayed_pairs"] == 1
    assert counters["bytes_relayed"] >= 2 * 70_000


def test_subprotocol_suffix_query_and_custom_header(emulator: ThreadedEmulator) -> None:
    uri = send_uri(emulator, "myhc/some/suffix", "foo=bar&x=%20y")
    with pair(emulator, sendUri=uri, protocols=["proto-a", "proto-b"],
              headers={"X-Custom": "hello"}, messages=["hi"]) as peer:
        peer.finish()
    connection = peer.named("connection")[0]
    # The listener sees the suffix and the app query in the accept address (§1.5).
    assert "/$hc/myhc/some/suffix?foo=bar&x=%20y&sb-hc-action=accept&sb-hc-id=" in \
        connection["url"]
    assert "sb-hc-token" not in connection["url"]
    # hyco-ws offers the first subprotocol on the rendezvous; both legs get it echoed (§5.6.7).
    assert peer.named("rendezvous-open")[0]["protocol"] == "proto-a"
    assert peer.named("open")[0]["protocol"] == "proto-a"
    assert [e["text"] for e in peer.named("message")] == ["echo:hi"]


def test_token_in_query(emulator: ThreadedEmulator) -> None:
    with pair(emulator, tokenIn="query", messages=["q"]) as peer:
        peer.finish()
    assert [e["text"] for e in peer.named("message")] == ["echo:q"]
    assert emulator.status()["counters"]["auth_failures"] == 0


def test_relayed_connect_helper(emulator: ThreadedEmulator) -> None:
    with pair(emulator, relayedConnect=True, messages=["via relayedConnect"]) as peer:
        peer.finish()
    assert [e["text"] for e in peer.named("message")] == ["echo:via relayedConnect"]


def test_string_token_listener_and_namespace_token(emulator: ThreadedEmulator) -> None:
    # A string token (no renewal) on the listener; the sender uses its own send-URI token.
    with pair(emulator, stringToken=True, messages=["s"]) as peer:
        peer.finish()
    assert [e["text"] for e in peer.named("message")] == ["echo:s"]


def test_many_messages_keep_order(emulator: ThreadedEmulator) -> None:
    messages = [f"m{i}" for i in range(300)]
    with pair(emulator, messages=messages) as peer:
        peer.finish()
    assert [e["text"] for e in peer.named("message")] == [f"echo:{m}" for m in messages]


def test_tls_with_self_signed_certificate(tmp_path: Path) -> None:
    """wss:// with the development certificate, trusted via NODE_EXTRA_CA_CERTS (§5.3)."""
    from hyco_proto import cli
    from hyco_proto.service.devcert import ensure_dev_cert

    cert = ensure_dev_cert(tmp_path, run=cli._run_quiet, now=time.time())
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert.cert), str(cert.key))
    with ThreadedEmulator(ssl=context) as emu:
        assert emu.url.startswith("wss://")
        config = {"mode": "pair", "listenUri": listen_uri(emu, host="localhost"),
                  "sendUri": send_uri(emu, host="localhost"), "messages": ["secure"]}
        with NodePeer(config, env={"NODE_EXTRA_CA_CERTS": str(cert.cert)}) as peer:
            peer.finish()
        assert [e["text"] for e in peer.named("message")] == ["echo:secure"]
        # The status endpoint answers over TLS too.
        client = ssl.create_default_context(cafile=str(cert.cert))
        assert emu.status(scheme="https", context=client)["counters"]["relayed_pairs"] == 1
        # Without trust, hyco-ws fails the TLS handshake (and its listener retries).
        env = {"NODE_EXTRA_CA_CERTS": ""}
        with NodePeer({"mode": "send", "sendUri": send_uri(emu, host="localhost"),
                       "messages": []}, env=env) as untrusted:
            error = untrusted.wait_event("error")
        assert "self-signed" in error["message"] or "self signed" in error["message"]
        assert emu.alive()


def test_node_available_for_interop() -> None:
    """Guard: the interop setup is present (fails, never skips, when it is not)."""
    from tests.interop import node_binary

    node = node_binary()
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30,
                         check=False)
    assert out.returncode == 0 and out.stdout.startswith("v"), (out, sys.platform)


def test_hycows_handshake_quirks_are_tolerated(emulator: ThreadedEmulator,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """What hyco-ws (ws 1.1.5) really sends, recorded from our handshake parser: the bogus
    ``0`` header on the rendezvous (§3.1), ``Sec-WebSocket-Protocol`` joined without a space,
    keys that are base64("13-" + Date.now()), a deflate offer we never accept (§5.6.5)."""
    from hyco_proto import handshake

    seen: list[tuple[str, list[tuple[str, str]]]] = []
    # Every upgrade's checks, whichever parser read its head (the front door's fast path or h11).
    original = handshake.ServerHandshake._check

    def spy(self: handshake.ServerHandshake, method: str, target: str, http_version: str,
            headers: list[tuple[str, str]], fields: Any = None) -> Any:
        seen.append((target, list(headers)))
        return original(self, method, target, http_version, headers, fields)

    monkeypatch.setattr(handshake.ServerHandshake, "_check", spy)
    with pair(emulator, protocols=["p1", "p2"], messages=["x"]) as peer:
        peer.finish()
    assert [e["text"] for e in peer.named("message")] == ["echo:x"]
    by_action = {target.split("sb-hc-action=")[1].split("&")[0]: dict(headers)
                 for target, headers in seen}
    assert set(by_action) == {"listen", "connect", "accept"}
    assert by_action["accept"]["0"] == "Sec-WebSocket-Extensions: permessage-deflate"
    assert by_action["connect"]["Sec-WebSocket-Protocol"] == "p1,p2"
    assert by_action["accept"]["Sec-WebSocket-Protocol"] == "p1"
    assert by_action["connect"]["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
    key = base64.b64decode(by_action["listen"]["Sec-WebSocket-Key"]).decode()
    assert key.startswith("13-") and key[3:].isdigit()
