"""What the blocking implementation needs from a concurrency model (threads or gevent).

A :class:`Runtime` names the socket module, how to start a worker, and the waiting primitives
(TLS runs over memory BIOs on the runtime's plain sockets: :mod:`.tls`).
``hyco_proto.adapters.threads`` fills it with ``threading`` / ``socket`` / ``queue``,
``hyco_proto.adapters.gevent`` with gevent's cooperative equivalents; everything else in this
package is written once against it.

The primitives are used in a narrow way, so both families fit: locks are taken with
``acquire(False)``, ``acquire(True, timeout)`` or ``with``; events and queues are always waited on
with a timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

__all__ = ["EventLike", "LockLike", "QueueLike", "Runtime", "Worker", "Workers"]


class LockLike(Protocol):
    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, exc_type: Any, exc: Any, tb: Any, /) -> Any: ...


class EventLike(Protocol):
    def set(self) -> None: ...

    def clear(self) -> None: ...

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = ...) -> bool: ...


class QueueLike(Protocol):
    def put(self, item: Any) -> None: ...

    def get(self, block: bool = ..., timeout: float | None = ...) -> Any: ...

    def qsize(self) -> int: ...


@dataclass(frozen=True)
class Runtime:
    """The concurrency primitives of one adapter."""

    #: ``"threads"`` or ``"gevent"`` (logger names, worker names).
    name: str
    #: The socket module (``socket`` or ``gevent.socket``): ``socket()``, ``getaddrinfo()``,
    #: constants. Looked up at each use, so a monkey-patched ``socket`` is honoured.
    socket: ModuleType
    #: ``start(fn, name)`` runs ``fn()`` in a new thread / greenlet and returns it (it has
    #: ``join(timeout)``); ``alive(it)`` says whether it still runs; ``current()`` is the
    #: caller's own.
    start: Callable[[Callable[[], None], str], Any]
    alive: Callable[[Any], bool]
    current: Callable[[], Any]
    lock: Callable[[], LockLike]
    event: Callable[[], EventLike]
    queue: Callable[[], QueueLike]
    #: What ``queue().get(timeout=...)`` raises when nothing came.
    empty: type[BaseException]
    sleep: Callable[[float], None]
    monotonic: Callable[[], float] = field(default=time.monotonic)
    #: Wall-clock seconds: the listener core checks token expiry against it.
    time: Callable[[], float] = field(default=time.time)

    def spawn(self, fn: Callable[[], None], name: str) -> Worker:
        """Run ``fn()`` in a new worker."""
        return Worker(self, self.start(fn, name))


class Worker:
    """A started thread or greenlet."""

    __slots__ = ("_handle", "_rt")

    def __init__(self, rt: Runtime, handle: Any) -> None:
        self._rt = rt
        self._handle = handle

    def join(self, timeout: float | None = None) -> None:
        self._handle.join(timeout)

    def is_alive(self) -> bool:
        return self._rt.alive(self._handle)

    def is_current(self) -> bool:
        """Whether the caller runs in this worker (a worker never joins itself)."""
        return self._rt.current() is self._handle

    def __repr__(self) -> str:
        return f"<Worker {self._handle!r}>"


class Workers:
    """The workers one server started; :meth:`join` waits for them (bounded) when it closes."""

    def __init__(self, rt: Runtime, log: logging.Logger) -> None:
        self._rt = rt
        self._log = log
        self._lock = rt.lock()
        self._live: list[Worker] = []

    def spawn(self, fn: Callable[[], None], name: str) -> Worker:
        log = self._log

        def run() -> None:
            try:
                fn()
            except Exception:
                log.exception("%s worker failed", name)

        worker = self._rt.spawn(run, f"hyco-{self._rt.name}-{name}")
        with self._lock:
            self._live = [w for w in self._live if w.is_alive()]
            self._live.append(worker)
        return worker

    def join(self, timeout: float) -> list[Worker]:
        """Wait until every worker (but the caller's own) has ended, at most ``timeout``
        seconds; returns those still running."""
        rt = self._rt
        deadline = rt.monotonic() + timeout
        while True:
            with self._lock:
                live = [w for w in self._live if w.is_alive() and not w.is_current()]
            left = deadline - rt.monotonic()
            if not live or left <= 0:
                return live
            for worker in live:
                worker.join(max(deadline - rt.monotonic(), 0.0))
