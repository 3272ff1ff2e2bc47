"""``hyco http --asgi/--wsgi module:app`` as a subprocess against the relay emulator: it says
where it listens and where senders call, serves the app, stops cleanly on SIGINT / SIGTERM
(exit 0, the ASGI lifespan shutdown runs), and exits non-zero naming the cause when it cannot
start."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from hyco_proto.adapters.asyncio import RelayServiceThread
from tests.adapters.app_client import call
from tests.adapters.harness import free_port

ROOT = Path(__file__).resolve().parent.parent
WAIT = 20.0


@pytest.fixture(scope="module")
def relay() -> Iterator[RelayServiceThread]:
    with RelayServiceThread(port=0) as relay:
        yield relay


class Hyco:
    """``python -m hyco_proto ARGS``, its output lines collected by reader threads."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "hyco_proto", *args], cwd=ROOT,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream,), daemon=True)
                         for stream in (self.proc.stdout, self.proc.stderr)]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} not printed within {timeout} s: {self.seen}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(line)
            if text in line:
                return line

    def finish(self, timeout: float = WAIT) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        for reader in self._readers:
            reader.join(5)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code, "\n".join(self.seen)


def serve_args(kind: str, port: int, hc: str) -> list[str]:
    return ["http", f"--{kind}", f"tests.adapters.http_apps:{kind}_app",
            "--namespace", f"127.0.0.1:{port}", "--path", hc, "--log-level", "WARNING"]


@pytest.mark.parametrize(("kind", "sig"), [("asgi", signal.SIGINT), ("wsgi", signal.SIGTERM)])
def test_serves_and_stops_cleanly(relay: RelayServiceThread, kind: str,
                                  sig: signal.Signals) -> None:
    hc = f"cli{kind}"
    hyco = Hyco(*serve_args(kind, relay.port, hc))
    try:
        hyco.wait_for(f"listening on ws://127.0.0.1:{relay.port}/$hc/{hc}")
        line = hyco.wait_for("send requests to")
        assert f"http://127.0.0.1:{relay.port}/{hc} " in line
        reply = call(relay.port, hc, "GET", "/")
        assert (reply.status, reply.body) == (200, b"hello")
        reply = call(relay.port, hc, "POST", "/sha", b"x" * 100_000)
        assert b'"size":100000' in reply.body.replace(b" ", b"")
    finally:
        hyco.proc.send_signal(sig)
        code, output = hyco.finish()
    assert code == 0, output
    assert "Traceback" not in output
    # The listener is gone: the relay answers for itself.
    assert call(relay.port, hc, "GET", "/").status == 502


def test_cannot_listen_exits_non_zero_with_the_cause() -> None:
    port = free_port()  # nothing listens there
    hyco = Hyco(*serve_args("asgi", port, "nohc"))
    code, output = hyco.finish()
    assert code == 1, output
    assert f"hyco http: error: cannot listen at ws://127.0.0.1:{port}/$hc/nohc" in output
    assert "Traceback" not in output


def test_bad_application_spec() -> None:
    for spec, why in (("tests.adapters.no_such_module:app", "cannot import module"),
                      ("tests.adapters.http_apps:nothing", "has no attribute 'nothing'"),
                      ("tests.adapters.http_apps", "expected 'module:attribute'")):
        hyco = Hyco("http", "--asgi", spec, "--path", "x")
        code, output = hyco.finish()
        assert code == 1, output
        assert why in output and "Traceback" not in output


def test_an_app_module_that_fails_to_import_says_why_in_one_line(tmp_path: Path) -> None:
    # Its own import of a missing package, a syntax error, an exception in its code: one line
    # naming the module, the error and where it was raised (docs/http-apps.md), no traceback.
    (tmp_path / "needs_dep.py").write_text("import json\nimport no_such_dependency_xyz\n")
    (tmp_path / "bad_syntax.py").write_text("app = (\n")
    (tmp_path / "raises.py").write_text("x = 1\nraise RuntimeError('DATABASE_URL unset')\n")
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(3)\n")  # argparse at import
    for spec, why in (
            ("needs_dep:app", "importing 'needs_dep' failed: ModuleNotFoundError: No module "
             f"named 'no_such_dependency_xyz' ({tmp_path / 'needs_dep.py'}, line 2)"),
            ("bad_syntax:app", "importing 'bad_syntax' failed: SyntaxError: '(' was never "
             f"closed ({tmp_path / 'bad_syntax.py'}, line 1)"),
            ("raises:app", "importing 'raises' failed: RuntimeError: DATABASE_URL unset "
             f"({tmp_path / 'raises.py'}, line 2)"),
            ("exits:app", f"importing 'exits' failed: SystemExit: 3 ({tmp_path / 'exits.py'}, "
             "line 2)")):
        hyco = Hyco("http", "--asgi", spec, "--app-dir", str(tmp_path), "--path", "x")
        code, output = hyco.finish()
        assert code == 1, output
        assert f"hyco http: error: {why}" in output and "Traceback" not in output, output


def test_an_app_of_the_other_kind_is_refused_at_start() -> None:
    for flag, spec, why in (
            ("--wsgi", "tests.adapters.http_apps:asgi_app", "looks like an ASGI application; "
             "serve it with --asgi instead of --wsgi"),
            ("--asgi", "tests.adapters.http_apps:wsgi_app", "looks like a WSGI application; "
             "serve it with --wsgi instead of --asgi")):
        hyco = Hyco("http", flag, spec, "--path", "x")
        code, output = hyco.finish()
        assert code == 1, output
        assert why in output and "Traceback" not in output
