"""Property tests of every parser that reads untrusted input: for any input, a result or the
module's documented error type — never another exception. (The atheris harnesses under
``fuzz/`` run the same targets for longer: ``make fuzz``.)"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fuzz import targets

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

#: Text that looks like the inputs (so mutations reach the deeper paths), plus anything.
TOKENS = st.sampled_from([
    "SharedAccessSignature ", "sr=", "sig=", "se=", "skn=", "&", "=", "%", "%0D%0A", "%00",
    "http%3a%2f%2fns%2fhc", "9" * 40, "-1", "1e9", "ws://", "sb://", "/$hc/", "?", "sb-hc-action=",
    "listen", "accept", "sb-hc-id=", "Endpoint=", ";", "SharedAccessKeyName=", "EntityPath=",
    "AccessKey=", "Version=1.0", "\x00", "\r\n", "é", "\ud800", "{", "}", '"', ":", ",", "[", "]",
    '{"accept":', '"address":', '"id":', '"type":', '"joinGroup"', '"group":', '"ackId":',
    "eyJ", ".", "/client/hubs/", "access_token=", "awps_connection_id=", "null", "true", "1",
])
TEXT = st.one_of(st.text(max_size=300),
                 st.lists(TOKENS, max_size=40).map("".join))
DATA = st.one_of(st.binary(max_size=600), TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")))


@SETTINGS
@given(TEXT)
def test_text_parsers(text: str) -> None:
    for target in targets.TEXT_TARGETS:
        target(text)


@SETTINGS
@given(DATA)
def test_byte_parsers(data: bytes) -> None:
    for target in targets.BYTE_TARGETS:
        target(data)


@pytest.mark.parametrize("kernel", targets.kernels(), ids=lambda k: k.__name__.split(".")[-1])
@SETTINGS
@given(st.lists(st.binary(max_size=300), max_size=8), st.booleans())
def test_frame_decoder_and_forwarder(kernel: Any, chunks: list[bytes], masked: bool) -> None:
    targets.frame_decoder(kernel, chunks, masked)
    targets.forwarder(kernel, chunks)


@SETTINGS
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                    max_leaves=30))
def test_json_shaped_messages(value: Any) -> None:
    """Well-formed JSON of any shape, wrapped like each protocol's messages."""
    for wrapped in ({"accept": value}, {"request": value}, {"response": value},
                    {"renewToken": value}, {"type": "joinGroup", "group": value, "ackId": value},
                    {"type": "sendToGroup", "group": "g", "dataType": value, "data": value},
                    {"type": "message", "from": value, "dataType": "json", "data": value},
                    {"type": "ack", "ackId": value, "success": value, "error": value}):
        text = json.dumps(wrapped)
        for target in targets.TEXT_TARGETS:
            target(text)



@pytest.mark.parametrize(("target", "value"), [
    (targets._rest, "\n/!]/!!"),          # urlsplit read "//!]" as an IPv6 authority
    (targets.TEXT_TARGETS[9], "\ud800"),   # PyJWT cannot encode a lone surrogate
    (targets._service, b"POST //!]/x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"),
])
def test_inputs_found_by_fuzzing(target: Any, value: Any) -> None:
    if target is targets._service:
        for path in (b"//!]/x", b"/api/hubs/h//!]/:send"):
            target(value.replace(b"//!]/x", path))
    else:
        target(value)


#: Found by text:_filter (atheris): 300 parentheses after a comparison (the parser recursed three
#: frames per level; RecursionError, not ValueError). Now at most 64 levels of ( and not.
DEEP_FILTERS = ["userId eq 'u1' and" + "(" * 300 + " (( ( ",
                "(" * 2000 + "userId eq 'u1'" + ")" * 2000,
                "not " * 1000 + "userId eq 'u1'", "(" * 65 + "userId eq 'u1'" + ")" * 65]


@pytest.mark.parametrize("text", DEEP_FILTERS, ids=["found", "parens", "nots", "65"])
def test_a_deeply_nested_filter_is_a_value_error(text: str) -> None:
    from hyco_proto.webpubsub.odata import parse_filter

    with pytest.raises(ValueError, match="nests parentheses and 'not' more than 64 deep"):
        parse_filter(text)


