"""Listener state machine: the control channel's life, message by message (no frames, no I/O).

The core sits *above* the WebSocket layer. Its driver (an adapter) owns the control-channel
WebSocket and the rendezvous sockets; it tells the core what happened (``channel_opened``,
``channel_message``, ``pong_received``, ``channel_closed``, ``handle_timer`` ...) and then

* executes :meth:`Listener.actions_to_take` in order (open / send / ping / close the control
  channel, connect a rendezvous), and
* hands :meth:`Listener.events_received` to the application (``Listening``,
  ``ConnectionRequested``, ``Disconnected``, ``Reconnecting``, ``Offline`` ...).

The application answers a ``ConnectionRequested`` with :meth:`Listener.accept` or
:meth:`Listener.reject`; both queue a :class:`ConnectRendezvous` action, whose outcome the adapter
reports with :meth:`Listener.rendezvous_result`.

Protocol rules implemented here (hybrid-connections-wire §3, §4):

* reconnect on any failure after 0, 1, 2, 5, 10, 30, 30 ... s, the index reset by a successful
  open; a 404 handshake is terminal (:class:`Offline`), as in .NET and Java (§4.2);
* a fixed (string, non-renewable) token that has expired is terminal too: instead of retrying
  forever, an open with it, or a 401 / close 1008 once it has expired, ends in
  :class:`Offline` with an :class:`~hyco_proto.errors.AuthorizationError` saying when it
  expired (a callable token is renewed and keeps the reconnect policy);
* a WebSocket ping every ``keepalive_interval``; a pong missing after ``keepalive_timeout`` means
  the link is dead: the channel is aborted and the listener reconnects (§4.1);
* ``renewToken`` ahead of expiry, when :meth:`TokenSource.next_renewal` says so (§2.6, §3.4);
* an accept address is honoured for about 30 s (§3.1): answering a request older than
  ``accept_timeout`` raises :class:`~hyco_proto.errors.LocalProtocolError` instead of sending a
  doomed rendezvous;
* malformed or unknown control messages never kill the channel: they surface as
  :class:`ControlMessageIgnored` (one bad ``accept`` only concerns its own sender).

Contract for the adapter: after a :class:`CloseControlChannel` with ``abort=True`` it drops that
channel at once and reports nothing more about it (no ``channel_closed``). Reports that arrive
after the listener is ``CLOSED`` or ``OFFLINE`` are ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol, TypeAlias
from urllib.parse import quote

from ._syntax import is_token
from .control import (
    AcceptCommand,
    RemoteEndpoint,
    RenewTokenCommand,
    RequestCommand,
    ResponseCommand,
    UnknownCommand,
    parse_command,
    serialize_command,
)
from .errors import (
    AuthorizationError,
    ConnectionLostError,
    LocalProtocolError,
    RelayError,
    RemoteProtocolError,
    relay_error_for_close,
    relay_error_for_status,
)
from .handshake import parse_ws_url
from .headers import Headers
from .sas import TokenSource
from .uris import build_reject_uri, parse_relay_uri

__all__ = [
    "Action",
    "CloseControlChannel",
    "Closed",
    "ConnectRendezvous",
    "ConnectionRequested",
    "ControlMessageIgnored",
    "Disconnected",
    "Event",
    "HttpRequestBody",
    "HttpRequestReceived",
    "Listener",
    "ListenerState",
    "Listening",
    "Offline",
    "OpenControlChannel",
    "Reconnecting",
    "RendezvousCompleted",
    "RendezvousFailed",
    "SendControlMessage",
    "SendPing",
    "TokenRenewalFailed",
    "TokenRenewed",
]

DEFAULT_RECONNECT_DELAYS: tuple[float, ...] = (0, 1, 2, 5, 10, 30)
#: The relay honours an accept address for about 30 s and one attempt (§3.1).
DEFAULT_ACCEPT_TIMEOUT = 30.0
#: Retry delay after a token callable failed to produce a renewal.
_RENEW_RETRY = 10.0


class TokenSourceLike(Protocol):
    """What the listener needs from :class:`hyco_proto.sas.TokenSource`."""

    def get(self, now: float) -> str: ...

    def next_renewal(self, now: float) -> float | None: ...

    def renew(self, now: float) -> str: ...


# --------------------------------------------------------------------------------------------
# actions: what the adapter must do


@dataclass(frozen=True, slots=True)
class OpenControlChannel:
    """Open the control-channel WebSocket to ``url`` with these extra handshake headers."""

    url: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class SendControlMessage:
    """Send ``text`` as one text message on the control channel."""

    text: str


@dataclass(frozen=True, slots=True)
class SendPing:
    """Send a WebSocket ping with this payload on the control channel."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseControlChannel:
    """Close the control channel: a close handshake, or (``abort``) drop the transport now."""

    code: int
    reason: str
    abort: bool = False


