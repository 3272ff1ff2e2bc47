"""The README's Python examples run as written (docs describe only what exists)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _on_port(line: str, port: int) -> str:
    line = re.sub(r"\bhyco (emulator|listen|send)\b",
                  lambda m: f"{m.group(0)} --port {port}"
                  + (" --webpubsub-port 0" if m.group(1) == "emulator" else ""), line)
    return line.replace("127.0.0.1:9090", f"127.0.0.1:{port}")


def _shell(line: str, bin_dir: Path, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(["bash", "-c", line], env=env, text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            **kwargs)  # type: ignore[call-overload]


def _read_until(proc: subprocess.Popen[str], stream: str, needle: str,
                timeout: float = 20.0) -> str:
    """Read ``stream`` line by line (on a thread, so the wait is bounded) until ``needle``."""
    import queue
    import threading
    import time

    lines: queue.Queue[str] = queue.Queue()
    pipe = getattr(proc, stream)

    def pump() -> None:
        for line in iter(pipe.readline, ""):
            lines.put(line)
            if needle in line:
                return
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    seen = ""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} within {timeout} s: {seen!r}"
        try:
            line = lines.get(timeout=min(left, 0.5))
        except queue.Empty:
            continue
        assert line, f"{stream} ended before {needle!r}: {seen!r}"
        seen += line
    return seen


@pytest.mark.parametrize(("name", "block"), QUICK_STARTS, ids=[n for n, _ in QUICK_STARTS])
def test_shell_quick_start_terminates_as_written(name: str, block: str,
                                                 tmp_path: Path) -> None:
    import signal

    hyco = tmp_path / "bin" / "hyco"
    hyco.parent.mkdir()
    hyco.write_text(f'#!/bin/sh\nexec {sys.executable} -m hyco_proto "$@"\n')
    hyco.chmod(0o755)
    port = _free_port()
    lines = [_on_port(line, port) for line in block.splitlines() if line.strip()]
    started: list[subprocess.Popen[str]] = []
    try:
        emulator = _shell(lines[0], hyco.parent)  # terminal 1
        started.append(emulator)
        assert "hyco emulator" in lines[0], lines[0]
        _read_until(emulator, "stdout", "press Ctrl-C to stop")
        assert "hyco listen" in lines[1], lines[1]
        listener = _shell(lines[1], hyco.parent)  # terminal 2
        started.append(listener)
        _read_until(listener, "stderr", "listening on ")
        for line in lines[2:]:  # terminal 3, one command after the other
            done = subprocess.run(["bash", "-c", line], capture_output=True, text=True,
                                  timeout=30, env={**os.environ, "PATH": f"{hyco.parent}"
                                                   f"{os.pathsep}{os.environ['PATH']}"})
            assert done.returncode == 0, (line, done.stderr)
            if "hyco send" in line:
                out, err = listener.communicate(timeout=15)  # the listener ends by itself
                assert listener.returncode == 0, err
                assert out == "hello\n", (out, err)
            elif "$status" in line:
                assert json.loads(done.stdout)["counters"]["relayed_pairs"] == 1, done.stdout
        assert listener.returncode == 0, "no line of the example sends"
        os.killpg(emulator.pid, signal.SIGINT)  # Ctrl-C
        assert emulator.wait(15) == 0
    finally:
        for proc in started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
