"""Fuzz targets: every parser of untrusted input, called so that only a result or the module's
documented error type may come out. Anything else propagates — that is a finding.

Used by the hypothesis property tests (``tests/test_fuzz_properties.py``, in ``make test``) and
by the atheris harness (``fuzz/run.py``, ``make fuzz``). Besides the single parsers: a differential
UTF-8 harness (``utf8_differential``: both kernels' Forwarder and the WebSocket connection against
Python's strict decoder) and whole-service sessions behind a valid token (``SESSION_TARGETS``:
control channel, relayed HTTP, Web PubSub clients, our listener). Results: ``fuzz/RESULTS.md``.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import importlib
import itertools
import json
from collections.abc import Callable
from types import ModuleType
from typing import Any

from hyco_proto import control, sas, uris
from hyco_proto.drivers.http_client import HttpExchange, HttpRequest
from hyco_proto.errors import RemoteProtocolError, TokenError
from hyco_proto.handshake import ClientHandshake, ServerHandshake
from hyco_proto.service.config import ServiceConfig
from hyco_proto.service.router import RelayService
from hyco_proto.service.webpubsub import WebPubSubService
from hyco_proto.webpubsub import endpoints, messages, odata, tokens
from hyco_proto.webpubsub.hub import Hub
from hyco_proto.webpubsub.rest import RestApi, RestRequest

NOW = 1_800_000_000.0
KEY = "fuzz-access-key-0123456789abcdef0123456789"
ENDPOINT = "http://127.0.0.1:8080"


def kernels() -> list[ModuleType]:
    """The frame kernels present: always the pure-Python twin, the Cython one when built."""
    found = [importlib.import_module("hyco_proto._frames_py")]
    with contextlib.suppress(ImportError):
        found.append(importlib.import_module("hyco_proto._frames"))
    return found


def _allow(fn: Callable[[Any], object], *errors: type[BaseException]) -> Callable[[Any], None]:
    def target(data: Any) -> None:
        with contextlib.suppress(*errors):
            fn(data)
    name = getattr(fn, "__name__", "target")
    module = getattr(fn, "__module__", "") or ""
    # Qualified by module: uris and endpoints both have a parse_connection_string.
    target.__name__ = name if module == __name__ else f"{module.rsplit('.', 1)[-1]}.{name}"
    return target


# -- text inputs ------------------------------------------------------------------------------

def _verify_sas(text: str) -> None:
    sas.verify_token(text, keys={"root": KEY}, target_path="/hc", now=NOW, host="ns")


def _verify_jwt(text: str) -> None:
    tokens.verify_client_token(text, key=KEY, endpoint=ENDPOINT, hub="chat", now=NOW)


def _filter(text: str) -> None:
    predicate = odata.parse_filter(text)
    predicate(odata.FilterSubject("c1", "u1", frozenset({"g"})))


def _rest(text: str) -> None:
    """Any target on the REST API gets a response (never an exception)."""
    api = RestApi(lambda name: Hub(name), KEY)
    for method in ("GET", "POST", "PUT", "DELETE", "HEAD"):
        result = api.handle(RestRequest(method, "/" + text.lstrip("/"), ENDPOINT,
                                        "Bearer " + text, "text/plain", text.encode(
                                            "utf-8", "surrogatepass")), NOW)
        assert 100 <= result.response.status <= 599


TEXT_TARGETS: list[Callable[[str], None]] = [
    _allow(sas.parse_token, TokenError),
    _allow(_verify_sas, TokenError),
    _allow(uris.parse_relay_uri, ValueError),
    _allow(uris.parse_connection_string, ValueError),
    _allow(control.parse_command, RemoteProtocolError),
    _allow(messages.parse_client_message, messages.WebPubSubProtocolError),
    _allow(messages.parse_service_message, messages.WebPubSubProtocolError),
    _allow(endpoints.parse_client_url, ValueError),
    _allow(endpoints.parse_connection_string, ValueError),
    _allow(_verify_jwt, tokens.WebPubSubTokenError),
    _allow(_filter, ValueError),
    _rest,
]


# -- byte inputs ------------------------------------------------------------------------------

def _server_handshake(data: bytes) -> None:
    hs = ServerHandshake()
    hs.receive_data(data)
    hs.next_event()


def _client_handshake(data: bytes) -> None:
    hs = ClientHandshake("127.0.0.1:9", "/$hc/hc?sb-hc-action=listen")
    hs.data_to_send()
    hs.receive_data(data)
    hs.next_event()


def _http_response(data: bytes) -> None:
    exchange = HttpExchange(HttpRequest("GET", "http://127.0.0.1:9/hc"))
    exchange.data_to_send()
    exchange.receive_data(data)
    exchange.receive_eof()
    exchange.events_received()


def _service(data: bytes) -> None:
    """The relay service's routers (relay and Web PubSub ports): any bytes, any split."""
    service = RelayService(ServiceConfig(), webpubsub=WebPubSubService(KEY))
    for routes in ("relay", "webpubsub"):
        conn = service.connection_made(NOW, ("127.0.0.1", 1), service=routes)
        half = len(data) // 2
        service.receive_data(NOW, conn, data[:half])
        service.receive_data(NOW, conn, data[half:])
        service.receive_eof(NOW, conn)
        service.data_to_send()
        service.connection_lost(NOW, conn)
    service.handle_timer(NOW + 3600)


