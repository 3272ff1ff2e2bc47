"""Helpers for the asyncio adapter tests: a bounded ``asyncio.run`` and relay fixtures."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from hyco_proto.sas import create_relay_token
from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY

T = TypeVar("T")

#: Every wait in these tests is bounded by this (seconds).
WAIT = 10.0


def async_test(
    fn: Callable[..., Awaitable[None]],
) -> Callable[..., None]:
    """Run an async test function in a fresh event loop, bounded by 3 x WAIT overall."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        async def main() -> None:
            await asyncio.wait_for(fn(*args, **kwargs), 3 * WAIT)

        asyncio.run(main())

    return wrapper


async def bounded(aw: Awaitable[T], timeout: float = WAIT) -> T:
    return await asyncio.wait_for(aw, timeout)


def token(uri: str, ttl: int = 3600, *, key: str = DEVELOPMENT_KEY,
          rule: str = DEFAULT_RULE_NAME) -> str:
    return create_relay_token(uri, rule, key, ttl)
