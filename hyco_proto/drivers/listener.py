"""A Hybrid Connections listener at the byte level: everything a ``RelayedServer`` does but I/O.

``ListenerDriver`` runs the :class:`~hyco_proto.listener.Listener` core and the
:class:`~hyco_proto.drivers.connection.ClientConnection` of its control channel and of every
rendezvous. It maps control-channel WebSocket events to core reports, a ``headers`` decision to
``accept`` / ``reject`` (with the default subprotocol), bounds every rendezvous by the relay's
accept timeout, and decides what a failed first open means. An adapter implements a small port:

* actions (:meth:`ListenerDriver.actions_to_take`): :class:`OpenTransport` (TCP, TLS when
  ``url.secure``), :class:`Write` (``b""`` closes TCP), :class:`AbortTransport`, and
  :class:`HandOver` — a rendezvous succeeded: the transport and its open connection now belong
  to an application socket, and the driver forgets them;
* reports: :meth:`transport_open`, :meth:`transport_failed`, :meth:`data_received`,
  :meth:`connection_lost`, :meth:`handle_timer` at :meth:`next_deadline`, and
  :meth:`answer` for each :class:`~hyco_proto.listener.ConnectionRequested`;
* application events (:meth:`events_received`): the core's events plus :class:`StartFailed`,
  and relayed HTTP (:mod:`.http`): :class:`~.http.HttpRequestStarted` ... answered with
  :meth:`respond` / :meth:`send_body` / :meth:`end_response`. HTTP rendezvous stay with the
  driver (never handed over); it may ask to pause and resume reading them
  (:class:`~.http.PauseReading`, :class:`~.http.ResumeReading`).

Contract: after each report, run the actions it produced before the same transport's next bytes
are reported — in particular a :class:`HandOver` must move the transport to its socket before
more of its bytes arrive (the driver forgets a handed-over transport and ignores its input).

Clock: ``now`` is wall-clock seconds (the core checks token expiry against it).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import urlsplit

from ..errors import LocalProtocolError, RelayError
from ..handshake import ClientHandshake, WebSocketURL
from ..listener import (
    CloseControlChannel,
    Closed,
    ConnectionRequested,
    ConnectRendezvous,
    ControlMessageIgnored,
    Disconnected,
    Event,
    HttpRequestBody,
    HttpRequestReceived,
    Listener,
    ListenerState,
    Listening,
    Offline,
    OpenControlChannel,
    SendControlMessage,
    SendPing,
    TokenSourceLike,
)
from ..uris import parse_relay_uri
from ..websocket import BinaryMessage, ConnectionClosed, Pong, TextMessage
from .connection import ClientConnection, ConnectionState, HandshakeFailed, Opened, Refused
from .decisions import Accept, Decision, Reject, as_reject
from .http import (
    HttpEvent,
    HttpExchanges,
    HttpSocket,
    PauseReading,
    Response,
    ResumeReading,
)

__all__ = [
    "AbortTransport",
    "DriverAction",
    "DriverEvent",
    "HandOver",
    "ListenerDriver",
    "ListenerView",
    "OpenTransport",
    "PauseReading",
    "ResumeReading",
    "StartFailed",
    "Write",
    "relayed_server_options",
]


@dataclass(frozen=True, slots=True)
class OpenTransport:
    """Open TCP to ``url.host``:``url.port`` (TLS when ``url.secure``), then report
    :meth:`ListenerDriver.transport_open` or :meth:`ListenerDriver.transport_failed`."""

    key: int
    url: WebSocketURL
    control: bool  # the control channel (False: a rendezvous)


@dataclass(frozen=True, slots=True)
class Write:
    """Write ``data`` on transport ``key``; ``b""`` means close it (after what was written)."""

    key: int
    data: bytes


@dataclass(frozen=True, slots=True)
class AbortTransport:
    """Drop transport ``key`` now (or cancel its opening). Report nothing more about it."""

    key: int


@dataclass(frozen=True, slots=True)
class HandOver:
    """A rendezvous is open: transport ``key`` and ``connection`` (open, client role) are the
    application's connection to the sender who made ``request``. Feed the transport's further
    bytes to ``connection``; first collect the events it already holds."""

    key: int
    connection: ClientConnection
    request: ConnectionRequested
    #: Events the connection produced with its 101 (frames sent right behind it): handle first.
    events: tuple[object, ...] = ()


DriverAction: TypeAlias = (OpenTransport | Write | AbortTransport | HandOver | PauseReading
                           | ResumeReading)


@dataclass(frozen=True, slots=True)
class StartFailed:
    """The listener could not open its control channel the first time; it is closed.

    The error names the address and the cause (``AuthorizationError`` for 401, ``ForbiddenError``
    for 403, ``EndpointNotFoundError`` for 404, ``RelayError`` for an unreachable relay or a
    timeout). Raise it from ``start()``.
    """

    error: RelayError


DriverEvent: TypeAlias = Event | StartFailed | HttpEvent


class _Transport:
    __slots__ = ("abort_at", "action", "connection", "control", "deadline", "http", "key",
                 "opened")

    def __init__(self, key: int, connection: ClientConnection, control: bool,
                 action: ConnectRendezvous | None = None, deadline: float | None = None,
                 http: bool = False) -> None:
        self.key = key
        self.connection = connection
        self.control = control
        self.action = action
        self.deadline = deadline  # rendezvous: give up at this time
        self.abort_at: float | None = None  # closing: drop TCP if the peer has not by then
        self.opened = False
        self.http = http  # a relayed HTTP request's rendezvous (never handed over)


class _HttpPort:
    """The driver's transports as :class:`~.http.HttpExchanges` uses them."""

    __slots__ = ("driver",)

    def __init__(self, driver: ListenerDriver) -> None:
        self.driver = driver

    def http_control(self) -> HttpSocket | None:
        control = self.driver._control
        return control if control is not None and control.connection.is_open else None

    def http_open(self, connection: ClientConnection, now: float) -> HttpSocket:
        driver = self.driver
        return driver._new_transport(connection, False,
                                     deadline=now + driver.listener.accept_timeout, http=True)

    def http_flush(self, sock: HttpSocket) -> None:
        self.driver._flush(sock)  # type: ignore[arg-type]

    def http_abort(self, sock: HttpSocket) -> None:
        self.driver._abort(sock)  # type: ignore[arg-type]

    def http_closing(self, sock: HttpSocket, now: float) -> None:
        self.driver._closing(sock, now)  # type: ignore[arg-type]

    def http_reading(self, sock: HttpSocket, on: bool) -> None:
        self.driver._actions.append(ResumeReading(sock.key) if on else PauseReading(sock.key))

    def http_event(self, event: HttpEvent | ControlMessageIgnored) -> None:
        self.driver._events.append(event)


