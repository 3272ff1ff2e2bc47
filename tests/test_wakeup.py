"""``Wakeup``, the asyncio receive waiter of the frame kernels (issue 14), against every kernel
(``fmod``): the Cython one steps the await in C, the Python twin is a generator. A task awaiting
it is resumed inside ``wake`` when that runs outside any task (a read callback), else one loop
iteration later; cancellation, errors, the ``then`` continuation, reuse, done callbacks,
contexts and asyncio's wrappers behave as with a future. ``WebSocket`` is also run on each
kernel's class (patched in), so its ``recv`` under ``wait_for`` / ``shield`` / ``gather`` is
checked for both in one run."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Coroutine
from types import ModuleType
from typing import Any

import pytest

from hyco_proto.adapters.asyncio import WebSocket, connect, serve
from hyco_proto.adapters.asyncio import websocket as ws_module

WAIT = 10.0


def run(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """``fn()`` on a fresh loop, bounded: a test whose task cannot even be cancelled (a waiter
    that never resumes it) fails after ``WAIT`` instead of hanging in the cancellation."""
    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(fn())
        loop.run_until_complete(asyncio.wait([task], timeout=WAIT))
        assert task.done(), f"not done within {WAIT} s"
        task.result()
    finally:
        loop.close()


def new(fmod: ModuleType, then: Callable[[], Awaitable[Any]] | None = None,
        current_task: Callable[[Any], object] = asyncio.current_task) -> Any:
    return fmod.Wakeup(asyncio.get_running_loop(), current_task, asyncio.CancelledError, then)


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_a_task_is_resumed_inside_wake_when_no_task_runs(fmod: ModuleType) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        waiter = new(fmod)
        assert asyncio.isfuture(waiter) and waiter.pending and not waiter.done()
        log: list[object] = []

        async def wait() -> None:
            log.append(await waiter)

        task = loop.create_task(wait())
        await settle()
        assert log == []

        def callback() -> None:  # a protocol callback: no task runs
            waiter.wake(None, b"message")
            log.append("wake returned")

        loop.call_soon(callback)
        await settle()
        assert log == [b"message", "wake returned"]  # the task ran inside wake
        assert task.done() and waiter.done() and not waiter.pending
        assert waiter.result() == b"message" and waiter.exception() is None
        assert waiter.rearm(None) is waiter and waiter.pending  # reusable: its task is done

    run(main)


def test_a_wake_inside_a_task_resumes_the_waiter_one_iteration_later(fmod: ModuleType) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        waiter = new(fmod)
        log: list[object] = []

        async def wait() -> None:
            log.append(await waiter)

        task = loop.create_task(wait())
        await settle()
        waiter.wake(None, "text")  # from this task: the other may not be entered here
        assert log == [] and waiter.done()
        assert waiter.rearm(None) is None  # its task has not taken the outcome yet
        await settle()
        assert log == ["text"] and task.done()

    run(main)


def test_the_current_task_lookup_passed_in_decides(fmod: ModuleType) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        asked: list[object] = []

        def always_busy(asked_loop: Any) -> object:
            asked.append(asked_loop)
            return "a task"

        waiter = new(fmod, current_task=always_busy)
        log: list[object] = []

        async def wait() -> None:
            log.append(await waiter)

        task = loop.create_task(wait())
        await settle()
        loop.call_soon(lambda: (waiter.wake(None, 1), log.append("wake returned")))
        await settle()
        assert asked == [loop] and log == ["wake returned", 1] and task.done()

    run(main)


def test_cancelling_the_waiting_task_cancels_the_waiter(fmod: ModuleType) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        waiter = new(fmod)
        task = loop.create_task(_await(waiter))
        await settle()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled() and waiter.cancelled() and waiter.done()
        with pytest.raises(asyncio.CancelledError):
            waiter.result()
        with pytest.raises(asyncio.CancelledError):
            waiter.exception()
        assert not waiter.cancel()  # once
        waiter.wake(None, "late")  # no effect once resolved
        assert waiter.cancelled() and waiter.rearm(None) is None

    run(main)


def test_an_error_is_raised_by_the_await(fmod: ModuleType) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        waiter = new(fmod)
        task = loop.create_task(_await(waiter))
        await settle()
        error = TimeoutError("no message within 1 s")
        loop.call_soon(waiter.wake, error)
        with pytest.raises(TimeoutError) as raised:
            await asyncio.wait_for(task, WAIT)
        assert raised.value is error
        assert waiter.exception() is error and not waiter.cancelled()

    run(main)


def test_woken_empty_it_is_what_then_gives(fmod: ModuleType) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def later() -> object:
            await asyncio.sleep(0)  # then()'s awaitable suspends: the await delegates to it
            return ("a", "tuple")

        waiter = new(fmod, later)
        task = loop.create_task(_await(waiter))
        await settle()
        loop.call_soon(waiter.wake)
        assert await asyncio.wait_for(task, WAIT) == ("a", "tuple")

        alone = new(fmod)  # no then: None
        task = loop.create_task(_await(alone))
        await settle()
        loop.call_soon(alone.wake)
        assert await asyncio.wait_for(task, WAIT) is None

    run(main)


def test_then_may_wait_on_the_same_waiter_again(fmod: ModuleType) -> None:
    """``WebSocket.__anext__``'s case: woken empty in place, ``then()`` rearms the waiter."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        calls: list[int] = []

        def again() -> Any:
            calls.append(1)
            return waiter.rearm(again)

        waiter = new(fmod, again)
        task = loop.create_task(_await(waiter))
        await settle()
        loop.call_soon(waiter.wake)  # empty, in place: then() waits on it again
        await settle()
        assert calls == [1] and waiter.pending and not task.done()
        loop.call_soon(waiter.wake, None, b"second")
        assert await asyncio.wait_for(task, WAIT) == b"second"

    run(main)


