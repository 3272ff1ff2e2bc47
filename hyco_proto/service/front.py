"""The service's front door: every new TCP connection starts here, speaking HTTP/1.1 (h11).

:class:`FrontDoor` reads each request head once and hands it to the first :class:`Route` that
matches: WebSocket upgrades under ``/$hc/`` (Hybrid Connections), the service's own endpoints
(``/$status``, ``/metrics``), and relayed HTTP requests (anything else). An upgrade switches the
connection to another handler for good; a plain-HTTP route answers through the door
(:meth:`FrontDoor.respond`, or the streaming ``start_response`` / ``send_body`` /
``end_response``), after which the next request on a keep-alive connection is read.
"""

from __future__ import annotations

import http
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import h11

from .._syntax import split_target
from .._text import printable
from ..handshake import ServerHandshake
from ..uris import is_ip_address, is_loopback_host
from .events import log_event
from .handler import Connection, ConnectionKind, Handler, ServiceCore

__all__ = ["Exchange", "FrontDoor", "RequestHead", "Route", "reason_phrase"]

def reason_phrase(status: int, text: str | None = None) -> str:
    """``text`` made safe for a reason phrase (control characters and anything beyond Latin-1
    escaped by :func:`~hyco_proto._text.printable`, bounded), or the standard phrase for
    ``status``. Every reason phrase the service builds from client input goes through it."""
    if text:
        safe = printable(text.strip(), 1024, latin1=True)
        if safe:
            return safe
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


#: Largest request head the door accepts (request line and headers), like the handshake's
#: bound: 431 beyond. h11 enforces it only on a head still incomplete in its buffer, so a head
#: that arrives whole in one read is measured once parsed (``_head_size``).
MAX_HEAD = 32768 + 4096


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__, four
# times the cost (one head per connection; it holds a list, so it was never hashable).
@dataclass(slots=True)
class RequestHead:
    """A request line and its headers, decoded once (not to be changed)."""

    method: str
    target: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    http_version: str
    #: h11's request; None when the fast path (``_fast_head``) read the head.
    raw: h11.Request | None
    #: The fast path's: the values of the opening handshake's own headers (``Upgrade``,
    #: ``Connection``, ``Sec-WebSocket-*``) by lower-case name, for ``validate_head``.
    fields: dict[str, list[str]] | None = None
    #: The fast path's: a bound on the head's size as ``validate_head`` counts it (each line
    #: with its CRLF: the bytes up to the blank line, plus a byte per header line, where the
    #: check counts ": " for a colon, and the last CRLF).
    size_at_most: int | None = None

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    @property
    def is_upgrade(self) -> bool:
        upgrade = self.header("upgrade")
        return upgrade is not None and "websocket" in upgrade.lower()


class Exchange(Protocol):
    """A request a route serves over time (a relayed HTTP request): the door feeds it the body."""

    def request_data(self, now: float, data: bytes) -> None: ...

    def request_end(self, now: float) -> None: ...

    def sender_gone(self, now: float) -> None:
        """The client's connection ended before the exchange finished."""
        ...

    def deadline(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


class Route(Protocol):
    """One kind of request the service answers."""

    def match(self, head: RequestHead) -> bool: ...

    def handle(self, door: FrontDoor, head: RequestHead, now: float) -> None:
        """Answer through ``door`` (respond / stream / upgrade / start an exchange)."""
        ...


#: Most header fields a request may have (Kestrel's default, the stack Azure Relay runs on);
#: the head's size is bounded separately (``MAX_HEAD``).
MAX_HEADER_FIELDS = 100


def _head_size(raw: h11.Request) -> int:
    """The size of ``raw``'s head on the wire, at least: request line and header lines, each
    with its CRLF (optional whitespace h11 stripped is not counted)."""
    size = len(raw.method) + len(raw.target) + len(b" HTTP/1.1\r\n") + 1 + 2
    for name, value in raw.headers.raw_items():
        size += len(name) + len(value) + 4  # ": " and CRLF
    return size


def _decode(raw: h11.Request) -> RequestHead:
    target = raw.target.decode("latin-1")
    path, query = split_target(target)
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw.headers.raw_items()]
    return RequestHead(raw.method.decode("ascii"), target, path, query,
                       headers, raw.http_version.decode("ascii"), raw)


