"""One WebSocket connection as one object: the opening handshake, then the data phase.

``ClientConnection`` and ``ServerConnection`` have the shape of websockets' ``ClientProtocol`` /
``ServerProtocol``: feed bytes with ``receive_data`` / ``receive_eof``, collect
``events_received()`` and ``data_to_send()`` (a ``b""`` item means "close TCP"), call ``send_*``.
The first event says how the handshake went (:class:`Opened`, :class:`Refused`,
:class:`HandshakeFailed`, or :class:`RequestReceived` on the server side); WebSocket events
(:mod:`hyco_proto.websocket`) follow. Bytes that arrive with the 101 are never lost: they go to
the data phase as ``trailing_data``.

Every adapter, ``hyco_proto.memory`` and the listener driver use these, so the handover from
handshake to frames is written once.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from ..errors import (
    LocalProtocolError,
    RelayError,
    RemoteProtocolError,
    host_port,
    relay_error_for_status,
)
from ..handshake import (
    ClientHandshake,
    HandshakeAccepted,
    HandshakeRejected,
    HandshakeRequest,
    Headers,
    ServerHandshake,
    WebSocketURL,
)
from ..websocket import Event as WsEvent
from ..websocket import Role, State, WebSocketConnection

__all__ = [
    "ClientConnection",
    "ConnectionEvent",
    "ConnectionState",
    "DataPhase",
    "HandshakeFailed",
    "Opened",
    "Refused",
    "RequestReceived",
    "ServerConnection",
    "handshake_failure",
    "refusal_error",
    "select_subprotocol",
]


class ConnectionState(enum.Enum):
    CONNECTING = "connecting"  # opening handshake under way
    OPEN = "open"
    CLOSING = "closing"  # one close frame has passed
    CLOSED = "closed"  # closed, failed, or the handshake did not succeed


@dataclass(frozen=True, slots=True)
class Opened:
    """The server answered 101: the WebSocket is open."""

    response: HandshakeAccepted


@dataclass(frozen=True, slots=True)
class Refused:
    """The server answered the upgrade with another status (the relay's or a listener's refusal)."""

    response: HandshakeRejected


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    """The handshake broke: an invalid answer or request, or the peer left before finishing."""

    error: RemoteProtocolError


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """Server side: a valid upgrade request; answer with ``accept()`` or ``reject()``."""

    request: HandshakeRequest


ConnectionEvent: TypeAlias = Opened | Refused | HandshakeFailed | RequestReceived | WsEvent
#: What :meth:`ClientConnection.data_phase` / :meth:`ServerConnection.data_phase` return.
DataPhase: TypeAlias = WebSocketConnection

_STATES = {State.OPEN: ConnectionState.OPEN, State.CLOSING: ConnectionState.CLOSING,
           State.CLOSED: ConnectionState.CLOSED}


def select_subprotocol(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """The first subprotocol of ``supported`` that the client offered (None: no match)."""
    for name in supported:
        if name in offered:
            return name
    return None


class _Connection:
    """What both roles share: the data phase behind a handshake."""

    def __init__(self, *, max_message_size: int | None, max_frame_size: int | None,
                 reply_to_close: bool) -> None:
        self.ws: WebSocketConnection | None = None
        self.max_message_size = max_message_size
        self.max_frame_size = max_frame_size
        self.reply_to_close = reply_to_close
        #: Report binary messages frame by frame (``BinaryFragment``); set before it opens.
        self.stream_binary = False
        self._events: list[ConnectionEvent] = []
        self._out: list[bytes] = []
        self._done = False  # the handshake ended without a WebSocket
        self._eof = False

    def _open(self, role: Role, trailing: bytes) -> WebSocketConnection:
        ws = WebSocketConnection(role, max_message_size=self.max_message_size,
                                 max_frame_size=self.max_frame_size,
                                 reply_to_close=self.reply_to_close, trailing_data=trailing,
                                 stream_binary=self.stream_binary)
        self.ws = ws
        return ws

    def _end_handshake(self, event: ConnectionEvent) -> None:
        self._done = True
        self._events.append(event)
        self._out.append(b"")

    # -- input -----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed the peer's bytes (never raises for bad input)."""
        ws = self.ws
        if ws is not None:
            ws.receive_data(data)
        elif not self._done and data:
            self._handshake_input(data)

    def receive_eof(self) -> None:
        """The peer closed TCP. Idempotent."""
        ws = self.ws
        if ws is not None:
            ws.receive_eof()
            return
        if self._done or self._eof:
            return
        self._eof = True
        self._handshake_input(b"")

    def _handshake_input(self, data: bytes) -> None:
        """Bytes (``b""``: EOF) while the opening handshake runs."""
        raise NotImplementedError

    # -- output ----------------------------------------------------------------------------

    def events_received(self) -> list[ConnectionEvent]:
        """Events since the last call, oldest first (the handshake's outcome comes first)."""
        ws = self.ws
        if self._events:
            events = self._events
            self._events = []
            if ws is not None:
                events.extend(ws.events_received())
            return events
        if ws is None:
            return []
        return ws.events_received()  # type: ignore[return-value]

    def data_to_send(self) -> list[bytes]:
        """Buffers to write in order; ``b""`` means close TCP (half-close for a client)."""
        ws = self.ws
        if self._out:
            out = self._out
            self._out = []
            if ws is not None:
                out.extend(ws.data_to_send())
            return out
        if ws is None:
            return []
        return ws.data_to_send()

    def data_phase(self) -> DataPhase | None:
        """The open ``WebSocketConnection`` once the handshake's own events and output have all
        been collected (``None`` before): from then on this object only forwards to it, so a
        hot loop may feed it and collect from it directly."""
        ws = self.ws
        if ws is None or self._events or self._out:
            return None
        return ws

    @property
    def state(self) -> ConnectionState:
        ws = self.ws
        if ws is not None:
            return _STATES[ws.state]
        return ConnectionState.CLOSED if self._done else ConnectionState.CONNECTING

    @property
    def is_open(self) -> bool:
        ws = self.ws
        return ws is not None and ws.state is State.OPEN

    def close_expected(self) -> bool:
        """Whether the peer should close TCP soon: arm a close timer (see WebSocketConnection)."""
        ws = self.ws
        return ws.close_expected() if ws is not None else self._done

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code if self.ws is not None else None

    @property
    def close_reason(self) -> str:
        return self.ws.close_reason if self.ws is not None else ""

    # -- sending ---------------------------------------------------------------------------

    def _data_phase(self, what: str) -> WebSocketConnection:
        ws = self.ws
        if ws is None:
            raise LocalProtocolError(
                f"cannot {what} before the opening handshake has completed; wait for Opened")
        return ws

    def send_text(self, data: str) -> None:
        self._data_phase("send").send_text(data)

    def send_binary(self, data: bytes | bytearray | memoryview) -> None:
        self._data_phase("send").send_binary(data)  # type: ignore[arg-type]

    def send_binary_part(self, data: bytes | bytearray | memoryview, fin: bool) -> None:
        """One fragment of a binary message (see ``WebSocketConnection.send_binary_part``)."""
        self._data_phase("send").send_binary_part(data, fin)

    def send_ping(self, payload: bytes = b"") -> None:
        self._data_phase("ping").send_ping(payload)

    def send_pong(self, payload: bytes = b"") -> None:
        self._data_phase("pong").send_pong(payload)

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        self._data_phase("close").send_close(code, reason)

    def fail(self, code: int, reason: str = "") -> None:
        """Fail the connection (RFC 6455 §7.1.7); before the handshake ends: just close TCP."""
        ws = self.ws
        if ws is not None:
            ws.fail(code, reason)
        elif not self._done:
            self._done = True
            self._out.append(b"")


