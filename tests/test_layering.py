"""The sans-IO rule (docs/architecture.md): core modules do no I/O and read no clock.

Every module under hyco_proto/ except adapters/, cli.py, __main__.py, demo.py, testing.py (the
pytest plugin) and the one clock default (_wallclock.py) is parsed, and its imports are checked,
including imports inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hyco_proto"
FORBIDDEN = {
    "socket",
    "ssl",
    "asyncio",
    "threading",
    "gevent",
    "select",
    "selectors",
    "time",
    "trio",
    "anyio",
    "subprocess",
}
# testing.py (the pytest plugin) runs the emulator on a thread, like demo.py.
EDGE = {"cli.py", "__main__.py", "demo.py", "testing.py", "_wallclock.py"}
# State machines must take `now` from their driver, never from the wall clock default.
NO_WALLCLOCK = {"listener.py", "sender.py", "websocket.py", "handshake.py", "control.py",
                "connection.py", "stream.py", "decisions.py", "relayed.py"}
# Adapters run the driver layer; none joins a handshake to a WebSocketConnection by hand.
DRIVER_ONLY = {"ClientHandshake", "ServerHandshake", "WebSocketConnection"}


def core_modules() -> list[Path]:
    mods = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "adapters" or (len(rel.parts) == 1 and rel.name in EDGE):
            continue
        mods.append(path)
    return mods


def imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                names.add(node.module)
            else:
                names.update(f".{alias.name}" for alias in node.names)
                if node.module:
                    names.add(f".{node.module}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
        ):
            names.add("__import__")
    return names


def test_core_modules_found() -> None:
    names = {p.name for p in core_modules()}
    assert {"frames.py", "_frames_py.py", "errors.py", "connection.py", "stream.py"} <= names


def adapter_modules() -> list[Path]:
    return sorted((PACKAGE / "adapters").rglob("*.py"))


@pytest.mark.parametrize("path", adapter_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_adapters_use_the_driver_layer(path: Path) -> None:
    used = {alias.name for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert not used & DRIVER_ONLY, (
        f"{path.name} imports {sorted(used & DRIVER_ONLY)}: adapters use "
        "hyco_proto.drivers (ClientConnection / ServerConnection), not the handshake and "
        "WebSocket layers directly")


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_module_does_no_io(path: Path) -> None:
    bad = {n for n in imported_names(path) if n.split(".")[0] in FORBIDDEN or n == "__import__"}
    assert not bad, (
        f"{path.name} imports {sorted(bad)}: the sans-IO core may not do I/O or read the clock"
    )
    if path.name in NO_WALLCLOCK:
        wall = {n for n in imported_names(path) if "_wallclock" in n}
        assert not wall, f"{path.name} is a state machine: take `now` as an argument instead"


def test_cython_kernel_does_no_io() -> None:
    source = (PACKAGE / "_frames.pyx").read_text()
    tree_imports = {
        line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))
    }
    assert not {n.split(".")[0] for n in tree_imports} & FORBIDDEN


def test_detector_sees_forbidden_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import time\n    from socket import socket\n")
    assert {"time", "socket"} <= imported_names(sample)
