"""Relayed HTTP requests (hybrid-connections-wire §1.3, §3.2, §3.3, §8 "HTTP").

A sender's plain HTTP request to ``/{hc}[/suffix]`` becomes an :class:`HttpExchange` on its front
door. The broker authorizes it, picks a listener and builds the ``request`` command; then:

* a small request (a known body ≤ 64 KiB, headers ≤ 32 KiB) goes on the listener's control channel,
  the JSON and the body back to back, once the body is complete;
* anything else (bigger, or chunked with no length) goes as the ``{address, id}`` pointer: the
  listener opens a :class:`RequestRendezvous` and the request and its body are streamed there,
  fragment by fragment as the sender uploads it, never held whole.

The response comes back on the control channel (``response`` text and one binary message) or on
a rendezvous (``response`` text and a binary message whose fragments reach the sender as they
arrive, so Server-Sent Events and long polls stream). No listener: 502. No response head within
60 s, or a response idle for 60 s: 504 (or a cut connection once the head has gone). A sender
that leaves mid-request closes the rendezvous with 1001: the listener sees the cancellation.
"""

from __future__ import annotations

import json
import logging
import re

import h11

from ..control import RequestCommand, ResponseCommand, parse_command, serialize_command
from ..errors import RemoteProtocolError
from ..handshake import HandshakeRequest, ServerHandshake
from ..webpubsub.rest import is_rest_path
from ..websocket import (
    BinaryFragment,
    ConnectionClosed,
    Role,
    TextMessage,
    WebSocketConnection,
)
from .broker import BadResponse, Refused
from .events import log_event
from .front import FrontDoor, RequestHead, reason_phrase
from .handler import Connection, ConnectionKind, ServiceCore, WebSocketHandler
from .registry import PendingRequest
from .relay import BY_RELAY, ControlChannel, can_send, refuse_upgrade, relay_path

__all__ = [
    "MAX_CONTROL_BODY",
    "MAX_CONTROL_HEADERS",
    "RESPONSE_TIMEOUT",
    "HttpExchange",
    "HttpRelayRoute",
    "RequestRendezvous",
    "open_request_rendezvous",
    "split_cookies",
]

logger = logging.getLogger("hyco_proto.service")

#: A request travels on the control channel up to this body size ... (§3.2 "Size")
MAX_CONTROL_BODY = 64 * 1024
#: ... and this much header metadata; otherwise on a rendezvous.
MAX_CONTROL_HEADERS = 32 * 1024
#: Seconds a listener has to start its response, and a response may stay idle (§3.3).
RESPONSE_TIMEOUT = 60.0
_TIMEOUT_TEXT = ("The request was routed to the listener but the listener did not respond in "
                 "the required time.")
#: Response headers the relay does not pass on (its own framing replaces them).
_RESPONSE_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                           "transfer-encoding", "upgrade"})


#: A ", " that starts another cookie ("name=") and is not inside "Expires=Wed, 21 Oct ...".
_COOKIE_BOUNDARY = re.compile(r",\s*(?=[!#$%&'*+\-.^_`|~0-9A-Za-z]+=)")


def split_cookies(value: str) -> list[str]:
    """Cookies joined into one ``Set-Cookie`` value, one per item (RFC 6265 §3: ``Set-Cookie``
    must not be folded; an ``Expires`` date's comma is followed by a day number, not a name)."""
    return [part.strip() for part in _COOKIE_BOUNDARY.split(value) if part.strip()]


def _no_body_status(status: int) -> bool:
    return status in (204, 304) or 100 <= status < 200


def hub_port_text(svc: ServiceCore) -> str:
    """``the emulator's Web PubSub port`` with its address when the service knows it."""
    address = svc.addresses.get("webpubsub")
    if address:
        return f"the emulator's Web PubSub port, {address}"
    return ("the emulator's Web PubSub port (the address `hyco emulator` prints as 'Web PubSub "
            "hubs on'; 8080 by default)")


def _looks_like_rest_call(svc: ServiceCore, head: RequestHead) -> bool:
    """A Web PubSub REST API request (``/api/...`` with a Bearer token) sent to the relay port,
    for a hybrid connection no listener serves: its refusal (which a real relay would give too)
    can say where the REST API is. A live listener's hybrid connection named ``api`` is left
    alone: its refusals are about it."""
    if not is_rest_path(head.path):
        return False
    if (head.header("authorization") or "")[:7].lower() != "bearer ":
        return False
    hc = svc.broker.config.lookup(head.path.lstrip("/"), create=False)
    return hc is None or not svc.broker.live_listeners(hc.name)


