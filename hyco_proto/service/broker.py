"""The relay service's rendezvous broker: sans-IO, message level.

It decides everything the relay decides — who may listen or send (SAS rights), which listener gets
a sender, what the ``accept`` message says, whether a rendezvous address is valid, what a reject
means for both sides, when a listener's token has run out — and leaves bytes, sockets and
WebSocket framing to its driver. The driver reports handshakes and control-channel messages; the
broker returns decisions and queues actions (send this control message, close that listener,
fail that sender). Timers: ``next_deadline()`` / ``handle_timer(now)``.

Wire rules: hybrid-connections-wire §1 (addresses), §2 (tokens), §3.1 (accept, reject), §4.3
(status codes), §4.5-4.6 (listener limit and pinning), §8 (emulator checklist).
"""

from __future__ import annotations

import hmac
import json
import random
import re
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from urllib.parse import parse_qsl, quote

from .._text import printable
from ..control import (
    AcceptCommand,
    RemoteEndpoint,
    RenewTokenCommand,
    RequestCommand,
    ResponseCommand,
    parse_command,
    serialize_command,
)
from ..errors import RemoteProtocolError, TokenError
from ..headers import Headers
from ..sas import verify_token
from ..uris import strip_relay_query
from .config import HybridConnectionConfig, Right, SasRule, ServiceConfig
from .registry import ListenerRecord, LocalRegistry, PendingConnect, PendingRequest, Registry

__all__ = [
    "HOP_BY_HOP",
    "Action",
    "BadResponse",
    "CloseListener",
    "FailSender",
    "ListenerRecord",
    "PendingConnect",
    "PendingRequest",
    "Refused",
    "RelayBroker",
    "RendezvousAccepted",
    "RendezvousRejected",
    "SendControl",
    "query_params",
]

#: Headers that carry credentials and never reach the listener (hybrid-connections-wire §2.5).
_AUTH_HEADERS = frozenset({"servicebusauthorization"})
#: RFC 7230 §6.1 connection-specific headers: never relayed to the listener (§3.2).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                        "transfer-encoding", "upgrade", "host", "content-length", "close"})
_ALLOWED = "microsoft-relay-allowedlisteners"
#: Query parameter of accept and request rendezvous addresses carrying the service's secret: the
#: ``sb-hc-id`` may be the sender's own choice, so the address needs a part nobody can guess.
RENDEZVOUS_SECRET = "sb-hc-rendezvous"
#: Bytes of CSPRNG output in that secret (128 bits).
_SECRET_BYTES = 16
#: Verified tokens the broker remembers (``RelayBroker._authorize``), and the longest it keeps:
#: a SAS token is about 200 characters, so the cache stays under 10 MiB however it is fed.
VERIFIED_TOKENS = 4096
_VERIFIED_TOKEN_CHARS = 2048
_DISALLOWED = "microsoft-relay-disallowedlisteners"


@dataclass(frozen=True, slots=True)
class Refused:
    """A handshake the relay refuses: answer it with ``status`` and ``description``."""

    status: int
    description: str
    tracking_id: str


@dataclass(frozen=True, slots=True)
class SendControl:
    """Send ``text`` as a text message on a listener's control channel."""

    listener_id: str
    text: str


@dataclass(frozen=True, slots=True)
class CloseListener:
    """Close a listener's control channel with ``code`` (1008: token expired or renewal failed)."""

    listener_id: str
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class FailSender:
    """Answer a waiting sender's handshake with an error status (accept timed out)."""

    connect_id: str
    status: int
    description: str


Action = SendControl | CloseListener | FailSender


@dataclass(frozen=True, slots=True)
class BadResponse:
    """A listener's ``response`` for ``request_id`` that cannot be used: the sender gets 502."""

    request_id: str
    description: str


@dataclass(frozen=True, slots=True)
class RendezvousAccepted:
    """The listener connected to a valid accept address: join it with ``pending``'s sender."""

    pending: PendingConnect


@dataclass(frozen=True, slots=True)
class RendezvousRejected:
    """The listener rejected: answer it 410, and the sender with ``status`` / ``description``."""

    pending: PendingConnect
    status: int
    description: str


def _header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    lname = name.lower()
    for key, value in headers:
        if key.lower() == lname:
            return value
    return None


@lru_cache(maxsize=16)
def query_params(query: str) -> Mapping[str, str]:
    """``query``'s parameters, decoded as ``parse_qsl(keep_blank_values=True)`` decodes them,
    by lower-case name, the first of each name. Shared: one request's route and broker ask for
    several parameters of the same query, so it is parsed once (do not modify the result)."""
    found: dict[str, str] = {}
    if "%" in query or "+" in query:
        for key, value in parse_qsl(query, keep_blank_values=True):
            found.setdefault(key.lower(), value)
        return found
    for piece in query.split("&"):  # nothing to decode: parse_qsl's split, without its cost
        if piece:
            key, _, value = piece.partition("=")
            found.setdefault(key.lower(), value)
    return found


