"""One synchronous facade per adapter, so each scenario in ``test_scenarios.py`` is written once.

``facade("asyncio")`` runs the asyncio adapter on a dedicated event-loop thread (every call goes
through ``run_coroutine_threadsafe`` and is bounded); ``facade("threads")`` calls the blocking
API directly; ``facade("gevent")`` runs everything in greenlets of its own OS thread with its
own hub (so a gevent listener keeps running while the test thread blocks on something else, and
the test thread never needs gevent). Every call takes a bound (seconds) and fails with
``TimeoutError`` past it.

The facades expose what the scenarios need and nothing else:

* ``Sock`` — ``send``, ``recv(timeout)``, ``ping``, ``close``, ``close_code`` / ``close_reason``,
  ``subprotocol``, ``raw`` (the adapter's own socket object);
* ``Listener`` — a ``RelayedServer``: ``start()`` / ``enter()`` (the ``with`` / ``async with``
  path), ``accept(timeout)``, ``close()``;
* ``PlainServer`` — the plain ``serve``: ``port``, ``close()``.

``Harness`` creates facades on demand and, in ``close()``, checks that everything a scenario
started has ended: threads, open file descriptors (sockets of the adapters and of the in-process
relay), gevent greenlets, asyncio tasks. ``Emulator`` is the interop tests'
``ThreadedEmulator`` that can also be started on a given port (for the restart scenario).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import importlib
import inspect
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any, TypeVar

from hyco_proto.adapters.asyncio import RelayServiceServer
from hyco_proto.sas import create_relay_token
from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY, ServiceConfig
from tests.interop import TIMEOUT, ThreadedEmulator
from tests.procutil import free_port as free_port  # re-exported for the adapter tests

T = TypeVar("T")

ADAPTERS = ("asyncio", "threads", "gevent")
#: The bound for any single wait (seconds).
WAIT = 10.0


def token(uri: str, ttl: int = 3600, *, key: str = DEVELOPMENT_KEY) -> str:
    return create_relay_token(uri, DEFAULT_RULE_NAME, key, ttl)


def wait_until(check: Callable[[], object], timeout: float = WAIT, what: str = "") -> None:
    """Poll a condition that has no event to wait on, bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {what or check}")
        time.sleep(0.005)


def parallel(calls: Iterable[Callable[[], T]], workers: int = 16,
             timeout: float = 4 * WAIT) -> list[T]:
    """Run calls on a thread pool (joined before returning); results in order."""
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="harness-pool") as ex:
        futures = [ex.submit(call) for call in calls]
        _, pending = concurrent.futures.wait(futures, timeout)
        for f in pending:
            f.cancel()
        if pending:
            raise AssertionError(f"{len(pending)} of {len(futures)} calls did not finish "
                                 f"within {timeout} s")
        return [f.result() for f in futures]