def test_nesting_up_to_the_bound_and_long_chains_still_work() -> None:
    from hyco_proto.webpubsub.odata import FilterSubject, parse_filter

    subject = FilterSubject("c1", "u1", frozenset({"g"}))
    assert parse_filter("(" * 64 + "userId eq 'u1'" + ")" * 64)(subject)
    assert not parse_filter("not " * 63 + "'g' in groups")(subject)
    chain = " or ".join(["'a' eq 'b'"] * 290)  # about 4 KiB: evaluation nests 290 deep
    assert len(chain) <= 4096 and not parse_filter(chain)(subject)


@pytest.mark.parametrize(("count", "status"), [(100, b"401"), (101, b"431")])
def test_header_field_count_is_capped(count: int, status: bytes) -> None:
    from hyco_proto.service.config import ServiceConfig
    from hyco_proto.service.router import RelayService

    service = RelayService(ServiceConfig())
    conn = service.connection_made(targets.NOW, ("127.0.0.1", 1))
    fixed = [b"Host: h", b"Upgrade: websocket", b"Connection: Upgrade",
             b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]
    extra = [b"X-%d: v" % n for n in range(count - len(fixed))]
    head = b"GET /$hc/hc?sb-hc-action=listen HTTP/1.1\r\n" + b"\r\n".join(fixed + extra)
    service.receive_data(targets.NOW, conn, head + b"\r\n\r\n")
    out = b"".join(data for _, data in service.data_to_send())
    # 100 fields pass the count check (and then fail on the missing token: 401); 101 do not.
    assert out.split(b" ")[1] == status, out[:80]


# -- UTF-8 validation: both kernels' Forwarder and the WebSocket connection vs Python's decoder --

