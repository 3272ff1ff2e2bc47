"""Round trips through our relay, next to picows's direct echo (``bench/relay_echo.py``).

``hyco-relay+hyco-asyncio``: a raw-socket sender → our relay (its own process) → our asyncio
``RelayedServer`` echoing each message (its own process) → back, one message in flight.
``picows-direct``: the same client loop against picows's echo server, no relay. Ids start with
the size, so each size's two run back to back. Like ``test_bench_echo.py``: round trips per
round calibrated (~RUN_SECONDS), ROUNDS rounds, median; ``extra_info`` has the CPU per round
trip of the relay and of the listener (µs) and of the client and servers (fraction of a core).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from bench.loadgen import RunStats, calibrated
from bench.relay_echo import DIRECT, RELAYED, SIZES, DirectEcho, RelayedEcho

SIZE_TEXT = {"256B": "256 B", "8KiB": "8 KiB", "100KiB": "100 KiB", "1MiB": "1 MiB"}
ROUNDS = 9
RUN_SECONDS = 0.2
GROUP = "round trip through the relay: {} messages"
CASES = [(size, kind) for size in SIZES for kind in (RELAYED, DIRECT)]


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
