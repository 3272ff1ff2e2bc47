"""The relay service's structured log lines (sans-IO: the logging module only).

One line per event on the ``hyco_proto.service`` logger: ``{event} {what}: client=… tracking=…
{why}``, with the same fields on the record for ``hyco emulator --log-format json``. Handlers
(``relay.py``, ``http_relay.py``) and the router log through :func:`log_event`; refusals and
handshake failures go through the throttled ``status.RefusalLog``.
"""

from __future__ import annotations

import logging

from .._text import printable

__all__ = ["client_text", "log_enabled", "log_event"]

logger = logging.getLogger("hyco_proto.service")


def client_text(remote: tuple[str, int] | None) -> str:
    """``host:port`` of a client for log lines (``-`` when unknown)."""
    return f"{remote[0]}:{remote[1]}" if remote is not None else "-"


def log_enabled(level: int) -> bool:
    """Whether a :func:`log_event` at ``level`` would be written (so a caller can skip
    building its text)."""
    return logger.isEnabledFor(level)


def log_event(level: int, event: str, what: str, *, remote: tuple[str, int] | None,
              tracking: str, why: str = "", code: int | None = None) -> None:
    """One structured line for a service event: ``{event} {what}: client=… tracking=… {why}``.
    The fields are also on the record (``event``, ``client``, ``tracking``, ``what``, ``why``,
    and ``code``, the WebSocket close code of a ``protocol-close``, when given) for
    ``hyco emulator --log-format json``. Never pass a token or a piece of one. ``what``,
    ``tracking`` (a listener's ``sb-hc-id``) and ``why`` may hold client text: control
    characters are escaped so no client can write a line of its own."""
    if not logger.isEnabledFor(level):
        return  # nothing formatted for a level that is off (one per relayed pair at INFO)
    client = client_text(remote)
    what, tracking, why = printable(what), printable(tracking, 200), printable(why)
    logger.log(level, "%s %s: client=%s tracking=%s%s", event, what, client, tracking,
               f" {why}" if why else "",
               extra={"event": event, "client": client, "tracking": tracking, "what": what,
                      "why": why, **({"code": code} if code is not None else {})})
