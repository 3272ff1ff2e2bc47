"""Microsoft's hyco-ws@1.0.5 paired with our asyncio clients, through our relay service.

* hyco-ws listener (``node/hycows_peer.js`` in ``listen`` mode: an echo server) + our sender
  (``relayed_connect``);
* our listener (``RelayedServer`` / ``create_relayed_server``) + a hyco-ws sender.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Iterator
from typing import Any

import pytest

from hyco_proto.adapters.asyncio import (
    Accept,
    Reject,
    RelayedServer,
    RelayedWebSocket,
    create_relayed_server,
    relayed_connect,
)
from hyco_proto.listener import ConnectionRequested
from hyco_proto.sas import create_relay_token
from tests.interop import KEY, KEY_NAME, TIMEOUT, NodePeer, ThreadedEmulator, listen_uri, send_uri

pytestmark = pytest.mark.node


@pytest.fixture
def emulator() -> Iterator[ThreadedEmulator]:
    with ThreadedEmulator() as emu:
        yield emu


@pytest.fixture
def hycows_listener(emulator: ThreadedEmulator) -> Iterator[NodePeer]:
    with NodePeer({"mode": "listen", "listenUri": listen_uri(emulator)}) as peer:
        peer.wait_event("listening")
        yield peer
        peer.stop()


def token(uri: str) -> str:
    return create_relay_token(uri, KEY_NAME, KEY)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


# -------------------------------------------------------------------------------------------
# hyco-ws listener + our sender


@pytest.mark.parametrize("in_query", [False, True], ids=["token-header", "token-query"])
def test_our_sender_to_hycows_listener(emulator: ThreadedEmulator, hycows_listener: NodePeer,
                                       in_query: bool) -> None:
    uri = send_uri(emulator, "myhc/a/b", "q=1&r=two")
    blob = os.urandom(100_000)

    async def main() -> list[str | bytes]:
        ws = await relayed_connect(uri, token(uri), subprotocols=["chat.v2", "chat.v1"],
                                   headers={"X-App": "python"}, token_in_query=in_query)
        try:
            assert ws.subprotocol == "chat.v2"
            await ws.send("hello")
            await ws.send(blob)
            return [await ws.recv(), await ws.recv()]
        finally:
            await ws.close()

    replies = run(main())
    assert replies == ["echo:hello", blob]
    connection = hycows_listener.wait_event("connection")
    assert "/$hc/myhc/a/b?q=1&r=two&sb-hc-action=accept" in connection["url"]
    assert hycows_listener.wait_event("rendezvous-open")["protocol"] == "chat.v2"
    assert hycows_listener.wait_event("listener-message")["text"] == "hello"
    binary = hycows_listener.wait_event("listener-message")
    assert base64.b64decode(binary["binary"]) == blob
    closed = hycows_listener.wait_event("listener-close")
    assert closed["code"] == 1000


def test_our_sender_sees_hycows_listener_close(emulator: ThreadedEmulator,
                                               hycows_listener: NodePeer) -> None:
    uri = send_uri(emulator)

    async def main() -> tuple[int | None, str | None]:
        ws = await relayed_connect(uri, token(uri))
        await ws.send("one")
        assert await ws.recv() == "echo:one"
        hycows_listener.stop()  # the Node listener closes its sockets
        with pytest.raises(Exception):  # noqa: B017 - any close is fine here
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        await ws.wait_closed()
        return ws.close_code, ws.close_reason

    code, _ = run(main())
    assert code in (1000, 1001, 1005, 1006)


# -------------------------------------------------------------------------------------------
# our listener + hyco-ws sender


def test_hycows_sender_to_our_listener(emulator: ThreadedEmulator) -> None:
    listen = listen_uri(emulator)
    uri = send_uri(emulator, "myhc/x/y", "app=1")
    requests: list[ConnectionRequested] = []

    def decide(request: ConnectionRequested) -> Accept:
        requests.append(request)
        return Accept(subprotocol="proto-b")

    async def main() -> tuple[RelayedWebSocket, list[str | bytes], dict[str, Any]]:
        async with RelayedServer(listen, lambda: token(listen), headers=decide) as server:
            blob = base64.b64encode(b"\x00\xff").decode()
            peer = NodePeer({"mode": "send", "sendUri": uri, "protocols": ["proto-a", "proto-b"],
                             "headers": {"X-Custom": "from-node"},
                             "messages": ["ping", {"binary": blob}], "expect": 2})
            try:
                ws = await server.accept()
                received = [await ws.recv(), await ws.recv()]
                await ws.send("pong")
                await ws.send(b"\x01\x02")
                await ws.wait_closed()
                await asyncio.get_running_loop().run_in_executor(None, peer.finish)
            finally:
                peer.kill()
            return ws, received, {"events": peer.events}

    ws, received, info = run(main())
    assert received == ["ping", b"\x00\xff"]
    events = info["events"]
    assert [e.get("text", e.get("binary")) for e in events if e["event"] == "message"] == \
        ["pong", base64.b64encode(b"\x01\x02").decode()]
    opened = [e for e in events if e["event"] == "open"]
    assert opened and opened[0]["protocol"] == "proto-b"
    assert next(e for e in events if e["event"] == "close")["code"] == 1000
    assert ws.close_code == 1000
    # What the listener saw of the hyco-ws sender's request (§1.5, §3.1).
    headers = {k.lower(): v for k, v in ws.connect_headers.items()}
    assert headers["x-custom"] == "from-node"
    assert "sec-websocket-key" in headers and headers["sec-websocket-version"] == "13"
    assert "servicebusauthorization" not in headers
    assert ws.path == "/myhc/x/y?app=1"
    assert ws.subprotocol == "proto-b"
    assert requests and list(requests[0].command.requested_subprotocols) == ["proto-a", "proto-b"]


def test_hycows_sender_token_in_query_to_create_relayed_server(
        emulator: ThreadedEmulator) -> None:
    listen = listen_uri(emulator, "qhc")
    uri = send_uri(emulator, "qhc")
    got: asyncio.Queue[str | bytes] = asyncio.Queue()

    async def on_connection(ws: RelayedWebSocket) -> None:
        async for message in ws:
            await got.put(message)
            await ws.send(f"ack:{message}")

    async def main() -> list[dict[str, Any]]:
        server = create_relayed_server({"server": listen, "token": lambda: token(listen)},
                                       on_connection)
        async with server:
            peer = NodePeer({"mode": "send", "sendUri": uri, "tokenIn": "query",
                             "messages": ["a", "b"], "expect": 2})
            try:
                await asyncio.get_running_loop().run_in_executor(None, peer.finish)
            finally:
                peer.kill()
            assert [await got.get(), await got.get()] == ["a", "b"]
            return peer.events

    events = run(main())
    assert [e["text"] for e in events if e["event"] == "message"] == ["ack:a", "ack:b"]


def test_our_listener_rejects_hycows_sender(emulator: ThreadedEmulator) -> None:
    """hyco-ws cannot reject (§5.6.2) but its sender sees our listener's rejection status."""
    listen = listen_uri(emulator, "rej")

    async def main() -> list[dict[str, Any]]:
        async with RelayedServer(listen, lambda: token(listen),
                                 headers=lambda request: Reject(403, "Not today")):
            peer = NodePeer({"mode": "send", "sendUri": send_uri(emulator, "rej"),
                             "messages": ["never"]})
            try:
                await asyncio.get_running_loop().run_in_executor(None, peer.finish)
            finally:
                peer.kill()
            return peer.events

    events = run(main())
    errors = [e for e in events if e["event"] == "error"]
    assert errors and "unexpected server response (403)" in errors[0]["message"]
    assert not [e for e in events if e["event"] == "open"]
    assert emulator.status()["counters"]["rejects"] == 1
