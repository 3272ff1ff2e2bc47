"""The documentation site's tutorials and how-tos work as written (docs describe what exists).

Their Python blocks run as scripts against the emulator (the ``relay`` / ``webpubsub`` fixtures,
or ``hyco emulator --tls-self-signed`` for the TLS how-to), with the environment variables the
pages tell the reader to export; every ``hyco`` command line in their shell blocks parses with
the real argument parser.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyco_proto.cli import build_parser
from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY
from hyco_proto.testing import Relay, WebPubSub
from tests.procutil import ROOT, Proc, emulator_args

DOCS = ROOT / "docs"
PAGES = ["tutorial-relay.md", "tutorial-webpubsub.md", "howto-azure.md", "howto-tls.md"]
TIMEOUT = 30


def blocks(page: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (DOCS / page).read_text(), re.S)


def run_script(code: str, tmp_path: Path, name: str, env: dict[str, str]) -> str:
    script = tmp_path / name
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=TIMEOUT, env=environment(**env), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def environment(**extra: str) -> dict[str, str]:
    """Ours, with the repository importable, unbuffered output and ``extra``; without
    ``HYCO_PROTO_STATE_DIR``, so ``~/.hyco_proto`` is where the pages say."""
    env = {k: v for k, v in os.environ.items() if k != "HYCO_PROTO_STATE_DIR"}
    return {**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture
def background() -> Iterator[list[Proc]]:
    """Processes a test leaves running; stopped with Ctrl-C (SIGINT, as the pages tell the
    reader), killed if that does not end them."""
    started: list[Proc] = []
    yield started
    for proc in started:
        with contextlib.suppress(AssertionError):  # killed by stop(): teardown only cleans up
            proc.stop(signal.SIGINT, TIMEOUT)


def test_pages_have_their_examples() -> None:
    assert len(blocks("tutorial-relay.md", "python")) == 2
    assert len(blocks("tutorial-webpubsub.md", "python")) == 2
    assert len(blocks("howto-azure.md", "python")) == 2
    assert len(blocks("howto-tls.md", "python")) == 1


def hyco_commands() -> list[str]:
    """Every ``hyco ...`` command in the pages' shell blocks: whole lines and ``$(hyco ...)``."""
    commands = []
    for page in PAGES:
        for block in blocks(page, "sh"):
            for line in block.splitlines():
                line = line.split(" #", 1)[0].rstrip().rstrip("\\").strip()
                commands += re.findall(r"\$\((hyco [^()]*)\)", line)
                line = re.sub(r"\$\(hyco [^()]*\)", "TOKEN", line)
                if line.startswith("hyco "):
                    commands.append(line)
    return commands


def test_every_hyco_command_line_parses() -> None:
    commands = hyco_commands()
    assert len(commands) >= 10, commands
    assert 'hyco token -c "$HYCO_CONNECTION_STRING"' in commands
    for command in commands:
        try:
            build_parser().parse_args(shlex.split(command)[1:])
        except SystemExit:
            pytest.fail(f"the docs show a hyco command line that does not parse: {command}")


def test_first_relay_tutorial(relay: Relay, tmp_path: Path,
                              background: list[Proc]) -> None:
    listener_py, sender_py = blocks("tutorial-relay.md", "python")
    env = {"HYCO_CONNECTION_STRING": relay.connection_string("myhc")}
    (tmp_path / "listener.py").write_text(listener_py)
    listener = Proc(["listener.py"], program=[sys.executable], environ=environment(**env),
                    cwd=tmp_path)
    background.append(listener)
    listener.wait_line(r"^listening$", timeout=TIMEOUT)
    out = run_script(sender_py, tmp_path, "sender.py", env)
    assert out == "HELLO RELAY\n"
    # `hyco send --text` against listener.py: a line goes out, its capitals come back.
    sender = subprocess.Popen([sys.executable, "-m", "hyco_proto", "send", "--text"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=environment(**env), cwd=tmp_path)
    try:
        assert sender.stdin is not None and sender.stdout is not None
        sender.stdin.write("hi\n")
        sender.stdin.flush()
        reply: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: reply.put(sender.stdout.readline()),  # type: ignore
                         daemon=True).start()
        assert reply.get(timeout=TIMEOUT) == "HI\n"
    finally:
        sender.send_signal(signal.SIGINT)
        assert sender.wait(timeout=TIMEOUT) == 130
    counters = relay.status()["counters"]
    assert counters["relayed_pairs"] == 2 and counters["listeners_opened"] == 1, counters
    # "Stop the listener with Ctrl-C": it ends quietly, without a traceback.
    assert listener.stop(signal.SIGINT, TIMEOUT) == 0, listener.stderr_text
    assert listener.stderr_text == []