def _close_payload(data: bytes) -> None:
    for kernel in kernels():
        kernel.check_close_payload(data)


BYTE_TARGETS: list[Callable[[bytes], None]] = [
    _allow(_server_handshake, RemoteProtocolError),
    _allow(_client_handshake, RemoteProtocolError),
    _http_response,
    _service,
    _close_payload,
    _allow(control.parse_command, RemoteProtocolError),
    _allow(messages.parse_client_message, messages.WebPubSubProtocolError),
]


# -- the frame kernels ------------------------------------------------------------------------

def frame_decoder(kernel: ModuleType, chunks: list[bytes], masked: bool) -> None:
    """Violations set ``error_code`` (1002 / 1009); nothing raises."""
    decoder = kernel.FrameDecoder(masked=masked, max_message_size=1 << 16)
    for chunk in chunks:
        decoder.feed(chunk)
        if decoder.error_code:
            assert decoder.error_code in (1002, 1007, 1009), decoder.error_code
            break


def forwarder(kernel: ModuleType, chunks: list[bytes]) -> None:
    fwd = kernel.Forwarder(masked=True, max_frame_size=1 << 16)
    for chunk in chunks:
        fwd.feed(chunk)
        if fwd.error_code:
            assert fwd.error_code in (1002, 1007, 1009), fwd.error_code
            break


# -- UTF-8 validation: both kernels' Forwarder and the WebSocket connection against Python ------

#: Mask keys a message may be sent with (the fuzzer picks one; all zero leaves bytes as they are).
UTF8_KEYS = (b"\x00\x00\x00\x00", b"\x37\xfa\x21\x3d", b"\xff\xff\xff\xff", b"\x80\x7f\x80\x7f")
_COMPLETIONS = (0x80, 0x90, 0xA0, 0xBF)  # enough to complete any valid prefix of a code point


def _valid_prefix(seq: bytes) -> bool:
    """Can ``seq`` (from a code point boundary, at most 4 bytes) be completed to valid UTF-8?"""
    for extra in range(5 - len(seq)):
        for tail in itertools.product(_COMPLETIONS, repeat=extra):
            try:
                (seq + bytes(tail)).decode("utf-8")
            except UnicodeDecodeError:
                continue
            return True
    return False


def utf8_reference(payload: bytes) -> tuple[int, int] | None:
    """Python's strict decoder as the oracle: None for valid UTF-8, else ``(start, bad)`` where
    ``payload[:start]`` is valid and ends at a code point boundary (``UnicodeDecodeError.start``)
    and ``payload[bad]`` is the first byte that no valid UTF-8 can have there; ``bad ==
    len(payload)`` when the message ends inside a code point (detectable only at its end)."""
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = exc.start
    else:
        return None
    for i in range(start, min(start + 4, len(payload))):
        if not _valid_prefix(payload[start:i + 1]):
            return start, i
    return start, len(payload)


