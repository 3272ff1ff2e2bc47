"""``hyco emulator`` as ``bench/load.py`` runs it: the real CLI, with a few things around it.

- ``RLIMIT_NOFILE``: the soft limit is raised to the hard one first (``hyco emulator`` does so
  too, ``hyco_proto.cli.raise_open_file_limit``; the load processes use this as well): a relayed
  pair costs the emulator two sockets, so thousands of idle pairs need it.
- A watchdog: the parent holds our stdin open; EOF means it is gone, and we exit, so no emulator
  outlives a load run (``bench/relays/_common.py`` does the same for the relay benchmarks).
- With ``HYCO_LOAD_TRACEMALLOC=<file>``: ``tracemalloc`` runs from the start, and each
  ``SIGUSR1`` writes the top allocation sites, and what grew since the previous dump, to
  ``<file>``: how ``bench/load.py --tracemalloc`` finds where the memory of an idle pair goes.
- With ``HYCO_LOAD_BACKLOG=<n>``: ``RelayServiceServer`` gets ``backlog=n`` instead of its default
  1,024 (an experiment: ``bench/load.py --backlog``; the emulator has no flag).

``python -m bench.load_emulator [hyco emulator flags]``; the banner goes to stdout, as with
``hyco emulator``.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import threading
from types import FrameType
from typing import Any


def raise_nofile() -> tuple[int, int]:
    from hyco_proto.cli import raise_open_file_limit

    raise_open_file_limit()
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _watch_parent() -> None:
    def watch() -> None:
        try:
            sys.stdin.buffer.read()
        finally:
            os._exit(0)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _tracemalloc(path: str) -> None:
    import tracemalloc

    tracemalloc.start(4)
    previous: list[tracemalloc.Snapshot] = []

    def dump(_signum: int, _frame: FrameType | None) -> None:
        """The top allocation sites now, and what grew since the previous dump."""
        snapshot = tracemalloc.take_snapshot().filter_traces(
            (tracemalloc.Filter(False, tracemalloc.__file__),))
        stats = snapshot.statistics("lineno")
        lines = [f"== now: {sum(s.size for s in stats) / 1024:,.0f} KiB traced in "
                 f"{len(stats)} sites"]
        for stat in stats[:25]:
            frame = stat.traceback[0]
            lines.append(f"{stat.size / 1024:12,.1f} KiB {stat.count:9,d} blocks  "
                         f"{frame.filename}:{frame.lineno}")
        if previous:
            diff = snapshot.compare_to(previous[0], "lineno")
            grown = sum(d.size_diff for d in diff)
            lines.append(f"== since the previous dump: {grown / 1024:+,.0f} KiB")
            for d in diff[:30]:
                frame = d.traceback[0]
                lines.append(f"{d.size_diff / 1024:+12,.1f} KiB {d.count_diff:+9,d} blocks  "
                             f"{frame.filename}:{frame.lineno}")
        previous[:] = [snapshot]
        with open(path, "a") as out:
            out.write("\n".join(lines) + "\n\n")

    signal.signal(signal.SIGUSR1, dump)


def _backlog(backlog: int) -> None:
    """``RelayServiceServer(..., backlog=backlog)`` unless the caller passes one."""
    from hyco_proto.adapters.asyncio import service

    original = service.RelayServiceServer.__init__

    def init(self: service.RelayServiceServer, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("backlog", backlog)
        original(self, *args, **kwargs)

    service.RelayServiceServer.__init__ = init  # type: ignore[method-assign]


def main() -> int:
    raise_nofile()
    backlog = os.environ.get("HYCO_LOAD_BACKLOG")
    if backlog:
        _backlog(int(backlog))
    _watch_parent()
    trace = os.environ.get("HYCO_LOAD_TRACEMALLOC")
    if trace:
        _tracemalloc(trace)
    from hyco_proto.cli import main as cli_main

    return cli_main(["emulator", *sys.argv[1:]])


if __name__ == "__main__":
    raise SystemExit(main())
