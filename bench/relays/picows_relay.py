"""A minimal pairing relay built on ``picows`` (asyncio), for comparison.

Same topology and wire subset as ours (see ``bench/relays/__init__.py``). picows is frame-level,
so each leg forwards every frame as it arrives (``WSTransport.send`` with the frame's type and FIN
bit) and pauses reading its source while the other leg's write buffer is over the high-water mark.
No auto-ping, no auto-pong (pings pass end to end), no size limit beyond picows' frame limit
(raised to 64 MiB); no authentication. Plain asyncio transports (``use_aiofastnet=False``),
like the other two relays.

picows' listener factory is synchronous and answers at once, but a relay must hold the sender's
handshake until the listener opens the rendezvous. So a small gate protocol reads each request's
head first; a sender's connection stays in the gate (request buffered) until its rendezvous
arrives, then every connection is handed to picows' own protocol (``transport.set_protocol``) with
the buffered bytes, and picows answers 101 from there.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Coroutine
from typing import Any

from picows import (
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_create_server,
)

from ._common import (
    HOST,
    IdSource,
    accept_message,
    announce,
    parse_args,
    parse_target,
    prepare_process,
)

MAX_HEAD = 16384
ACCEPT_TIMEOUT = 30.0


class _Control(WSListener):  # type: ignore[misc]
    """A listener's control channel: the relay only writes accept messages to it."""

    def __init__(self, relay: PicowsRelay, hc: str) -> None:
        self.relay = relay
        self.hc = hc
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.relay.listeners.setdefault(self.hc, []).append(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        listeners = self.relay.listeners.get(self.hc, [])
        if self in listeners:
            listeners.remove(self)


class _Leg(WSListener):  # type: ignore[misc]
    """One leg of a relayed pair: every frame goes to the peer leg as it arrives."""

    def __init__(self) -> None:
        self.peer: _Leg | None = None
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        peer = self.peer
        target = peer.transport if peer is not None else None
        if target is None:
            return
        if frame.msg_type == WSMsgType.CLOSE:
            target.send(WSMsgType.CLOSE, frame.get_payload_as_memoryview())
            target.disconnect()
            transport.disconnect()
        else:
            target.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.disconnect()

    # Backpressure: our write buffer is full, so stop reading the leg that fills it.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.underlying_transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.underlying_transport.resume_reading()


class _Gate(asyncio.Protocol):
    """Reads a request head, routes it, and hands the connection to picows when it may go on."""

    def __init__(self, relay: PicowsRelay, inner_factory: Callable[[], asyncio.BaseProtocol]):
        self.relay = relay
        self.inner_factory = inner_factory
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.routed = False
        self.pending_id: str | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.routed:
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self._answer(431, "Request header too large")
            return
        self.routed = True
        line = bytes(self.buffer[: self.buffer.find(b"\r\n")]).split(b" ")
        target = line[1].decode("latin-1") if len(line) == 3 else ""
        self.relay.route(self, parse_target(target))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pending_id is not None:
            self.relay.pending.pop(self.pending_id, None)
        if self.timer is not None:
            self.timer.cancel()

    def release(self, role: WSListener) -> None:
        """Give the connection to picows: it parses the buffered request and answers 101."""
        transport = self.transport
        assert transport is not None
        if self.timer is not None:
            self.timer.cancel()
        self.pending_id = None
        inner = self.inner_factory()
        transport.set_protocol(inner)
        inner.connection_made(transport)
        self.relay.releasing = role
        try:
            _feed(inner, bytes(self.buffer))
        finally:
            self.relay.releasing = None
        self.buffer = bytearray()

    def _answer(self, status: int, reason: str) -> None:
        if self.transport is not None:
            self.transport.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .encode("latin-1"))
            self.transport.close()


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buffer = memoryview(protocol.get_buffer(len(view))).cast("B")
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]
    else:
        assert isinstance(protocol, asyncio.Protocol)
        protocol.data_received(data)


class PicowsRelay:
    def __init__(self) -> None:
        self.port = 0
        self.listeners: dict[str, list[_Control]] = {}
        self.pending: dict[str, _Gate] = {}
        self.releasing: WSListener | None = None
        self.ids = IdSource()
        self.turn = itertools.count()

    def listener_factory(self, request: WSUpgradeRequest) -> WSListener | None:
        return self.releasing  # set by the gate for exactly this (synchronous) handshake

    def route(self, gate: _Gate, parsed: tuple[str, str, str] | None) -> None:
        if parsed is None:
            gate._answer(404, "Not a relay address")
            return
        hc, action, wanted = parsed
        if action == "listen":
            gate.release(_Control(self, hc))
        elif action == "accept":
            sender = self.pending.pop(wanted, None)
            if sender is None:
                gate._answer(403, "Unknown or expired accept address")
                return
            listener_leg, sender_leg = _Leg(), _Leg()
            listener_leg.peer, sender_leg.peer = sender_leg, listener_leg
            gate.release(listener_leg)
            sender.release(sender_leg)
        elif action == "connect":
            listeners = [c for c in self.listeners.get(hc, []) if c.transport is not None]
            if not listeners:
                gate._answer(404, "No listener")
                return
            control = listeners[next(self.turn) % len(listeners)]
            ident = self.ids.new(wanted, self.pending)
            self.pending[ident] = gate
            gate.pending_id = ident
            gate.timer = asyncio.get_running_loop().call_later(
                ACCEPT_TIMEOUT, self._expire, ident)
            assert control.transport is not None
            control.transport.send(WSMsgType.TEXT, accept_message(self.port, hc, ident).encode())
        else:
            gate._answer(400, "Unsupported sb-hc-action")

    def _expire(self, ident: str) -> None:
        gate = self.pending.pop(ident, None)
        if gate is not None:
            gate.pending_id = None
            gate._answer(504, "The listener did not accept in time")


async def run(port: int) -> None:
    relay = PicowsRelay()
    loop = asyncio.get_running_loop()
    real_create_server = loop.create_server

    # ws_create_server builds picows' protocol factory with all its options and passes it to
    # loop.create_server: wrap that factory in the gate (public entry point, no private class).
    def create_server(
        factory: Callable[[], asyncio.BaseProtocol], *args: Any, **kwargs: Any
    ) -> Coroutine[Any, Any, asyncio.Server]:
        return real_create_server(lambda: _Gate(relay, factory), *args, **kwargs)

    loop.create_server = create_server  # type: ignore[method-assign]
    try:
        server = await ws_create_server(
            relay.listener_factory, HOST, port,
            enable_auto_ping=False, enable_auto_pong=False,
            max_frame_size=64 * 1024 * 1024, use_aiofastnet=False,
        )
    finally:
        del loop.create_server
    relay.port = server.sockets[0].getsockname()[1]
    announce(relay.port)
    async with server:
        await server.serve_forever()


def main() -> None:
    args = parse_args(__doc__ or "")
    prepare_process()
    asyncio.run(run(args.port))


if __name__ == "__main__":
    main()
