"""Sending a hub's events to its upstream event handlers (sans-IO: calls out, answers in).

:class:`EventDispatcher` turns what happens in the hubs (a client connecting, connected,
disconnected, a user event) into HTTP calls to the configured
:class:`~hyco_proto.webpubsub.events.EventHandler` s, and the answers into decisions. It does no
I/O: the driver takes :meth:`EventDispatcher.calls_to_make`, performs each HTTP request, and
reports :meth:`~EventDispatcher.answered` or :meth:`~EventDispatcher.failed`; every call has a
deadline (:meth:`~EventDispatcher.next_deadline`), after which it fails.

Rules:

* **Abuse protection** (the CloudEvents webhook handshake): before the first event to a handler
  origin (scheme, host, port) the dispatcher sends ``OPTIONS`` with ``WebHook-Request-Origin``
  and holds that origin's events until the answer. An origin that passed is trusted for the
  service's lifetime; one that failed fails the events that waited (``connect`` refuses the
  client with 500) and is asked again at its next event.
* **Order**: one connection's events go one at a time, in order (``connected`` before its user
  events, ``disconnected`` last); different connections' events run concurrently.
* **State**: a ``ce-connectionState`` a handler answers is kept for the connection and sent on
  its later events.
* The first handler (in configuration order) that takes an event gets it, as in Azure.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..webpubsub.events import (
    ConnectAnswer,
    EventHandler,
    HttpCall,
    UserEventAnswer,
    event_request,
    origin_of,
    parse_connect_answer,
    parse_user_event_answer,
    validation_passed,
    validation_request,
)
from ..webpubsub.messages import Data

__all__ = ["CALL_TIMEOUT", "EventDispatcher", "OutboundCall"]

logger = logging.getLogger("hyco_proto.service")

#: Seconds an event handler has to answer one call: shorter than the clients' open timeouts
#: (10 s in the SDKs and ours), so a slow ``connect`` handler's 500 reaches the client.
CALL_TIMEOUT = 8.0

#: ``(now, status, headers, body)`` of an answer, or ``status=None`` and the cause in ``body``.
_Answer = Callable[[float, "int | None", Sequence[tuple[str, str]], bytes], None]


@dataclass(frozen=True, slots=True)
class OutboundCall:
    """An HTTP request for the driver to make; answer it with ``call_id``."""

    call_id: int
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    timeout: float


@dataclass(slots=True)
class _Origin:
    passed: bool = False
    checking: bool = False
    waiting: list[tuple[HttpCall, _Answer]] = field(default_factory=list)


@dataclass(slots=True)
class _Client:
    """What the dispatcher keeps about one connection of a hub with handlers."""

    hub: str
    user_id: str | None
    subprotocol: str | None
    request_origin: str
    states: dict[str, Any] = field(default_factory=dict)
    #: Events waiting their turn: each built when sent (with the state as it is then); a
    #: ``None`` builder marks the end of the connection.
    queue: deque[tuple[Callable[[], HttpCall] | None, _Answer]] = field(default_factory=deque)
    busy: bool = False
    leaving: bool = False


class EventDispatcher:
    """The event handlers of every hub and the calls in flight to them (see the module doc).

    ``handlers`` maps a hub name (lower case) to its handlers; ``keys`` sign ``ce-signature``.
    """

    def __init__(self, handlers: Mapping[str, Sequence[EventHandler]], keys: Sequence[str], *,
                 timeout: float = CALL_TIMEOUT) -> None:
        self.handlers = {hub.lower(): tuple(items) for hub, items in handlers.items()}
        self.keys = tuple(keys)
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._outbox: list[OutboundCall] = []
        self._pending: dict[int, tuple[float, str, _Answer]] = {}
        self._origins: dict[tuple[str, str], _Origin] = {}
        self._clients: dict[tuple[str, str], _Client] = {}

    # -- which handler ---------------------------------------------------------------------

    def _system(self, hub: str, event: str) -> EventHandler | None:
        return next((h for h in self.handlers.get(hub, ()) if h.takes_system_event(event)), None)

    def _user(self, hub: str, event: str) -> EventHandler | None:
        return next((h for h in self.handlers.get(hub, ()) if h.takes_user_event(event)), None)

    def takes_connect(self, hub: str) -> bool:
        return self._system(hub, "connect") is not None

    def watches(self, hub: str) -> bool:
        """Does any handler of ``hub`` take anything (so connections must be tracked)?"""
        return bool(self.handlers.get(hub))

    # -- events ----------------------------------------------------------------------------

    def connect(self, now: float, *, hub: str, connection_id: str, user_id: str | None,
                request_origin: str, claims: Mapping[str, Any], query: Mapping[str, list[str]],
                headers: Mapping[str, list[str]], subprotocols: Sequence[str],
                decide: Callable[[float, ConnectAnswer], None]) -> None:
        """Ask the ``connect`` handler whether ``connection_id`` may connect; ``decide`` gets
        the answer (a failure to reach the handler refuses with 500)."""
        handler = self._system(hub, "connect")
        assert handler is not None, "check takes_connect() first"
        body = {"claims": dict(claims), "query": dict(query), "headers": dict(headers),
                "subprotocols": list(subprotocols), "clientCertificates": []}
        call = event_request(handler, hub=hub, event="connect", connection_id=connection_id,
                             user_id=user_id, keys=self.keys, request_origin=request_origin,
                             event_id=self._event_id(), now=now, system=body)

        def answered(now: float, status: int | None, hdrs: Sequence[tuple[str, str]],
                     data: bytes) -> None:
            if status is None:
                reason = data.decode("utf-8", "replace")
                logger.warning("Web PubSub hub %s: connect event for %s failed: %s",
                               hub, connection_id, reason)
                decide(now, ConnectAnswer(False, 500, f"The event handler failed: {reason}"))
                return
            answer = parse_connect_answer(status, hdrs, data)
            if not answer.accepted:
                logger.info("Web PubSub hub %s: the connect handler refused %s: %s %s",
                            hub, connection_id, answer.status, answer.reason)
            decide(now, answer)

        self._via_origin(now, call, request_origin, answered)

    def connected(self, now: float, *, hub: str, connection_id: str, user_id: str | None,
                  subprotocol: str | None, request_origin: str,
                  states: Mapping[str, Any] | None = None) -> None:
        """A connection joined ``hub``: start tracking it; send ``connected`` if taken."""
        if not self.watches(hub):
            return
        client = _Client(hub, user_id, subprotocol, request_origin, dict(states or {}))
        self._clients[(hub, connection_id)] = client
        if self._system(hub, "connected") is not None:
            self._enqueue(now, connection_id, client, "connected", None, {}, None)

    def disconnected(self, now: float, *, hub: str, connection_id: str, reason: str) -> None:
        """The connection left ``hub`` for good: send ``disconnected`` (last), then forget it."""
        client = self._clients.get((hub, connection_id))
        if client is None or client.leaving:
            return
        client.leaving = True
        if self._system(hub, "disconnected") is not None:
            self._enqueue(now, connection_id, client, "disconnected", None,
                          {"reason": reason}, None)
        client.queue.append((None, _forget))  # forget the connection once this is reached

    def user_event(self, now: float, *, hub: str, connection_id: str, event: str, data: Data,
                   reply: Callable[[float, Data], None]) -> bool:
        """Send a user event; ``reply`` gets the handler's data for the client. False when no
        handler takes it (the event is dropped, as Azure does)."""
        client = self._clients.get((hub, connection_id))
        if client is None or self._user(hub, event) is None:
            return False

        def answered(now: float, status: int | None, hdrs: Sequence[tuple[str, str]],
                     body: bytes) -> None:
            if status is None:
                logger.warning("Web PubSub hub %s: user event %r of %s failed: %s", hub, event,
                               connection_id, body.decode("utf-8", "replace"))
                return
            answer: UserEventAnswer = parse_user_event_answer(status, hdrs, body)
            if answer.states is not None:
                client.states = answer.states
            if not answer.ok:
                logger.warning("Web PubSub hub %s: the handler of user event %r answered %s: %s",
                               hub, event, status, answer.reason)
            elif answer.data is not None:
                reply(now, answer.data)

        self._enqueue(now, connection_id, client, event, data, None, answered)
        return True

    # -- the driver's side -----------------------------------------------------------------

    def calls_to_make(self) -> list[OutboundCall]:
        out, self._outbox = self._outbox, []
        return out

    def answered(self, now: float, call_id: int, status: int,
                 headers: Sequence[tuple[str, str]], body: bytes) -> None:
        pending = self._pending.pop(call_id, None)
        if pending is not None:
            pending[2](now, status, headers, body)

    def failed(self, now: float, call_id: int, reason: str) -> None:
        pending = self._pending.pop(call_id, None)
        if pending is not None:
            pending[2](now, None, (), f"{pending[1]}: {reason}".encode())

    def next_deadline(self) -> float | None:
        return min((p[0] for p in self._pending.values()), default=None)

    def handle_timer(self, now: float) -> None:
        for call_id, (deadline, _, _) in list(self._pending.items()):
            if now >= deadline:
                self.failed(now, call_id, f"no answer within {self.timeout:g} s")

    # -- internals -------------------------------------------------------------------------

    def _event_id(self) -> str:
        return secrets.token_hex(8)

    def _enqueue(self, now: float, connection_id: str, client: _Client, event: str,
                 data: Data | None, system: dict[str, Any] | None,
                 then: _Answer | None) -> None:
        handler = (self._user(client.hub, event) if data is not None
                   else self._system(client.hub, event))
        assert handler is not None

        def build() -> HttpCall:
            return event_request(handler, hub=client.hub, event=event,
                                 connection_id=connection_id, user_id=client.user_id,
                                 keys=self.keys, request_origin=client.request_origin,
                                 event_id=self._event_id(), now=now,
                                 subprotocol=client.subprotocol, states=client.states,
                                 data=data, system=system)

        def done(now: float, status: int | None, hdrs: Sequence[tuple[str, str]],
                 body: bytes) -> None:
            if then is not None:
                then(now, status, hdrs, body)
            elif status is None:
                logger.warning("Web PubSub hub %s: %s event of %s failed: %s", client.hub,
                               event, connection_id, body.decode("utf-8", "replace"))
            client.busy = False
            self._next(now, connection_id, client)

        client.queue.append((build, done))
        self._next(now, connection_id, client)

    def _next(self, now: float, connection_id: str, client: _Client) -> None:
        while not client.busy and client.queue:
            build, done = client.queue.popleft()
            if build is None:
                self._clients.pop((client.hub, connection_id), None)
                continue
            client.busy = True
            self._via_origin(now, build(), client.request_origin, done)

    def _via_origin(self, now: float, call: HttpCall, request_origin: str,
                    done: _Answer) -> None:
        """Send ``call`` once its handler origin passed abuse protection."""
        key = (origin_of(call.url), request_origin)
        origin = self._origins.setdefault(key, _Origin())
        if origin.passed:
            self._send(now, call, done)
            return
        origin.waiting.append((call, done))
        if origin.checking:
            return
        origin.checking = True
        host = request_origin

        def checked(now: float, status: int | None, hdrs: Sequence[tuple[str, str]],
                    body: bytes) -> None:
            origin.checking = False
            waiting, origin.waiting = origin.waiting, []
            if status is not None and validation_passed(status, hdrs, host):
                origin.passed = True
                for item, then in waiting:
                    self._send(now, item, then)
                return
            allowed = ", ".join(v for k, v in hdrs if k.lower() == "webhook-allowed-origin")
            cause = (body.decode("utf-8", "replace") if status is None
                     else f"OPTIONS answered {status} with WebHook-Allowed-Origin {allowed!r}, "
                     f"which does not allow {host}" if allowed
                     else f"OPTIONS answered {status} without WebHook-Allowed-Origin "
                     f"(expected * or {host})")
            reason = f"abuse protection failed for {key[0]}: {cause}".encode()
            logger.warning("Web PubSub: %s", reason.decode())
            for _, then in waiting:
                then(now, None, (), reason)

        self._send(now, validation_request(call.url, request_origin), checked)

    def _send(self, now: float, call: HttpCall, done: _Answer) -> None:
        call_id = next(self._ids)
        self._pending[call_id] = (now + self.timeout, f"{call.method} {call.url}", done)
        self._outbox.append(OutboundCall(call_id, call.method, call.url, call.headers,
                                         call.body, self.timeout))


def _forget(now: float, status: int | None, headers: Sequence[tuple[str, str]],
            body: bytes) -> None:
    """Queue marker: the connection is gone once its earlier events are sent."""