@dataclass(frozen=True, slots=True)
class ConnectRendezvous:
    """Open a WebSocket to ``url`` (no auth header: the address authorises itself, §3.1).

    For an accept, offer ``subprotocol`` (if any) and ``headers``; the resulting socket *is* the
    connection to the sender. For a reject (``reject=True``) the relay answers 410 on success.
    Report the handshake status with :meth:`Listener.rendezvous_result`. ``request`` is the
    :class:`ConnectionRequested` this rendezvous answers (``request_id`` is its id).
    """

    url: str
    headers: tuple[tuple[str, str], ...]
    subprotocol: str | None
    request: ConnectionRequested
    reject: bool = False

    @property
    def request_id(self) -> str:
        """The id of the request this rendezvous answers (``request.id``)."""
        return self.request.id


Action: TypeAlias = (OpenControlChannel | SendControlMessage | SendPing | CloseControlChannel
                     | ConnectRendezvous)


# --------------------------------------------------------------------------------------------
# events: what the application hears


@dataclass(frozen=True, slots=True)
class Listening:
    """The control channel is open; senders can reach this listener (after every reconnect)."""


@dataclass(frozen=True, slots=True)
class ConnectionRequested:
    """A WebSocket sender is waiting; answer with ``accept`` or ``reject`` within ~30 s.

    This is what a listener's ``headers`` hook receives: ``headers`` (the sender's upgrade
    headers, case-insensitive), ``subprotocols`` (offered, in order), ``path`` (what the sender
    asked for below the namespace, ``sb-hc-*`` removed), ``remote_endpoint``, ``id``, and the raw
    ``command``.
    """

    command: AcceptCommand
    received_at: float

    @property
    def id(self) -> str:
        return self.command.id

    @property
    def headers(self) -> Headers:
        """The sender's upgrade request headers; names compare case-insensitively."""
        return self.command.connect_headers

    @property
    def subprotocols(self) -> list[str]:
        """The subprotocols the sender offered, in its order."""
        return self.command.requested_subprotocols

    @property
    def remote_endpoint(self) -> RemoteEndpoint:
        """The sender's address as the relay saw it."""
        return self.command.remote_endpoint

    @property
    def path(self) -> str:
        """``/{hc}[/{suffix}][?{app query}]`` the sender used (``sb-hc-*`` removed, §1.5)."""
        return parse_relay_uri(self.command.address).request_target


@dataclass(frozen=True, slots=True)
class HttpRequestReceived:
    """An HTTP ``request`` arrived (full form, or a rendezvous pointer: ``command.is_pointer``).

    A full request with ``body`` set is followed by :class:`HttpRequestBody`.
    """

    command: RequestCommand
    received_at: float


@dataclass(frozen=True, slots=True)
class HttpRequestBody:
    """The binary body that followed a ``request`` with ``body: true`` (§3.2)."""

    request_id: str
    data: bytes


@dataclass(frozen=True, slots=True)
class RendezvousCompleted:
    """The rendezvous for ``request_id`` succeeded: accepted (101) or rejected (410)."""

    request_id: str
    rejected: bool


