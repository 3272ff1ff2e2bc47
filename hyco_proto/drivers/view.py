"""What every adapter's socket tells about its connection (a mixin over the driver objects)."""

from __future__ import annotations

from typing import Any

from ..handshake import HandshakeRequest
from .connection import ClientConnection, ServerConnection
from .stream import MessageStream

__all__ = ["SocketView"]


class SocketView:
    """``subprotocol``, ``request``, ``response_headers``, ``close_code``, ``close_reason``,
    ``closed``, ``queued_messages`` of a socket with a ``_conn`` and a ``_stream``."""

    _conn: ClientConnection | ServerConnection
    _stream: MessageStream[Any]

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol agreed on in the opening handshake (None: none)."""
        return self._conn.subprotocol

    @property
    def request(self) -> HandshakeRequest | None:
        """Server side (``serve``): the client's upgrade request (``.target``, ``.headers``)."""
        conn = self._conn
        return conn.request if isinstance(conn, ServerConnection) else None

    @property
    def response_headers(self) -> list[tuple[str, str]]:
        """Client side: headers of the server's 101 answer."""
        conn = self._conn
        if isinstance(conn, ClientConnection) and conn.response is not None:
            return list(conn.response.headers)
        return []

    @property
    def close_code(self) -> int | None:
        """The close code once closed (1006: no closing handshake); None while open."""
        closed = self._stream.closed
        return closed.code if closed is not None else None

    @property
    def close_reason(self) -> str | None:
        """The close reason once closed; None while open."""
        closed = self._stream.closed
        return closed.reason if closed is not None else None

    @property
    def closed(self) -> bool:
        return self._stream.closed is not None

    @property
    def state_text(self) -> str:
        """``closed CODE`` once closed, else the connection's state (for reprs and logs)."""
        return f"closed {self.close_code}" if self.closed else self._conn.state.value

    @property
    def queued_messages(self) -> int:
        """Received messages waiting for ``recv``."""
        return len(self._stream)
