"""Echo servers compared by ``bench/test_bench_echo.py``, each run as its own process.

``python -m bench.echo_servers NAME [--port N]`` binds 127.0.0.1 (port 0: any free port), prints
``PORT <n>`` and echoes every message back on every WebSocket connection (any path) until killed or
until its stdin closes (the parent went away). Every server is written the way its library is
meant to be used, with its defaults, except: no compression (the client offers none anyway), no
message size limit, no keepalive pings where the library has an option for it.

- ``raw-tcp``: no WebSocket at all; bytes back as they come (one thread, blocking reads,
  non-blocking writes buffered in user space so a 1 MiB message can never deadlock). It measures
  the client's own ceiling.
- ``websockets-asyncio``, ``websockets-sync`` (``serve_forever`` in the main thread, the
  handler in websockets' own thread per connection), ``aiohttp`` (``web.WebSocketResponse``),
  ``picows`` (frame-level echo, its default transport: aiofastnet when installed).
- ``hyco-asyncio``, ``hyco-threads``, ``hyco-gevent``: ``serve(handler, host, port)`` of our
  adapters. gevent's runs alone in its process; nothing is monkey-patched.
- ``picows+uvloop``, ``hyco-asyncio+uvloop``: the same two servers run by ``uvloop.run`` (when
  uvloop is installed: ``UVLOOP_SERVERS``).

``python -m bench.echo_servers --probe`` prints, as JSON, which of our adapters expose ``serve``
(``null``) or why not; ``probe()`` runs it in a subprocess so the client process never imports
gevent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import importlib.util
import json
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from bench.relays._common import HOST, announce, prepare_process

ROOT = Path(__file__).resolve().parent.parent
RECV = 1 << 20

#: The client's ceiling: a trivial TCP echo (not a WebSocket server).
CEILING = "raw-tcp"
PEERS = ("picows", "websockets-asyncio", "websockets-sync", "aiohttp")
#: Our adapters, by label: each module must expose ``serve(handler, host, port)``.
OURS = {
    "hyco-asyncio": "hyco_proto.adapters.asyncio",
    "hyco-threads": "hyco_proto.adapters.threads",
    "hyco-gevent": "hyco_proto.adapters.gevent",
}
#: Servers on uvloop's event loop, measured when uvloop is installed.
UVLOOP_SERVERS = (("picows+uvloop", "hyco-asyncio+uvloop")
                  if importlib.util.find_spec("uvloop") is not None else ())


def _run(main: Coroutine[Any, Any, None], *, uvloop: bool) -> None:
    """``asyncio.run(main)``, or ``uvloop.run(main)``: what a user of either loop writes."""
    if uvloop:
        import uvloop as uvloop_module

        uvloop_module.run(main)
    else:
        asyncio.run(main)


# ------------------------------------------------------------------------------ raw TCP


def _raw_echo(conn: socket.socket) -> None:
    with conn, contextlib.suppress(OSError):  # a reset by the client ends it like EOF
        _raw_pump(conn)


def _raw_pump(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(RECV)
    view = memoryview(buf)
    pending = bytearray()
    dontwait = socket.MSG_DONTWAIT
    while True:
        if not pending:  # nothing owed: block on the read, answer at once
            n = conn.recv_into(buf)
            if not n:
                return
            try:
                sent = conn.send(view[:n], dontwait)
            except BlockingIOError:
                sent = 0
            if sent < n:
                pending += view[sent:n]
            continue
        readable, writable, _ = select.select([conn], [conn], [])
        if writable:
            with contextlib.suppress(BlockingIOError):
                del pending[: conn.send(pending, dontwait)]
        if readable:
            try:
                n = conn.recv_into(buf, 0, dontwait)
            except BlockingIOError:
                continue
            if not n:
                return
            pending += view[:n]


def raw_tcp(port: int) -> None:
    with socket.create_server((HOST, port)) as server:
        announce(server.getsockname()[1])
        while True:
            conn, _ = server.accept()
            threading.Thread(target=_raw_echo, args=(conn,), daemon=True).start()


# ------------------------------------------------------------------------------ peers


def websockets_asyncio(port: int) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        async with serve(echo, HOST, port, compression=None, max_size=None,
                         ping_interval=None) as server:
            announce(server.sockets[0].getsockname()[1])
            await server.serve_forever()

    asyncio.run(main())


def websockets_sync(port: int) -> None:
    from websockets.sync.server import ServerConnection, serve

    def echo(ws: ServerConnection) -> None:
        for message in ws:
            ws.send(message)

    with serve(echo, HOST, port, compression=None, max_size=None,
               ping_interval=None) as server:
        announce(server.socket.getsockname()[1])
        server.serve_forever()


def aiohttp_server(port: int) -> None:
    from aiohttp import WSMsgType, web

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0, compress=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, HOST, port)
        await site.start()
        announce(runner.addresses[0][1])
        await asyncio.Event().wait()

    asyncio.run(main())


def picows_server(port: int, uvloop: bool = False) -> None:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

    class Echo(WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            elif frame.msg_type not in (WSMsgType.PING, WSMsgType.PONG):
                transport.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)

    async def main() -> None:
        server = await ws_create_server(lambda _request: Echo(), HOST, port,
                                        max_frame_size=64 * 1024 * 1024)
        announce(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    _run(main(), uvloop=uvloop)


# ------------------------------------------------------------------------------ ours


def _serve_kwargs(serve: Callable[..., Any]) -> dict[str, Any]:
    """No message size limit, whatever the adapter's default (if it has the option)."""
    import inspect

    try:
        params = inspect.signature(serve).parameters
    except (TypeError, ValueError):
        return {}
    return {"max_message_size": None} if "max_message_size" in params else {}