@dataclasses.dataclass
class Utf8Wire:
    """A message on the wire from a client (masked), and where its payload bytes lie."""

    wire: bytes
    prefix: bytes  # payload of the message sent before it (forwarded first), if any
    positions: list[int]  # wire offset of each payload byte
    fragments: list[int]  # payload offset where each fragment begins
    final_start: int  # payload offset where the final fragment begins
    end: int  # wire offset of the message's last byte
    reads: list[bytes]
    read_starts: list[int]  # wire offset where each read begins

    def read_of(self, offset: int) -> int:
        """Index of the read that holds wire byte ``offset``."""
        return bisect.bisect_right(self.read_starts, offset) - 1


def _frame(opcode: int, payload: bytes, fin: bool, rsv: int, key: bytes) -> bytes:
    from hyco_proto import _frames_py

    return (_frames_py.encode_header(opcode, len(payload), fin, rsv, key)
            + _frames_py.apply_mask(payload, key))


def utf8_wire(payload: bytes, frag_cuts: list[int], read_cuts: list[int], mode: int) -> Utf8Wire:
    """``mode``: bits 0-1 the message kind (0, 1 text; 2 binary; 3 text with RSV1, i.e.
    compressed), bit 2 validation off, bit 3 a ping after the first fragment, bit 4 a message
    before this one (bit 5: binary with invalid UTF-8, else valid text), bits 6-7 the mask key.
    ``frag_cuts`` split the payload into fragments, ``read_cuts`` the wire into reads (both taken
    modulo the length + 1)."""
    key = UTF8_KEYS[mode >> 6]
    kind = mode & 3
    wire = bytearray()
    prefix = b""
    if mode & 16:
        if mode & 32:
            prefix = b"\xff\xc0\xed\xa0\x80"
            wire += _frame(2, prefix, True, 0, key)
        else:
            prefix = "é€𝄞".encode()
            wire += _frame(1, prefix[:3], False, 0, key) + _frame(0, prefix[3:], True, 0, key)
    cuts = sorted({c % (len(payload) + 1) for c in frag_cuts} - {0, len(payload)})
    bounds = [0, *cuts, len(payload)]
    positions: list[int] = []
    for index, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        fin = index == len(bounds) - 2
        opcode = (2 if kind == 2 else 1) if index == 0 else 0
        frame = _frame(opcode, payload[lo:hi], fin, 4 if kind == 3 and index == 0 else 0, key)
        first = len(wire) + len(frame) - (hi - lo)
        positions.extend(range(first, first + hi - lo))
        wire += frame
        end = len(wire) - 1
        if index == 0 and mode & 8:
            wire += _frame(9, b"ping", True, 0, key)
    splits = sorted({c % (len(wire) + 1) for c in read_cuts} - {0, len(wire)})
    starts = [0, *splits]
    reads = [bytes(wire[lo:hi]) for lo, hi in itertools.pairwise([*starts, len(wire)])]
    return Utf8Wire(bytes(wire), prefix, positions, bounds[:-1], bounds[-2], end, reads, starts)


def _forwarded(output: bytes) -> bytes:
    """The data payload bytes in a forwarder's (unmasked, possibly cut short) output."""
    from hyco_proto import _frames_py

    decoder = _frames_py.FrameDecoder(masked=False, allowed_rsv=4)
    chunks = decoder.feed(output)
    assert not decoder.error_code, (decoder.error_reason, output)
    return b"".join(chunk for opcode, chunk, _ in chunks if opcode < 8)


def _check_failure_point(msg: Utf8Wire, ref: tuple[int, int], fail_read: int | None,
                         forwarded: int | None, fast: bool) -> None:
    """A failure not before the read holding the first byte of the bad code point, and no later
    than the read holding the first byte no valid UTF-8 can have there (the message's end when it
    ends inside a code point). ``forwarded`` (payload bytes let through) stops before that byte
    and lets through at least the valid prefix up to the fragment holding the bad code point (a
    forwarder may hold back that whole fragment). ``fast``: a truncation is seen at the final
    frame, whose bytes of the incomplete code point are not forwarded."""
    start, bad = ref
    truncated = bad == len(msg.positions)
    deadline = msg.end if truncated else msg.positions[bad]
    assert fail_read is not None
    assert msg.read_of(msg.positions[start]) <= fail_read <= msg.read_of(deadline), (
        fail_read, ref, msg.read_starts)
    if forwarded is not None:
        limit = (max(start, msg.final_start) if fast else bad) if truncated else bad
        lower = max(offset for offset in msg.fragments if offset <= start)
        assert lower <= forwarded <= limit, (forwarded, ref, msg.fragments)


