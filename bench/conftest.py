"""Benchmark helpers: peers are imported here so a missing peer fails loudly, not silently."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

import hyco_proto._frames_py as frames_py


def _cython() -> ModuleType:
    try:
        return importlib.import_module("hyco_proto._frames")
    except ImportError as exc:  # pragma: no cover - make bench builds it
        raise RuntimeError("the Cython kernel is not built; run `make bench`") from exc


KERNELS = {"hyco-cython": _cython(), "hyco-python": frames_py}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Group results by benchmark group in the report.
    items.sort(key=lambda item: item.nodeid)