def _with_hint(description: str, hint: str) -> str:
    """``hint`` after the message, before the relay's ``TrackingId:...`` tail."""
    at = description.find(" TrackingId:")
    if at < 0:
        return description + hint
    return description[:at] + hint + description[at:]


class HttpRelayRoute:
    """Every request that is not a WebSocket path or a service endpoint: relay it."""

    def __init__(self, svc: ServiceCore) -> None:
        self.svc = svc

    def match(self, head: RequestHead) -> bool:
        return relay_path(head.path) is None

    def handle(self, door: FrontDoor, head: RequestHead, now: float) -> None:
        svc = self.svc
        if head.is_upgrade:
            # HTTP relaying cannot carry an upgrade; the sender most likely forgot the prefix.
            text = "Not a relay address: WebSocket connections use /$hc/{hybrid connection}."
            if head.path.lower().startswith("/client/"):
                text += f" Web PubSub clients connect to {hub_port_text(svc)}."
            svc.refusal_log.refused(now, 404, head.path, text, remote=door.conn.remote)
            door.respond(now, 404, text, reason=text, close=True, headers=BY_RELAY)
            return
        length_text = head.header("content-length")
        chunked = "chunked" in (head.header("transfer-encoding") or "").lower()
        length = int(length_text) if length_text and length_text.strip().isdigit() else 0
        has_body = chunked or length > 0
        result = svc.broker.http_request(
            now, head.path.lstrip("/"), method=head.method, target_path=head.path,
            query=head.query, headers=head.headers, remote=door.conn.remote, body=has_body)
        if isinstance(result, Refused):
            if result.status in (401, 403):
                svc.stats.auth_failures += 1
            description = result.description
            if _looks_like_rest_call(svc, head):
                description = _with_hint(description, (
                    " This looks like a Web PubSub REST API call (/api/... with a Bearer token) "
                    f"sent to the emulator's relay port: the REST API is on {hub_port_text(svc)}."))
            svc.refusal_log.refused(now, result.status, head.path, description,
                                   remote=door.conn.remote)
            door.respond(now, result.status, description, reason=description,
                         close=True, headers=BY_RELAY)
            return
        headers_size = len(json.dumps(result.command.request_headers))
        small = not chunked and length <= MAX_CONTROL_BODY and headers_size <= MAX_CONTROL_HEADERS
        exchange = HttpExchange(svc, door, result, head, now, on_control_channel=small)
        log_event(logging.INFO, "request-accepted", f"{head.method} {head.path}",
                  remote=door.conn.remote, tracking=result.id,
                  why=f"to listener {result.listener_id}")
        door.exchange = exchange
        door.kind = ConnectionKind.HTTP
        exchange.start(now)


