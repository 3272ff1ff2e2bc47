"""Echo servers in interleaved rounds: round trips/s and server CPU per round trip, medians.

``python -m bench.echo_ab [--sizes 256B,1MiB] [--servers hyco-asyncio,picows] [--rounds 7]
[--seconds 1] [--before DIR] [--pin]`` runs each server of ``bench/echo_servers.py`` in turn
(A, B, A, B ...), a fresh process per round, driven by ``loadgen.EchoClient``. ``--before DIR``
adds ``NAME@before`` for each of our servers, with ``hyco_proto`` from another checkout (``git
worktree add DIR REV``, then build its extension there; the bench code is this checkout's), so a
change is measured before and after in the same run.
``--pin`` puts the servers on CPU 1 and the client on CPU 0 (less scheduler noise on a small
machine). Nothing is written; one line per size and server.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench.echo_servers import OURS, SERVERS
from bench.loadgen import ECHO_SIZES, ROOT, EchoClient, ServerProcess, listed, positive

SIZES = ECHO_SIZES


def one_round(server: str, size: int, seconds: float, root: Path,
              pin: bool) -> tuple[float, float]:
    """(round trips/s, server CPU µs per round trip) of one fresh server process."""
    proc = ServerProcess(server, "bench.echo_servers", server, root=root)
    try:
        if pin:
            os.sched_setaffinity(proc.pid, {1})
        client = EchoClient(proc.port, size, websocket=server != "raw-tcp")
        try:
            client.run(50)
            step = 20 if size >= 100 * 1024 else 200
            count, cpu0, t0 = 0, proc.cpu(), time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                count += client.run(step)
            wall = time.perf_counter() - t0
            return count / wall, (proc.cpu() - cpu0) / count * 1e6
        finally:
            client.close()
    finally:
        proc.stop()


def measure(size: int, runs: list[tuple[str, Path]], rounds: int, seconds: float,
            pin: bool = False) -> dict[str, dict[str, Any]]:
    """Interleaved rounds of the servers ``runs`` names (``(label, checkout)``; a label's part
    before ``@`` is the server): per label, the median round trips/s, the median server CPU µs
    per round trip and every round's rate."""
    got: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in runs}
    for _ in range(rounds):
        for name, root in runs:
            got[name].append(one_round(name.partition("@")[0], size, seconds, root, pin))
    return {name: {"rate": statistics.median(r for r, _ in rows),
                   "cpu_us": statistics.median(c for _, c in rows),
                   "rounds": [round(r) for r, _ in rows]}
            for name, rows in got.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--sizes", default=["256B", "1MiB"], type=listed(SIZES),
                        help=f"comma-separated, of {','.join(SIZES)} (default: 256B,1MiB)")
    parser.add_argument("--servers", default=["hyco-asyncio", "picows"],
                        type=listed(SERVERS), help=f"comma-separated, of {','.join(SERVERS)} "
                        "(default: hyco-asyncio,picows)")
    parser.add_argument("--rounds", type=positive, default=7,
                        help="interleaved rounds; the figures are their medians (default: 7)")
    parser.add_argument("--seconds", type=float, default=1.0,
                        help="per round and server (default: 1.0)")
    parser.add_argument("--before", type=Path, help="a checkout with the code before a change")
    parser.add_argument("--pin", action="store_true", help="servers on CPU 1, client on CPU 0")
    args = parser.parse_args()
    runs = [(name, ROOT) for name in args.servers]
    if args.before is not None:
        runs += [(f"{name}@before", args.before.resolve()) for name, _ in runs
                 if name.partition("+")[0] in OURS]
    if args.pin:
        os.sched_setaffinity(0, {0})  # each server is moved to CPU 1 once it has started
    for label in args.sizes:
        for name, row in measure(SIZES[label], runs, args.rounds, args.seconds,
                                 args.pin).items():
            print(f"{label:>7} {name:28} {row['rate']:10,.0f} rt/s   server "
                  f"{row['cpu_us']:7.1f} µs/rt (median of {args.rounds})", flush=True)


if __name__ == "__main__":
    main()
