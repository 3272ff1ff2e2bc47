"""The README's Python examples run as written (docs describe only what exists)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procutil import Proc, free_port

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples() -> None:
    assert BLOCKS, "README.md lost its Python examples"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, tmp_path: Path) -> None:
    script = tmp_path / f"example{index}.py"
    script.write_text(BLOCKS[index])
    env = {**os.environ, "PYTHONPATH": str(README.parent)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "hello" in done.stdout, done.stdout


# -------------------------------------------------------------------------------------------
# The shell quick starts (README.md, docs/emulator.md): each line as written, in its own shell,
# with only the port made free (--port on each hyco command, the address in URLs). Every
# command but the emulator must end by itself; the emulator ends on Ctrl-C (SIGINT).

QUICK_STARTS = [
    (path.name, block)
    for path in (README, README.parent / "docs" / "emulator.md")
    for block in re.findall(r"```sh\n(.*?)```", path.read_text(), re.S)
    if all(f"hyco {command}" in block for command in ("emulator", "listen", "send"))
]


def test_readme_and_emulator_docs_have_a_shell_quick_start() -> None:
    assert sorted(name for name, _ in QUICK_STARTS) == ["README.md", "emulator.md"]


def _on_port(line: str, port: int) -> str:
    line = re.sub(r"\bhyco (emulator|listen|send)\b",
                  lambda m: f"{m.group(0)} --port {port}"
                  + (" --webpubsub-port 0" if m.group(1) == "emulator" else ""), line)
    return line.replace("127.0.0.1:9090", f"127.0.0.1:{port}")


def _shell(line: str, bin_dir: Path) -> Proc:
    """``line`` in a shell of its own (a process group: Ctrl-C reaches what it starts)."""
    return Proc(["-c", line], program=["bash"], new_session=True,
                env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})


@pytest.mark.parametrize(("name", "block"), QUICK_STARTS, ids=[n for n, _ in QUICK_STARTS])
def test_shell_quick_start_terminates_as_written(name: str, block: str,
                                                 tmp_path: Path) -> None:
    hyco = tmp_path / "bin" / "hyco"
    hyco.parent.mkdir()
    hyco.write_text(f'#!/bin/sh\nexec {sys.executable} -m hyco_proto "$@"\n')
    hyco.chmod(0o755)
    port = free_port()
    lines = [_on_port(line, port) for line in block.splitlines() if line.strip()]
    started: list[Proc] = []
    try:
        emulator = _shell(lines[0], hyco.parent)  # terminal 1
        started.append(emulator)
        assert "hyco emulator" in lines[0], lines[0]
        emulator.wait_line(r"press Ctrl-C to stop")
        assert "hyco listen" in lines[1], lines[1]
        listener = _shell(lines[1], hyco.parent)  # terminal 2
        started.append(listener)
        listener.wait_line(r"listening on ", stream="stderr")
        for line in lines[2:]:  # terminal 3, one command after the other
            done = subprocess.run(["bash", "-c", line], capture_output=True, text=True,
                                  timeout=30, env={**os.environ, "PATH": f"{hyco.parent}"
                                                   f"{os.pathsep}{os.environ['PATH']}"})
            assert done.returncode == 0, (line, done.stderr)
            if "hyco send" in line:
                status = listener.wait(15)  # the listener ends by itself
                assert status == 0, listener.stderr_text
                assert listener.stdout == b"hello\n", (listener.stdout, listener.stderr_text)
            elif "$status" in line:
                assert json.loads(done.stdout)["counters"]["relayed_pairs"] == 1, done.stdout
        assert listener.popen.returncode == 0, "no line of the example sends"
        assert emulator.stop(signal.SIGINT, 15) == 0  # Ctrl-C
    finally:
        for proc in started:
            proc.kill()
