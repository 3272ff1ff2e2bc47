"""The emulator's live web view (sans-IO): ``GET /`` and the event stream ``GET /$events``.

``/`` answers one self-contained HTML page (:mod:`~hyco_proto.service.webview_page`: inline CSS
and script, no external address). The page opens ``/$events``, a Server-Sent Events stream
(``text/event-stream``, chunked; close-delimited for an HTTP/1.0 client): a ``snapshot`` event
with the whole state as JSON when it opens, then another on the service's timer every
:data:`TICK` seconds when the state has changed, and a comment line after :data:`HEARTBEAT`
seconds of silence. A snapshot carries timestamps (seconds since the epoch), not ages: the page
works out the ages, so time passing alone changes nothing and sends nothing.

The snapshot reads what the service already keeps — the broker's registry, each relayed leg's
forwarder counters (``payload_bytes``), each relayed HTTP request's body counters, the Web PubSub
hubs and the refusal log's recent refusals — so watching adds nothing to the byte path; a tick
walks the connections once. Each section is cut at :data:`MAX_ROWS` rows, nested rows included,
and :data:`MAX_NESTED` per parent (the counts say how many there are in all).

At most :data:`MAX_WATCHERS` streams are open at once (503 beyond). A driver that reports its
write buffer through ``RelayService.writing_paused`` makes a slow watcher skip updates while its
buffer is over the high-water mark; it gets the latest snapshot once the buffer drains (a
snapshot replaces the previous one, so nothing is lost by skipping). Like ``/$status`` and
``/metrics``, the web view needs no credentials: the emulator is a local development tool.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Protocol

from .._text import printable
from .._version import __version__
from .events import client_text
from .front import FrontDoor, RequestHead
from .handler import Connection, ConnectionKind, Handler, ServiceCore
from .http_relay import HttpExchange
from .legs import RelayLeg
from .relay import ControlChannel
from .status import utc_text
from .webview_page import PAGE

if TYPE_CHECKING:
    from .stats import ServiceStats
    from .webpubsub import WebPubSubService

__all__ = [
    "EVENTS_PATH",
    "HEARTBEAT",
    "MAX_NESTED",
    "MAX_ROWS",
    "MAX_WATCHERS",
    "TICK",
    "EventStream",
    "WebView",
    "WebViewRoute",
    "WebViewSource",
    "build_snapshot",
]

EVENTS_PATH = "/$events"
#: Event streams open at once; more get 503.
MAX_WATCHERS = 32
#: Seconds between two looks at the state (an event goes out only when it changed).
TICK = 0.5
#: Seconds of silence after which a stream gets a comment line (proxies, dead peers).
HEARTBEAT = 15.0
#: Rows per section of a snapshot (hybrid connections and their listeners, pairs, requests,
#: hubs and their groups), nested rows included.
MAX_ROWS = 200
#: Nested rows per parent (listeners of a hybrid connection, groups of a hub).
MAX_NESTED = 20
#: What the stream's client waits before reconnecting (the SSE ``retry`` field), ms.
RETRY_MS = 2000
_NAME = 200  # characters of a name or path shown


def _path(head: RequestHead) -> str:
    # ``/`` exactly; ``/$events`` as ``/$status``: case-insensitive, a trailing '/' ignored.
    return "/" if head.path == "/" else head.path.rstrip("/").lower()


def _text(value: str, limit: int = _NAME) -> str:
    return printable(value, limit)


class WebViewSource(ServiceCore, Protocol):
    """What the snapshot reads of the service (``RelayService`` is one)."""

    webpubsub: WebPubSubService | None
    #: Changes whenever something that may change the state happened.
    activity: int

    def live_handlers(self) -> Iterator[Handler]:
        """The handlers of connections the service has not closed."""
        ...

    def exchanges_in_flight(self) -> Iterable[HttpExchange]:
        """The relayed HTTP requests in flight."""
        ...

    def counters(self) -> ServiceStats:
        """``stats``, counted up to now."""
        ...


def _stamp(when: float) -> float:
    # Seconds since the epoch (ms precision): the page works out ages from the snapshot's time,
    # so a snapshot does not change just because a second went by.
    return round(when, 3)


class _Budget:
    """Rows a section of the snapshot may still take (a parent and each nested row count)."""

    def __init__(self, rows: int) -> None:
        self.left = rows

    def nested(self, total: int) -> int:
        """How many of a parent's ``total`` nested rows fit, once the parent itself is taken."""
        self.left -= 1
        shown = max(0, min(total, MAX_NESTED, self.left))
        self.left -= shown
        return shown


