"""Smoke test of an installed hyco_proto (a wheel in a fresh environment), standard library only.

Run with the environment's own Python from outside the source tree::

    python tests/smoke_installed.py --expect cython   # or --expect python

It checks that ``hyco_proto`` is imported from that environment (not a source checkout), that
``hyco --version`` names the expected frame kernel, then runs the environment's ``hyco`` entry
point three times: ``hyco emulator`` on a free loopback port (its banner names the kernel too),
``hyco listen`` and ``hyco send``, and checks that the message sent arrives at the listener.
cibuildwheel's test-command (pyproject.toml) and tests/test_packaging.py both run it. Every wait
has a deadline; every process it starts is stopped before it exits. Exit status 0 means success.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import re
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

MESSAGE = "hello through the relay from an installed wheel"
HC = "smoke"


class SmokeError(Exception):
    """A check failed; the message says which."""


def hyco_executable() -> Path:
    """The ``hyco`` console script of the running interpreter's environment."""
    scripts = Path(sysconfig.get_path("scripts"))
    for name in ("hyco.exe", "hyco") if os.name == "nt" else ("hyco",):
        if (scripts / name).exists():
            return scripts / name
    raise SmokeError(f"no hyco entry point in {scripts}")


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _reader(stream: IO[str]) -> queue.Queue[str | None]:
    """Lines of ``stream`` on a queue (``None`` at EOF), so a read can have a deadline."""
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(stream, lines), daemon=True).start()
    return lines


def _wait_for(lines: queue.Queue[str | None], pattern: str, seen: list[str],
              timeout: float, what: str) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SmokeError(f"{what}: no line matching {pattern!r} within {timeout} s; "
                             f"got {seen!r}")
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            continue
        if line is None:
            raise SmokeError(f"{what}: exited before printing {pattern!r}; got {seen!r}")
        seen.append(line.rstrip("\n"))
        found = re.search(pattern, line)
        if found is not None:
            return found


@contextlib.contextmanager
def _started(argv: list[str], **kwargs: object) -> Iterator[subprocess.Popen[str]]:
    proc: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
        argv, text=True, encoding="utf-8", **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _run(argv: list[str], timeout: float, stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, encoding="utf-8",
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise SmokeError(f"{argv[1:]} exited with {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def check_import(expect: str, outside: Path | None) -> None:
    """hyco_proto comes from this environment and uses the expected frame kernel."""
    import hyco_proto
    import hyco_proto.frames as frames

    location = Path(hyco_proto.__file__).resolve()
    prefix = Path(sys.prefix).resolve()
    if prefix not in location.parents:
        raise SmokeError(f"hyco_proto is imported from {location}, not from {prefix}")
    if outside is not None and outside.resolve() in location.parents:
        raise SmokeError(f"hyco_proto is imported from the source tree: {location}")
    if expect != frames.IMPLEMENTATION:
        raise SmokeError(f"frame kernel is {frames.IMPLEMENTATION}, expected {expect}")
    print(f"hyco_proto {location.parent}: frames {frames.describe()}")


def check_cli(hyco: Path, expect: str, timeout: float) -> None:
    """``hyco --version``, then a message through ``hyco emulator`` from ``hyco send`` to
    ``hyco listen``."""
    version = _run([str(hyco), "--version"], timeout).strip()
    if f"frames: {expect}" not in version:
        raise SmokeError(f"hyco --version does not say 'frames: {expect}': {version!r}")
    print(version)
    emulator_argv = [str(hyco), "emulator", "--host", "127.0.0.1", "--port", "0",
                     "--no-webpubsub", "--hc", HC]
    with _started(emulator_argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                  stdin=subprocess.DEVNULL) as emulator:
        assert emulator.stdout is not None
        banner = _reader(emulator.stdout)
        seen: list[str] = []
        port = _wait_for(banner, r"listening on ws://127\.0\.0\.1:(\d+)", seen, timeout,
                         "hyco emulator").group(1)
        _wait_for(banner, rf"^frames: {expect}\b", seen, timeout, "hyco emulator banner")
        endpoint = ["--namespace", f"127.0.0.1:{port}", "--path", HC]
        with _started([str(hyco), "listen", *endpoint, "--text", "--no-stdin"],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      stdin=subprocess.DEVNULL) as listener:
            assert listener.stdout is not None and listener.stderr is not None
            _wait_for(_reader(listener.stderr), r"listening on", [], timeout, "hyco listen")
            received = _reader(listener.stdout)
            _run([str(hyco), "send", *endpoint, "--text", "-N"], timeout, stdin=MESSAGE + "\n")
            got: list[str] = []
            _wait_for(received, re.escape(MESSAGE), got, timeout, "hyco listen's stdout")
            # The sender closed (-N): the listener exits by itself after its one connection.
            status = listener.wait(timeout=timeout)
            if status != 0:
                raise SmokeError(f"hyco listen exited with {status}")
    print(f"hyco emulator (port {port}), listen and send: message relayed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--expect", choices=("cython", "python"), required=True,
                        help="the frame kernel the installed package must use")
    parser.add_argument("--outside", type=Path,
                        help="a source tree the package must not be imported from")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="deadline of each wait, in seconds (default 30)")
    args = parser.parse_args(argv)
    try:
        check_import(args.expect, args.outside)
        check_cli(hyco_executable(), args.expect, args.timeout)
    except (SmokeError, subprocess.TimeoutExpired) as exc:
        print(f"smoke test FAILED: {exc}", file=sys.stderr)
        return 1
    print("smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
