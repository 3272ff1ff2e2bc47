"""Where the broker keeps connected listeners and senders waiting for a rendezvous.

``RelayBroker`` only reaches its state through the :class:`Registry` interface, so a shared
registry (a relay cluster keeping it in Redis is planned) can replace :class:`LocalRegistry`,
the in-process one, without touching the broker's decisions, the router or the handlers.
Records are plain values; the broker mutates a record it got back (``token_expiry``) only through
:meth:`Registry.update_listener`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from ..control import AcceptCommand, RequestCommand
from .config import HybridConnectionConfig

__all__ = ["ListenerRecord", "LocalRegistry", "PendingConnect", "PendingRequest", "Registry"]


@dataclass(slots=True)
class ListenerRecord:
    """A connected listener's control channel, as the broker sees it."""

    id: str
    hc: HybridConnectionConfig
    base_url: str
    token_expiry: float | None
    opened_at: float
    #: The path the listener authorised for (``/hc`` or ``/hc/suffix``); renewals must match it.
    path: str = ""
    #: The service closed the channel and waits for the client's close: never chosen for a
    #: sender or a request, not counted against the listener limit.
    closing: bool = False


@dataclass(slots=True)
class PendingConnect:
    """A sender waiting for its listener to accept or reject."""

    id: str
    hc: HybridConnectionConfig
    listener_id: str
    address: str
    created: float
    accept: AcceptCommand
    subprotocols: tuple[str, ...] = ()
    #: The accept address's ``sb-hc-rendezvous`` secret (the id may be the sender's choice).
    secret: str = ""


@dataclass(slots=True)
class PendingRequest:
    """A relayed HTTP request routed to a listener, until its response has ended."""

    id: str
    hc: HybridConnectionConfig
    listener_id: str
    #: Where the listener opens a rendezvous for it (``sb-hc-action=request``).
    address: str
    created: float
    #: The full request (with ``address``), as sent on the control channel.
    command: RequestCommand
    #: Whether the full request went on the control channel (else a rendezvous carries it).
    on_control_channel: bool = False
    #: A rendezvous for this request has been opened (an address is single-use).
    rendezvous_taken: bool = False
    #: The address's ``sb-hc-rendezvous`` secret.
    secret: str = ""


class Registry(Protocol):
    """The broker's state: listeners per hybrid connection, and pending senders by id."""

    def add_listener(self, record: ListenerRecord) -> None: ...

    def remove_listener(self, listener_id: str) -> ListenerRecord | None: ...

    def update_listener(self, record: ListenerRecord) -> None: ...

    def listener(self, listener_id: str) -> ListenerRecord | None: ...

    def listeners_of(self, hc_name: str) -> list[ListenerRecord]:
        """The listeners of a hybrid connection (names compare case-insensitively)."""
        ...

    def all_listeners(self) -> Iterable[ListenerRecord]: ...

    def add_pending(self, pending: PendingConnect) -> None: ...

    def take_pending(self, connect_id: str) -> PendingConnect | None:
        """Remove and return a pending sender: an accept address is single-use (§3.1)."""
        ...

    def has_pending(self, connect_id: str) -> bool: ...

    def pending(self, connect_id: str) -> PendingConnect | None:
        """A pending sender, left in place."""
        ...

    def all_pending(self) -> Iterable[PendingConnect]: ...

    def add_request(self, request: PendingRequest) -> None: ...

    def request(self, request_id: str) -> PendingRequest | None: ...

    def update_request(self, request: PendingRequest) -> None: ...

    def remove_request(self, request_id: str) -> PendingRequest | None: ...

    def all_requests(self) -> Iterable[PendingRequest]: ...


class LocalRegistry:
    """The in-process :class:`Registry`: dictionaries."""

    def __init__(self) -> None:
        self._listeners: dict[str, ListenerRecord] = {}
        self._by_hc: dict[str, dict[str, ListenerRecord]] = {}
        self._pending: dict[str, PendingConnect] = {}
        self._requests: dict[str, PendingRequest] = {}
        #: Bumped by every change to the listeners or the pending senders (added, removed,
        #: updated): the broker's deadline, which depends on nothing else here, is only
        #: looked for again when it moved.
        self.version = 0
        #: Bumped by every change to the listeners alone.
        self.listeners_version = 0

    def add_listener(self, record: ListenerRecord) -> None:
        self.version += 1
        self.listeners_version += 1
        self._listeners[record.id] = record
        self._by_hc.setdefault(record.hc.name.lower(), {})[record.id] = record

    def remove_listener(self, listener_id: str) -> ListenerRecord | None:
        record = self._listeners.pop(listener_id, None)
        if record is not None:
            self.version += 1
            self.listeners_version += 1
            group = self._by_hc.get(record.hc.name.lower(), {})
            group.pop(listener_id, None)
            if not group:
                self._by_hc.pop(record.hc.name.lower(), None)
        return record

    def update_listener(self, record: ListenerRecord) -> None:
        if record.id in self._listeners:
            self.add_listener(record)

    def listener(self, listener_id: str) -> ListenerRecord | None:
        return self._listeners.get(listener_id)

    def listeners_of(self, hc_name: str) -> list[ListenerRecord]:
        return list(self._by_hc.get(hc_name.lower(), {}).values())

    def all_listeners(self) -> Iterable[ListenerRecord]:
        return list(self._listeners.values())

    def add_pending(self, pending: PendingConnect) -> None:
        self.version += 1
        self._pending[pending.id] = pending

    def take_pending(self, connect_id: str) -> PendingConnect | None:
        pending = self._pending.pop(connect_id, None)
        if pending is not None:
            self.version += 1
        return pending

    def has_pending(self, connect_id: str) -> bool:
        return connect_id in self._pending

    def pending(self, connect_id: str) -> PendingConnect | None:
        return self._pending.get(connect_id)

    def all_pending(self) -> Iterable[PendingConnect]:
        return list(self._pending.values())

    def add_request(self, request: PendingRequest) -> None:
        self._requests[request.id] = request

    def request(self, request_id: str) -> PendingRequest | None:
        return self._requests.get(request_id)

    def update_request(self, request: PendingRequest) -> None:
        if request.id in self._requests:
            self._requests[request.id] = request

    def remove_request(self, request_id: str) -> PendingRequest | None:
        return self._requests.pop(request_id, None)

    def all_requests(self) -> Iterable[PendingRequest]:
        return list(self._requests.values())