def _query_value(query: str, *names: str) -> str | None:
    """Value of the first of ``names`` (lower case) present in ``query`` (case-insensitive keys,
    decoded)."""
    found = query_params(query)
    for name in names:
        value = found.get(name)
        if value is not None:
            return value
    return None


_G_SUFFIXES = re.compile(r"(?:_G\d+)+$")
#: What ``quote(text, safe="")`` leaves unchanged (its always-safe set).
_UNRESERVED = re.compile(r"[A-Za-z0-9_.\-~]+", re.ASCII)


#: Added to a strict service's 404 for an undeclared hybrid connection (docs/emulator.md).
_DECLARE_HINT = (" This emulator serves declared ones only (--strict): declare it with `hyco "
                 "emulator --hc NAME`, "
                 "or a [hybrid_connections.NAME] table in its --config file.")


def _token_reason(exc: TokenError) -> str:
    """Why a token failed, without any piece of it: reasons and logs never quote a token's
    fields (a malformed one may be a secret pasted in the wrong place)."""
    reason = exc.reason.lower()
    for prefix, text in (("malformed", "malformed token"), ("token must be", "malformed token"),
                         ("se is not a valid expiry", "se is not a valid expiry"),
                         ("unknown key name", "unknown key name (skn)"),
                         ("bad signature", "bad signature"), ("token expired", "token expired"),
                         ("token is for host", "the token is for another host"),
                         ("token is for path", "the token's resource (sr) does not cover "
                                               "this path")):
        if reason.startswith(prefix):
            return text
    return "invalid token"


def _base_id(listener_id: str) -> str:
    """Strip the service's trailing ``_G<n>`` suffixes (hybrid-connections-wire §1.4)."""
    return _G_SUFFIXES.sub("", listener_id).lower()


def _reason_phrase(text: str) -> str:
    """A listener's reject description made safe for an HTTP reason phrase (no CR/LF, no
    control characters, Latin-1 only, bounded): it comes from a peer, not from us."""
    return printable(text.strip(), 512, latin1=True) or "Rejected by listener"


