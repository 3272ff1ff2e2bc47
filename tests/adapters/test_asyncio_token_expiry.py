"""Token expiry on a live control channel for the asyncio listener: the relay closes it with
1008 and the listener recovers by itself with a fresh token from its provider (the recovery
half of issue 12's "token expiry → 1008 and our listener recovers by itself";
``test_asyncio_relay.test_expired_listener_token_closes_1008`` checks only the 1008, with a
fixed token that cannot recover). The provider hands out the same short-lived token, renewals
included, until the 1008 has been seen, so the expiry path runs rather than ``renewToken``
(as in ``test_blocking_token_expiry.py`` for threads and gevent).
"""

from __future__ import annotations

import asyncio
import time

from hyco_proto.adapters.asyncio import RelayedServer, RelayedWebSocket, relayed_connect
from hyco_proto.errors import AuthorizationError
from hyco_proto.listener import Listening
from hyco_proto.sas import token_expiry
from hyco_proto.service.config import ServiceConfig

from .asyncio_util import WAIT, async_test, bounded, token
from .test_asyncio_relay import relay

SHORT_TTL = 2


async def echo(ws: RelayedWebSocket) -> None:
    async for message in ws:
        await ws.send(message)


async def until(condition: object, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.01)


@async_test
async def test_asyncio_listener_recovers_by_itself_after_1008() -> None:
    async with relay(config=ServiceConfig(token_grace=0.2)) as r:
        uri = f"{r.url}/$hc/myhc"
        first = token(uri, ttl=SHORT_TTL)
        saw_1008: list[AuthorizationError] = []
        issued: list[tuple[bool, str]] = []

        def provider() -> str:
            tok = token(uri) if saw_1008 else first
            issued.append((bool(saw_1008), tok))
            return tok

        def on_error(error: Exception) -> None:
            if isinstance(error, AuthorizationError) and error.close_code == 1008:
                saw_1008.append(error)

        server = RelayedServer(uri, provider, connection=echo, error=on_error,
                               keepalive_interval=None, reconnect_delays=(0, 0.1, 0.2))
        async with server:
            listened = sum(isinstance(e, Listening) for e in server.events)
            await until(lambda: saw_1008, "the relay's 1008", SHORT_TTL + WAIT)
            expiry = token_expiry(first)
            assert expiry is not None and time.time() >= expiry
            assert "expired" in str(saw_1008[0]).lower(), saw_1008[0]
            await until(lambda: sum(isinstance(e, Listening) for e in server.events) > listened
                        and server.is_listening and r.service.broker.listener_count("myhc") == 1,
                        f"listening again ({issued})")
            assert any(after for after, _ in issued), "no fresh token was asked for"
            assert all(tok != first for after, tok in issued if after)
            ws = await bounded(relayed_connect(uri, token(uri)))
            await ws.send("after the 1008")
            assert await bounded(ws.recv()) == "after the 1008"
            await bounded(ws.close())
