"""A minimal pairing relay built directly on ``websockets`` (asyncio API), for comparison.

Same topology and wire subset as ours (see ``bench/relays/__init__.py``), written the way the
library is meant to be used: ``process_request`` (a coroutine) holds the sender's handshake until
the listener opens the rendezvous, then each leg's handler relays whole messages with
``async for message in leg: await peer.send(message)`` (websockets' own backpressure). No
compression, no size limit, no keepalive pings; no authentication.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ._common import (
    HOST,
    IdSource,
    accept_message,
    announce,
    parse_args,
    parse_target,
    prepare_process,
)

ACCEPT_TIMEOUT = 30.0


@dataclass(eq=False)
class _Pair:
    sender: ServerConnection | None = None
    listener: ServerConnection | None = None
    opened: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class WebsocketsRelay:
    def __init__(self) -> None:
        self.port = 0
        self.listeners: dict[str, list[ServerConnection]] = {}
        self.pending: dict[str, asyncio.Future[_Pair]] = {}
        self.roles: dict[ServerConnection, str | _Pair] = {}  # hc name (listener) or pair
        self.ids = IdSource()
        self.turn = itertools.count()

    async def process_request(
        self, conn: ServerConnection, request: Request
    ) -> Response | None:
        parsed = parse_target(request.path)
        if parsed is None:
            return conn.respond(404, "Not a relay address\n")
        hc, action, wanted = parsed
        if action == "listen":
            self.roles[conn] = hc
            return None
        if action == "accept":
            waiter = self.pending.pop(wanted, None)
            if waiter is None or waiter.done():
                return conn.respond(403, "Unknown or expired accept address\n")
            pair = _Pair(listener=conn)
            self.roles[conn] = pair
            waiter.set_result(pair)
            return None
        if action != "connect":
            return conn.respond(400, "Unsupported sb-hc-action\n")
        listeners = self.listeners.get(hc)
        if not listeners:
            return conn.respond(404, "No listener\n")
        listener = listeners[next(self.turn) % len(listeners)]
        ident = self.ids.new(wanted, self.pending)
        waiter = asyncio.get_running_loop().create_future()
        self.pending[ident] = waiter
        try:
            await listener.send(accept_message(self.port, hc, ident))
            pair = await asyncio.wait_for(waiter, ACCEPT_TIMEOUT)
        except (asyncio.TimeoutError, ConnectionClosed):
            return conn.respond(504, "The listener did not accept in time\n")
        finally:
            self.pending.pop(ident, None)
        pair.sender = conn
        self.roles[conn] = pair
        return None

    async def handler(self, conn: ServerConnection) -> None:
        role = self.roles.pop(conn, None)
        if role is None:
            return
        if isinstance(role, str):
            await self._control_channel(conn, role)
        else:
            await self._leg(conn, role)

    async def _control_channel(self, conn: ServerConnection, hc: str) -> None:
        self.listeners.setdefault(hc, []).append(conn)
        try:
            async for _ in conn:
                pass  # listeners say nothing the relay needs here
        except ConnectionClosed:
            pass
        finally:
            self.listeners[hc].remove(conn)

    async def _leg(self, conn: ServerConnection, pair: _Pair) -> None:
        pair.opened += 1
        if pair.opened == 2:
            pair.ready.set()
        else:
            try:
                await asyncio.wait_for(pair.ready.wait(), ACCEPT_TIMEOUT)
            except asyncio.TimeoutError:
                return
        peer = pair.sender if conn is pair.listener else pair.listener
        assert peer is not None
        try:
            async for message in conn:
                await peer.send(message)
        except ConnectionClosed:
            pass
        finally:
            await peer.close()


async def run(port: int) -> None:
    relay = WebsocketsRelay()
    async with serve(
        relay.handler, HOST, port,
        process_request=relay.process_request,
        compression=None, max_size=None, ping_interval=None,
    ) as server:
        relay.port = server.sockets[0].getsockname()[1]
        announce(relay.port)
        await asyncio.Event().wait()


def main() -> None:
    args = parse_args(__doc__ or "")
    prepare_process()
    asyncio.run(run(args.port))


if __name__ == "__main__":
    main()
