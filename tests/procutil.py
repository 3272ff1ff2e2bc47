"""Subprocess helpers of the command-line tests: a line-pumping ``Proc`` with bounded waits, the
``hyco emulator`` started on free loopback ports, and ``free_port()``.

Every wait here has a timeout; a process that outlives its test is killed by the test's
``finally`` (``Proc.kill``) or by the ``emulator`` fixture (``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0
HYCO = (sys.executable, "-m", "hyco_proto")


def free_port() -> int:
    """A loopback port nothing listens on (bound once by us, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Proc:
    """A subprocess whose stdout and stderr lines are collected by threads, so every wait on
    its output has a timeout.

    ``args`` are ``hyco`` arguments (run as ``python -m hyco_proto``) unless ``program`` names
    another command. ``environ`` is the whole environment (default: ours), ``env`` is added to
    it; output is unbuffered. With ``new_session`` the process leads a process group of its own
    and signals go to the whole group (a ``bash -c`` line and the commands it starts).
    """

    def __init__(self, args: Sequence[str], *, stdin: bytes | None = None,
                 env: Mapping[str, str] | None = None,
                 environ: Mapping[str, str] | None = None,
                 program: Sequence[str] = HYCO, cwd: Path = ROOT,
                 new_session: bool = False) -> None:
        full_env = dict(os.environ if environ is None else environ)
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        self.new_session = new_session
        self.popen = subprocess.Popen(
            [*program, *args], cwd=cwd, env=full_env, start_new_session=new_session,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stdout = bytearray()
        self.stdout_lines: queue.Queue[str] = queue.Queue()
        self.stderr_lines: queue.Queue[str] = queue.Queue()
        self.stderr_text: list[str] = []
        assert self.popen.stdout is not None and self.popen.stderr is not None
        self._pumps = [
            threading.Thread(target=self._pump_out, args=(self.popen.stdout,), daemon=True),
            threading.Thread(target=self._pump_err, args=(self.popen.stderr,), daemon=True)]
        for pump in self._pumps:
            pump.start()
        if stdin is not None:
            assert self.popen.stdin is not None
            threading.Thread(target=self._feed, args=(self.popen.stdin, stdin),
                             daemon=True).start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @staticmethod
    def _feed(pipe: IO[bytes], data: bytes) -> None:
        try:
            pipe.write(data)
            pipe.close()
        except OSError:
            pass

    def _pump_out(self, pipe: IO[bytes]) -> None:
        buffer = b""
        while True:
            chunk = pipe.read1(65536)  # type: ignore[attr-defined]
            if not chunk:
                break
            self.stdout += chunk
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self.stdout_lines.put(line.decode("utf-8", "replace"))

    def _pump_err(self, pipe: IO[bytes]) -> None:
        for raw in pipe:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.stderr_text.append(line)
            self.stderr_lines.put(line)

    def wait_line(self, pattern: str, *, stream: str = "stdout",
                  timeout: float = TIMEOUT) -> re.Match[str]:
        """The first line of ``stream`` (not seen by an earlier wait) that matches ``pattern``
        (``re.search``), within ``timeout`` seconds."""
        lines = self.stdout_lines if stream == "stdout" else self.stderr_lines
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matching {pattern!r} within {timeout} s; "
                                     f"{stream}: {seen!r}; stderr: {self.stderr_text!r}")
            try:
                line = lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.popen.poll() is not None and lines.empty() and not self._pumping():
                    raise AssertionError(
                        f"process exited ({self.popen.returncode}) before printing "
                        f"{pattern!r}; {stream}: {seen!r}; stderr: {self.stderr_text!r}"
                    ) from None
                continue
            seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def _pumping(self) -> bool:
        return any(pump.is_alive() for pump in self._pumps)

    def wait(self, timeout: float = TIMEOUT) -> int:
        """The exit status, within ``timeout`` (else kill and fail); its output read to the end
        (bounded: a child that keeps the pipes open is not waited for)."""
        try:
            status = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"process did not exit within {timeout} s; "
                                 f"stderr: {self.stderr_text!r}") from None
        for pump in self._pumps:
            pump.join(5)
        return status

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` (to the process group with ``new_session``) if still running."""
        if self.popen.poll() is None:
            if self.new_session:
                os.killpg(self.popen.pid, signum)
            else:
                self.popen.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """A clean stop (SIGTERM, or SIGINT for Ctrl-C); killed and failed after ``timeout``."""
        self.send_signal(signum)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.send_signal(signal.SIGKILL)
            self.popen.wait(5)


class Emulator:
    """A ``hyco emulator`` subprocess that has printed its banner, and its relay address."""

    def __init__(self, proc: Proc, url: str) -> None:
        self.proc = proc
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])

    def client_args(self, path: str = "myhc") -> list[str]:
        """``hyco listen`` / ``hyco send`` arguments for hybrid connection ``path`` here."""
        return ["--port", str(self.port), "--path", path]

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/$status",
                                    timeout=5) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/json"
            doc = json.loads(response.read())
            assert isinstance(doc, dict)
            return doc


def emulator_args(*args: str) -> list[str]:
    """``hyco emulator`` arguments on free ports: the relay on ``--port 0`` unless ``args`` give
    one, the Web PubSub hubs on ``--webpubsub-port 0`` unless ``args`` choose (their default,
    8080, is a fixed port that another test or program may hold)."""
    argv = ["emulator", *args]
    if "--port" not in args:
        argv += ["--port", "0"]
    if "--no-webpubsub" not in args and "--webpubsub-port" not in args:
        argv += ["--webpubsub-port", "0"]
    return argv


def start_emulator(*args: str, timeout: float = TIMEOUT) -> Emulator:
    """``hyco emulator`` (``emulator_args(*args)``), once its banner ends; killed if it does
    not get there."""
    proc = Proc(emulator_args(*args))
    try:
        url = proc.wait_line(r"listening on (wss?://127\.0\.0\.1:\d+)", timeout=timeout).group(1)
        proc.wait_line(r"press Ctrl-C to stop", timeout=timeout)
    except BaseException:
        proc.kill()
        raise
    return Emulator(proc, url)


@contextlib.contextmanager
def running_emulator(*args: str) -> Iterator[Emulator]:
    """``start_emulator(*args)``, killed on the way out."""
    emulator = start_emulator(*args)
    try:
        yield emulator
    finally:
        emulator.proc.kill()