class RelayBroker:
    """Rendezvous and authorization decisions of the relay service (sans-IO)."""

    def __init__(
        self,
        config: ServiceConfig | None = None,
        *,
        new_id: Callable[[], str] | None = None,
        rng: random.Random | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.config = config or ServiceConfig()
        self._new_id = new_id or (lambda: str(uuid.uuid4()))
        self._rng = rng or random.Random()
        #: Listeners and pending senders (in-process unless a shared registry is given).
        self.registry: Registry = registry if registry is not None else LocalRegistry()
        self._actions: list[Action] = []
        #: Hybrid connections this broker created on first use (lower-case name -> when last
        #: used); forgotten after ``config.auto_expiry`` idle seconds.
        self._auto: dict[str, float] = {}
        #: Bumped by every change to ``_auto``; with the registry's version and the timeouts it
        #: keys the deadline last found (``next_deadline``, asked after every driver call).
        self._auto_version = 0
        self._deadline_key: tuple[int, int, float, float, float] | None = None
        self._deadline: float | None = None
        self._listeners_key: tuple[int, float] | None = None
        self._listeners_deadline: float | None = None
        #: The rules found for the last hybrid connection asked about (``_rules_for``).
        self._rules: tuple[tuple[SasRule, ...], tuple[SasRule, ...],
                           Mapping[str, SasRule]] | None = None
        #: Tokens that verified, by (token, target path): (rule name, that rule's key, expiry).
        #: A hit skips parsing and the HMAC until the token expires; a changed key is a miss.
        #: Only valid tokens get in, at most VERIFIED_TOKENS of them (oldest out first).
        self._verified: dict[tuple[str, str], tuple[str, str, int]] = {}

    # -- helpers ---------------------------------------------------------------------------

    def _refuse(self, now: float, status: int, message: str, hc: str | None = None) -> Refused:
        tracking = self._new_id()
        stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        tracker = f"{self.config.namespace}:HybridConnection:{hc}" if hc else self.config.namespace
        text = f"{message} TrackingId:{tracking}, SystemTracker:{tracker}, Timestamp:{stamp}"
        return Refused(status, text, tracking)

    def _authorize(
        self,
        now: float,
        hc: HybridConnectionConfig,
        target_path: str,
        token: str | None,
        right: Right,
    ) -> Refused | float | None:
        """Check ``token`` for ``right`` on ``target_path``; return its expiry or a refusal."""
        if token is None:
            return self._refuse(
                now,
                401,
                "MissingToken: the request has no SAS token "
                "(ServiceBusAuthorization header or sb-hc-token query).",
                hc.name,
            )
        rules = self._rules_for(hc)
        cache_key = (token, target_path)
        known = self._verified.get(cache_key)
        rule_or_none = rules.get(known[0]) if known is not None else None
        if (known is not None and rule_or_none is not None and rule_or_none.key == known[1]
                and now < known[2]):
            rule, expiry = rule_or_none, known[2]
        else:
            try:
                parsed = verify_token(
                    token,
                    keys=lambda name: rules[name].key if name in rules else None,
                    target_path=target_path,
                    now=now,
                )
            except TokenError as exc:
                self._verified.pop(cache_key, None)
                return self._refuse(now, exc.status, f"InvalidToken: {_token_reason(exc)}.",
                                    hc.name)
            rule, expiry = rules[parsed.key_name], parsed.expiry
            if len(token) + len(target_path) <= _VERIFIED_TOKEN_CHARS:
                if len(self._verified) >= VERIFIED_TOKENS:
                    del self._verified[next(iter(self._verified))]
                self._verified[cache_key] = (rule.name, rule.key, expiry)
        if not rule.grants(right):
            return self._refuse(
                now,
                403,
                f"Unauthorized: rule '{rule.name}' does not grant '{right.value}' on '{hc.name}'.",
                hc.name,
            )
        return float(expiry)

    def _rules_for(self, hc: HybridConnectionConfig) -> Mapping[str, SasRule]:
        """``config.rules_for(hc)``, kept while the namespace's and ``hc``'s rules are the same
        tuples (both are immutable)."""
        config_rules, hc_rules = self.config.rules, hc.rules
        kept = self._rules
        if kept is not None and kept[0] is config_rules and kept[1] is hc_rules:
            return kept[2]
        rules = self.config.rules_for(hc)
        self._rules = (config_rules, hc_rules, rules)
        return rules

    def _resolve(self, now: float, path: str) -> HybridConnectionConfig | Refused:
        # Not kept yet: an unknown hybrid connection is kept only once a request for it passed
        # the token checks (:meth:`_adopt`), so refused requests leave no state behind.
        hc = self.config.lookup(path, create=False)
        if hc is None:
            text = f"Endpoint does not exist: no hybrid connection matches '/{path.strip('/')}'."
            if self.config.strict:
                text += _DECLARE_HINT
            return self._refuse(now, 404, text)
        return hc

    def _adopt(self, now: float, hc: HybridConnectionConfig) -> None:
        """An authorized request for ``hc``: keep it if it was created on first use, and
        note the use (idle ones expire)."""
        key = hc.name.lower()
        if self.config.adopt(hc) or key in self._auto:
            self._auto[key] = now
            self._auto_version += 1

    def _touch(self, now: float, hc: HybridConnectionConfig | None) -> None:
        if hc is not None and hc.name.lower() in self._auto:
            self._auto[hc.name.lower()] = now
            self._auto_version += 1

    def _in_use(self, key: str) -> bool:
        registry = self.registry
        return bool(registry.listeners_of(key)) or any(
            p.hc.name.lower() == key for p in registry.all_pending()
        ) or any(r.hc.name.lower() == key for r in registry.all_requests())

    @staticmethod
    def _suffix(hc: HybridConnectionConfig, path: str) -> str:
        """The path after the hybrid connection's name ('' or '/a/b')."""
        stripped = path.strip("/")
        return "/" + stripped[len(hc.name) :].lstrip("/") if len(stripped) > len(hc.name) else ""

    # -- listeners -------------------------------------------------------------------------

    def open_listener(
        self,
        now: float,
        path: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        query: str = "",
        base_url: str,
    ) -> ListenerRecord | Refused:
        """A listener asks to open a control channel on ``/$hc/{path}`` (``path`` without $hc).

        ``base_url`` is the scheme and host the listener used (``ws://127.0.0.1:9090``): accept
        addresses are built on it so the listener can reach them (hybrid-connections-wire §5.2).
        """
        hc = self._resolve(now, path)
        if isinstance(hc, Refused):
            return hc
        token = _header(headers, "ServiceBusAuthorization") or _query_value(query, "sb-hc-token")
        auth = self._authorize(now, hc, "/" + path.strip("/"), token, Right.LISTEN)
        if isinstance(auth, Refused):
            return auth
        self._adopt(now, hc)
        registry = self.registry
        active = [r for r in registry.listeners_of(hc.name) if not r.closing]
        if len(active) >= self.config.max_listeners:
            return self._refuse(
                now,
                403,
                f"QuotaExceeded: hybrid connection '{hc.name}' already "
                f"has the maximum of {self.config.max_listeners} listeners.",
                hc.name,
            )
        listener_id = base = _query_value(query, "sb-hc-id") or self._new_id()
        taken = 0
        while registry.listener(listener_id) is not None:
            taken += 1
            listener_id = f"{base}_G{taken}"
        record = ListenerRecord(
            listener_id, hc, base_url.rstrip("/"), auth, now, "/" + path.strip("/")
        )
        registry.add_listener(record)
        return record

    def close_listener(self, now: float, listener_id: str) -> None:
        """The listener's control channel is gone: the senders offered to it that it has not
        rendezvoused with yet are offered again or refused (:meth:`_listener_left`)."""
        record = self.registry.remove_listener(listener_id)
        if record is not None:
            self._touch(now, record.hc)
            self._listener_left(now, record)

    def listener_closing(self, now: float, listener_id: str) -> None:
        """The service closed this listener's control channel: from now on it is not chosen
        for senders or requests and does not count against the listener limit, while the
        channel waits for the client's close (at most ``close_timeout``); its waiting senders
        are offered again or refused at once (:meth:`_listener_left`)."""
        record = self.registry.listener(listener_id)
        if record is not None and not record.closing:
            record.closing = True
            self.registry.update_listener(record)
            self._listener_left(now, record)

    def _listener_left(self, now: float, left: ListenerRecord) -> None:
        """Senders offered to listener ``left`` (``accept`` sent) that have not rendezvoused
        yet, now that its control channel is gone or closing.

        Waiting out the accept timeout would only end in a 504. The sender has not been
        answered (its 101 waits for a rendezvous) and the listener only saw an ``accept``, so
        it may be offered to another live listener of the hybrid connection that its
        ``Microsoft-Relay-(Dis)AllowedListeners`` headers allow — what the relay does for a
        new sender (hybrid-connections-wire §3.1, §4.6) — with a fresh accept address (the
        old one is void: a late rendezvous on it gets 403) and its original deadline, so the
        wait stays bounded by ``accept_timeout``. With no such listener it gets the relay's
        "no listener" answer at once: 404, as a sender arriving now would (§4.3, emulator
        choice). Relayed HTTP requests are never offered again (the listener may have run a
        request it got on its control channel); the router fails them with 502.
        """
        for pending in self.registry.all_pending():
            if pending.listener_id != left.id:
                continue
            if now - pending.created >= self.config.accept_timeout:
                continue  # handle_timer answers it (504)
            hc = pending.hc
            other = self._pick_listener(hc, pending.accept.connect_headers.raw_items())
            if other is not None and pending.address.startswith(left.base_url):
                self._offer_again(pending, left, other)
                continue
            self.registry.take_pending(pending.id)
            self._touch(now, hc)
            refusal = self._refuse(
                now, 404,
                f"Endpoint does not exist: the listener went away before it accepted, and no "
                f"other listener (that the sender allows) is connected to hybrid connection "
                f"'{hc.name}'.", hc.name)
            self._actions.append(FailSender(pending.id, refusal.status, refusal.description))

    def _offer_again(self, pending: PendingConnect, left: ListenerRecord,
                     listener: ListenerRecord) -> None:
        """Offer a waiting sender of listener ``left`` to ``listener``: same id and deadline,
        a fresh secret."""
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        # The address is "{base_url}/$hc/{hc}{suffix}?{query}&{RENDEZVOUS_SECRET}={secret}"
        # (connect): the new listener's base URL and a new secret, the rest as the sender asked.
        rest = pending.address[len(left.base_url):]
        cut = rest.rindex(f"&{RENDEZVOUS_SECRET}=")
        address = f"{listener.base_url}{rest[:cut]}&{RENDEZVOUS_SECRET}={secret}"
        accept = AcceptCommand(address=address, id=pending.id,
                               connect_headers=pending.accept.connect_headers,
                               remote_endpoint=pending.accept.remote_endpoint)
        self.registry.add_pending(PendingConnect(
            pending.id, pending.hc, listener.id, address, pending.created, accept,
            pending.subprotocols, secret))
        self._actions.append(SendControl(listener.id, serialize_command(accept)))

    def listener_count(self, hc_name: str) -> int:
        """Live listeners of ``hc_name``: one the service is closing no longer counts."""
        return sum(1 for r in self.registry.listeners_of(hc_name) if not r.closing)

    def listener_message(
        self, now: float, listener_id: str, text: str
    ) -> ResponseCommand | BadResponse | None:
        """A text message arrived on a control channel: ``renewToken`` is handled here; a
        ``response`` to a request routed to this listener is returned for the router to deliver
        (a broken one for a known request as :class:`BadResponse`); anything else is ignored or,
        when malformed, closes the channel with 1008."""
        record = self.registry.listener(listener_id)
        if record is None:
            return None
        try:
            command = parse_command(text)
        except RemoteProtocolError as exc:
            request_id = self._response_id(text)
            if request_id is not None and self.response_route(listener_id, request_id):
                return BadResponse(request_id,
                                   f"The listener sent a malformed response: {exc.message}")
            self._actions.append(
                CloseListener(listener_id, 1008, f"malformed control message: {exc}")
            )
            return None
        if isinstance(command, ResponseCommand):
            return self.check_response(listener_id, command)
        if isinstance(command, RenewTokenCommand):
            auth = self._authorize(now, record.hc, record.path, command.token, Right.LISTEN)
            if isinstance(auth, Refused):
                # A failed renewToken closes the channel with 1008 (hybrid-connections-wire §3.4).
                self._actions.append(CloseListener(listener_id, 1008, auth.description))
            else:
                record.token_expiry = auth
                self.registry.update_listener(record)
        return None

    # -- senders ---------------------------------------------------------------------------

    def connect(
        self,
        now: float,
        path: str,
        *,
        headers: Sequence[tuple[str, str]],
        query: str = "",
        remote: tuple[str, int] = ("127.0.0.1", 0),
        subprotocols: Iterable[str] = (),
    ) -> PendingConnect | Refused:
        """A sender's WebSocket handshake on ``/$hc/{path}``: pick a listener, queue ``accept``."""
        hc = self._resolve(now, path)
        if isinstance(hc, Refused):
            return hc
        # One pass over the headers for everything below (names compare case-insensitively;
        # the first of each, as _header finds it): the token, the pinning headers, and the
        # headers the listener sees — all but credentials, repeats joined with ", " (§3.2).
        token = allowed = disallowed = None
        connect_headers: dict[str, str] = {}
        for key, value in headers:
            lower = key.lower()
            if lower in _AUTH_HEADERS:
                if token is None:
                    token = value
                continue
            if lower == _ALLOWED:
                allowed = value if allowed is None else allowed
            elif lower == _DISALLOWED:
                disallowed = value if disallowed is None else disallowed
            connect_headers[key] = (
                f"{connect_headers[key]}, {value}" if key in connect_headers else value
            )
        if hc.requires_client_authorization:
            if not token:  # an empty header falls back to the query, as `or` did
                token = _query_value(query, "sb-hc-token")
            auth = self._authorize(now, hc, "/" + path.strip("/"), token, Right.SEND)
            if isinstance(auth, Refused):
                return auth
        self._adopt(now, hc)
        listener = self._choose_listener(hc, allowed, disallowed)
        if listener is None:
            return self._refuse(
                now,
                404,
                f"Endpoint does not exist: no listener is connected "
                f"to hybrid connection '{hc.name}'.{self._no_listener_hint(hc)}",
                hc.name,
            )
        connect_id = base = _query_value(query, "sb-hc-id") or self._new_id()
        taken = 0
        while self.registry.has_pending(connect_id):
            taken += 1
            connect_id = f"{base}_G{taken}"
        app_query = strip_relay_query(query)
        sep = "&" if app_query else ""
        # The id may be the sender's choice (it stays, for tracking): the secret authorises.
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        suffix = self._suffix(hc, path)
        # quote() leaves an id of unreserved characters as it is (RFC 3986 §2.3): skip it.
        quoted_id = (connect_id if _UNRESERVED.fullmatch(connect_id)
                     else quote(connect_id, safe=""))
        address = (
            f"{listener.base_url}/$hc/{hc.name}{quote(suffix, safe='/%') if suffix else ''}?"
            f"{app_query}{sep}sb-hc-action=accept&sb-hc-id={quoted_id}"
            f"&{RENDEZVOUS_SECRET}={secret}"
        )
        accept = AcceptCommand(
            address=address,
            id=connect_id,
            connect_headers=Headers(connect_headers),
            remote_endpoint=RemoteEndpoint(address=remote[0], port=remote[1]),
        )
        pending = PendingConnect(
            connect_id, hc, listener.id, address, now, accept, tuple(subprotocols), secret
        )
        self.registry.add_pending(pending)
        self._actions.append(SendControl(listener.id, serialize_command(accept)))
        return pending

    def live_listeners(self, hc_name: str) -> list[ListenerRecord]:
        """The listeners of hybrid connection ``hc_name`` that are not being closed."""
        return [c for c in self.registry.listeners_of(hc_name) if not c.closing]

    def _no_listener_hint(self, hc: HybridConnectionConfig) -> str:
        """What to do when no listener took a sender: nothing to add when listeners are there
        (the sender's pinning headers left none of them)."""
        if self.live_listeners(hc.name):
            return ""
        return (f" A listener must connect to it first (for example `hyco listen --path "
                f"{hc.name}`): senders are not held until one does.")

    def _pick_listener(
        self, hc: HybridConnectionConfig, headers: Sequence[tuple[str, str]]
    ) -> ListenerRecord | None:
        allowed = disallowed = None
        for key, value in headers:  # one pass for both (the first of each, as _header finds)
            lower = key.lower()
            if lower == _ALLOWED:
                allowed = value if allowed is None else allowed
            elif lower == _DISALLOWED:
                disallowed = value if disallowed is None else disallowed
        return self._choose_listener(hc, allowed, disallowed)

    def _choose_listener(self, hc: HybridConnectionConfig, allowed: str | None,
                         disallowed: str | None) -> ListenerRecord | None:
        """A random live listener of ``hc`` that the sender's pinning headers allow."""
        candidates = self.live_listeners(hc.name)
        if not candidates:
            return None
        if allowed is None and disallowed is None and len(candidates) == 1:
            return candidates[0]  # nothing to choose from (no random draw)
        # Listener pinning (hybrid-connections-wire §4.6): comma-separated listener ids.
        if allowed:
            keep = {_base_id(x.strip()) for x in allowed.split(",") if x.strip()}
            candidates = [c for c in candidates if _base_id(c.id) in keep]
        if disallowed:
            drop = {_base_id(x.strip()) for x in disallowed.split(",") if x.strip()}
            candidates = [c for c in candidates if _base_id(c.id) not in drop]
        return self._rng.choice(candidates) if candidates else None

    def cancel_connect(self, now: float, connect_id: str) -> None:
        """The sender went away before the rendezvous: its accept address becomes invalid."""
        pending = self.registry.take_pending(connect_id)
        self._touch(now, pending.hc if pending is not None else None)

    # -- rendezvous ------------------------------------------------------------------------

    @staticmethod
    def _secret_matches(query: str, secret: str) -> bool:
        """Whether ``query`` carries the rendezvous ``secret`` (constant-time compare)."""
        given = _query_value(query, RENDEZVOUS_SECRET) or ""
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), secret.encode())

    def _wrong_path(self, hc_name: str, path: str | None) -> bool:
        """Whether a rendezvous for hybrid connection ``hc_name`` was opened on another one
        (``path`` without ``$hc``; None: not checked)."""
        if path is None:
            return False
        hc = self.config.lookup(path, create=False)
        return hc is None or hc.name.lower() != hc_name.lower()

    def rendezvous(
        self, now: float, query: str, path: str | None = None
    ) -> RendezvousAccepted | RendezvousRejected | Refused:
        """The listener connects to an accept address (``sb-hc-action=accept``) on ``path``
        (without ``$hc``; None: not checked).

        The address is single-use and valid ``accept_timeout`` seconds (§3.1). Its
        ``sb-hc-rendezvous`` secret must match (403 otherwise), and it is only valid on the
        hybrid connection it was issued for (404 otherwise); neither refusal uses it up. With
        ``sb-hc-statusCode`` (or hyco-ws's unprefixed ``statusCode``, §1.4) it is a reject.

        Refusals (docs/emulator.md, "Rendezvous refusals"): 403 for a wrong or missing secret
        and for an unknown, used or expired id (Azure: "invalid or expired rendezvous
        address", §4.3), 404 for a valid address on another hybrid connection's path. Never
        410: a rejecting listener reads 410 as "the reject went through" (§3.1), which is only
        true once the reject took effect (the router answers it) or the sender is gone.
        """
        connect_id = _query_value(query, "sb-hc-id")
        pending = self.registry.pending(connect_id) if connect_id else None
        if pending is not None and not self._secret_matches(query, pending.secret):
            pending = None
        if pending is not None and self._wrong_path(pending.hc.name, path):
            return self._refuse(
                now, 404, "Endpoint does not exist: the rendezvous address belongs to another "
                "hybrid connection.")
        if pending is not None:
            self.registry.take_pending(pending.id)
        if pending is None or now - pending.created > self.config.accept_timeout:
            return self._refuse(now, 403, "The rendezvous address is invalid or has expired.")
        status = _query_value(query, "sb-hc-statuscode", "statuscode")
        if status is None:
            return RendezvousAccepted(pending)
        description = _query_value(query, "sb-hc-statusdescription", "statusdescription")
        try:
            code = int(status)
        except ValueError:
            code = 0
        phrase = _reason_phrase(description or "")
        if not 400 <= code <= 599:
            # A reject is a refusal: a 1xx cannot end an upgrade request, and a 2xx or 3xx
            # (no Location can be given) would read as a broken handshake, not a refusal. Our
            # listener only rejects with 400-599 (RendezvousFailed); other clients pass anything.
            phrase = printable(f"{phrase} (the listener rejected with status {status!r}, "
                               "which is not 400-599)", 512, latin1=True)
            code = 500
        return RendezvousRejected(pending, code, phrase)

    # -- relayed HTTP requests (hybrid-connections-wire §3.2, §3.3, §8 "HTTP") ---------------

    def http_request(
        self,
        now: float,
        path: str,
        *,
        method: str,
        target_path: str,
        query: str,
        headers: Sequence[tuple[str, str]],
        remote: tuple[str, int],
        body: bool,
    ) -> PendingRequest | Refused:
        """A sender's HTTP request for ``/{path}``: authorize it, pick a listener, and build the
        ``request`` command (``target_path`` is the path as the sender wrote it)."""
        hc = self._resolve(now, path)
        if isinstance(hc, Refused):
            return hc
        # Token: ServiceBusAuthorization, then sb-hc-token, then (HTTP only, when relay
        # authorization is on and neither is there) Authorization (§2.5).
        token = _header(headers, "ServiceBusAuthorization") or _query_value(query, "sb-hc-token")
        authorization_used = False
        if hc.requires_client_authorization:
            if token is None:
                token = _header(headers, "Authorization")
                authorization_used = token is not None
            auth = self._authorize(now, hc, "/" + path.strip("/"), token, Right.SEND)
            if isinstance(auth, Refused):
                return auth
        self._adopt(now, hc)
        listener = self._pick_listener(hc, headers)
        if listener is None:
            return self._refuse(
                now, 502,
                f"Bad Gateway: no listener is connected to hybrid connection '{hc.name}'."
                f"{self._no_listener_hint(hc)}",
                hc.name)
        request_id = self._new_id()
        while self.registry.request(request_id) is not None:
            request_id = self._new_id()
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        address = (f"{listener.base_url}/$hc/{hc.name}?sb-hc-action=request"
                   f"&sb-hc-id={quote(request_id, safe='')}&{RENDEZVOUS_SECRET}={secret}")
        command = RequestCommand(
            id=request_id,
            address=address,
            request_target=target_path + strip_relay_query("?" + query if query else ""),
            method=method,
            remote_endpoint=RemoteEndpoint(address=remote[0], port=remote[1]),
            request_headers=self._listener_headers(headers, authorization_used),
            body=body,
        )
        pending = PendingRequest(request_id, hc, listener.id, address, now, command,
                                 secret=secret)
        self.registry.add_request(pending)
        return pending

    def _listener_headers(self, headers: Sequence[tuple[str, str]],
                          authorization_used: bool) -> dict[str, str]:
        """The sender's headers as the listener sees them: no credentials, no hop-by-hop
        headers, repeats joined with ", ", and ``Via`` naming this relay (§3.2)."""
        drop = set(HOP_BY_HOP) | _AUTH_HEADERS
        if authorization_used:
            drop.add("authorization")
        for key, value in headers:
            if key.lower() == "connection":  # headers it names are hop-by-hop too
                drop.update(t.strip().lower() for t in value.split(",") if t.strip())
            elif key.lower() == "expect" and value.strip().lower() == "100-continue":
                drop.add("expect")  # the relay answers it; a listener cannot (no interim replies)
        out: dict[str, str] = {}
        spelling: dict[str, str] = {}
        for key, value in headers:
            lower = key.lower()
            if lower in drop:
                continue
            name = spelling.setdefault(lower, key)
            out[name] = f"{out[name]}, {value}" if name in out else value
        via = f"1.1 {self.config.namespace}"
        name = spelling.get("via", "Via")
        out[name] = f"{out[name]}, {via}" if name in out else via
        return out

    def request_rendezvous(self, now: float, query: str,
                           path: str | None = None) -> PendingRequest | Refused:
        """The listener opens ``sb-hc-action=request`` for a request: single use, only while
        the request is in flight, with its ``sb-hc-rendezvous`` secret (constant-time
        compare), and only on the hybrid connection it was issued for (``path`` without
        ``$hc``, when given). A wrong secret or path does not use the address up. Statuses as
        for an accept address (:meth:`rendezvous`): 403 for a wrong secret or an unknown or
        used id, 404 for another hybrid connection's path."""
        request_id = _query_value(query, "sb-hc-id")
        pending = self.registry.request(request_id) if request_id else None
        if pending is not None and not self._secret_matches(query, pending.secret):
            pending = None
        if pending is not None and self._wrong_path(pending.hc.name, path):
            return self._refuse(
                now, 404, "Endpoint does not exist: the rendezvous address belongs to another "
                "hybrid connection.")
        if pending is None or pending.rendezvous_taken:
            return self._refuse(now, 403, "The rendezvous address is invalid or has expired.")
        pending.rendezvous_taken = True
        self.registry.update_request(pending)
        return pending

    def request_on_control_channel(self, request_id: str) -> None:
        """The full request went on the listener's control channel."""
        pending = self.registry.request(request_id)
        if pending is not None:
            pending.on_control_channel = True
            self.registry.update_request(pending)

    def response_route(self, listener_id: str | None, request_id: str) -> PendingRequest | None:
        """The request a response answers, if it may answer it: a control-channel response
        only for a request routed to that listener."""
        pending = self.registry.request(request_id)
        if pending is None or (listener_id is not None and pending.listener_id != listener_id):
            return None
        return pending

    def check_response(self, listener_id: str | None,
                       response: ResponseCommand) -> ResponseCommand | BadResponse | None:
        """A listener's response, if it can answer a request in flight (None: nobody waits)."""
        if self.response_route(listener_id, response.request_id) is None:
            return None  # late (after a 504) or not this listener's: dropped
        if not 200 <= response.status_code <= 599:
            return BadResponse(response.request_id,
                               f"The listener answered with status {response.status_code}; "
                               "a response needs a final status (200-599).")
        return response

    def finish_request(self, request_id: str) -> None:
        """The exchange ended (answered, failed, or the sender left)."""
        self.registry.remove_request(request_id)

    @staticmethod
    def _response_id(text: str) -> str | None:
        """``response.requestId`` of a message that failed to parse, when it has one."""
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):
            return None
        if isinstance(doc, dict):
            body = doc.get("response")
            if isinstance(body, dict) and isinstance(body.get("requestId"), str):
                return str(body["requestId"])
        return None

    # -- time ------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        # Asked after every input the service reads (the driver re-arms its timer): with the
        # in-process registry, the last answer while nothing it depends on changed (the
        # registry's version counts changes to listeners and pending senders, which the broker
        # makes through it: Registry's contract), compared field by field (cheaper than a key
        # tuple built per call); the listeners' part is kept apart (its own version), as a
        # sender's connect and rendezvous change only the pending ones. Else a plain loop over
        # each collection, no list of deadlines (half the time of min() over one).
        config = self.config
        registry = self.registry
        local: LocalRegistry | None = None
        if type(registry) is LocalRegistry:
            local = registry
            key = self._deadline_key
            if (key is not None and key[0] == local.version and key[1] == self._auto_version
                    and key[2] == config.accept_timeout and key[3] == config.token_grace
                    and key[4] == config.auto_expiry):
                return self._deadline
        best: float | None = None
        for pending in registry.all_pending():
            if best is None or pending.created < best:
                best = pending.created
        if best is not None:
            best += config.accept_timeout
        listeners = self._listeners_due(registry, config.token_grace, local)
        if listeners is not None and (best is None or listeners < best):
            best = listeners
        if self._auto:
            idle = min(self._auto.values()) + config.auto_expiry
            if best is None or idle < best:
                best = idle
        if local is not None:
            self._deadline_key = (local.version, self._auto_version, config.accept_timeout,
                                  config.token_grace, config.auto_expiry)
        self._deadline = best
        return best

    def _listeners_due(self, registry: Registry, grace: float,
                       local: LocalRegistry | None) -> float | None:
        """The earliest listener token expiry plus ``grace`` (kept while the in-process
        registry, ``local``, keeps the same listeners)."""
        key = None
        if local is not None:
            key = (local.listeners_version, grace)
            if key == self._listeners_key:
                return self._listeners_deadline
        best: float | None = None
        for record in registry.all_listeners():
            expiry = record.token_expiry
            if expiry is not None:
                expiry += grace
                if best is None or expiry < best:
                    best = expiry
        if key is not None:
            self._listeners_key, self._listeners_deadline = key, best
        return best

    def handle_timer(self, now: float) -> None:
        registry = self.registry
        for pending in registry.all_pending():
            connect_id = pending.id
            if now - pending.created >= self.config.accept_timeout:
                registry.take_pending(connect_id)
                refusal = self._refuse(
                    now, 504, "The listener did not accept the connection in time.", pending.hc.name
                )
                self._actions.append(FailSender(connect_id, refusal.status, refusal.description))
        for record in registry.all_listeners():
            expiry = record.token_expiry
            if expiry is not None and now >= expiry + self.config.token_grace:
                record.token_expiry = None  # close once
                registry.update_listener(record)
                self._actions.append(
                    CloseListener(
                        record.id,
                        1008,
                        "The token has expired; renew it with renewToken before expiry.",
                    )
                )

        self._expire_idle(now)

    def _expire_idle(self, now: float) -> None:
        """Forget hybrid connections created on first use that stayed idle long enough."""
        for key, used in list(self._auto.items()):
            if now - used < self.config.auto_expiry:
                continue
            self._auto_version += 1
            if self._in_use(key):
                self._auto[key] = now  # looked at again one expiry later
            else:
                del self._auto[key]
                self.config.hybrid_connections.pop(key, None)

    def actions_to_take(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    def has_actions(self) -> bool:
        """Whether ``actions_to_take`` has any (asked after every input: no list made)."""
        return bool(self._actions)
