"""HTTP benchmarks: one app served directly by uvicorn and through our relay, in one run.

Setups (``bench/http_servers.py``; each in fresh processes, one at a time): ``uvicorn`` serving
the app directly; the relay with our asyncio listener (``relay+hyco_proto``), with the same ASGI
app through ``hyco_proto.adapters.asgi`` (``relay+asgi``), and with Microsoft's ``hyco-https``
listener (``relay+hyco-https``). One raw-socket client (``loadgen.HttpLoad``) drives them all:

- small GETs (``ok``): requests per second over 8 keep-alive connections, one request in flight
  on each;
- 8 MiB uploads (POST, the body read and dropped by the app) and 8 MiB downloads: MB/s over one
  connection, one request at a time.

Through the relay each request crosses two more hops (and, for small requests, the listener's
one control channel), so the relayed figures are expected below uvicorn's; the point is how far
below, and how our listener compares with hyco-https on the same relay.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.http_servers import DOWNLOAD, HC, LABELS
from bench.loadgen import HttpLoad, RunStats, ServerProcess, calibrated
from hyco_proto.sas import create_relay_token
from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY

ROUNDS = 5
RUN_SECONDS = 0.3
CASES = {
    "small": ("HTTP: small GETs, 8 connections", "requests"),
    "upload": ("HTTP: 8 MiB uploads, one connection", "uploads"),
    "download": ("HTTP: 8 MiB downloads, one connection", "downloads"),
}
PARAMS = [(case, label) for case in CASES for label in LABELS]


@pytest.mark.parametrize("case,label", PARAMS, ids=[f"{c}-{label}" for c, label in PARAMS])
def test_http(benchmark: Any, case: str, label: str) -> None:
    proc = ServerProcess(label, "bench.http_servers", label)
    try:
        token = create_relay_token(f"http://127.0.0.1:{proc.port}/{HC}", DEFAULT_RULE_NAME,
                                   DEVELOPMENT_KEY, 3600)
        load = HttpLoad(proc.port, path=f"/{HC}", token=token)
        run = getattr(load, case)
        try:
            if case == "small":
                count = calibrated(run, warmup=200, start=64, limit=1 << 20,
                                   seconds=RUN_SECONDS)
            else:
                count = calibrated(run, warmup=2, start=1, limit=64, seconds=RUN_SECONDS)
            group, unit = CASES[case]
            benchmark.group = group
            size = 0 if case == "small" else DOWNLOAD
            benchmark.extra_info.update(frames=count, bytes=count * size, unit=unit)
            stats = RunStats()
            before = proc.cpu()
            done = benchmark.pedantic(run, args=(count,), rounds=ROUNDS, iterations=1,
                                      warmup_rounds=1)
            assert done == count
            stats.relay.append(proc.cpu() - before)
            benchmark.extra_info.update(server_cpu_seconds=round(stats.relay[0], 3))
        finally:
            load.close()
    finally:
        proc.stop()
