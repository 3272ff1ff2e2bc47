"""hyco-ws@1.0.5 error paths and token life against our relay service.

* a sender with a wrong key sees 401, with no listener 404;
* a listener with a wrong key retries in a tight loop with no backoff
  (hybrid-connections-wire §4.2): the test bounds it, kills Node, and checks the emulator is
  still healthy and serving;
* a listener with a function token renews it with ``renewToken`` and stays connected past its
  first token's expiry; without renewal our relay closes the control channel (1008) after the
  grace period and hyco-ws reconnects with a fresh token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from hyco_proto.service.config import HybridConnectionConfig, ServiceConfig
from tests.interop import NodePeer, ThreadedEmulator, listen_uri, send_uri

pytestmark = pytest.mark.node


@pytest.fixture
def emulator() -> Iterator[ThreadedEmulator]:
    with ThreadedEmulator() as emu:
        yield emu


def send_error(config: dict[str, object]) -> str:
    with NodePeer({"mode": "send", "messages": ["x"], **config}) as peer:
        peer.finish()
    errors = peer.named("error")
    assert errors, peer.events
    assert not peer.named("open")
    return str(errors[0]["message"])


def test_sender_with_wrong_key_gets_401(emulator: ThreadedEmulator) -> None:
    with NodePeer({"mode": "listen", "listenUri": listen_uri(emulator)}) as listener:
        listener.wait_event("listening")
        message = send_error({"sendUri": send_uri(emulator), "key": "wrong-key"})
        listener.stop()
    assert message == "unexpected server response (401)"
    assert emulator.status()["counters"]["auth_failures"] == 1


def test_sender_without_listener_gets_404(emulator: ThreadedEmulator) -> None:
    assert send_error({"sendUri": send_uri(emulator, "nobody")}) == \
        "unexpected server response (404)"


def test_sender_without_token_gets_401_and_anonymous_hc_lets_it_in() -> None:
    config = ServiceConfig()
    config.hybrid_connections["open"] = HybridConnectionConfig(
        "open", requires_client_authorization=False)
    with ThreadedEmulator(config) as emu:
        with NodePeer({"mode": "listen", "listenUri": listen_uri(emu, "open")}) as listener:
            listener.wait_event("listening")
            with NodePeer({"mode": "send", "sendUri": send_uri(emu, "open"), "tokenIn": "none",
                           "messages": ["anon"]}) as peer:
                peer.finish()
            assert [e["text"] for e in peer.named("message")] == ["echo:anon"]
            listener.stop()
        assert send_error({"sendUri": send_uri(emu, "closed"), "tokenIn": "none"}) == \
            "unexpected server response (401)"


def test_listener_with_wrong_key_storms_and_the_emulator_survives(
        emulator: ThreadedEmulator) -> None:
    with NodePeer({"mode": "listen", "listenUri": listen_uri(emulator),
                   "key": "wrong-key"}) as storm:
        # hyco-ws reconnects on every error at once (no backoff): wait for a burst, bounded.
        deadline = time.monotonic() + 10
        failures = 0
        started = time.monotonic()
        while time.monotonic() < deadline:
            failures = emulator.status()["counters"]["auth_failures"]
            if failures >= 200:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        # The relay stays responsive while the storm goes on.
        assert emulator.status()["status"] == "ok"
        storm.kill()
    assert failures >= 200, f"only {failures} refused handshakes in {elapsed:.1f} s"
    assert storm.named("error")[0]["message"] == "unexpected server response (401)"
    doc = emulator.status()
    assert doc["counters"]["listeners"] == 0
    assert emulator.alive()
    # And it still relays for well-behaved clients.
    with NodePeer({"mode": "pair", "listenUri": listen_uri(emulator),
                   "sendUri": send_uri(emulator), "messages": ["after the storm"]}) as peer:
        peer.finish()
    assert [e["text"] for e in peer.named("message")] == ["echo:after the storm"]


def test_function_token_is_renewed_with_renew_token() -> None:
    # Tokens live 3 s and the relay closes an expired listener 1 s after expiry; hyco-ws's
    # hourly renewal timer is shortened to 1 s by the peer script.
    with ThreadedEmulator(ServiceConfig(token_grace=1.0)) as emu:
        config = {"mode": "listen", "listenUri": listen_uri(emu), "tokenTtl": 3,
                  "renewMs": 1000, "reportTokens": True}
        with NodePeer(config) as listener:
            listener.wait_event("listening")
            listener.wait_event("token", where=lambda e: e["n"] >= 7, timeout=15)
            # Past the first token's expiry + grace: still the first control channel.
            assert [e["n"] for e in listener.named("listening")] == [1]
            assert emu.status()["counters"]["listeners"] == 1
            with NodePeer({"mode": "send", "sendUri": send_uri(emu),
                           "messages": ["still here"]}) as sender:
                sender.finish()
            assert [e["text"] for e in sender.named("message")] == ["echo:still here"]
            listener.stop()


def test_expired_listener_is_closed_and_hycows_reconnects() -> None:
    with ThreadedEmulator(ServiceConfig(token_grace=0.5)) as emu:
        config = {"mode": "listen", "listenUri": listen_uri(emu), "tokenTtl": 2}
        with NodePeer(config) as listener:
            listener.wait_event("listening")
            # No renewal within 2 s (hyco-ws renews hourly): closed with 1008, then hyco-ws
            # reconnects at once with a fresh token from the function.
            second = listener.wait_event("listening", timeout=10)
            assert second["n"] == 2
            assert emu.status()["counters"]["listeners"] == 1
            listener.stop()