class ClientConnection(_Connection):
    """A client WebSocket: the upgrade request first, then masked frames.

    ``data_to_send()`` starts with the upgrade request. The first event is :class:`Opened`,
    :class:`Refused` (TCP is closed after it) or :class:`HandshakeFailed`.
    """

    def __init__(self, handshake: ClientHandshake, *, max_message_size: int | None = None,
                 max_frame_size: int | None = None, reply_to_close: bool = True) -> None:
        super().__init__(max_message_size=max_message_size, max_frame_size=max_frame_size,
                         reply_to_close=reply_to_close)
        self.handshake = handshake
        self.response: HandshakeAccepted | None = None
        self.rejection: HandshakeRejected | None = None
        self._out.append(handshake.data_to_send())

    @classmethod
    def from_url(cls, url: str, *, subprotocols: Sequence[str] = (), headers: Headers = (),
                 max_message_size: int | None = None, max_frame_size: int | None = None,
                 reply_to_close: bool = True) -> ClientConnection:
        """For ``ws://`` / ``wss://`` URLs; ``.url`` says where to connect and whether TLS."""
        handshake = ClientHandshake.from_url(url, subprotocols=subprotocols, headers=headers)
        return cls(handshake, max_message_size=max_message_size,
                   max_frame_size=max_frame_size, reply_to_close=reply_to_close)

    @property
    def url(self) -> WebSocketURL:
        url = self.handshake.url
        if url is None:
            raise LocalProtocolError("this connection was not built from a URL; use from_url()")
        return url

    @property
    def subprotocol(self) -> str | None:
        return self.response.subprotocol if self.response is not None else None

    def _handshake_input(self, data: bytes) -> None:
        self.handshake.receive_data(data)
        self._advance()
        if not data and not self._done and self.ws is None:
            self._end_handshake(HandshakeFailed(RemoteProtocolError(
                "the server closed the connection without answering the WebSocket upgrade",
                status_hint=502)))

    def _advance(self) -> None:
        try:
            answer = self.handshake.next_event()
        except RemoteProtocolError as exc:
            self._end_handshake(HandshakeFailed(exc))
            return
        if answer is None:
            return
        if isinstance(answer, HandshakeAccepted):
            self.response = answer
            self._events.append(Opened(answer))
            ws = self._open(Role.CLIENT, answer.trailing_data)
            if self._eof:
                ws.receive_eof()
        else:
            self.rejection = answer
            self._end_handshake(Refused(answer))


