"""Shared test fixtures."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def _frame_modules() -> list[ModuleType]:
    """The pure-Python kernel always; the Cython one when built (required in `make test`)."""
    mods = [importlib.import_module("hyco_proto._frames_py")]
    try:
        mods.append(importlib.import_module("hyco_proto._frames"))
    except ImportError:
        if os.environ.get("HYCO_PROTO_REQUIRE_EXTENSION", "") not in ("", "0"):
            raise
    return mods


FRAME_MODULES = _frame_modules()


@pytest.fixture(params=FRAME_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def fmod(request: pytest.FixtureRequest) -> ModuleType:
    """Each frame kernel that is available: the pure-Python twin, and Cython when built."""
    return request.param  # type: ignore[no-any-return]
