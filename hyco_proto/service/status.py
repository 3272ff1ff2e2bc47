"""The relay service's health endpoint, metrics and refusal log (sans-IO).

``GET /$status`` (alias ``/health``) on the service port answers ``200 application/json`` with
what the service counts: listeners per hybrid connection, live connections by kind, relayed
pairs, bytes and messages relayed, rejects, auth failures; ``GET /metrics`` the same in the
Prometheus text format. This module only renders them (:func:`service_endpoint`); the router's
``ServiceEndpointsRoute`` answers the requests, so the endpoints share the relay's port.

Refusals (401/403/404 handshakes) are logged on ``hyco_proto.service`` with their tracking id.
hyco-ws listeners retry a 401 in a tight loop, thousands of times a second
(hybrid-connections-wire §4.2, §5.6 item 10), so :class:`RefusalLog` lets the first few refusals
of a kind through per window and then one summary line.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from .._syntax import split_target
from .._text import printable
from .._version import __version__
from .events import client_text

if TYPE_CHECKING:
    from .broker import RelayBroker
    from .stats import ServiceStats

__all__ = [
    "METRICS_CONTENT_TYPE",
    "STATUS_PATHS",
    "RefusalLog",
    "is_status_target",
    "metrics_response_body",
    "service_endpoint",
    "status_document",
    "status_response_body",
]

logger = logging.getLogger("hyco_proto.service")

#: Plain-HTTP paths answered with the status document (case-insensitive, trailing '/' ignored).
STATUS_PATHS = frozenset({"/$status", "/health", "/healthz"})
#: Prometheus text exposition format, version 0.0.4.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def is_status_target(method: str, target: str) -> bool:
    """Whether an HTTP request line asks for the status document (GET only)."""
    if method != "GET":
        return False
    path = split_target(target)[0].rstrip("/").lower() or "/"
    return path in STATUS_PATHS


class Render(Protocol):
    def __call__(self, *, now: float, stats: ServiceStats, broker: RelayBroker,
                 connections: Mapping[str, int]) -> bytes: ...


def service_endpoint(method: str, target: str) -> tuple[str, Render] | None:
    """The service's own plain-HTTP endpoint for a request, as ``(content type, render)``:
    ``/$status`` (JSON) and ``/metrics`` (Prometheus text); GET only. None: not one of them."""
    if method != "GET":
        return None
    path = split_target(target)[0].rstrip("/").lower() or "/"
    if path in STATUS_PATHS:
        return "application/json", status_response_body
    if path == "/metrics":
        return METRICS_CONTENT_TYPE, metrics_response_body
    return None


def status_document(
    *,
    now: float,
    stats: ServiceStats,
    broker: RelayBroker,
    connections: Mapping[str, int],
) -> dict[str, Any]:
    """The status as a JSON-ready dict.

    ``connections`` counts open TCP connections by kind (``listener``, ``waiting``, ``relay``,
    ``handshake``); live relayed pairs are the relay legs halved.
    """
    config = broker.config
    hcs = []
    for hc in sorted(config.hybrid_connections.values(), key=lambda h: h.name.lower()):
        hcs.append(
            {
                "name": hc.name,
                "requires_client_authorization": hc.requires_client_authorization,
                "listeners": broker.listener_count(hc.name),
                "rules": sorted(rule.name for rule in hc.rules),
            }
        )
    live = {kind: int(count) for kind, count in sorted(connections.items()) if kind != "closed"}
    return {
        "status": "ok",
        "service": "hyco_proto relay emulator",
        "version": __version__,
        "time": datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "namespace": config.namespace,
        "strict": config.strict,
        "max_listeners": config.max_listeners,
        "token_grace": config.token_grace,
        "accept_timeout": config.accept_timeout,
        "auto_expiry": config.auto_expiry,
        "max_control_message": config.max_control_message,
        "validate_text": config.validate_text,
        "connections": live,
        "live_relayed_pairs": live.get("relay", 0) // 2,
        "counters": asdict(stats),
        "hybrid_connections": hcs,
    }


def status_response_body(
    *,
    now: float,
    stats: ServiceStats,
    broker: RelayBroker,
    connections: Mapping[str, int],
) -> bytes:
    """:func:`status_document` as indented UTF-8 JSON with a final newline."""
    doc = status_document(now=now, stats=stats, broker=broker, connections=connections)
    return (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode("utf-8")


def _label(value: str) -> str:
    # Prometheus label values escape backslash, double quote and line feed.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_response_body(
    *,
    now: float,
    stats: ServiceStats,
    broker: RelayBroker,
    connections: Mapping[str, int],
) -> bytes:
    """The counters in the Prometheus text format (``GET /metrics``)."""
    lines: list[str] = []

    def family(name: str, kind: str, text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

    per_hc: dict[str, int] = {}
    for record in broker.registry.all_listeners():
        if not record.closing:  # being closed by the service: no longer a listener
            per_hc[record.hc.name] = per_hc.get(record.hc.name, 0) + 1
    family("hyco_listeners", "gauge", "Connected listeners per hybrid connection.",
           [(f'{{hybrid_connection="{_label(name)}"}}', count)
            for name, count in sorted(per_hc.items())])
    live = {k: v for k, v in connections.items() if k != "closed"}
    family("hyco_connections", "gauge", "Open TCP connections by kind.",
           [(f'{{kind="{_label(kind)}"}}', count) for kind, count in sorted(live.items())])
    family("hyco_relayed_pairs_live", "gauge", "Relayed WebSocket pairs now open.",
           [("", live.get("relay", 0) // 2)])
    for name, text in (("listeners_opened", "Listener control channels opened."),
                       ("relayed_pairs", "WebSocket pairs joined."),
                       ("messages_relayed", "Messages relayed."),
                       ("bytes_relayed", "Payload bytes relayed."),
                       ("rejects", "Senders rejected by a listener."),
                       ("auth_failures", "Requests refused for their token."),
                       ("handshake_errors", "Malformed or refused handshakes."),
                       ("http_requests", "Relayed HTTP requests routed to a listener."),
                       ("http_bytes_relayed", "Body bytes of relayed HTTP requests and "
                                              "responses.")):
        metric = "listeners" if name == "listeners_opened" else name
        family(f"hyco_{metric}_total", "counter", text, [("", getattr(stats, name))])
    return ("\n".join(lines) + "\n").encode("utf-8")


_TRACKING = re.compile(r"TrackingId:([^,\s]+)")


@dataclass(slots=True)
class _Window:
    start: float
    logged: int = 0
    suppressed: int = 0


@dataclass(slots=True)
class RefusalLog:
    """Log refused handshakes with their tracking id and client address, throttled per
    (client address, status, path) key and per client address.

    At most ``burst`` lines per key and ``address_burst`` per client address per ``window``
    seconds; the rest are counted and reported in one line when the next window opens. So one
    noisy client (or one trying thousands of names) cannot silence the refusals of another.
    Time comes from the caller (sans-IO).
    """

    burst: int = 5
    window: float = 10.0
    level: int = logging.INFO
    address_burst: int = 20
    _windows: dict[tuple[str, int, str], _Window] = field(default_factory=dict)

    def _window(self, now: float, key: tuple[str, int, str], what: str) -> _Window:
        win = self._windows.get(key)
        if win is None or not 0 <= now - win.start < self.window:  # clocks may step back
            if win is not None and win.suppressed:
                logger.log(
                    self.level,
                    "%d more refusals %s in the last %.0f s were not logged",
                    win.suppressed, what, self.window,
                )
            if len(self._windows) > 4096:
                self._windows.clear()  # bounded memory whatever the clients try
            win = self._windows[key] = _Window(now)
        return win

    def refused(self, now: float, status: int, target: str, description: str, *,
                remote: tuple[str, int] | None = None, tracking: str | None = None,
                event: str = "refused") -> None:
        """Record one refusal of a request for ``target`` with ``status`` and ``description``
        (the relay's status description, which carries the ``TrackingId``) from ``remote``;
        ``event`` is ``refused`` or ``handshake-failed`` (malformed request, timeout)."""
        path = split_target(target)[0]
        address = remote[0] if remote is not None else "-"
        client = client_text(remote)
        if tracking is None:
            found = _TRACKING.search(description)
            tracking = found.group(1) if found else "-"
        # The path, the description and a tracking id may quote the client: escaped.
        path, description, tracking = printable(path), printable(description), printable(tracking)
        per_address = self._window(now, (address, 0, ""), f"from {address}")
        win = self._window(now, (address, status, path.lower()),
                           f"with {status} for {path} from {address}")
        if per_address.logged >= self.address_burst:
            per_address.suppressed += 1
        elif win.logged < self.burst:
            win.logged += 1
            per_address.logged += 1
            # status 0: no HTTP status, the TLS handshake failed (RelayService.tls_failed)
            what = f"{path} with {status}" if status else path
            logger.log(self.level, "%s %s: client=%s tracking=%s %s", event, what, client,
                       tracking, description,
                       extra={"event": event, "client": client, "tracking": tracking,
                              "what": f"{path} {status}" if status else path,
                              "why": description, **({"status": status} if status else {})})
        else:
            win.suppressed += 1
