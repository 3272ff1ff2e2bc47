"""The one place in the core that reads the wall clock, and the one way it shows a reading.

User-facing token helpers (``sas.create_relay_token`` and friends) take an explicit ``now``; when
they get none they call :func:`now`. State machines never call :func:`now`: they are handed
clock readings by their adapter, and show them with :func:`utc_text`.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

__all__ = ["now", "utc_text"]


def now() -> float:
    """Seconds since the Unix epoch, as ``time.time()`` reports them."""
    return time.time()


def utc_text(when: float) -> str:
    """``2026-11-30T23:19:42Z`` (``-`` for a time no calendar holds)."""
    try:
        return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "-"