def test_an_error_from_then_is_raised_and_cancelling_reaches_its_awaitable(
        fmod: ModuleType) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def fails() -> None:
            await asyncio.sleep(0)
            raise LookupError("from then")

        waiter = new(fmod, fails)
        task = loop.create_task(_await(waiter))
        await settle()
        loop.call_soon(waiter.wake)
        with pytest.raises(LookupError, match="from then"):
            await asyncio.wait_for(task, WAIT)

        inner = new(fmod)
        outer = new(fmod, lambda: inner)  # then's awaitable is another waiter
        task = loop.create_task(_await(outer))
        await settle()
        loop.call_soon(outer.wake)
        await settle()
        assert not task.done() and inner.pending
        task.cancel()  # the task cancels what it waits on now: inner
        with pytest.raises(asyncio.CancelledError):
            await task
        assert inner.cancelled() and not outer.cancelled()

        async def catches() -> str:
            try:
                await asyncio.sleep(WAIT)
            except asyncio.CancelledError:
                return "caught"  # a cancellation thrown into then()'s awaitable reaches it
            return "slept"

        waiter = new(fmod, catches)
        task = loop.create_task(_await(waiter))
        await settle()
        loop.call_soon(waiter.wake)
        await settle()
        task.cancel()
        assert await asyncio.wait_for(task, WAIT) == "caught"

    run(main)


def test_one_waiter_serves_every_wait_woken_in_place(fmod: ModuleType) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        waiter = new(fmod)
        got: list[object] = []

        async def consume() -> None:
            current = waiter
            for _ in range(50):
                got.append(await current)
                current = current.rearm(None)
                assert current is waiter  # the same object, pending again

        task = loop.create_task(consume())
        for i in range(50):
            await settle()
            loop.call_soon(waiter.wake, None, i)
        await asyncio.wait_for(task, WAIT)
        assert got == list(range(50))

    run(main)


def test_several_done_callbacks_run_in_the_order_added(fmod: ModuleType) -> None:
    async def main() -> None:
        calls: list[str] = []

        def named(name: str) -> Callable[[object], None]:
            return lambda w: calls.append(name)

        a, b, c = named("a"), named("b"), named("c")
        waiter = new(fmod)
        for fn in (a, b, c, b):
            waiter.add_done_callback(fn)
        assert waiter.remove_done_callback(b) == 2
        assert waiter.remove_done_callback(b) == 0
        loop = asyncio.get_running_loop()
        loop.call_soon(waiter.wake, None, "x")  # not in place: more than one callback
        await asyncio.sleep(0)
        assert calls == []
        await settle()
        assert calls == ["a", "c"] and waiter.result() == "x"
        waiter.add_done_callback(named("late"))  # already done: scheduled at once
        assert calls == ["a", "c"]
        await settle()
        assert calls == ["a", "c", "late"]
        assert waiter.rearm(None) is None  # not woken in place

        cancelled = new(fmod)
        cancelled.add_done_callback(a)
        cancelled.add_done_callback(c)
        assert cancelled.cancel() and cancelled.cancelled()
        await settle()
        assert calls[-2:] == ["a", "c"]

    run(main)


