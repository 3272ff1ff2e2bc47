"""Azure Web PubSub client on asyncio: :class:`WebPubSubClient` drives
:class:`~hyco_proto.webpubsub.client.WebPubSubClientCore` over this adapter's plain ``connect``.

One runner task performs the core's actions (fetch a URL, open, send, close) and hands its
events on; one reader task per socket feeds the core what arrives; callbacks run in order in a
dispatcher task of their own (so a callback may await the client); ``messages()`` iterators are
fed by the runner directly. Every wait is bounded (``open_timeout``, ``ack_timeout``,
``close_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import ssl as _ssl
import weakref
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

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
    event_name,
)
from ...webpubsub.messages import JSON_RELIABLE_SUBPROTOCOL, make_data
from .websocket import WebSocket, connect

__all__ = ["AckTimeoutError", "SendMessageError", "WebPubSubClient"]

logger = logging.getLogger("hyco_proto.adapters.webpubsub")

#: A client URL, or a function (sync or async) returning a fresh one for each new connection.
UrlArg = str | Callable[[], str | Awaitable[str]]
Message = GroupMessage | ServerMessage
_END = object()
#: Unread messages an iterator holds before the client stops reading.
DEFAULT_MAX_QUEUE = 1000


class MessageIterator:
    """``async for msg in client.messages()``: group and server messages received from the call
    on, until the client stops. ``timeout``: the longest wait for one message (TimeoutError).
    While ``max_queue`` messages wait here the client stops reading its socket."""

    def __init__(self, client: WebPubSubClient, timeout: float | None, max_queue: int) -> None:
        self._client = client
        self._timeout = timeout
        self._max_queue = check_max_queue(max_queue)
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        client._subscribers.add(self)
        if client._core.state is ClientState.STOPPED:
            self._queue.put_nowait(_END)

    @property
    def full(self) -> bool:
        return self._queue.qsize() >= self._max_queue

    def __aiter__(self) -> MessageIterator:
        return self

    async def __anext__(self) -> Message:
        try:
            item = await asyncio.wait_for(self._queue.get(), self._timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"no message within {self._timeout:g} s") from None
        self._client._drained.set()
        if item is _END:
            self.close()
            raise StopAsyncIteration
        assert isinstance(item, (GroupMessage, ServerMessage))
        return item

    def close(self) -> None:
        """Stop receiving (messages not yet taken are dropped)."""
        self._client._subscribers.discard(self)
        self._client._drained.set()


class WebPubSubClient(WebPubSubClientBase):
    """An Azure Web PubSub client (JSON subprotocols), the shape of Microsoft's Python SDK.

    ``url``: the client URL (``access_token`` in the query), or a function (sync or async)
    returning a fresh one, called for every new connection (never for a recovery).
    ``protocol``: ``json.reliable.webpubsub.azure.v1`` (recovery, no loss, no duplicates) or
    ``json.webpubsub.azure.v1``. Use ``async with client:`` or ``await start()`` /
    ``await stop()``. Requests wait for their ack at most ``ack_timeout`` seconds
    (:class:`AckTimeoutError`); a refused one raises :class:`SendMessageError`.
    """

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
        self._acks: dict[int, asyncio.Future[AckResolved]] = {}
        # weak: an iterator dropped without close() stops holding the client back
        self._subscribers: weakref.WeakSet[MessageIterator] = weakref.WeakSet()
        self._drained = asyncio.Event()  # an iterator took a message
        self._ws: WebSocket | None = None
        self._opening: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._open = asyncio.Event()   # set while requests can be sent, or once stopped
        self._stopped = asyncio.Event()
        self._dispatch_queue: asyncio.Queue[object] = asyncio.Queue()
        self._runner: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._first: asyncio.Future[Connected] | None = None

    def messages(self, *, timeout: float | None = None,
                 max_queue: int = DEFAULT_MAX_QUEUE) -> MessageIterator:
        """Group and server messages received from now on; the iteration ends when the client
        stops. ``timeout`` bounds each wait (``TimeoutError``); while ``max_queue`` messages
        wait unread, the client stops reading (acks wait too), so memory stays bounded."""
        return MessageIterator(self, timeout, max_queue)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect; returns once connected (the ``connected`` message arrived and the
        ``connected`` callbacks ran). Raises the
        first connection failure (naming the address and the cause), or ``TimeoutError``
        after ``open_timeout``; the client is stopped then."""
        if self._runner is not None:
            raise RuntimeError("start() was already called; make a new client")
        loop = asyncio.get_running_loop()
        self._first = loop.create_future()
        self._core.start(loop.time())
        self._runner = asyncio.create_task(self._run(), name="wps-runner")
        self._dispatcher = asyncio.create_task(self._dispatch(), name="wps-dispatcher")
        try:
            await asyncio.wait_for(asyncio.shield(self._first), self.open_timeout)
        except asyncio.TimeoutError:
            self._first.cancel()
            await self.stop()
            cause = f" (last error: {self.last_error})" if self.last_error else ""
            raise TimeoutError(f"no Web PubSub connection to {self.address} within "
                               f"{self.open_timeout:g} s{cause}") from None
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close the connection (1000) and stop; pending requests fail. Waits at most
        ``close_timeout`` (then drops the socket). Idempotent."""
        loop = asyncio.get_running_loop()
        runner = self._runner
        if runner is None:
            self._core.stop(loop.time())
            self._stopped.set()
            return
        self._core.stop(loop.time())
        self._wake.set()
        self._drained.set()
        try:
            await asyncio.wait_for(self._stopped.wait(), self.close_timeout + 1.0)
        except asyncio.TimeoutError:
            if self._ws is not None:
                self._ws.abort()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), self.close_timeout)
        current = asyncio.current_task()
        for task in (runner, self._dispatcher):
            if task is None or task is current:
                continue
            try:
                await asyncio.wait_for(asyncio.shield(task), self.close_timeout)
            except (asyncio.TimeoutError, Exception):
                task.cancel()
        for task in list(self._tasks):
            task.cancel()

    async def __aenter__(self) -> WebPubSubClient:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    # -- requests ----------------------------------------------------------------------------

    async def join_group(self, group: str) -> AckResolved:
        """Join ``group``; returns its ack. Rejoined on every new connection."""
        result = await self._request(lambda now: self._core.join_group(group, now),
                                     f"joinGroup {group!r}")
        assert result is not None
        return result

    async def leave_group(self, group: str) -> AckResolved:
        """Leave ``group``; returns its ack."""
        result = await self._request(lambda now: self._core.leave_group(group, now),
                                     f"leaveGroup {group!r}")
        assert result is not None
        return result

    async def send_to_group(self, group: str, data: object, data_type: str = "text", *,
                            no_echo: bool = False, ack: bool = True) -> AckResolved | None:
        """Publish ``data`` (``text``: str, ``json``: a JSON value, ``binary``: bytes) to
        ``group``; ``no_echo`` skips our own copy. With ``ack`` waits for the service's ack
        (a ``Duplicate`` counts as success); without, returns once queued."""
        payload = make_data(data, data_type)
        return await self._request(
            lambda now: self._core.send_to_group(group, payload, now, no_echo=no_echo, ack=ack),
            f"sendToGroup {group!r}")

    async def send_event(self, event: str, data: object, data_type: str = "text", *,
                         ack: bool = True) -> AckResolved | None:
        """Send a custom ``event`` to the upstream server (same payload rules)."""
        payload = make_data(data, data_type)
        return await self._request(
            lambda now: self._core.send_event(event, payload, now, ack=ack), f"event {event!r}")

    async def _request(self, call: Callable[[float], int | None],
                       what: str) -> AckResolved | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_timeout
        await self._wait_open(deadline, what)
        ack_id = call(loop.time())
        self._wake.set()
        if ack_id is None:
            return None
        future: asyncio.Future[AckResolved] = loop.create_future()
        self._acks[ack_id] = future
        try:
            resolved = await asyncio.wait_for(future, max(deadline - loop.time(), 0.0))
        except asyncio.TimeoutError:
            raise AckTimeoutError(ack_id, self.ack_timeout, what=what,
                                  address=self.address) from None
        finally:
            self._acks.pop(ack_id, None)
        if not resolved.ok:
            raise SendMessageError.from_ack(resolved, what, self.address)
        return resolved

    async def _wait_open(self, deadline: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        while not self._core.is_open:
            state = self._core.state
            if state in (ClientState.IDLE, ClientState.STOPPING, ClientState.STOPPED):
                raise RuntimeError(idle_error(what, state, self.address))
            self._open.clear()
            try:
                await asyncio.wait_for(self._open.wait(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                raise TimeoutError(f"cannot send {what}: not connected to {self.address} "
                                   f"within {self.ack_timeout:g} s (state {state.value})"
                                   ) from None

    # -- the runner ----------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        core = self._core
        try:
            while True:
                actions = core.actions_to_take()
                self._handle_events(core.events_received())
                if core.is_open or core.state is ClientState.STOPPED:
                    self._open.set()
                if actions:
                    for action in actions:
                        await self._perform(action)
                    continue
                if core.state is ClientState.STOPPED:
                    return
                now = loop.time()
                deadline = core.next_deadline()
                if deadline is not None and deadline <= now:
                    core.handle_timer(now)
                    continue
                self._wake.clear()
                timeout = None if deadline is None else deadline - now
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            self._stopped.set()
            self._open.set()
            self._dispatch_queue.put_nowait(_END)

    async def _perform(self, action: object) -> None:
        if isinstance(action, SendText):
            ws = self._ws
            if ws is not None and not ws.closed:
                # A failed send is reported by the reader (the socket closes).
                with contextlib.suppress(ConnectionClosedError, OSError):
                    await ws.send(action.text)
        elif isinstance(action, OpenConnection):
            self._opening = self._spawn(self._open_socket(action))
        elif isinstance(action, CloseConnection):
            if self._opening is not None and not self._opening.done():
                self._opening.cancel()
            elif self._ws is not None:
                self._spawn(self._ws.close(action.code, action.reason))
        elif isinstance(action, FetchUrl):
            self._spawn(self._fetch_url())

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _fetch_url(self) -> None:
        loop = asyncio.get_running_loop()
        source = self._url_source
        assert callable(source)
        try:
            url = source()
            if inspect.isawaitable(url):
                url = await asyncio.wait_for(url, self.open_timeout)
            if not isinstance(url, str):
                raise TypeError(f"the url function returned {type(url).__name__}, not str")
        except Exception as exc:
            self._failed(exc)
            self._core.url_failed(loop.time(), f"the url function failed: {exc!r}")
        else:
            self.address = address_of(url)
            self._core.url_ready(loop.time(), url)
        self._wake.set()

    async def _open_socket(self, action: OpenConnection) -> None:
        loop = asyncio.get_running_loop()
        try:
            ws = await connect(action.url, subprotocols=[action.subprotocol], ssl=self._ssl,
                               open_timeout=self.open_timeout, close_timeout=self.close_timeout)
        except asyncio.CancelledError:
            self._core.connection_closed(loop.time(), None, "closed while opening")
            self._wake.set()
            raise
        except Exception as exc:
            self._failed(exc)
            self._core.connection_closed(loop.time(), None, str(exc))
            self._wake.set()
            return
        self._ws = ws
        self._core.connection_opened(loop.time(), ws.subprotocol)
        self._spawn(self._read(ws))
        self._wake.set()

    async def _read(self, ws: WebSocket) -> None:
        loop = asyncio.get_running_loop()
        core = self._core
        try:
            async for message in ws:
                if isinstance(message, str):
                    await self._room_for_messages()
                    core.text_received(loop.time(), message)
                    self._wake.set()
        except ConnectionClosedError:
            pass
        except Exception:
            logger.exception("Web PubSub reader failed (%s)", self.address)
            ws.abort()
        finally:
            if self._ws is ws:
                self._ws = None
            core.connection_closed(loop.time(), ws.close_code, ws.close_reason or "")
            self._wake.set()

    async def _room_for_messages(self) -> None:
        """Wait while an iterator holds ``max_queue`` unread messages (not once stopping)."""
        while any(it.full for it in list(self._subscribers)):
            if self._core.state in (ClientState.STOPPING, ClientState.STOPPED):
                return
            self._drained.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drained.wait(), 1.0)

    def _failed(self, exc: BaseException) -> None:
        self.last_error = exc
        first = self._first
        if first is not None and not first.done():
            first.set_exception(exc)

    def _handle_events(self, events: list[ClientEvent]) -> None:
        for event in events:
            if isinstance(event, AckResolved):
                future = self._acks.get(event.ack_id)
                if future is not None and not future.done():
                    future.set_result(event)
                continue
            if isinstance(event, (GroupMessage, ServerMessage)):
                for iterator in list(self._subscribers):
                    iterator._queue.put_nowait(event)
            elif isinstance(event, Stopped):
                for iterator in list(self._subscribers):
                    iterator._queue.put_nowait(_END)
                first = self._first
                if first is not None and not first.done():
                    first.set_exception(ConnectionError(
                        f"the client stopped before connecting to {self.address}"))
            self._dispatch_queue.put_nowait(event)

    async def _dispatch(self) -> None:
        while True:
            event = await self._dispatch_queue.get()
            if event is _END:
                return
            for callback in self._callbacks.of(event):  # type: ignore[arg-type]
                try:
                    result = callback(event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    logger.exception("Web PubSub %s callback failed",
                                     event_name(event))  # type: ignore[arg-type]
            first = self._first
            if isinstance(event, Connected) and first is not None and not first.done():
                first.set_result(event)  # start() returns after the connected callbacks

