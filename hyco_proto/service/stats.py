"""The relay service's counters, shared by the service and its status and metrics endpoints."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ServiceStats"]


@dataclass(slots=True)
class ServiceStats:
    """Counters a health endpoint can show."""

    listeners: int = 0  # connected now
    listeners_opened: int = 0  # control channels opened since start
    relayed_pairs: int = 0
    messages_relayed: int = 0  # whole WebSocket data messages relayed (counted at their end)
    frames_relayed: int = 0  # WebSocket frames relayed, control frames and fragments included
    bytes_relayed: int = 0
    rejects: int = 0
    auth_failures: int = 0
    handshake_errors: int = 0
    http_requests: int = 0  # relayed HTTP requests routed to a listener
    http_bytes_relayed: int = 0  # request and response body bytes of relayed HTTP
    #: Requests the service answered with an HTTP error status, by status (401, 404, 502,
    #: 504, ...), every one whether its log line was throttled or not; a listener's reject is
    #: counted here too, with the listener's status.
    refusals: dict[int, int] = field(default_factory=dict)
