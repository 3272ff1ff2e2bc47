"""Interleaved rounds: relays and the machine's own limits measured in turn, round after round.

This machine is shared and noisy: two figures measured a minute apart can differ by a third. So
every contender is set up first (its process started, one relayed pair opened), then each round
runs every contender once, in turn, and the figure is the median of the rounds per contender.

Contenders, sender→listener with the raw-socket load generator (``bench/loadgen.py``):

- the relays of ``loadgen.RELAYS`` (``hyco_proto``, ``picows``, ``websockets``): one relayed pair;
- ``socat``: Debian's ``socat -b SIZE TCP-LISTEN:… TCP:…`` between the sender's and the
  counter's TCP connections. It reads and writes bytes and does nothing else (no WebSocket
  work; the counter unmasks the sender's frames itself), so it is the physical limit for a relay
  process on this machine. ``SOCAT_BUFFER`` is the read size that moved 1 MiB messages fastest
  here (``python -m bench.interleaved --socat-buffers`` measures it again);
- ``loadgen ceiling``: sender and counter joined directly over loopback TCP, no relay at all;
- ``loadgen ceiling (one core)``: the same, with the generator's two threads (sender and counter)
  held on one CPU during its runs (``CEILING_ONE_CORE``). Context, not a target: it shows how much
  the ceiling itself depends on where the scheduler puts those two threads (on one core the bytes
  the sender writes stay in that core's cache when the counter reads them).

``python -m bench.interleaved [--size 1MiB|64B] [--rounds N]`` prints the table;
``bench/test_bench_relay.py`` runs it for ``make bench`` and ``bench/report.py`` shows it.
``--before DIR`` adds our relay as built in another checkout (``git worktree add DIR REV`` and
build its extension): the before/after of a change, measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from bench import loadgen
from bench.loadgen import BIG, HOST, SMALL, TIMEOUT, LoadgenError, Pair, Stream

#: socat's read/write size (its ``-b``; the default is 8192). Chosen by measurement, see above.
SOCAT_BUFFER = 1 << 18
SOCAT = "socat"
CEILING = "loadgen ceiling"
CEILING_ONE_CORE = "loadgen ceiling (one core)"
T = TypeVar("T")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class SocatSplice:
    """``socat -b SIZE TCP-LISTEN:p TCP:127.0.0.1:q`` for one connection; ``pair()`` joins
    through it to a socket of ours, or, with ``target``, socat connects to that port."""

    def __init__(self, buffer: int = SOCAT_BUFFER, target: int | None = None) -> None:
        exe = shutil.which("socat")
        if exe is None:
            raise LoadgenError("socat is not installed (make bench installs Debian's socat)")
        self._target = socket.create_server((HOST, 0)) if target is None else None
        self.port = _free_port()
        if self._target is not None:
            target = self._target.getsockname()[1]
        self.proc = subprocess.Popen(
            [exe, "-b", str(buffer), f"TCP-LISTEN:{self.port},bind={HOST},reuseaddr,nodelay",
             f"TCP:{HOST}:{target},nodelay"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.pid = self.proc.pid

    def connect(self, connect: Callable[[int], T]) -> T:
        """``connect(port)`` once socat listens (retried while refused, bounded)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                return connect(self.port)
            except ConnectionRefusedError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise LoadgenError(f"socat did not listen on {HOST}:{self.port}: {err}"
                                       ) from exc
                time.sleep(0.02)

    def pair(self) -> Pair:
        """The sender connected to socat, and the connection socat opened to us."""
        assert self._target is not None, "pair() joins to our own socket: no target= given"
        sender = self.connect(loadgen._connect)
        self._target.settimeout(TIMEOUT)
        listener, _ = self._target.accept()
        listener.settimeout(TIMEOUT)
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Pair(sender, listener)

    def cpu(self) -> float:
        """User + system CPU seconds socat used so far."""
        return loadgen.cpu_seconds(self.pid)

    def stop(self) -> None:
        if self._target is not None:
            self._target.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@dataclass
class Contender:
    """One thing measured in every round: its stream and the rates it reached."""

    label: str
    stream: Stream
    batches: int = 0
    rates: list[float] = field(default_factory=list)  # messages/s per round
    one_core: bool = False  # the generator's threads held on one CPU while it runs

    def run(self, batches: int) -> int:
        """``stream.run(batches)``; with ``one_core``, the calling thread and the stream's
        counter thread run on one CPU meanwhile (their affinity restored after)."""
        if not self.one_core:
            return self.stream.run(batches)
        counter = self.stream.counter.native_id
        if counter is None:
            raise LoadgenError(f"{self.label}: the counter thread has not started")
        threads = [0, counter]  # 0: the calling thread
        before = [os.sched_getaffinity(tid) for tid in threads]
        cpu = min(before[0])
        for tid in threads:
            os.sched_setaffinity(tid, {cpu})
        try:
            return self.stream.run(batches)
        finally:
            for tid, cpus in zip(threads, before, strict=True):
                os.sched_setaffinity(tid, cpus)

    def median(self) -> float:
        return statistics.median(self.rates)


