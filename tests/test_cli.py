"""The ``hyco`` command line: token, emulator, listen/send, status.

The emulator, listener and sender run as real subprocesses (``python -m hyco_proto``) on
loopback, with bounded timeouts (``tests/procutil.py``; the ``emulator`` fixture is in
``tests/conftest.py``); every process is killed on teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from hyco_proto import cli, parse_connection_string
from hyco_proto.sas import parse_token, verify_token
from hyco_proto.service import devcert
from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY
from tests.procutil import ROOT, TIMEOUT, Emulator, Proc, emulator_args, free_port


def hyco(args: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = cli.main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# -------------------------------------------------------------------------------------------
# hyco token


def test_token_verifies(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = hyco(["token", "http://127.0.0.1:9090/myhc", "--ttl", "120"], capsys)
    assert status == 0
    token = out.strip()
    parsed = verify_token(token, keys={DEFAULT_RULE_NAME: DEVELOPMENT_KEY},
                          target_path="/myhc/suffix", now=time.time())
    assert parsed.key_name == DEFAULT_RULE_NAME
    assert parsed.resource == "http://127.0.0.1:9090/myhc"
    assert 100 <= parsed.expiry - time.time() <= 121


def test_token_with_rule_key_and_listen_uri(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = hyco(["token", "ws://127.0.0.1:9090/$hc/myhc?sb-hc-action=listen",
                           "--rule", "listen-rule", "--key", "s3cr3t"], capsys)
    assert status == 0
    parsed = verify_token(out.strip(), keys={"listen-rule": "s3cr3t"}, target_path="/myhc",
                          now=time.time())
    assert parsed.resource == "http://127.0.0.1:9090/myhc"  # hyco-ws normalisation (§2.3)
    with pytest.raises(Exception, match="bad signature"):
        verify_token(out.strip(), keys={"listen-rule": "other"}, target_path="/myhc",
                     now=time.time())


def test_token_from_connection_string(capsys: pytest.CaptureFixture[str]) -> None:
    cs = "Endpoint=sb://ns.example/;SharedAccessKeyName=rule;SharedAccessKey=k;EntityPath=hc"
    status, out, _ = hyco(["token", "--connection-string", cs], capsys)
    assert status == 0
    verify_token(out.strip(), keys={"rule": "k"}, target_path="/hc", now=time.time())
    # Namespace-wide without an entity.
    cs_ns = "Endpoint=sb://ns.example/;SharedAccessKeyName=rule;SharedAccessKey=k"
    status, out, _ = hyco(["token", "-c", cs_ns], capsys)
    assert status == 0
    assert parse_token(out.strip()).resource == "http://ns.example/"
    verify_token(out.strip(), keys={"rule": "k"}, target_path="/any/thing", now=time.time())


def test_token_append(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = hyco(["token", "--append", "ws://127.0.0.1:9090/$hc/myhc"], capsys)
    assert status == 0
    assert out.startswith("ws://127.0.0.1:9090/$hc/myhc?sb-hc-token=SharedAccessSignature")


def test_token_append_with_a_connection_string(capsys: pytest.CaptureFixture[str]) -> None:
    from urllib.parse import parse_qs, urlsplit

    cs = "Endpoint=sb://ns.example/;SharedAccessKeyName=rule;SharedAccessKey=k;EntityPath=hc"
    for argv, expected in ((["-c", cs], "wss://ns.example/$hc/hc"),
                           (["-c", cs, "--path", "other"], "wss://ns.example/$hc/other"),
                           (["-c", cs.replace("ns.example/", "127.0.0.1:9090/")],
                            "ws://127.0.0.1:9090/$hc/hc")):
        status, out, err = hyco(["token", *argv, "--append"], capsys)
        assert status == 0, err
        uri = out.strip()
        assert uri.startswith(expected + "?"), uri
        query = parse_qs(urlsplit(uri).query)
        assert query["sb-hc-action"] == ["connect"]
        verify_token(query["sb-hc-token"][0], keys={"rule": "k"},
                     target_path="/" + expected.rsplit("/", 1)[1], now=time.time())
    # With a URI, --append appends to that URI, signed with the connection string's rule.
    status, out, _ = hyco(["token", "-c", cs, "--append", "ws://127.0.0.1:9090/$hc/x"], capsys)
    assert status == 0 and out.startswith("ws://127.0.0.1:9090/$hc/x?sb-hc-token=")
    # Namespace-wide, with no entity to name: the error says so.
    status, _, err = hyco(["token", "-c", cs.replace(";EntityPath=hc", ""), "--append"],
                          capsys)
    assert status == 1 and "EntityPath" in err and "--path" in err


def test_token_errors(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = hyco(["token"], capsys)
    assert status == 1 and "hyco token: error: give the URI" in err
    status, _, err = hyco(["token", "-c", "nonsense"], capsys)
    assert status == 1 and "not Key=Value" in err
    with pytest.raises(SystemExit) as exc:
        cli.main(["token", "http://x/y", "--ttl", "soon"])
    assert exc.value.code == 2
    for ttl in ("-5", "0", "inf", "nan"):  # one rule: a lifetime is more than 0 seconds
        with pytest.raises(SystemExit) as exc:
            cli.main(["token", "http://x/y", "--ttl", ttl])
        assert exc.value.code == 2
        assert "argument --ttl: must be more than 0 seconds" in capsys.readouterr().err


def test_status_shows_the_emulators_403_text(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # The DNS rebinding guard's 403 says why and what to do: hyco status passes it on rather
    # than asking whether this is an emulator's address.
    import io
    import urllib.error
    import urllib.request

    why = b'/$status answers by localhost, ... not by "vm:9090" (a guard against DNS rebinding)'

    def refuse(url: str, **_: Any) -> None:
        raise urllib.error.HTTPError(url, 403, "Forbidden", {}, io.BytesIO(why))  # type: ignore[arg-type]

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    status, _, err = hyco(["status", "--url", "http://vm:9090"], capsys)
    assert status == 1
    assert 'cannot read http://vm:9090/$status: 403 /$status answers by localhost' in err
    assert "DNS rebinding" in err and "is this a hyco" not in err


def test_python_m_hyco_proto_version() -> None:
    done = subprocess.run([sys.executable, "-m", "hyco_proto", "--version"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0 and done.stdout.startswith("hyco ")


# -------------------------------------------------------------------------------------------
# hyco emulator


def test_emulator_answers_status_and_stops_cleanly(emulator: Emulator) -> None:
    doc = emulator.status()
    assert doc["status"] == "ok"
    assert doc["counters"]["listeners"] == 0
    with urllib.request.urlopen(f"http://127.0.0.1:{emulator.port}/health", timeout=5) as r:
        assert json.loads(r.read())["status"] == "ok"
    out = "\n".join(emulator.proc.stdout.decode().splitlines())
    # Ready-to-paste connection string and commands.
    match = re.search(r"^  (Endpoint=sb://127\.0\.0\.1:\d+/;\S+)$", out, re.M)
    assert match, out
    cs = parse_connection_string(match.group(1))
    assert cs.port == emulator.port
    assert cs.shared_access_key_name == DEFAULT_RULE_NAME
    assert cs.shared_access_key == DEVELOPMENT_KEY
    assert cs.entity_path == "myhc"
    # No --scheme: for a loopback address on a plain port the CLI picks ws:// by itself.
    assert "hyco listen --connection-string" in out and "--scheme" not in out
    assert f"ws://127.0.0.1:{emulator.port}/$hc/myhc?sb-hc-action=listen" in out
    assert emulator.proc.stop() == 0
    assert "stopping" in emulator.proc.stdout.decode()


def test_status_accepts_the_ws_address_the_emulator_prints(
        emulator: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    for url in (emulator.url, emulator.url + "/", emulator.url.upper().replace("WS://", "Ws://")):
        status, out, err = hyco(["status", "--url", url], capsys)
        assert status == 0, err
        assert json.loads(out)["status"] == "ok"


def test_status_maps_wss_to_https(monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    opened: list[tuple[str, object]] = []

    class Answer:
        def __enter__(self) -> Answer:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def read(self) -> bytes:
            return b'{"status": "ok"}'

    def urlopen(target: str, timeout: float, context: object) -> Answer:
        opened.append((target, context))
        return Answer()

    monkeypatch.setattr(cli.urllib.request, "urlopen", urlopen)
    status, _, err = hyco(["status", "--url", "wss://127.0.0.1:9443", "--insecure"], capsys)
    assert status == 0, err
    assert opened[0][0] == "https://127.0.0.1:9443/$status"
    assert opened[0][1] is not None  # a TLS context, with --insecure's settings
    # A connection string's sb:// endpoint (the banner prints one): the port's usual scheme.
    for endpoint, target in (("sb://127.0.0.1:9090/", "http://127.0.0.1:9090/$status"),
                             ("sb://127.0.0.1:9443", "https://127.0.0.1:9443/$status")):
        status, _, err = hyco(["status", "--url", endpoint, "--insecure"], capsys)
        assert status == 0, err
        assert opened[-1][0] == target


def test_emulator_config_file_and_flags(tmp_path: Path) -> None:
    config = tmp_path / "emu.toml"
    config.write_text('[server]\nstrict = true\n\n[[rules]]\nname = "app"\nkey = "app-key"\n'
                      '\n[hybrid_connections.orders]\n')
    proc = Proc(emulator_args("--config", str(config), "--key", "root-key", "--hc", "extra"))
    try:
        url = proc.wait_line(r"listening on (ws://\S+)").group(1)
        proc.wait_line(r"press Ctrl-C to stop")
        emulator = Emulator(proc, url)
        doc = emulator.status()
        assert doc["strict"] is True
        assert [hc["name"] for hc in doc["hybrid_connections"]] == ["extra", "orders"]
        out = proc.stdout.decode()
        assert "SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=root-key;" \
               "EntityPath=extra" in out
    finally:
        proc.kill()


def test_emulator_server_flags_reach_the_running_service(tmp_path: Path) -> None:
    config = tmp_path / "emu.toml"
    config.write_text("[server]\nauto_expiry = 60\nvalidate_text = true\n")
    proc = Proc(["emulator", "--port", "0", "--config", str(config), "--auto-expiry", "120",
                 "--max-control-message", "64K", "--no-validate-text", "--accept-timeout", "12",
                 "--no-webpubsub"])
    try:
        url = proc.wait_line(r"listening on (ws://\S+)").group(1)
        proc.wait_line(r"press Ctrl-C to stop")
        doc = Emulator(proc, url).status()
        assert (doc["auto_expiry"], doc["max_control_message"], doc["validate_text"],
                doc["accept_timeout"]) == (120.0, 65536, False, 12.0)
    finally:
        proc.kill()


def test_emulator_reports_config_errors(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nprot = 1\n")
    proc = Proc(emulator_args("--config", str(config)))
    assert proc.wait() == 1
    assert any(f"{config}:2: server.prot: unknown key; did you mean 'port'?" in line
               for line in proc.stderr_text), proc.stderr_text


def test_emulator_port_in_use(emulator: Emulator) -> None:
    proc = Proc(emulator_args("--port", str(emulator.port)))
    assert proc.wait() == 1
    assert any("cannot listen on 127.0.0.1:" in line for line in proc.stderr_text)


# -------------------------------------------------------------------------------------------
# hyco listen / hyco send


def test_listen_send_text_both_directions(emulator: Emulator) -> None:
    # Sender -> listener: the sender closes after its stdin (-N); the listener prints and exits.
    listener = Proc(["listen", *emulator.client_args(), "--text", "--no-stdin"])
    try:
        listener.wait_line(r"listening on ws://", stream="stderr")
        sender = Proc(["send", *emulator.client_args(), "--text", "-N"],
                      stdin=b"first line\nsecond \xc3\xa9\n")
        assert sender.wait() == 0, sender.stderr_text
        assert listener.wait() == 0, listener.stderr_text
        assert listener.stdout.decode() == "first line\nsecond é\n"
    finally:
        listener.kill()
    # Listener -> sender, with a connection string.
    cs = (f"Endpoint=sb://127.0.0.1:{emulator.port}/;SharedAccessKeyName={DEFAULT_RULE_NAME};"
          f"SharedAccessKey={DEVELOPMENT_KEY};EntityPath=other")
    listener = Proc(["listen", "-c", cs, "--scheme", "ws", "--text", "-N"], stdin=b"pong\n")
    try:
        listener.wait_line(r"listening on ws://", stream="stderr")
        sender = Proc(["send", "-c", cs, "--scheme", "ws", "--text", "--no-stdin"])
        assert sender.wait() == 0, sender.stderr_text
        assert sender.stdout.decode() == "pong\n"
        assert listener.wait() == 0, listener.stderr_text
    finally:
        listener.kill()
    counters = emulator.status()["counters"]
    assert counters["relayed_pairs"] == 2


def test_send_text_refuses_a_line_that_is_not_utf8(emulator: Emulator) -> None:
    # A text message must be UTF-8: the line is not replaced with U+FFFD behind the user's
    # back; the lines before it are sent, the error names the line, the exit status is 1.
    listener = Proc(["listen", *emulator.client_args("notutf8"), "--text", "--no-stdin"])
    try:
        listener.wait_line(r"listening on ws://", stream="stderr")
        sender = Proc(["send", *emulator.client_args("notutf8"), "--text", "-N"],
                      stdin=b"fine\nbad \xff here\nnever sent\n")
        assert sender.wait() == 1
        errors = "\n".join(sender.stderr_text)
        assert "stdin line 2 is not UTF-8 (byte 5 of the line)" in errors, errors
        assert "leave out --text" in errors and "Traceback" not in errors
        assert listener.wait() == 0, listener.stderr_text
        assert listener.stdout == b"fine\n"
    finally:
        listener.kill()


def test_listen_says_when_it_answers_an_http_request_501(emulator: Emulator) -> None:
    # hyco listen takes WebSockets only; the relay shares a hybrid connection's HTTP requests
    # among its listeners, so a leftover hyco listen makes a hyco http on the same name fail
    # now and then: the 501 is said where it happens, not only to the sender.
    from hyco_proto import create_relay_token
    from hyco_proto.adapters.threads import relayed_request

    listener = Proc(["listen", *emulator.client_args("webonly"), "-K", "--no-stdin"])
    try:
        listener.wait_line(r"listening on ws://", stream="stderr")
        uri = f"http://127.0.0.1:{emulator.port}/webonly/orders?x=1"
        token = create_relay_token(uri, DEFAULT_RULE_NAME, DEVELOPMENT_KEY)
        with relayed_request("GET", uri, token, timeout=10) as response:
            assert response.status == 501
            assert b"WebSocket connections only" in response.read()
        line = listener.wait_line(r"answered 501 to a relayed HTTP request",
                                  stream="stderr").string
        assert "(GET /orders)" in line and "hyco http" in line, line  # no query
    finally:
        listener.kill()


def test_verbose_prints_addresses_as_host_port(emulator: Emulator) -> None:
    listener = Proc(["listen", *emulator.client_args("verbose"), "-v", "--text",
                     "--no-stdin"])
    try:
        listener.wait_line(r"listening on ws://", stream="stderr")
        sender = Proc(["send", *emulator.client_args("verbose"), "-v", "--text", "-N"],
                      stdin=b"hi\n")
        assert sender.wait() == 0, sender.stderr_text
        assert listener.wait() == 0, listener.stderr_text
    finally:
        listener.kill()
    text = "\n".join(listener.stderr_text + sender.stderr_text)
    # The path the sender asked for, not .NET's sb://host/path (which drops the port).
    assert re.search(r"^hyco: connection from 127\.0\.0\.1:\d+ to /verbose$", text, re.M), text
    assert f"hyco: connected to ws://127.0.0.1:{emulator.port}/$hc/verbose" in text, text
    assert "Endpoint(" not in text and "address=" not in text, text
    assert cli.host_port("::1", 5000) == "[::1]:5000"  # what -v uses for the peer
    assert cli.host_port("10.0.0.1", 5000) == "10.0.0.1:5000"


def _wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_sigterm_ends_listen_with_exit_0_after_closing(emulator: Emulator) -> None:
    # Idle: listening, no connection.
    listener = Proc(["listen", *emulator.client_args("term"), "--no-stdin"])
    try:
        listener.wait_line(r"listening on ws://", stream="stderr")
        _wait_for(lambda: emulator.status()["counters"]["listeners"] == 1)
        listener.popen.terminate()
        assert listener.wait(5) == 0, listener.stderr_text
        _wait_for(lambda: emulator.status()["counters"]["listeners"] == 0)
    finally:
        listener.kill()
    # With a relayed connection open: the sender sees a normal close and ends too.
    listener = Proc(["listen", *emulator.client_args("term"), "-v", "--no-stdin"])
    sender = None
    try:
        listener.wait_line(r"listening on ws://", stream="stderr")
        sender = Proc(["send", *emulator.client_args("term"), "--no-stdin"])
        listener.wait_line(r"connection from ", stream="stderr")
        listener.popen.terminate()
        assert listener.wait(5) == 0, listener.stderr_text
        assert sender.wait(5) == 0, sender.stderr_text
        _wait_for(lambda: emulator.status()["counters"]["listeners"] == 0)
    finally:
        listener.kill()
        if sender is not None:
            sender.kill()


def test_listen_send_binary_is_byte_exact(emulator: Emulator) -> None:
    payload = os.urandom(300_000) + b"\x00\r\n\xff"
    listener = Proc(["listen", *emulator.client_args("bin"), "--no-stdin"])
    try:
        listener.wait_line(r"listening on ws://", stream="stderr")
        sender = Proc(["send", *emulator.client_args("bin"), "-N"], stdin=payload)
        assert sender.wait() == 0, sender.stderr_text
        assert listener.wait() == 0, listener.stderr_text
        assert bytes(listener.stdout) == payload
    finally:
        listener.kill()
    assert emulator.status()["counters"]["bytes_relayed"] >= len(payload)


def test_send_with_wrong_key_fails_with_401(emulator: Emulator) -> None:
    sender = Proc(["send", *emulator.client_args(), "--key", "wrong", "--no-stdin"])
    assert sender.wait() == 1
    text = "\n".join(sender.stderr_text)
    assert "hyco send: error: cannot connect" in text and "401" in text
    assert emulator.status()["counters"]["auth_failures"] == 1


def test_listen_with_wrong_key_fails(emulator: Emulator) -> None:
    started = time.monotonic()
    listener = Proc(["listen", *emulator.client_args(), "--key", "wrong", "--no-stdin"])
    assert listener.wait(8) == 1  # at once, not after the open timeout (10 s)
    assert time.monotonic() - started < 8
    text = "\n".join(listener.stderr_text)
    assert f"hyco listen: error: cannot listen at ws://127.0.0.1:{emulator.port}/$hc/myhc: " \
           "relay answered 401" in text, text
    assert "--scheme" not in text, text


def test_listen_to_a_relay_that_never_answers_gives_up_within_its_timeout() -> None:
    import socket
    held: list[socket.socket] = []
    with socket.socket() as server:  # accepts, never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.settimeout(0.2)
        port = server.getsockname()[1]
        started = time.monotonic()
        listener = Proc(["listen", "-n", f"127.0.0.1:{port}", "--path", "myhc", "--no-stdin",
                         "--timeout", "1"])
        try:
            while listener.popen.poll() is None and time.monotonic() - started < 10:
                with contextlib.suppress(TimeoutError):
                    held.append(server.accept()[0])
            assert listener.wait(5) == 1
        finally:
            listener.kill()
            for sock in held:
                sock.close()
    assert time.monotonic() - started < 8
    text = "\n".join(listener.stderr_text)
    assert f"hyco listen: error: cannot listen at ws://127.0.0.1:{port}/$hc/myhc: " in text, text
    assert "within 1 s" in text and "--scheme" not in text, text


def test_listen_and_send_without_a_relay_say_so_once_and_give_no_scheme_hint() -> None:
    port = free_port()  # nothing listens there
    for command in (["listen", "--no-stdin"], ["send", "--no-stdin"]):
        proc = Proc([*command, "-n", f"127.0.0.1:{port}", "--path", "myhc"])
        assert proc.wait() == 1
        text = "\n".join(proc.stderr_text)
        assert text.endswith(f"nothing is listening at 127.0.0.1:{port} (connection refused) "
                             "(is `hyco emulator` running there? give its address with -n "
                             "HOST:PORT, --port or -c)"), text
        assert "--scheme" not in text, text
        assert text.count(f"ws://127.0.0.1:{port}/$hc/myhc") == 1, text


def test_listener_that_loses_its_relay_says_it_cannot_reconnect() -> None:
    relay = Proc(["emulator", "--port", "0", "--no-webpubsub"])
    listener = None
    try:
        port = relay.wait_line(r"listening on ws://127\.0\.0\.1:(\d+)").group(1)
        relay.wait_line(r"press Ctrl-C to stop")
        listener = Proc(["listen", "--port", port, "--path", "myhc", "--no-stdin", "-v"])
        listener.wait_line(r"listening on ws://", stream="stderr")
        assert relay.stop() == 0
        listener.wait_line(rf"^hyco: listener: cannot reconnect: nothing is listening at "
                           rf"127\.0\.0\.1:{port} \(connection refused\)$", stream="stderr")
        listener.popen.terminate()
        assert listener.wait(5) == 0
        text = "\n".join(listener.stderr_text)
        assert "closed the connection with 1006" not in text, text
    finally:
        relay.kill()
        if listener is not None:
            listener.kill()


def test_error_hints_match_the_cause() -> None:
    from hyco_proto.errors import RelayError, relay_error_for_close

    ws = cli._Endpoint("127.0.0.1:9090", "myhc", "ws", "r", "k", None)
    wss = cli._Endpoint("127.0.0.1:9090", "myhc", "wss", "r", "k", None)
    address = "ws://127.0.0.1:9090/$hc/myhc"
    # A status or close code is an answer in the right scheme: no --scheme advice, whatever
    # the relay's description says.
    for ep in (ws, wss):
        for error in (RelayError("relay answered 401: TLS required, closed without answering",
                                 status=401),
                      RelayError("relay answered 404: Endpoint does not exist (TLS)",
                                 status=404),
                      relay_error_for_close(1008, "token expired")):
            message = str(cli._failure("cannot listen at", address, error, ep))
            assert "--scheme" not in message and "ws://)" not in message, message
    # A ws/wss mismatch: one piece of advice, the flag to pass.
    not_tls = ConnectionError("the relay is not speaking TLS on 9090 (use ws://)")
    message = str(cli._failure("cannot connect to", address, not_tls, wss))
    assert message.endswith("the relay is not speaking TLS on 9090 (try --scheme ws)"), message
    # Connection refused is reported as such, not as a close by the relay.
    lost = relay_error_for_close(1006, "nothing is listening at 127.0.0.1:9090 "
                                       "(connection refused)")
    assert cli._listener_error_text(lost) == ("cannot reconnect: nothing is listening at "
                                              "127.0.0.1:9090 (connection refused)")
    assert cli._listener_error_text(relay_error_for_close(1001, "shutting down")) == \
        "relay closed the connection with 1001: shutting down"


# -------------------------------------------------------------------------------------------
# TLS with the development certificate


def test_self_signed_tls_round_trip(tmp_path: Path) -> None:
    proc = Proc(emulator_args("--tls-self-signed", "--state-dir", str(tmp_path)))
    try:
        url = proc.wait_line(r"listening on (wss://\S+)").group(1)
        proc.wait_line(r"press Ctrl-C to stop")
        cert = tmp_path / "devcert" / "cert.pem"
        assert cert.is_file() and (tmp_path / "devcert" / "key.pem").is_file()
        assert f"NODE_EXTRA_CA_CERTS={cert}" in proc.stdout.decode()
        port = url.rsplit(":", 1)[1]
        common = ["--namespace", f"localhost:{port}", "--path", "secure", "--cafile", str(cert)]
        listener = Proc(["listen", *common, "--text", "--no-stdin"])
        try:
            listener.wait_line(r"listening on wss://", stream="stderr")
            sender = Proc(["send", *common, "--text", "-N"], stdin=b"over tls\n")
            assert sender.wait() == 0, sender.stderr_text
            assert listener.wait() == 0, listener.stderr_text
            assert listener.stdout.decode() == "over tls\n"
        finally:
            listener.kill()
        # Without trusting the certificate, verification fails.
        untrusted = Proc(["send", "--namespace", f"localhost:{port}", "--path", "secure",
                          "--scheme", "wss", "--no-stdin"])
        assert untrusted.wait() == 1
        assert "CERTIFICATE_VERIFY_FAILED" in "\n".join(untrusted.stderr_text)
    finally:
        proc.kill()
    # A second start reuses the certificate.
    again = devcert.ensure_dev_cert(tmp_path, run=cli._run_quiet, now=time.time())
    assert not again.created and again.cert == cert


def test_devcert_without_openssl_or_cryptography(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devcert, "_cryptography_available", lambda: False)
    with pytest.raises(devcert.DevCertError, match="pip install cryptography"):
        devcert.ensure_dev_cert(tmp_path, run=None, now=time.time())


def test_tls_cert_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = hyco(["emulator", "--port", "0", "--tls-cert", str(tmp_path / "c.pem"),
                           "--tls-key", str(tmp_path / "k.pem")], capsys)
    assert status == 1 and "TLS certificate file" in err and "does not exist" in err
    status, _, err = hyco(["emulator", "--tls-cert", "x.pem"], capsys)
    assert status == 1 and "--tls-cert and --tls-key go together" in err


# -------------------------------------------------------------------------------------------
# hyco emulator: the [server] settings as flags (parsed in-process, no server started)


def _emulator_settings(*argv: str) -> Any:
    args = cli.build_parser().parse_args(["emulator", *argv])
    return cli._emulator_config(args).service


def test_emulator_flags_for_server_settings_override_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "emu.toml"
    config.write_text("[server]\nauto_expiry = 60\nmax_control_message = 4096\n"
                      "validate_text = false\naccept_timeout = 20\n")
    from_file = _emulator_settings("--config", str(config))
    assert (from_file.auto_expiry, from_file.max_control_message, from_file.validate_text,
            from_file.accept_timeout) == (60.0, 4096, False, 20.0)
    flags = _emulator_settings("--config", str(config), "--auto-expiry", "900",
                               "--max-control-message", "512K", "--validate-text",
                               "--accept-timeout", "5")
    assert (flags.auto_expiry, flags.max_control_message, flags.validate_text,
            flags.accept_timeout) == (900.0, 512 * 1024, True, 5.0)
    assert _emulator_settings("--no-validate-text").validate_text is False
    assert _emulator_settings("--max-control-message", "1M").max_control_message == 1 << 20
    assert _emulator_settings("--max-control-message", "2048").max_control_message == 2048
    defaults = _emulator_settings()
    assert (defaults.auto_expiry, defaults.max_control_message, defaults.validate_text,
            defaults.accept_timeout) == (300.0, 256 * 1024, True, 30.0)


@pytest.mark.parametrize(("argv", "message"), [
    (["--auto-expiry", "0"], "argument --auto-expiry: must be a number of seconds more than 0 "
                             "and at most 31536000, got '0'"),
    (["--auto-expiry", "-1"], "argument --auto-expiry: must be a number of seconds more than 0"),
    (["--auto-expiry", "1e12"], "argument --auto-expiry: must be a number of seconds more than 0"),
    (["--auto-expiry", "nan"], "argument --auto-expiry: must be"),
    (["--auto-expiry", "soon"], "argument --auto-expiry: 'soon' is not a number of seconds"),
    (["--max-control-message", "0"], "argument --max-control-message: must be a size in bytes "
                                     "at least 1024 and at most 67108864, got '0'"),
    (["--max-control-message", "-5"], "argument --max-control-message: '-5' is not a size"),
    (["--max-control-message", "1G"], "argument --max-control-message: '1G' is not a size"),
    (["--max-control-message", "100M"], "argument --max-control-message: must be a size"),
    (["--accept-timeout", "0"], "argument --accept-timeout: must be a number of seconds more "
                                "than 0 and at most 86400"),
    (["--max-listeners", "0"], "argument --max-listeners: must be a number of listeners at "
                               "least 1 and at most 100000, got '0'"),
    (["--token-grace", "inf"], "argument --token-grace: must be a number of seconds at least 0"),
    (["--validate-text=no"], "argument --validate-text"),
])
def test_emulator_flags_refuse_invalid_values_naming_the_flag(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["emulator", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_emulator_help_and_docs_list_the_server_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["emulator", "--help"])
    text = capsys.readouterr().out
    docs = (ROOT / "docs" / "emulator.md").read_text()
    for flag in ("--auto-expiry", "--max-control-message", "--no-validate-text",
                 "--accept-timeout"):
        assert flag in text
        assert f"`{flag}" in docs, f"docs/emulator.md lists {flag}"


# -------------------------------------------------------------------------------------------
# --log-level and the log's format (issue 12 new-user trial)

LEVEL_CHOICES = "(choose from 'DEBUG', 'INFO', 'WARNING', 'ERROR')"


@pytest.mark.parametrize("command", [["emulator"], ["listen"], ["send"],
                                     ["http", "--asgi", "m:app"]])
@pytest.mark.parametrize("value", ["TRACE", "", "10", "verbose"])
def test_log_level_is_a_choice_on_every_command_that_has_it(
        command: list[str], value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args([*command, f"--log-level={value}"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --log-level: invalid choice" in err and LEVEL_CHOICES in err, err


@pytest.mark.parametrize(("value", "level"), [("debug", "DEBUG"), ("Info", "INFO"),
                                              ("WARNING", "WARNING"), ("error", "ERROR")])
def test_log_level_choices_are_case_insensitive(value: str, level: str) -> None:
    for command in (["emulator"], ["send"], ["http", "--asgi", "m:app"]):
        args = cli.build_parser().parse_args([*command, "--log-level", value])
        assert args.log_level == level


def test_log_level_help_and_docs_name_every_level(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["emulator", "--help"])
    assert "{DEBUG,INFO,WARNING,ERROR}" in capsys.readouterr().out
    docs = (ROOT / "docs" / "emulator.md").read_text()
    row = next(line for line in docs.splitlines() if line.startswith("| `--log-level"))
    for level in cli.LOG_LEVELS:
        assert f"`{level}`" in row, row


@pytest.fixture
def restore_logging() -> Iterator[None]:
    import logging

    root, ours = logging.getLogger(), logging.getLogger("hyco_proto")
    saved = (root.level, list(root.handlers), ours.level)
    root.handlers = []
    try:
        yield
    finally:
        root.setLevel(saved[0])
        root.handlers = saved[1]
        ours.setLevel(saved[2])


@pytest.mark.usefixtures("restore_logging")
def test_debug_level_is_set_on_our_loggers_not_the_root_logger() -> None:
    import logging

    cli._setup_logging("DEBUG")
    assert logging.getLogger("hyco_proto.service").isEnabledFor(logging.DEBUG)
    # asyncio's "Using selector: EpollSelector" and other libraries' debug lines stay out.
    assert not logging.getLogger("asyncio").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("asyncio").isEnabledFor(logging.INFO)
    cli._setup_logging("ERROR")
    assert not logging.getLogger("hyco_proto.service").isEnabledFor(logging.WARNING)
    assert logging.getLogger("hyco_proto.service").isEnabledFor(logging.ERROR)


def test_emulator_at_debug_does_not_print_asyncio_lines(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c",
         "import asyncio, logging, sys\n"
         "from hyco_proto import cli\n"
         "cli._setup_logging('DEBUG')\n"
         "asyncio.run(asyncio.sleep(0))\n"
         "logging.getLogger('hyco_proto.service').debug('ours')\n"],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT,
        env={**os.environ, "PYTHONASYNCIODEBUG": ""})
    assert "Using selector" not in proc.stderr, proc.stderr
    assert "hyco_proto.service: ours" in proc.stderr, proc.stderr


def test_json_log_time_is_utc_iso_8601_with_milliseconds() -> None:
    import logging

    record = logging.LogRecord("hyco_proto.service", logging.INFO, __file__, 1, "x", None, None)
    record.created, record.msecs = 1796072530.1234, 123.4  # 2026-11-30T21:02:10.123Z
    doc = json.loads(cli._JsonFormatter().format(record))
    assert doc["time"] == "2026-11-30T21:02:10.123Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["time"])


def test_token_grace_help_and_docs_give_its_range(capsys: pytest.CaptureFixture[str]) -> None:
    from hyco_proto.service.tomlconfig import MAX_TOKEN_GRACE

    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["emulator", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"0 to {int(MAX_TOKEN_GRACE)}" in help_text, help_text
    docs = (ROOT / "docs" / "emulator.md").read_text()
    row = next(line for line in docs.splitlines() if line.startswith("| `--token-grace"))
    assert f"`--token-grace` 0 to {int(MAX_TOKEN_GRACE)} seconds" in row
    assert cli.build_parser().parse_args(
        ["emulator", "--token-grace", str(int(MAX_TOKEN_GRACE))]).token_grace == MAX_TOKEN_GRACE
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["emulator", "--token-grace", str(MAX_TOKEN_GRACE + 1)])


def test_tls_docs_name_the_status_commands_trust_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["status", "--help"])
    help_text = capsys.readouterr().out
    docs = (ROOT / "docs" / "emulator.md").read_text()
    tls = docs[docs.index("## TLS"):docs.index("## Relayed HTTP")]
    for flag in ("--cafile", "--insecure"):
        assert flag in help_text
        assert "hyco status --url https://127.0.0.1:9443 --cafile" in tls and flag in tls
    assert "curl --cacert" in tls


def test_self_signed_banner_commands_work_as_pasted(tmp_path: Path) -> None:
    import shlex
    import shutil

    proc = Proc(["emulator", "--port", "0", "--tls-self-signed", "--state-dir", str(tmp_path),
                 "--no-webpubsub"])
    try:
        proc.wait_line(r"press Ctrl-C to stop")
        cert = tmp_path / "devcert" / "cert.pem"
        banner = proc.stdout.decode().splitlines()
        listen = next(line.strip() for line in banner if line.strip().startswith("hyco listen"))
        send = next(line.strip() for line in banner if line.strip().startswith("echo hello |"))
        curl = next(line.strip() for line in banner if line.strip().startswith("curl "))
        assert f"--cafile {cert}" in listen and f"--cafile {cert}" in send
        assert curl.startswith(f"curl --cacert {cert} ")
        listener = Proc(shlex.split(listen)[1:])
        try:
            listener.wait_line(r"listening on wss://", stream="stderr")
            sender = Proc(shlex.split(send.split("|", 1)[1])[1:], stdin=b"hello\n")
            assert sender.wait() == 0, sender.stderr_text
            assert listener.wait() == 0, listener.stderr_text
            assert listener.stdout == b"hello\n"
        finally:
            listener.kill()
        # ws:// to the wss:// port: one hint, naming the flag.
        port = re.search(r"listening on wss://\S+:(\d+)", proc.stdout.decode()).group(1)
        plain = Proc(["send", "-n", f"127.0.0.1:{port}", "--path", "myhc", "--scheme", "ws",
                      "--no-stdin"])
        assert plain.wait() == 1
        error = "\n".join(plain.stderr_text)
        assert error.count("wss") == 2 and error.count("(") == 1, error
        assert "(is it serving wss://? try --scheme wss)" in error, error
        hyco_bin = Path(sys.executable).parent / "hyco"
        if shutil.which("curl") and hyco_bin.exists():
            # As pasted into a shell: TLS verification passes (no listener: the relay's 404).
            run = subprocess.run(["bash", "-c", curl.replace("curl ", "curl -s -o /dev/null "
                                  "-w '%{http_code}' ", 1)],
                                 capture_output=True, text=True, timeout=TIMEOUT,
                                 env={**os.environ, "PATH": f"{hyco_bin.parent}:"
                                                           f"{os.environ.get('PATH', '')}"})
            assert run.returncode == 0 and run.stdout in ("404", "502"), (run.stdout,
                                                                           run.stderr)
    finally:
        proc.kill()


def test_text_log_lines_start_with_the_utc_time() -> None:
    import logging

    handler = cli._log_handler("text")
    assert handler.formatter is not None
    record = logging.LogRecord("hyco_proto.service", logging.INFO, __file__, 1, "hello", None,
                               None)
    record.created, record.msecs = 1796072530.5, 500.0
    assert handler.formatter.format(record) == (
        "2026-11-30T21:02:10.500Z INFO hyco_proto.service: hello")


def test_emulator_raises_its_open_file_limit() -> None:
    """A soft limit below the hard one is raised (the emulator's max_connections follows it)."""
    code = textwrap.dedent("""
        import resource
        from hyco_proto.cli import raise_open_file_limit
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        print(raise_open_file_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard,
              hard)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, check=True).stdout.split()
    hard = int(out[-1])
    assert out[:3] == ["(256,", f"{hard})", "True"], out


def test_a_closed_stdout_pipe_ends_quietly_like_cat() -> None:
    """`hyco status | head`: when the reader of stdout is gone, hyco stops with 141 (128 +
    SIGPIPE, what a shell shows for such a command) and no traceback on stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: the first write fails with EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "hyco_proto", "token", "http://127.0.0.1:9090/myhc"],
            stdout=write_end, stderr=subprocess.PIPE, timeout=60, check=False)
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr.decode()
    assert done.stderr == b""


