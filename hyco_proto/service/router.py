"""The relay service as a sans-IO router: TCP connections in, bytes out.

``RelayService`` owns the connection table, the output and the timers. Every connection starts
at the :class:`~hyco_proto.service.front.FrontDoor`, which reads each HTTP request once and hands
it to the first route that matches, in order:

1. :class:`~hyco_proto.service.relay.HybridConnectionsRoute` — WebSocket upgrades under
   ``/$hc/`` (listen, connect, accept, and the HTTP relay's request rendezvous);
2. :class:`ServiceEndpointsRoute` — the service's own ``/$status`` and ``/metrics``;
3. :class:`~hyco_proto.service.webview.WebViewRoute` — the live web view, ``/`` and its event
   stream ``/$events`` (on the Web PubSub port too);
4. :class:`~hyco_proto.service.http_relay.HttpRelayRoute` — any other request is relayed HTTP.

Routes switch the connection to a handler for its kind (control channel, waiting sender, relayed
leg, request rendezvous) or answer through the door. Its driver (the asyncio server, or an
in-memory pair in tests) only moves bytes:

    conn = service.connection_made(now, remote=("127.0.0.1", 50000))
    service.receive_data(now, conn, data)          # bytes read from that TCP connection, or
    service.receive_into(now, conn, buffer, start, end)  # read into a lent buffer (see there)
    service.forward_into(now, conn, buffer, start, end)  # the same, relayed data's shortcut
    for conn, data in service.data_to_send():      # b"" means: close that TCP connection;
        ...                                        # views of a lent buffer: write them now
    for conn, paused in service.reading_changes(): # stop / resume reading that connection
        ...
    service.writing_paused(conn, paused)           # optional: its write buffer is full / not
    service.handle_timer(now) at service.next_deadline()

Decisions (auth, listener choice, accept/reject, token expiry, which request a response answers)
are the broker's (hybrid-connections-wire §8).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence

from ..handshake import HandshakeRequest, ServerHandshake
from .broker import Action, CloseListener, FailSender, RelayBroker, SendControl
from .config import ServiceConfig
from .events import log_event
from .front import FrontDoor, RequestHead, Route
from .handler import Connection, ConnectionKind, Handler
from .http_relay import RESPONSE_TIMEOUT, HttpExchange, HttpRelayRoute, open_request_rendezvous
from .legs import RelayLeg
from .relay import BY_RELAY, ControlChannel, HybridConnectionsRoute, WaitingSender, relay_path
from .stats import ServiceStats
from .status import RefusalLog, service_endpoint
from .webpubsub import WebPubSubRoute, WebPubSubService
from .webpubsub_events import OutboundCall
from .webpubsub_rest import WebPubSubRestRoute
from .webview import WebView, WebViewRoute

__all__ = ["ConnectionKind", "RelayService", "ServiceEndpointsRoute", "ServiceStats"]


class ServiceEndpointsRoute:
    """``GET /$status`` (health JSON) and ``GET /metrics`` (Prometheus text)."""

    def __init__(self, service: RelayService) -> None:
        self.service = service

    def match(self, head: RequestHead) -> bool:
        return service_endpoint("GET", head.target) is not None

    def handle(self, door: FrontDoor, head: RequestHead, now: float) -> None:
        if door.refuse_rebound_host(now, head) or door.refuse_method(now, head):
            return
        endpoint = service_endpoint("GET", head.target)
        assert endpoint is not None
        content_type, render = endpoint
        service = self.service
        body = render(now=now, stats=service.counters(), broker=service.broker,
                      connections=service.connection_counts(exclude=door.id))
        door.respond(now, 200, headers=[("Content-Type", content_type),
                                        ("Cache-Control", "no-store")], body=body)


class RelayPathOnHubRoute:
    """``/$hc/...`` asked of the Web PubSub port (a relay tool given the wrong port): 404 that
    says where Hybrid Connections are served, instead of a bare ``Not found.``."""

    def __init__(self, service: RelayService) -> None:
        self.service = service

    def match(self, head: RequestHead) -> bool:
        return relay_path(head.path) is not None

    def handle(self, door: FrontDoor, head: RequestHead, now: float) -> None:
        service = self.service
        relay = service.addresses.get("relay")
        text = ("Not a Web PubSub address: this is the emulator's Web PubSub port; Hybrid "
                "Connections (/$hc/...) are served on its relay port"
                + (f", {relay}." if relay else " (the address `hyco emulator` prints as "
                   "'listening on'; 9090 by default)."))
        service.refusal_log.refused(now, 404, head.path, text, remote=door.conn.remote)
        door.respond(now, 404, text, reason=text, close=True, headers=BY_RELAY)


#: Watched connections from which ``next_deadline`` keeps a heap instead of asking each.
_HEAP_FROM = 16

#: A relayed leg's hot path (``RelayService.lane``): ``forward(now, buffer, start, end)``.
Lane = Callable[[float, memoryview, int, int], "memoryview | None"]
#: A relayed leg's read and write in one call (``RelayService.relay_lane``):
#: ``step(fd, buffer, start, out_fd)``.
RelayStep = Callable[[int, memoryview, int, int], "tuple[int, int, int] | bool | None"]


class RelayService:
    """Sans-IO relay service: see the module docstring for the driving loop.

    ``config``: what it serves (:class:`ServiceConfig`: rules, hybrid connections, accept
    timeout, listener limits); ``broker``: the rendezvous broker (default: one made from
    ``config``); ``webpubsub``: a Web PubSub hub service served alongside.

    Time limits, in seconds: ``handshake_timeout`` (10) for a client's whole request head, else
    408; ``half_close_timeout`` (3600) for the other leg of a relayed pair after one leg's close
    passed, then both are dropped; ``close_timeout`` (10) for a peer's close after the service
    closed a connection itself; ``http_timeout`` (60) for a listener to start its response to a
    relayed HTTP request, and for a response to stall, else 504. ``max_frame_size``: the largest
    data frame relayed (0: no limit), a bigger one fails its leg with 1009.
    """

    def __init__(
        self,
        config: ServiceConfig | None = None,
        *,
        broker: RelayBroker | None = None,
        handshake_timeout: float = 10.0,
        half_close_timeout: float = 3600.0,
        close_timeout: float = 10.0,
        max_frame_size: int = 0,
        http_timeout: float = RESPONSE_TIMEOUT,
        webpubsub: WebPubSubService | None = None,
    ) -> None:
        self.broker = broker or RelayBroker(config)
        #: Connections whose handler has (or had) a deadline (``handle_timer`` asks them), and
        #: the heap behind ``next_deadline`` (see there).
        self._timed: set[int] = set()
        self._heap: list[tuple[float, int]] = []
        self._entry: dict[int, float] = {}
        self._dirty: set[int] = set()
        self._heap_mode = False
        self._handlers: dict[int, Handler] = {}
        #: Seconds a client has to send a complete request head.
        self.handshake_timeout = handshake_timeout
        #: After one leg's close passed, the other leg may keep sending this long (half-close).
        self.half_close_timeout = half_close_timeout
        #: After the relay closed a connection itself, seconds to wait for the peer's close.
        self.close_timeout = close_timeout
        #: Largest data frame relayed (0: no limit); bigger ones fail the leg with 1009.
        self.max_frame_size = max_frame_size
        #: Seconds a listener has to start answering a relayed HTTP request, and a response may
        #: stay idle (60 s in Azure, not configurable there; hybrid-connections-wire §4.7).
        self.http_timeout = http_timeout
        #: The two timeouts handler deadlines are counted with when asked, as the heap's
        #: entries were (``_handlers_due``).
        self._timeouts = (handshake_timeout, http_timeout)
        #: Those two as ``next_deadline`` last saw them (``connection_deadline``).
        self._asked_timeouts = self._timeouts
        #: Bytes a waiting sender may send before its 101 (they are relayed once it is joined).
        self.max_early_bytes = 65536
        self.stats = ServiceStats()
        #: Throttled log of refused requests (with their TrackingId).
        self.refusal_log = RefusalLog(counts=self.stats.refusals)
        #: The live web view: ``GET /`` and its event stream ``GET /$events`` (webview.py).
        self.webview = WebView(self)
        webview = WebViewRoute(self, self.webview)
        #: The routes, in order; the first that matches a request answers it.
        self.routes: list[Route] = [
            HybridConnectionsRoute(self, self._open_request),
            ServiceEndpointsRoute(self),
            webview,
            HttpRelayRoute(self),
        ]
        #: The Web PubSub hubs (work in progress), served to connections made with
        #: ``service="webpubsub"`` — on a port of their own, since ``/client/…`` would shadow a
        #: hybrid connection named ``client``.
        self.webpubsub = webpubsub
        self.route_sets: dict[str, list[Route]] = {"relay": self.routes}
        if webpubsub is not None:
            # /$status and /metrics on the hub port too (the same emulator, the same counters),
            # and /$hc/ paths told where they belong.
            self.route_sets["webpubsub"] = [WebPubSubRestRoute(self, webpubsub),
                                            WebPubSubRoute(self, webpubsub),
                                            ServiceEndpointsRoute(self), RelayPathOnHubRoute(self),
                                            webview]
        #: Base addresses by route set, as clients reach them (``"relay"``: ``ws://host:port``,
        #: ``"webpubsub"``: ``http://host:port``): a driver that knows its bound ports sets them,
        #: and a request at the wrong port is told the right one. Empty: refusals name the port
        #: without its address.
        self.addresses: dict[str, str] = {}
        #: Host names (lower case) the service's own pages answer besides ``localhost``, IP
        #: addresses, the namespace and Azure's names (``FrontDoor.refuse_rebound_host``): a
        #: driver adds the names it was bound by and the machine's own name.
        self.allowed_hosts: set[str] = set()
        #: Bumped by every driver call that may change the state (bytes read, a connection made
        #: or lost, a timer of the service due...): the web view does not look again while it
        #: stays the same.
        self.activity = 0
        self._closed: set[int] = set()  # closed by us, until the driver reports it gone
        self._names: dict[str, int] = {}
        self._exchanges: dict[str, HttpExchange] = {}
        self._next_id = 1
        self._out: list[tuple[int, bytes | memoryview]] = []
        self._reading: dict[int, bool] = {}

    # -- driver API ------------------------------------------------------------------------

    def connection_made(
        self, now: float, remote: tuple[str, int] = ("127.0.0.1", 0), *, scheme: str = "ws",
        service: str = "relay",
    ) -> int:
        """A TCP (or TLS, ``scheme="wss"``) connection was accepted; returns its id.
        ``service`` names the routes it is served by (``"relay"``, or ``"webpubsub"`` when the
        service has Web PubSub hubs)."""
        routes = self.route_sets.get(service)
        if routes is None:
            raise ValueError(f"this service has no {service!r} routes (it has: "
                             f"{', '.join(self.route_sets)})")
        conn = Connection(self._next_id, remote, scheme, now)
        self._next_id += 1
        self.activity += 1
        self._handlers[conn.id] = FrontDoor(self, conn, routes)
        return conn.id

    def receive_data(self, now: float, conn_id: int, data: bytes | memoryview) -> None:
        """Bytes read from a connection. A view may be lent: nothing keeps it after the call."""
        handler = self._handlers.get(conn_id)
        if handler is None or conn_id in self._closed:
            return
        self.activity += 1
        if self._heap_mode and conn_id in self._timed:
            self._dirty.add(conn_id)  # its own input may move its deadline either way
        handler.receive_data(now, data)
        self._run_broker(now)

    def receive_into(self, now: float, conn_id: int, buffer: memoryview, start: int,
                     end: int) -> None:
        """Bytes read into ``buffer[start:end]`` of a writable buffer the driver lends for this
        call, with ``buffer[:start]`` (at least ``FORWARD_HEADROOM`` bytes) as scratch space.

        A relayed leg rewrites its frames in place there (unmasked, headers 4 bytes shorter) and
        queues views of the buffer for its peer instead of copies, so ``data_to_send()`` may then
        hold ``memoryview`` items: the driver writes each (or copies what it could not write)
        before it reuses the buffer. Everything else is as ``receive_data``."""
        handler = self._handlers.get(conn_id)
        if handler is None or conn_id in self._closed:
            return
        self.activity += 1
        if self._heap_mode and conn_id in self._timed:
            self._dirty.add(conn_id)
        handler.receive_into(now, buffer, start, end)
        self._run_broker(now)

    def forward_into(self, now: float, conn_id: int, buffer: memoryview, start: int,
                     end: int) -> tuple[int, memoryview] | None:
        """``receive_into`` with a shortcut for the relay's hot path: when the bytes were plain
        data of a relayed leg (no close, no violation, its peer open) this returns ``(peer,
        view)`` and has queued nothing, set no deadline and changed no reading: the driver
        writes ``view`` (possibly empty) to connection ``peer`` before it reuses the buffer,
        and has no other step to take. Otherwise it returns ``None`` having done what
        ``receive_into`` does, and the driver goes on as after ``receive_into``."""
        handler = self._handlers.get(conn_id)
        if type(handler) is RelayLeg and not self._out and conn_id not in self._closed \
                and handler.kind is ConnectionKind.RELAY:
            self.activity += 1
            fast = handler.forward_into(now, buffer, start, end)
            if fast is not None:  # (its peer is open: a closed leg is no longer RELAY)
                return fast
            self._run_broker(now)  # the usual steps
            return None
        self.receive_into(now, conn_id, buffer, start, end)
        return None

    def _open_legs(self, conn_id: int) -> tuple[RelayLeg, RelayLeg] | None:
        """``(leg, peer)`` when ``conn_id`` is a relayed leg that is open, not closing, and
        paired (what ``lane`` and ``relay_lane`` need), else None."""
        leg = self._handlers.get(conn_id)
        if type(leg) is not RelayLeg or conn_id in self._closed or leg.close_in:
            return None
        peer = leg.other()
        if peer is None:
            return None
        return leg, peer

    def lane(self, conn_id: int) -> tuple[Lane, int] | None:
        """The relay's hot path for a driver that calls it per read: ``(forward, peer)`` for a
        relayed leg, else None. ``forward(now, buffer, start, end)`` is ``forward_into`` for
        this connection with fewer steps (measured: 3.5 µs less CPU per message in the relay):
        it returns the view of re-framed bytes to write to connection ``peer`` when that is all
        that happened, else ``None`` having done what ``receive_into`` does (the driver then
        goes on as after it, and drops the lane: the leg has left plain relaying).

        What passes through a lane is added to ``stats`` at the next ``counters()``, at the
        leg's end, or at its next read through the other calls, not at once."""
        legs = self._open_legs(conn_id)
        if legs is None:
            return None
        leg, peer = legs
        fwd = leg.fwd
        feed_into = fwd.feed_into
        relay = ConnectionKind.RELAY

        def forward(now: float, buffer: memoryview, start: int, end: int) -> memoryview | None:
            # Both legs still relaying (a leg the service closes is CLOSED first: _close_tcp;
            # a lost one too: connection_lost) and nothing queued ahead of these bytes (the
            # current list: data_to_send replaces it).
            if leg.kind is relay and peer.kind is relay and not self._out:
                self.activity += 1
                begin, stop = feed_into(buffer, start, end)
                if not fwd.error_code and fwd.close_code < 0:
                    return buffer[begin:stop]
                leg.fed(now, peer, buffer, begin, stop)  # a close or a violation passed
                self._run_broker(now)
                return None
            self.receive_into(now, conn_id, buffer, start, end)
            return None

        return forward, peer.id

    def relay_lane(self, conn_id: int) -> tuple[RelayStep, Lane, int] | None:
        """``lane`` for a driver whose legs are non-blocking POSIX sockets: ``(step, fed,
        peer)`` for a relayed leg, else None. ``step(fd, buffer, start, out_fd)`` is the whole
        read of this leg's socket ``fd``, its re-framing and its write to the peer's socket
        ``out_fd`` (-1: the peer's transport has bytes queued, the driver writes) in one call to
        the forwarder (``Forwarder.relay``, which the core calls but does no I/O of its own
        around): it returns what that returns, or ``False`` (nothing read) once the leg is no
        longer plainly relaying (the driver then reads the usual way and drops the step).
        When it returns ``(n, begin, stop)`` with ``n > 0``, ``fed(now, buffer, begin, stop)``
        takes the output not sent: the view still to write to ``peer`` when it is plain data,
        else ``None`` after the usual handling of the close or violation that passed (the
        driver goes on as after ``receive_into`` and drops the step). Counted as ``lane``."""
        legs = self._open_legs(conn_id)
        if legs is None:
            return None
        leg, peer = legs
        fwd = leg.fwd
        relay = fwd.relay
        kind = ConnectionKind.RELAY

        def step(fd: int, buffer: memoryview, start: int,
                 out_fd: int) -> tuple[int, int, int] | bool | None:
            # As the lane's forward: both legs still relaying, nothing queued ahead.
            if leg.kind is kind and peer.kind is kind and not self._out:
                self.activity += 1
                return relay(fd, buffer, start, out_fd)
            return False

        def fed(now: float, buffer: memoryview, begin: int, stop: int) -> memoryview | None:
            if not fwd.error_code and fwd.close_code < 0:
                return buffer[begin:stop]
            leg.fed(now, peer, buffer, begin, stop)  # a close or a violation passed
            self._run_broker(now)
            return None

        return step, fed, peer.id

    def counters(self) -> ServiceStats:
        """``stats``, with everything relayed through lanes until now counted."""
        for handler in self._handlers.values():
            if type(handler) is RelayLeg:
                handler.count()
        return self.stats

    def receive_eof(self, now: float, conn_id: int) -> None:
        """The peer half-closed or the connection died; treated alike."""
        handler = self._handlers.get(conn_id)
        if handler is None:
            return
        self.activity += 1
        if self._heap_mode and conn_id in self._timed:
            self._dirty.add(conn_id)
        if conn_id not in self._closed:
            handler.receive_eof(now)
        self._run_broker(now)

    def connection_lost(self, now: float, conn_id: int) -> bool:
        """The driver closed or lost the TCP connection: forget it.

        Returns True when that left the driver nothing to do: no output queued, no reading
        changed, no deadline gained (one may have gone: a timer that fires early finds nothing
        due). So far only for a relayed leg whose end the service had already handled (its
        EOF read: the end of every relayed pair); the driver then need not ask
        ``data_to_send`` / ``reading_changes`` / ``next_deadline``. False: take the usual
        steps."""
        handler = self._handlers.pop(conn_id, None)
        if handler is None:
            return not self._out and not self._reading
        self.activity += 1
        # A leg whose EOF was handled: its connection_lost only counts (RelayLeg.receive_eof
        # returns at once), so nothing below can queue output or set a deadline.
        ended = type(handler) is RelayLeg and handler.eof
        handler.connection_lost(now)
        handler.kind = ConnectionKind.CLOSED
        self._closed.discard(conn_id)
        self._timed.discard(conn_id)
        self._entry.pop(conn_id, None)  # its heap entry goes stale
        self._reading.pop(conn_id, None)
        self._run_broker(now)
        return ended and not self._out and not self._reading

    def data_to_send(self) -> list[tuple[int, bytes | memoryview]]:
        out, self._out = self._out, []
        return out

    def reading_changes(self) -> list[tuple[int, bool]]:
        """``(conn, paused)`` for connections whose reading must stop (True) or resume
        (False): a relayed request's body waiting for its listener's rendezvous."""
        if not self._reading:  # (the usual answer: asked after every input)
            return []
        changes, self._reading = list(self._reading.items()), {}
        return changes

    def connection_deadline(self, conn_id: int) -> float | None:
        """The deadline of that connection alone (None: it has none, or is unknown). Right
        after ``connection_made``, which queues no output, changes no reading and adds no
        deadline but the new connection's, this is all ``next_deadline`` could have gained:
        a driver whose timer already fires no later needs to ask nothing else. If a timeout
        was changed since ``next_deadline`` was last asked (which moves every deadline
        counted with it), this is ``next_deadline()`` instead."""
        if (self.handshake_timeout, self.http_timeout) != self._asked_timeouts:
            return self.next_deadline()
        handler = self._handlers.get(conn_id)
        return handler.deadline() if handler is not None else None

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` must run next (None: no deadline); asked after every call."""
        self._asked_timeouts = (self.handshake_timeout, self.http_timeout)
        best = self.broker.next_deadline()
        log_due = self.refusal_log.next_deadline()  # a summary of refusals not logged
        if log_due is not None and (best is None or log_due < best):
            best = log_due
        view_due = self.webview.next_deadline()  # the web view's next look, while watched
        if view_due is not None and (best is None or view_due < best):
            best = view_due
        if self.webpubsub is not None:
            hubs = self.webpubsub.next_deadline()
            if hubs is not None and (best is None or hubs < best):
                best = hubs
        if not self._timed:
            return best
        if not self._heap_mode and len(self._timed) < _HEAP_FROM:
            due = self._ask_each()  # a few watched: the cheapest way (a rendezvous at a time)
        else:
            due = self._handlers_due()
        if self.check_deadlines:
            scanned = self._scan_deadlines()
            if scanned != due:
                raise AssertionError(f"next_deadline: heap {due!r}, scan {scanned!r}")
        if due is not None and (best is None or due < best):
            best = due
        return best

    #: Tests set it: every ``next_deadline`` also scans the handlers as before the heap and
    #: raises ``AssertionError`` when the two differ.
    check_deadlines = False

    def _handlers_due(self) -> float | None:
        """The earliest handler deadline: what asking every watched handler's ``deadline()``
        gives (``_scan_deadlines``). A few watched connections are asked each time (the
        cheapest way for a handful: a rendezvous at a time); from ``_HEAP_FROM`` on (many
        handshakes in flight), a heap answers without asking them all (issue 14).

        ``_heap`` holds (deadline, conn) entries, ``_entry`` each connection's newest one; a
        connection whose deadline may have come earlier is in ``_dirty`` (``watch``, its own
        input, a switch, a changed timeout, a timer), so every entry is at most its handler's
        deadline. The top entry is checked against its handler: equal, it is the earliest;
        later or gone, it is replaced or dropped (lazy invalidation)."""
        if not self._heap_mode:
            if len(self._timed) < _HEAP_FROM:
                return self._ask_each()
            self._heap_mode = True
            self._dirty.update(self._timed)
        elif len(self._entry) < _HEAP_FROM // 4 and len(self._timed) < _HEAP_FROM // 2:
            self._heap_mode = False  # few again: back to asking them
            self._heap.clear()
            self._entry.clear()
            self._dirty.clear()
            return self._ask_each()
        timeouts = (self.handshake_timeout, self.http_timeout)
        if timeouts != self._timeouts:  # a changed timeout moves deadlines either way
            self._timeouts = timeouts
            self._dirty.update(self._timed)
        handlers = self._handlers
        heap = self._heap
        entry = self._entry
        dirty = self._dirty
        if dirty:
            for conn_id in dirty:
                handler = handlers.get(conn_id)
                deadline = handler.deadline() if handler is not None else None
                if deadline is None:
                    entry.pop(conn_id, None)
                    self._timed.discard(conn_id)  # watched again when it gets one
                elif entry.get(conn_id) != deadline:
                    entry[conn_id] = deadline
                    heapq.heappush(heap, (deadline, conn_id))
            if len(heap) > 2 * len(entry) + 64:  # stale entries: rebuild from the live ones
                heap[:] = [(deadline, conn_id) for conn_id, deadline in entry.items()]
                heapq.heapify(heap)
        while heap:
            deadline, conn_id = heap[0]
            if entry.get(conn_id) != deadline:
                heapq.heappop(heap)  # stale: the connection has a newer entry, or none
                continue
            if conn_id in dirty:
                break  # just asked
            handler = handlers.get(conn_id)
            now_due = handler.deadline() if handler is not None else None
            if now_due == deadline:
                break
            if now_due is None:
                del entry[conn_id]
                heapq.heappop(heap)
            else:  # later than its entry (it only moves earlier through _dirty)
                entry[conn_id] = now_due
                heapq.heapreplace(heap, (now_due, conn_id))
        else:
            deadline = None
        if dirty:
            dirty.clear()
        return deadline

    def _ask_each(self) -> float | None:
        """The earliest deadline of the watched handlers, asked of each; one that has none is
        no longer watched (``watch`` adds it again when it gets one)."""
        best: float | None = None
        handlers = self._handlers
        idle: list[int] | None = None
        for conn_id in self._timed:  # (no copy: the ones to forget are dropped afterwards)
            handler = handlers.get(conn_id)
            deadline = handler.deadline() if handler is not None else None
            if deadline is None:
                if idle is None:
                    idle = [conn_id]
                else:
                    idle.append(conn_id)
            elif best is None or deadline < best:
                best = deadline
        if idle is not None:
            self._timed.difference_update(idle)
        return best

    def _scan_deadlines(self) -> float | None:
        """The earliest deadline of the watched handlers, asked of each (``check_deadlines``)."""
        best: float | None = None
        for conn_id in self._timed:
            handler = self._handlers.get(conn_id)
            deadline = handler.deadline() if handler is not None else None
            if deadline is not None and (best is None or deadline < best):
                best = deadline
        return best

    def _all_dirty(self) -> None:
        """Every watched handler's deadline may have changed (a timeout changed, a timer ran)."""
        if self._heap_mode:
            self._dirty.update(self._timed)

    def handle_timer(self, now: float) -> None:
        due = [self.broker.next_deadline(), self.refusal_log.next_deadline(),
               self.webpubsub.next_deadline() if self.webpubsub is not None else None]
        if any(deadline is not None and deadline <= now for deadline in due):
            self.activity += 1  # the web view's own tick alone changes nothing
        for conn_id in list(self._timed):
            handler = self._handlers.get(conn_id)
            deadline = handler.deadline() if handler is not None else None
            if deadline is None:
                self._timed.discard(conn_id)  # watched again when it gets one
            if handler is None or deadline is None or now < deadline:
                continue
            self.activity += 1
            handler.handle_timer(now)
        self._all_dirty()  # what the timers changed
        self.broker.handle_timer(now)
        self.refusal_log.handle_timer(now)
        if self.webpubsub is not None:
            self.webpubsub.handle_timer(now)
        self._run_broker(now)
        self.webview.handle_timer(now)  # last: it shows the state the timers left

    # -- HTTP calls the service makes (Web PubSub event handlers) ----------------------------

    def outbound_calls(self) -> list[OutboundCall]:
        """HTTP requests for the driver to make now (each with its own timeout); report each
        outcome with :meth:`outbound_answered` or :meth:`outbound_failed`."""
        return self.webpubsub.events.calls_to_make() if self.webpubsub is not None else []

    def outbound_answered(self, now: float, call_id: int, status: int,
                          headers: Sequence[tuple[str, str]], body: bytes) -> None:
        self.activity += 1
        if self.webpubsub is not None:
            self.webpubsub.events.answered(now, call_id, status, headers, body)

    def outbound_failed(self, now: float, call_id: int, reason: str) -> None:
        """The call could not be made or got no answer (``reason`` names address and cause)."""
        self.activity += 1
        if self.webpubsub is not None:
            self.webpubsub.events.failed(now, call_id, reason)

    def tls_failed(self, now: float, remote: tuple[str, int] | None, why: str) -> None:
        """A client's TLS handshake failed, timed out or was abandoned (the driver does TLS;
        such a connection never reaches the service): a handshake error, logged with the
        client's address and throttled like the others. ``why`` must not quote client bytes."""
        self.activity += 1
        self.stats.handshake_errors += 1
        self.refusal_log.refused(now, 0, "TLS", why, remote=remote, tracking="-",
                                 event="handshake-failed")

    def overloaded(self, now: float, remote: tuple[str, int] | None, why: str) -> None:
        """The driver turned a new connection away before it reached the service (it holds as
        many as it may): counted as a handshake error, logged with the client's address and
        throttled like every refusal."""
        self.activity += 1
        self.stats.handshake_errors += 1
        self.refusal_log.refused(now, 503, "connection", why, remote=remote, tracking="-",
                                 event="refused")

    def writing_paused(self, conn_id: int, paused: bool) -> None:
        """The driver's write buffer for a connection went over its high-water mark (True) or
        drained below the low one (False). Optional: a web view event stream skips updates
        while paused, so a watcher that does not read cannot grow that buffer without bound."""
        self.webview.writing_paused(conn_id, paused)

    def peer_of(self, conn_id: int) -> int | None:
        """The connection this one's input is written to (the other leg of a relayed pair, a
        relayed request's rendezvous): the driver stops reading it while this one is full."""
        handler = self._handlers.get(conn_id)
        return handler.peer if handler is not None else None

    def shutdown(
        self, now: float, code: int = 1001, reason: str = "The relay is shutting down."
    ) -> None:
        """Close everything cleanly: listeners and relayed legs hear ``code`` (1001: going
        away, hybrid-connections-wire §4.4), waiting senders get 503, half-read requests end."""
        self.activity += 1
        self._all_dirty()
        for conn_id, handler in list(self._handlers.items()):
            if conn_id not in self._closed:
                handler.shutdown(now, code, reason)
        self._run_broker(now)

    def kind(self, conn_id: int) -> ConnectionKind | None:
        handler = self._handlers.get(conn_id)
        if handler is None:
            return None
        return ConnectionKind.CLOSED if conn_id in self._closed else handler.kind

    def live_handlers(self) -> Iterator[Handler]:
        """The handlers of connections the service has not closed (the web view's source)."""
        closed = self._closed
        return (handler for conn_id, handler in self._handlers.items() if conn_id not in closed)

    def exchanges_in_flight(self) -> Iterable[HttpExchange]:
        """The relayed HTTP requests in flight."""
        return self._exchanges.values()

    def connection_counts(self, exclude: int | None = None) -> dict[str, int]:
        """Live connections by kind (for the status page)."""
        kinds: dict[str, int] = {}
        for conn_id, handler in self._handlers.items():
            if conn_id == exclude:
                continue
            kind = ConnectionKind.CLOSED.value if conn_id in self._closed else handler.kind.value
            kinds[kind] = kinds.get(kind, 0) + 1
        return kinds

    # -- what handlers ask of the service (ServiceCore) ------------------------------------

    def send(self, conn_id: int, data: bytes | memoryview) -> None:
        if data and conn_id not in self._closed:
            self._out.append((conn_id, data))

    def close(self, conn_id: int) -> None:
        if conn_id in self._closed or conn_id not in self._handlers:
            return
        self._closed.add(conn_id)
        self._out.append((conn_id, b""))

    def switch(self, conn_id: int, handler: Handler) -> None:
        if conn_id in self._handlers:
            self._handlers[conn_id] = handler
            if self._heap_mode and conn_id in self._timed:
                self._dirty.add(conn_id)  # the new handler's deadline

    def handler(self, conn_id: int) -> Handler | None:
        if conn_id in self._closed:
            return None
        return self._handlers.get(conn_id)

    def watch(self, conn_id: int) -> None:
        self._timed.add(conn_id)
        if self._heap_mode:  # (scanning asks every watched handler anyway)
            self._dirty.add(conn_id)

    def pause_reading(self, conn_id: int, paused: bool) -> None:
        if conn_id in self._handlers:
            self._reading[conn_id] = paused

    def bind(self, name: str, conn_id: int) -> None:
        self._names[name] = conn_id

    def unbind(self, name: str, conn_id: int | None = None) -> bool:
        if name in self._names and (conn_id is None or self._names[name] == conn_id):
            del self._names[name]
            return True
        return False

    def lookup(self, name: str) -> Handler | None:
        conn_id = self._names.get(name)
        return self.handler(conn_id) if conn_id is not None else None

    def exchange(self, request_id: str) -> HttpExchange | None:
        return self._exchanges.get(request_id)

    def register_exchange(self, exchange: HttpExchange) -> None:
        self._exchanges[exchange.id] = exchange

    def unregister_exchange(self, exchange: HttpExchange) -> None:
        if self._exchanges.get(exchange.id) is exchange:
            del self._exchanges[exchange.id]

    def listener_gone(self, now: float, listener_id: str) -> None:
        for exchange in list(self._exchanges.values()):
            if exchange.pending.listener_id == listener_id:
                exchange.listener_gone(now)

    def _open_request(self, door: FrontDoor, handshake: ServerHandshake,
                      request: HandshakeRequest, query: str, now: float) -> None:
        open_request_rendezvous(self, door, handshake, request, query, now)

    # -- broker actions --------------------------------------------------------------------

    def _run_broker(self, now: float) -> None:
        # Taking an action may queue more (closing a listener offers its waiting senders to
        # another one, or refuses them): run until none is left.
        broker = self.broker
        while broker.has_actions():
            self._take_actions(now, broker.actions_to_take())

    def _take_actions(self, now: float, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendControl):
                target = self.lookup(f"listener:{action.listener_id}")
                if isinstance(target, ControlChannel):
                    target.send_messages(action.text)
            elif isinstance(action, CloseListener):
                target = self.lookup(f"listener:{action.listener_id}")
                log_event(logging.INFO, "protocol-close", f"listener {action.code}",
                          remote=target.conn.remote if target is not None else None,
                          tracking=action.listener_id, why=action.reason[:200],
                          code=action.code)
                if isinstance(target, ControlChannel):
                    target.close_channel(now, action.code, action.reason)
            elif isinstance(action, FailSender):
                sender = self.lookup(f"connect:{action.connect_id}")
                self.unbind(f"connect:{action.connect_id}")
                if isinstance(sender, WaitingSender):
                    sender.refuse(now, action.status, action.description, BY_RELAY)