def test_the_woken_task_runs_in_its_own_context(fmod: ModuleType) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        waiter = new(fmod)
        seen: list[str] = []

        async def wait() -> None:
            var.set("task's")
            await waiter
            seen.append(var.get())
            var.set("changed by the task")

        task = loop.create_task(wait())
        await settle()

        def callback() -> None:
            var.set("callback's")
            waiter.wake(None, 1)  # in place, under the task's context
            seen.append(var.get())  # the callback's own context again

        loop.call_soon(callback, context=contextvars.copy_context())
        await settle()
        assert seen == ["task's", "callback's"] and task.done()
        assert var.get() == "unset"

    run(main)


def test_the_await_protocol_step_by_step(fmod: ModuleType) -> None:
    async def main() -> None:
        for value in (b"bytes", ("a", "tuple"), ValueError("an exception as the value")):
            waiter = new(fmod)
            it = waiter.__await__()
            assert next(it) is waiter and waiter._asyncio_future_blocking
            waiter._asyncio_future_blocking = False  # as a task does
            waiter.wake(None, value)
            with pytest.raises(StopIteration) as stop:
                next(it)
            assert stop.value.value is value

        done = new(fmod)
        done.wake(None, "at once")
        with pytest.raises(StopIteration) as stop:
            next(done.__await__())  # done already: no yield
        assert stop.value.value == "at once"

        thrown = new(fmod)
        it = thrown.__await__()
        next(it)
        with pytest.raises(KeyError):
            it.throw(KeyError("thrown in"))
        it = thrown.__await__()
        next(it)
        it.close()

        def old_style() -> Any:  # a generator-based coroutine: ``yield from``
            return (yield from waiter)

        waiter = new(fmod)
        gen = old_style()
        assert gen.send(None) is waiter
        waiter.wake(None, 7)
        with pytest.raises(StopIteration) as stop:
            gen.send(None)
        assert stop.value.value == 7

    run(main)


def test_asyncio_wrappers_take_the_waiter_itself_as_a_future(fmod: ModuleType) -> None:
    """``shield`` / ``wait_for`` / ``gather`` of the waiter itself (not of a coroutine): they
    use its callbacks, ``result``, ``exception`` and ``cancel`` directly."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        waiter = new(fmod)
        outer = asyncio.shield(waiter)
        loop.call_soon(waiter.wake, None, "through shield")
        assert await asyncio.wait_for(outer, WAIT) == "through shield"

        waiter = new(fmod)
        outer = asyncio.shield(waiter)
        outer.cancel()  # the waiter goes on, without the shield's callback
        with pytest.raises(asyncio.CancelledError):
            await outer
        assert waiter.pending
        log: list[str] = []
        waiter.add_done_callback(lambda w: log.append("mine"))
        # The only callback now, so run in place (the shield's would make two: scheduled).
        loop.call_soon(lambda: (waiter.wake(None, "later"), log.append("woken")))
        await settle()
        assert log == ["mine", "woken"] and waiter.result() == "later"

        waiter = new(fmod)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(waiter, 0.01)
        assert waiter.cancelled()
        waiter = new(fmod)
        loop.call_soon(waiter.wake, None, "in time")
        assert await asyncio.wait_for(waiter, WAIT) == "in time"

        first, second = new(fmod), new(fmod)
        loop.call_soon(first.wake, None, 1)
        loop.call_soon(second.wake, None, 2)
        assert await asyncio.wait_for(asyncio.gather(first, second), WAIT) == [1, 2]
        first, second = new(fmod), new(fmod)
        loop.call_soon(first.wake, KeyError("failed"))
        loop.call_soon(second.wake, None, 2)
        got = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True),
                                     WAIT)
        assert isinstance(got[0], KeyError) and got[1] == 2

    run(main)


# -- WebSocket.recv on each kernel's waiter ------------------------------------------------


@pytest.fixture
def patched(fmod: ModuleType, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The asyncio WebSocket with ``fmod``'s Wakeup."""
    monkeypatch.setattr(ws_module, "Wakeup", fmod.Wakeup)
    return fmod