def test_a_broken_pipe_that_is_not_stdout_is_an_error(monkeypatch: pytest.MonkeyPatch,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    """EPIPE from a socket (stdout still has its reader) is reported, not swallowed as 141."""
    def broken(args: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "cmd_token", broken)
    assert cli.main(["token", "http://127.0.0.1:9090/myhc"]) == 1
    assert capfd.readouterr().err == "hyco token: error: [Errno 32] Broken pipe\n"


def test_status_of_a_dead_address_says_why_and_what_to_do(
        capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens there
    assert cli.main(["status", "--url", f"ws://127.0.0.1:{port}"]) == 1
    assert capsys.readouterr().err == (
        f"hyco status: error: cannot read http://127.0.0.1:{port}/$status: nothing is "
        f"listening at 127.0.0.1:{port} (connection refused) (is `hyco emulator` running "
        "there? pass its address with --url)\n")


@pytest.mark.parametrize("flags,advice", [
    (["--key", "wrong"], "(the key does not match rule RootManageSharedAccessKey: check --key "
                         "or the connection string's SharedAccessKey)"),
    (["--rule", "nobody"], "(the relay has no rule named nobody: check --rule or "
                           "SharedAccessKeyName)"),
])
def test_a_refused_token_says_what_to_check(emulator: Emulator, flags: list[str],
                                            advice: str) -> None:
    for command in (["send", "--no-stdin"], ["listen", "--no-stdin"]):
        proc = Proc([*command, *emulator.client_args("keys"), *flags])
        assert proc.wait() == 1
        [line] = proc.stderr_text
        assert "relay answered 401" in line and line.endswith(advice), line


def test_the_banners_try_it_commands_work_as_pasted(emulator: Emulator, tmp_path: Path) -> None:
    """The two commands under "try it" in the banner, run by a shell exactly as printed (with
    `hyco` on PATH as after `pip install`): the listener prints what the sender sent, and both
    end by themselves."""
    out = emulator.proc.stdout.decode()
    listen = re.search(r"^  (hyco listen .+)$", out, re.M)
    send = re.search(r"^  (echo hello \| hyco send .+)$", out, re.M)
    assert listen and send, out
    (tmp_path / "hyco").write_text(f"#!/bin/sh\nexec {sys.executable} -m hyco_proto \"$@\"\n")
    (tmp_path / "hyco").chmod(0o755)
    env = {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    listener = Proc([listen.group(1)], program=["bash", "-c"], env=env)
    try:
        listener.wait_line(r"listening on ws://127\.0\.0\.1:\d+/\$hc/myhc", stream="stderr")
        sender = Proc([send.group(1)], program=["bash", "-c"], env=env)
        assert sender.wait() == 0, sender.stderr_text
        assert listener.wait() == 0, listener.stderr_text
    finally:
        listener.kill()
    assert listener.stdout == b"hello\n"


@pytest.mark.parametrize("name", ["a b", "", "x,y"])
def test_a_bad_subprotocol_is_a_usage_error_not_a_traceback(
        name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["send", "--path", "x", "--subprotocol", name])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --subprotocol: {name!r} is not a valid subprotocol name" in err, err