def build_snapshot(service: WebViewSource, now: float) -> dict[str, Any]:
    """The state the web view shows, as a JSON-ready dict (without the time: see
    :meth:`WebView.payload`). Each section holds at most :data:`MAX_ROWS` rows in all (a
    hybrid connection and each of its listeners is a row, so is a hub and each of its groups),
    at most :data:`MAX_NESTED` nested rows per parent; counts say how many there are in all."""
    broker = service.broker
    records: dict[str, list[Any]] = {}
    names = {hc.name.lower(): hc.name for hc in broker.config.hybrid_connections.values()}
    for record in broker.registry.all_listeners():
        names.setdefault(record.hc.name.lower(), record.hc.name)
        if not record.closing:  # being closed by the service: no longer a listener
            records.setdefault(record.hc.name.lower(), []).append(record)
    hcs = []
    budget = _Budget(MAX_ROWS)
    for key in sorted(names):
        if budget.left <= 0:
            break
        mine = sorted(records.get(key, []), key=lambda r: (r.opened_at, r.id))
        listeners = []
        for record in mine[:budget.nested(len(mine))]:
            channel = service.lookup(f"listener:{record.id}")
            address = (client_text(channel.conn.remote) if isinstance(channel, ControlChannel)
                       else "-")
            listeners.append({"id": _text(record.id), "address": address,
                              "opened": _stamp(record.opened_at)})
        hcs.append({"name": _text(names[key]), "listener_count": len(mine),
                    "listeners": listeners})

    # One walk over the connections: their count by kind, and the relayed pairs.
    kinds: dict[ConnectionKind, int] = {}
    pairs: list[dict[str, Any]] = []
    pair_count = 0
    relay = ConnectionKind.RELAY
    for handler in service.live_handlers():
        kind = handler.kind
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind is not relay or not (isinstance(handler, RelayLeg) and handler.from_sender):
            continue
        pair_count += 1
        if len(pairs) >= MAX_ROWS:
            continue
        other = service.handler(handler.peer) if handler.peer is not None else None
        listener_leg = other if isinstance(other, RelayLeg) else None
        pairs.append({
            "id": _text(handler.tracking),
            "hc": _text(handler.hc_name),
            "sender": client_text(handler.conn.remote),
            "listener": client_text(listener_leg.conn.remote) if listener_leg else "-",
            "listener_id": _text(handler.listener_id),
            "bytes_up": handler.fwd.payload_bytes,
            "bytes_down": listener_leg.fwd.payload_bytes if listener_leg else 0,
            "joined": _stamp(handler.joined),
        })
    pairs.sort(key=lambda row: (row["joined"], row["id"]))
    kinds.pop(ConnectionKind.CLOSED, None)

    requests: list[dict[str, Any]] = []
    request_count = 0
    for exchange in service.exchanges_in_flight():
        request_count += 1
        if len(requests) >= MAX_ROWS:
            continue
        head = exchange.response_head
        requests.append({
            "id": _text(exchange.id),
            "hc": _text(exchange.pending.hc.name),
            "method": _text(exchange.head.method, 20),
            "path": _text(exchange.head.path),
            "client": client_text(exchange.door.conn.remote),
            "status": head.status_code if head is not None else None,
            "bytes_in": exchange.request_bytes,
            "bytes_out": exchange.response_bytes,
            "started": _stamp(exchange.started),
        })
    requests.sort(key=lambda row: (row["started"], row["id"]))

    hubs = []
    wps = service.webpubsub
    if wps is not None:
        budget = _Budget(MAX_ROWS)
        for name in sorted(wps.hubs):
            if budget.left <= 0:
                break
            hub = wps.hubs[name]
            sizes = hub.group_sizes()
            groups = [{"name": _text(group), "members": sizes[group]}
                      for group in sorted(sizes)[:budget.nested(len(sizes))]]
            hubs.append({"name": _text(name), "connections": hub.connection_count(),
                         "group_count": len(sizes), "groups": groups})

    refusals = [
        {"time": utc_text(r.time), "client": r.client, "status": r.status, "what": r.what,
         "reason": r.reason, "tracking": r.tracking, "event": r.event}
        for r in reversed(service.refusal_log.recent)  # newest first
    ]
    return {
        "version": __version__,
        "namespace": _text(broker.config.namespace),
        "connections": dict(sorted((kind.value, n) for kind, n in kinds.items())),
        "counters": asdict(service.counters()),
        "hybrid_connections": hcs,
        "hybrid_connection_count": len(names),
        "pairs": pairs,
        "pair_count": pair_count,
        "requests": requests,
        "request_count": request_count,
        "hubs": hubs,
        "hub_count": len(wps.hubs) if wps is not None else 0,
        "webpubsub": wps is not None,
        "refusals": refusals,
        "max_rows": MAX_ROWS,
        "max_nested": MAX_NESTED,
    }


