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
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from .._syntax import split_target
from .._text import printable
from .._version import __version__
from .._wallclock import utc_text
from .events import client_text

if TYPE_CHECKING:
    from .broker import RelayBroker
    from .stats import ServiceStats

__all__ = [
    "METRICS_CONTENT_TYPE",
    "RECENT_REFUSALS",
    "STATUS_PATHS",
    "RecentRefusal",
    "RefusalLog",
    "is_status_target",
    "metrics_response_body",
    "service_endpoint",
    "status_document",
    "status_response_body",
    "utc_text",
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
        "time": utc_text(now),
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


def _number(value: float) -> str:
    """A sample's value in the Prometheus text format: integers in full, others as ``repr``."""
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


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
        # Whole numbers in full (``:g`` would write 9,393,932 as 9.39393e+06).
        lines.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)

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
                       ("messages_relayed", "WebSocket data messages relayed whole."),
                       ("frames_relayed", "WebSocket frames relayed (each fragment and each "
                                          "ping, pong and close frame counts)."),
                       ("bytes_relayed", "Payload bytes relayed."),
                       ("rejects", "Senders rejected by a listener."),
                       ("auth_failures", "Requests refused for their token."),
                       ("handshake_errors", "Malformed or refused handshakes."),
                       ("http_requests", "Relayed HTTP requests routed to a listener."),
                       ("http_bytes_relayed", "Body bytes of relayed HTTP requests and "
                                              "responses.")):
        metric = "listeners" if name == "listeners_opened" else name
        family(f"hyco_{metric}_total", "counter", text, [("", getattr(stats, name))])
    family("hyco_refusals_total", "counter",
           "Requests answered with an HTTP error status (a listener's reject included).",
           [(f'{{status="{status}"}}', count) for status, count in sorted(stats.refusals.items())])
    return ("\n".join(lines) + "\n").encode("utf-8")


_TRACKING = re.compile(r"TrackingId:([^,\s]+)")


_Key = tuple[str, int, str]  # (client address, status, lower-cased path); (address, 0, "")


@dataclass(slots=True)
class _Window:
    start: float
    path: str = ""
    logged: int = 0
    suppressed: int = 0
    first: float = 0.0  # when the first and last suppressed refusal came
    last: float = 0.0


def _clock(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%H:%M:%S")


#: Refusals :class:`RefusalLog` keeps for the web view (the newest; throttled ones included).
RECENT_REFUSALS = 50


@dataclass(frozen=True, slots=True)
class RecentRefusal:
    """One refusal as the web view shows it (client text already escaped)."""

    time: float
    client: str
    status: int  # 0: no HTTP status (a failed TLS handshake)
    what: str  # the path (never the query: it may hold a token)
    reason: str
    tracking: str
    event: str


@dataclass(slots=True)
class RefusalLog:
    """Log refused handshakes with their tracking id and client address, throttled per
    (client address, status, path) key and per client address.

    At most ``burst`` lines per key and ``address_burst`` per client address per ``window``
    seconds; the rest are counted and reported in one ``refusals-not-logged`` line when the
    window ends: at :meth:`next_deadline` (the service's timer calls :meth:`handle_timer`), or
    at the next refusal of that key, whichever comes first. So one noisy client (or one trying
    thousands of names) cannot silence the refusals of another, and no count is lost when no
    further refusal comes. Time comes from the caller (sans-IO; wall-clock seconds, as the
    summary names the UTC times of the first and last refusal it counts).
    """

    burst: int = 5
    window: float = 10.0
    level: int = logging.INFO
    address_burst: int = 20
    _windows: dict[_Key, _Window] = field(default_factory=dict)
    #: Keys whose window holds suppressed refusals, with when that window ends.
    _pending: dict[_Key, float] = field(default_factory=dict)
    #: Refusals by HTTP status, throttled or not (``ServiceStats.refusals``); TLS handshake
    #: failures (status 0) are not here, they have no status.
    counts: dict[int, int] = field(default_factory=dict)
    #: The last :data:`RECENT_REFUSALS` refusals, oldest first, whether logged or throttled.
    recent: deque[RecentRefusal] = field(default_factory=lambda: deque(maxlen=RECENT_REFUSALS))

    def next_deadline(self) -> float | None:
        """When a window with suppressed refusals ends (its summary line is due), or None."""
        return min(self._pending.values()) if self._pending else None

    def handle_timer(self, now: float) -> None:
        """Write the summary of every window that has ended."""
        for key, due in list(self._pending.items()):
            if now >= due:
                win = self._windows.pop(key, None)
                if win is not None:
                    self._summary(key, win)
                self._pending.pop(key, None)

    def _summary(self, key: _Key, win: _Window) -> None:
        """The ``refusals-not-logged`` line of a window (if it suppressed any)."""
        self._pending.pop(key, None)
        count = win.suppressed
        if not count:
            return
        address, status, _ = key
        if not win.path:  # the per-address window: refusals of any kind
            what, scope = "*", f"from {address}"
        elif status:
            what, scope = f"{win.path} {status}", f"with {status} for {win.path} from {address}"
        else:  # status 0: no HTTP status, the TLS handshake failed
            what, scope = win.path, f"for {win.path} from {address}"
        first, last = _clock(win.first), _clock(win.last)
        if count == 1:
            why = f"1 more refusal {scope} at {first} UTC was not logged"
        else:
            span = f"at {first} UTC" if first == last else f"between {first} and {last} UTC"
            why = f"{count} more refusals {scope} {span} were not logged"
        logger.log(self.level, "%s", why,
                   extra={"event": "refusals-not-logged", "client": address, "tracking": "-",
                          "what": what, "why": why, "count": count,
                          **({"status": status} if status else {})})

    def _window(self, now: float, key: _Key, path: str) -> _Window:
        win = self._windows.get(key)
        if win is None or not 0 <= now - win.start < self.window:  # clocks may step back
            if win is not None:
                self._summary(key, win)
            if len(self._windows) > 4096:
                # Bounded memory whatever the clients try: report what was counted, forget.
                for old in list(self._pending):
                    found = self._windows.get(old)
                    if found is not None:
                        self._summary(old, found)
                self._windows.clear()
                self._pending.clear()
            win = self._windows[key] = _Window(now, path)
        return win

    def _suppress(self, now: float, key: _Key, win: _Window) -> None:
        if not win.suppressed:
            win.first = now
        win.suppressed += 1
        win.last = now
        self._pending[key] = win.start + self.window

    def refused(self, now: float, status: int, target: str, description: str, *,
                remote: tuple[str, int] | None = None, tracking: str | None = None,
                event: str = "refused") -> None:
        """Record one refusal of a request for ``target`` with ``status`` and ``description``
        (the relay's status description, which carries the ``TrackingId``) from ``remote``;
        ``event`` is ``refused`` or ``handshake-failed`` (malformed request, timeout)."""
        if status:
            self.counts[status] = self.counts.get(status, 0) + 1
        path = split_target(target)[0]
        address = remote[0] if remote is not None else "-"
        client = client_text(remote)
        if tracking is None:
            found = _TRACKING.search(description)
            tracking = found.group(1) if found else "-"
        # The path, the description and a tracking id may quote the client: escaped.
        path, description, tracking = printable(path), printable(description), printable(tracking)
        self.recent.append(RecentRefusal(now, client, status, path[:200], description[:300],
                                         tracking[:100], event))
        address_key, key = (address, 0, ""), (address, status, path.lower())
        per_address = self._window(now, address_key, "")
        win = self._window(now, key, path)
        if per_address.logged >= self.address_burst:
            self._suppress(now, address_key, per_address)
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
            self._suppress(now, key, win)
