"""Rendezvous per second through relays side by side (A/B), and profiles of the relay process.

A rendezvous is one relayed connection opened (sender, accept, listener's rendezvous, both 101s)
and closed; no pytest.

``python bench/rdv_ab.py compare --tree A=/path/a --tree B=/path/b`` starts one relay process per
source tree (``hyco_proto`` imported from that tree) and drives ``Session.rendezvous`` through
each in interleaved rounds (A, B, A, B, ... sequential, then 16 in flight), printing per round
and as medians: rendezvous per second and the relay process's CPU µs per rendezvous (user +
system from ``/proc``, the figure that does not depend on how busy the machine is).

``--profile DIR`` runs the relays under cProfile and writes ``DIR/<label>.prof`` (and the top
entries by own time, ``DIR/<label>.txt``) when they stop. ``--uvloop`` runs them on uvloop, and
so does a label ending in ``+uvloop`` (``--tree after+uvloop=/path/b``). A peer relay of
``bench/relays`` runs as ``--tree picows=module:bench.relays.picows_relay``.

``--py-spy DIR`` samples them with py-spy instead (``DIR/<label>.txt``, raw stacks; ``python
bench/rdv_ab.py top FILE`` lists own samples per function).

``python bench/rdv_ab.py relay --root TREE [--profile FILE] [--uvloop]`` is the relay process
itself: ``RelayServiceServer`` on 127.0.0.1, ``PORT <n>`` on stdout, stops when stdin closes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TIMEOUT = 15.0


def _relay(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(HERE.parent))
    from bench.tree import import_from_tree

    import_from_tree(args.root)
    import asyncio
    import threading

    from hyco_proto.adapters.asyncio import RelayServiceServer

    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def watch() -> None:  # the parent holds our stdin open: EOF means stop
            sys.stdin.buffer.read()
            loop.call_soon_threadsafe(done.set)

        threading.Thread(target=watch, daemon=True).start()
        async with RelayServiceServer(host="127.0.0.1", port=0) as server:
            print(f"PORT {server.port}", flush=True)
            await done.wait()

    if not args.profile:
        asyncio.run(serve())
        return 0
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    asyncio.run(serve())
    prof.disable()
    prof.dump_stats(args.profile)
    with open(Path(args.profile).with_suffix(".txt"), "w") as out:
        stats = pstats.Stats(prof, stream=out)
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(60)
    return 0


class _Relay:
    def __init__(self, label: str, root: str, profile: str | None, uvloop: bool,
                 spy: str | None = None) -> None:
        cmd = [sys.executable, str(HERE / "rdv_ab.py"), "relay", "--root", root]
        if root.startswith("module:"):  # a peer relay of bench/relays (picows, websockets)
            cmd = [sys.executable, "-m", root[7:], "--port", "0"]
            profile, uvloop = None, False
        if profile:
            cmd += ["--profile", profile]
        if spy:  # sampled by py-spy, the thread holding the GIL (CPU figures: py-spy's)
            spy_bin = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            cmd = [spy_bin, "record", "--format", "raw", "--rate", "500", "--gil", "-o", spy, "--",
                   *cmd]
        if uvloop:
            cmd.append("--uvloop")
        self.label = label
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     cwd=HERE.parent)
        assert self.proc.stdout is not None
        line: list[str] = []
        for _ in range(20):  # bounded by the relay's start; py-spy says lines of its own
            raw = self.proc.stdout.readline()
            line = raw.decode().split()
            if not raw or line[:1] == ["PORT"]:
                break
        if len(line) != 2 or line[0] != "PORT":
            self.stop()
            if not line:
                raise RuntimeError(f"{label}: the relay exited before announcing its port "
                                   f"(its own message is above)")
            raise RuntimeError(f"{label}: relay said {line!r} instead of PORT <n>")
        self.port = int(line[1])

    def cpu(self) -> tuple[float, float]:
        """User and system CPU seconds so far."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(TIMEOUT)


