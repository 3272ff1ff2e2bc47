"""Profile a relay process while the load generator streams through it.

``python -m bench.profile_relay [--relay hyco_proto] [--size 1MiB|64B] [--seconds 5]
[--tool perf|py-spy] [--root DIR]`` starts the relay (``bench/relays``; from checkout ``DIR``
with ``--root``, for a before/after), opens one relayed pair, streams messages sender→listener for
``--seconds`` while the profiler samples the relay process, and prints the profile's top entries
(with ``--root``, ``hyco_proto`` comes from that checkout; the bench code is this one's):

- ``perf``: ``perf record -g`` then ``perf report --no-children``: where the CPU goes, kernel
  (socket copies, syscalls) and user space (the interpreter, the kernels' C) alike;
- ``py-spy``: ``py-spy record --nonblocking --format raw``: Python functions, as self-time
  counts (C functions show as the line that called them).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import loadgen
from bench.loadgen import BIG, SMALL, Stream


def _stream_for(stream: Stream, seconds: float, stop: threading.Event) -> int:
    moved = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end and not stop.is_set():
        moved += stream.run(8 if stream.size == BIG else 64)
    return moved


def _perf(pid: int, seconds: float, top: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "perf.data"
        subprocess.run(["perf", "record", "-q", "-F", "999", "-g", "-o", str(data), "-p",
                        str(pid), "--", "sleep", str(seconds)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        report = subprocess.run(
            ["perf", "report", "-q", "-i", str(data), "--no-children", "--stdio", "-g", "none",
             "--percent-limit", "0.5", "--sort", "dso,symbol"],
            check=True, capture_output=True, text=True).stdout
    lines = [line for line in report.splitlines() if line.strip()]
    return "\n".join(lines[:top])


def _pyspy(pid: int, seconds: float, top: int) -> str:
    exe = Path(sys.executable).with_name("py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "raw.txt"
        if not exe.exists():
            raise SystemExit(f"py-spy is not installed next to {sys.executable} "
                             "(pip install py-spy; it is in the bench extra)")
        # --nonblocking: the relay is not paused to be sampled (py-spy cannot add native
        # frames then, so C functions show as the Python line that called them).
        done = subprocess.run([str(exe), "record", "--nonblocking", "-r", "500", "-d",
                               str(max(1, int(seconds))), "-p", str(pid), "-f", "raw", "-o",
                               str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        if done.returncode:
            raise SystemExit(f"py-spy failed (it needs ptrace rights over the relay process): "
                             f"{done.stderr.strip()}")
        selfs: collections.Counter[str] = collections.Counter()
        total = 0
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            leaf = stack.split(";")[-1]
            selfs[leaf] += int(count)
            total += int(count)
    return "\n".join(f"{100 * n / total:5.1f}%  {name}" for name, n in selfs.most_common(top))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--relay", default="hyco_proto", choices=list(loadgen.RELAYS))
    parser.add_argument("--size", choices=["64B", "1MiB"], default="1MiB")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--tool", choices=["perf", "py-spy"], default="perf")
    parser.add_argument("--root", type=Path, default=loadgen.ROOT)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    relay = loadgen.RelayProcess(args.relay, args.root.resolve())
    session = loadgen.Session(relay.port)
    stop = threading.Event()
    try:
        (pair,) = session.open_pairs(1)
        stream = Stream(pair, BIG if args.size == "1MiB" else SMALL, relay_cpu=relay.cpu)
        stream.run(4)  # warm up
        worker = threading.Thread(target=_stream_for, args=(stream, args.seconds + 2, stop))
        worker.start()
        time.sleep(0.5)
        profile = (_perf if args.tool == "perf" else _pyspy)(relay.pid, args.seconds, args.top)
        stop.set()
        worker.join(loadgen.TIMEOUT * 4)
        stream.close()
    finally:
        session.close()
        relay.stop()
    print(f"# {args.relay} ({args.root}), {args.size} messages, {args.tool}, {args.seconds:g} s")
    print(profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
