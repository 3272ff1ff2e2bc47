"""Helpers for the ASGI / WSGI bridge tests: a plain HTTP client (``http.client``) calling
through the relay emulator, an event loop on a thread for the asyncio side, and the listeners
serving the test apps (``tests/adapters/http_apps.py``). Every wait is bounded by ``WAIT``."""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from hyco_proto.sas import create_relay_token
from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY

T = TypeVar("T")
WAIT = 10.0


def token(uri: str) -> str:
    return create_relay_token(uri, DEFAULT_RULE_NAME, DEVELOPMENT_KEY, 3600)


def listen_uri(port: int, hc: str) -> str:
    return f"ws://127.0.0.1:{port}/$hc/{hc}"


def send_headers(port: int, hc: str) -> dict[str, str]:
    return {"ServiceBusAuthorization": token(f"http://127.0.0.1:{port}/{hc}")}


@dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.header_all(name)
        return values[-1] if values else None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def connection(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)


def call(port: int, hc: str, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> Reply:
    """One request to ``http://127.0.0.1:{port}/{hc}{path}`` with a Send token."""
    conn = connection(port)
    try:
        conn.request(method, f"/{hc}{path}", body=body,
                     headers={**send_headers(port, hc), **(headers or {})})
        response = conn.getresponse()
        data = response.read()
        return Reply(response.status, response.reason, response.getheaders(), data)
    finally:
        conn.close()


class LoopThread:
    """An asyncio event loop on its own thread: ``run(coro)`` waits (bounded) for a result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="app-loop",
                                        daemon=True)
        self._thread.start()

    def run(self, aw: Awaitable[T], timeout: float = WAIT) -> T:
        async def bounded() -> T:
            return await asyncio.wait_for(aw, timeout)
        return asyncio.run_coroutine_threadsafe(bounded(), self.loop).result(timeout + 1.0)

    def close(self) -> None:
        async def rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            asyncio.run_coroutine_threadsafe(rest(), self.loop).result(WAIT)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(WAIT)
            self.loop.close()

    def __enter__(self) -> LoopThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_until(response: http.client.HTTPResponse, marker: bytes) -> bytes:
    """Read a (streamed) response body until ``marker`` has arrived, chunk by chunk."""
    got = b""
    while marker not in got:
        chunk = response.read1(65536)
        if not chunk:
            break
        got += chunk
    return got
