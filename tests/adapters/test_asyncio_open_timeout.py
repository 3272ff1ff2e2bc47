"""The asyncio adapter's ``open_timeout`` names the stage it ran out in (new-user trial, issue
14 session 6): a TCP connect that never completes is not "no answer to the WebSocket upgrade"."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from hyco_proto.adapters.asyncio import connect
from hyco_proto.adapters.asyncio import websocket as ws_module

from .asyncio_util import async_test


@async_test
async def test_a_connect_that_never_completes_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    async def never(*_args: Any, **_kwargs: Any) -> None:
        await asyncio.sleep(3600)  # (cancelled by the open timeout)

    monkeypatch.setattr(ws_module, "open_link", never)
    with pytest.raises(TimeoutError,
                       match=r"could not connect \(TCP, or TLS\) to 127\.0\.0\.1:9 "
                             r"\(ws://127\.0\.0\.1:9/x\) within 0\.2 s"):
        await connect("ws://127.0.0.1:9/x", open_timeout=0.2)


@async_test
async def test_a_server_that_never_answers_the_upgrade_says_so() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (backlog), never answers
        port = silent.getsockname()[1]
        with pytest.raises(TimeoutError, match=f"no answer to the WebSocket upgrade from "
                                               f"127.0.0.1:{port} .* within 0.2 s"):
            await connect(f"ws://127.0.0.1:{port}/x", open_timeout=0.2)
