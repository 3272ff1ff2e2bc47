"""Web PubSub servers compared by ``bench/test_bench_webpubsub.py``, each in its own process.

``python -m bench.wps_servers LABEL [--port N]`` prints ``PORT <n>`` once clients can connect to
``ws://127.0.0.1:<n>/client/hubs/bench?access_token=…`` and serves until its stdin closes.

- ``hyco_proto``: our emulator's hub route — ``RelayServiceServer(RelayService(ServiceConfig(),
  webpubsub=WebPubSubService(KEY)), routes="webpubsub")``, the sans-IO ``Hub`` behind it.
- ``hyco_proto-unbatched``: the same with ``WebPubSubService(KEY, batch_writes=False)``: every
  frame its own write, where the default joins each recipient's frames of one driver call (the
  bytes of one read from the sender) into one.
- ``websockets``: a minimal group fan-out written with the ``websockets`` library (asyncio), for
  context only: it checks the same access token at connect (our ``verify_client_token``), sends
  the same ``connected`` message, and for a ``sendToGroup`` frame does ``json.loads``, one
  ``json.dumps`` of the group message (the same JSON our hub sends, field for field) and
  ``websockets.broadcast`` to the group, plus the ``ack`` when an ``ackId`` is given. It has none
  of the rest of the protocol (no permissions beyond the ``sendToGroup`` role, no join/leave, no
  reliable subprotocol, no duplicate-ack check): about the least a Python asyncio fan-out can
  do per message, not a peer emulator.
- ``loadgen-ceiling``: not a server under test — a trivial blocking-socket fan-out (no token
  check, upgrade parsed by hand; per ``sendToGroup`` one ``json.loads``, one encoded frame, then a
  ``sendall`` of it to every member of the group), as cheap per delivery as Python gets with
  one write per frame: what the load generator can count at most when every frame comes alone
  (batched writes, several frames per read, can pass it).

Microsoft's own emulator (``awps-emulator``) is a .NET tool published on NuGet only: neither .NET
nor NuGet is reachable from here (npm has no emulator package), so it is not compared.
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
LABELS = ("hyco_proto", "hyco_proto-unbatched", "websockets")
#: Not a server under test: the load generator's own limit (``_serve_ceiling``).
CEILING = "loadgen-ceiling"
SUBPROTOCOL = "json.webpubsub.azure.v1"


async def _serve_hyco(port: int, batch_writes: bool = True) -> None:
    from hyco_proto.adapters.asyncio import RelayServiceServer
    from hyco_proto.service.config import ServiceConfig
    from hyco_proto.service.router import RelayService
    from hyco_proto.service.webpubsub import WebPubSubService

    service = RelayService(ServiceConfig(),
                           webpubsub=WebPubSubService(KEY, batch_writes=batch_writes))
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


def _serve_ceiling(port: int) -> None:
    import selectors
    import socket
    from urllib.parse import parse_qsl, urlsplit

    import jwt

    from hyco_proto._frames import OP_TEXT, FrameDecoder, encode_frame
    from hyco_proto.handshake import accept_token

    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
    listener = socket.create_server((HOST, port), backlog=1024)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    heads: dict[socket.socket, bytes] = {}
    decoders: dict[socket.socket, FrameDecoder] = {}
    users: dict[socket.socket, str | None] = {}
    groups: dict[str, list[socket.socket]] = {}
    ids = itertools.count(1)
    announce(listener.getsockname()[1])

    def upgrade(sock: socket.socket, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        target = lines[0].split(" ")[1]
        fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        key = {k.lower(): v for k, v in fields.items()}["sec-websocket-key"].strip()
        accept = accept_token(key)
        tok = dict(parse_qsl(urlsplit(target).query))["access_token"]
        # Claims read, not checked: the ceiling is not a server under test.
        payload = jwt.decode(tok, options={"verify_signature": False})
        for group in payload.get("webpubsub.group", []):
            groups.setdefault(group, []).append(sock)
        users[sock] = payload.get("sub")
        sock.sendall(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
                     f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n".encode()
                     + encode_frame(OP_TEXT, dumps({
                         "type": "system", "event": "connected", "userId": users[sock],
                         "connectionId": f"c{next(ids)}"}).encode(), masked=False))
        decoders[sock] = FrameDecoder(masked=True)

    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            if sock is listener:
                conn, _ = listener.accept()
                conn.setblocking(True)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                heads[conn] = b""
                sel.register(conn, selectors.EVENT_READ)
                continue
            assert isinstance(sock, socket.socket)
            data = sock.recv(1 << 20)
            if not data:
                sel.unregister(sock)
                for members in groups.values():
                    if sock in members:
                        members.remove(sock)
                sock.close()
                continue
            decoder = decoders.get(sock)
            if decoder is None:
                head = heads[sock] + data
                if b"\r\n\r\n" not in head:
                    heads[sock] = head
                    continue
                del heads[sock]
                upgrade(sock, head.split(b"\r\n\r\n", 1)[0])
                continue
            for opcode, payload, _fin in decoder.feed(data):
                if opcode != OP_TEXT:
                    continue
                msg = json.loads(payload)
                if msg.get("type") != "sendToGroup":
                    continue
                frame = encode_frame(OP_TEXT, dumps({
                    "type": "message", "from": "group", "group": msg["group"],
                    "fromUserId": users.get(sock), "dataType": msg.get("dataType", "json"),
                    "data": msg.get("data")}).encode(), masked=False)
                for member in groups.get(msg["group"], ()):
                    member.sendall(frame)
                if msg.get("ackId") is not None:
                    sock.sendall(encode_frame(OP_TEXT, dumps({
                        "type": "ack", "ackId": msg["ackId"], "success": True}).encode(),
                        masked=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("label", choices=(*LABELS, CEILING))
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    prepare_process()
    if args.label == CEILING:
        _serve_ceiling(args.port)
        return
    if args.label == "websockets":
        asyncio.run(_serve_websockets(args.port))
    else:
        asyncio.run(_serve_hyco(args.port, batch_writes=args.label == "hyco_proto"))


if __name__ == "__main__":
    main()
