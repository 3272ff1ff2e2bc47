"""Echo benchmarks: round trips per second over ONE WebSocket connection, by server.

Each server (``bench/echo_servers.py``) runs in its own fresh process, one at a time, on
127.0.0.1: websockets (asyncio and sync), aiohttp, picows, and the plain ``serve`` of each of our
adapters (``hyco_proto.adapters.asyncio`` / ``.threads`` / ``.gevent``). The client is one
raw-socket driver (``loadgen.EchoClient``): send one pre-masked binary message, read until the
whole echo is back (frame headers parsed, payloads skipped), repeat - so the figure measures the
server. Messages of 256 B, 8 KiB, 100 KiB and 1 MiB.

``raw-tcp`` is a trivial TCP echo (no WebSocket) driven by the same client: the client's own
ceiling, reported next to the servers. Our adapters take part when their module exposes
``serve`` (probed at collection, in a subprocess); the absent ones are printed at the end of the
run and listed in RESULTS.md. With uvloop installed, picows and our asyncio ``serve`` also run on
uvloop's loop (``picows+uvloop``, ``hyco-asyncio+uvloop``).

Like ``test_bench_relay.py``: round trips per pytest-benchmark round are calibrated per server
(~RUN_SECONDS a round), ROUNDS rounds, median reported; ``extra_info`` carries the count and the
CPU use of server and client. Ids start with the size, so each size's servers run back to back.

``test_echo_interleaved``: our asyncio ``serve`` and picows, our threads and gevent ``serve`` and
websockets' sync server in interleaved rounds (a fresh process per round, each in turn, every
size), so the machine's drift hits all alike: the figures the echo targets are judged on in
RESULTS.md.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench import echo_servers
from bench.loadgen import EchoClient, EchoServerProcess, RunStats, calibrated

SIZES = {"256B": 256, "8KiB": 8 * 1024, "100KiB": 100 * 1024, "1MiB": 1024 * 1024}
SIZE_TEXT = {"256B": "256 B", "8KiB": "8 KiB", "100KiB": "100 KiB", "1MiB": "1 MiB"}
ROUNDS = 9
RUN_SECONDS = 0.2

GROUP = "echo, one connection: {} messages"
GROUP_CEILING = "loadgen ceiling: echo over raw TCP, {} messages"

ABSENT = {label: why for label, why in echo_servers.probe().items() if why}
SERVERS = [echo_servers.CEILING, *echo_servers.PEERS,
           *(label for label in echo_servers.OURS if label not in ABSENT),
           *(label for label in echo_servers.UVLOOP_SERVERS
             if label.partition("+")[0] not in ABSENT)]
CASES = [(size, server) for size in SIZES for server in SERVERS]


@pytest.mark.parametrize("size,server", CASES, ids=[f"{z}-{s}" for z, s in CASES])
def test_echo_round_trips(benchmark: Any, size: str, server: str) -> None:
    proc = EchoServerProcess(server)
    try:
        client = EchoClient(proc.port, SIZES[size], websocket=server != echo_servers.CEILING,
                            server_cpu=proc.cpu)
        try:
            count = calibrated(client.run, warmup=20, start=16, limit=1 << 20,
                               seconds=RUN_SECONDS)
            client.stats = RunStats()
            benchmark.group = (GROUP_CEILING if server == echo_servers.CEILING
                               else GROUP).format(SIZE_TEXT[size])
            benchmark.extra_info.update(frames=count, bytes=count * SIZES[size],
                                        message_size=SIZES[size], unit="round trips")
            done = benchmark.pedantic(client.run, args=(count,), rounds=ROUNDS, iterations=1,
                                      warmup_rounds=1)
            assert done == count
            summary = client.stats.summary()
            benchmark.extra_info.update(loadgen_cpu=summary["loadgen_cpu"],
                                        server_cpu=summary["relay_cpu"])
        finally:
            client.close()
    finally:
        proc.stop()


INTERLEAVED_GROUP = "echo, one connection: interleaved rounds"
#: The servers of the echo targets: asyncio ``serve`` against picows, threads and gevent against
#: websockets' sync server (those of ours that cannot run here are left out, as above).
INTERLEAVED_SERVERS = [server for server in ("hyco-asyncio", "picows", "hyco-threads",
                                             "hyco-gevent", "websockets-sync")
                       if server not in ABSENT]
INTERLEAVED_ROUNDS = 5
INTERLEAVED_SECONDS = 0.6


def test_echo_interleaved(benchmark: Any) -> None:
    """The echo targets' servers in interleaved rounds at every size (``bench/echo_ab.py``: a
    fresh server process per round, each server in turn), the figures the echo targets are
    judged on; per size and server, the median round trips/s, the server's CPU per round trip
    and every round in ``extra_info["interleaved"]``."""
    from bench.echo_ab import measure
    from bench.loadgen import ROOT, run_once

    runs = [(server, ROOT) for server in INTERLEAVED_SERVERS]
    result = run_once(benchmark, INTERLEAVED_GROUP, lambda: {
        size: measure(SIZES[size], runs, INTERLEAVED_ROUNDS, INTERLEAVED_SECONDS)
        for size in SIZES})
    assert set(result) == set(SIZES)
    benchmark.extra_info.update(unit="runs", rounds=INTERLEAVED_ROUNDS,
                                seconds=INTERLEAVED_SECONDS, interleaved=result)
