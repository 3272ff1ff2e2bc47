"""What every adapter's ``WebPubSubClient`` shares: its settings, its core, what it tells about
itself and its callback registry (a base class; the adapters add the I/O)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..webpubsub.client import (
    DEFAULT_RECONNECT_DELAYS,
    DEFAULT_RECOVERY_DELAYS,
    Callbacks,
    ClientState,
    WebPubSubClientCore,
    address_of,
)
from ..webpubsub.messages import JSON_RELIABLE_SUBPROTOCOL

__all__ = ["WebPubSubClientBase", "idle_error"]


def idle_error(what: str, state: ClientState, address: str) -> str:
    """Why a request cannot be sent by a client that is not running, and what to do."""
    hint = "call start() first" if state is ClientState.IDLE else "the client was stopped"
    return f"cannot send {what}: {hint} (client of {address}, {state.value})"


class WebPubSubClientBase:
    """The settings (see the adapters' ``WebPubSubClient``; each adapter keeps its own TLS
    context), the sans-IO core, the properties
    ``connection_id`` / ``user_id`` / ``groups`` / ``state`` / ``is_connected`` /
    ``address``, and ``on`` / ``off``."""

    def __init__(self, url: object, *, protocol: str = JSON_RELIABLE_SUBPROTOCOL,
                 auto_reconnect: bool = True, auto_rejoin_groups: bool = True,
                 ack_timeout: float = 30.0, open_timeout: float = 10.0,
                 close_timeout: float = 10.0, keepalive_interval: float | None = 20.0,
                 keepalive_timeout: float = 120.0, recovery_timeout: float = 30.0,
                 recovery_delays: Sequence[float] = DEFAULT_RECOVERY_DELAYS,
                 reconnect_delays: Sequence[float] = DEFAULT_RECONNECT_DELAYS) -> None:
        fixed = url if isinstance(url, str) else None
        if fixed is None and not callable(url):
            raise TypeError(f"url must be a str or a callable, not {type(url).__name__}")
        self._core = WebPubSubClientCore(
            fixed, subprotocol=protocol, auto_reconnect=auto_reconnect,
            auto_rejoin_groups=auto_rejoin_groups, recovery_timeout=recovery_timeout,
            recovery_delays=recovery_delays, reconnect_delays=reconnect_delays,
            keepalive_interval=keepalive_interval, keepalive_timeout=keepalive_timeout)
        self._url_source = url
        #: The service address (the client URL without its query), for messages and errors.
        self.address = address_of(fixed) if fixed is not None else "(URL not fetched yet)"
        self.ack_timeout = ack_timeout
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self._callbacks = Callbacks()
        self.last_error: BaseException | None = None

    @property
    def connection_id(self) -> str | None:
        return self._core.connection_id

    @property
    def user_id(self) -> str | None:
        return self._core.user_id

    @property
    def groups(self) -> tuple[str, ...]:
        """Groups joined and not left (rejoined on a new connection)."""
        return self._core.groups

    @property
    def state(self) -> ClientState:
        return self._core.state

    @property
    def is_connected(self) -> bool:
        return self._core.is_open

    def __repr__(self) -> str:
        return f"<WebPubSubClient {self.address} {self._core.state.value}>"

    def on(self, event: str, callback: Callable[[Any], object]) -> None:
        """Call ``callback(event)`` for each ``event``: ``connected``, ``disconnected``,
        ``stopped``, ``group-message``, ``server-message``, ``rejoin-group-failed``.
        Callbacks run one at a time, in order, apart from the socket's reader (so they may
        call the client); errors are logged. In asyncio they may be coroutine functions."""
        self._callbacks.add(event, callback)

    def off(self, event: str, callback: Callable[[Any], object]) -> None:
        """Remove a callback added with :meth:`on`."""
        self._callbacks.remove(event, callback)
