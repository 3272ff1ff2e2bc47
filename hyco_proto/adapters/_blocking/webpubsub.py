"""Azure Web PubSub client for the blocking adapters (threads, gevent): :class:`WebPubSubClient`
drives :class:`~hyco_proto.webpubsub.client.WebPubSubClientCore` over the runtime's ``connect``.

The core is only touched under one lock. One runner worker performs the core's actions (fetch a
URL and open a socket in workers of their own, send, close) and hands events on; each socket's
worker opens it, then reads it into the core; callbacks run in order in a dispatcher worker (so a
callback may call the client); ``messages()`` iterators are fed by the runner directly. Every
wait is bounded (``open_timeout``, ``ack_timeout``, ``close_timeout``).
"""

from __future__ import annotations

import contextlib
import logging
import ssl as _ssl
import weakref
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import ClassVar

from ...drivers.stream import ConnectionClosedError, check_max_queue
from ...drivers.webpubsub_client import WebPubSubClientBase, idle_error
from ...webpubsub.client import (
    DEFAULT_RECONNECT_DELAYS,
    DEFAULT_RECOVERY_DELAYS,
    AckResolved,
    AckTimeoutError,
    ClientEvent,
    ClientState,
    CloseConnection,
    Connected,
    FetchUrl,
    GroupMessage,
    OpenConnection,
    SendMessageError,
    SendText,
    ServerMessage,
    Stopped,
    address_of,
)
from ...webpubsub.messages import JSON_RELIABLE_SUBPROTOCOL, make_data
from .api import Api
from .runtime import EventLike, QueueLike, Runtime, Workers
from .sockets import WAIT_SLICE, WebSocket, wait_until

__all__ = ["AckTimeoutError", "MessageIterator", "SendMessageError", "WebPubSubClient"]

logger = logging.getLogger("hyco_proto.adapters.webpubsub")

#: A client URL, or a function returning a fresh one for each new connection.
UrlArg = str | Callable[[], str]
Message = GroupMessage | ServerMessage
_END = object()
#: Unread messages an iterator holds before the client stops reading.
DEFAULT_MAX_QUEUE = 1000


class MessageIterator:
    """``for msg in client.messages(timeout=...)``: group and server messages received from the
    call on, until the client stops. ``timeout`` bounds each wait (``TimeoutError``). While
    ``max_queue`` messages wait here the client stops reading its socket."""

    def __init__(self, client: WebPubSubClient, timeout: float | None, max_queue: int) -> None:
        self._client = client
        self._rt = client.runtime
        self._timeout = timeout
        self._max_queue = check_max_queue(max_queue)
        self._queue: QueueLike = self._rt.queue()
        with client._lock:
            client._subscribers.add(self)
            if client._core.state is ClientState.STOPPED:
                self._queue.put(_END)

    @property
    def full(self) -> bool:
        return self._queue.qsize() >= self._max_queue

    def __iter__(self) -> Iterator[Message]:
        return self

    def __next__(self) -> Message:
        rt = self._rt
        deadline = None if self._timeout is None else rt.monotonic() + self._timeout
        while True:
            wait = WAIT_SLICE if deadline is None else min(deadline - rt.monotonic(), WAIT_SLICE)
            try:
                item = self._queue.get(True, max(wait, 0.0))
                break
            except rt.empty:
                if deadline is not None and rt.monotonic() >= deadline:
                    raise TimeoutError(f"no message within {self._timeout:g} s") from None
        self._client._drained.set()
        if item is _END:
            self.close()
            raise StopIteration
        assert isinstance(item, (GroupMessage, ServerMessage))
        return item

    def close(self) -> None:
        """Stop receiving (messages not yet taken are dropped)."""
        with self._client._lock:
            self._client._subscribers.discard(self)
        self._client._drained.set()


class _AckWaiter:
    __slots__ = ("event", "result")

    def __init__(self, event: EventLike) -> None:
        self.event = event
        self.result: AckResolved | None = None