def _event(name: str, data: str) -> bytes:
    # One `data:` line: JSON escapes every CR and LF inside its strings.
    return f"event: {name}\ndata: {data}\n\n".encode()


class EventStream(Handler):
    """One watcher's ``GET /$events`` connection, after its response head."""

    kind = ConnectionKind.WATCHER

    def __init__(self, svc: ServiceCore, conn: Connection, view: WebView, *,
                 chunked: bool, now: float) -> None:
        super().__init__(svc, conn)
        self.view = view
        self.chunked = chunked
        #: The driver's write buffer for it is over its high-water mark: skip updates.
        self.paused = False
        #: The snapshot last written (without its time); "" forces the next one out.
        self.sent = ""
        self.last_write = now

    def receive_data(self, now: float, data: bytes | memoryview) -> None:
        """A client has nothing more to say on an event stream: its bytes are dropped."""

    def connection_lost(self, now: float) -> None:
        self.view.forget(self.id)

    def write(self, now: float, data: bytes) -> None:
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self.svc.send(self.id, data)
        self.last_write = now

    def shutdown(self, now: float, code: int, reason: str) -> None:
        if self.chunked and self.kind is ConnectionKind.WATCHER:
            self.svc.send(self.id, b"0\r\n\r\n")  # the stream ends cleanly
        self.close(now)