class Recorder:
    """A thread-safe list for hook calls, with a bounded wait."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._cond = threading.Condition()

    def __call__(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait_for(self, count: int = 1, timeout: float = WAIT) -> list[Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.items) >= count, timeout):
                raise AssertionError(f"{len(self.items)} of {count} items within {timeout} s: "
                                     f"{self.items!r}")
            return list(self.items)


# ------------------------------------------------------------------------------------------
# the relay service


class Emulator(ThreadedEmulator):
    """``ThreadedEmulator`` on 127.0.0.1, on ``port`` (0: a free one)."""

    def __init__(self, config: ServiceConfig | None = None, *, port: int = 0) -> None:
        super().__init__(config)
        self._port = port

    def __enter__(self) -> Emulator:
        self._thread.start()

        async def start() -> RelayServiceServer:
            server = RelayServiceServer(self.service, port=self._port)
            await server.start()
            return server

        try:
            self.server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(TIMEOUT)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._loop.is_closed():
            super().__exit__(*exc)

    def listen_uri(self, hc: str = "myhc") -> str:
        return f"ws://127.0.0.1:{self.port}/$hc/{hc}"

    def send_uri(self, hc: str = "myhc", tail: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}/$hc/{hc}{tail}"

    def listeners(self, hc: str = "myhc") -> int:
        return int(self.run(lambda: self.service.broker.listener_count(hc)))

    def count_renewals(self) -> list[str]:
        """Record every ``renewToken`` command the broker receives (from now on)."""
        broker = self.service.broker
        original = broker.listener_message
        seen: list[str] = []

        def spy(now: float, listener_id: str, text: str) -> None:
            if "renewToken" in text:
                seen.append(listener_id)
            original(now, listener_id, text)

        broker.listener_message = spy  # type: ignore[method-assign]
        return seen


# ------------------------------------------------------------------------------------------
# leak checks


def _live_greenlets() -> list[Any]:
    try:
        import gevent
    except ImportError:
        return []
    live = []
    for obj in gc.get_objects():
        try:
            if isinstance(obj, gevent.Greenlet) and not obj.dead:
                live.append(obj)
        except ReferenceError:  # a dead weak proxy
            continue
    return live


def _open_fds() -> set[str]:
    try:
        return set(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: no file-descriptor check
        return set()


class Leaks:
    """Threads alive (and file descriptors open) before vs after; whatever the scenario
    started gets a bounded time to end."""

    def __init__(self) -> None:
        self.before = set(threading.enumerate())
        self.fds_before = _open_fds()

    def new_fds(self, timeout: float = 5.0) -> list[str]:
        """Descriptors opened since and still open (sockets, pipes, selectors)."""
        deadline = time.monotonic() + timeout
        while True:
            gc.collect()
            fds = _open_fds()
            left = sorted(fds - self.fds_before, key=int)
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        described = []
        for fd in left:
            try:
                described.append(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
            except OSError:
                continue  # closed meanwhile
        return described

    def new_threads(self, timeout: float = 5.0) -> list[threading.Thread]:
        deadline = time.monotonic() + timeout
        for thread in set(threading.enumerate()) - self.before:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        return [t for t in set(threading.enumerate()) - self.before if t.is_alive()]

    def check(self, timeout: float = 5.0) -> None:
        left = self.new_threads(timeout)
        assert not left, f"threads left running: {sorted(t.name for t in left)}"


# ------------------------------------------------------------------------------------------
# the facades


class Sock:
    """An adapter's WebSocket (relayed or plain) behind blocking, bounded calls."""

    def __init__(self, facade: Facade, raw: Any) -> None:
        self.facade = facade
        self.raw = raw

    def send(self, message: str | bytes, timeout: float = WAIT) -> None:
        self.facade.run(lambda: self.raw.send(message), timeout)

    def recv(self, timeout: float = WAIT) -> str | bytes:
        return self.facade.recv(self.raw, timeout)  # type: ignore[no-any-return]

    def ping(self, timeout: float = WAIT) -> None:
        self.facade.ping(self.raw, timeout)

    def close(self, code: int = 1000, reason: str = "", timeout: float = WAIT) -> None:
        self.facade.run(lambda: self.raw.close(code, reason), timeout)

    def echo(self, message: str | bytes, timeout: float = WAIT) -> str | bytes:
        self.send(message, timeout)
        return self.recv(timeout)

    @property
    def close_code(self) -> int | None:
        return self.raw.close_code  # type: ignore[no-any-return]

    @property
    def close_reason(self) -> str | None:
        return self.raw.close_reason  # type: ignore[no-any-return]

    @property
    def subprotocol(self) -> str | None:
        return self.raw.subprotocol  # type: ignore[no-any-return]


