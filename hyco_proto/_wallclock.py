"""The one place in the core that reads the wall clock.

User-facing token helpers (``sas.create_relay_token`` and friends) take an explicit ``now``; when
they get none they call :func:`now`. State machines never import this module: they are handed
clock readings by their adapter.
"""

from __future__ import annotations

import time

__all__ = ["now"]


def now() -> float:
    """Seconds since the Unix epoch, as ``time.time()`` reports them."""
    return time.time()