def _compare(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(HERE.parent))
    from bench.loadgen import Session, raise_fd_limit, rendezvous_rounds

    raise_fd_limit()
    trees = [t.split("=", 1) for t in args.tree]
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    if args.py_spy:
        Path(args.py_spy).mkdir(parents=True, exist_ok=True)
    relays = [_Relay(label, root,
                     str(Path(args.profile, f"{label}.prof")) if args.profile else None,
                     args.uvloop or label.endswith("+uvloop"),
                     str(Path(args.py_spy, f"{label}.txt")) if args.py_spy else None)
              for label, root in trees]
    results: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    try:
        sessions = {r.label: Session(r.port) for r in relays}
        for rnd, conc, label, rate, user, system in rendezvous_rounds(
                sessions, args.rounds, args.count, args.concurrency,
                {r.label: r.cpu for r in relays}):
            results.setdefault((label, conc), []).append((rate, user + system, user))
            print(f"round {rnd} x{conc:<2} {label:14} {rate:8.0f}/s "
                  f"relay {user + system:7.1f} µs CPU/rendezvous ({user:.0f} user)", flush=True)
        for sess in sessions.values():
            sess.close()
    finally:
        for relay in relays:
            relay.stop()
    tick = 1e6 / os.sysconf("SC_CLK_TCK") / args.count
    print(f"\nmedians of {args.rounds} interleaved rounds of {args.count} rendezvous (relay CPU "
          f"from /proc: steps of {tick:.0f} µs per rendezvous at this count):")
    for (label, conc), rows in results.items():
        rate = statistics.median(r for r, _, _ in rows)
        cpu = statistics.median(c for _, c, _ in rows)
        user = statistics.median(u for _, _, u in rows)
        print(f"x{conc:<2} {label:14} {rate:8.0f} rendezvous/s  relay {cpu:7.1f} µs CPU each "
              f"({user:.0f} user)")
    return 0


def _top(args: argparse.Namespace) -> int:
    """Own samples per function (the innermost frame, lines merged) of a py-spy ``--format
    raw`` file, and per part of the program; start-up (imports) is left out."""
    own: dict[str, int] = {}
    parts: dict[str, int] = {}
    total = 0
    for line in Path(args.file).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or "importlib._bootstrap" in stack:
            continue
        leaf = stack.rsplit(";", 1)[-1]
        name, _, where = leaf.partition(" (")
        where = where.rsplit(":", 1)[0]
        own[f"{name} ({where})"] = own.get(f"{name} ({where})", 0) + int(count)
        part = ("adapter" if "hyco_proto/adapters" in where else
                "core (hyco_proto)" if "hyco_proto" in where else
                "h11" if "h11/" in where else
                "asyncio + selectors" if "asyncio" in where or "selectors" in where else
                "other (stdlib, C calls)")
        parts[part] = parts.get(part, 0) + int(count)
        total += int(count)
    for part, count in sorted(parts.items(), key=lambda item: -item[1]):
        print(f"{count / total * 100:5.1f}%  [{part}]")
    for leaf, count in sorted(own.items(), key=lambda item: -item[1])[:args.limit]:
        print(f"{count / total * 100:5.1f}%  {leaf}")
    return 0


def main() -> int:
    sys.path.insert(0, str(HERE.parent))
    from bench.tree import positive  # (not from bench.loadgen: no hyco_proto before the tree's)

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    relay = sub.add_parser("relay", help="the relay process compare starts (PORT n on stdout)")
    relay.add_argument("--root", default=str(HERE.parent),
                       help="the checkout whose hyco_proto it runs (default: this one)")
    relay.add_argument("--profile", metavar="FILE",
                       help="run under cProfile; the stats go to FILE when it stops")
    relay.add_argument("--uvloop", action="store_true", help="run on uvloop")
    compare = sub.add_parser("compare", help="rendezvous per second and relay CPU, A/B")
    def tree(text: str) -> str:
        if "=" not in text:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give LABEL=PATH (a checkout) or LABEL=module:bench.relays.NAME")
        return text

    compare.add_argument("--tree", action="append", required=True, type=tree,
                         help="LABEL=PATH (a checkout with its extension built) or "
                              "LABEL=module:bench.relays.NAME (a peer relay); a LABEL ending "
                              "in +uvloop runs on uvloop")
    compare.add_argument("--rounds", type=positive, default=5,
                         help="interleaved rounds (default: 5); the medians are the figures: "
                              "one round on a shared machine is mostly noise")
    compare.add_argument("--count", type=positive, default=400,
                         help="rendezvous per round and relay (default: 400; the relay's CPU "
                              "comes from /proc in 10 ms ticks: count it in thousands)")
    compare.add_argument("--concurrency", type=positive, nargs="+", default=[1, 16],
                         help="rendezvous in flight, one pass each (default: 1 16)")
    compare.add_argument("--profile", metavar="DIR",
                         help="run the relays under cProfile, DIR/<label>.prof and .txt")
    compare.add_argument("--uvloop", action="store_true", help="run our relays on uvloop")
    compare.add_argument("--py-spy", metavar="DIR", help="sample each relay with py-spy")
    top = sub.add_parser("top", help="own samples per function of a py-spy raw file")
    top.add_argument("file", help="a --py-spy DIR/<label>.txt")
    top.add_argument("--limit", type=int, default=25, help="functions listed (default: 25)")
    args = parser.parse_args()
    run = {"relay": _relay, "compare": _compare, "top": _top}[args.cmd]
    try:
        return run(args)
    except RuntimeError as exc:  # a relay that did not start, a rendezvous that failed: said
        print(f"rdv_ab: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