#: The classic invalid sequences (surrogates, overlongs, beyond U+10FFFF, bytes that never start
#: a code point, lone continuations, truncated sequences) and valid boundary code points.
UTF8_PIECES = [
    b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xed\xa0", b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\xaf",
    b"\xe0\x9f\xbf", b"\xf0\x80\x80\xaf", b"\xf0\x8f\xbf\xbf", b"\xf4\x90\x80\x80",
    b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xfe", b"\xff", b"\x80", b"\xbf", b"\x80\xbf",
    b"\xc2", b"\xe2\x82", b"\xf0\x9f\x98", b"\xf4\x8f\xbf", b"\xc2\x41", b"\xe2\x28\xa1",
    b"\xf0\x28\x8c\x28", b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xef\xbf\xbf", b"\xf4\x8f\xbf\xbf",
    b"\xf0\x90\x80\x80", b"\xc2\x80", b"\xdf\xbf", b"\xe0\xa0\x80", b"\x7f", b"\x00",
    "κόσμε".encode(), "€𝄞".encode(),
]
UTF8_PAYLOAD = st.one_of(
    st.text(max_size=40).map(str.encode),  # valid multi-byte text, astral planes included
    st.lists(st.one_of(st.text(max_size=6).map(str.encode), st.sampled_from(UTF8_PIECES),
                       st.binary(max_size=4)), max_size=12).map(b"".join),
    st.binary(max_size=40),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(UTF8_PAYLOAD, st.lists(st.integers(0, 255), max_size=5),
       st.lists(st.integers(0, 1 << 16), max_size=12), st.integers(0, 255))
@example(b"ab\xed\xa0\x80cd", [3], [9], 0)   # surrogate, split across frames and reads
@example(b"\xe0\x80\xaf", [], [7], 0)        # overlong, E0 | 80 AF
@example(b"\xf4\x90\x80\x80", [1], [], 8)    # beyond U+10FFFF, a ping between the fragments
@example(b"ok\xe2\x82", [], [], 0)           # truncated in the final frame: fails at E2
@example(b"ok\xe2\x82", [4], [], 0)          # ... cut before an empty final fragment
@example(b"\xc0\xaf", [], [], 2)             # binary: never validated
@example(b"\xc0\xaf", [], [], 3)             # compressed text (RSV1): not validated here
@example(b"\xc0\xaf", [], [], 4)             # validation switched off
def test_utf8_validation_matches_python(payload: bytes, frag_cuts: list[int],
                                        read_cuts: list[int], mode: int) -> None:
    """1007 exactly when ``payload.decode("utf-8")`` fails, no later than the read holding the
    first byte no valid UTF-8 can have there, having forwarded nothing from it on (and the valid
    text of the fragments before the bad one); the two kernels agree byte for byte
    (``fuzz.targets.utf8_differential``, also the ``utf8:differential`` atheris harness)."""
    targets.utf8_differential(payload, frag_cuts, read_cuts, mode)


@pytest.mark.parametrize("bad", UTF8_PIECES[:24], ids=lambda b: b.hex())
def test_utf8_every_split(bad: bytes) -> None:
    """Each classic sequence inside text, at every fragment boundary and every read boundary."""
    payload = b"a\xc3\xa9" + bad + b"z"
    for frag in range(len(payload) + 1):
        for cut in range(6, 6 + 6 * 2 + len(payload) + 1):
            for mode in (0, 8, 16):
                targets.utf8_differential(payload, [frag], [cut], mode)


def test_utf8_from_fuzzer_bytes() -> None:
    """The atheris harness's decoding of its input: mode, counts, cuts, payload."""
    assert targets.utf8_from_bytes(b"") == (b"", [], [], 0)
    assert targets.utf8_from_bytes(bytes([8, 2 | 1 << 3, 5, 7, 0, 9]) + b"\xed\xa0\x80") == (
        b"\xed\xa0\x80", [5, 7], [9], 8)
    targets.utf8(bytes([0, 1, 2]) + "é".encode())


# -- the service behind a valid token ---------------------------------------------------------

SESSION_MESSAGES = st.sampled_from([
    b'{"accept":{"address":"$A","id":"$I","connectHeaders":{}}}',
    b'{"response":{"requestId":"$I","statusCode":200,"body":true}}', b"\x01body",
    b'{"response":{"requestId":"$I","statusCode":"99999","responseHeaders":{"a\\r\\nb":"c"}}}',
    b'{"response":{"requestId":"$I","statusCode":204,"statusDescription":"\\u0000\\r\\n"}}',
    b'{"renewToken":{"token":"SharedAccessSignature sr=a&sig=b&se=9&skn=c"}}', b"[" * 200,
    b'{"type":"joinGroup","group":"g","ackId":1}', b'{"type":"leaveGroup","group":"g"}',
    b'{"type":"sendToGroup","group":"g","dataType":"json","data":{"a":[1]},"ackId":2}',
    b'{"type":"sendToGroup","group":"g","dataType":"binary","data":"AAE="}',
    b'{"type":"sendToGroup","group":"g","dataType":"protobuf","data":"!!"}',
    b'{"type":"event","event":"e","dataType":"text","data":"x","ackId":18446744073709551615}',
    b'{"type":"sequenceAck","sequenceId":0}', b'{"type":"ping"}', b'{"type":"joinGroup"}',
    b'{"accept":{"address":"$A","id":"fuzz","remoteEndpoint":{"address":"::1","port":-1}}}',
    b'{"request":{"id":"r","requestTarget":"/myhc/a?b","method":"POST","body":true,'
    b'"requestHeaders":{"X":"\\r\\n"},"address":"$A"}}',
    b'{"request":{"id":"r","address":"$A"}}', b'{"request":{"id":"r","address":"ws://x:1/"}}',
    b"\x02\x81\x7f\xff\xff\xff\xff\xff\xff\xff\xff", b"\x02\x88\x02\x03\xe8",
])
SESSION_DATA = st.builds(
    lambda mode, pieces: bytes([mode]) + b"\x00".join(pieces), st.integers(0, 255),
    st.lists(st.one_of(SESSION_MESSAGES, TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
                       st.binary(max_size=40)), max_size=6))
HTTP_REQUESTS = st.builds(
    lambda tail, headers, body: tail + b"\n" + b"".join(headers) + b"\r\n" + body,
    st.sampled_from([b"", b"/a/b?c=d", b"?sb-hc-token=x", b"/%00%0D%0A", b"/ x", b"//!]"]),
    st.lists(st.sampled_from([b"Content-Length: 3\r\n", b"Content-Length: 99999999\r\n",
                              b"Transfer-Encoding: chunked\r\n", b"X-A: b\r\n",
                              b"Connection: close\r\n", b"Expect: 100-continue\r\n",
                              b"Content-Length: -1\r\n", b"\x85: \xff\r\n"]), max_size=4),
    st.sampled_from([b"", b"abc", b"3\r\nabc\r\n0\r\n\r\n", b"x" * 70_000]))


@pytest.mark.parametrize("target", targets.SESSION_TARGETS, ids=lambda t: t.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=SESSION_DATA)
def test_service_behind_a_valid_token(target: Any, data: bytes) -> None:
    """Any messages from an authorized listener (control channel, relayed HTTP answers) or Web
    PubSub client (each subprotocol): nothing escapes, the service keeps the protocol toward our
    clients, and what it writes parses (commands, service messages, HTTP)."""
    target(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 255), HTTP_REQUESTS, st.lists(st.one_of(
    SESSION_MESSAGES, st.sampled_from([b"200", b"99", b"1000", b"abc", b"X-Y", b"a\r\nb"]),
    st.binary(max_size=20)), max_size=5))
