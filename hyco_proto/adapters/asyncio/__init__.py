"""asyncio adapter: the local relay service server, and (soon) listener and sender clients."""

from __future__ import annotations

from .service import RelayServiceServer

__all__ = ["RelayServiceServer"]
