"""Web PubSub client state machine on the JSON subprotocols, without I/O.

:class:`WebPubSubClientCore` is the client's logic with the WebSocket left to a driver (an
adapter), in the shape of :class:`hyco_proto.listener.Listener`. The adapter reports what happened
(:meth:`~WebPubSubClientCore.start`, :meth:`~WebPubSubClientCore.connection_opened`,
:meth:`~WebPubSubClientCore.text_received`, :meth:`~WebPubSubClientCore.connection_closed`,
:meth:`~WebPubSubClientCore.handle_timer` ...), then

* performs :meth:`~WebPubSubClientCore.actions_to_take` in order (:class:`FetchUrl`,
  :class:`OpenConnection`, :class:`SendText`, :class:`CloseConnection`), and
* hands :meth:`~WebPubSubClientCore.events_received` to the application.

Every input that depends on time takes ``now`` (seconds, any monotonic origin); the adapter calls
:meth:`~WebPubSubClientCore.handle_timer` at or after :meth:`~WebPubSubClientCore.next_deadline`.

Rules, as the official JavaScript and Python client SDKs behave:

* **Acks.** ``joinGroup`` / ``leaveGroup`` always carry an ``ackId``; ``sendToGroup`` and
  ``event`` carry one unless ``ack=False`` (fire-and-forget: no ack, errors are never reported).
  Ids are allocated per client from 1, skipping ids still pending. An ``ack`` resolves as
  :class:`AckResolved`; ``success`` or an error named ``Duplicate`` counts as ``ok``. Acks have no
  timeout here (the adapter can add one).
* **Reliable subprotocol** (``json.reliable.webpubsub.azure.v1``). The largest ``sequenceId`` seen
  is kept; a data message with ``sequenceId <=`` that is a replay and is dropped. A cumulative
  ``sequenceAck`` is batched: the first new id arms a timer ``sequence_ack_interval`` (1 s) away
  and one ``sequenceAck`` for the largest id goes out when it fires, so at most one per interval;
  it goes out at once when ``sequence_ack_batch`` (300) ids are unacknowledged (the JavaScript
  client's ``diff > 300`` rule).
* **Recovery.** When an open reliable connection that received ``connectionId`` and
  ``reconnectionToken`` closes unexpectedly with any code but 1008, the client reopens
  :func:`~hyco_proto.webpubsub.endpoints.build_recovery_url` (the same client URL plus
  ``awps_connection_id`` / ``awps_reconnection_token``) with the same subprotocol: the first
  attempt at once, then after ``recovery_delays`` (the last repeats) while less than
  ``recovery_timeout`` (30 s) has passed since the loss. An open recovered socket is the same
  logical connection: no new :class:`Connected`, no rejoin, sequence numbering kept, and pending
  acks stay pending; their requests are sent again with the same ``ackId`` (the service keeps
  executed ackIds across recovery and answers ``Duplicate``, which counts as success, so a request
  runs once while an ack lost with the old socket is not waited for forever). A later
  ``connected`` message only updates the reconnection token.
* **New connection.** Close code 1008, the non-reliable subprotocol, no reconnection token, a
  recovery that failed with 1008 or ran out of time: the logical connection is gone. Pending acks
  fail (:class:`AckResolved` with error name ``ConnectionLost``), :class:`Disconnected` is emitted
  (with the service's last ``disconnected`` message if any), sequence state is reset, and with
  ``auto_reconnect`` a brand-new connection is made: at once, then after ``reconnect_delays``
  while attempts keep failing (the index is reset by a ``connected`` message). On the first
  ``connected`` of a new connection, every group joined before is joined again (a ``joinGroup``
  with an ack each; a failure is a :class:`RejoinFailed`), then :class:`Connected` is emitted.
* **URL.** With ``url`` the same client URL opens every new connection. With ``url=None`` each new
  connection first asks the adapter with :class:`FetchUrl` (a fresh token, as the SDKs'
  ``getClientAccessUrl``); the adapter answers :meth:`~WebPubSubClientCore.url_ready` or
  :meth:`~WebPubSubClientCore.url_failed`. Recovery never fetches a URL.
* **Keepalive** (the JavaScript client's, optional). With ``keepalive_interval`` a ``ping`` goes
  out every interval while connected; when no text frame at all (a ``pong`` included) has arrived
  for ``keepalive_timeout`` the client closes the socket (1001, ``"keepalive timeout"``) and,
  once the adapter reports the close, treats it as lost (recovery or a new connection).
* Unknown service message types are ignored. A malformed service frame closes the socket with
  the close code the parser gives (1007 / 1009) and counts as a loss.

Contract for the adapter: every :class:`OpenConnection` ends in exactly one
:meth:`~WebPubSubClientCore.connection_opened` or :meth:`~WebPubSubClientCore.connection_closed`
(a failed open, HTTP error or TCP error is a ``connection_closed`` with ``code=None``), and every
opened socket ends in one ``connection_closed``. A :class:`CloseConnection` applies to the
current socket, open or still opening; the adapter bounds its open and close handshakes itself.
The API calls (:meth:`~WebPubSubClientCore.join_group` ...) need an open socket; otherwise they
raise :class:`~hyco_proto.errors.LocalProtocolError`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from ..errors import LocalProtocolError
from .endpoints import build_recovery_url, parse_client_url
from .messages import (
    JSON_RELIABLE_SUBPROTOCOL,
    SUBPROTOCOLS,
    AckError,
    AckMessage,
    ClientMessage,
    ConnectedMessage,
    Data,
    DisconnectedMessage,
    EventMessage,
    GroupDataMessage,
    JoinGroupMessage,
    JsonValue,
    LeaveGroupMessage,
    PingMessage,
    SendToGroupMessage,
    SequenceAckMessage,
    ServerDataMessage,
    WebPubSubProtocolError,
    data_value,
    parse_service_message,
    serialize,
)

__all__ = [
    "CONNECTION_LOST",
    "DEFAULT_RECONNECT_DELAYS",
    "DEFAULT_RECOVERY_DELAYS",
    "EVENT_NAMES",
    "AckResolved",
    "AckTimeoutError",
    "Callbacks",
    "ClientAction",
    "ClientEvent",
    "ClientState",
    "CloseConnection",
    "Connected",
    "Disconnected",
    "FetchUrl",
    "GroupMessage",
    "OpenConnection",
    "RejoinFailed",
    "SendMessageError",
    "SendText",
    "ServerMessage",
    "Stopped",
    "WebPubSubClientCore",
    "address_of",
    "event_name",
]

#: ``AckError.name`` of an ack that can no longer arrive (new connection, or stop()).
CONNECTION_LOST = "ConnectionLost"
#: Waits between failed recovery attempts; the last repeats (the first attempt is immediate).
DEFAULT_RECOVERY_DELAYS: tuple[float, ...] = (1.0, 1.0, 2.0, 2.0, 4.0)
#: Waits before each new-connection attempt after a loss; the last repeats.
DEFAULT_RECONNECT_DELAYS: tuple[float, ...] = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0)

_POLICY_VIOLATION = 1008
_log = logging.getLogger("hyco_proto.webpubsub")


# --------------------------------------------------------------------------------------------
# actions


@dataclass(frozen=True, slots=True)
class FetchUrl:
    """Get a fresh client URL (e.g. a new token) and answer ``url_ready`` / ``url_failed``."""


@dataclass(frozen=True, slots=True)
class OpenConnection:
    """Open a WebSocket to ``url`` offering exactly ``subprotocol``."""

    url: str
    subprotocol: str


@dataclass(frozen=True, slots=True)
class SendText:
    """Send ``text`` as one WebSocket text frame on the current socket."""

    text: str


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close the current socket (open or opening) with ``code`` and ``reason``."""

    code: int
    reason: str