class HttpExchange:
    """One relayed HTTP request, from the sender's head to the end of the response."""

    def __init__(self, svc: ServiceCore, door: FrontDoor, pending: PendingRequest,
                 head: RequestHead, now: float, *, on_control_channel: bool) -> None:
        self.svc = svc
        self.door = door
        self.pending = pending
        self.id = pending.id
        self.head = head
        self.on_control_channel = on_control_channel
        self.started = now
        self.last_activity = now
        self.body = bytearray()  # the control channel's whole body, or what came before attach
        self.request_ended = False
        self.rendezvous: RequestRendezvous | None = None
        self.response_head: ResponseCommand | None = None
        self.head_sent = False
        self.done = False
        self._body_fragments = 0
        #: Body bytes relayed so far, sender → listener and back (per read, for the web view).
        self.request_bytes = 0
        self.response_bytes = 0

    # -- the request -----------------------------------------------------------------------

    def start(self, now: float) -> None:
        svc = self.svc
        svc.stats.http_requests += 1
        svc.register_exchange(self)
        svc.watch(self.door.id)
        if not self.on_control_channel:
            pointer = RequestCommand(id=self.id, address=self.pending.address)
            if not self._control_send(serialize_command(pointer)):
                return
            # Nowhere to put the body until the listener connects: stop reading the sender.
            svc.pause_reading(self.door.id, True)
        else:
            self.door.continue_request()

    def _control_send(self, text: str, body: bytes | None = None) -> bool:
        channel = self.svc.lookup(f"listener:{self.pending.listener_id}")
        if not isinstance(channel, ControlChannel) or not channel.send_messages(text, body):
            self.fail(self.last_activity, 502,
                      "Bad Gateway: the listener's control channel is closing.")
            return False
        return True

    def request_data(self, now: float, data: bytes) -> None:
        if self.done:
            return
        self.last_activity = now
        self.svc.stats.http_bytes_relayed += len(data)
        self.request_bytes += len(data)
        rendezvous = self.rendezvous
        if rendezvous is not None:
            rendezvous.send_fragment(data, False)
        else:
            self.body += data

    def request_end(self, now: float) -> None:
        if self.done:
            return
        self.request_ended = True
        self.last_activity = now
        if self.on_control_channel:
            command = self.pending.command
            self.svc.broker.request_on_control_channel(self.id)
            self._control_send(serialize_command(command),
                               bytes(self.body) if command.body else None)
            self.body = bytearray()
        elif self.rendezvous is not None and self.pending.command.body:
            self.rendezvous.send_fragment(b"", True)

    def attach(self, now: float, rendezvous: RequestRendezvous) -> None:
        """The listener opened the request's rendezvous."""
        self.rendezvous = rendezvous
        self.last_activity = now
        self.door.peer, rendezvous.peer = rendezvous.id, self.door.id
        if self.on_control_channel:
            return  # it only answers there (§3.3: "or on a rendezvous the listener opens")
        full = self.pending.command
        command = RequestCommand(id=full.id, request_target=full.request_target,
                                 method=full.method, remote_endpoint=full.remote_endpoint,
                                 request_headers=full.request_headers, body=full.body)
        rendezvous.send_text(serialize_command(command))
        if full.body:
            if self.body or not self.request_ended:
                rendezvous.send_fragment(bytes(self.body), self.request_ended)
            else:
                rendezvous.send_fragment(b"", True)
        self.body = bytearray()
        self.svc.pause_reading(self.door.id, False)
        self.door.continue_request()

    # -- the response ----------------------------------------------------------------------

    def response(self, now: float, response: ResponseCommand, source: int) -> bool:
        """A response head; True when a body message for it is expected next."""
        if self.done or self.response_head is not None:
            return False
        self.last_activity = now
        self.response_head = response
        if not response.body or not self._from_control(source):
            # Streamed (rendezvous) or no body: the head goes now.
            self._send_head(now, None)
            if not response.body:
                self._end(now)
                return False
        # A control-channel body is one message right behind: the head waits for its length.
        return True

    def _from_control(self, source: int) -> bool:
        return self.rendezvous is None or source != self.rendezvous.id

    def _send_head(self, now: float, length: int | None) -> None:
        response = self.response_head
        assert response is not None
        status = response.status_code
        headers: list[tuple[str, str]] = []
        listener_length: str | None = None
        via = f"1.1 {self.svc.broker.config.namespace}"
        for name, value in response.response_headers.items():
            lower = name.lower()
            if lower in _RESPONSE_HOP:
                continue
            if lower == "content-length":
                listener_length = value
                continue
            if lower == "via":
                value = f"{value}, {via}"
                via = ""
            if lower == "set-cookie":
                # responseHeaders is a string map: several cookies arrive joined with ", "
                # (.NET joins them, and so do we). Give the sender one header per cookie.
                headers += [(name, cookie) for cookie in split_cookies(value)]
                continue
            headers.append((name, value))
        if via:
            headers.append(("Via", via))
        if self.head.method == "HEAD" or _no_body_status(status):
            if listener_length is not None and not _no_body_status(status):
                headers.append(("Content-Length", listener_length))
        elif length is not None:
            headers.append(("Content-Length", str(length)))
        elif not response.body:
            headers.append(("Content-Length", "0"))
        elif listener_length is not None and listener_length.strip().isdigit():
            headers.append(("Content-Length", listener_length.strip()))
        reason = reason_phrase(status, response.status_description)
        try:
            h11.Response(status_code=status, headers=headers, reason=reason.encode("latin-1"))
        except (h11.LocalProtocolError, UnicodeEncodeError):
            # A header name or value HTTP cannot carry (CR/LF, spaces in a name, anything
            # beyond ASCII: h11 takes header text as ASCII); the listener's text is not echoed.
            self.fail(now, 502, "Bad Gateway: the listener's response head is not valid HTTP "
                      "(a header name or value HTTP cannot carry).")
            return
        self.head_sent = True
        if not self.door.start_response(now, status, headers, reason):
            self._finish(now)

    def response_body(self, now: float, data: bytes, fin: bool) -> None:
        if self.done or self.response_head is None:
            return
        self.last_activity = now
        if not self.head_sent:
            self._send_head(now, len(data))
            if self._over():
                return
        bodiless = self.head.method == "HEAD" or _no_body_status(self.response_head.status_code)
        if data and not bodiless:
            self.svc.stats.http_bytes_relayed += len(data)
            self.response_bytes += len(data)
        if data and not bodiless and not self.door.send_body(data):
            self._finish(now)
            return
        if fin:
            self._end(now)

    def _over(self) -> bool:
        return self.done

    def _end(self, now: float) -> None:
        """The response is complete."""
        if self.done:
            return
        self.done = True
        self._release(now)
        rendezvous = self.rendezvous
        if rendezvous is not None:
            rendezvous.finished(now, 1000, "The response is complete.")
        self.door.end_response(now)

    def fail(self, now: float, status: int, description: str) -> None:
        """Answer the sender with an error (502, 504), or cut it once the head has gone."""
        if self.done:
            return
        self.done = True
        self._release(now)
        rendezvous = self.rendezvous
        if rendezvous is not None:
            rendezvous.finished(now, 1011 if status == 502 else 1001, description)
        if self.head_sent:
            self.door.abort(now)
            return
        self.door.exchange = None
        self.svc.refusal_log.refused(now, status, self.head.path, description,
                                    remote=self.door.conn.remote)
        self.door.respond(now, status, description, reason=description, close=True,
                          headers=BY_RELAY)

    def rendezvous_closed(self, now: float) -> None:
        if not self.done:
            self.fail(now, 502, "Bad Gateway: the listener closed the request's rendezvous "
                      "before its response was complete.")

    def sender_gone(self, now: float) -> None:
        """The sender left: cancel at the listener (close the rendezvous with 1001)."""
        if self.done:
            return
        self.done = True
        self._release(now)
        if self.rendezvous is not None:
            self.rendezvous.finished(now, 1001, "The sender went away; the request is cancelled.")

    def _finish(self, now: float) -> None:
        """The sender's connection cannot take the response any more."""
        if not self.done:
            self.sender_gone(now)
        self.door.abort(now)

    def _release(self, now: float) -> None:
        self.svc.unregister_exchange(self)
        self.svc.broker.finish_request(self.id)
        self.svc.pause_reading(self.door.id, False)
        self.door.peer = None

    # -- time ------------------------------------------------------------------------------

    def deadline(self) -> float | None:
        if self.done:
            return None
        return self.last_activity + self.svc.http_timeout

    def handle_timer(self, now: float) -> None:
        if self.done:
            return
        if now < self.last_activity + self.svc.http_timeout:
            return
        if self.response_head is None:
            self.fail(now, 504, _TIMEOUT_TEXT)
        else:
            self.fail(now, 504, "The listener's response stalled for longer than "
                      f"{self.svc.http_timeout:g} s.")

    def listener_gone(self, now: float) -> None:
        """The listener's control channel ended: without a rendezvous it cannot answer."""
        if self.rendezvous is None and not self.done:
            self.fail(now, 502, "Bad Gateway: the listener went away before it answered.")