def test_relayed_http_request_and_response(mode: int, request: bytes, answer: list[bytes]) -> None:
    targets.relayed_http(bytes([mode]) + request + b"\x00\x00" + b"\x00".join(answer))


@pytest.mark.parametrize(("name", "value"), [("\ufffd", "v"), ("X-A", "caf\u00e9"),
                                             ("X-A", "\u20ac"), ("X\u00e9", "v")])
@pytest.mark.parametrize("body", [False, True])
def test_a_listener_response_header_beyond_ascii_is_a_502(name: str, value: str,
                                                          body: bool) -> None:
    """Found by session:relayed_http: a non-ASCII header name or value in a listener's response
    raised UnicodeEncodeError out of RelayService.receive_data (h11 takes header text as ASCII);
    the sender now gets the 502 that any header HTTP cannot carry gets."""
    mode = 1 | 8 | (16 if body else 0)  # POST, a built response, with a body or not
    answer = b"\x00".join([b"200", b"OK", name.encode(), value.encode(), b"body"])
    targets.relayed_http(bytes([mode]) + b"/a\nContent-Length: 2\r\n\r\nhi\x00\x00" + answer)
    # ... and the sender's bytes say 502 (relayed_http parses them with h11).
    session = targets.Session()
    listen = f"{targets.RELAY_BASE}/$hc/myhc?sb-hc-action=listen"
    listener = session.client(
        listen, headers=(("ServiceBusAuthorization", targets._relay_token(listen)),))
    sender = session.raw_connection(
        b"GET /myhc/a HTTP/1.1\r\nHost: 127.0.0.1:9090\r\nServiceBusAuthorization: "
        + targets._relay_token(f"{targets.RELAY_BASE}/myhc").encode() + b"\r\n\r\n")
    (request,) = [json.loads(e.data)["request"] for e in session.take(listener)
                  if isinstance(getattr(e, "data", None), str)]
    client = session.clients[listener]
    client.send_text(json.dumps({"response": {"requestId": request["id"], "statusCode": 200,
                                              "responseHeaders": {name: value}, "body": body}}))
    if body:
        client.send_binary(b"body")
    session.flush(listener)
    assert bytes(session.raw[sender]).startswith(b"HTTP/1.1 502 "), session.raw[sender][:80]


@pytest.mark.parametrize("address", ["wss:\ufffd/ns/$hc/hc?sb-hc-action=accept", "", "nonsense"])
def test_rejecting_a_request_with_an_unusable_address_is_a_rendezvous_failure(
        address: str) -> None:
    """Found by session:listener_control: an accept command whose address is not a URI, answered
    with a reject, raised ValueError (build_reject_uri) out of ListenerDriver.answer; now it ends
    like an accept to such an address: RendezvousFailed for that request, the listener goes on."""
    from hyco_proto import _frames_py
    from hyco_proto.listener import Listener, RendezvousFailed
    from hyco_proto.memory import MemoryNetwork

    net = MemoryNetwork(targets.RelayService(targets.ServiceConfig()), now=targets.NOW)
    uri = f"{targets.RELAY_BASE}/$hc/myhc"
    runner = net.listen(Listener(uri, targets._relay_token(uri)), on_request=lambda _: (403, "no"))
    assert runner.control is not None
    accept = json.dumps({"accept": {"address": address, "id": "x1", "connectHeaders": {}}})
    runner.control._from_relay(_frames_py.encode_frame(_frames_py.OP_TEXT, accept.encode()))
    net.pump()
    failed = [e for e in runner.events if isinstance(e, RendezvousFailed)]
    assert [e.request_id for e in failed] == ["x1"], runner.events
    assert runner.driver.is_listening
    targets.listener_control(b"\x01" + accept.encode())  # the harness's own shape of it
