"""``hyco emulator`` serves Web PubSub hubs on a port of its own and prints the connection string
the official SDKs take; the port, key and event handlers come from flags or the config file."""

from __future__ import annotations

import contextlib
import queue
import re
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.messaging.webpubsubclient import WebPubSubClient, WebPubSubClientCredential
from azure.messaging.webpubsubclient.models import CallbackType, WebPubSubDataType
from azure.messaging.webpubsubservice import WebPubSubServiceClient

from tests.procutil import Proc, free_port

WAIT = 15.0
CS = r"(Endpoint=http://127\.0\.0\.1:(\d+);AccessKey=(\S+);Version=1\.0;)"


@contextlib.contextmanager
def emulator(*args: str) -> Iterator[tuple[Proc, str]]:
    proc = Proc(["emulator", "--port", "0", *args])
    try:
        connection_string = proc.wait_line(CS).group(1)
        proc.wait_line(r"press Ctrl-C to stop")
        yield proc, connection_string
    finally:
        proc.kill()


def test_emulator_prints_a_connection_string_the_official_sdks_use() -> None:
    port = free_port()
    key = "my-own-key-of-at-least-thirty-two-bytes"
    with emulator("--webpubsub-port", str(port), "--key", key) as (proc, cs):
        assert cs == f"Endpoint=http://127.0.0.1:{port};AccessKey={key};Version=1.0;"
        service = WebPubSubServiceClient.from_connection_string(cs, hub="Chat")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5) as r:
            assert r.status == 200
        received: queue.Queue[Any] = queue.Queue()
        client = WebPubSubClient(WebPubSubClientCredential(lambda: str(
            service.get_client_access_token(user_id="ann", roles=[
                "webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"])["url"])))
        client.subscribe(CallbackType.GROUP_MESSAGE, received.put)
        client.subscribe(CallbackType.SERVER_MESSAGE, received.put)
        with client:
            client.join_group("room")
            client.send_to_group("room", {"n": 1}, WebPubSubDataType.JSON)
            assert received.get(timeout=WAIT).data == {"n": 1}
            service.send_to_all("from the REST API", content_type="text/plain")
            assert received.get(timeout=WAIT).data == "from the REST API"
        # The relay still serves its own port.
        relay = proc.stdout.decode()
        assert re.search(r"listening on ws://127\.0\.0\.1:\d+", relay)
        assert proc.stop() == 0


def test_default_port_taken_falls_back_to_a_free_one_and_says_so() -> None:
    # 8080 is a fixed port: another test run or program may hold it, and let it go at any time.
    # While this test holds it, the emulator must fall back. When someone else held it but let
    # it go before the emulator bound, the emulator rightly took 8080: that is not the case
    # under test, so try again (a few times, each bounded).
    for _ in range(3):
        with socket.socket() as holder:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past a TIME_WAIT
            try:
                holder.bind(("127.0.0.1", 8080))
                holder.listen()
                held = True
            except OSError:
                held = False  # something else holds 8080: the emulator must fall back the same
            with emulator() as (proc, cs):
                port = int(re.search(r":(\d+);", cs).group(1))  # type: ignore[union-attr]
                if port == 8080 and not held:
                    continue
                assert port != 8080
                assert "port 8080 is taken" in proc.stdout.decode()
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health",
                                            timeout=5) as r:
                    assert r.status == 200
                return
    pytest.fail("port 8080 changed hands three times while the test ran: fallback not tested")


def test_an_explicit_port_in_use_is_an_error_naming_it() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = Proc(["emulator", "--port", "0", "--webpubsub-port", str(port)])
        assert proc.wait() == 1
    err = "\n".join(proc.stderr_text)
    assert f"cannot listen on 127.0.0.1:{port} (Web PubSub port)" in err
    assert "--webpubsub-port" in err


def test_no_webpubsub_serves_the_relay_only() -> None:
    proc = Proc(["emulator", "--port", "0", "--no-webpubsub"])
    try:
        proc.wait_line(r"press Ctrl-C to stop")
        assert "Web PubSub" not in proc.stdout.decode()
    finally:
        proc.kill()


def test_config_file_sets_port_key_and_event_handlers(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "emulator.toml"
    config.write_text(f"""
[webpubsub]
port = {port}
access_key = "key-from-config"

[[webpubsub.hubs.Chat.event_handlers]]
url_template = "http://127.0.0.1:9/{{event}}"
system_events = ["connected"]
user_events = "echo"
""")
    with emulator("--config", str(config)) as (proc, cs):
        assert cs == f"Endpoint=http://127.0.0.1:{port};AccessKey=key-from-config;Version=1.0;"
        out = proc.stdout.decode()
        assert "hub chat: events (connected, user events echo) → http://127.0.0.1:9/{event}" \
            in out


def test_bad_event_handler_flag_says_what_to_write() -> None:
    proc = Proc(["emulator", "--port", "0", "--event-handler", "http://no-hub"])
    assert proc.wait() == 1
    assert any("expected HUB=URL" in line for line in proc.stderr_text)
    proc = Proc(["emulator", "--port", "0", "--event-handler", "chat=ftp://x/y"])
    assert proc.wait() == 1
    assert any("not an http:// or https://" in line for line in proc.stderr_text)


def test_bad_event_handler_in_config_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[[webpubsub.hubs.chat.event_handlers]]\n'
                      'url_template = "http://h/x"\nsystem_events = ["conect"]\n')
    proc = Proc(["emulator", "--port", "0", "--config", str(config)])
    assert proc.wait() == 1
    err = "\n".join(proc.stderr_text)
    assert "webpubsub.hubs.chat.event_handlers[0]" in err and "conect" in err


def test_flag_mistakes_are_errors_that_say_what_to_do() -> None:
    cases = [
        (["--no-webpubsub", "--event-handler", "chat=http://h/x"],
         "--no-webpubsub turns the Web PubSub hubs off, but --event-handler configures them"),
        (["--event-handler", "bad hub=http://h/x"], "invalid hub name 'bad hub'"),
        (["--port", "9191", "--webpubsub-port", "9191"],
         "the relay and the Web PubSub hubs cannot share port 9191"),
    ]
    for args, message in cases:
        proc = Proc(["emulator", *args])
        assert proc.wait() == 1, args
        assert any(message in line for line in proc.stderr_text), (args, proc.stderr_text)


def test_event_handler_flag_replaces_the_files_handlers_of_that_hub(tmp_path: Path) -> None:
    config = tmp_path / "both.toml"
    config.write_text('[[webpubsub.hubs.chat.event_handlers]]\n'
                      'url_template = "http://127.0.0.1:9/fromtoml"\n'
                      '[[webpubsub.hubs.other.event_handlers]]\n'
                      'url_template = "http://127.0.0.1:9/other"\n')
    with emulator("--config", str(config), "--webpubsub-port", "0",
                  "--event-handler", "chat=http://127.0.0.1:9/flag") as (proc, _):
        out = proc.stdout.decode()
    assert "hub chat: events (connect, connected, disconnected, user events *) → " \
        "http://127.0.0.1:9/flag" in out
    assert "fromtoml" not in out and "hub other:" in out


def test_a_send_only_rule_never_becomes_the_web_pubsub_key(tmp_path: Path) -> None:
    config = tmp_path / "senders.toml"
    config.write_text('[[rules]]\nname = "senders"\nkey = "change-me-send"\n'
                      'rights = ["Send"]\n')
    with emulator("--config", str(config), "--webpubsub-port", "0") as (proc, cs):
        assert "AccessKey=change-me-send" not in cs
        assert "AccessKey is the development key" in proc.stdout.decode()