def _address(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class ListenerDriver:
    """Drives one :class:`~hyco_proto.listener.Listener` over transports an adapter opens.

    ``max_message_size`` / ``reply_to_close`` configure accepted connections;
    ``close_timeout`` bounds how long a closed control channel may wait for the relay's TCP
    close. With ``fail_first_open`` (the default) any failure before the first ``Listening``
    ends the listener with :class:`StartFailed`; later failures reconnect with backoff.
    ``serve_http``: the application handles relayed HTTP requests (events
    :class:`~.http.HttpRequestStarted` ...); without it every request is answered 501.
    """

    def __init__(self, listener: Listener, *, max_message_size: int | None = None,
                 reply_to_close: bool = True, close_timeout: float = 10.0,
                 fail_first_open: bool = True, history: int = 1000,
                 serve_http: bool = False) -> None:
        self.listener = listener
        self.max_message_size = max_message_size
        self.reply_to_close = reply_to_close
        self.close_timeout = close_timeout
        self.fail_first_open = fail_first_open
        self.address = _address(listener.url)
        self._transports: dict[int, _Transport] = {}
        self._control: _Transport | None = None
        self._next_key = 0
        self._actions: list[DriverAction] = []
        self._events: list[DriverEvent] = []
        self._listened = False
        self._ended = False
        self._start_failed = False
        #: Pongs received on the control channel (keepalive answers), for diagnostics.
        self.keepalive_pongs = 0
        #: The latest core events (bounded), for diagnostics and tests.
        self.history: collections.deque[DriverEvent] = collections.deque(maxlen=history)
        #: The terminal error (StartFailed or Offline), once there is one.
        self.error: RelayError | None = None
        try:
            hybrid_connection = parse_relay_uri(listener.url).hybrid_connection
        except ValueError:
            hybrid_connection = ""
        self._http = HttpExchanges(_HttpPort(self), hybrid_connection, serve=serve_http)

    @classmethod
    def for_server(cls, server: str, token: TokenSourceLike | str | Callable[[], str], *,
                   listener_id: str | None = None, keepalive_interval: float | None = 30.0,
                   open_timeout: float | None = 10.0,
                   channel_headers: Iterable[tuple[str, str]] = (),
                   max_size: int | None = None, close_timeout: float = 10.0,
                   serve_http: bool = False, **listener_options: Any) -> ListenerDriver:
        """The driver of an adapter's ``RelayedServer``, from that class's keyword arguments."""
        listener = Listener(server, token, listener_id=listener_id,
                            keepalive_interval=keepalive_interval, open_timeout=open_timeout,
                            close_timeout=close_timeout, headers=channel_headers,
                            **listener_options)
        return cls(listener, max_message_size=max_size, close_timeout=close_timeout,
                   serve_http=serve_http)

    # -- state -----------------------------------------------------------------------------

    @property
    def state(self) -> ListenerState:
        return self.listener.state

    @property
    def is_listening(self) -> bool:
        return self.listener.state is ListenerState.LISTENING

    @property
    def control_connection(self) -> ClientConnection | None:
        """The current control channel's connection (None between attempts)."""
        return self._control.connection if self._control is not None else None

    @property
    def ended(self) -> bool:
        """Closed, offline or failed to start: nothing more will happen."""
        return self._ended

    # -- output ----------------------------------------------------------------------------

    def run(self, execute: Callable[[DriverAction], object],
            handle: Callable[[DriverEvent], object]) -> bool:
        """Execute every action and hand out every event, until the driver is quiet (hooks may
        answer requests on the way, which queues more). True when anything happened."""
        busy = False
        while True:
            actions = self.actions_to_take()
            for action in actions:
                execute(action)
            events = self.events_received()
            for event in events:
                handle(event)
            if not (actions or events):
                return busy
            busy = True

    def actions_to_take(self) -> list[DriverAction]:
        actions = self._actions
        self._actions = []
        return actions

    def events_received(self) -> list[DriverEvent]:
        events = self._events
        self._events = []
        return events

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must run next (None: no timer)."""
        best = self.listener.next_deadline()
        for transport in self._transports.values():
            due = transport.abort_at if transport.abort_at is not None else transport.deadline
            if due is not None and (best is None or due < best):
                best = due
        return best

    # -- the application -------------------------------------------------------------------

    def start(self, now: float) -> None:
        self.listener.start(now)
        self._pump(now)

    def close(self, now: float) -> None:
        """Stop listening: the control channel closes (1000); rendezvous under way are dropped."""
        self.listener.close(now)
        self._http.cancel_all("the listener is closing")
        self._drop_rendezvous()
        self._pump(now)

    def answer(self, request: ConnectionRequested, decision: Decision, now: float) -> None:
        """Answer a request with a ``headers`` decision (see :data:`Decision`).

        ``None`` accepts offering the sender's first subprotocol, like hyco-ws and .NET (§3.1).
        An invalid decision rejects the sender with 500 and raises (``TypeError`` /
        ``ValueError`` / ``LocalProtocolError``) so the adapter can report it.
        """
        try:
            self._answer(request, decision, now)
        except (TypeError, ValueError, LocalProtocolError):
            self.refuse(request, now)
            raise
        self._pump(now)

    def refuse(self, request: ConnectionRequested, now: float,
               description: str = "Internal Server Error") -> None:
        """Reject with 500 (a hook failed); a no-op when the request cannot be answered any more."""
        with contextlib.suppress(LocalProtocolError):
            self.listener.reject(now, request, 500, description)
        self._pump(now)

    def _answer(self, request: ConnectionRequested, decision: Decision, now: float) -> None:
        lst = self.listener
        if decision is None:
            offered = request.command.requested_subprotocols
            lst.accept(now, request, subprotocol=offered[0] if offered else None)
        elif isinstance(decision, str):
            lst.accept(now, request, subprotocol=decision)
        elif isinstance(decision, Accept):
            headers = tuple((str(k), str(v)) for k, v in decision.headers)
            if headers:  # check them now: a bad one must not fail the rendezvous later
                ClientHandshake("relay", "/", headers=headers)
            lst.accept(now, request, subprotocol=decision.subprotocol, headers=headers)
        elif isinstance(decision, Reject):
            lst.reject(now, request, decision.status, decision.description)
        elif isinstance(decision, tuple) and len(decision) == 2:
            reject = as_reject(decision)
            lst.reject(now, request, reject.status, reject.description)
        else:
            raise TypeError(f"the headers hook returned {decision!r}; return None, a "
                            "subprotocol, Accept(...), Reject(...) or (status, description)")

    # -- relayed HTTP ----------------------------------------------------------------------

    @property
    def http_requests(self) -> int:
        """Relayed HTTP requests under way."""
        return len(self._http)

    def respond(self, request_id: str, response: Response, now: float) -> int | None:
        """Answer request ``request_id`` (an :class:`~.http.HttpRequestStarted`): its head, and
        a whole (``bytes``) body; a streamed body follows with :meth:`send_body` and
        :meth:`end_response`. Returns the transport key the response is written on (wait for
        its write buffer to drain), or None while its rendezvous opens (wait for
        :class:`~.http.HttpResponseWritable`). Raises :class:`~.http.RequestCancelled` once the
        request is cancelled, ``LocalProtocolError`` for a second head or an unknown request.
        """
        try:
            return self._http.respond(request_id, response, now)
        finally:
            self._pump(now)

    def send_body(self, request_id: str, data: bytes, now: float) -> int | None:
        """One piece of a streamed response body (one fragment); returns like :meth:`respond`."""
        try:
            return self._http.send_body(request_id, data, now)
        finally:
            self._pump(now)

    def end_response(self, request_id: str, now: float) -> int | None:
        """End a streamed response body; returns like :meth:`respond`."""
        try:
            return self._http.end_response(request_id, now)
        finally:
            self._pump(now)

    def handler_failed(self, request_id: str, now: float) -> None:
        """The request handler raised: 500 if nothing was sent yet, else the response is
        aborted (its rendezvous dropped). A no-op for a request that is over."""
        self._http.handler_failed(request_id, now)
        self._pump(now)

    def body_consumed(self, request_id: str, size: int, now: float) -> None:
        """The application has taken ``size`` bytes of a request body (flow control)."""
        self._http.body_consumed(request_id, size)
        self._pump(now)

    # -- transports ------------------------------------------------------------------------

    def transport_open(self, key: int, now: float) -> None:
        """TCP (and TLS) to the address of ``OpenTransport(key)`` is up."""
        transport = self._transports.get(key)
        if transport is None:
            self._actions.append(AbortTransport(key))  # dropped while it was opening
            return
        transport.opened = True
        self._flush(transport)

    def transport_failed(self, key: int, now: float, cause: str) -> None:
        """Opening ``OpenTransport(key)`` failed; ``cause`` names address and reason."""
        transport = self._transports.pop(key, None)
        if transport is None:
            return
        if transport.http:
            self._http.socket_ended(transport, f"cannot reach its rendezvous: {cause}")
        elif transport.control:
            self._control = None
            if self._starting:
                # The relay was never reached: the cause is the error, not a "1006 close".
                self._fail_start(RelayError(cause), now)
            else:
                self.listener.channel_closed(now, 1006, cause)
        else:
            self._rendezvous_result(transport, now, None, cause)
        self._pump(now)

    def data_received(self, key: int, data: bytes, now: float) -> None:
        transport = self._transports.get(key)
        if transport is None:
            return
        transport.connection.receive_data(data)
        self._process(transport, now)
        self._pump(now)

    def connection_lost(self, key: int, now: float) -> None:
        """Transport ``key`` ended (EOF or error)."""
        transport = self._transports.get(key)
        if transport is None:
            return
        transport.connection.receive_eof()
        self._process(transport, now)
        if self._transports.get(key) is transport:
            self._forget(transport)
        self._pump(now)

    def handle_timer(self, now: float) -> None:
        for transport in list(self._transports.values()):
            if transport.abort_at is not None and now >= transport.abort_at:
                current = self._control is transport
                self._abort(transport)
                if current and self.listener.state is ListenerState.CLOSING:
                    # Our close was never answered: the core hears the channel is gone.
                    self.listener.channel_closed(now, 1006, "close timeout")
            elif transport.deadline is not None and now >= transport.deadline:
                self._abort(transport, "its rendezvous did not open within "
                                       f"{self.listener.accept_timeout:g} s")
                self._rendezvous_result(transport, now, None,
                                        f"no answer to the rendezvous with {self.address} "
                                        "within the relay's accept timeout")
        deadline = self.listener.next_deadline()
        if deadline is not None and now >= deadline:
            self.listener.handle_timer(now)
        self._pump(now)

    # -- internals -------------------------------------------------------------------------

    def _new_transport(self, connection: ClientConnection, control: bool,
                       action: ConnectRendezvous | None = None,
                       deadline: float | None = None, http: bool = False) -> _Transport:
        self._next_key += 1
        transport = _Transport(self._next_key, connection, control, action, deadline, http)
        self._transports[transport.key] = transport
        self._actions.append(OpenTransport(transport.key, connection.url, control))
        return transport

    def _forget(self, transport: _Transport,
                cause: str = "its rendezvous ended: the sender went away") -> None:
        self._transports.pop(transport.key, None)
        if self._control is transport:
            self._control = None
        if transport.http:
            self._http.socket_ended(transport, cause)

    def _abort(self, transport: _Transport,
               cause: str = "its rendezvous was dropped") -> None:
        self._forget(transport, cause)
        self._actions.append(AbortTransport(transport.key))

    def _closing(self, transport: _Transport, now: float) -> None:
        """The transport is done with; drop it if the peer has not closed TCP in time."""
        if self._control is transport:
            self._control = None
        transport.deadline = None
        transport.abort_at = now + self.close_timeout

    def _flush(self, transport: _Transport) -> None:
        if not transport.opened:
            return  # written once the transport is open
        for chunk in transport.connection.data_to_send():
            self._actions.append(Write(transport.key, chunk))

    def _process(self, transport: _Transport, now: float) -> None:
        events = transport.connection.events_received()
        if transport.http:
            if transport.connection.state is not ConnectionState.CONNECTING:
                transport.deadline = None  # open (or failed): the accept timeout is over
            self._http.socket_events(transport, events, now)
        elif transport.control:
            self._control_events(transport, events, now)
        else:
            self._rendezvous_events(transport, events, now)
        if transport.key in self._transports:
            self._flush(transport)

    def _control_events(self, transport: _Transport, events: Sequence[object],
                        now: float) -> None:
        lst = self.listener
        for event in events:
            if self._control is not transport:
                return  # the core has moved on from this channel
            if isinstance(event, TextMessage):
                lst.channel_message(now, event.data)
            elif isinstance(event, BinaryMessage):
                lst.channel_binary(now, event.data)
            elif isinstance(event, Pong):
                self.keepalive_pongs += 1
                lst.pong_received(now, event.payload)
            elif isinstance(event, Opened):
                lst.channel_opened(now)
            elif isinstance(event, Refused):
                self._closing(transport, now)
                lst.channel_rejected(now, event.response.status, event.response.reason)
            elif isinstance(event, HandshakeFailed):
                self._closing(transport, now)
                cause = str(event.error)
                if not transport.connection.url.secure:
                    # A TLS server drops a plain-text upgrade without a word.
                    cause += " (is the relay serving wss://? then use wss://)"
                if self._starting:
                    self._fail_start(RelayError(cause), now)
                    return
                lst.channel_closed(now, 1006, cause)
            elif isinstance(event, ConnectionClosed):
                # The relay closes TCP after the closing handshake; do not wait forever.
                self._closing(transport, now)
                lst.channel_closed(now, event.code, event.reason)

    def _rendezvous_events(self, transport: _Transport, events: Sequence[object],
                           now: float) -> None:
        for index, event in enumerate(events):
            if isinstance(event, Opened):
                action = transport.action
                assert action is not None
                self._rendezvous_result(transport, now, 101, "")
                self._forget(transport)
                if action.reject:  # a relay should never answer a reject with 101
                    self._actions.append(AbortTransport(transport.key))
                else:
                    self._actions.append(HandOver(transport.key, transport.connection,
                                                  action.request, tuple(events[index + 1:])))
                return
            if isinstance(event, Refused):
                self._rendezvous_result(transport, now, event.response.status,
                                        event.response.reason)
                self._closing(transport, now)
                return
            if isinstance(event, HandshakeFailed):
                self._rendezvous_result(transport, now, None, str(event.error))
                self._abort(transport)
                return

    def _rendezvous_result(self, transport: _Transport, now: float, status: int | None,
                           reason: str) -> None:
        action = transport.action
        if action is None or transport.deadline is None:
            return  # already reported
        transport.deadline = None
        # The listener may have closed meanwhile and forgotten the request.
        with contextlib.suppress(LocalProtocolError):
            self.listener.rendezvous_result(now, action.request_id, status, reason)

    def _pump(self, now: float) -> None:
        lst = self.listener
        while True:
            # Events first: a failed first open must not start the reconnect it queued.
            events = lst.events_received()
            for event in events:
                self._event(event, now)
            actions = lst.actions_to_take()
            for action in actions:
                self._run(action, now)
            if not (actions or events):
                break
        self._http.control_check()

    def _run(self, action: object, now: float) -> None:
        if isinstance(action, OpenControlChannel):
            if self._control is not None:
                self._abort(self._control)
            connection = ClientConnection.from_url(action.url, headers=action.headers)
            self._control = self._new_transport(connection, True)
        elif isinstance(action, (SendControlMessage, SendPing)):
            control = self._control
            if control is None or not control.connection.is_open:
                return  # the channel is going away; the core hears about it separately
            if isinstance(action, SendControlMessage):
                control.connection.send_text(action.text)
            else:
                control.connection.send_ping(action.payload)
            self._flush(control)
        elif isinstance(action, CloseControlChannel):
            control = self._control
            if control is None:
                return
            if action.abort or not control.connection.is_open:
                self._abort(control)  # the core expects no further report about it
            else:
                control.connection.send_close(action.code, action.reason)
                control.abort_at = now + self.close_timeout
                self._flush(control)
        elif isinstance(action, ConnectRendezvous):
            protocols = [action.subprotocol] if action.subprotocol else []
            try:
                connection = ClientConnection.from_url(
                    action.url, headers=action.headers, subprotocols=protocols,
                    max_message_size=self.max_message_size, reply_to_close=self.reply_to_close)
            except (ValueError, LocalProtocolError) as exc:  # a bad address from the relay
                with contextlib.suppress(LocalProtocolError):
                    self.listener.rendezvous_result(now, action.request_id, None,
                                                    f"unusable rendezvous address: {exc}")
                return
            deadline = action.request.received_at + self.listener.accept_timeout
            self._new_transport(connection, False, action, max(deadline, now + 1.0))

    def _event(self, event: Event, now: float) -> None:
        if isinstance(event, HttpRequestBody):  # not kept in the history: it holds a body
            if not self._start_failed:
                self._http.body_received(event.request_id, event.data)
            return
        self.history.append(event)
        if self._start_failed:
            return  # the rest of the batch that failed the start (Reconnecting ...)
        if isinstance(event, HttpRequestReceived):
            self._http.request_received(event.command, now)
            return
        if isinstance(event, Listening):
            self._listened = True
        elif isinstance(event, Disconnected) and self._starting:
            self._fail_start(event.error, now)
            return
        elif isinstance(event, Offline):
            starting = self._starting
            self._ended = True
            self.error = event.error
            self._drop_rendezvous()  # nothing more is handed over once offline
            if starting:
                self.error = self._named(event.error)
                self._events.append(StartFailed(self.error))
                return
        elif isinstance(event, Closed):
            self._ended = True
        self._events.append(event)

    @property
    def _starting(self) -> bool:
        """A failure now fails the start (see ``fail_first_open``)."""
        return self.fail_first_open and not self._listened and not self._ended

    def _drop_rendezvous(self) -> None:
        for transport in list(self._transports.values()):
            if not transport.control:
                self._abort(transport, "the listener stopped")

    def _named(self, error: RelayError) -> RelayError:
        """``error`` (same class and fields) with a message naming the listen address."""
        text = f"cannot listen at {self.address}: {error.message}"
        named = type(error)(text, status=error.status, close_code=error.close_code,
                    description=error.description, tracking_id=error.tracking_id,
                    transient=error.transient)
        named.__cause__ = error.__cause__ or error
        return named

    def _fail_start(self, error: RelayError, now: float) -> None:
        named = self._named(error)
        self.error = named
        self._start_failed = True
        self._ended = True
        self._events.append(StartFailed(named))
        lst = self.listener
        lst.close(now)
        lst.events_received()  # Reconnecting / Closed: the start failed instead
        # Nothing queued may run now (a reconnect), except dropping a channel still opening.
        for action in lst.actions_to_take():
            if isinstance(action, CloseControlChannel) and self._control is not None:
                self._abort(self._control)


class ListenerView:
    """What every adapter's ``RelayedServer`` tells about its driver (mixin; needs ``_driver``)."""

    _driver: ListenerDriver

    @property
    def listener(self) -> Listener:
        return self._driver.listener

    @property
    def state(self) -> ListenerState:
        return self._driver.state

    @property
    def is_listening(self) -> bool:
        return self._driver.is_listening

    @property
    def keepalive_pongs(self) -> int:
        """Pongs received on the control channel (keepalive answers)."""
        return self._driver.keepalive_pongs

    @property
    def events(self) -> list[DriverEvent]:
        """The latest listener events, oldest first (bounded), for diagnostics and tests."""
        return list(self._driver.history)


def relayed_server_options(options: Mapping[str, Any], on_connection: object | None,
                           request_handler: object | None = None
                           ) -> tuple[Any, Any, dict[str, Any]]:
    """hyco-ws ``createRelayedServer({server, token, id, ...}, onConnection)`` options as
    ``(server, token, keyword arguments)`` for a ``RelayedServer`` (``id`` → ``listener_id``;
    ``request_handler`` joins them when given)."""
    opts = dict(options)
    try:
        server = opts.pop("server")
        token = opts.pop("token")
    except KeyError as exc:
        raise ValueError(f"options need {exc.args[0]!r}") from None
    if "id" in opts:
        opts["listener_id"] = opts.pop("id")
    if on_connection is not None:
        opts["connection"] = on_connection
    if request_handler is not None:
        opts["request_handler"] = request_handler
    return server, token, opts
