"""Web PubSub servers compared by ``bench/test_bench_webpubsub.py``, each in its own process.

``python -m bench.wps_servers LABEL [--port N]`` prints ``PORT <n>`` once clients can connect to
``ws://127.0.0.1:<n>/client/hubs/bench?access_token=…`` and serves until its stdin closes.

- ``hyco_proto``: our emulator's hub route — ``RelayServiceServer(RelayService(ServiceConfig(),
  webpubsub=WebPubSubService(KEY)), routes="webpubsub")``, the sans-IO ``Hub`` behind it.
- ``websockets``: a minimal group fan-out written with the ``websockets`` library (asyncio), for
  context only: it checks the same access token at connect (our ``verify_client_token``), sends
  the same ``connected`` message, and for a ``sendToGroup`` frame does ``json.loads``, one
  ``json.dumps`` of the group message (the same JSON our hub sends a client without a user
  id... or with one) and ``websockets.broadcast`` to the group, plus the ``ack`` when an
  ``ackId`` is given. It has none of the rest of the protocol (no permissions beyond the
  ``sendToGroup`` role, no join/leave, no reliable subprotocol, no duplicate-ack check), so it
  is a floor for what a Python fan-out costs, not a peer emulator. Microsoft's own emulator
  (``awps-emulator``) is a .NET tool from NuGet: not installable from the registries reachable
  here, so it is not compared.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from typing import Any

from bench.relays._common import HOST, announce, prepare_process

#: The official emulator's documented access key (also what the benchmark signs tokens with).
KEY = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH"
HUB = "bench"
LABELS = ("hyco_proto", "websockets")
SUBPROTOCOL = "json.webpubsub.azure.v1"


async def _serve_hyco(port: int) -> None:
    from hyco_proto.adapters.asyncio import RelayServiceServer
    from hyco_proto.service.config import ServiceConfig
    from hyco_proto.service.router import RelayService
    from hyco_proto.service.webpubsub import WebPubSubService

    service = RelayService(ServiceConfig(), webpubsub=WebPubSubService(KEY))
    async with RelayServiceServer(service, host=HOST, port=port, routes="webpubsub") as server:
        announce(server.port)
        await asyncio.Event().wait()


async def _serve_websockets(port: int) -> None:
    from websockets.asyncio.connection import broadcast
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.http11 import Request, Response

    from hyco_proto.webpubsub.endpoints import parse_client_url
    from hyco_proto.webpubsub.tokens import WebPubSubTokenError, verify_client_token

    groups: dict[str, set[ServerConnection]] = {}
    ids = itertools.count(1)
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

    def check(conn: ServerConnection, request: Request) -> Response | None:
        try:
            url = parse_client_url(request.path)
            host = request.headers.get("Host", "localhost")
            claims = verify_client_token(url.access_token or "", key=KEY,
                                         endpoint=f"http://{host}", hub=url.hub, now=time.time())
        except (ValueError, WebPubSubTokenError) as exc:
            return conn.respond(401, f"Unauthorized: {exc}\n")
        conn.claims = claims  # type: ignore[attr-defined]
        return None

    async def handler(conn: ServerConnection) -> None:
        claims: Any = conn.claims  # type: ignore[attr-defined]
        user = claims.user_id
        may_send = any(r == "webpubsub.sendToGroup" for r in claims.roles)
        mine = [groups.setdefault(g, set()) for g in claims.groups]
        for members in mine:
            members.add(conn)
        try:
            await conn.send(dumps({"type": "system", "event": "connected", "userId": user,
                                   "connectionId": f"c{next(ids)}"}))
            async for frame in conn:
                msg = json.loads(frame)
                ack = msg.get("ackId")
                if msg.get("type") == "sendToGroup" and may_send:
                    members = groups.get(msg["group"], set())
                    if msg.get("noEcho"):
                        members = members - {conn}
                    broadcast(members, dumps({
                        "type": "message", "from": "group", "group": msg["group"],
                        "fromUserId": user, "dataType": msg.get("dataType", "json"),
                        "data": msg.get("data")}))
                    if ack is not None:
                        await conn.send(dumps({"type": "ack", "ackId": ack, "success": True}))
                elif ack is not None:
                    await conn.send(dumps({"type": "ack", "ackId": ack, "success": False,
                                           "error": {"name": "Forbidden", "message": "no"}}))
        finally:
            for members in mine:
                members.discard(conn)

    async with serve(handler, HOST, port, subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                     process_request=check, compression=None, max_size=1 << 20,
                     ping_interval=None, max_queue=None) as server:
        announce(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("label", choices=LABELS)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    prepare_process()
    serve = _serve_hyco if args.label == "hyco_proto" else _serve_websockets
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