ClientAction: TypeAlias = FetchUrl | OpenConnection | SendText | CloseConnection


# --------------------------------------------------------------------------------------------
# events


@dataclass(frozen=True, slots=True)
class Connected:
    """A new logical connection: the first ``connected`` message after a new socket."""

    connection_id: str
    user_id: str | None


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The logical connection is gone (not recoverable); ``reason`` says why."""

    reason: str


@dataclass(frozen=True, slots=True)
class Stopped:
    """The client stopped; it reports nothing more."""


@dataclass(frozen=True, slots=True)
class GroupMessage:
    """Data published to ``group``."""

    group: str
    data: Data
    from_user_id: str | None = None
    sequence_id: int | None = None

    @property
    def data_type(self) -> str:
        """``"text"``, ``"json"``, ``"binary"`` or ``"protobuf"``."""
        return self.data.data_type

    @property
    def value(self) -> JsonValue | bytes:
        """The payload as the application sees it: the str, the JSON value or the bytes."""
        return data_value(self.data)


@dataclass(frozen=True, slots=True)
class ServerMessage:
    """Data sent by the application server."""

    data: Data
    sequence_id: int | None = None

    @property
    def data_type(self) -> str:
        """``"text"``, ``"json"``, ``"binary"`` or ``"protobuf"``."""
        return self.data.data_type

    @property
    def value(self) -> JsonValue | bytes:
        """The payload as the application sees it: the str, the JSON value or the bytes."""
        return data_value(self.data)


@dataclass(frozen=True, slots=True)
class AckResolved:
    """The outcome of the request that carried ``ack_id``.

    ``ok`` is success or ``duplicate`` (the service had already run it). On failure ``error``
    is the service's (``Forbidden`` ...) or ``ConnectionLost`` when no ack can come any more.
    """

    ack_id: int
    ok: bool
    duplicate: bool = False
    error: AckError | None = None


@dataclass(frozen=True, slots=True)
class RejoinFailed:
    """Joining ``group`` again on a new connection failed; it is no longer considered joined."""

    group: str
    error: AckError


ClientEvent: TypeAlias = (
    Connected | Disconnected | Stopped | GroupMessage | ServerMessage | AckResolved | RejoinFailed
)


#: The names adapters' ``on(name, fn)`` take, by event class (AckResolved is not one: it
#: resolves the waiting call).
EVENT_NAMES: dict[type, str] = {
    Connected: "connected",
    Disconnected: "disconnected",
    Stopped: "stopped",
    GroupMessage: "group-message",
    ServerMessage: "server-message",
    RejoinFailed: "rejoin-group-failed",
}


def event_name(event: ClientEvent) -> str | None:
    """The ``on()`` name of ``event``, or None for :class:`AckResolved`."""
    return EVENT_NAMES.get(type(event))


class Callbacks:
    """The application's callbacks by :data:`EVENT_NAMES` name, as adapters' ``on`` / ``off``
    keep them; :meth:`run` calls those of one event in order, logging what they raise."""

    def __init__(self) -> None:
        self._by_name: dict[str, list[Callable[[Any], object]]] = {
            name: [] for name in EVENT_NAMES.values()}

    def _list(self, name: str) -> list[Callable[[Any], object]]:
        try:
            return self._by_name[name]
        except KeyError:
            raise ValueError(f"unknown event {name!r}; one of "
                             f"{', '.join(self._by_name)}") from None

    def add(self, name: str, callback: Callable[[Any], object]) -> None:
        self._list(name).append(callback)

    def remove(self, name: str, callback: Callable[[Any], object]) -> None:
        callbacks = self._list(name)
        if callback in callbacks:
            callbacks.remove(callback)

    def of(self, event: ClientEvent) -> list[Callable[[Any], object]]:
        """The callbacks of ``event`` (a copy), none for :class:`AckResolved`."""
        return list(self._by_name.get(event_name(event) or "", ()))

    def run(self, event: ClientEvent) -> list[object]:
        """Call each callback of ``event``; returns their results (awaitables, for asyncio)."""
        results = []
        for callback in self.of(event):
            try:
                results.append(callback(event))
            except Exception:
                _log.exception("Web PubSub %s callback failed", event_name(event))
        return results


def address_of(url: str) -> str:
    """``url`` without its query (the access token): what error messages name."""
    return url.split("?", 1)[0]


class SendMessageError(Exception):
    """A request (join, leave, send) failed: the service's ack said so, or none came.

    ``ack_id``, ``error_name`` (``Forbidden``, ``ConnectionLost``, ``Timeout`` ...),
    ``error_message`` (the service's text) and ``address`` (the client URL without its query).
    """

    def __init__(self, ack_id: int, error_name: str, error_message: str = "", *,
                 what: str = "request", address: str = "") -> None:
        text = f"{what} with ackId {ack_id} failed: {error_name}"
        text += f": {error_message}" if error_message else ""
        super().__init__(text + (f" ({address})" if address else ""))
        self.ack_id = ack_id
        self.error_name = error_name
        self.error_message = error_message
        self.address = address

    @classmethod
    def from_ack(cls, resolved: AckResolved, what: str = "request",
                 address: str = "") -> SendMessageError:
        error = resolved.error or AckError("Unknown", "")
        return cls(resolved.ack_id, error.name, error.message, what=what, address=address)


class AckTimeoutError(SendMessageError, TimeoutError):
    """No ack arrived within the timeout (the request may or may not have run)."""

    def __init__(self, ack_id: int, timeout: float, *, what: str = "request",
                 address: str = "") -> None:
        super().__init__(ack_id, "Timeout", f"no ack within {timeout:g} s", what=what,
                         address=address)


class ClientState(enum.Enum):
    IDLE = "idle"                      # before start()
    FETCHING_URL = "fetching_url"      # FetchUrl issued, waiting for url_ready / url_failed
    CONNECTING = "connecting"          # OpenConnection for a new connection issued
    CONNECTED = "connected"            # a socket is open (new or recovered)
    RECOVERING = "recovering"          # OpenConnection to the recovery URL issued
    RECOVERY_WAIT = "recovery_wait"    # waiting before the next recovery attempt
    RECONNECT_WAIT = "reconnect_wait"  # waiting before the next new-connection attempt
    STOPPING = "stopping"              # CloseConnection sent by stop(), waiting for the close
    STOPPED = "stopped"


_S = ClientState


@dataclass(slots=True)
class _Pending:
    text: str                    # the request frame, sent again after a recovery
    rejoin_group: str | None     # set for an automatic rejoin (no AckResolved)
    join_group: str | None       # set for a user joinGroup (joined on success)


class WebPubSubClientCore:
    """Sans-IO Web PubSub client (JSON subprotocols): acks, groups, recovery, reconnect.

    ``url`` is the client URL (``access_token`` on the query) or ``None`` to ask the adapter with
    :class:`FetchUrl` before each new connection. ``subprotocol`` is one of
    :data:`~hyco_proto.webpubsub.messages.SUBPROTOCOLS`, reliable by default.
    ``keepalive_interval=None`` disables the application-level ping.
    """

    def __init__(self, url: str | None = None, *,
                 subprotocol: str = JSON_RELIABLE_SUBPROTOCOL,
                 auto_reconnect: bool = True,
                 auto_rejoin_groups: bool = True,
                 sequence_ack_interval: float = 1.0,
                 sequence_ack_batch: int = 300,
                 recovery_timeout: float = 30.0,
                 recovery_delays: Sequence[float] = DEFAULT_RECOVERY_DELAYS,
                 reconnect_delays: Sequence[float] = DEFAULT_RECONNECT_DELAYS,
                 keepalive_interval: float | None = 20.0,
                 keepalive_timeout: float = 120.0) -> None:
        if subprotocol not in SUBPROTOCOLS:
            raise ValueError(f"subprotocol must be one of {SUBPROTOCOLS}, not {subprotocol!r}")
        if url is not None:
            parse_client_url(url)
        for name, value in (("sequence_ack_interval", sequence_ack_interval),
                            ("recovery_timeout", recovery_timeout),
                            ("keepalive_interval", keepalive_interval),
                            ("keepalive_timeout", keepalive_timeout)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if sequence_ack_batch < 1:
            raise ValueError(f"sequence_ack_batch must be >= 1, got {sequence_ack_batch!r}")
        for name, delays in (("recovery_delays", recovery_delays),
                             ("reconnect_delays", reconnect_delays)):
            if not delays or any(d < 0 for d in delays):
                raise ValueError(f"{name} must be a non-empty sequence of delays >= 0")
        self._fixed_url = url
        self.subprotocol = subprotocol
        self.reliable = subprotocol == JSON_RELIABLE_SUBPROTOCOL
        self._auto_reconnect = auto_reconnect
        self._auto_rejoin = auto_rejoin_groups
        self._seq_ack_interval = sequence_ack_interval
        self._seq_ack_batch = sequence_ack_batch
        self._recovery_timeout = recovery_timeout
        self._recovery_delays = tuple(float(d) for d in recovery_delays)
        self._reconnect_delays = tuple(float(d) for d in reconnect_delays)
        self._keepalive_interval = keepalive_interval
        self._keepalive_timeout = keepalive_timeout

        self._state = _S.IDLE
        self._actions: list[ClientAction] = []
        self._events: list[ClientEvent] = []
        # the logical connection
        self._url: str | None = None              # the client URL of the current connection
        self.connection_id: str | None = None
        self.user_id: str | None = None
        self._reconnection_token: str | None = None
        self._got_connected = False               # first `connected` of this connection seen
        self._last_disconnect: str | None = None  # the service's last `disconnected` message
        self._groups: dict[str, None] = {}        # joined groups, in join order
        self._pending: dict[int, _Pending] = {}
        self._next_ack_id = 1
        # reliable sequence state
        self._last_seq = 0
        self._acked_seq = 0
        self._seq_ack_at: float | None = None
        # socket state
        self._closing_reason: str | None = None   # we closed the socket as lost; reason
        self._ping_at: float | None = None
        self._last_rx = 0.0
        # retries
        self._recovery_deadline = 0.0
        self._recovery_index = 0
        self._reconnect_index = 0
        self._retry_at: float | None = None

    # ---- introspection / output ------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def groups(self) -> tuple[str, ...]:
        """Groups joined (successful ack) and not left, rejoined on a new connection."""
        return tuple(self._groups)

    @property
    def last_sequence_id(self) -> int:
        """The largest ``sequenceId`` received on this logical connection (0: none)."""
        return self._last_seq

    @property
    def is_open(self) -> bool:
        """Whether API calls can send now (a socket is open and not being closed)."""
        return self._state is _S.CONNECTED and self._closing_reason is None

    @property
    def pending_acks(self) -> tuple[int, ...]:
        return tuple(self._pending)

    def actions_to_take(self) -> list[ClientAction]:
        """Return and clear the I/O actions for the adapter, in the order to perform them."""
        actions, self._actions = self._actions, []
        return actions

    def events_received(self) -> list[ClientEvent]:
        """Return and clear the events for the application."""
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or None for no timer."""
        if self._state in (_S.RECOVERY_WAIT, _S.RECONNECT_WAIT):
            return self._retry_at
        if self._state is not _S.CONNECTED or self._closing_reason is not None:
            return None
        times = [t for t in (self._seq_ack_at, self._ping_at) if t is not None]
        if self._keepalive_interval is not None:
            times.append(self._last_rx + self._keepalive_timeout)
        return min(times) if times else None

    # ---- inputs from the adapter -----------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin: the first :class:`FetchUrl` or :class:`OpenConnection` is queued."""
        if self._state is not _S.IDLE:
            raise LocalProtocolError(f"start() in state {self._state.value}")
        self._new_connection(now)

    def url_ready(self, now: float, url: str) -> None:
        """The adapter's answer to :class:`FetchUrl`: open ``url``."""
        if self._state is not _S.FETCHING_URL:
            return  # stale (stopped meanwhile)
        try:
            parse_client_url(url)
        except (TypeError, ValueError) as exc:
            self.url_failed(now, f"invalid client URL: {exc}")
            return
        self._url = url
        self._state = _S.CONNECTING
        self._actions.append(OpenConnection(url, self.subprotocol))

    def url_failed(self, now: float, reason: str = "") -> None:
        """The adapter could not get a URL: retry after the next reconnect delay."""
        if self._state is not _S.FETCHING_URL:
            return
        self._reconnect_later(now)

    def connection_opened(self, now: float, subprotocol: str | None) -> None:
        """The socket from the last :class:`OpenConnection` is open; ``subprotocol`` is the one
        the service selected (it must be the one offered)."""
        state = self._state
        if state not in (_S.CONNECTING, _S.RECOVERING):
            return
        self._state = _S.CONNECTED
        self._closing_reason = None
        self._last_rx = now
        self._ping_at = None if self._keepalive_interval is None else now + self._keepalive_interval
        if subprotocol != self.subprotocol:
            self._close_as_lost(1002, f"the service selected subprotocol {subprotocol!r}, "
                                      f"not {self.subprotocol!r}")
            return
        if state is _S.RECOVERING:
            self._recovery_index = 0
            for pending in self._pending.values():
                self._actions.append(SendText(pending.text))
            if self._last_seq > self._acked_seq:
                self._send_sequence_ack()
        else:
            self._got_connected = False

    def text_received(self, now: float, text: str) -> None:
        """One text frame arrived on the open socket."""
        if self._state is not _S.CONNECTED or self._closing_reason is not None:
            return
        self._last_rx = now
        try:
            msg = parse_service_message(text)
        except WebPubSubProtocolError as exc:
            self._close_as_lost(exc.close_code, str(exc))
            return
        if isinstance(msg, AckMessage):
            self._on_ack(msg)
        elif isinstance(msg, (GroupDataMessage, ServerDataMessage)):
            self._on_data(now, msg)
        elif isinstance(msg, ConnectedMessage):
            self._on_connected(msg)
        elif isinstance(msg, DisconnectedMessage):
            self._last_disconnect = msg.message
        # PongMessage only refreshes _last_rx; UnknownMessage is ignored

    def connection_closed(self, now: float, code: int | None, reason: str = "") -> None:
        """The socket closed, or the last :class:`OpenConnection` failed (``code=None``)."""
        state = self._state
        if state is _S.STOPPING:
            if self.connection_id is not None or self._got_connected:
                self._events.append(Disconnected("client stopped"))
            self._finish_stop()
        elif state is _S.CONNECTING:
            self._reconnect_later(now)
        elif state is _S.CONNECTED:
            self._connection_lost(now, code, reason)
        elif state is _S.RECOVERING:
            if code == _POLICY_VIOLATION:
                self._give_up(now, reason or "the connection could not be recovered")
            elif now >= self._recovery_deadline:
                self._give_up(now, self._lost_text(reason or "recovery timed out"))
            else:
                delay = self._recovery_delays[
                    min(self._recovery_index, len(self._recovery_delays) - 1)]
                self._recovery_index += 1
                self._retry_at = now + delay
                self._state = _S.RECOVERY_WAIT
        # IDLE / waits / STOPPED: a stale report, ignored

    def handle_timer(self, now: float) -> None:
        """Run whatever is due at ``now`` (call at or after :meth:`next_deadline`)."""
        state = self._state
        if state is _S.RECOVERY_WAIT:
            if self._retry_at is not None and now >= self._retry_at:
                self._retry_at = None
                if now >= self._recovery_deadline:
                    self._give_up(now, self._lost_text("recovery timed out"))
                else:
                    self._open_recovery()
        elif state is _S.RECONNECT_WAIT:
            if self._retry_at is not None and now >= self._retry_at:
                self._retry_at = None
                self._open_new()
        elif state is _S.CONNECTED and self._closing_reason is None:
            if (self._keepalive_interval is not None
                    and now - self._last_rx >= self._keepalive_timeout):
                self._close_as_lost(1001, "keepalive timeout")
                return
            if self._seq_ack_at is not None and now >= self._seq_ack_at:
                self._send_sequence_ack()
            if self._ping_at is not None and now >= self._ping_at:
                self._actions.append(SendText(serialize(PingMessage())))
                assert self._keepalive_interval is not None
                self._ping_at = now + self._keepalive_interval

    def stop(self, now: float) -> None:
        """Stop for good: close the socket (1000), fail pending acks, then :class:`Stopped`."""
        state = self._state
        if state in (_S.STOPPING, _S.STOPPED):
            return
        self._fail_pending("the client was stopped")
        if state in (_S.CONNECTED, _S.CONNECTING, _S.RECOVERING):
            self._state = _S.STOPPING
            self._actions.append(CloseConnection(1000, ""))
            return
        if state is _S.RECOVERY_WAIT:
            self._events.append(Disconnected("client stopped"))
        self._finish_stop()

    # ---- API calls -------------------------------------------------------------------------

    def join_group(self, group: str, now: float, ack_id: int | None = None) -> int:
        """Send ``joinGroup``; return its ackId (``ack_id`` or the next free one)."""
        ack = self._alloc(ack_id)
        self._send_request(JoinGroupMessage(group, ack), ack, join_group=group)
        return ack

    def leave_group(self, group: str, now: float, ack_id: int | None = None) -> int:
        """Send ``leaveGroup`` (the group is no longer rejoined); return its ackId."""
        ack = self._alloc(ack_id)
        self._send_request(LeaveGroupMessage(group, ack), ack)
        self._groups.pop(group, None)
        return ack

    def send_to_group(self, group: str, data: Data, now: float, *, no_echo: bool = False,
                      ack: bool = True) -> int | None:
        """Send ``sendToGroup``; return its ackId, or None with ``ack=False``."""
        ack_id = self._alloc(None) if ack else None
        self._send_request(SendToGroupMessage(group, data, ack_id, no_echo), ack_id)
        return ack_id

    def send_event(self, event: str, data: Data, now: float, *, ack: bool = True) -> int | None:
        """Send an ``event`` to the upstream server; return its ackId, or None."""
        ack_id = self._alloc(None) if ack else None
        self._send_request(EventMessage(event, data, ack_id), ack_id)
        return ack_id

    # ---- internals -------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._state is not _S.CONNECTED or self._closing_reason is not None:
            raise LocalProtocolError(f"not connected (state {self._state.value})")

    def _alloc(self, ack_id: int | None) -> int:
        self._require_open()
        if ack_id is not None:
            if isinstance(ack_id, bool) or not isinstance(ack_id, int) or not (
                    0 <= ack_id < 2**64):
                raise ValueError(f"ack_id must be an integer in 0..2**64-1, not {ack_id!r}")
            if ack_id in self._pending:
                raise ValueError(f"ack_id {ack_id} is still pending")
            return ack_id
        while self._next_ack_id in self._pending:
            self._next_ack_id += 1
        ack_id = self._next_ack_id
        self._next_ack_id += 1
        return ack_id

    def _send_request(self, msg: ClientMessage, ack_id: int | None, *,
                      join_group: str | None = None, rejoin_group: str | None = None) -> None:
        if rejoin_group is None:
            self._require_open()
        text = serialize(msg)
        if ack_id is not None:
            self._pending[ack_id] = _Pending(text, rejoin_group, join_group)
        self._actions.append(SendText(text))

    def _on_ack(self, msg: AckMessage) -> None:
        pending = self._pending.pop(msg.ack_id, None)
        if pending is None:
            return  # not ours (or already resolved): ignore
        ok = msg.ok
        if pending.rejoin_group is not None:
            if not ok:
                self._groups.pop(pending.rejoin_group, None)
                self._events.append(RejoinFailed(
                    pending.rejoin_group, msg.error or AckError("Unknown", "join failed")))
            return
        if ok and pending.join_group is not None:
            self._groups[pending.join_group] = None
        self._events.append(AckResolved(msg.ack_id, ok, msg.is_duplicate, msg.error))

    def _on_data(self, now: float, msg: GroupDataMessage | ServerDataMessage) -> None:
        seq = msg.sequence_id
        if seq is not None and self.reliable:
            if seq <= self._last_seq:
                return  # a replay after recovery: already delivered
            self._last_seq = seq
            if self._last_seq - self._acked_seq >= self._seq_ack_batch:
                self._send_sequence_ack()
            elif self._seq_ack_at is None:
                self._seq_ack_at = now + self._seq_ack_interval
        if isinstance(msg, GroupDataMessage):
            self._events.append(GroupMessage(msg.group, msg.data, msg.from_user_id, seq))
        else:
            self._events.append(ServerMessage(msg.data, seq))

    def _on_connected(self, msg: ConnectedMessage) -> None:
        self._reconnection_token = msg.reconnection_token
        if self._got_connected:
            return  # a recovered connection's `connected`: only the token changes
        self._got_connected = True
        self._reconnect_index = 0
        self.connection_id = msg.connection_id
        self.user_id = msg.user_id
        if self._auto_rejoin:
            for group in list(self._groups):
                ack = self._alloc(None)
                self._send_request(JoinGroupMessage(group, ack), ack, rejoin_group=group)
        self._events.append(Connected(msg.connection_id, msg.user_id))

    def _send_sequence_ack(self) -> None:
        self._actions.append(SendText(serialize(SequenceAckMessage(self._last_seq))))
        self._acked_seq = self._last_seq
        self._seq_ack_at = None

    def _close_as_lost(self, code: int, reason: str) -> None:
        self._closing_reason = reason
        self._actions.append(CloseConnection(code, reason))

    def _lost_text(self, reason: str) -> str:
        return self._last_disconnect or reason

    def _connection_lost(self, now: float, code: int | None, reason: str) -> None:
        if self._closing_reason is not None:
            reason, code = self._closing_reason, None
        self._closing_reason = None
        self._seq_ack_at = None
        self._ping_at = None
        text = reason or (f"connection closed with code {code}" if code is not None
                          else "connection lost")
        if (self.reliable and self._got_connected and self.connection_id is not None
                and self._reconnection_token and code != _POLICY_VIOLATION):
            self._recovery_deadline = now + self._recovery_timeout
            self._recovery_index = 0
            self._open_recovery()
            return
        self._give_up(now, self._lost_text(text))

    def _open_recovery(self) -> None:
        assert self._url is not None and self.connection_id is not None
        assert self._reconnection_token is not None
        self._state = _S.RECOVERING
        self._actions.append(OpenConnection(
            build_recovery_url(self._url, self.connection_id, self._reconnection_token),
            self.subprotocol))

    def _give_up(self, now: float, reason: str) -> None:
        """The logical connection is gone: fail acks, report, and start afresh (or stop)."""
        self._fail_pending("the connection was lost before the ack arrived; the request may "
                           "or may not have run")
        self._events.append(Disconnected(reason))
        self._reset_connection()
        if self._auto_reconnect:
            self._new_connection(now)
        else:
            self._finish_stop()

    def _reset_connection(self) -> None:
        self.connection_id = None
        self.user_id = None
        self._reconnection_token = None
        self._got_connected = False
        self._last_disconnect = None
        self._last_seq = self._acked_seq = 0
        self._seq_ack_at = None
        self._closing_reason = None

    def _fail_pending(self, message: str) -> None:
        pending, self._pending = self._pending, {}
        error = AckError(CONNECTION_LOST, message)
        for ack_id, p in pending.items():
            # an unanswered rejoin keeps its group: the next new connection joins it again
            if p.rejoin_group is None:
                self._events.append(AckResolved(ack_id, False, False, error))

    def _new_connection(self, now: float) -> None:
        delay = self._reconnect_delays[min(self._reconnect_index, len(self._reconnect_delays) - 1)]
        self._reconnect_index += 1
        if delay > 0:
            self._state = _S.RECONNECT_WAIT
            self._retry_at = now + delay
        else:
            self._open_new()

    def _reconnect_later(self, now: float) -> None:
        if not self._auto_reconnect:
            self._finish_stop()
            return
        self._new_connection(now)

    def _open_new(self) -> None:
        if self._fixed_url is None:
            self._state = _S.FETCHING_URL
            self._actions.append(FetchUrl())
            return
        self._url = self._fixed_url
        self._state = _S.CONNECTING
        self._actions.append(OpenConnection(self._fixed_url, self.subprotocol))

    def _finish_stop(self) -> None:
        self._state = _S.STOPPED
        self._retry_at = None
        self._seq_ack_at = None
        self._ping_at = None
        self._events.append(Stopped())