class Listener:
    """A ``RelayedServer`` (not started yet)."""

    def __init__(self, facade: Facade, raw: Any) -> None:
        self.facade = facade
        self.raw = raw
        self._entered = False

    def start(self, timeout: float = WAIT) -> Listener:
        self.facade.run(self.raw.start, timeout)
        return self

    def enter(self, timeout: float = WAIT) -> Listener:
        """Start through the context-manager protocol (``with`` / ``async with``)."""
        self.facade.run(self.facade.enter_fn(self.raw), timeout)
        self._entered = True
        return self

    def accept(self, timeout: float = WAIT) -> Sock:
        return Sock(self.facade, self.facade.accept(self.raw, timeout))

    def close(self, timeout: float = WAIT) -> None:
        if self._entered:
            self._entered = False
            self.facade.run(self.facade.exit_fn(self.raw), timeout)
        else:
            self.facade.run(self.raw.close, timeout)

    def __enter__(self) -> Listener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class PlainServer:
    """The plain ``serve`` of an adapter, started."""

    def __init__(self, facade: Facade, raw: Any) -> None:
        self.facade = facade
        self.raw = raw

    @property
    def port(self) -> int:
        return int(self.raw.port)

    def close(self, timeout: float = WAIT) -> None:
        self.facade.close_plain(self.raw, timeout)

    def __enter__(self) -> PlainServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Facade:
    """What a scenario calls; subclasses say how each call runs on their adapter."""

    name = ""

    def __init__(self) -> None:
        self.module: ModuleType = importlib.import_module(f"hyco_proto.adapters.{self.name}")

    # -- how calls run ---------------------------------------------------------------------

    def run(self, fn: Callable[[], Any], timeout: float = WAIT) -> Any:
        raise NotImplementedError

    def shutdown(self) -> None:
        """Stop what the facade itself runs; raise if the adapter left work behind."""

    # -- adapter-specific pieces -----------------------------------------------------------

    def echo_hook(self, record: Callable[[Any], None] | None = None) -> Callable[[Any], Any]:
        """A ``connection`` hook / ``serve`` handler echoing every message until the close;
        ``record(ws)`` is called once the socket is closed."""
        raise NotImplementedError

    def recv(self, raw: Any, timeout: float) -> Any:
        return self.run(lambda: raw.recv(timeout=timeout), timeout + 1.0)

    def ping(self, raw: Any, timeout: float) -> None:
        def go() -> Any:
            waiter = raw.ping()
            if hasattr(waiter, "wait"):
                assert waiter.wait(timeout), "no pong"
            return None

        self.run(go, timeout + 1.0)

    def accept(self, raw: Any, timeout: float) -> Any:
        return self.run(lambda: raw.accept(timeout=timeout), timeout + 1.0)

    def enter_fn(self, raw: Any) -> Callable[[], Any]:
        return raw.__enter__  # type: ignore[no-any-return]

    def exit_fn(self, raw: Any) -> Callable[[], Any]:
        return lambda: raw.__exit__(None, None, None)

    def close_plain(self, raw: Any, timeout: float) -> None:
        self.run(raw.close, timeout)

    # -- the API, the same for every adapter -----------------------------------------------

    def relayed_server(self, uri: str, tok: Any, *, echo: bool = True,
                       **kwargs: Any) -> Listener:
        """A ``RelayedServer`` (not started): echoing through its ``connection`` hook, or
        handing sockets to ``accept()`` when ``echo`` is False."""
        if echo:
            kwargs.setdefault("connection", self.echo_hook())
        server = self.run(lambda: self.module.RelayedServer(uri, tok, **kwargs))
        return Listener(self, server)

    def listen(self, uri: str, tok: Any = None, *, echo: bool = True,
               timeout: float = WAIT, **kwargs: Any) -> Listener:
        """A started echoing listener (a callable token by default)."""
        if tok is None:
            tok = lambda: token(uri)  # noqa: E731
        return self.relayed_server(uri, tok, echo=echo, **kwargs).start(timeout)

    def relayed_connect(self, uri: str, tok: str | None = None, *, timeout: float = WAIT,
                        **kwargs: Any) -> Sock:
        tok = token(uri) if tok is None else tok
        return Sock(self, self.run(lambda: self.module.relayed_connect(uri, tok, **kwargs),
                                   timeout))

    def connect(self, url: str, *, timeout: float = WAIT, **kwargs: Any) -> Sock:
        return Sock(self, self.run(lambda: self.module.connect(url, **kwargs), timeout))

    def serve_echo(self, host: str = "127.0.0.1", port: int = 0, *,
                   record: Callable[[Any], None] | None = None, **kwargs: Any) -> PlainServer:
        """The plain ``serve`` with an echoing handler (``record(ws)`` after each close)."""
        return PlainServer(self, self.run(
            lambda: self.module.serve(self.echo_hook(record), host, port, **kwargs)))