def utf8_differential(payload: bytes, frag_cuts: list[int], read_cuts: list[int],
                      mode: int) -> None:
    """One message through each kernel's ``Forwarder(masked=True)`` and a server-role
    ``WebSocketConnection``: 1007 exactly when Python's strict decoder refuses the text payload,
    at the right read, having forwarded the valid fragments and nothing from the first byte that
    cannot be UTF-8; the kernels agree byte for byte; binary, compressed and unvalidated
    messages pass untouched."""
    from hyco_proto.websocket import BinaryMessage, Role, TextMessage, WebSocketConnection

    msg = utf8_wire(payload, frag_cuts, read_cuts, mode)
    kind = mode & 3
    text = kind in (0, 1)
    ref = utf8_reference(payload) if text else None
    checked = ref if not mode & 4 else None
    verdicts = []
    for kernel in kernels():
        fwd = kernel.Forwarder(masked=True, allowed_rsv=4 if kind == 3 else 0,
                               validate_utf8=not mode & 4)
        outputs: list[bytes] = []
        fail_read = None
        for index, chunk in enumerate(msg.reads):
            outputs.append(fwd.feed(chunk))
            if fwd.error_code and fail_read is None:
                fail_read = index
        forwarded = _forwarded(b"".join(outputs))
        assert (msg.prefix + payload).startswith(forwarded), kernel.__name__
        if checked is None:
            assert fwd.error_code == 0, (kernel.__name__, fwd.error_reason)
            assert forwarded == msg.prefix + payload, kernel.__name__
            assert not fwd.mid_frame and fwd.buffered == 0, kernel.__name__
        else:
            assert fwd.error_code == 1007, (kernel.__name__, fwd.error_code, fwd.error_reason)
            assert fwd.buffered == 0, kernel.__name__
            _check_failure_point(msg, checked, fail_read, len(forwarded) - len(msg.prefix), True)
        verdicts.append((fwd.error_code, fwd.error_reason, outputs, fail_read,
                         fwd.payload_bytes, fwd.frames))
    assert all(v == verdicts[0] for v in verdicts), [
        (k.__name__, v[:2], v[3:]) for k, v in zip(kernels(), verdicts, strict=True)]
    if kind == 3:
        return  # no extension is negotiated on a plain WebSocketConnection
    conn = WebSocketConnection(Role.SERVER)
    fail_read = None
    for index, chunk in enumerate(msg.reads):
        conn.receive_data(chunk)
        if conn.error is not None and fail_read is None:
            fail_read = index
    data = [e for e in conn.events_received() if isinstance(e, TextMessage | BinaryMessage)]
    if ref is None:
        assert conn.error is None, conn.error
        assert data[-1].data == (payload if kind == 2 else payload.decode()), data
    else:
        assert conn.error is not None and conn.error.close_code == 1007, conn.error
        assert len(data) == (1 if msg.prefix else 0), data
        _check_failure_point(msg, ref, fail_read, None, False)


def utf8_from_bytes(data: bytes) -> tuple[bytes, list[int], list[int], int]:
    """Fuzzer bytes as ``utf8_differential``'s arguments: a mode byte, a byte of counts (low 3
    bits: fragment cuts, high 5: read cuts), one byte per fragment cut, two per read cut, then
    the payload."""
    mode = data[0] if data else 0
    counts = data[1] if len(data) > 1 else 0
    nfrag, nread = counts & 7, counts >> 3
    pos = 2
    frag = list(data[pos:pos + nfrag])
    pos += nfrag
    raw = data[pos:pos + 2 * nread]
    reads = [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw) - 1, 2)]
    return data[pos + 2 * nread:], frag, reads, mode


def utf8(data: bytes) -> None:
    utf8_differential(*utf8_from_bytes(data))


# -- the service behind a valid token: control channel, relayed HTTP, Web PubSub clients ---------

RELAY_BASE = "ws://127.0.0.1:9090"
WPS_ROLES = ("webpubsub.joinLeaveGroup", "webpubsub.sendToGroup")
#: The ``type`` of what the service may send a JSON Web PubSub client.
_HTTP_METHODS = (b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"G\x00T")


