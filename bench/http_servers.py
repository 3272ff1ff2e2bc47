"""HTTP servers compared by ``bench/test_bench_http.py``: one app, served directly and through the
relay, each setup in its own processes.

``python -m bench.http_servers LABEL [--port N]`` prints ``PORT <n>`` once requests can be sent
to ``http://127.0.0.1:<n>/bench/...`` and serves until its stdin closes (the parent went away).
The app has three routes, the same in every setup: ``GET …/small`` → ``ok``; ``POST …/upload`` →
the body's length (the body is read and dropped); ``GET …/download`` → 8 MiB
(``Content-Length`` set).

- ``uvicorn``: uvicorn (its defaults: h11, one worker) serving the raw ASGI app directly — the
  no-relay reference.
- ``relay+hyco_proto``: our relay (``RelayServiceServer``) in this process, and in a second process
  our asyncio ``RelayedServer`` answering with a plain ``request_handler``.
- ``relay+asgi``: the relay, and the same ASGI app as uvicorn served through it by
  ``hyco_proto.adapters.asgi.serve``.
- ``relay+hyco-https``: the relay, and Microsoft's ``hyco-https`` listener (Node) with the same
  routes (``bench/hycohttps_bench.js``).

Through the relay every request takes two more hops (sender → relay → listener and back);
small requests travel on the listener's control channel, 8 MiB bodies on a rendezvous.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.relays._common import HOST, announce, prepare_process

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "tests" / "interop" / "node"
HC = "bench"
DOWNLOAD = 8 << 20
LABELS = ("uvicorn", "relay+hyco_proto", "relay+asgi", "relay+hyco-https")
_PAYLOAD = b"\x5a" * DOWNLOAD


# ------------------------------------------------------------------------------ the app


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The benchmark app as raw ASGI 3 (no framework: the servers are measured, not a router)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    if path.endswith("/upload"):
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = str(size).encode()
    elif path.endswith("/download"):
        body = _PAYLOAD
    else:
        body = b"ok"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------ processes


def _token(uri: str) -> str:
    from hyco_proto.sas import create_relay_token
    from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY

    return create_relay_token(uri, DEFAULT_RULE_NAME, DEVELOPMENT_KEY, 24 * 3600)


async def _serve_uvicorn(port: int) -> None:
    import uvicorn

    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say TCP; a plain
    # socket.socket() (proto 0) would leave Nagle on and cost uvicorn ~40 ms per response.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, port))
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    announce(sock.getsockname()[1])
    await task


def _listener_command(label: str, relay_port: int) -> list[str]:
    url = f"ws://{HOST}:{relay_port}/$hc/{HC}?sb-hc-action=listen"
    if label == "relay+hyco-https":
        node = shutil.which("node")
        if node is None:
            raise SystemExit("node is not installed (make test installs the Node peers)")
        return [node, str(ROOT / "bench" / "hycohttps_bench.js"), url]
    return [sys.executable, "-m", "bench.http_servers", "--listener", label, "--relay", url]


async def _serve_relay(label: str, port: int) -> None:
    from hyco_proto.adapters.asyncio import RelayServiceServer

    async with RelayServiceServer(host=HOST, port=port) as server:
        env = dict(os.environ, NODE_PATH=str(NODE_DIR / "node_modules"), PYTHONUNBUFFERED="1")
        listener = subprocess.Popen(_listener_command(label, server.port), cwd=ROOT, env=env,
                                    stdin=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 20.0
            while server.service.broker.listener_count(HC) == 0:
                if listener.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{label}: the listener did not connect")
                await asyncio.sleep(0.02)
            announce(server.port)
            await asyncio.Event().wait()
        finally:
            listener.kill()
            listener.wait(5)


async def _hyco_handler(request: Any) -> Any:
    from hyco_proto.adapters.asyncio import Response

    path: str = request.path
    if path.endswith("/upload"):
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return Response(200, [("Content-Type", "application/octet-stream")], str(size).encode())
    if path.endswith("/download"):
        return Response(200, [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(DOWNLOAD))], _PAYLOAD)
    return Response(200, [("Content-Type", "application/octet-stream")], b"ok")


async def _run_listener(label: str, url: str) -> None:
    token = _token(url.split("?", 1)[0])
    if label == "relay+asgi":
        from hyco_proto.adapters import asgi

        await asgi.serve(app, url, token)
        return
    from hyco_proto.adapters.asyncio import RelayedServer

    server = RelayedServer(url, token, request_handler=_hyco_handler)
    await server.start()
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("label", nargs="?", choices=LABELS)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--listener", choices=LABELS, help=argparse.SUPPRESS)
    parser.add_argument("--relay", help=argparse.SUPPRESS)
    args = parser.parse_args()
    prepare_process()
    if args.listener:
        asyncio.run(_run_listener(args.listener, args.relay))
    elif args.label == "uvicorn":
        asyncio.run(_serve_uvicorn(args.port))
    elif args.label:
        asyncio.run(_serve_relay(args.label, args.port))
    else:
        parser.error("give a LABEL")


if __name__ == "__main__":
    main()