def hyco_asyncio(port: int, uvloop: bool = False) -> None:
    mod = importlib.import_module(OURS["hyco-asyncio"])

    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        async with mod.serve(echo, HOST, port, **_serve_kwargs(mod.serve)) as server:
            bound = getattr(server, "port", None) or server.sockets[0].getsockname()[1]
            announce(bound)
            await asyncio.Event().wait()

    _run(main(), uvloop=uvloop)


def _hyco_blocking(label: str, port: int) -> None:
    mod = importlib.import_module(OURS[label])

    def echo(ws: Any) -> None:
        for message in ws:
            ws.send(message)

    with mod.serve(echo, HOST, port, **_serve_kwargs(mod.serve)) as server:
        announce(server.port)
        server.serve_forever()


SERVERS: dict[str, Callable[[int], None]] = {
    CEILING: raw_tcp,
    "picows": picows_server,
    "websockets-asyncio": websockets_asyncio,
    "websockets-sync": websockets_sync,
    "aiohttp": aiohttp_server,
    "hyco-asyncio": hyco_asyncio,
    "hyco-threads": functools.partial(_hyco_blocking, "hyco-threads"),
    "hyco-gevent": functools.partial(_hyco_blocking, "hyco-gevent"),
    "picows+uvloop": functools.partial(picows_server, uvloop=True),
    "hyco-asyncio+uvloop": functools.partial(hyco_asyncio, uvloop=True),
}


# ------------------------------------------------------------------------------ probe


def _probe_here() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for label, module in OURS.items():
        try:
            mod = importlib.import_module(module)
        except Exception as exc:
            found[label] = f"{module} does not import ({type(exc).__name__}: {exc})"
            continue
        found[label] = None if callable(getattr(mod, "serve", None)) else f"{module} has no serve"
    return found


_probed: dict[str, str | None] | None = None


def probe() -> dict[str, str | None]:
    """Which of our adapters can be benchmarked: label → None, or the reason it is absent.
    Runs once, in a subprocess (the client process stays free of gevent and of the adapters)."""
    global _probed
    if _probed is None:
        out = subprocess.run([sys.executable, "-m", "bench.echo_servers", "--probe"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=True).stdout
        _probed = json.loads(out.strip().splitlines()[-1])
    return _probed


def probed() -> dict[str, str | None] | None:
    """The probe's answer if it has run in this process (the echo benchmarks were collected)."""
    return _probed


def main() -> None:
    parser = argparse.ArgumentParser(description="One echo server on 127.0.0.1.")
    parser.add_argument("server", nargs="?", choices=list(SERVERS))
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: any)")
    parser.add_argument("--probe", action="store_true", help="which of our adapters have serve")
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(_probe_here()), flush=True)
        return
    if args.server is None:
        parser.error("name a server or pass --probe")
    prepare_process()
    SERVERS[args.server](args.port)


if __name__ == "__main__":
    main()