def _relay_token(uri: str) -> str:
    from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY

    return sas.create_relay_token(uri, DEFAULT_RULE_NAME, DEVELOPMENT_KEY, 3600, now=NOW)


class Session:
    """The relay service (relay and Web PubSub routes) fed in memory: clients are our own
    ``ClientConnection`` (so every frame the service writes is checked: ``ws.error`` stays None),
    raw connections just collect the bytes. Nothing may escape the service."""

    def __init__(self) -> None:
        from hyco_proto.drivers.connection import ClientConnection

        self._client_type = ClientConnection
        self.svc = RelayService(ServiceConfig(), webpubsub=WebPubSubService(KEY))
        self.now = NOW
        self.clients: dict[int, Any] = {}
        self.events: dict[int, list[object]] = {}
        self.raw: dict[int, bytearray] = {}
        self.closed: set[int] = set()

    def client(self, url: str, *, headers: tuple[tuple[str, str], ...] = (),
               subprotocols: tuple[str, ...] = (), service: str = "relay") -> int:
        conn = self._client_type.from_url(url, headers=headers, subprotocols=subprotocols)
        cid = self.svc.connection_made(self.now, ("127.0.0.1", 5000), service=service)
        self.clients[cid] = conn
        self.events[cid] = []
        self.flush(cid)
        return cid

    def raw_connection(self, data: bytes, service: str = "relay") -> int:
        cid = self.svc.connection_made(self.now, ("10.0.0.7", 4321), service=service)
        self.raw[cid] = bytearray()
        self.svc.receive_data(self.now, cid, data)
        self.pump()
        return cid

    def flush(self, cid: int) -> None:
        for chunk in self.clients[cid].data_to_send():
            if chunk and cid not in self.closed:
                self.svc.receive_data(self.now, cid, chunk)
        self.pump()

    def take(self, cid: int) -> list[object]:
        events, self.events[cid] = self.events[cid], []
        return events

    def pump(self) -> None:
        for _ in range(10_000):
            out = self.svc.data_to_send()
            self.svc.reading_changes()
            if not out:
                return
            for cid, data in out:
                client = self.clients.get(cid)
                if data and client is not None:
                    client.receive_data(data)
                elif data:
                    self.raw.setdefault(cid, bytearray()).extend(data)
                elif cid not in self.closed:
                    self.closed.add(cid)
                    if client is not None:
                        client.receive_eof()
                    self.svc.connection_lost(self.now, cid)
                if client is not None:
                    self.events[cid] += client.events_received()
                    for chunk in client.data_to_send():
                        if chunk and cid not in self.closed:
                            self.svc.receive_data(self.now, cid, chunk)
        raise AssertionError("the service never went quiet")

    def finish(self) -> None:
        """Time passes (every timer fires), then every connection ends; the service must have
        kept the protocol toward each of our clients."""
        for later in (60.0, 3600.0, 7200.0):
            self.now = NOW + later
            self.svc.handle_timer(self.now)
            self.pump()
        for cid in [*self.clients, *self.raw]:
            if cid not in self.closed:
                self.closed.add(cid)
                self.svc.receive_eof(self.now, cid)
                self.svc.connection_lost(self.now, cid)
                self.pump()
        for cid, client in self.clients.items():
            ws = client.ws
            assert ws is None or ws.error is None, (cid, ws.error)


def _texts(data: bytes, limit: int = 16) -> list[bytes]:
    """Fuzzer bytes as up to ``limit`` messages (split at NUL)."""
    return data.split(b"\x00")[:limit]


def _send_message(session: Session, cid: int, piece: bytes,
                  replacements: dict[str, str]) -> None:
    """A piece starting with 0x01 goes as a binary message, anything else as text (UTF-8,
    invalid bytes replaced), with ``$X`` placeholders filled in (JSON-escaped)."""
    client = session.clients[cid]
    if cid in session.closed or client.ws is None or not client.is_open:
        return
    if piece[:1] == b"\x01":
        client.send_binary(piece[1:])
    else:
        text = piece.decode("utf-8", "replace")
        for mark, value in replacements.items():
            text = text.replace(mark, json.dumps(value)[1:-1])
        client.send_text(text)
    session.flush(cid)


