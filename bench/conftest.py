"""Benchmark helpers: peers are imported here so a missing peer fails loudly, not silently."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

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


def _echo_absent() -> dict[str, str] | None:
    """Our adapters left out of the echo benchmarks, with why; None when they were not collected."""
    from bench import echo_servers

    found = echo_servers.probed()
    return None if found is None else {label: why for label, why in found.items() if why}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    absent = _echo_absent()
    if absent:
        terminalreporter.section("echo benchmarks: adapters absent")
        for label, why in absent.items():
            terminalreporter.write_line(f"{label}: {why}")


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list[Any],
                                 output_json: dict[str, Any]) -> None:
    absent = _echo_absent()
    if absent is not None:
        output_json["echo_absent"] = absent
