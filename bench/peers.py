"""Thin wrappers that drive each peer library's frame path the same way, for fair comparisons.

Every wrapper exposes ``feed(data) -> int`` (messages or frames produced) or
``send(payload) -> bytes`` so the benchmarks call peers and ours identically.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import ModuleType
from typing import Any

from aiohttp._websocket.reader_c import WebSocketDataQueue, WebSocketReader
from websockets.client import ClientProtocol
from websockets.protocol import Protocol, Side, State
from websockets.uri import parse_uri
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage

from hyco_proto.websocket import Role, WebSocketConnection


class _NullProtocol:
    """What aiohttp's queue needs from a transport protocol."""

    _reading_paused = False

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


def aiohttp_server_reader() -> Callable[[bytes], int]:
    """aiohttp's compiled reader (``reader_c``) in the server role, its queue drained per call.

    The queue's size counter is read-only from Python and only our draining lowers the buffer,
    not the counter, so the reader and queue are rebuilt after every 256 MiB fed - long before the
    counter nears the queue's pause limit (2 GiB here), where aiohttp would stall the parser.
    Rebuilding is amortised over hundreds of calls: negligible.
    """
    loop = asyncio.new_event_loop()
    state: dict[str, Any] = {}

    def rebuild() -> None:
        queue = WebSocketDataQueue(_NullProtocol(), 2**30, loop=loop)  # type: ignore[arg-type]
        state["queue"] = queue
        state["reader"] = WebSocketReader(queue, 0, compress=False, decode_text=False)
        state["left"] = 256 * 1024 * 1024

    def feed(data: bytes) -> int:
        state["reader"].feed_data(data)
        buffer = state["queue"]._buffer
        count = len(buffer)
        buffer.clear()
        state["left"] -= len(data)
        if count and state["left"] <= 0:
            # Only at a message boundary: the benchmarks' reads end where a message ends.
            rebuild()
        return count

    rebuild()
    return feed


def websockets_server() -> Callable[[bytes], int]:
    """websockets' sans-IO ``Protocol`` (C ``apply_mask``) in the server role."""
    proto = Protocol(Side.SERVER, state=State.OPEN, max_size=None)

    def feed(data: bytes) -> int:
        proto.receive_data(data)
        return len(proto.events_received())

    return feed


def wsproto_server() -> Callable[[bytes], int]:
    conn = Connection(ConnectionType.SERVER)

    def feed(data: bytes) -> int:
        conn.receive_data(data)
        return sum(1 for _ in conn.events())

    return feed


def hyco_decoder(kernel: ModuleType) -> Callable[[bytes], int]:
    """Our streaming frame decoder (kernel level: chunks, no message objects)."""
    decoder = kernel.FrameDecoder(masked=True)

    def feed(data: bytes) -> int:
        return len(decoder.feed(data))

    return feed


def hyco_connection() -> Callable[[bytes], int]:
    """Our sans-IO ``WebSocketConnection`` in the server role (whole-message events)."""
    conn = WebSocketConnection(Role.SERVER)

    def feed(data: bytes) -> int:
        conn.receive_data(data)
        return len(conn.events_received())

    return feed


def websockets_client_send() -> Callable[[bytes], Any]:
    proto = ClientProtocol(parse_uri("ws://localhost/"), state=State.OPEN)

    def send(payload: bytes) -> Any:
        proto.send_binary(payload)
        return proto.data_to_send()

    return send


def wsproto_client_send() -> Callable[[bytes], Any]:
    conn = Connection(ConnectionType.CLIENT)

    def send(payload: bytes) -> Any:
        return conn.send(BytesMessage(payload))

    return send


def hyco_client_send_connection() -> Callable[[bytes], Any]:
    conn = WebSocketConnection(Role.CLIENT)

    def send(payload: bytes) -> Any:
        conn.send_binary(payload)
        return conn.data_to_send()

    return send


def websockets_relay_step() -> Callable[[bytes], Any]:
    """What a relay built on websockets' sans-IO core does per chunk: parse masked client frames
    on one leg, send each payload unmasked on the other."""
    inbound = Protocol(Side.SERVER, state=State.OPEN, max_size=None)
    outbound = Protocol(Side.SERVER, state=State.OPEN, max_size=None)

    def step(data: bytes) -> Any:
        inbound.receive_data(data)
        for frame in inbound.events_received():
            outbound.send_frame(frame)
        return outbound.data_to_send()

    return step