def control_channel(data: bytes) -> None:
    """An authorized listener's control channel gets any messages (``$A``/``$I``: the address
    and id of the pending accept or request), while a WebSocket sender waits (mode bit 0) and a
    relayed HTTP request waits (bit 1)."""
    from hyco_proto.drivers.connection import Opened

    mode = data[0] if data else 0
    session = Session()
    listen = f"{RELAY_BASE}/$hc/myhc?sb-hc-action=listen"
    listener = session.client(listen, headers=(("ServiceBusAuthorization", _relay_token(listen)),))
    assert isinstance(session.take(listener)[0], Opened)
    if mode & 1:
        connect = f"{RELAY_BASE}/$hc/myhc?sb-hc-action=connect&sb-hc-id=fuzz"
        session.client(connect, headers=(("ServiceBusAuthorization", _relay_token(connect)),))
    if mode & 2:
        session.raw_connection(b"POST /myhc/x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:9090\r\n"
                               b"ServiceBusAuthorization: " + _relay_token(
                                   f"{RELAY_BASE}/myhc").encode() + b"\r\n"
                               b"Content-Length: 3\r\n\r\nabc")
    replacements = {"$A": "", "$I": ""}
    for event in session.take(listener):
        text = getattr(event, "data", None)
        if isinstance(text, str):
            command = control.parse_command(text)  # the service wrote it: it must parse
            for name in ("address", "id"):
                value = getattr(command, name, None)
                if isinstance(value, str):
                    replacements["$" + name[0].upper()] = value
    for piece in _texts(data[1:]):
        _send_message(session, listener, piece, replacements)
    session.finish()


def relayed_http(data: bytes) -> None:
    """A sender's HTTP request (method from the mode byte; the rest of the target up to the first
    LF, then headers and body, from the input) relayed to an authorized listener, whose answer is
    the input after the first ``\\0\\0`` (``$I``: the request id; pieces split at NUL; bit 3 of
    the mode: a ``response`` built from the pieces instead: status, description, header name,
    value, body). Every command the listener gets parses into a ``RelayedRequest``; the sender
    gets HTTP that h11 can parse."""
    import h11

    from hyco_proto.drivers.connection import Opened
    from hyco_proto.drivers.http import RelayedRequest

    mode = data[0] if data else 0
    request, _, answer = data[1:].partition(b"\x00\x00")
    session = Session()
    listen = f"{RELAY_BASE}/$hc/myhc?sb-hc-action=listen"
    listener = session.client(listen, headers=(("ServiceBusAuthorization", _relay_token(listen)),))
    assert isinstance(session.take(listener)[0], Opened)
    tail, _, rest = request.partition(b"\n")
    method = _HTTP_METHODS[mode & 7]
    head = (method + b" /myhc" + tail + b" HTTP/1.1\r\nHost: 127.0.0.1:9090\r\n"
            b"ServiceBusAuthorization: " + _relay_token(f"{RELAY_BASE}/myhc").encode() + b"\r\n")
    sender = session.raw_connection(head + rest)
    ids = []
    for event in session.take(listener):
        text = getattr(event, "data", None)
        if isinstance(text, str):
            command = control.parse_command(text)  # the service wrote it: it must parse
            if isinstance(command, control.RequestCommand):
                ids.append(command.id)
                if not command.is_pointer:
                    RelayedRequest(command, "myhc")
    pieces = _texts(answer)
    if mode & 8 and ids:
        status, description, name, value, body = (pieces + [b""] * 5)[:5]
        response: dict[str, Any] = {
            "requestId": ids[0], "statusCode": status.decode("latin-1"),
            "statusDescription": description.decode("utf-8", "replace"),
            "responseHeaders": {name.decode("utf-8", "replace"): value.decode("utf-8", "replace")},
            "body": bool(mode & 16)}
        session.clients[listener].send_text(json.dumps({"response": response}))
        if mode & 16:
            session.clients[listener].send_binary(body)
        session.flush(listener)
    else:
        for piece in pieces:
            _send_message(session, listener, piece, {"$I": ids[0] if ids else ""})
    raw = bytes(session.raw.get(sender, b""))
    session.finish()
    if raw:
        parser = h11.Connection(h11.CLIENT)
        parser.send(h11.Request(method=method.decode("latin-1") if method.isalpha() else "GET",
                                target="/", headers=[("Host", "x")]))
        parser.send(h11.EndOfMessage())
        parser.receive_data(raw)
        event = parser.next_event()  # h11.RemoteProtocolError: the service wrote bad HTTP
        assert isinstance(event, h11.Response | h11.InformationalResponse) or (
            event is h11.NEED_DATA), (event, raw[:300])


