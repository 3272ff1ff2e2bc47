"""``hyco listen`` / ``hyco send`` output that tells the truth: progress on a terminal, the ``-v``
summary, JSON status lines, ``-K`` serving one sender at a time (the others wait, and say so),
and a lost relay said without ``-v`` (issue 13).

The emulator, listeners and senders are real subprocesses on loopback (``tests/procutil.py``);
every wait is bounded.
"""

from __future__ import annotations

import io
import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hyco_proto import cli
from hyco_proto._progress import TransferMeter, format_bytes, format_duration
from tests.procutil import ROOT, Emulator, Proc, free_port, start_emulator

# -------------------------------------------------------------------------------------------
# the meter, on a fake clock and a fake stream


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_format_bytes_and_duration() -> None:
    assert format_bytes(0) == "0 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 << 20) == "3.0 MiB"
    assert format_bytes(5 << 40) == "5.0 TiB"
    assert format_bytes(5 << 50) == "5120.0 TiB"
    assert format_duration(0.4199) == "0.42 s"
    assert format_duration(12.34) == "12.3 s"
    assert format_duration(61) == "1:01"
    assert format_duration(3723) == "1:02:03"


def test_meter_draws_in_place_after_the_delay_at_most_every_interval() -> None:
    clock, stream = FakeClock(), io.StringIO()
    meter = TransferMeter(stream, clock, interval=0.25, delay=1.0)
    meter.received(1000)
    clock.now += 0.9
    assert not meter.tick() and stream.getvalue() == ""  # a quick exchange prints nothing
    clock.now += 0.1
    meter.received(1 << 20)
    assert meter.tick()
    first = stream.getvalue()
    assert first.startswith("\rhyco: 1.0 MiB received, 0 B sent, ") and "\n" not in first
    assert first.endswith(", 1.00 s")
    clock.now += 0.1
    assert not meter.tick() and stream.getvalue() == first  # rate-limited
    clock.now += 0.15
    meter.sent(10)
    assert meter.tick()
    assert stream.getvalue()[len(first):].startswith("\rhyco: 1.0 MiB received, 10 B sent")
    meter.finish()
    assert stream.getvalue().endswith("\n") and stream.getvalue().count("\n") == 1


def test_meter_pads_over_a_longer_previous_line() -> None:
    clock, stream = FakeClock(), io.StringIO()
    meter = TransferMeter(stream, clock, interval=0.25, delay=0.0)
    meter.received(500 << 20)
    clock.now += 1.0
    meter.tick()
    long_line = stream.getvalue().split("\r")[-1]
    meter.bytes_in = 0  # not a real transfer: forces a shorter line
    clock.now += 1.0
    meter.tick()
    short = stream.getvalue().split("\r")[-1]
    assert len(short) == len(long_line) and short.endswith(" ") and "0 B received" in short


def test_meter_break_line_ends_a_drawn_line_and_the_next_tick_redraws() -> None:
    clock, stream = FakeClock(), io.StringIO()
    meter = TransferMeter(stream, clock, interval=0.25, delay=1.0)
    meter.break_line()
    assert stream.getvalue() == ""  # nothing drawn: nothing to end
    clock.now += 1.0
    assert meter.tick()
    meter.break_line()
    assert stream.getvalue().endswith("\n") and stream.getvalue().count("\n") == 1
    stream.write("hyco: another line\n")
    clock.now += 0.01
    assert meter.tick()  # at once, under the other line, not rate-limited
    assert stream.getvalue().endswith(" s") and "\nhyco: another line\n\rhyco: " in \
        stream.getvalue()


def test_meter_finish_without_a_drawn_line_writes_nothing() -> None:
    clock, stream = FakeClock(), io.StringIO()
    meter = TransferMeter(stream, clock)
    meter.received(10)
    clock.now += 0.5
    meter.tick()
    meter.finish()
    assert stream.getvalue() == ""


def test_meter_summary_and_rate() -> None:
    clock = FakeClock()
    meter = TransferMeter(io.StringIO(), clock)
    meter.received(2 << 20)
    meter.sent(2048)
    clock.now += 2.0
    assert meter.rate() == ((2 << 20) + 2048) / 2.0
    assert meter.summary() == "2.0 MiB received, 2.0 KiB sent in 2.00 s (1.0 MiB/s)"


