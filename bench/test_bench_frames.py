"""Frame path benchmarks: client encode, server decode, relay forwarding — ours against
websockets (C mask, sans-IO Protocol), wsproto and aiohttp (compiled reader), in one run.

Throughput tests feed a batch per call (1000 small frames, or a 1 MiB frame in 64 KiB reads, as a
socket would deliver it) and record in ``extra_info`` how many frames and bytes one call moves, so
``bench/report.py`` can turn timings into frames/s and GB/s.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

import bench.peers as peers
import hyco_proto._frames_py as frames_py
from bench.conftest import KERNELS

CYTHON = KERNELS["hyco-cython"]
SMALL = 64
BATCH = 1000
BIG = 1024 * 1024
READ = 65536


def _masked(size: int, count: int) -> bytes:
    return CYTHON.encode_frame(2, os.urandom(size), masked=True) * count


SMALL_STREAM = _masked(SMALL, BATCH)
BIG_FRAME = _masked(BIG, 1)
BIG_READS = [BIG_FRAME[i : i + READ] for i in range(0, len(BIG_FRAME), READ)]

DECODERS: dict[str, Callable[[], Callable[[bytes], int]]] = {
    "hyco-cython": lambda: peers.hyco_decoder(CYTHON),
    "hyco-cython-messages": peers.hyco_connection,
    "aiohttp-reader_c": peers.aiohttp_server_reader,
    "websockets": peers.websockets_server,
    "wsproto": peers.wsproto_server,
    "hyco-python": lambda: peers.hyco_decoder(frames_py),
}


@pytest.mark.parametrize("impl", list(DECODERS))
def test_decode_small(benchmark: Any, impl: str) -> None:
    """Server-side decode of 64-byte masked frames, 1000 per read."""
    feed = DECODERS[impl]()
    benchmark.group = "decode 64 B frames (x1000 per call)"
    benchmark.extra_info.update(frames=BATCH, bytes=SMALL * BATCH)
    assert benchmark(feed, SMALL_STREAM) >= BATCH


@pytest.mark.parametrize("impl", list(DECODERS))
def test_decode_big(benchmark: Any, impl: str) -> None:
    """Server-side decode of a 1 MiB masked frame arriving in 64 KiB reads."""
    feed = DECODERS[impl]()

    def run() -> int:
        return sum(feed(chunk) for chunk in BIG_READS)

    benchmark.group = "decode 1 MiB frames (64 KiB reads)"
    benchmark.extra_info.update(frames=1, bytes=BIG)
    assert benchmark(run) >= 1


PAYLOAD16 = os.urandom(16)
ENCODERS: dict[str, Callable[[], Callable[[bytes], Any]]] = {
    "hyco-cython": lambda: lambda p: CYTHON.encode_frame(2, p, masked=True),
    "hyco-cython-connection": peers.hyco_client_send_connection,
    "websockets": peers.websockets_client_send,
    "wsproto": peers.wsproto_client_send,
    "hyco-python": lambda: lambda p: frames_py.encode_frame(2, p, masked=True),
}


@pytest.mark.parametrize("impl", list(ENCODERS))
def test_client_encode_16(benchmark: Any, impl: str) -> None:
    """Client encode of a 16-byte binary message: header + mask, ready to write."""
    send = ENCODERS[impl]()
    benchmark.group = "client encode 16 B message"
    benchmark.extra_info.update(frames=1, bytes=16)
    assert benchmark(send, PAYLOAD16)


FORWARDERS: dict[str, Callable[[], Callable[[bytes], Any]]] = {
    "hyco-cython": lambda: CYTHON.Forwarder().feed,
    "websockets-parse+send": peers.websockets_relay_step,
    "hyco-python": lambda: frames_py.Forwarder().feed,
}


@pytest.mark.parametrize("impl", list(FORWARDERS))
def test_forward_small(benchmark: Any, impl: str) -> None:
    """Relay re-framing of 64-byte masked frames (1000 per read) into unmasked frames."""
    step = FORWARDERS[impl]()
    benchmark.group = "forward 64 B frames (x1000 per call)"
    benchmark.extra_info.update(frames=BATCH, bytes=SMALL * BATCH)
    assert benchmark(step, SMALL_STREAM)


@pytest.mark.parametrize("impl", list(FORWARDERS))
def test_forward_big(benchmark: Any, impl: str) -> None:
    """Relay re-framing of a 1 MiB masked frame arriving in 64 KiB reads."""
    step = FORWARDERS[impl]()

    def run() -> int:
        return sum(len(b"".join(o) if isinstance(o, list) else o) for o in map(step, BIG_READS))

    benchmark.group = "forward 1 MiB frames (64 KiB reads)"
    benchmark.extra_info.update(frames=1, bytes=BIG)
    assert benchmark(run) >= BIG