# The fast path's grammar is h11's (h11/_abnf.py: request-line, header-field, both over bytes),
# so every head it takes, h11 takes to the same request: a request target is [\x21-\x7e]+; a
# field is token ":" OWS value OWS, where the value holds no NUL and no \s but SP and HTAB
# (bytes' \s: SP HT LF VT FF CR) — whatever lies between the colon and the line's end once no
# such byte is left, with SP and HT stripped at both ends.
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
#: What the fast path does with a header, by lower-case name (``_OTHER`` when not here):
#: collect it for ``ServerHandshake.validate_head`` (its ``fields``), count it (Host), or leave
#: the request to h11 (a body, 100-continue).
_OTHER, _HANDSHAKE, _HOST, _SLOW = 0, 1, 2, 3
_FIELD_KINDS = {
    "upgrade": _HANDSHAKE, "connection": _HANDSHAKE, "sec-websocket-key": _HANDSHAKE,
    "sec-websocket-version": _HANDSHAKE, "sec-websocket-protocol": _HANDSHAKE,
    "host": _HOST, "content-length": _SLOW, "transfer-encoding": _SLOW, "expect": _SLOW,
}
#: Header names already found to be tokens, with their lower case and kind (the same few
#: names come in every request); at most ``_KNOWN_NAMES_MAX``, so no client can grow it.
_KNOWN_NAMES: dict[str, tuple[str, int]] = {}
_KNOWN_NAMES_MAX = 256
#: Whole header lines already read, as (name, value, lower-case name, kind): the same lines
#: (Host, Upgrade, Connection, the version, a client's token) come in request after request.
#: Only lines the loop took; at most ``_KNOWN_LINES_MAX`` of at most ``_KNOWN_LINE_CHARS``
#: characters (under 1 MiB however it is fed), emptied when full.
_KNOWN_LINES: dict[str, tuple[str, str, str, int]] = {}
_KNOWN_LINES_MAX = 512
_KNOWN_LINE_CHARS = 1024
#: (The class's ``h11`` property hides the module in its annotations.)
_H11Error = h11.RemoteProtocolError
#: The fast path's bound on a head: the opening handshake's (``ServerHandshake``).
_FAST_MAX_HEAD = 16384