# -------------------------------------------------------------------------------------------
# the CLI, end to end


def _relay(*extra: str) -> tuple[Proc, str]:
    """An emulator without Web PubSub hubs, on a free port unless ``extra`` gives one: its
    process (the caller kills it) and its relay port."""
    relay = start_emulator("--no-webpubsub", *extra)
    return relay.proc, str(relay.port)


def _read_terminal(master: int, until: float) -> bytes:
    """What a terminal showed until ``until`` (monotonic) or its other side closed."""
    output = b""
    while time.monotonic() < until:
        if not select.select([master], [], [], 0.1)[0]:
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not chunk:
            break
        output += chunk
    return output


def _feed_slowly(pipe: subprocess.Popen[bytes], chunks: int, size: int, pause: float) -> None:
    assert pipe.stdin is not None
    for _ in range(chunks):
        pipe.stdin.write(os.urandom(size))
        pipe.stdin.flush()
        time.sleep(pause)
    pipe.stdin.close()


def test_progress_on_a_terminal_updates_in_place_and_ends_with_a_newline(
        emulator: Emulator) -> None:
    listener = Proc(["listen", *emulator.client_args("tty"), "--no-stdin"])
    master, slave = os.openpty()
    sender = None
    try:
        listener.wait_line(r"listening on ws://", stream="stderr")
        started = time.monotonic()
        sender = subprocess.Popen(
            [sys.executable, "-m", "hyco_proto", "send", *emulator.client_args("tty"), "-N"],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        _feed_slowly(sender, chunks=20, size=64 * 1024, pause=0.1)  # about 2 s
        assert sender.wait(20) == 0
        elapsed = time.monotonic() - started
        assert listener.wait() == 0, listener.stderr_text
        output = _read_terminal(master, time.monotonic() + 5.0)
    finally:
        os.close(master)
        listener.kill()
        if sender is not None and sender.poll() is None:
            sender.kill()
            sender.wait(5)
    text = output.decode("utf-8", "replace")
    draws = re.findall(r"\rhyco: [\d.]+ [KMG]?i?B received, [\d.]+ [KMG]?i?B sent, "
                       r"[\d.]+ [KMG]?i?B/s, \d+\.\d+ s", text)
    assert len(draws) >= 2, repr(text)  # redrawn in place, more than once
    # At most one draw per interval (0.25 s) while the sender ran, plus the first and last.
    assert len(draws) <= 4 * elapsed + 2, (elapsed, repr(text))
    assert text.rstrip(" ").endswith("\r\n"), repr(text)  # the tty maps \n to \r\n
    assert f"{format_bytes(20 * 64 * 1024)} sent" in draws[-1], repr(text)  # the final counts
    assert len(listener.stdout) == 20 * 64 * 1024


def test_no_progress_when_stderr_is_not_a_terminal(emulator: Emulator) -> None:
    listener = Proc(["listen", *emulator.client_args("pipe"), "--no-stdin"])
    try:
        listener.wait_line(r"listening on ws://", stream="stderr")
        sender = subprocess.Popen(
            [sys.executable, "-m", "hyco_proto", "send", *emulator.client_args("pipe"), "-N"],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _feed_slowly(sender, chunks=15, size=32 * 1024, pause=0.1)
        assert sender.wait(20) == 0
        assert sender.stderr is not None
        err = sender.stderr.read()
        assert listener.wait() == 0, listener.stderr_text
    finally:
        listener.kill()
    assert err == b""  # scripts and pipes stay clean
    assert listener.stderr_text == [f"hyco: listening on ws://127.0.0.1:{emulator.port}"
                                    "/$hc/pipe"]


def test_verbose_prints_a_summary_per_connection(emulator: Emulator) -> None:
    payload = os.urandom(200_000)
    listener = Proc(["listen", *emulator.client_args("sum"), "-v", "--no-stdin"])
    try:
        listener.wait_line(r"listening on ws://", stream="stderr")
        sender = Proc(["send", *emulator.client_args("sum"), "-v", "-N"], stdin=payload)
        assert sender.wait() == 0, sender.stderr_text
        assert listener.wait() == 0, listener.stderr_text
    finally:
        listener.kill()
    pattern = (r"^hyco: connection closed \(1000\): {got} received, {sent} sent in "
               r"\d+\.\d+ s \([\d.]+ [KMG]?i?B/s\)$")
    size = re.escape(format_bytes(len(payload)))
    assert any(re.match(pattern.format(got=size, sent="0 B"), line)
               for line in listener.stderr_text), listener.stderr_text
    assert any(re.match(pattern.format(got="0 B", sent=size), line)
               for line in sender.stderr_text), sender.stderr_text


def test_log_format_json_makes_every_stderr_line_json(emulator: Emulator) -> None:
    listener = Proc(["listen", *emulator.client_args("json"), "-v", "--no-stdin",
                     "--log-format", "json", "--log-level", "debug"])
    try:
        listener.wait_line(r'"message": "listening on ws://', stream="stderr")
        sender = Proc(["send", *emulator.client_args("json"), "-v", "-N",
                       "--log-format", "json"], stdin=b"hi")
        assert sender.wait() == 0, sender.stderr_text
        assert listener.wait() == 0, listener.stderr_text
    finally:
        listener.kill()
    for proc in (listener, sender):
        docs = [json.loads(line) for line in proc.stderr_text]  # every line parses
        assert all({"time", "level", "logger", "message"} <= doc.keys() for doc in docs), docs
        assert any(doc["message"].startswith("connection closed (1000): ") for doc in docs)
    # An error, too: exit 1 with the cause as a JSON object.
    failing = Proc(["send", *emulator.client_args("json"), "--key", "wrong", "--no-stdin",
                    "--log-format", "json"])
    assert failing.wait() == 1
    (doc,) = [json.loads(line) for line in failing.stderr_text]
    assert doc["level"] == "ERROR" and "401" in doc["message"], doc


@pytest.mark.parametrize("command", [["listen"], ["send"], ["http", "--asgi", "m:app"],
                                     ["emulator"]])
def test_every_command_that_logs_has_log_level_and_log_format(
        command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args([*command, "--log-format", "json", "--log-level",
                                          "info"])
    assert (args.log_level, args.log_format) == ("INFO", "json")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([*command, "--help"])
    out = capsys.readouterr().out
    assert "--log-level" in out and "--log-format" in out, out


def test_keep_open_serves_one_sender_at_a_time_and_says_the_others_wait() -> None:
    # The relay fails a sender with 504 when no listener accepts it within --accept-timeout
    # (2 s here); the first connection lasts longer, so the second must be accepted at once.
    relay, port = _relay("--accept-timeout", "2")
    where = ["--port", port, "--path", "queue", "--text"]
    listener = Proc(["listen", *where, "-K", "--no-stdin"])
    first = second = None
    try:
        listener.wait_line(r"listening on ws://", stream="stderr")
        first = subprocess.Popen([sys.executable, "-m", "hyco_proto", "send", *where, "-N"],
                                 cwd=ROOT, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert first.stdin is not None
        first.stdin.write(b"one\n")
        first.stdin.flush()
        listener.wait_line(r"^one$")
        second = Proc(["send", *where, "-N"], stdin=b"two\n")
        listener.wait_line(r"^hyco: connection from 127\.0\.0\.1:\d+ queued: serving one "
                           r"connection at a time; 1 waiting$", stream="stderr")
        time.sleep(3)  # longer than the relay's accept timeout
        assert second.popen.poll() in (None, 0), second.stderr_text  # not failed (504)
        first.stdin.write(b"one again\n")
        first.stdin.close()
        assert first.wait(10) == 0
        assert second.wait() == 0, second.stderr_text
        listener.wait_line(r"^two$")
    finally:
        listener.kill()
        relay.kill()
        if first is not None and first.poll() is None:
            first.kill()
            first.wait(5)
        if second is not None:
            second.kill()
    assert bytes(listener.stdout) == b"one\none again\ntwo\n"
    assert "504" not in "\n".join(second.stderr_text)


def test_without_keep_open_a_second_sender_is_refused_with_503_at_once(
        emulator: Emulator) -> None:
    listener = Proc(["listen", *emulator.client_args("one"), "--no-stdin", "--text"])
    first = None
    try:
        listener.wait_line(r"listening on ws://", stream="stderr")
        first = Proc(["send", *emulator.client_args("one"), "--text"], stdin=b"one\n")
        listener.wait_line(r"^one$")
        started = time.monotonic()
        second = Proc(["send", *emulator.client_args("one"), "--text", "-N"],
                      stdin=b"two\n")
        assert second.wait(10) == 1
        assert time.monotonic() - started < 8
        text = "\n".join(second.stderr_text)
        assert "503" in text and "serves one connection" in text and "--keep-open" in text, text
        first.popen.terminate()
        assert first.wait(10) == 0
        assert listener.wait() == 0, listener.stderr_text
    finally:
        listener.kill()
        if first is not None:
            first.kill()
    assert bytes(listener.stdout) == b"one\n"
    assert any(re.fullmatch(r"hyco: turned away the sender from 127\.0\.0\.1:\d+: serving one "
                            r"connection \(503; -K queues them\)", line)
               for line in listener.stderr_text), listener.stderr_text


def test_a_lost_relay_is_said_without_verbose_and_ends_listen_after_its_timeout() -> None:
    relay, port = _relay()
    listener = None
    try:
        listener = Proc(["listen", "--port", port, "--path", "lost", "--no-stdin",
                         "--timeout", "2"])
        listener.wait_line(r"listening on ws://", stream="stderr")
        relay.popen.kill()  # gone without a goodbye
        relay.wait(5)
        lost = listener.wait_line(r"^hyco: relay connection lost \((.+)\); reconnecting…$",
                                  stream="stderr")
        assert "1006" in lost.group(1) or "nothing is listening" in lost.group(1), lost.group(0)
        started = time.monotonic()
        assert listener.wait(10) == 1
        assert time.monotonic() - started < 6  # its --timeout (2 s), not forever
        assert listener.stderr_text[-1] == (
            f"hyco listen: error: lost the relay at ws://127.0.0.1:{port}/$hc/lost and could "
            f"not reconnect within 2 s: cannot reconnect: nothing is listening at "
            f"127.0.0.1:{port} (connection refused)"), listener.stderr_text
    finally:
        relay.kill()
        if listener is not None:
            listener.kill()


def test_keep_open_reconnects_to_a_restarted_relay_and_says_so() -> None:
    relay, port = _relay()
    listener = None
    try:
        listener = Proc(["listen", "--port", port, "--path", "back", "--no-stdin", "-K",
                         "--timeout", "1"])
        listener.wait_line(r"listening on ws://", stream="stderr")
        assert relay.stop() == 0
        listener.wait_line(r"^hyco: relay connection lost \(relay closed the connection with "
                           r"1001.*\); reconnecting…$", stream="stderr")
        time.sleep(1.5)  # longer than --timeout: with -K it keeps trying
        assert listener.popen.poll() is None, listener.stderr_text
        relay, _ = _relay("--port", port)
        # The listener's back-off between attempts grows (0, 1, 2, 5 s ...).
        listener.wait_line(rf"^hyco: reconnected: listening on ws://127\.0\.0\.1:{port}"
                           r"/\$hc/back$", stream="stderr", timeout=15)
        sender = Proc(["send", "--port", port, "--path", "back", "-N"], stdin=b"after")
        assert sender.wait() == 0, sender.stderr_text
        _wait_stdout(listener, b"after")
        listener.popen.terminate()
        assert listener.wait(5) == 0
    finally:
        relay.kill()
        if listener is not None:
            listener.kill()


def _wait_stdout(proc: Proc, data: bytes, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while bytes(proc.stdout) != data:
        assert time.monotonic() < deadline, bytes(proc.stdout)
        time.sleep(0.05)


def test_listen_help_says_it_serves_one_at_a_time(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["listen", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "one at a time" in out and "wait their turn" in out, out
    assert "second sender gets 503" in out and "retried until it is back" in out, out


def test_http_log_format_json_reports_its_failure_as_json(tmp_path: Path) -> None:
    (tmp_path / "plainapp.py").write_text(
        "async def app(scope, receive, send):\n    raise RuntimeError('never called')\n")
    port = free_port()  # nothing listens there
    done = subprocess.run(
        [sys.executable, "-m", "hyco_proto", "http", "--asgi", "plainapp:app", "--app-dir",
         str(tmp_path), "--port", str(port), "--path", "x", "--log-format", "json",
         "--lifespan", "off"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 1, done.stderr
    docs = [json.loads(line) for line in done.stderr.splitlines()]
    assert docs[-1]["level"] == "ERROR" and docs[-1]["logger"] == "hyco", docs
    assert docs[-1]["message"].startswith(f"http: error: cannot listen at ws://127.0.0.1:{port}"
                                          "/$hc/x: nothing is listening"), docs


def test_meter_does_not_redraw_an_idle_connection() -> None:
    clock, stream = FakeClock(), io.StringIO()
    meter = TransferMeter(stream, clock, interval=0.25, delay=1.0)
    meter.received(10)
    clock.now += 1.0
    assert meter.tick()
    for _ in range(8):  # nothing moved: the line stays as drawn (it would draw over typing)
        clock.now += 0.5
        assert not meter.tick()
    meter.sent(1)
    clock.now += 0.5
    assert meter.tick()
    assert stream.getvalue().count("\r") == 2


@pytest.mark.parametrize("stdout", ["terminal", "file"])
def test_no_progress_while_the_terminal_is_typed_into(emulator: Emulator, stdout: str,
                                                      tmp_path: Path) -> None:
    """`hyco send --text` reading a terminal (stderr there too; stdout there or in a file):
    what the user types is not drawn over by a progress line (review and trials of issue 13)."""
    listener = Proc(["listen", *emulator.client_args("chat"), "--text"])
    master, slave = os.openpty()
    sender = None
    out = open(tmp_path / "out", "wb") if stdout == "file" else None  # noqa: SIM115
    try:
        listener.wait_line(r"listening on ws://", stream="stderr")
        sender = subprocess.Popen(
            [sys.executable, "-m", "hyco_proto", "send", *emulator.client_args("chat"),
             "--text", "-N"], cwd=ROOT, stdin=slave, stdout=out or slave, stderr=slave)
        os.close(slave)
        for line in (b"hi\n", b"there\n"):
            listener_seen = len(listener.stdout)
            os.write(master, line)
            deadline = time.monotonic() + 20
            while len(listener.stdout) == listener_seen and time.monotonic() < deadline:
                time.sleep(0.05)
        shown = _read_terminal(master, time.monotonic() + 2.0)  # past the 1 s delay
        os.write(master, b"\x04")  # Ctrl-D: end of input, -N closes
        assert sender.wait(20) == 0
    finally:
        os.close(master)
        if out is not None:
            out.close()
        listener.kill()
        if sender is not None and sender.poll() is None:
            sender.kill()
            sender.wait(5)
    assert listener.stdout == b"hi\nthere\n"
    assert b"received" not in shown, shown


def test_received_lines_on_the_progress_terminal_take_their_own_lines(
        emulator: Emulator) -> None:
    """A listener printing to the terminal its progress line is on: each message starts a line
    of its own, and the progress line is drawn again below it."""
    master, slave = os.openpty()
    listener = subprocess.Popen(
        [sys.executable, "-m", "hyco_proto", "listen", *emulator.client_args("lines"),
         "--text", "--no-stdin"], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    sender = None
    try:
        seen = b""
        deadline = time.monotonic() + 20
        while b"listening on ws://" not in seen and time.monotonic() < deadline:
            seen += _read_terminal(master, time.monotonic() + 0.2)
        assert b"listening on ws://" in seen, seen
        sender = subprocess.Popen(
            [sys.executable, "-m", "hyco_proto", "send", *emulator.client_args("lines"),
             "--text", "-N"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        assert sender.stdin is not None
        for i in range(12):  # about 2.4 s: the progress line shows after 1 s
            sender.stdin.write(f"message-{i}\n".encode())
            sender.stdin.flush()
            time.sleep(0.2)
        sender.stdin.close()
        assert sender.wait(20) == 0
        assert listener.wait(20) == 0
        seen += _read_terminal(master, time.monotonic() + 1.0)
    finally:
        os.close(master)
        for proc in (listener, sender):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(5)
    text = seen.decode("utf-8", "replace")
    assert re.search(r"\rhyco: [\d.]+ [KMG]?i?B received", text), repr(text)  # progress drawn
    # What the terminal shows: each row is what its last carriage return left (the progress
    # line is blanked with spaces before a message takes its row).
    rows = [row.rsplit("\r", 1)[-1].rstrip() for row in text.split("\r\n")]
    messages = [row for row in rows if row.startswith("message-")]
    assert messages == [f"message-{i}" for i in range(12)], rows
    progress = [row for row in rows if "received" in row]
    assert len(progress) <= 1, rows  # the final one at most: none left between the messages


def test_keep_open_caps_the_waiting_senders_when_they_arrive_together() -> None:
    """70 senders at the same moment: each is accepted before any is queued, so the cap of
    64 waiting must hold when they arrive (1013), not only when they are decided (503)."""
    import asyncio

    from hyco_proto.adapters.asyncio import RelayConnectionClosed, relayed_connect
    from hyco_proto.sas import create_relay_token
    from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY
    from hyco_proto.uris import create_relay_send_uri

    relay, port = _relay()
    listener = Proc(["listen", "--port", port, "--path", "crowd", "-K", "--no-stdin"])
    uri = create_relay_send_uri("127.0.0.1", "crowd", scheme="ws", port=int(port))
    token = create_relay_token(uri, DEFAULT_RULE_NAME, DEVELOPMENT_KEY, 600)

    async def crowd() -> tuple[int, list[int | None], int]:
        served = await asyncio.wait_for(relayed_connect(uri, token), 20)  # held open
        outcomes = await asyncio.gather(
            *(asyncio.wait_for(relayed_connect(uri, token), 30) for _ in range(70)),
            return_exceptions=True)
        refused = sum(1 for o in outcomes if isinstance(o, Exception))
        connected = [o for o in outcomes if not isinstance(o, BaseException)]

        async def closed_by_listener(ws: Any) -> int | None:
            try:  # those closed by the listener hear it at once; the waiting hear nothing
                await asyncio.wait_for(ws.recv(), 2.0)
            except RelayConnectionClosed:
                return int(ws.close_code)
            except TimeoutError:
                pass
            return None

        codes = await asyncio.gather(*(closed_by_listener(ws) for ws in connected))
        await asyncio.wait_for(asyncio.gather(*(ws.close() for ws in [*connected, served])), 20)
        return refused, [code for code in codes if code is not None], len(connected)

    try:
        listener.wait_line(r"listening on ws://", stream="stderr")
        refused, closed, connected = asyncio.run(crowd())
    finally:
        listener.kill()
        relay.kill()
    assert refused + len(closed) == 70 - 64, (refused, closed, connected)
    assert all(code == 1013 for code in closed), closed
    # Said once for the crowd (at most one such line per 5 s), counting the others.
    said = [line for line in listener.stderr_text if "turned away" in line]
    assert len(said) == 1, listener.stderr_text
    assert re.fullmatch(r"hyco: turned away the sender from 127\.0\.0\.1:\d+: 64 senders are "
                        r"waiting \((503|1013)\)", said[0]), said


def test_verbose_summary_also_when_sigterm_ends_the_connection(emulator: Emulator) -> None:
    import signal

    listener = Proc(["listen", *emulator.client_args("term"), "--no-stdin"])
    sender = None
    try:
        listener.wait_line(r"listening on ws://", stream="stderr")
        sender = Proc(["send", *emulator.client_args("term"), "-v"], stdin=b"hello\n")
        sender.wait_line(r"^hyco: connected to ", stream="stderr")
        deadline = time.monotonic() + 20
        while listener.stdout != b"hello\n" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert listener.stdout == b"hello\n"
        sender.popen.send_signal(signal.SIGTERM)
        assert sender.wait() == 0, sender.stderr_text
    finally:
        listener.kill()
        if sender is not None:
            sender.kill()
    assert any(re.match(r"^hyco: connection closed \(1000\): 0 B received, 6 B sent in ", line)
               for line in sender.stderr_text), sender.stderr_text


def test_meter_fits_a_narrow_terminal_and_clear_blanks_its_line() -> None:
    clock, stream = FakeClock(), io.StringIO()
    meter = TransferMeter(stream, clock, interval=0.25, delay=1.0, columns=lambda: 30)
    meter.received(5 << 20)
    clock.now += 1.0
    assert meter.tick()
    drawn = stream.getvalue()
    assert drawn.startswith("\r") and len(drawn) == 1 + 29  # one row: it would wrap at 30
    meter.clear()
    assert stream.getvalue()[len(drawn):] == "\r" + " " * 29 + "\r"
    assert not meter.drawn
    clock.now += 0.1
    assert meter.tick()  # drawn again below what took the line, even with no new bytes
