"""Test helpers for driving the relay service with raw bytes, in memory.

``RawSender`` is a sender endpoint on a ``MemoryNetwork`` that completes a normal opening
handshake (``ClientHandshake``) and then writes whatever bytes a test gives it, bypassing the
client ``WebSocketConnection``: it records the raw bytes the relay sends back (``b""`` for the
relay closing TCP). ``EchoListener`` is a ``MemoryListener`` whose accepted connections echo every
text and binary message; everything else (pongs, close replies, failing invalid UTF-8 with 1007)
is our own client-role ``WebSocketConnection`` on the listener's leg.
"""

from __future__ import annotations

from collections.abc import Sequence

from hyco_proto.drivers.listener import ListenerDriver
from hyco_proto.handshake import ClientHandshake, HandshakeAccepted, HandshakeRejected
from hyco_proto.listener import Listener
from hyco_proto.memory import MemoryListener, MemoryNetwork, MemoryWebSocket
from hyco_proto.sas import create_relay_token
from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY
from hyco_proto.websocket import BinaryMessage, State, TextMessage
from tests.wsutil import Item, decode_output

BASE = "ws://127.0.0.1:9090"
LISTEN = f"{BASE}/$hc/myhc"
SEND = f"{BASE}/$hc/myhc?sb-hc-action=connect"


def token_for(net: MemoryNetwork, uri: str, ttl: int = 3600) -> str:
    return create_relay_token(uri, DEFAULT_RULE_NAME, DEVELOPMENT_KEY, ttl, now=net.now)


class RawSender:
    """A sender's TCP connection to the relay, written byte by byte by the test.

    With ``handshake`` the upgrade request comes from it and ``accepted``/``rejected`` report the
    answer; bytes after the 101 go to ``received``. Without one, the test writes the request
    itself and ``received`` holds everything the relay sent (the HTTP response included).
    """

    def __init__(self, network: MemoryNetwork, handshake: ClientHandshake | None = None) -> None:
        self.network = network
        self.handshake = handshake
        self.accepted: HandshakeAccepted | None = None
        self.rejected: HandshakeRejected | None = None
        #: What the relay sent after the handshake, in order; ``b""`` when it closed TCP.
        self.received: list[bytes] = []
        self.tcp_closed = False  # the relay closed TCP (we saw EOF)
        self.eof_sent = False  # we closed TCP
        self._outbox: list[bytes] = [handshake.data_to_send()] if handshake is not None else []
        self.conn_id = network._attach(self)  # type: ignore[arg-type]

    # -- the test's side -------------------------------------------------------------------

    def write(self, data: bytes, *, pump: bool = True) -> None:
        """One TCP write to the relay (dropped once either side closed TCP), then settle."""
        if data and not self.tcp_closed and not self.eof_sent:
            self.network._to_service(self.conn_id, data)
        if pump:
            self.network.pump()

    def write_all(self, writes: Sequence[bytes]) -> None:
        for data in writes:
            self.write(data)

    def close_tcp(self) -> None:
        if not self.eof_sent and not self.tcp_closed:
            self.eof_sent = True
            self.network._to_service(self.conn_id, b"")
        self.network.pump()

    def raw(self) -> bytes:
        return b"".join(self.received)

    def output(self) -> list[Item]:
        """What the relay sent, as reassembled messages, control frames and ``EOF``; every frame
        is checked to be a valid unmasked server frame."""
        return decode_output(self.received, expect_masked=False)

    # -- the network's side (duck-typed like MemoryWebSocket) ------------------------------

    def _from_relay(self, data: bytes) -> None:
        if self.handshake is not None and self.accepted is None and self.rejected is None:
            self.handshake.receive_data(data)
            event = self.handshake.next_event()
            if isinstance(event, HandshakeAccepted):
                self.accepted = event
                if event.trailing_data:
                    self.received.append(event.trailing_data)
            elif isinstance(event, HandshakeRejected):
                self.rejected = event
        elif data:
            assert not self.tcp_closed, "bytes from the relay after it closed TCP"
            self.received.append(data)
        if not data:
            assert not self.tcp_closed, "the relay closed TCP twice"
            self.tcp_closed = True
            if self.accepted is not None or self.handshake is None:
                self.received.append(b"")

    def _flush(self) -> bool:
        if not self._outbox:
            return False
        outbox, self._outbox = self._outbox, []
        for chunk in outbox:
            self.network._to_service(self.conn_id, chunk)
        return True


class EchoListener(MemoryListener):
    """A listener whose accepted connections send every text/binary message straight back.

    ``leg_events[i]`` holds every WebSocket event of ``connections[i]`` (pings included)."""

    def __init__(self, network: MemoryNetwork, driver: ListenerDriver) -> None:
        super().__init__(network, driver, None)
        self.leg_events: list[list[object]] = []

    def _step(self) -> bool:
        before = len(self.connections)
        moved = super()._step()
        for sock in self.connections[before:]:
            events: list[object] = []
            self.leg_events.append(events)
            sock.subscribe(_echo(sock, events))
        return moved


def _echo(sock: MemoryWebSocket, events: list[object]):  # type: ignore[no-untyped-def]
    def on_event(event: object) -> None:
        events.append(event)
        ws = sock.ws
        if ws is None or ws.state is not State.OPEN:
            return
        if isinstance(event, TextMessage):
            ws.send_text(event.data)
        elif isinstance(event, BinaryMessage):
            ws.send_binary(event.data)

    return on_event


def start_echo_listener(net: MemoryNetwork, *, reply_to_close: bool = True) -> EchoListener:
    """An echoing listener on ``net``, listening (``reply_to_close=False``: its connections
    never answer a close frame, like a stuck peer)."""
    listener = Listener(LISTEN, lambda: token_for(net, LISTEN), keepalive_interval=None)
    runner = EchoListener(net, ListenerDriver(listener, reply_to_close=reply_to_close))
    net._listeners.append(runner)
    runner.driver.start(net.now)
    net.pump()
    return runner


def raw_sender(net: MemoryNetwork, *, extra_headers: Sequence[tuple[str, str]] = ()) -> RawSender:
    """A sender through the relay, handshake done (``accepted`` set) and nothing sent yet."""
    headers = [*extra_headers, ("ServiceBusAuthorization", token_for(net, SEND))]
    sender = RawSender(net, ClientHandshake.from_url(SEND, headers=headers))
    net.pump()
    return sender