@dataclass(frozen=True, slots=True)
class RendezvousFailed:
    """The rendezvous for ``request_id`` failed; the sender did not get the intended answer."""

    request_id: str
    error: RelayError


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The control channel failed to open or was lost; a reconnect follows unless terminal."""

    error: RelayError


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """The next open attempt (1-based ``attempt`` since the last success) starts after ``delay``."""

    delay: float
    attempt: int


@dataclass(frozen=True, slots=True)
class Offline:
    """Terminal: the listener will not reconnect.

    ``error`` is :class:`~hyco_proto.errors.EndpointNotFoundError` when the hybrid connection
    does not exist (404), :class:`~hyco_proto.errors.AuthorizationError` when a fixed
    (non-renewable) token has expired, or :class:`~hyco_proto.errors.ConnectionLostError` when
    the control channel stayed down for the listener's ``offline_timeout`` (its ``__cause__``
    is the last failure).
    """

    error: RelayError


@dataclass(frozen=True, slots=True)
class TokenRenewed:
    """A ``renewToken`` was sent; the next renewal is due at ``next_renewal`` (None: never)."""

    next_renewal: float | None


@dataclass(frozen=True, slots=True)
class TokenRenewalFailed:
    """The token source raised while renewing; the listener retries in a few seconds."""

    error: Exception


@dataclass(frozen=True, slots=True)
class ControlMessageIgnored:
    """A control message was malformed, unknown or unexpected, and was dropped (log it)."""

    reason: str
    message: str | bytes
    error: RemoteProtocolError | None = None


@dataclass(frozen=True, slots=True)
class Closed:
    """``close()`` finished: the control channel is closed and nothing more will happen."""


Event: TypeAlias = (Listening | ConnectionRequested | HttpRequestReceived | HttpRequestBody
                    | RendezvousCompleted | RendezvousFailed | Disconnected | Reconnecting
                    | Offline | TokenRenewed | TokenRenewalFailed | ControlMessageIgnored | Closed)


# --------------------------------------------------------------------------------------------
# states


class ListenerState(enum.Enum):
    IDLE = "idle"  # created, start() not called yet
    CONNECTING = "connecting"  # OpenControlChannel issued, waiting for opened/rejected/closed
    LISTENING = "listening"  # control channel open
    RECONNECT_WAIT = "reconnect-wait"  # backing off before the next attempt
    CLOSING = "closing"  # close() sent a close frame, waiting for channel_closed
    CLOSED = "closed"  # terminal, after close()
    OFFLINE = "offline"  # terminal, after a 404 or with a fixed token that expired


class _Input(enum.Enum):
    START = "start"
    OPENED = "opened"
    FAILED = "failed"  # rejected (not 404), lost, keepalive or open timeout
    NOT_FOUND = "not-found"
    TOKEN_EXPIRED = "token-expired"  # a fixed token has expired: nothing to retry with
    GAVE_UP = "gave-up"  # down for offline_timeout seconds
    RETRY = "retry"
    CLOSE = "close"
    CLOSE_DONE = "close-done"


_S, _I = ListenerState, _Input
_TRANSITIONS: dict[ListenerState, dict[_Input, ListenerState]] = {
    _S.IDLE: {_I.START: _S.CONNECTING, _I.CLOSE: _S.CLOSED},
    _S.CONNECTING: {_I.OPENED: _S.LISTENING, _I.FAILED: _S.RECONNECT_WAIT,
                    _I.NOT_FOUND: _S.OFFLINE, _I.TOKEN_EXPIRED: _S.OFFLINE, _I.GAVE_UP: _S.OFFLINE,
                    _I.CLOSE: _S.CLOSED},
    _S.LISTENING: {_I.FAILED: _S.RECONNECT_WAIT, _I.TOKEN_EXPIRED: _S.OFFLINE,
                   _I.CLOSE: _S.CLOSING},
    _S.RECONNECT_WAIT: {_I.RETRY: _S.CONNECTING, _I.GAVE_UP: _S.OFFLINE, _I.CLOSE: _S.CLOSED},
    _S.CLOSING: {_I.CLOSE_DONE: _S.CLOSED, _I.CLOSE: _S.CLOSING},
    _S.CLOSED: {_I.CLOSE: _S.CLOSED},
    _S.OFFLINE: {_I.CLOSE: _S.OFFLINE},
}
_TERMINAL = frozenset({_S.CLOSED, _S.OFFLINE})


class _Pending:
    """Book-keeping for one accept command until its rendezvous result is reported."""

    __slots__ = ("answer", "request")

    def __init__(self, request: ConnectionRequested) -> None:
        self.request = request  # the event the application was given
        self.answer: str | None = None  # None, "accepted" or "rejected"

    @property
    def command(self) -> AcceptCommand:
        return self.request.command

    @property
    def received_at(self) -> float:
        return self.request.received_at


# --------------------------------------------------------------------------------------------
# URL helpers


def _listen_url(address: str, listener_id: str | None) -> str:
    """``address`` with ``sb-hc-action=listen`` (and ``sb-hc-id``) replacing any given (§1.2)."""
    parsed = parse_ws_url(address, what="listener address")
    drop = {"sb-hc-action", "sb-hc-id"}
    query = [kv for kv in parsed.query.split("&")
             if kv and kv.split("=", 1)[0].lower() not in drop]
    query.append("sb-hc-action=listen")
    if listener_id:
        query.append("sb-hc-id=" + quote(listener_id, safe=""))
    return f"{parsed.scheme}://{parsed.host_header}{parsed.path}?{'&'.join(query)}"


# --------------------------------------------------------------------------------------------
# the state machine


class Listener:
    """Sans-IO Hybrid Connections listener (control channel, accept/reject, renew, keepalive).

    ``address`` is the listen URI (``ws://`` or ``wss://``, path ``/$hc/{hc}``, optional query);
    ``sb-hc-action=listen`` and ``sb-hc-id={listener_id}`` are set on it. ``token`` supplies the
    ``ServiceBusAuthorization`` header and its renewals: a :class:`~hyco_proto.sas.TokenSource`
    (or anything with its ``get`` / ``next_renewal`` / ``renew``); a str or callable is wrapped
    in one. ``headers`` are extra control-channel handshake headers (e.g. ``Relay-User-Agent``).
    ``keepalive_interval=None`` disables pings; ``open_timeout`` / ``close_timeout`` bound the
    control channel's handshakes. ``offline_timeout`` (None: retry forever, like hyco-ws) makes
    the listener give up, :class:`Offline` with a :class:`~hyco_proto.errors.ConnectionLostError`,
    once its control channel has been down that many seconds (since :meth:`start`, or since the
    channel was lost) without opening again.
    """

    def __init__(self, address: str, token: TokenSourceLike | str | Callable[[], str], *,
                 listener_id: str | None = None,
                 keepalive_interval: float | None = 30.0,
                 keepalive_timeout: float = 30.0,
                 reconnect_delays: Sequence[float] = DEFAULT_RECONNECT_DELAYS,
                 accept_timeout: float = DEFAULT_ACCEPT_TIMEOUT,
                 open_timeout: float | None = 60.0,
                 close_timeout: float = 10.0,
                 offline_timeout: float | None = None,
                 headers: Iterable[tuple[str, str]] = ()) -> None:
        if not reconnect_delays or any(d < 0 for d in reconnect_delays):
            raise ValueError("reconnect_delays must be a non-empty sequence of delays >= 0")
        for name, value in (("keepalive_interval", keepalive_interval),
                            ("keepalive_timeout", keepalive_timeout),
                            ("accept_timeout", accept_timeout),
                            ("open_timeout", open_timeout), ("close_timeout", close_timeout),
                            ("offline_timeout", offline_timeout)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        self.listener_id = listener_id
        self.url = _listen_url(address, listener_id)
        # A str or callable is wrapped in a TokenSource (a callable is renewed ahead of expiry).
        self._token: TokenSourceLike = (
            TokenSource(token) if isinstance(token, str) or not hasattr(token, "get")
            else token)  # type: ignore[assignment]
        self._extra_headers = tuple((str(k), str(v)) for k, v in headers)
        for name, _ in self._extra_headers:
            if name.lower() == "servicebusauthorization":
                raise ValueError("pass the token as `token`, not as a ServiceBusAuthorization "
                                 "header")
        self._keepalive_interval = keepalive_interval
        self._keepalive_timeout = keepalive_timeout
        self._reconnect_delays = tuple(float(d) for d in reconnect_delays)
        self._accept_timeout = accept_timeout
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._offline_timeout = offline_timeout
        #: Since when the control channel has been down (None: open, or not started).
        self._down_since: float | None = None
        self._last_error: RelayError | None = None

        self._state = ListenerState.IDLE
        self._actions: list[Action] = []
        self._events: list[Event] = []
        self._retry_index = 0
        self._pending: dict[str, _Pending] = {}
        self._body_expected_for: str | None = None
        self._ping_count = 0
        # deadlines; each is meaningful only in the state that sets it
        self._open_deadline: float | None = None
        self._reconnect_at: float | None = None
        self._ping_at: float | None = None
        self._pong_deadline: float | None = None
        self._renew_at: float | None = None
        self._close_deadline: float | None = None

    # ---- introspection / output ------------------------------------------------------------

    @property
    def state(self) -> ListenerState:
        return self._state

    @property
    def accept_timeout(self) -> float:
        """Seconds after a ``ConnectionRequested`` arrives during which it can be answered."""
        return self._accept_timeout

    def actions_to_take(self) -> list[Action]:
        """Return and clear the I/O actions for the adapter, in the order to perform them."""
        actions, self._actions = self._actions, []
        return actions

    def events_received(self) -> list[Event]:
        """Return and clear the events for the application."""
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or None for no timer."""
        state = self._state
        candidates: list[float | None]
        if state is _S.CONNECTING:
            candidates = [self._open_deadline, self._offline_at()]
        elif state is _S.RECONNECT_WAIT:
            candidates = [self._reconnect_at, self._offline_at()]
        elif state is _S.LISTENING:
            # While a pong is outstanding the next ping waits, so its deadline is not reported.
            ping = self._ping_at if self._pong_deadline is None else None
            candidates = [ping, self._pong_deadline, self._renew_at]
        elif state is _S.CLOSING:
            candidates = [self._close_deadline]
        else:
            candidates = []
        times = [t for t in candidates if t is not None]
        return min(times) if times else None

    # ---- inputs from the adapter -----------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin: the first :class:`OpenControlChannel` is queued at once."""
        if self._state is not _S.IDLE:
            raise LocalProtocolError(f"start() was already called (state {self._state.value})")
        self._transition(_I.START)
        self._down_since = now
        self._open(now)

    def channel_opened(self, now: float) -> None:
        """The control-channel handshake succeeded (101)."""
        if self._ignore_late_report("channel_opened", allowed=(_S.CONNECTING,)):
            return
        self._transition(_I.OPENED)
        self._retry_index = 0
        self._down_since = None
        self._open_deadline = None
        self._body_expected_for = None
        self._ping_at = (now + self._keepalive_interval
                         if self._keepalive_interval is not None else None)
        self._pong_deadline = None
        self._renew_at = self._token.next_renewal(now)
        self._events.append(Listening())

    def channel_rejected(self, now: float, status: int, description: str = "") -> None:
        """The relay refused the control-channel handshake with HTTP ``status`` (§4.3)."""
        if self._ignore_late_report("channel_rejected", allowed=(_S.CONNECTING,)):
            return
        error = relay_error_for_status(status, description or None)
        if status == 401 and self._fixed_token_expired(now, error):
            return
        if status == 404:
            # .NET/Java: EndpointNotFound takes the listener permanently offline (§4.2).
            self._go_offline(_I.NOT_FOUND, error)
            return
        self._lost(now, error)

    def channel_closed(self, now: float, code: int, reason: str = "") -> None:
        """The control channel ended: a close frame (``code``) or a dead link (1006)."""
        if self._state is _S.CLOSING:
            self._transition(_I.CLOSE_DONE)
            self._finish_close()
            return
        if self._state is _S.RECONNECT_WAIT:
            return  # the adapter already dropped that channel (abort); nothing to do
        if self._ignore_late_report("channel_closed", allowed=(_S.CONNECTING, _S.LISTENING)):
            return
        error = relay_error_for_close(code, reason)
        if code == 1008 and self._fixed_token_expired(now, error):
            return
        self._lost(now, error)

    def channel_message(self, now: float, text: str) -> None:
        """A text message arrived on the control channel."""
        if self._ignore_message("channel_message"):
            return
        if self._body_expected_for is not None:
            request_id, self._body_expected_for = self._body_expected_for, None
            self._events.append(ControlMessageIgnored(
                f"request {request_id} announced a body but a text message followed", text))
        try:
            command = parse_command(text)
        except RemoteProtocolError as exc:
            self._events.append(ControlMessageIgnored(exc.message, text, exc))
            return
        if isinstance(command, AcceptCommand):
            self._prune(now)
            event = ConnectionRequested(command, now)
            self._pending[command.id] = _Pending(event)
            self._events.append(event)
        elif isinstance(command, RequestCommand):
            if not command.is_pointer and command.body:
                self._body_expected_for = command.id
            self._events.append(HttpRequestReceived(command, now))
        elif isinstance(command, UnknownCommand):
            self._events.append(ControlMessageIgnored(
                f"unknown control command {command.name!r}", text))
        else:
            assert isinstance(command, (ResponseCommand, RenewTokenCommand))
            name = "response" if isinstance(command, ResponseCommand) else "renewToken"
            self._events.append(ControlMessageIgnored(
                f"{name} travels from listener to relay, never to a listener", text))

    def channel_binary(self, now: float, data: bytes | bytearray | memoryview) -> None:
        """A binary message arrived: the body of the preceding request, or stray (ignored)."""
        if self._ignore_message("channel_binary"):
            return
        if self._body_expected_for is not None:
            request_id, self._body_expected_for = self._body_expected_for, None
            self._events.append(HttpRequestBody(request_id, bytes(data)))
            return
        self._events.append(ControlMessageIgnored(
            "binary message with no request body expected", bytes(data)))

    def pong_received(self, now: float, payload: bytes = b"") -> None:
        """A pong arrived on the control channel: the link is alive."""
        if self._state is _S.LISTENING:
            self._pong_deadline = None

    def handle_timer(self, now: float) -> None:
        """Run whatever is due at ``now`` (call at or after :meth:`next_deadline`)."""
        state = self._state
        if state is _S.CONNECTING:
            if self._open_deadline is not None and now >= self._open_deadline:
                self._actions.append(CloseControlChannel(1001, "open timeout", abort=True))
                # _lost goes offline itself when offline_timeout is due too, naming this cause
                self._lost(now, RelayError(
                    f"control channel did not open within {self._open_timeout:g} s"))
            else:
                self._gave_up(now)
        elif state is _S.RECONNECT_WAIT:
            if self._gave_up(now):
                pass
            elif self._reconnect_at is not None and now >= self._reconnect_at:
                self._retry(now)
        elif state is _S.LISTENING:
            self._listening_timers(now)
        elif (state is _S.CLOSING and self._close_deadline is not None
              and now >= self._close_deadline):
            self._actions.append(CloseControlChannel(1000, "close timeout", abort=True))
            self._transition(_I.CLOSE_DONE)
            self._finish_close()
        self._prune(now)

    def close(self, now: float) -> None:
        """Stop listening: close the control channel (1000) and never reconnect. Idempotent."""
        state = self._state
        if state in (_S.CLOSING, _S.CLOSED, _S.OFFLINE):
            self._transition(_I.CLOSE)
            return
        self._transition(_I.CLOSE)
        self._drop_unanswered()
        if state is _S.LISTENING:
            self._clear_timers()
            self._actions.append(CloseControlChannel(1000, ""))
            self._close_deadline = now + self._close_timeout
            return
        if state is _S.CONNECTING:
            self._actions.append(CloseControlChannel(1000, "", abort=True))
        self._finish_close()

    # ---- the application's answers ---------------------------------------------------------

    def accept(self, now: float, request: ConnectionRequested | AcceptCommand, *,
               subprotocol: str | None = None,
               headers: Iterable[tuple[str, str]] = ()) -> None:
        """Accept a waiting sender: queue a :class:`ConnectRendezvous` to its accept address.

        ``subprotocol`` must be one the sender offered (the relay echoes it to the sender, whose
        client fails the handshake otherwise). Raises ``LocalProtocolError`` if the request was
        already answered, is unknown, is older than ``accept_timeout``, or the listener is closed.
        """
        pending = self._answerable(now, request, "accept")
        command = pending.command
        if subprotocol is not None:
            offered = command.requested_subprotocols
            if not is_token(subprotocol):
                raise LocalProtocolError(f"subprotocol {subprotocol!r} is not a valid token")
            if subprotocol not in offered:
                raise LocalProtocolError(
                    f"subprotocol {subprotocol!r} was not offered by the sender "
                    f"(offered: {', '.join(offered) or 'none'}); pick one of those or None")
        extra = tuple((str(k), str(v)) for k, v in headers)
        pending.answer = "accepted"
        self._actions.append(ConnectRendezvous(command.address, extra, subprotocol,
                                               pending.request))

    def reject(self, now: float, request: ConnectionRequested | AcceptCommand,
               status: int = 400, description: str = "Rejected by user code") -> None:
        """Turn a waiting sender away with HTTP ``status`` (400..599) and ``description``.

        Queues a :class:`ConnectRendezvous` (``reject=True``) to the reject URI; the relay
        answers it with 410 on success and fails the sender's handshake with this status (§3.1).
        """
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise LocalProtocolError(
                f"reject status must be an HTTP error status 400..599, not {status!r}")
        pending = self._answerable(now, request, "reject")
        command = pending.command
        pending.answer = "rejected"
        try:
            url = build_reject_uri(command.address, status, description)
        except ValueError as exc:
            # The relay's address is not a URI: end as an accept to it ends (the driver cannot
            # open it either), RendezvousFailed for this request, rather than raise.
            self.rendezvous_result(now, command.id, None, f"unusable rendezvous address: {exc}")
            return
        self._actions.append(ConnectRendezvous(url, (), None, pending.request, reject=True))

    def rendezvous_result(self, now: float, request: ConnectionRequested | AcceptCommand | str,
                          status: int | None, description: str = "") -> None:
        """Report the rendezvous handshake's HTTP status (None: the connection itself failed).

        101 completes an accept; 410 completes a reject (403: the address was invalid or
        expired). Emits :class:`RendezvousCompleted` or :class:`RendezvousFailed`.
        """
        request_id = request if isinstance(request, str) else request.id
        pending = self._pending.get(request_id)
        if pending is None or pending.answer is None:
            raise LocalProtocolError(
                f"rendezvous_result() for request {request_id!r}, which has no rendezvous under "
                "way; call it once per accept()/reject()")
        del self._pending[request_id]
        rejected = pending.answer == "rejected"
        expected = 410 if rejected else 101
        if status == expected:
            self._events.append(RendezvousCompleted(request_id, rejected))
            return
        error: RelayError
        if status is None:
            error = ConnectionLostError(
                "rendezvous connection failed" + (f": {description}" if description else ""),
                description=description or None)
        else:
            error = relay_error_for_status(status, description or None)
        self._events.append(RendezvousFailed(request_id, error))

    # ---- internals -------------------------------------------------------------------------

    def _transition(self, event: _Input) -> None:
        target = _TRANSITIONS[self._state].get(event)
        if target is None:
            raise LocalProtocolError(
                f"cannot {event.value} while the listener is {self._state.value}")
        self._state = target

    def _ignore_late_report(self, what: str, *, allowed: tuple[ListenerState, ...]) -> bool:
        """True if a channel report should be ignored; raise if it makes no sense at all."""
        if self._state in _TERMINAL:
            return True
        if self._state not in allowed:
            raise LocalProtocolError(
                f"{what}() while the listener is {self._state.value}: report control-channel "
                "events only for the channel of the last OpenControlChannel action")
        return False

    def _ignore_message(self, what: str) -> bool:
        if self._state is _S.LISTENING:
            return False
        if self._state in (_S.CLOSING, _S.CLOSED, _S.OFFLINE):
            return True  # closing down: late messages are dropped
        raise LocalProtocolError(
            f"{what}() while the listener is {self._state.value}: messages can only arrive on "
            "an open control channel (call channel_opened first)")

    def _open(self, now: float) -> None:
        try:
            token = self._token.get(now)
        except Exception as exc:  # the user's token callable failed: retry like a failed open
            error = RelayError(f"token source failed: {exc!r}")
            error.__cause__ = exc
            # No I/O happened: wait at least a second so a broken callable cannot spin.
            self._lost(now, error, min_delay=1.0)
            return
        if self._fixed_token_expired(now):
            return
        headers = (("ServiceBusAuthorization", token), *self._extra_headers)
        self._open_deadline = (now + self._open_timeout
                               if self._open_timeout is not None else None)
        self._actions.append(OpenControlChannel(self.url, headers))

    def _fixed_token_expired(self, now: float, cause: RelayError | None = None) -> bool:
        """If the token cannot be renewed and has expired at ``now``, go terminal and say so.

        Retrying with the same expired token would fail forever (401 on open, 1008 on the
        channel). A renewable source (a callable), or a token whose expiry is unknown, keeps
        the reconnect policy. True when the listener went ``OFFLINE``.
        """
        source = self._token
        if getattr(source, "is_renewable", True):
            return False
        expiry = getattr(source, "expiry", None)
        if isinstance(expiry, bool) or not isinstance(expiry, (int, float)) or expiry > now:
            return False
        when = datetime.fromtimestamp(expiry, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        error = AuthorizationError(
            f"the listener's token expired at {when}; pass a callable token (or TokenSource) "
            "so it can be renewed",
            status=cause.status if cause is not None else None,
            close_code=cause.close_code if cause is not None else None,
            description=cause.description if cause is not None else None,
            transient=False)
        if cause is not None:
            error.__cause__ = cause
        self._go_offline(_I.TOKEN_EXPIRED, error)
        return True

    def _offline_at(self) -> float | None:
        if self._offline_timeout is None or self._down_since is None:
            return None
        return self._down_since + self._offline_timeout

    def _gave_up(self, now: float, error: RelayError | None = None) -> bool:
        """If the channel has been down ``offline_timeout`` seconds at ``now``, go terminal
        (an attempt in progress is aborted) and say why; True when the listener went
        ``OFFLINE``."""
        due = self._offline_at()
        if due is None or now < due:
            return False
        cause = error or self._last_error
        if self._state is _S.CONNECTING:
            self._actions.append(CloseControlChannel(1001, "offline timeout", abort=True))
        down = now - (self._down_since or now)
        offline = ConnectionLostError(
            f"the control channel has been down for {down:.3g} s, beyond offline_timeout "
            f"({self._offline_timeout:g} s)" + (f"; last error: {cause}" if cause else ""),
            status=cause.status if cause is not None else None,
            close_code=cause.close_code if cause is not None else None,
            description=cause.description if cause is not None else None,
            transient=False)
        offline.__cause__ = cause
        self._go_offline(_I.GAVE_UP, offline)
        return True

    def _go_offline(self, why: _Input, error: RelayError) -> None:
        """Terminal: no timer, no unanswered request, no reconnect; ``Offline(error)``."""
        self._transition(why)
        self._clear_timers()
        self._body_expected_for = None
        self._pending.clear()
        self._events.append(Offline(error))

    def _lost(self, now: float, error: RelayError, *, min_delay: float = 0.0) -> None:
        """The channel (or the attempt to open it) failed: report and schedule a reconnect
        (or, past ``offline_timeout``, go offline)."""
        self._transition(_I.FAILED)
        self._clear_timers()
        self._body_expected_for = None
        self._events.append(Disconnected(error))
        self._last_error = error
        if self._down_since is None:
            self._down_since = now
        if self._gave_up(now, error):
            return
        index = min(self._retry_index, len(self._reconnect_delays) - 1)
        delay = max(self._reconnect_delays[index], min_delay)
        self._retry_index += 1
        self._events.append(Reconnecting(delay, self._retry_index))
        self._reconnect_at = now + delay
        if delay <= 0:
            self._retry(now)

    def _retry(self, now: float) -> None:
        self._transition(_I.RETRY)
        self._reconnect_at = None
        self._open(now)

    def _listening_timers(self, now: float) -> None:
        if self._pong_deadline is not None and now >= self._pong_deadline:
            self._actions.append(CloseControlChannel(1001, "keepalive timeout", abort=True))
            self._lost(now, ConnectionLostError(
                f"no pong within {self._keepalive_timeout:g} s: control channel presumed dead"))
            return
        if self._renew_at is not None and now >= self._renew_at:
            self._renew(now)
        if (self._ping_at is not None and self._pong_deadline is None and now >= self._ping_at
                and self._keepalive_interval is not None):
            self._ping_count += 1
            self._actions.append(SendPing(b"hyco-%d" % self._ping_count))
            self._pong_deadline = now + self._keepalive_timeout
            self._ping_at = now + self._keepalive_interval

    def _renew(self, now: float) -> None:
        try:
            token = self._token.renew(now)
        except Exception as exc:
            self._events.append(TokenRenewalFailed(exc))
            self._renew_at = now + _RENEW_RETRY
            return
        self._actions.append(SendControlMessage(serialize_command(RenewTokenCommand(token))))
        upcoming = self._token.next_renewal(now)
        if upcoming is not None and upcoming <= now:
            upcoming = now + _RENEW_RETRY  # a source that is always due must not spin the timer
        self._renew_at = upcoming
        self._events.append(TokenRenewed(upcoming))

    def _clear_timers(self) -> None:
        self._open_deadline = self._reconnect_at = None
        self._ping_at = self._pong_deadline = self._renew_at = self._close_deadline = None

    def _finish_close(self) -> None:
        self._clear_timers()
        self._events.append(Closed())

    def _drop_unanswered(self) -> None:
        for key in [k for k, p in self._pending.items() if p.answer is None]:
            del self._pending[key]

    def _prune(self, now: float) -> None:
        # Unanswered requests are kept a while past expiry so a late accept() says "expired".
        limit = 2 * self._accept_timeout
        for key in [k for k, p in self._pending.items()
                    if p.answer is None and now - p.received_at > limit]:
            del self._pending[key]

    def _answerable(self, now: float, request: ConnectionRequested | AcceptCommand,
                    verb: str) -> _Pending:
        if self._state in (_S.CLOSING, _S.CLOSED):
            raise LocalProtocolError(
                f"cannot {verb} request {request.id!r}: the listener was closed; answer requests "
                "before calling close()")
        pending = self._pending.get(request.id)
        if pending is None:
            raise LocalProtocolError(
                f"cannot {verb} request {request.id!r}: this listener has no such pending "
                "request (unknown id, or expired long ago)")
        if pending.answer is not None:
            raise LocalProtocolError(
                f"cannot {verb} request {request.id!r}: it was already {pending.answer}; "
                "answer each ConnectionRequested exactly once")
        age = now - pending.received_at
        if age > self._accept_timeout:
            del self._pending[request.id]
            raise LocalProtocolError(
                f"cannot {verb} request {request.id!r}: it arrived {age:.1f} s ago and the relay "
                f"honours an accept address for about {self._accept_timeout:g} s; the "
                "sender has been turned away. Answer ConnectionRequested events promptly")
        return pending