class ServerConnection(_Connection):
    """A server WebSocket: read the upgrade request, answer it, then unmasked frames.

    The first event is :class:`RequestReceived` (answer with :meth:`accept` or :meth:`reject`) or
    :class:`HandshakeFailed` — then the refusal (400, 405, 426, 431 ...) is already queued in
    ``data_to_send()``, followed by ``b""``.
    """

    def __init__(self, *, max_message_size: int | None = None, max_frame_size: int | None = None,
                 max_header_size: int = 16384, reply_to_close: bool = True) -> None:
        super().__init__(max_message_size=max_message_size, max_frame_size=max_frame_size,
                         reply_to_close=reply_to_close)
        self.handshake = ServerHandshake(max_header_size=max_header_size)
        self.request: HandshakeRequest | None = None
        self.subprotocol: str | None = None

    def _handshake_input(self, data: bytes) -> None:
        self.handshake.receive_data(data)
        if self.request is None:
            self._advance()

    def _advance(self) -> None:
        hs = self.handshake
        request = hs.next_event()
        if request is not None:
            self.request = request
            self._events.append(RequestReceived(request))
            return
        if hs.rejection is not None:
            self._done = True
            self._out.append(hs.rejection)
            self._out.append(b"")
            assert hs.error is not None
            self._events.append(HandshakeFailed(hs.error))
        elif hs.error is not None:
            self._end_handshake(HandshakeFailed(hs.error))

    def accept(self, subprotocol: str | None = None, headers: Headers = ()) -> None:
        """Answer 101 (``subprotocol`` must be one the client offered) and open the data phase."""
        response = self.handshake.accept(subprotocol, headers)
        self.subprotocol = subprotocol
        self._out.append(response)
        ws = self._open(Role.SERVER, self.handshake.trailing_data)
        if self._eof:
            ws.receive_eof()

    def reject(self, status: int, reason: str = "", headers: Headers = (),
               body: bytes = b"") -> None:
        """Refuse the upgrade with an HTTP status (200-599), then close TCP."""
        response = self.handshake.reject(status, reason, headers, body)
        self._done = True
        self._out.append(response)
        self._out.append(b"")


def refusal_error(response: HandshakeRejected, url: str) -> RelayError:
    """The error for a plain ``connect`` whose upgrade was answered with another status:
    401 → ``AuthorizationError``, 403 → ``ForbiddenError``, 404 → ``EndpointNotFoundError``,
    else ``RelayError``; the message names the address (without its query, which may carry a
    token) and the status (no relay involved)."""
    reason = f"{response.status} {response.reason}".strip()
    error = relay_error_for_status(response.status, response.reason or None)
    error.message = f"{url.split('?', 1)[0]} refused the WebSocket upgrade: {reason}"
    error.args = (error.message,)
    return error


def handshake_failure(failed: HandshakeFailed, *, host: str, port: int,
                      secure: bool) -> ConnectionError:
    """The error for a client whose opening handshake broke (no valid answer), naming the
    address; a server that closed without a word to a ``ws://`` upgrade is probably TLS."""
    text = f"the WebSocket upgrade to {host_port(host, port)} failed: {failed.error}"
    if not secure and "without answering" in str(failed.error):
        text += " (is it serving wss://? then use wss://)"
    error = ConnectionError(text)
    error.__cause__ = failed.error
    return error