def _fast_head(data: bytes) -> tuple[RequestHead, bytes] | None:
    """A plain WebSocket upgrade (GET, HTTP/1.1, an ``Upgrade`` header, no body, one Host)
    that arrived whole, read in one pass: the head and the bytes after it. None for anything
    else, which h11 reads instead (so every refusal and error stays h11's): bare CR or LF, obs-
    fold, characters RFC 9112 does not allow, more than ``MAX_HEADER_FIELDS`` fields."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > _FAST_MAX_HEAD or not data.startswith(b"GET "):
        return None
    text = data[:end].decode("latin-1")
    lines = text.split("\r\n")
    if len(lines) - 1 > MAX_HEADER_FIELDS:
        return None
    # CR and LF only as CRLF, between lines; no NUL, VT or FF.
    breaks = len(lines) - 1
    if (text.count("\r") != breaks or text.count("\n") != breaks or "\x00" in text
            or "\x0b" in text or "\x0c" in text):
        return None
    request_line = lines[0]
    target = request_line[4:-9]
    if (not request_line.endswith(" HTTP/1.1") or not target or not target.isascii()
            or not target.isprintable() or " " in target):
        return None
    headers: list[tuple[str, str]] = []
    fields: dict[str, list[str]] = {}
    hosts = 0
    known = _KNOWN_NAMES
    known_lines = _KNOWN_LINES
    for line in lines[1:]:
        parsed = known_lines.get(line)
        if parsed is not None:
            name, value, lname, kind = parsed
        else:
            name, colon, value = line.partition(":")
            entry = known.get(name)
            if entry is None:
                if not colon or _TOKEN.fullmatch(name) is None:
                    return None  # obs-fold, whitespace before the colon, no field: h11 decides
                lname = name.lower()
                entry = (lname, _FIELD_KINDS.get(lname, _OTHER))
                if len(known) < _KNOWN_NAMES_MAX:
                    known[name] = entry
            elif not colon:
                return None
            lname, kind = entry
            value = value.strip(" \t")
            if len(line) <= _KNOWN_LINE_CHARS and lname != "sec-websocket-key":  # (new each time)
                if len(known_lines) >= _KNOWN_LINES_MAX:
                    known_lines.clear()  # full: start again, the lines in use come back first
                known_lines[line] = (name, value, lname, kind)
        if kind == _HANDSHAKE:
            found = fields.get(lname)
            if found is None:
                fields[lname] = [value]
            else:
                found.append(value)
        elif kind == _HOST:
            hosts += 1
        elif kind == _SLOW:
            return None
        headers.append((name, value))
    if hosts != 1 or "upgrade" not in fields:  # h11: one Host in HTTP/1.1 (RFC 9112 §3.2)
        return None
    if target.startswith("/"):  # origin form (split_target's first case, without the call)
        path, _, query = target.partition("#")[0].partition("?")
        path = path or "/"
    else:
        path, query = split_target(target)
    return (RequestHead("GET", target, path, query, headers, "1.1", None, fields,
                        end + 2 + len(headers)),
            bytes(data[end + 4:]))


#: The DNS suffix of Azure Relay namespaces (``myns.servicebus.windows.net``).
AZURE_SUFFIX = ".servicebus.windows.net"


def _host_name(value: str) -> str | None:
    """The name a ``Host`` header gives, lower case, without port or trailing dot; None when
    it is an IP address (``[v6]``, with or without a port, or a bare IPv4 or IPv6 literal)."""
    host = value.strip().lower()
    if host.startswith("["):
        return None
    if host.count(":") == 1:  # name:port (more colons: a bare IPv6 literal)
        host = host.partition(":")[0]
    host = host.removesuffix(".")
    return None if is_ip_address(host) else host


class FrontDoor(Handler):
    """A connection reading HTTP requests and routing them (see the module docstring)."""

    kind = ConnectionKind.HANDSHAKE
    # Starting values, on the class: a door that reads one upgrade request sets few of them
    # (one door per connection; issue 14, rendezvous per second).
    #: Made when first needed (``h11``): a plain upgrade request never needs it.
    _h11: h11.Connection | None = None
    #: The bytes the fast path read (head and what followed), until h11 reads them again.
    _fast: bytes | None = None
    _fast_trailing = b""
    head: RequestHead | None = None
    exchange: Exchange | None = None
    _request_done = False
    _response_done = False
    _closing = False
    _served = 0  # requests answered on this connection

    def __init__(self, svc: ServiceCore, conn: Connection, routes: Sequence[Route]) -> None:
        super().__init__(svc, conn)
        self.routes = routes
        self._idle_since = conn.opened  # the handshake timeout counts from here
        svc.watch(conn.id)

    @property
    def h11(self) -> h11.Connection:
        """The connection's h11 state. Made on first use; when the fast path read the head,
        h11 reads those bytes again and stands where it would have stood, the request read."""
        conn = self._h11
        if conn is None:
            conn = self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
            fast, self._fast = self._fast, None
            if fast is not None:
                conn.receive_data(fast)
                event = conn.next_event()
                assert isinstance(event, h11.Request), event  # h11's grammar is the fast path's
        return conn

    # -- input -----------------------------------------------------------------------------

    def receive_data(self, now: float, data: bytes | memoryview) -> None:
        if self._closing:
            return
        data = bytes(data)
        if self._h11 is None and self.head is None:
            # The first bytes of a connection: a plain upgrade request skips h11.
            fast = _fast_head(data)
            if fast is not None:
                self._fast = data
                self.head, self._fast_trailing = fast
                self._start_request(now, self.head)
                if self.svc.handler(self.id) is self and not self._closing:
                    self._advance(now)  # not switched: h11 goes on from the request
                return
        self.h11.receive_data(data)
        self._advance(now)

    def receive_eof(self, now: float) -> None:
        if self._closing:
            return
        self.h11.receive_data(b"")
        self._advance(now)
        if self.exchange is not None and not self._request_done:
            self._sender_gone(now)
        elif not self._closing and self.exchange is None:
            self.close(now)

    def connection_lost(self, now: float) -> None:
        if self.exchange is not None:
            self._sender_gone(now)
        self._closing = True

    def _sender_gone(self, now: float) -> None:
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.sender_gone(now)
        if not self._closing:
            self.close(now)

    def _advance(self, now: float) -> None:
        while not self._closing:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._bad_request(now, exc)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if event is h11.PAUSED and self.head is not None and self.exchange is None:
                    return  # an upgrade: the route already switched the connection
                return
            if isinstance(event, h11.Request):
                if len(event.headers) > MAX_HEADER_FIELDS:
                    self._bad_request(now, h11.RemoteProtocolError(
                        f"more than {MAX_HEADER_FIELDS} header fields", error_status_hint=431))
                    return
                size = _head_size(event)
                if size > MAX_HEAD:  # checked before any route sees it (even before auth)
                    self._bad_request(now, h11.RemoteProtocolError(
                        f"{size} bytes, more than {MAX_HEAD}",
                        error_status_hint=431))
                    return
                self.head = _decode(event)
                self._start_request(now, self.head)
                if self.svc.handler(self.id) is not self:
                    return  # switched to another handler (a WebSocket upgrade)
            elif isinstance(event, h11.Data):
                if self.exchange is not None:
                    self.exchange.request_data(now, bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._request_done = True
                if self.exchange is not None:
                    self.exchange.request_end(now)
                self._maybe_next_cycle(now)
            elif isinstance(event, h11.ConnectionClosed):
                if self.exchange is not None and not self._request_done:
                    self._sender_gone(now)
                elif self.exchange is None:
                    self.close(now)
                return

    def _start_request(self, now: float, head: RequestHead) -> None:
        self._request_done = False
        self._response_done = False
        self.kind = ConnectionKind.HANDSHAKE
        self._route(now, head)

    def _bad_request(self, now: float, exc: _H11Error) -> None:
        status = exc.error_status_hint
        self.svc.stats.handshake_errors += 1
        if self.exchange is not None:
            # The request body was malformed mid-way: the exchange ends here.
            self._sender_gone(now)
            return
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            # h11's text may quote the offending bytes: keep only what it found wrong.
            what = str(exc).split(":", 1)[0][:100]
            why = (f"request head too large: {what}" if status == 431
                   else f"malformed HTTP request: {what}")
            self.svc.refusal_log.refused(
                now, status, self.head.path if self.head is not None else "-", why,
                remote=self.conn.remote, tracking=f"conn-{self.id}", event="handshake-failed")
            self.respond(now, status, why, close=True)
        else:
            self.close(now)

    def _route(self, now: float, head: RequestHead) -> None:
        for route in self.routes:
            if route.match(head):
                route.handle(self, head, now)
                return
        self.respond(now, 404, "Not found.")

    # -- answering -------------------------------------------------------------------------

    def upgrade(self) -> tuple[ServerHandshake, bytes]:
        """The current request as a WebSocket handshake to validate (the route switches the
        connection on success), with the bytes that came after the head."""
        head = self.head
        assert head is not None
        handshake = ServerHandshake()  # upgrades keep the 16 KiB head bound
        if head.raw is None:  # read by the fast path
            handshake.validate_head(head.method, head.target, head.http_version, head.headers,
                                    self._fast_trailing, fields=head.fields,
                                    size_at_most=head.size_at_most)
            return handshake, self._fast_trailing
        trailing, _ = self.h11.trailing_data
        handshake.validate(head.raw, bytes(trailing))
        return handshake, bytes(trailing)

    def continue_request(self) -> None:
        """Send ``100 Continue`` if the client waits for it before sending its body (RFC 9110
        §10.1.1): call once there is somewhere for the body to go."""
        if self._closing or not self.h11.they_are_waiting_for_100_continue:
            return
        try:
            data = self.h11.send(h11.InformationalResponse(status_code=100, headers=[]))
        except h11.LocalProtocolError:
            return
        if data:
            self.svc.send(self.id, data)

    def send_raw(self, data: bytes, *, close: bool = True) -> None:
        """Bytes already formatted (a handshake's refusal); close the connection after them."""
        self.svc.send(self.id, data)
        if close:
            self._closing = True
            self.svc.close(self.id)

    def refuse_method(self, now: float, head: RequestHead, allowed: str = "GET, HEAD") -> bool:
        """Answer 405 (with ``Allow``, logged and counted as a refusal) unless ``head``'s method
        is one of ``allowed``; whether it was refused. For the service's own endpoints."""
        if head.method in (m.strip() for m in allowed.split(",")):
            return False
        self.svc.stats.handshake_errors += 1
        why = f"{head.path[:100]} answers {allowed.replace(', ', ' and ')} only."
        self.svc.refusal_log.refused(now, 405, head.path, f"{why} (not {head.method[:20]})",
                                     remote=self.conn.remote, tracking=f"conn-{self.id}")
        self.respond(now, 405, why, headers=[("Allow", allowed)], close=True)
        return True

    def refuse_rebound_host(self, now: float, head: RequestHead) -> bool:
        """Answer 403 (logged and counted as a refusal) when a client asks for the service's
        own pages (``/$status``, ``/metrics``, the web view) by a ``Host`` name that is not one
        of the service's: a web page elsewhere whose name was made to resolve to this machine
        (DNS rebinding: to 127.0.0.1, or to its LAN address when the service listens there)
        cannot read them through a browser then. Whether it was refused.

        Allowed: an IP address, ``localhost`` and names under it (RFC 6761), the namespace's
        name as configured, any ``*.servicebus.windows.net`` name (Azure's DNS answers for
        those, not an attacker's: a hosts file mapping one here is the user's own), the names
        the driver added to ``allowed_hosts`` (the name it was bound by, the machine's own
        name), and a request without ``Host`` (HTTP/1.0, not a browser)."""
        value = head.header("host")
        if value is None:
            return False
        name = _host_name(value)
        if name is None or is_loopback_host(name) or name in self.svc.allowed_hosts:
            return False
        namespace = self.svc.broker.config.namespace.lower().removesuffix(".")
        # Names under Azure's suffix resolve as Microsoft says: nobody can rebind them here.
        if name == namespace or name.endswith(AZURE_SUFFIX):
            return False
        shown = printable(value.strip()[:100])
        why = (f"{head.path[:100]} answers by localhost, an IP address, this machine's "
               f"name, the namespace's name ({namespace}) or a *{AZURE_SUFFIX} name only, "
               f"not by \"{shown}\" (a guard against DNS rebinding); use one of those, or "
               "start the emulator with --namespace set to that name")
        self.svc.stats.handshake_errors += 1
        self.svc.refusal_log.refused(now, 403, head.path, why, remote=self.conn.remote,
                                     tracking=f"conn-{self.id}")
        self.respond(now, 403, why + ".", close=True)
        return True

    def respond(self, now: float, status: int, text: str = "", *,
                headers: Sequence[tuple[str, str]] = (), body: bytes | None = None,
                close: bool = False, reason: str | None = None) -> None:
        """A whole response (``text`` as a plain-text body unless ``body`` is given; ``reason``
        is the reason phrase, the standard one when not given)."""
        if body is None:
            body = (text + "\n").encode("utf-8") if text else b""
            if body and not any(k.lower() == "content-type" for k, _ in headers):
                headers = [*headers, ("Content-Type", "text/plain; charset=utf-8")]
        headers = [*headers, ("Content-Length", str(len(body)))]
        if not self.start_response(now, status, headers, reason_phrase(status, reason),
                                   close=close):
            return
        if body and (self.head is None or self.head.method != "HEAD"):
            self.send_body(body)
        self.end_response(now)
        if close:
            self.close(now)  # even when the request itself was never read to its end

    def start_response(self, now: float, status: int, headers: Sequence[tuple[str, str]],
                       reason: str = "", *, close: bool = False) -> bool:
        """Send a response head; False when the connection cannot carry one any more."""
        # IDLE: an error response to a request h11 could not parse (it allows that).
        if self._closing or self.h11.our_state not in (h11.SEND_RESPONSE, h11.IDLE):
            return False
        out = list(headers)
        if close or (self.exchange is None and not self._request_done and self._has_body()):
            # A refused request whose body is not read: do not try to read past it.
            out.append(("Connection", "close"))
        try:
            data = self.h11.send(h11.Response(status_code=status, headers=out,
                                              reason=reason.encode("latin-1", "replace")))
        except h11.LocalProtocolError:
            self.close(now)
            return False
        if data:
            self.svc.send(self.id, data)
        return True

    def _has_body(self) -> bool:
        head = self.head
        if head is None:
            return False
        length = (head.header("content-length") or "0").strip()
        return (length != "0" or "chunked" in (head.header("transfer-encoding") or "").lower())

    def send_body(self, data: bytes) -> bool:
        """A piece of the response body; False when it cannot be sent (the framing broke)."""
        if self._closing or not data:
            return not self._closing
        try:
            # The pieces (chunk size, payload, CRLF) as they are: the payload is not copied.
            pieces = self.h11.send_with_data_passthrough(h11.Data(data=data))
        except h11.LocalProtocolError:
            self._closing = True
            self.svc.close(self.id)
            return False
        for piece in pieces or ():
            self.svc.send(self.id, bytes(piece) if not isinstance(piece, bytes) else piece)
        return True

    def end_response(self, now: float) -> None:
        """The response is complete: read the next request, or close."""
        if self._closing:
            return
        try:
            out = self.h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            self.close(now)  # a Content-Length the body did not match
            return
        if out:
            self.svc.send(self.id, out)
        self._response_done = True
        self._served += 1
        if self.exchange is not None:
            self.exchange = None
            self.svc.watch(self.id)  # its deadline is the door's own again (next_deadline)
        self._maybe_next_cycle(now)

    def abort(self, now: float) -> None:
        """The response cannot be finished: cut the connection (the client sees it truncated)."""
        self.exchange = None
        self.close(now)

    def _maybe_next_cycle(self, now: float) -> None:
        if not (self._request_done and self._response_done) or self._closing:
            return
        if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state is h11.MUST_CLOSE:
            self.close(now)
            return
        try:
            self.h11.start_next_cycle()
        except h11.LocalProtocolError:
            self.close(now)
            return
        # A route answering inside request_end would otherwise start a second cycle.
        self._request_done = self._response_done = False
        self.head = None
        self.kind = ConnectionKind.HANDSHAKE
        self._idle_since = now
        self.svc.watch(self.id)
        self._advance(now)  # a pipelined request may already be buffered

    def close(self, now: float) -> None:
        if self._closing:
            return
        self._closing = True
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.sender_gone(now)
        self.svc.close(self.id)
        self.kind = ConnectionKind.CLOSED

    # -- time ------------------------------------------------------------------------------

    def deadline(self) -> float | None:
        if self._closing:
            return None
        if self.exchange is not None:
            return self.exchange.deadline()
        if self.head is None or not self._request_done:
            # Reading a request head (or a body nobody relays): the handshake timeout.
            return self._idle_since + self.svc.handshake_timeout
        return None

    def handle_timer(self, now: float) -> None:
        if self.exchange is not None:
            self.exchange.handle_timer(now)
            return
        if self._closing:
            return
        # A client that never finishes its request must not hold a connection forever.
        if self.head is None and self._served and not self.h11.trailing_data[0]:
            self.close(now)  # an idle keep-alive connection
            return
        if self.head is None and not self.h11.trailing_data[0]:
            # Not a byte arrived: browsers open spare connections they may never use (the web
            # view's page makes some). Answered like any timeout, but no refusal: DEBUG only.
            log_event(logging.DEBUG, "handshake-failed", "- with 408", remote=self.conn.remote,
                      tracking=f"conn-{self.id}",
                      why="no request arrived in time (an unused connection).")
            self.respond(now, 408, "Request Timeout: the request did not arrive in time.",
                         close=True)
            return
        self.svc.stats.handshake_errors += 1
        self.svc.refusal_log.refused(
            now, 408, self.head.path if self.head is not None else "-",
            "the request did not arrive in time.", remote=self.conn.remote,
            tracking=f"conn-{self.id}", event="handshake-failed")
        self.respond(now, 408, "Request Timeout: the request did not arrive in time.",
                     close=True)
