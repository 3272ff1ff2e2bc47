"""Shared test fixtures."""

from __future__ import annotations

import importlib
import os
import ssl
import time
from collections.abc import Iterator
from types import ModuleType

import pytest

from hyco_proto import cli
from hyco_proto.service import devcert
from tests.procutil import Emulator, running_emulator


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


@pytest.fixture(scope="session")
def tls_contexts(tmp_path_factory: pytest.TempPathFactory
                 ) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) TLS contexts from the emulator's development certificate (valid for
    127.0.0.1 and localhost), made once for the session in a temporary folder."""
    made = devcert.ensure_dev_cert(tmp_path_factory.mktemp("tls"), run=cli._run_quiet,
                                   now=time.time())
    client = cli.client_ssl_context(str(made.cert), insecure=False)
    assert client is not None
    return cli.server_ssl_context(made.cert, made.key), client


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """``hyco emulator`` as a subprocess on free loopback ports (relay and Web PubSub)."""
    with running_emulator() as running:
        yield running