@contextlib.contextmanager
def contenders(size: int, labels: list[str]) -> Iterator[list[Contender]]:
    """Start every contender (relay processes, socat, the direct pair); stop them all after."""
    stack = contextlib.ExitStack()
    found: list[Contender] = []
    with stack:
        for label in labels:
            if label in (CEILING, CEILING_ONE_CORE):
                stream = Stream(loadgen.loopback_pair(), size, masked_receiver=True)
            elif label == SOCAT:
                splice = SocatSplice()
                stack.callback(splice.stop)
                stream = Stream(splice.pair(), size, masked_receiver=True, relay_cpu=splice.cpu)
            else:
                name, _, root = label.partition("@")
                stream = relay_stream(stack, loadgen.RelayProcess(
                    name, Path(root) if root else loadgen.ROOT), size)
            stack.callback(stream.close)
            found.append(Contender(label, stream, one_core=label == CEILING_ONE_CORE))
        yield found


def relay_stream(stack: contextlib.ExitStack, relay: loadgen.RelayProcess, size: int) -> Stream:
    """One relayed pair through a started relay, streaming ``size`` messages; ``stack`` stops
    the relay and its listener (the caller closes the stream)."""
    stack.callback(relay.stop)
    session = loadgen.Session(relay.port)
    stack.callback(session.close)
    (pair,) = session.open_pairs(1)
    return Stream(pair, size, relay_cpu=relay.cpu)


def run_rounds(found: list[Contender], rounds: int, seconds: float = 0.4) -> None:
    """Calibrate each contender to about ``seconds`` a run, then ``rounds`` rounds in turn."""
    for contender in found:
        contender.batches = loadgen.calibrated(contender.run, warmup=1, start=2,
                                               limit=1 << 16, seconds=seconds)
        contender.stream.stats = loadgen.RunStats()
    for _ in range(rounds):
        for contender in found:
            t0 = time.perf_counter()
            moved = contender.run(contender.batches)
            elapsed = time.perf_counter() - t0
            if moved != contender.batches * contender.stream.per_batch:
                raise LoadgenError(f"{contender.label}: {moved} messages counted")
            contender.rates.append(moved / elapsed)


def summary(found: list[Contender], size: int) -> dict[str, dict[str, object]]:
    """Per contender: median rate (messages/s and MB/s), every round, median CPU use."""
    out: dict[str, dict[str, object]] = {}
    for contender in found:
        cpu = contender.stream.stats.summary()
        out[contender.label] = {
            "median_msgs": round(contender.median(), 1),
            "median_mbs": round(contender.median() * size / 1e6, 1),
            "rounds_msgs": [round(rate, 1) for rate in contender.rates],
            "relay_cpu": cpu["relay_cpu"], "loadgen_cpu": cpu["loadgen_cpu"],
        }
    return out


def measure(size: int, labels: list[str], rounds: int) -> dict[str, dict[str, object]]:
    with contenders(size, labels) as found:
        run_rounds(found, rounds)
        return summary(found, size)


def _socat_buffers(rounds: int) -> None:
    """1 MiB messages through socat at several read sizes, interleaved."""
    global SOCAT_BUFFER
    sizes = [8192, 65536, 1 << 18, 1 << 20]
    stack = contextlib.ExitStack()
    with stack:
        found = []
        for buffer in sizes:
            splice = SocatSplice(buffer)
            stack.callback(splice.stop)
            stream = Stream(splice.pair(), BIG, masked_receiver=True, relay_cpu=splice.cpu)
            stack.callback(stream.close)
            found.append(Contender(f"socat -b {buffer}", stream))
        run_rounds(found, rounds)
        for contender in found:
            print(f"{contender.label:>20}: {contender.median() * BIG / 1e6:8,.0f} MB/s  "
                  f"rounds {[round(r * BIG / 1e6) for r in contender.rates]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size", choices=["64B", "1MiB"], default="1MiB")
    known = [*loadgen.RELAYS, SOCAT, CEILING, CEILING_ONE_CORE]
    parser.add_argument("--rounds", type=loadgen.positive, default=5)
    parser.add_argument("--contenders", type=loadgen.listed(known),
                        default=["hyco_proto", "picows", SOCAT, CEILING],
                        help=f"comma-separated, of {', '.join(known)}")
    parser.add_argument("--socat-buffers", action="store_true",
                        help="compare socat's read sizes instead")
    parser.add_argument("--before", metavar="DIR",
                        help="also run hyco_proto's relay from this checkout "
                             "(label hyco_proto@DIR)")
    args = parser.parse_args(argv)
    loadgen.raise_fd_limit()
    if args.socat_buffers:
        _socat_buffers(args.rounds)
        return 0
    size = BIG if args.size == "1MiB" else SMALL
    labels = list(args.contenders)
    if args.before:
        labels.insert(1, f"hyco_proto@{Path(args.before).resolve()}")
    result = measure(size, labels, args.rounds)
    show: Callable[[float], str] = ((lambda r: f"{r * size / 1e6:8,.0f} MB/s") if size == BIG
                                    else (lambda r: f"{r:14,.0f} msg/s"))
    print(f"{'contender':>16}: median (CPU in cores: relay, load generator) [every round]")
    for label, row in result.items():
        rounds_text = ", ".join(show(float(r)).strip() for r in row["rounds_msgs"])  # type: ignore[attr-defined]
        print(f"{label:>16}: {show(float(row['median_msgs'])).strip():>16}  "  # type: ignore[arg-type]
              f"cpu relay {row['relay_cpu']} loadgen {row['loadgen_cpu']}  [{rounds_text}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