def test_first_relay_tutorial_shell_part(relay: Relay, tmp_path: Path) -> None:
    """Step 2 without a keyboard: the listener prints what the sender sends and exits when it
    closes (the page's `hyco listen --text` / `hyco send --text`, with -N for the end of input)."""
    env = environment(HYCO_CONNECTION_STRING=relay.connection_string("myhc"))
    listener = Proc(["listen", "--text", "--no-stdin"], environ=env, cwd=tmp_path)
    try:
        listener.wait_line(r"^hyco: listening on ws://127\.0\.0\.1:\d+/\$hc/myhc$",
                           stream="stderr", timeout=TIMEOUT)
        done = subprocess.run([sys.executable, "-m", "hyco_proto", "send", "--text", "-N"],
                              input="hello\n", capture_output=True, text=True, env=env,
                              timeout=TIMEOUT)
        assert done.returncode == 0, done.stderr
        listener.wait_line(r"^hello$", timeout=TIMEOUT)
        assert listener.wait(TIMEOUT) == 0
    finally:
        listener.kill()


def test_first_webpubsub_group_tutorial(webpubsub: WebPubSub, tmp_path: Path) -> None:
    chat_py, server_py = blocks("tutorial-webpubsub.md", "python")
    env = {"WEBPUBSUB_CONNECTION_STRING": webpubsub.connection_string}
    assert run_script(chat_py, tmp_path, "chat.py", env) == "room alice hello bob\n"
    assert run_script(server_py, tmp_path, "server.py", env) == "hello from the server\n"


def test_webpubsub_tutorial_refusal_as_described(webpubsub: WebPubSub, tmp_path: Path) -> None:
    """"drop "webpubsub.sendToGroup" from ROLES": send_to_group raises SendMessageError."""
    chat_py = blocks("tutorial-webpubsub.md", "python")[0]
    assert ', "webpubsub.sendToGroup"' in chat_py
    script = tmp_path / "chat.py"
    script.write_text(chat_py.replace(', "webpubsub.sendToGroup"', ""))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=tmp_path,
                          env=environment(WEBPUBSUB_CONNECTION_STRING=webpubsub.connection_string))
    assert done.returncode == 1
    assert "SendMessageError: sendToGroup 'room'" in done.stderr and "Forbidden" in done.stderr


def test_azure_howto_addresses_are_what_the_comments_say(tmp_path: Path) -> None:
    """howto-azure.md's blocks print what their comments promise (no network needed)."""
    addresses, token = blocks("howto-azure.md", "python")
    promised = re.findall(r"print\(.*\)\s+# (\S+)", addresses)
    assert len(promised) == 3
    assert run_script(addresses, tmp_path, "addresses.py", {}).split() == promised
    shown = re.search(r"# '(.*)'", token)
    assert shown is not None
    code = token + "\nprint(token)\n"
    printed = run_script(code, tmp_path, "sas_token.py", {}).strip()
    prefix, _, suffix = shown.group(1).partition("&sig=…&se=…")
    assert printed.startswith(prefix + "&sig=") and printed.endswith(suffix), printed


def test_tls_howto(tmp_path: Path, background: list[Proc]) -> None:
    """howto-tls.md: `hyco emulator --tls-self-signed` writes ~/.hyco_proto/devcert/cert.pem and
    the page's Python trusts it (HOME is a temporary directory here; a free port, so the block's
    explicit scheme="wss" matters)."""
    (code,) = blocks("howto-tls.md", "python")
    emulator = Proc(emulator_args("--tls-self-signed", "--no-webpubsub"),
                    environ=environment(HOME=str(tmp_path)), cwd=tmp_path)
    background.append(emulator)
    port = emulator.wait_line(r"listening on wss://127\.0\.0\.1:(\d+)", timeout=TIMEOUT).group(1)
    emulator.wait_line(r"press Ctrl-C to stop", timeout=TIMEOUT)
    assert (tmp_path / ".hyco_proto" / "devcert" / "cert.pem").is_file()
    cs = (f"Endpoint=sb://127.0.0.1:{port}/;SharedAccessKeyName={DEFAULT_RULE_NAME};"
          f"SharedAccessKey={DEVELOPMENT_KEY};EntityPath=myhc")
    out = run_script(code, tmp_path, "tls.py", {"HOME": str(tmp_path),
                                                "HYCO_CONNECTION_STRING": cs})
    assert out == "hello over TLS\n"