class AsyncioFacade(Facade):
    name = "asyncio"

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="harness-asyncio",
                                        daemon=True)
        self._thread.start()

    def run(self, fn: Callable[[], Any], timeout: float = WAIT) -> Any:
        async def call() -> Any:
            result = fn()
            if inspect.isawaitable(result):
                result = await result
            return result

        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(call(), timeout), self.loop)
        try:
            return future.result(timeout + 5.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"asyncio call did not finish within {timeout} s") from None

    def echo_hook(self, record: Callable[[Any], None] | None = None) -> Callable[[Any], Any]:
        closed = self.module.ConnectionClosedError

        async def echo(ws: Any) -> None:
            try:
                async for message in ws:
                    await ws.send(message)
            except closed:
                pass
            finally:
                if record is not None:
                    record(ws)

        return echo

    def recv(self, raw: Any, timeout: float) -> Any:
        return self.run(raw.recv, timeout)

    def ping(self, raw: Any, timeout: float) -> None:
        async def go() -> None:
            pong = await raw.ping()
            await pong

        self.run(go, timeout)

    def accept(self, raw: Any, timeout: float) -> Any:
        return self.run(raw.accept, timeout)

    def enter_fn(self, raw: Any) -> Callable[[], Any]:
        return raw.__aenter__  # type: ignore[no-any-return]

    def exit_fn(self, raw: Any) -> Callable[[], Any]:
        return lambda: raw.__aexit__(None, None, None)

    def close_plain(self, raw: Any, timeout: float) -> None:
        async def go() -> None:
            raw.close()
            await raw.wait_closed()

        self.run(go, timeout)

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """Call ``fn`` on the loop thread outside any task."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(call)
        return future.result(WAIT)

    def shutdown(self) -> None:
        def tasks() -> list[asyncio.Task[Any]]:
            return list(asyncio.all_tasks(self.loop))

        deadline = time.monotonic() + 5.0
        left = self._on_loop(tasks)
        while left and time.monotonic() < deadline:
            time.sleep(0.01)
            left = self._on_loop(tasks)

        async def cancel() -> None:
            for task in left:
                task.cancel()
            await asyncio.wait(left, timeout=2.0)

        if left:
            self.run(cancel)
        self.run(self.loop.shutdown_asyncgens)
        self.run(self.loop.shutdown_default_executor)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT)
        self.loop.close()
        assert not left, f"asyncio tasks left running: {left!r}"


class ThreadsFacade(Facade):
    name = "threads"

    def run(self, fn: Callable[[], Any], timeout: float = WAIT) -> Any:
        return fn()

    def echo_hook(self, record: Callable[[Any], None] | None = None) -> Callable[[Any], Any]:
        closed = self.module.ConnectionClosedError

        def echo(ws: Any) -> None:
            try:
                for message in ws:
                    ws.send(message)
            except closed:
                pass
            finally:
                if record is not None:
                    record(ws)

        return echo


class GeventFacade(ThreadsFacade):
    """The gevent adapter in its own OS thread, with its own hub."""

    name = "gevent"

    def __init__(self) -> None:
        super().__init__()
        import gevent
        import gevent.event

        self._gevent = gevent
        ready = threading.Event()
        self._loop: Any = None
        self._stop: Any = None
        self._greenlets_before: list[Any] = []

        def main() -> None:
            hub = gevent.get_hub()
            self._loop = hub.loop
            self._stop = gevent.event.Event()
            self._greenlets_before = _live_greenlets()
            # An active watcher keeps the hub's loop alive while nothing else is pending
            # (otherwise waiting here raises LoopExit).
            keepalive = hub.loop.async_()
            keepalive.start(lambda: None)
            ready.set()
            self._stop.wait()
            keepalive.stop()
            keepalive.close()
            hub.destroy(destroy_loop=True)

        self._thread = threading.Thread(target=main, name="harness-gevent", daemon=True)
        self._thread.start()
        assert ready.wait(WAIT), "the gevent thread did not start"

    def run(self, fn: Callable[[], Any], timeout: float = WAIT) -> Any:
        gevent = self._gevent
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def task() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                with gevent.Timeout(timeout):
                    result = fn()
            except gevent.Timeout:
                future.set_exception(TimeoutError(f"gevent call did not finish within "
                                                  f"{timeout} s"))
            except BaseException as exc:  # handed to the calling thread
                future.set_exception(exc)
            else:
                future.set_result(result)

        self._loop.run_callback_threadsafe(lambda: gevent.spawn(task))
        return future.result(timeout + 5.0)

    def shutdown(self) -> None:
        gevent = self._gevent
        before = {id(g) for g in self._greenlets_before}

        def leftovers() -> list[Any]:
            me = gevent.getcurrent()
            return [g for g in _live_greenlets() if g is not me and id(g) not in before]

        def settle() -> list[Any]:
            deadline = time.monotonic() + 5.0
            left = leftovers()
            while left and time.monotonic() < deadline:
                gevent.sleep(0.01)
                left = leftovers()
            return [repr(g) for g in left]

        try:
            left = self.run(settle, 10.0)
        finally:
            self._loop.run_callback_threadsafe(self._stop.set)
            self._thread.join(WAIT)
        assert not left, f"greenlets left running: {left}"


_FACADES: dict[str, type[Facade]] = {
    "asyncio": AsyncioFacade, "threads": ThreadsFacade, "gevent": GeventFacade}


class Harness:
    """Facades created on demand; ``close()`` shuts them down and checks for leaks."""

    def __init__(self) -> None:
        self.leaks = Leaks()
        self._facades: dict[str, Facade] = {}

    def __call__(self, name: str) -> Facade:
        if name not in self._facades:
            self._facades[name] = _FACADES[name]()
        return self._facades[name]

    def close(self) -> None:
        problems: list[str] = []
        for facade in self._facades.values():
            try:
                facade.shutdown()
            except AssertionError as exc:
                problems.append(f"{facade.name}: {exc}")
        self._facades.clear()
        left = self.leaks.new_threads()
        if left:
            problems.append(f"threads left running: {sorted(t.name for t in left)}")
        fds = self.leaks.new_fds()
        if fds:
            problems.append(f"file descriptors left open: {fds}")
        assert not problems, "; ".join(problems)


def echo_all(sock: Sock, messages: Sequence[str | bytes], timeout: float = WAIT) -> None:
    """Send every message, then read the echoes and compare them (byte-exact)."""
    for message in messages:
        sock.send(message, timeout)
    for message in messages:
        got = sock.recv(timeout)
        assert type(got) is type(message) and got == message, (
            f"echo mismatch: sent {type(message).__name__} of {len(message)}, "
            f"got {type(got).__name__} of {len(got)}")


@contextlib.contextmanager
def closing(sock: Sock) -> Any:
    try:
        yield sock
    finally:
        with contextlib.suppress(Exception):
            sock.close()
