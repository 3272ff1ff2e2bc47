"""The asyncio socket's recv waiter (the kernel's ``Wakeup``): one woken in place inside a
read callback is reused for the next wait (issue 14: no object per message); one woken any other
way (from inside a task, by a timeout, by a cancellation) must keep its outcome until its own
task has run, whatever other tasks do in between."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from hyco_proto.adapters.asyncio import WebSocket, connect, serve
from hyco_proto.frames import OP_BINARY, Wakeup, encode_frame

from .asyncio_util import WAIT, async_test, bounded


def _wakeup(loop: asyncio.AbstractEventLoop) -> Wakeup:
    return Wakeup(loop, asyncio.current_task, asyncio.CancelledError)


async def _idle(ws: WebSocket) -> None:
    await ws.wait_closed()


def _frame(payload: bytes) -> bytes:
    return encode_frame(OP_BINARY, payload)  # server to client: unmasked


@async_test
async def test_a_waiter_woken_from_inside_a_task_keeps_its_message_for_its_task() -> None:
    async with serve(_idle, "127.0.0.1", 0) as server, \
            connect(f"ws://127.0.0.1:{server.port}/") as ws:
        first = asyncio.ensure_future(ws.recv())
        await asyncio.sleep(0)  # first waits
        # A whole message for the waiting recv, handed to its waiter (not queued), from inside
        # this task: first's task is scheduled, not run.
        ws.view_received(memoryview(_frame(b"one")))
        second = ws.__anext__()  # the next wait starts before first's task has run
        assert await bounded(first) == b"one"
        ws.view_received(memoryview(_frame(b"two")))
        assert await bounded(second) == b"two"


@async_test
async def test_messages_timeouts_and_cancellations_in_turn_lose_nothing() -> None:
    async def echo(ws: WebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", 0) as server, \
            connect(f"ws://127.0.0.1:{server.port}/") as ws:
        got: list[object] = []
        for i in range(30):
            if i % 3 == 0:
                with pytest.raises(TimeoutError):
                    await ws.recv(timeout=0.01)
            if i % 5 == 0:
                waiting = asyncio.ensure_future(ws.recv())
                await asyncio.sleep(0)
                waiting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiting
            await ws.send(f"m{i}")
            if i % 2:
                got.append(await ws.recv(timeout=WAIT))
            else:
                got.append(await bounded(ws.__anext__()))
        assert got == [f"m{i}" for i in range(30)]


@async_test
async def test_done_callbacks_run_once_in_the_order_added_and_removal_works() -> None:
    loop = asyncio.get_running_loop()
    calls: list[str] = []

    def named(name: str) -> Callable[[object], None]:
        return lambda _: calls.append(name)

    a, b, c = named("a"), named("b"), named("c")
    waiter = _wakeup(loop)
    for fn in (a, b, c, b):
        waiter.add_done_callback(fn)
    assert waiter.remove_done_callback(b) == 2
    assert waiter.remove_done_callback(b) == 0
    waiter.wake(None, "x")  # more than the task's own callback: all scheduled, in order
    assert calls == []
    await asyncio.sleep(0)
    assert calls == ["a", "c"] and waiter.result() == "x"
    waiter.add_done_callback(named("late"))  # already done: scheduled at once
    await asyncio.sleep(0)
    assert calls == ["a", "c", "late"]

    cancelled = _wakeup(loop)
    cancelled.add_done_callback(a)
    cancelled.add_done_callback(c)
    assert cancelled.cancel() and cancelled.cancelled()
    await asyncio.sleep(0)
    assert calls[-2:] == ["a", "c"]
    with pytest.raises(asyncio.CancelledError):
        cancelled.result()

    alone = _wakeup(loop)  # the one callback, woken outside any task: run in place
    alone.add_done_callback(named("in place"))
    loop.call_soon(alone.wake, None, "y")
    await asyncio.sleep(0)
    assert calls[-1] == "in place"