def open_request_rendezvous(svc: ServiceCore, door: FrontDoor, handshake: ServerHandshake,
                            request: HandshakeRequest, query: str, now: float) -> None:
    """``sb-hc-action=request``: the listener's rendezvous for one HTTP request."""
    result = svc.broker.request_rendezvous(now, query, relay_path(door.head.path)
                                           if door.head is not None else None)
    exchange = svc.exchange(result.id) if isinstance(result, PendingRequest) else None
    if isinstance(result, Refused) or exchange is None or exchange.done:
        description = result.description if isinstance(result, Refused) else \
            "Gone: the request is no longer in flight."
        refuse_upgrade(svc, door, handshake, result.status if isinstance(result, Refused)
                       else 410, description, door.conn.opened)
        return
    svc.send(door.id, handshake.accept(None))
    rendezvous = RequestRendezvous(svc, door.conn, exchange, handshake.trailing_data)
    svc.switch(door.id, rendezvous)
    exchange.attach(now, rendezvous)
    rendezvous.pump(now)


class RequestRendezvous(WebSocketHandler):
    """A listener's WebSocket for one relayed HTTP request (``sb-hc-action=request``)."""

    kind = ConnectionKind.REQUEST

    def __init__(self, svc: ServiceCore, conn: Connection, exchange: HttpExchange,
                 trailing: bytes) -> None:
        super().__init__(svc, conn)
        self.exchange: HttpExchange | None = exchange
        self.request_id = exchange.id
        # The response body streams without a bound; its JSON head is capped like a control
        # message (1009 once the text received so far exceeds it).
        self.ws = WebSocketConnection(Role.SERVER, stream_binary=True,
                                      max_text_size=svc.broker.config.max_control_message)
        self._trailing = trailing
        self._body_expected = False
        self._closing_deadline: float | None = None

    def gone(self, now: float) -> None:
        self._lost(now)

    def _lost(self, now: float) -> None:
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.rendezvous_closed(now)

    def pump(self, now: float) -> None:
        if self._trailing:
            data, self._trailing = self._trailing, b""
            self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, TextMessage):
                self._text(now, event.data)
            elif isinstance(event, BinaryFragment):
                self._fragment(now, event.data, event.fin)
            elif isinstance(event, ConnectionClosed):
                self._lost(now)
        self.flush()

    def _text(self, now: float, text: str) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        self._body_expected = False
        try:
            command = parse_command(text)
        except RemoteProtocolError as exc:
            self.exchange = None
            exchange.fail(now, 502, f"Bad Gateway: the listener sent a malformed response: "
                          f"{exc.message}")
            return
        if not isinstance(command, ResponseCommand) or command.request_id != self.request_id:
            self.exchange = None
            exchange.fail(now, 502, "Bad Gateway: the listener sent something other than the "
                          "response to this request on its rendezvous.")
            return
        checked = self.svc.broker.check_response(None, command)
        if isinstance(checked, BadResponse):
            self.exchange = None
            exchange.fail(now, 502, checked.description)
        elif checked is not None:
            self._body_expected = exchange.response(now, checked, self.id) or checked.body

    def _fragment(self, now: float, data: bytes, fin: bool) -> None:
        exchange = self.exchange
        if exchange is None or not self._body_expected:
            return  # a stray binary message (hyco-https after "body": false, §3.3)
        if fin:
            self._body_expected = False
        exchange.response_body(now, data, fin)

    def send_text(self, text: str) -> None:
        if can_send(self.ws):
            self.ws.send_text(text)
            self.flush()

    def send_fragment(self, data: bytes, fin: bool) -> None:
        if can_send(self.ws):
            self.ws.send_binary_part(data, fin)
            self.flush()

    def finished(self, now: float, code: int, reason: str) -> None:
        """The exchange is over: close this rendezvous (1000 after a response, 1001 when the
        sender left, which the listener sees as the cancellation)."""
        self.exchange = None
        self.peer = None
        if can_send(self.ws):
            # A close may go between the fragments of an unfinished message (RFC 6455 §5.4).
            self.ws.send_close(code, reason[:120])
            self.flush()
        if self.kind is ConnectionKind.REQUEST:
            self._closing_deadline = now + self.svc.close_timeout
            self.svc.watch(self.id)

    def handle_timer(self, now: float) -> None:
        # The listener never answered our close: drop the connection.
        self._closing_deadline = None
        self.svc.close(self.id)
        self.kind = ConnectionKind.CLOSED

    def deadline(self) -> float | None:
        return self._closing_deadline

    def shutdown(self, now: float, code: int, reason: str) -> None:
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.fail(now, 503, reason)
        if can_send(self.ws):
            self.ws.send_close(code, reason[:120])
            self.flush()
        self.svc.close(self.id)
        self.kind = ConnectionKind.CLOSED
