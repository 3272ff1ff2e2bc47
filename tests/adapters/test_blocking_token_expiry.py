"""Token expiry on a live control channel, for the threads and gevent adapters (issue 12,
"token expiry → 1008 and our listener recovers by itself").

The relay (our service on a loopback port, token grace 0.2 s) closes a listener's control
channel with 1008 once its token has expired; the listener must then reconnect by itself with
a fresh token from its provider, and senders must be relayed to it again.

The listener renews its token half-way through its life (``renewToken``), which would keep the
relay from ever closing the channel. So the provider here cannot refresh: until the relay has
closed the channel with 1008, every call (the first one and every renewal) returns the same
short-lived token; only afterwards does it hand out fresh ones. That is the expiry path, not the
renewal path. Each test also runs once per adapter with a fixed (string) token, which must not
come back (nothing could renew it) — the contrast that shows the recovery is the provider's.

Every wait is bounded; nothing sleeps to order events (the polls wait for a condition).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from hyco_proto.errors import AuthorizationError, RelayError
from hyco_proto.sas import token_expiry
from hyco_proto.service.config import ServiceConfig
from tests.adapters import test_blocking_adapters as blocking_adapters
from tests.adapters.asyncio_util import token
from tests.adapters.test_blocking_adapters import poll
from tests.interop import ThreadedEmulator

WAIT = 10.0
#: The relay waits this long after a listener token's expiry before closing with 1008.
GRACE = 0.2
#: Lifetime of the token that is allowed to expire (seconds; ``se`` is whole seconds).
SHORT_TTL = 2


#: The blocking adapters' fixture (threads and gevent; fails a test that leaves a thread or
#: greenlet running), shared with test_blocking_adapters.
adapter = blocking_adapters.adapter


@pytest.fixture
def relay() -> Iterator[ThreadedEmulator]:
    with ThreadedEmulator(ServiceConfig(token_grace=GRACE)) as emulator:
        yield emulator


def echo(ws: Any) -> None:
    for message in ws:
        ws.send(message)


class ExpiringProvider:
    """Hands out one short-lived token (renewals included) until told the relay closed the
    channel, then fresh long-lived ones. Records what it handed out, and when."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.first = token(uri, ttl=SHORT_TTL)
        self.expired_close_seen = False
        self.issued: list[tuple[bool, str]] = []  # (after the 1008?, token)
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            after = self.expired_close_seen
            tok = token(self.uri) if after else self.first
            self.issued.append((after, tok))
            return tok

    def saw_close(self) -> None:
        with self._lock:
            self.expired_close_seen = True

    def fresh_tokens(self) -> list[str]:
        with self._lock:
            return [tok for after, tok in self.issued if after]


def listeners(relay: ThreadedEmulator, hc: str = "myhc") -> int:
    return int(relay.run(lambda: relay.service.broker.listener_count(hc)))


def test_listener_recovers_by_itself_after_the_relay_closes_it_with_1008(
        adapter: ModuleType, relay: ThreadedEmulator) -> None:
    uri = f"{relay.url}/$hc/myhc"
    provider = ExpiringProvider(uri)
    errors: list[Exception] = []

    def on_error(error: Exception) -> None:
        errors.append(error)
        if isinstance(error, AuthorizationError) and error.close_code == 1008:
            provider.saw_close()

    server = adapter.RelayedServer(uri, provider, connection=echo, error=on_error,
                                   keepalive_interval=None, reconnect_delays=(0, 0.1, 0.2))
    with server:
        assert server.is_listening
        # Before expiry: relayed as usual.
        with adapter.relayed_connect(uri, token(uri)) as ws:
            ws.send("before")
            assert ws.recv(timeout=WAIT) == "before"
        expiry = token_expiry(provider.first)
        assert expiry is not None
        # The relay closes the channel with 1008 at expiry + grace (the renewals it received
        # carried the same token and changed nothing).
        assert poll(adapter, lambda: provider.expired_close_seen, SHORT_TTL + WAIT), errors
        closed_at = time.time()
        assert closed_at >= expiry, "closed before the token expired"
        first_1008 = next(e for e in errors if getattr(e, "close_code", None) == 1008)
        assert isinstance(first_1008, AuthorizationError)
        assert "expired" in str(first_1008).lower(), first_1008
        # Recovery by itself: a fresh token from the provider, a new control channel.
        assert poll(adapter, lambda: bool(provider.fresh_tokens()) and listeners(relay) == 1
                    and server.is_listening), (errors, provider.issued)
        assert server.error is None
        with adapter.relayed_connect(uri, token(uri)) as ws:
            ws.send("after the 1008")
            assert ws.recv(timeout=WAIT) == "after the 1008"
            ws.send(b"\x00binary")
            assert ws.recv(timeout=WAIT) == b"\x00binary"
        # Every 1008 the listener heard was the expiry (or a renewal with the expired token),
        # never anything else; the short token was handed out before, only fresh ones after.
        assert all(isinstance(e, AuthorizationError) for e in errors), errors
        assert all(tok == provider.first for after, tok in provider.issued if not after)
        assert all(tok != provider.first for tok in provider.fresh_tokens())
    assert listeners(relay) == 0


def test_a_fixed_token_cannot_recover_and_the_listener_says_so(
        adapter: ModuleType, relay: ThreadedEmulator) -> None:
    """The contrast: the same expiry with a fixed (string) token ends the listener (Offline,
    1008, no reconnect loop) — recovery above came from the provider."""
    uri = f"{relay.url}/$hc/myhc"
    errors: list[Exception] = []
    server = adapter.RelayedServer(uri, token(uri, ttl=SHORT_TTL), connection=echo,
                                   error=errors.append, keepalive_interval=None,
                                   reconnect_delays=(0, 0.1))
    with server:
        assert poll(adapter, lambda: server.error is not None, SHORT_TTL + WAIT), errors
        assert isinstance(server.error, AuthorizationError)
        assert server.error.close_code == 1008
        assert not server.is_listening
        assert listeners(relay) == 0
        with pytest.raises(RelayError):
            adapter.relayed_connect(uri, token(uri), open_timeout=2.0)
