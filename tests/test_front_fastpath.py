"""The front door's fast path for plain upgrade requests, and the parsed-once query (issue 14:
rendezvous per second).

``front._fast_head`` reads a plain WebSocket upgrade without h11. It may only take heads that h11
takes to the same request (else a malformed request would get past the checks h11 makes); what
it declines, h11 reads. ``broker.query_params`` must decode as ``parse_qsl`` does. Both are
checked against the reference here, on fixed cases and on generated ones.
"""

from __future__ import annotations

import base64
import binascii
import json
from urllib.parse import parse_qsl

import h11
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hyco_proto.control import (
    AcceptCommand,
    RemoteEndpoint,
    _accept_text,
    _command_json,
    serialize_command,
)
from hyco_proto.handshake import ClientHandshake, ServerHandshake, _key_is_valid
from hyco_proto.headers import Headers
from hyco_proto.service import front
from hyco_proto.service.broker import query_params
from hyco_proto.service.front import _fast_head
from hyco_proto.service.router import RelayService

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
PLAIN = [("Host", "127.0.0.1:9"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
         ("Sec-WebSocket-Key", KEY), ("Sec-WebSocket-Version", "13")]


def head(request_line: str, fields: list[tuple[str, str]], raw_lines: tuple[str, ...] = ()
         ) -> bytes:
    lines = [request_line, *(f"{k}: {v}" for k, v in fields), *raw_lines]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def h11_reading(data: bytes) -> tuple[str, str, str, list[tuple[str, str]], bytes] | None:
    """What h11 makes of ``data``: the request (decoded like the door does) and the bytes
    after it, or None when it refuses it or does not see a complete upgrade request."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    try:
        event = conn.next_event()
        if not isinstance(event, h11.Request):
            return None
        end = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(end, h11.EndOfMessage):
        return None
    return (event.method.decode("ascii"), event.target.decode("latin-1"),
            event.http_version.decode("ascii"),
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items()],
            bytes(conn.trailing_data[0]))


def assert_as_h11(data: bytes) -> bool:
    """The fast path's reading of ``data`` equals h11's (when it reads it); whether it did."""
    fast = _fast_head(data)
    if fast is None:
        return False
    reference = h11_reading(data)
    assert reference is not None, data
    parsed, trailing = fast
    assert (parsed.method, parsed.target, parsed.http_version, parsed.headers,
            trailing) == reference
    # The size validate_head counts (it skips counting at or under the bound).
    size = (len(parsed.method) + len(parsed.target) + 12
            + sum(len(k) + len(v) + 4 for k, v in parsed.headers))
    assert parsed.size_at_most is not None and size <= parsed.size_at_most
    return True


def test_the_size_bound_is_the_size_when_no_value_has_whitespace_around_it() -> None:
    lines = ["GET /x HTTP/1.1", *(f"{k}:{v}" for k, v in PLAIN)]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode()
    parsed = _fast_head(data)
    assert parsed is not None and assert_as_h11(data)
    assert parsed[0].size_at_most == (3 + len("/x") + 12
                                      + sum(len(k) + len(v) + 4 for k, v in PLAIN))


def test_the_size_bound_decides_only_under_the_limit() -> None:
    """A head over the handshake's 16 KiB limit gets 431 whether or not the fast path's bound
    is under it; one whose bound is over it but whose counted size is not is taken."""
    pad = " " * 40  # stripped: counted by the bound, not by the check
    base = head("GET /$hc/hc HTTP/1.1", PLAIN)
    # "\r\nX-Pad: " and the value take the head (up to its blank line) to 16384 bytes.
    value_length = 16384 - (len(base) - 4) - len("\r\nX-Pad: ")
    over = head("GET /$hc/hc HTTP/1.1", [*PLAIN, ("X-Pad", "v" * (value_length - 40) + pad)])
    assert over.index(b"\r\n\r\n") == 16384
    parsed = _fast_head(over)
    assert parsed is not None and parsed[0].size_at_most is not None
    assert parsed[0].size_at_most > 16384
    handshake = ServerHandshake()
    assert handshake.validate_head("GET", parsed[0].target, "1.1", parsed[0].headers,
                                   fields=parsed[0].fields,
                                   size_at_most=parsed[0].size_at_most) is not None
    checked = ServerHandshake()
    assert checked.validate_head("GET", "/", "1.1", [("X-Big", "v" * 17000)],
                                 size_at_most=17100) is None
    assert checked.rejection_status == 431


def test_a_plain_upgrade_takes_the_fast_path_with_what_follows_it() -> None:
    data = head("GET /$hc/hc?sb-hc-action=connect HTTP/1.1", PLAIN) + b"\x81\x80frames"
    assert assert_as_h11(data)
    parsed, trailing = _fast_head(data) or (None, b"")
    assert parsed is not None and parsed.raw is None
    assert (parsed.path, parsed.query, trailing) == ("/$hc/hc", "sb-hc-action=connect",
                                                     b"\x81\x80frames")


def test_spaces_and_tabs_around_values_are_stripped_as_h11_strips_them() -> None:
    data = head("GET /x HTTP/1.1", [*PLAIN, ("X-A", " \t a \t b\t "), ("X-Empty", "")])
    assert assert_as_h11(data)


def test_a_line_read_again_from_the_line_cache_reads_as_the_first_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Header lines the fast path read are kept whole (``_KNOWN_LINES``): read again, a head
    gives what h11 gives, values stripped, kinds kept (a second Host, a body header)."""
    monkeypatch.setattr(front, "_KNOWN_LINES", {})
    padded = ("X-Pad-Cache-Test", " \t padded value\t ")
    data = head("GET /x HTTP/1.1", [*PLAIN, padded])
    first = _fast_head(data)
    assert "X-Pad-Cache-Test:  \t padded value\t " in front._KNOWN_LINES
    second = _fast_head(data)
    assert first is not None and second is not None
    assert second[0].headers == first[0].headers and second[0].fields == first[0].fields
    assert assert_as_h11(data)
    assert second[0].header("x-pad-cache-test") == "padded value"
    assert _fast_head(head("GET /x HTTP/1.1", [*PLAIN, ("Host", "127.0.0.1:9")])) is None
    assert _fast_head(head("GET /x HTTP/1.1", [*PLAIN, ("Content-Length", "0")])) is None
    assert _fast_head(head("GET /x HTTP/1.1", [*PLAIN, ("Content-Length", "0")])) is None


def test_the_line_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(front, "_KNOWN_LINES", {})
    for i in range(2 * front._KNOWN_LINES_MAX):
        assert assert_as_h11(head("GET /x HTTP/1.1", [*PLAIN, ("X-N", str(i))]))
        assert len(front._KNOWN_LINES) <= front._KNOWN_LINES_MAX
    assert "Upgrade: websocket" in front._KNOWN_LINES  # back after the cache was emptied
    monkeypatch.setattr(front, "_KNOWN_LINES", {})
    long = ("X-Long", "v" * front._KNOWN_LINE_CHARS)
    assert assert_as_h11(head("GET /x HTTP/1.1", [*PLAIN, long]))
    assert not any(line.startswith(("X-Long", "Sec-WebSocket-Key")) for line in front._KNOWN_LINES)


@pytest.mark.parametrize("data", [
    head("GET /x HTTP/1.1", PLAIN).replace(b"\r\nUpgrade", b"\nUpgrade"),  # bare LF
    head("GET /x HTTP/1.1", PLAIN).replace(b"Upgrade\r\n", b"Upgrade\r\r\n"),  # bare CR
    head("GET /x HTTP/1.1", PLAIN, (" folded",)),  # obs-fold
    head("GET /x HTTP/1.1", [*PLAIN, ("Content-Length", "0")]),
    head("GET /x HTTP/1.1", [*PLAIN, ("Transfer-Encoding", "chunked")]),
    head("GET /x HTTP/1.1", [*PLAIN, ("Expect", "100-continue")]),
    head("GET /x HTTP/1.1", [*PLAIN, ("Host", "again")]),
    head("GET /x HTTP/1.1", PLAIN[1:]),  # no Host
    head("GET /x HTTP/1.1", [f for f in PLAIN if f[0] != "Upgrade"]),  # not an upgrade
    head("GET /x HTTP/1.0", PLAIN),
    head("POST /x HTTP/1.1", PLAIN),
    head("GET  /x HTTP/1.1", PLAIN),
    head("GET /\xe9 HTTP/1.1", PLAIN),
    head("GET /x HTTP/1.1", PLAIN, ("Bad : value",)),
    head("GET /x HTTP/1.1", PLAIN, ("B(ad: value",)),
    head("GET /x HTTP/1.1", PLAIN, ("NoColon",)),
    head("GET /x HTTP/1.1", [*PLAIN, ("X-Nul", "a\x00b")]),
    head("GET /x HTTP/1.1", [*PLAIN, ("X-Vt", "a\x0bb")]),
    head("GET /x HTTP/1.1", [*PLAIN, ("X-Ff", "a\x0cb")]),
    head("GET /x HTTP/1.1", [*PLAIN, *[(f"X-{i}", "v") for i in range(100)]]),  # > 100 fields
    head("GET /x HTTP/1.1", [*PLAIN, ("X-Big", "b" * 17000)]),  # beyond the handshake bound
    head("GET /x HTTP/1.1", PLAIN)[:-2],  # incomplete
])
def test_anything_unusual_goes_to_h11(data: bytes) -> None:
    assert _fast_head(data) is None


_VALUE_CHARS = st.sampled_from(["a", "Z", "9", " ", "\t", "\x00", "\x01", "\x0b", "\x0c", "\r",
                                "\n", "\x7f", "\xe9", "\xff", ":", "=", "%", "\x1f"])
_NAME_CHARS = st.sampled_from(["a", "X", "-", "_", "!", " ", "(", ":", "\t", "\xe9", "0"])


@settings(max_examples=400, deadline=None)
@given(
    name=st.text(_NAME_CHARS, max_size=6),
    value=st.text(_VALUE_CHARS, max_size=10),
    target=st.text(st.sampled_from(["/", "a", "?", "#", " ", "\t", "\x7f", "%", "\xe9"]),
                   min_size=0, max_size=8),
    lead=st.sampled_from(["", " ", "\t"]),
    after=st.binary(max_size=8),
)
def test_whatever_the_fast_path_takes_h11_reads_alike(name: str, value: str, target: str,
                                                     lead: str, after: bytes) -> None:
    data = head(f"GET {target} HTTP/1.1", PLAIN, (f"{lead}{name}:{value}",)) + after
    assert_as_h11(data)


def test_the_generated_cases_include_accepted_ones() -> None:
    # (So the property above checks readings, not only refusals.)
    assert assert_as_h11(head("GET /a?b HTTP/1.1", PLAIN, ("X-a:\t\x01\xe9 \x7f ",)))


@settings(max_examples=500, deadline=None)
@given(st.text(st.sampled_from(["a", "B", "=", "&", "%", "2", "0", "+", "é", "-", "x", ";"]),
               max_size=16))
def test_query_params_decode_as_parse_qsl(query: str) -> None:
    want: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        want.setdefault(key.lower(), value)
    assert dict(query_params(query)) == want


def _exchange(chunks: list[bytes]) -> list[bytes]:
    service = RelayService()
    conn = service.connection_made(0.0)
    out = []
    for chunk in chunks:
        service.receive_data(0.0, conn, chunk)
        out += [data for _, data in service.data_to_send()]
    return out


@pytest.mark.parametrize("target", [
    "/$status",  # the service's own endpoint answers an upgrade request as a plain GET
    "/$hc/hc?sb-hc-action=connect",  # no token: 401
    "/$hc/hc?sb-hc-action=bogus",  # 400
    "/apphc/x",  # relayed HTTP: 502 without a listener
])
def test_the_fast_path_answers_as_the_h11_path_does(target: str) -> None:
    data = ClientHandshake("127.0.0.1:9", target, key=b"k" * 16).data_to_send()
    assert _fast_head(data) is not None
    whole = _exchange([data])  # the fast path
    split = _exchange([data[:10], data[10:]])  # h11 (the head did not arrive whole)

    def stable(out: list[bytes]) -> list[bytes]:  # TrackingId, Timestamp and Date differ
        return [b"\r\n".join(line for line in chunk.split(b"\r\n")
                             if not line.lower().startswith((b"date:", b"content-length:")))
                .split(b"TrackingId:")[0] for chunk in out]

    assert stable(whole) == stable(split)
    assert whole and whole[0].startswith(b"HTTP/1.1 ")


_JSON_TEXT = st.text(st.sampled_from(["a", "Z", " ", '"', "\\", "/", "\x00", "\x1f", "\x7f",
                                      "\xe9", "\u2028", "\ud800", "\U0001f600", "\n", ","]),
                     max_size=6)


@settings(max_examples=300, deadline=None)
@given(address=_JSON_TEXT, ident=_JSON_TEXT, host=_JSON_TEXT,
       port=st.integers(-1, 70000),
       headers=st.lists(st.tuples(_JSON_TEXT, _JSON_TEXT), max_size=4))
def test_accept_text_is_what_the_json_encoder_writes(address: str, ident: str, host: str,
                                                     port: int,
                                                     headers: list[tuple[str, str]]) -> None:
    # serialize_command writes accept (one per sender) without json.dumps: same text.
    command = AcceptCommand(address, ident, Headers(headers), RemoteEndpoint(host, port))
    assert _accept_text(command) is not None  # the fast path wrote it
    assert serialize_command(command) == json.dumps(_command_json(command), separators=(",", ":"),
                                                    ensure_ascii=False)


def test_accept_fields_of_other_types_take_the_general_path() -> None:
    # A bool port is written "true" by json, "True" by an f-string: the fast path declines it.
    for port in (True, 5.0):
        command = AcceptCommand("ws://a", "i", Headers(), RemoteEndpoint("h", port))  # type: ignore[arg-type]
        assert _accept_text(command) is None
        assert serialize_command(command) == json.dumps(
            _command_json(command), separators=(",", ":"), ensure_ascii=False)


_HANDSHAKE_NAMES = st.sampled_from(["Upgrade", "connection", "Sec-WebSocket-Key",
                                    "SEC-WEBSOCKET-VERSION", "Sec-WebSocket-Protocol", "X-A"])
_HANDSHAKE_VALUES = st.sampled_from([
    "websocket", "WebSocket", "h2c, websocket", " , ", "", "Upgrade", "keep-alive, UPGRADE",
    "upgrade,", "13", "8, 13", "8", KEY, "AAAAAAAAAAAAAAAAAAAAAB==", "AAAAAAAAAAAAAAAAAAAAAA=",
    "chat, superchat", "x", "websocket\t, y"])


@settings(max_examples=500, deadline=None)
@given(fields=st.lists(st.tuples(_HANDSHAKE_NAMES, _HANDSHAKE_VALUES), max_size=8))
def test_the_handshake_checks_alike_with_the_fast_paths_fields(
        fields: list[tuple[str, str]]) -> None:
    # validate_head with the fields _fast_head collected, and validate with h11's request:
    # the same request, or the same refusal.
    data = head("GET /$hc/a?b HTTP/1.1", [("Host", "h"), ("Upgrade", "websocket"), *fields])
    fast = _fast_head(data)
    assert fast is not None
    parsed, _ = fast
    assert parsed.fields is not None
    quick = ServerHandshake()
    quick.validate_head(parsed.method, parsed.target, parsed.http_version, parsed.headers,
                        fields=parsed.fields)
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    request = conn.next_event()
    assert isinstance(request, h11.Request)
    reference = ServerHandshake()
    reference.validate(request)
    assert quick.request == reference.request
    assert quick.rejection == reference.rejection
    assert quick.refused_request == reference.refused_request


@settings(max_examples=500, deadline=None)
@given(st.text(st.sampled_from(["A", "Q", "g", "w", "B", "z", "0", "+", "/", "=", "-", " "]),
               min_size=20, max_size=26))
@example(KEY)
@example("A" * 22 + "==")
@example("A" * 21 + "w==")
@example("A" * 21 + "B==")  # not canonical, still 16 bytes
@example("A" * 20 + "-A==")
@example("A" * 21 + "A=")
@example("A" * 21 + "Q==\n")
def test_a_key_is_valid_exactly_when_it_decodes_to_16_bytes(key: str) -> None:
    try:
        decoded = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    assert _key_is_valid(key) == (len(decoded) == 16)
