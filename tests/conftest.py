"""Shared test fixtures."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest


def _frame_modules() -> list[ModuleType]:
    mods = [importlib.import_module("hyco_proto._frames_py")]
    try:
        mods.append(importlib.import_module("hyco_proto._frames"))
    except ImportError:
        pass
    return mods


FRAME_MODULES = _frame_modules()


@pytest.fixture(params=FRAME_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def fmod(request: pytest.FixtureRequest) -> ModuleType:
    """Each frame kernel that is available: the pure-Python twin, and Cython when built."""
    return request.param  # type: ignore[no-any-return]
