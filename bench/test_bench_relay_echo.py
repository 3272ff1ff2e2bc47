"""Round trips through our relay, next to picows's direct echo (``bench/relay_echo.py``).

``hyco-relay+hyco-asyncio``: a raw-socket sender → our relay (its own process) → our asyncio
``RelayedServer`` echoing each message (its own process) → back, one message in flight.
``picows-direct``: the same client loop against picows's echo server, no relay. Ids start with
the size, so each size's two run back to back. Like ``test_bench_echo.py``: round trips per
round calibrated (~RUN_SECONDS), ROUNDS rounds, median; ``extra_info`` has the CPU per round
trip of the relay and of the listener (µs) and of the client and servers (fraction of a core).

``test_relay_echo_interleaved``: at 256 B (issue 14's target), the relayed echo, picows direct
and picows behind a ``socat`` splice (``socat+picows``: the same hops with nothing done in them,
the bound for any relay and listener) in INTERLEAVED_ROUNDS interleaved rounds with fresh
processes (``relay_echo.measure``); the ratio is judged on these medians.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from bench.loadgen import RunStats, calibrated, run_once
from bench.relay_echo import DIRECT, RELAYED, SIZES, SPLICE, DirectEcho, RelayedEcho, measure

SIZE_TEXT = {"256B": "256 B", "8KiB": "8 KiB", "100KiB": "100 KiB", "1MiB": "1 MiB"}
ROUNDS = 9
RUN_SECONDS = 0.2
GROUP = "round trip through the relay: {} messages"
CASES = [(size, kind) for size in SIZES for kind in (RELAYED, DIRECT)]
INTERLEAVED_GROUP = "round trip through the relay: interleaved rounds"
INTERLEAVED_SIZES = ["256B"]
INTERLEAVED_ROUNDS = 5
INTERLEAVED_SECONDS = 1.0


@pytest.mark.parametrize("size,kind", CASES, ids=[f"{z}-{k}" for z, k in CASES])
def test_relay_round_trips(benchmark: Any, size: str, kind: str) -> None:
    setup: RelayedEcho | DirectEcho = (RelayedEcho(SIZES[size]) if kind == RELAYED
                                       else DirectEcho(SIZES[size]))
    try:
        client = setup.client
        count = calibrated(client.run, warmup=20, start=16, limit=1 << 20, seconds=RUN_SECONDS)
        client.stats = RunStats()
        benchmark.group = GROUP.format(SIZE_TEXT[size])
        benchmark.extra_info.update(frames=count, bytes=count * SIZES[size],
                                    message_size=SIZES[size], unit="round trips")
        parts = ({"relay_us": setup.relay.cpu, "listener_us": setup.listener.cpu}
                 if isinstance(setup, RelayedEcho) else {"server_us": setup.server.cpu})
        before = {name: cpu() for name, cpu in parts.items()}
        done = benchmark.pedantic(client.run, args=(count,), rounds=ROUNDS, iterations=1,
                                  warmup_rounds=1)
        assert done == count
        trips = count * (ROUNDS + 1)
        benchmark.extra_info.update({name: round((cpu() - before[name]) / trips * 1e6, 1)
                                     for name, cpu in parts.items()})
        summary = client.stats.summary()
        benchmark.extra_info.update(loadgen_cpu=summary["loadgen_cpu"],
                                    server_cpu=summary["relay_cpu"], measured_at=time.time())
    finally:
        setup.stop()


@pytest.mark.parametrize("size", INTERLEAVED_SIZES)
def test_relay_echo_interleaved(benchmark: Any, size: str) -> None:
    """Medians of interleaved rounds (``extra_info["interleaved"]``: per kind, the median rate,
    CPU µs per round trip of each process, every round's rate)."""
    result = run_once(benchmark, f"{INTERLEAVED_GROUP}, {SIZE_TEXT[size]}", lambda: measure(
        SIZES[size], [RELAYED, DIRECT, SPLICE], INTERLEAVED_ROUNDS, INTERLEAVED_SECONDS))
    assert set(result) == {RELAYED, DIRECT, SPLICE}
    benchmark.extra_info.update(unit="runs", message_size=SIZES[size],
                                rounds=INTERLEAVED_ROUNDS, seconds=INTERLEAVED_SECONDS,
                                interleaved=result)
