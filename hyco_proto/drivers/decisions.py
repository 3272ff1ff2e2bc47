"""A listener's answer to a connection request: what a ``headers`` hook returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

__all__ = ["BACKLOG_FULL", "Accept", "Decision", "Reject", "as_reject"]


@dataclass(frozen=True, slots=True)
class Accept:
    """Accept the sender, selecting ``subprotocol`` (one the sender offered, or None for none)
    and adding ``headers`` to the rendezvous handshake."""

    subprotocol: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Reject:
    """Turn the sender away: its handshake fails with ``status`` (400-599) and ``description``.

    A status outside 400-599 raises ``ValueError`` here, where the mistake is, instead of
    surfacing as a timeout at the sender.
    """

    status: int = 400
    description: str = "Rejected by user code"

    def __post_init__(self) -> None:
        status = self.status
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(f"Reject status must be an HTTP error status 400..599, not "
                             f"{status!r} (accept with Accept(...) or None instead)")
        if not isinstance(self.description, str):
            raise ValueError(f"Reject description must be str, not "
                             f"{type(self.description).__name__}")


#: How a listener with a full accept backlog turns senders away (503 at the handshake).
BACKLOG_FULL = Reject(503, "listener busy: its accept backlog is full")

#: What a ``headers`` hook returns: ``None`` accepts offering the sender's first subprotocol
#: (like hyco-ws); a ``str`` accepts with that subprotocol; ``Accept`` / ``Reject`` say exactly;
#: a ``(status, description)`` tuple rejects.
Decision: TypeAlias = str | Accept | Reject | tuple[int, str] | None


def as_reject(decision: tuple[int, str]) -> Reject:
    """``(status, description)`` as a :class:`Reject` (raises ``ValueError`` when invalid)."""
    status, description = decision
    return Reject(status, str(description))