class WebPubSubClient(WebPubSubClientBase):
    """An Azure Web PubSub client (JSON subprotocols), the shape of Microsoft's Python SDK.

    ``url``: the client URL (``access_token`` in the query), or a function returning a fresh
    one, called (in a worker) for every new connection, never for a recovery. ``protocol``:
    ``json.reliable.webpubsub.azure.v1`` (recovery, no loss, no duplicates) or
    ``json.webpubsub.azure.v1``. Use ``with client:`` or ``start()`` / ``stop()``. Requests wait
    for their ack at most ``ack_timeout`` seconds (:class:`AckTimeoutError`); a refused one
    raises :class:`SendMessageError`.
    """

    runtime: ClassVar[Runtime]

    def __init__(self, url: UrlArg, *, protocol: str = JSON_RELIABLE_SUBPROTOCOL,
                 auto_reconnect: bool = True, auto_rejoin_groups: bool = True,
                 ack_timeout: float = 30.0, open_timeout: float = 10.0,
                 close_timeout: float = 10.0, keepalive_interval: float | None = 20.0,
                 keepalive_timeout: float = 120.0, recovery_timeout: float = 30.0,
                 recovery_delays: Sequence[float] = DEFAULT_RECOVERY_DELAYS,
                 reconnect_delays: Sequence[float] = DEFAULT_RECONNECT_DELAYS,
                 ssl: _ssl.SSLContext | None = None) -> None:
        super().__init__(
            url, protocol=protocol, auto_reconnect=auto_reconnect,
            auto_rejoin_groups=auto_rejoin_groups, ack_timeout=ack_timeout,
            open_timeout=open_timeout, close_timeout=close_timeout,
            keepalive_interval=keepalive_interval, keepalive_timeout=keepalive_timeout,
            recovery_timeout=recovery_timeout, recovery_delays=recovery_delays,
            reconnect_delays=reconnect_delays)
        self._ssl = ssl
        rt = self.runtime
        self._api = Api(rt)
        self._lock = rt.lock()  # the core, the ack table, the subscribers, the socket
        self._acks: dict[int, _AckWaiter] = {}
        # weak: an iterator dropped without close() stops holding the client back
        self._subscribers: weakref.WeakSet[MessageIterator] = weakref.WeakSet()
        self._drained = rt.event()  # an iterator took a message
        self._ws: WebSocket | None = None
        self._opening = False
        self._cancel_open = False
        self._wake = rt.event()
        self._open = rt.event()  # set while requests can be sent, or once stopped
        self._stopped = rt.event()
        self._first = rt.event()  # the first connection's outcome is known
        self._dispatch_queue: QueueLike = rt.queue()
        self._workers = Workers(rt, logger)
        self._started = False
        self._first_error: BaseException | None = None

    def messages(self, *, timeout: float | None = None,
                 max_queue: int = DEFAULT_MAX_QUEUE) -> MessageIterator:
        """Group and server messages received from now on; the iteration ends when the client
        stops. ``timeout`` bounds each wait (``TimeoutError``); while ``max_queue`` messages
        wait unread, the client stops reading (acks wait too), so memory stays bounded."""
        return MessageIterator(self, timeout, max_queue)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect; returns once connected (the ``connected`` message arrived and the
        ``connected`` callbacks ran). Raises the
        first connection failure (naming the address and the cause), or ``TimeoutError``
        after ``open_timeout``; the client is stopped then."""
        rt = self.runtime
        with self._lock:
            if self._started:
                raise RuntimeError("start() was already called; make a new client")
            self._started = True
            self._core.start(rt.monotonic())
        self._workers.spawn(self._run, "wps-runner")
        self._workers.spawn(self._dispatch, "wps-dispatcher")
        if not wait_until(rt, self._first, self.open_timeout):
            self.stop()
            cause = f" (last error: {self.last_error})" if self.last_error else ""
            raise TimeoutError(f"no Web PubSub connection to {self.address} within "
                               f"{self.open_timeout:g} s{cause}")
        if self._first_error is not None:
            self.stop()
            raise self._first_error

    def stop(self) -> None:
        """Close the connection (1000) and stop; pending requests fail. Waits at most
        ``open_timeout`` + ``close_timeout`` (then drops the socket). Idempotent."""
        rt = self.runtime
        with self._lock:
            self._core.stop(rt.monotonic())
            started = self._started
        self._wake.set()
        self._drained.set()
        if not started:
            self._stopped.set()
            return
        if not wait_until(rt, self._stopped, self.open_timeout + self.close_timeout):
            ws = self._ws
            if ws is not None:
                ws.abort()
            wait_until(rt, self._stopped, self.close_timeout)
        self._workers.join(self.close_timeout)

    def __enter__(self) -> WebPubSubClient:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- requests ----------------------------------------------------------------------------

    def join_group(self, group: str) -> AckResolved:
        """Join ``group``; returns its ack. Rejoined on every new connection."""
        result = self._request(lambda now: self._core.join_group(group, now),
                               f"joinGroup {group!r}")
        assert result is not None
        return result

    def leave_group(self, group: str) -> AckResolved:
        """Leave ``group``; returns its ack."""
        result = self._request(lambda now: self._core.leave_group(group, now),
                               f"leaveGroup {group!r}")
        assert result is not None
        return result

    def send_to_group(self, group: str, data: object, data_type: str = "text", *,
                      no_echo: bool = False, ack: bool = True) -> AckResolved | None:
        """Publish ``data`` (``text``: str, ``json``: a JSON value, ``binary``: bytes) to
        ``group``; ``no_echo`` skips our own copy. With ``ack`` waits for the service's ack
        (a ``Duplicate`` counts as success); without, returns once queued."""
        payload = make_data(data, data_type)
        return self._request(
            lambda now: self._core.send_to_group(group, payload, now, no_echo=no_echo, ack=ack),
            f"sendToGroup {group!r}")

    def send_event(self, event: str, data: object, data_type: str = "text", *,
                   ack: bool = True) -> AckResolved | None:
        """Send a custom ``event`` to the upstream server (same payload rules)."""
        payload = make_data(data, data_type)
        return self._request(lambda now: self._core.send_event(event, payload, now, ack=ack),
                             f"event {event!r}")

    def _request(self, call: Callable[[float], int | None], what: str) -> AckResolved | None:
        rt = self.runtime
        deadline = rt.monotonic() + self.ack_timeout
        waiter = _AckWaiter(rt.event())
        while True:
            with self._lock:
                core = self._core
                if core.is_open:
                    ack_id = call(rt.monotonic())
                    if ack_id is not None:
                        self._acks[ack_id] = waiter
                    break
                state = core.state
                if state in (ClientState.IDLE, ClientState.STOPPING, ClientState.STOPPED):
                    raise RuntimeError(idle_error(what, state, self.address))
                self._open.clear()
            if not wait_until(rt, self._open, max(deadline - rt.monotonic(), 0.0)):
                raise TimeoutError(f"cannot send {what}: not connected to {self.address} "
                                   f"within {self.ack_timeout:g} s (state {state.value})")
        self._wake.set()
        if ack_id is None:
            return None
        got = wait_until(rt, waiter.event, max(deadline - rt.monotonic(), 0.0))
        with self._lock:
            self._acks.pop(ack_id, None)
        resolved = waiter.result
        if not got or resolved is None:
            raise AckTimeoutError(ack_id, self.ack_timeout, what=what,
                                  address=self.address)
        if not resolved.ok:
            raise SendMessageError.from_ack(resolved, what, self.address)
        return resolved

    # -- the runner ----------------------------------------------------------------------------

    def _run(self) -> None:
        rt = self.runtime
        core = self._core
        try:
            while True:
                with self._lock:
                    actions = core.actions_to_take()
                    self._handle_events(core.events_received())
                    if core.is_open or core.state is ClientState.STOPPED:
                        self._open.set()
                    wait = 0.0
                    if not actions:
                        if core.state is ClientState.STOPPED:
                            return
                        now = rt.monotonic()
                        deadline = core.next_deadline()
                        if deadline is not None and deadline <= now:
                            core.handle_timer(now)
                            continue
                        self._wake.clear()
                        wait = WAIT_SLICE if deadline is None else min(deadline - now,
                                                                       WAIT_SLICE)
                for action in actions:
                    self._perform(action)
                if wait:
                    self._wake.wait(wait)
        finally:
            self._stopped.set()
            self._open.set()
            self._first.set()
            self._dispatch_queue.put(_END)

    def _perform(self, action: object) -> None:
        if isinstance(action, SendText):
            ws = self._ws
            if ws is not None and not ws.closed:
                # a failed send is reported by the socket's worker (it closes)
                with contextlib.suppress(ConnectionClosedError, OSError):
                    ws.send(action.text)
        elif isinstance(action, OpenConnection):
            with self._lock:
                self._opening, self._cancel_open = True, False
            self._workers.spawn(lambda: self._serve_socket(action), "wps-socket")
        elif isinstance(action, CloseConnection):
            with self._lock:
                if self._opening:
                    self._cancel_open = True
                    return
                ws = self._ws
            if ws is not None:
                ws.start_close(action.code, action.reason)
        elif isinstance(action, FetchUrl):
            self._workers.spawn(self._fetch_url, "wps-url")

    def _fetch_url(self) -> None:
        rt = self.runtime
        source = self._url_source
        assert callable(source)
        try:
            url = source()
            if not isinstance(url, str):
                raise TypeError(f"the url function returned {type(url).__name__}, not str")
        except Exception as exc:
            with self._lock:
                self._failed(exc)
                self._core.url_failed(rt.monotonic(), f"the url function failed: {exc!r}")
        else:
            with self._lock:
                self.address = address_of(url)
                self._core.url_ready(rt.monotonic(), url)
        self._wake.set()

    def _serve_socket(self, action: OpenConnection) -> None:
        """Open the socket, then read it into the core until it closes."""
        rt = self.runtime
        try:
            ws = self._api.connect(action.url, subprotocols=[action.subprotocol],
                                   open_timeout=self.open_timeout,
                                   close_timeout=self.close_timeout, ssl=self._ssl)
        except Exception as exc:
            with self._lock:
                self._opening = False
                self._failed(exc)
                self._core.connection_closed(rt.monotonic(), None, str(exc))
            self._wake.set()
            return
        with self._lock:
            self._opening = False
            cancelled = self._cancel_open
            if not cancelled:
                self._ws = ws
                self._core.connection_opened(rt.monotonic(), ws.subprotocol)
        self._wake.set()
        if cancelled:
            ws.abort()
        try:
            while not cancelled:
                try:
                    message = ws.recv()
                except ConnectionClosedError:
                    break
                if isinstance(message, str):
                    self._room_for_messages()
                    with self._lock:
                        self._core.text_received(rt.monotonic(), message)
                    self._wake.set()
        finally:
            ws.wait_closed()
            with self._lock:
                if self._ws is ws:
                    self._ws = None
                self._core.connection_closed(rt.monotonic(), ws.close_code if not cancelled
                                             else None, ws.close_reason or "")
            self._wake.set()

    def _room_for_messages(self) -> None:
        """Wait while an iterator holds ``max_queue`` unread messages (not once stopping)."""
        while True:
            with self._lock:
                if not any(it.full for it in list(self._subscribers)) or self._core.state in (
                        ClientState.STOPPING, ClientState.STOPPED):
                    return
                self._drained.clear()
            self._drained.wait(WAIT_SLICE)

    def _failed(self, exc: BaseException) -> None:
        """Called with the lock held."""
        self.last_error = exc
        if not self._first.is_set():
            self._first_error = exc
            self._first.set()

    def _handle_events(self, events: list[ClientEvent]) -> None:
        """Called with the lock held."""
        for event in events:
            if isinstance(event, AckResolved):
                waiter = self._acks.get(event.ack_id)
                if waiter is not None:
                    waiter.result = event
                    waiter.event.set()
                continue
            if isinstance(event, (GroupMessage, ServerMessage)):
                for iterator in list(self._subscribers):
                    iterator._queue.put(event)
            elif isinstance(event, Stopped):
                for iterator in list(self._subscribers):
                    iterator._queue.put(_END)
                if not self._first.is_set():
                    self._first_error = ConnectionError(
                        f"the client stopped before connecting to {self.address}")
                    self._first.set()
            self._dispatch_queue.put(event)

    def _dispatch(self) -> None:
        rt = self.runtime
        while True:
            try:
                event = self._dispatch_queue.get(True, WAIT_SLICE)
            except rt.empty:
                continue
            if event is _END:
                return
            self._callbacks.run(event)
            if isinstance(event, Connected):
                self._first.set()  # start() returns after the connected callbacks
