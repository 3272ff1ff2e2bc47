"""Web PubSub benchmarks: our emulator's hub route, with and without batched writes; a minimal
websockets fan-out for context.

Each server runs alone in a fresh subprocess (``bench/wps_servers.py``), so the load generator
(``bench/wps_load.py``: raw sockets, pre-masked frames, one epoll loop counting bytes) does not
share its CPU. Clients speak ``json.webpubsub.azure.v1`` and carry tokens made by
``create_client_token``; receivers join the group through the token's ``webpubsub.group`` claim.

- ``hyco_proto`` is the hub route as shipped (``WebPubSubService(batch_writes=True)``: within
  one driver call, each recipient gets one send of all its frames); ``hyco_proto-unbatched`` is
  the same code with ``batch_writes=False`` (one send per frame).
- Fan-out: 1,000 clients in one group; one sender publishes 64 B text messages by
  ``sendToGroup``. Rate = messages x 1,000 / time until every receiver has them all
  (deliveries/s). Three loads: ``x16``, up to 16 messages in flight (8 per write); ``x4``, up
  to 4 (2 per write), which keeps the hub busy; ``x1``, one message at a time (nothing to
  batch: each read carries one message). Latency p50/p99 at 4 sampled receivers: write of the
  message's batch to arrival of its frame; under ``x16`` and ``x4`` it includes the queue (up to
  16 or 4 messages x 1,000 deliveries ahead of a message).
- Acks: one client sends ``sendToGroup`` with ``ackId`` to a group with one receiver, 100 in
  flight (``x100``) or one at a time (``x1``); acks/s (a run ends when all are acked and
  delivered).

``loadgen-ceiling`` (fan-out only) is a trivial blocking-socket fan-out server, one write per
frame: the generator's own limit on this machine for frames that come alone
(``bench/wps_servers.py``); batched writes can pass it.

Microsoft's emulator (``awps-emulator``) is a .NET tool published on NuGet only; neither .NET nor
NuGet is reachable here, so it is not compared (``bench/wps_servers.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench import loadgen
from bench.loadgen import ServerProcess, calibrated
from bench.wps_load import MESSAGE_SIZE, AckLoad, FanOut
from bench.wps_servers import CEILING, LABELS

RECEIVERS = 1000
ROUNDS = 5
FANOUT_SECONDS = 1.0
ACK_SECONDS = 0.3
FANOUT_WINDOWS = (16, 4, 1)
ACK_WINDOWS = (100, 1)

GROUP_FANOUT = "Web PubSub: fan-out of 64 B messages to 1,000 clients in one group, {}"
GROUP_ACKS = "Web PubSub: one client's sendToGroup with ackId, {}"


def _in_flight(window: int, what: str) -> str:
    return f"{window} {what} in flight" if window > 1 else f"one {what[:-1]} at a time"


loadgen.raise_fd_limit()


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """A fresh server process per test (the ``label`` parameter); always stopped."""
    label = request.getfixturevalue("label")
    proc = ServerProcess(label, "bench.wps_servers", label)
    request.addfinalizer(proc.stop)
    yield proc


@pytest.mark.parametrize("window", FANOUT_WINDOWS, ids=[f"x{w}" for w in FANOUT_WINDOWS])
@pytest.mark.parametrize("label", [*LABELS, CEILING])
def test_wps_fanout(benchmark: Any, label: str, server: ServerProcess, window: int) -> None:
    """``loadgen-ceiling`` is a trivial fan-out server (one write per frame): the generator's
    own limit here for frames that come alone."""
    load = FanOut(server.port, RECEIVERS, window=window, batch=max(1, window // 2),
                  server_cpu=server.cpu)
    try:
        count = calibrated(load.run, warmup=8, start=8, limit=4096, seconds=FANOUT_SECONDS)
        load.latencies.clear()
        load.stats = loadgen.RunStats()
        benchmark.group = GROUP_FANOUT.format(_in_flight(window, "messages"))
        benchmark.extra_info.update(
            frames=count * RECEIVERS, bytes=count * RECEIVERS * MESSAGE_SIZE, unit="deliveries",
            messages=count, receivers=RECEIVERS, window=window, batch=load.batch,
            frame_size=load.frame_size)
        done = benchmark.pedantic(load.run, setup=lambda: (load.prepare(count), {}),
                                  rounds=ROUNDS, iterations=1)
        assert done == count * RECEIVERS
        summary = load.stats.summary()
        benchmark.extra_info.update(server_cpu=summary["relay_cpu"],
                                    loadgen_cpu=summary["loadgen_cpu"], **load.latency_summary())
    finally:
        load.close()


@pytest.mark.parametrize("window", ACK_WINDOWS, ids=[f"x{w}" for w in ACK_WINDOWS])
@pytest.mark.parametrize("label", LABELS)
def test_wps_acks(benchmark: Any, label: str, server: ServerProcess, window: int) -> None:
    load = AckLoad(server.port, window=window, server_cpu=server.cpu)
    try:
        count = calibrated(load.run, warmup=200, start=64, limit=1 << 20, seconds=ACK_SECONDS)
        load.stats = loadgen.RunStats()
        benchmark.group = GROUP_ACKS.format(_in_flight(window, "messages"))
        benchmark.extra_info.update(frames=count, unit="acks", window=window)
        done = benchmark.pedantic(load.run, setup=lambda: (load.prepare(count), {}),
                                  rounds=ROUNDS, iterations=1)
        assert done == count
        summary = load.stats.summary()
        benchmark.extra_info.update(server_cpu=summary["relay_cpu"],
                                    loadgen_cpu=summary["loadgen_cpu"])
    finally:
        load.close()