def with_echo(test: Callable[[WebSocket], Awaitable[None]]) -> Callable[[ModuleType], None]:
    def wrapper(patched: ModuleType) -> None:
        async def echo(ws: WebSocket) -> None:
            async for message in ws:
                await ws.send(message)

        async def main() -> None:
            async with serve(echo, "127.0.0.1", 0) as server, \
                    connect(f"ws://127.0.0.1:{server.port}/") as ws:
                await test(ws)
                assert type(ws._recv_waiter) is patched.Wakeup

        run(main)

    wrapper.__name__ = test.__name__  # (not functools.wraps: pytest would ask for `ws`)
    return wrapper


@with_echo
async def test_recv_under_wait_for(ws: WebSocket) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(ws.recv(), 0.02)  # cancels the wait, nothing lost
    assert ws._recv_waiter is not None and ws._recv_waiter.cancelled()
    await ws.send("one")
    assert await asyncio.wait_for(ws.recv(), WAIT) == "one"
    with pytest.raises(TimeoutError):
        await ws.recv(timeout=0.02)  # the waiter woken with the error
    await ws.send("two")
    assert await ws.recv(timeout=WAIT) == "two"


@with_echo
async def test_recv_under_shield(ws: WebSocket) -> None:
    inner = asyncio.ensure_future(ws.recv())
    outer = asyncio.shield(inner)
    await asyncio.sleep(0)
    outer.cancel()  # the shielded recv goes on
    with pytest.raises(asyncio.CancelledError):
        await outer
    await ws.send(b"shielded")
    assert await asyncio.wait_for(inner, WAIT) == b"shielded"


@with_echo
async def test_recv_under_gather(ws: WebSocket) -> None:
    async def two() -> list[object]:
        return [await ws.recv(), await ws.recv()]

    got = await asyncio.wait_for(asyncio.gather(two(), ws.send("a"), ws.send("b")), WAIT)
    assert got[0] == ["a", "b"]
    waiting = asyncio.gather(ws.recv(), asyncio.sleep(0))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await ws.send("after")
    assert await ws.recv(timeout=WAIT) == "after"


@with_echo
async def test_async_for_takes_every_message_through_the_reused_waiter(ws: WebSocket) -> None:
    # Awaited by this task itself (run() bounds the whole test): the waiter is reused.
    for i in range(20):
        await ws.send(f"m{i}")
        assert await ws.__anext__() == f"m{i}"
    first = ws._recv_waiter
    await ws.send("again")
    assert await ws.__anext__() == "again"
    assert ws._recv_waiter is first  # rearmed, not replaced
    # Given to wait_for (a callback reads its result one loop step later): a new waiter next.
    await ws.send("wrapped")
    assert await asyncio.wait_for(ws.__anext__(), WAIT) == "wrapped"
    await ws.send("after")
    assert await ws.__anext__() == "after"
    assert ws._recv_waiter is not first


async def _await(waiter: Any) -> object:
    return await waiter


def test_a_waiter_not_awaited_by_a_task_is_not_reused(fmod: ModuleType) -> None:
    """Woken in place with a callback that is not an awaiting task's (gather given the waiter
    itself): the result may be read later, so the next wait must get a new waiter, or a
    second message would overwrite the first (review of session 5)."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        waiter = new(fmod)
        gathered = asyncio.gather(waiter, loop.create_future())

        def callback() -> None:  # a protocol callback: no task runs
            waiter.wake(None, b"first")

        loop.call_soon(callback)
        await settle()
        assert waiter.result() == b"first"
        assert waiter.rearm(None) is None  # not reusable: gather reads the result later
        assert waiter.result() == b"first"
        gathered.cancel()
        await settle()

    run(main)


def test_cancel_keeps_its_message(fmod: ModuleType) -> None:
    async def main() -> None:
        waiter = new(fmod)
        assert waiter.cancel("bye") and waiter.cancelled()
        with pytest.raises(asyncio.CancelledError) as info:
            waiter.result()
        assert info.value.args == ("bye",)
        with pytest.raises(asyncio.CancelledError) as info:
            waiter.exception()
        assert info.value.args == ("bye",)
        plain = new(fmod)
        plain.cancel()
        with pytest.raises(asyncio.CancelledError) as info:
            plain.result()
        assert info.value.args == ()

    run(main)