def webpubsub_session(data: bytes) -> None:
    """An authorized Web PubSub client (mode bits 0-1: the JSON subprotocol, its reliable
    variant, none, or both offered; bit 2: no roles) sends any messages while a second client has
    joined group ``g``. The service keeps the protocol toward both and every text it sends a
    JSON client parses as a service message."""
    from hyco_proto.drivers.connection import Opened

    mode = data[0] if data else 0
    offers = ((messages.JSON_SUBPROTOCOL,), (messages.JSON_RELIABLE_SUBPROTOCOL,), (),
              (messages.JSON_RELIABLE_SUBPROTOCOL, messages.JSON_SUBPROTOCOL))[mode & 3]
    session = Session()

    def connect(user: str, offer: tuple[str, ...], roles: tuple[str, ...]) -> int:
        token = tokens.create_client_token(ENDPOINT, "chat", KEY, user_id=user, roles=roles,
                                           now=NOW)
        cid = session.client(f"ws://127.0.0.1:8080/client/hubs/chat?access_token={token}",
                             subprotocols=offer, service="webpubsub")
        assert isinstance(session.events[cid][0], Opened), session.events[cid]
        return cid

    bob = connect("bob", (messages.JSON_SUBPROTOCOL,), WPS_ROLES)
    session.clients[bob].send_text('{"type":"joinGroup","group":"g","ackId":1}')
    session.flush(bob)
    alice = connect("alice", offers, () if mode & 4 else WPS_ROLES)
    for piece in _texts(data[1:]):
        _send_message(session, alice, piece, {})
    session.finish()
    for cid in (alice, bob):
        if session.clients[cid].subprotocol is None:
            continue
        for event in session.events[cid]:
            text = getattr(event, "data", None)
            if isinstance(text, str):
                messages.parse_service_message(text)  # the service wrote it: it must parse


def listener_control(data: bytes) -> None:
    """Our listener (``ListenerDriver`` on the in-memory network, its control channel opened by
    the real service) gets any server messages on its control channel: a piece starting with
    0x01 is a binary message, 0x02 raw bytes, anything else a text message (``$A``: a real
    accept address of this hybrid connection). Mode bits 0-1: accept, reject or leave each
    connection request. Time then passes (reconnects, expiry). Nothing may escape the driver."""
    from hyco_proto import _frames_py
    from hyco_proto.listener import Listener
    from hyco_proto.memory import MemoryNetwork

    mode = data[0] if data else 0
    decision = (None, (403, "no"), False, None)[mode & 3]
    net = MemoryNetwork(RelayService(ServiceConfig()), now=NOW)
    uri = f"{RELAY_BASE}/$hc/myhc"
    runner = net.listen(Listener(uri, _relay_token(uri)), on_request=lambda _: decision)
    assert runner.driver.is_listening and runner.control is not None
    address = f"{RELAY_BASE}/$hc/myhc?sb-hc-action=accept&sb-hc-id=fuzz"
    for piece in _texts(data[1:]):
        if piece[:1] == b"\x01":
            frame = _frames_py.encode_frame(_frames_py.OP_BINARY, piece[1:])
        elif piece[:1] == b"\x02":
            frame = piece[1:]
        else:
            text = piece.decode("utf-8", "replace").replace("$A", json.dumps(address)[1:-1])
            frame = _frames_py.encode_frame(_frames_py.OP_TEXT, text.encode())
        control = runner.control
        if control is None or control.tcp_closed:
            break
        control._from_relay(frame)
        net.pump()
    net.advance(120.0)
    net.advance(3600.0)


#: The service behind a valid token (and our listener behind the service), each from fuzzer
#: bytes (see each function).
SESSION_TARGETS: list[Callable[[bytes], None]] = [control_channel, relayed_http, webpubsub_session,
                                                  listener_control]