class WebView:
    """The web view's event streams and their timer (one per service)."""

    def __init__(self, service: WebViewSource, *, max_watchers: int = MAX_WATCHERS,
                 tick: float = TICK, heartbeat: float = HEARTBEAT) -> None:
        self.service = service
        self.max_watchers = max_watchers
        self.tick = tick
        self.heartbeat = heartbeat
        self.watchers: dict[int, EventStream] = {}
        self._next_tick: float | None = None
        #: The last snapshot built: (when, the service's activity then, its JSON).
        self._built: tuple[float, int, str] | None = None

    def payload(self, now: float, *, opening: bool = False) -> tuple[str, str]:
        """``(state, event data)``: the snapshot's JSON without and with the time ``now`` (the
        state decides whether anything changed).

        The last snapshot is reused while the service's ``activity`` has not changed since it
        was built, for at most :data:`HEARTBEAT` seconds (a safety net for a change the counter
        missed): its timestamps stay true, only ages would have changed. A stream ``opening``
        also reuses one built less than a tick ago (a burst of streams opening builds one)."""
        built = self._built
        age = now - built[0] if built is not None else -1.0
        if built is not None and age >= 0 and (
                (age < self.heartbeat and built[1] == self.service.activity)
                or (opening and age < self.tick)):
            state = built[2]
        else:
            activity = self.service.activity
            state = json.dumps(build_snapshot(self.service, now), separators=(",", ":"),
                               ensure_ascii=False)
            self._built = (now, activity, state)
        return state, f'{{"time":{_stamp(now)},{state[1:]}'

    def open(self, door: FrontDoor, head: RequestHead, now: float) -> None:
        """Answer ``GET`` / ``HEAD /$events``."""
        svc = self.service
        headers = [("Content-Type", "text/event-stream; charset=utf-8"),
                   ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")]
        if head.method == "HEAD":
            if door.start_response(now, 200, headers, "OK"):
                door.end_response(now)
            return
        if len(self.watchers) >= self.max_watchers:
            why = (f"the web view serves {self.max_watchers} event streams at once; "
                   "close one (another browser tab) and retry")
            svc.refusal_log.refused(now, 503, head.path, why, remote=door.conn.remote,
                                    tracking=f"conn-{door.id}")
            door.respond(now, 503, f"Service Unavailable: {why}.", close=True,
                         headers=[("Retry-After", "5")])
            return
        chunked = head.http_version != "1.0"  # an HTTP/1.0 stream ends with the connection
        framing = "Transfer-Encoding: chunked" if chunked else "Connection: close"
        lines = [f"{name}: {value}" for name, value in headers]
        door.send_raw(("HTTP/1.1 200 OK\r\n" + "\r\n".join([*lines, framing]) + "\r\n\r\n")
                      .encode("ascii"), close=False)
        stream = EventStream(svc, door.conn, self, chunked=chunked, now=now)
        svc.switch(door.id, stream)
        self.watchers[door.id] = stream
        state, data = self.payload(now, opening=True)
        stream.write(now, f"retry: {RETRY_MS}\n\n".encode() + _event("snapshot", data))
        stream.sent = state
        if self._next_tick is None:
            self._next_tick = now + self.tick

    def forget(self, conn_id: int) -> None:
        """A watcher's connection is gone."""
        self.watchers.pop(conn_id, None)
        if not self.watchers:
            self._next_tick = None

    def writing_paused(self, conn_id: int, paused: bool) -> None:
        stream = self.watchers.get(conn_id)
        if stream is not None:
            stream.paused = paused
            if not paused:
                stream.sent = ""  # the latest state goes out at the next tick

    def next_deadline(self) -> float | None:
        return self._next_tick

    def handle_timer(self, now: float) -> None:
        due = self._next_tick
        if due is None or now < due:
            return
        self._next_tick = now + self.tick if self.watchers else None
        built: tuple[str, str] | None = None
        for stream in list(self.watchers.values()):
            if stream.paused or stream.kind is not ConnectionKind.WATCHER:
                continue
            if built is None:
                built = self.payload(now)
            state, data = built
            if state != stream.sent:
                stream.write(now, _event("snapshot", data))
                stream.sent = state
            elif now - stream.last_write >= self.heartbeat:
                stream.write(now, b": keep-alive\n\n")


class WebViewRoute:
    """``/`` (the page) and ``/$events`` (its event stream): GET and HEAD."""

    def __init__(self, svc: ServiceCore, view: WebView) -> None:
        self.svc = svc
        self.view = view

    def match(self, head: RequestHead) -> bool:
        return _path(head) in ("/", EVENTS_PATH) and not head.is_upgrade

    def handle(self, door: FrontDoor, head: RequestHead, now: float) -> None:
        if door.refuse_rebound_host(now, head) or door.refuse_method(now, head):
            return
        if _path(head) == EVENTS_PATH:
            self.view.open(door, head, now)
            return
        door.respond(now, 200, body=PAGE, headers=[
            ("Content-Type", "text/html; charset=utf-8"),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            # Nothing from elsewhere: the page and its stream come from this service only.
            ("Content-Security-Policy",
             "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
             "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
             "frame-ancestors 'none'"),
            ("Referrer-Policy", "no-referrer"),
        ])
