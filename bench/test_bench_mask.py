"""Masking throughput: ours (Cython and Python) against websockets' C apply_mask and aiohttp's
Cython in-place mask, in one run. Run with `make bench`."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp._websocket.mask import _websocket_mask_cython as aiohttp_mask
from websockets.speedups import apply_mask as websockets_apply_mask

from bench.conftest import KERNELS

KEY = b"\x12\x34\x56\x78"
COPY_SIZES = [125, 1024, 64 * 1024, 1024 * 1024, 16 * 1024 * 1024]
INPLACE_SIZES = [1024, 64 * 1024, 1024 * 1024]


def _label(n: int) -> str:
    return (
        f"{n // (1024 * 1024)}MiB"
        if n >= 1024 * 1024
        else (f"{n // 1024}KiB" if n >= 1024 else f"{n}B")
    )


# Every implementation is called directly by the benchmark with (buffer, key) arguments, with no
# wrapper in between, so per-call overhead is measured alike for all of them.
COPY_IMPLS: dict[str, Callable[[bytes, bytes], bytes]] = {
    "hyco-cython": KERNELS["hyco-cython"].apply_mask,
    "websockets-c": websockets_apply_mask,
    "hyco-python": KERNELS["hyco-python"].apply_mask,
}


# Pure Python at 16 MiB takes seconds per call; its 1 MiB figure shows its rate.
COPY_CASES = [
    (i, n) for n in COPY_SIZES for i in COPY_IMPLS if not (i == "hyco-python" and n > 2**20)
]


# Ids start with the size: the run sorts by id, so each size's implementations run back to back
# under the same machine conditions.
@pytest.mark.parametrize("impl,size", COPY_CASES, ids=[f"{_label(n)}-{i}" for i, n in COPY_CASES])
def test_mask_copy(benchmark: Any, impl: str, size: int) -> None:
    data = os.urandom(size)
    fn = COPY_IMPLS[impl]
    benchmark.group = f"mask copy {_label(size)}"
    benchmark.extra_info["bytes"] = size
    result = benchmark(fn, data, KEY)
    assert len(result) == size  # type: ignore[arg-type]


# (first, second) argument order per implementation: aiohttp takes the key first.
INPLACE_IMPLS: dict[str, tuple[Callable[[Any, Any], None], bool]] = {
    "hyco-cython": (KERNELS["hyco-cython"].apply_mask_inplace, False),
    "aiohttp-cython": (aiohttp_mask, True),
    "hyco-python": (KERNELS["hyco-python"].apply_mask_inplace, False),
}


INPLACE_CASES = [(i, n) for n in INPLACE_SIZES for i in INPLACE_IMPLS]


@pytest.mark.parametrize(
    "impl,size", INPLACE_CASES, ids=[f"{_label(n)}-{i}" for i, n in INPLACE_CASES]
)
def test_mask_inplace(benchmark: Any, impl: str, size: int) -> None:
    buf = bytearray(os.urandom(size))
    benchmark.group = f"unmask in place {_label(size)}"
    benchmark.extra_info["bytes"] = size
    fn, key_first = INPLACE_IMPLS[impl]
    if key_first:
        benchmark(fn, KEY, buf)
    else:
        benchmark(fn, buf, KEY)
