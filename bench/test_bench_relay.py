"""Relay benchmarks: our relay service against minimal pairing relays on websockets and picows.

Every relay runs as its own subprocess (``bench/relays``), one at a time, on 127.0.0.1, and is
driven by the same raw-socket load generator (``bench/loadgen.py``): pre-masked frames written in
large batches, frames counted in bulk by a C header walker. Measured sender→listener:

- 64 B messages/s and 1 MiB messages (MB/s) over one relayed connection;
- rendezvous/s: sender connect → accept → rendezvous → 101 on both legs → close, one at a time
  and 16 in flight (a window: the next starts as soon as one is done; ``Session.rendezvous``);
- relay RSS per idle relayed pair (500 pairs, each used once);
- interleaved rounds (``bench/interleaved.py``): 1 MiB and 64 B messages through our relay, the
  picows relay, ``socat`` (a byte splice: the physical limit for a relay here) and the load
  generator alone, each round running every contender in turn; medians of ``INTERLEAVED_ROUNDS``;
- rendezvous/s of our relay and the picows relay in interleaved rounds (both relays kept running,
  each round runs each in turn), the figure the rendezvous targets are judged on.

Run sizes adapt to the relay (a calibration run picks a message count that takes ~0.4 s), so slow
and fast relays get comparable timing precision; ``extra_info`` records the count, CPU use of the
relay and of the generator (fraction of one core), for ``bench/report.py``. ``loadgen ceiling``
runs the generator back to back over loopback TCP with no relay: its own limit.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bench import interleaved, loadgen
from bench.loadgen import BIG, SMALL, RelayProcess, Session, Stream, calibrated

RELAYS = list(loadgen.RELAYS)
ROUNDS = 7
RUN_SECONDS = 0.4
RENDEZVOUS_PER_ROUND = 400
IDLE_PAIRS = 500

GROUP_SMALL = "relay: 64 B messages sender→listener"
GROUP_BIG = "relay: 1 MiB messages sender→listener"
GROUP_BIG_TEXT = "relay: 1 MiB text messages sender→listener"
GROUP_RDV = "relay: rendezvous, sequential"
GROUP_RDV_CONC = "relay: rendezvous, 16 in flight"
GROUP_IDLE = "relay: 500 idle pairs (memory)"
GROUP_CEILING = "loadgen ceiling: no relay, loopback TCP"
GROUP_INTERLEAVED = "relay: interleaved rounds"
INTERLEAVED_ROUNDS = 5
INTERLEAVED = ["hyco_proto", "picows", interleaved.SOCAT, interleaved.CEILING,
               # (context; it needs CPU affinity, which Linux has)
               *([interleaved.CEILING_ONE_CORE] if hasattr(os, "sched_setaffinity") else [])]

loadgen.raise_fd_limit()


@pytest.fixture(params=RELAYS)
def relay(request: pytest.FixtureRequest) -> Iterator[RelayProcess]:
    """A fresh relay process per test (so each measurement starts clean); always killed."""
    proc = RelayProcess(request.param)
    request.addfinalizer(proc.stop)
    yield proc


@pytest.fixture
def session(relay: RelayProcess) -> Iterator[Session]:
    sess = Session(relay.port)
    yield sess
    sess.close()


def _stream_bench(benchmark: Any, stream: Stream, group: str, size: int) -> None:
    try:
        batches = calibrated(stream.run, warmup=1, start=2, limit=1 << 16, seconds=RUN_SECONDS)
        messages = batches * stream.per_batch
        stream.stats = loadgen.RunStats()
        benchmark.group = group
        benchmark.extra_info.update(frames=messages, bytes=messages * size, message_size=size)
        moved = benchmark.pedantic(stream.run, args=(batches,), rounds=ROUNDS, iterations=1,
                                   warmup_rounds=1)
        assert moved == messages
        benchmark.extra_info.update(stream.stats.summary())
    finally:
        stream.close()


@pytest.mark.parametrize("size", [SMALL, BIG], ids=["64B", "1MiB"])
def test_loadgen_ceiling(benchmark: Any, size: int) -> None:
    """The generator alone: sender and counter joined directly (the receiver also unmasks)."""
    stream = Stream(loadgen.loopback_pair(), size, masked_receiver=True)
    _stream_bench(benchmark, stream, f"{GROUP_CEILING}, {'64 B' if size == SMALL else '1 MiB'}",
                  size)


def test_relay_small(benchmark: Any, relay: RelayProcess, session: Session) -> None:
    (pair,) = session.open_pairs(1)
    _stream_bench(benchmark, Stream(pair, SMALL, relay_cpu=relay.cpu), GROUP_SMALL, SMALL)


def test_relay_big(benchmark: Any, relay: RelayProcess, session: Session) -> None:
    (pair,) = session.open_pairs(1)
    _stream_bench(benchmark, Stream(pair, BIG, relay_cpu=relay.cpu), GROUP_BIG, BIG)


@pytest.mark.parametrize("text", ["hello, world ", "aé€😀"], ids=["ascii", "mixed"])
def test_relay_big_text(benchmark: Any, relay: RelayProcess, session: Session, text: str) -> None:
    """1 MiB text messages: ASCII, and mixed 1-4 byte code points (our relay checks UTF-8)."""
    (pair,) = session.open_pairs(1)
    _stream_bench(benchmark, Stream(pair, BIG, relay_cpu=relay.cpu, text=text),
                  f"{GROUP_BIG_TEXT}, {'ASCII' if text.isascii() else 'mixed'}", BIG)


@pytest.mark.parametrize("concurrency", [1, 16], ids=["seq", "x16"])
def test_relay_rendezvous(benchmark: Any, relay: RelayProcess, session: Session,
                          concurrency: int) -> None:
    """New relayed connections per second; upgrade requests are built before timing."""
    session.rendezvous(session.prepare(100), concurrency)  # warm-up
    cpu: list[tuple[float, float, float]] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (session.prepare(RENDEZVOUS_PER_ROUND), concurrency), {}

    def run(prepared: Any, conc: int) -> int:
        t0, c0, r0 = time.perf_counter(), time.process_time(), relay.cpu()
        done = session.rendezvous(prepared, conc)
        wall = time.perf_counter() - t0
        cpu.append(((time.process_time() - c0) / wall, (relay.cpu() - r0) / wall,
                    (time.process_time() - c0) / done * 1e6))
        return done

    benchmark.group = GROUP_RDV if concurrency == 1 else GROUP_RDV_CONC
    benchmark.extra_info.update(frames=RENDEZVOUS_PER_ROUND, unit="rendezvous")
    done = benchmark.pedantic(run, setup=setup, rounds=ROUNDS, iterations=1)
    assert done == RENDEZVOUS_PER_ROUND
    cpu.sort()
    mid = cpu[len(cpu) // 2]
    benchmark.extra_info.update(loadgen_cpu=round(mid[0], 3), relay_cpu=round(mid[1], 3),
                                loadgen_cpu_us_per_rendezvous=round(mid[2], 1))


GROUP_RDV_INTERLEAVED = "relay: rendezvous, interleaved rounds"
RDV_INTERLEAVED = ["hyco_proto", "picows"]
RDV_INTERLEAVED_ROUNDS = 5
RDV_INTERLEAVED_PER_ROUND = 1000  # about 0.5 s at 2,000/s: long enough to smooth a round


def test_relay_rendezvous_interleaved(benchmark: Any) -> None:
    """Rendezvous per second of our relay and the picows relay in interleaved rounds
    (``loadgen.rendezvous_rounds``: both relays started first, then, one at a time and then 16
    in flight, each round runs RDV_INTERLEAVED_PER_ROUND on each in turn), so the machine's
    drift hits both alike; medians and every round in ``extra_info["interleaved"]``."""
    def run() -> dict[str, Any]:
        with contextlib.ExitStack() as stack:
            sessions = {}
            for label in RDV_INTERLEAVED:
                relay = RelayProcess(label)
                stack.callback(relay.stop)
                session = sessions[label] = Session(relay.port)
                stack.callback(session.close)
            rates: dict[str, dict[int, list[float]]] = {
                label: {1: [], 16: []} for label in RDV_INTERLEAVED}
            for _, conc, label, rate, _, _ in loadgen.rendezvous_rounds(
                    sessions, RDV_INTERLEAVED_ROUNDS, RDV_INTERLEAVED_PER_ROUND, (1, 16)):
                rates[label][conc].append(rate)
        return {label: {f"x{c}": {"median": statistics.median(r),
                                  "rounds": [round(x) for x in r]}
                        for c, r in by.items()}
                for label, by in rates.items()}

    result = loadgen.run_once(benchmark, GROUP_RDV_INTERLEAVED, run)
    assert set(result) == set(RDV_INTERLEAVED)
    benchmark.extra_info.update(unit="runs", rounds=RDV_INTERLEAVED_ROUNDS,
                                per_round=RDV_INTERLEAVED_PER_ROUND, interleaved=result)


def test_relay_idle_memory(benchmark: Any, relay: RelayProcess, session: Session) -> None:
    """Relay RSS growth per idle pair; the timing is how long opening them took."""
    result: dict[str, Any] = {}

    def run() -> None:
        pairs, info = loadgen.idle_pairs_memory(relay, session, IDLE_PAIRS)
        result.update(info)
        for pair in pairs:
            pair.close()

    benchmark.group = GROUP_IDLE
    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(frames=IDLE_PAIRS, unit="pairs",
                                **{k: round(v, 2) for k, v in result.items()})


@pytest.mark.parametrize("size", [BIG, SMALL], ids=["1MiB", "64B"])
def test_relay_interleaved(benchmark: Any, size: int) -> None:
    """Medians of interleaved rounds: every contender set up first, then run in turn per round
    (``extra_info["interleaved"]``: per contender, median and every round, CPU use)."""
    result = loadgen.run_once(
        benchmark, f"{GROUP_INTERLEAVED}, {'1 MiB' if size == BIG else '64 B'}",
        lambda: interleaved.measure(size, INTERLEAVED, INTERLEAVED_ROUNDS))
    assert set(result) == set(INTERLEAVED)
    benchmark.extra_info.update(unit="runs", message_size=size, rounds=INTERLEAVED_ROUNDS,
                                socat_buffer=interleaved.SOCAT_BUFFER, interleaved=result)
