"""The sans-IO HTTP client of relayed HTTP senders (``hyco_proto.drivers.http_client``).

Request heads byte for byte, body framing (Content-Length, chunked, the caller's own length),
what is refused, and the response side fed whole, byte by byte and with trailing data: HEAD /
204 / 304 without a body, 1xx skipped, trailers, a body delimited by the close, and every way a
peer can fail the exchange (each an error naming the address, never an exception).
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from hyco_proto._version import __version__
from hyco_proto.drivers.http_client import (
    BodyData,
    HttpEvent,
    HttpExchange,
    HttpRequest,
    ResponseEnd,
    ResponseFailed,
    ResponseHead,
    body_bytes,
    body_pieces,
)
from hyco_proto.errors import LocalProtocolError
from hyco_proto.headers import Headers
from hyco_proto.uris import create_relay_http_uri

URL = "http://127.0.0.1:9090/myhc"
TOKEN = "SharedAccessSignature sr=x&sig=y%3D&se=1&skn=k"
AGENT = f"User-Agent: hyco_proto/{__version__}\r\n".encode()


def head_of(exchange: HttpExchange) -> bytes:
    return b"".join(exchange.data_to_send())


def feed(exchange: HttpExchange, data: bytes, *, bytewise: bool = False,
         eof: bool = False) -> list[HttpEvent]:
    events: list[HttpEvent] = []
    for piece in ([data[i:i + 1] for i in range(len(data))] if bytewise else [data]):
        exchange.receive_data(piece)
        events += exchange.events_received()
    if eof:
        exchange.receive_eof()
        events += exchange.events_received()
    return events


def body(events: list[HttpEvent]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, BodyData))


# ------------------------------------------------------------------------------------------
# the request


def test_get_head_is_exact() -> None:
    exchange = HttpExchange(HttpRequest("get", URL + "/a%20b/c?x=1&y", TOKEN))
    assert head_of(exchange) == (
        b"GET /myhc/a%20b/c?x=1&y HTTP/1.1\r\nHost: 127.0.0.1:9090\r\n" + AGENT
        + f"ServiceBusAuthorization: {TOKEN}\r\n".encode() + b"Connection: close\r\n\r\n")
    exchange.end_body()
    assert exchange.data_to_send() == []


def test_bytes_body_gets_a_content_length() -> None:
    request = HttpRequest("POST", URL, body=b"hello", headers={"X-A": "1"})
    exchange = HttpExchange(request)
    head = head_of(exchange)
    assert head.endswith(b"X-A: 1\r\n" + AGENT + b"Content-Length: 5\r\nConnection: close\r\n\r\n")
    assert request.fixed_body == b"hello" and not request.streamed
    for piece in body_pieces(request.fixed_body, 2):
        exchange.send_body(piece)
    exchange.end_body()
    assert b"".join(exchange.data_to_send()) == b"hello"
    # Too much for the length is the caller's mistake.
    exchange = HttpExchange(HttpRequest("POST", URL, body=b"hi"))
    with pytest.raises(LocalProtocolError, match="myhc"):
        exchange.send_body(b"toolong")


def test_empty_bodies() -> None:
    assert b"Content-Length: 0" in head_of(HttpExchange(HttpRequest("POST", URL)))
    assert b"Content-Length" not in head_of(HttpExchange(HttpRequest("GET", URL)))
    assert b"Content-Length" not in head_of(HttpExchange(HttpRequest("DELETE", URL, body=None)))
    assert HttpRequest("PUT", URL, body="é").fixed_body == "é".encode()


def test_streamed_body_is_chunked() -> None:
    request = HttpRequest("POST", URL, body=iter([b"abc"]))
    assert request.streamed and request.fixed_body is None
    exchange = HttpExchange(request)
    assert b"Transfer-Encoding: chunked\r\n" in head_of(exchange)
    exchange.send_body(b"abc")
    exchange.send_body(b"")  # nothing: an empty chunk would end the body
    exchange.send_body(b"0123456789abcdef!")
    exchange.end_body()
    assert b"".join(exchange.data_to_send()) == (
        b"3\r\nabc\r\n11\r\n0123456789abcdef!\r\n0\r\n\r\n")
    with pytest.raises(LocalProtocolError, match="after end_body"):
        exchange.send_body(b"more")


def test_streamed_body_with_the_callers_length() -> None:
    request = HttpRequest("POST", URL, body=iter(()), headers=[("content-length", "4")])
    exchange = HttpExchange(request)
    head = head_of(exchange)
    assert b"Content-Length: 4\r\n" in head and b"chunked" not in head
    exchange.send_body(b"ab")
    with pytest.raises(LocalProtocolError, match="myhc"):
        exchange.end_body()  # two bytes short


@pytest.mark.parametrize("headers, message", [
    ({"Host": "x"}, "written by relayed_request"),
    ({"Transfer-Encoding": "chunked"}, "written by relayed_request"),
    ({"connection": "keep-alive"}, "written by relayed_request"),
    ({"ServiceBusAuthorization": "t"}, "either as `token`"),
    ({"Content-Length": "3"}, "does not match"),
    ({"Content-Length": "x"}, "not a number"),
    ({"Bad Name": "1"}, "not a valid HTTP token"),
    ({"X": "a\r\nB: c"}, "CR, LF or NUL"),
])
def test_refused_headers(headers: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HttpRequest("POST", URL, TOKEN, body=b"hello", headers=headers)


def test_token_header_or_none() -> None:
    # Without a token the caller may pass the header itself.
    request = HttpRequest("GET", URL, headers={"ServiceBusAuthorization": TOKEN})
    assert ("ServiceBusAuthorization", TOKEN) in request.headers
    assert not any(k == "ServiceBusAuthorization" for k, _ in HttpRequest("GET", URL).headers)
    calls: list[int] = []
    request = HttpRequest("GET", URL, lambda: calls.append(1) or TOKEN)  # type: ignore[func-returns-value]
    assert ("ServiceBusAuthorization", TOKEN) in request.headers and calls == [1]
    with pytest.raises(TypeError, match="non-empty str"):
        HttpRequest("GET", URL, lambda: "")
    with pytest.raises(TypeError, match="non-empty str"):
        HttpRequest("GET", URL, 42)  # type: ignore[arg-type]
    # A custom User-Agent replaces ours.
    request = HttpRequest("GET", URL, headers=[("user-agent", "me")])
    assert [v for k, v in request.headers if k.lower() == "user-agent"] == ["me"]


def test_token_in_query_replaces_one_in_the_uri() -> None:
    request = HttpRequest("GET", URL + "?a=1&SB-HC-TOKEN=old&b=2", TOKEN, token_in_query=True)
    assert request.target == f"/myhc?a=1&b=2&sb-hc-token={quote(TOKEN, safe='')}"
    assert not any(k == "ServiceBusAuthorization" for k, _ in request.headers)
    # Neither the URL shown in messages nor the repr carries the token.
    assert request.url == URL and "sig" not in repr(request) and "sig" not in request.address
    with pytest.raises(ValueError, match="needs a token"):
        HttpRequest("GET", URL, token_in_query=True)


def test_addresses() -> None:
    request = HttpRequest("GET", "https://Contoso.servicebus.windows.net/myhc/sub#frag")
    assert (request.secure, request.hostname, request.port) == (
        True, "contoso.servicebus.windows.net", 443)
    assert request.host_header == "contoso.servicebus.windows.net"
    assert request.target == "/myhc/sub"
    assert request.url == "https://contoso.servicebus.windows.net/myhc/sub"
    request = HttpRequest("GET", "http://[::1]:8080/hc/ä b?q=ü v")
    assert (request.hostname, request.port, request.host_header) == ("::1", 8080, "[::1]:8080")
    assert request.target == "/hc/%C3%A4%20b?q=%C3%BC%20v"
    assert request.address == "[::1]:8080 (http://[::1]:8080/hc/%C3%A4%20b)"
    assert HttpRequest("GET", "http://h").target == "/"
    # The URI helper's address is sent as is (the token in the query stays encoded).
    uri = create_relay_http_uri("127.0.0.1:9090", "myhc/x", token="a b", query={"k": "v"})
    assert HttpRequest("GET", uri).target == "/myhc/x?k=v&sb-hc-token=a%20b"


@pytest.mark.parametrize("uri, message", [
    ("ws://127.0.0.1/$hc/myhc", "http:// or https://"),
    ("127.0.0.1/myhc", "http:// or https://"),
    ("http:///myhc", "no host"),
    ("http://u:p@h/myhc", "user:password"),
    ("http://h:99999/myhc", "invalid port"),
    ("http://h:0/myhc", "invalid port"),
])
def test_refused_addresses(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HttpRequest("GET", uri)


def test_refused_methods() -> None:
    with pytest.raises(ValueError, match="method"):
        HttpRequest("GE T", URL)


@pytest.mark.parametrize("bad", [{"a": 1}, 42, object()])
def test_refused_bodies(bad: object) -> None:
    with pytest.raises(TypeError, match="body must be bytes, str, or an iterable"):
        HttpRequest("POST", URL, body=bad)


def test_body_helpers() -> None:
    assert body_bytes(bytearray(b"a")) == b"a" and body_bytes(memoryview(b"b")) == b"b"
    assert body_bytes("é") == "é".encode()
    with pytest.raises(TypeError, match="bytes"):
        body_bytes(1)
    assert list(body_pieces(b"abcde", 2)) == [b"ab", b"cd", b"e"]
    assert list(body_pieces(b"")) == []


# ------------------------------------------------------------------------------------------
# the response


RESPONSE = (b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nContent-Length: 5\r\nset-cookie: b=2\r\n\r\n"
            b"hello")


@pytest.mark.parametrize("bytewise", [False, True])
def test_response_whole_and_byte_by_byte(bytewise: bool) -> None:
    exchange = HttpExchange(HttpRequest("GET", URL))
    events = feed(exchange, RESPONSE + b"ignored after the end", bytewise=bytewise)
    head = events[0]
    assert isinstance(head, ResponseHead)
    assert (head.status, head.reason, head.http_version) == (200, "OK", "1.1")
    assert head.headers.get_all("SET-COOKIE") == ["a=1", "b=2"]
    assert body(events) == b"hello" and isinstance(events[-1], ResponseEnd)
    assert exchange.complete and exchange.finished and exchange.error is None
    assert exchange.body_received == 5 and exchange.head is head
    exchange.receive_eof()
    assert exchange.events_received() == []


def test_body_bytes_come_as_they_arrive() -> None:
    exchange = HttpExchange(HttpRequest("GET", URL))
    first = feed(exchange, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
    assert isinstance(first[0], ResponseHead) and body(first) == b"hel"
    assert not exchange.finished
    rest = feed(exchange, b"lo\r\n0\r\nX-Trailer: t\r\n\r\n")
    assert body(rest) == b"lo"
    end = rest[-1]
    assert isinstance(end, ResponseEnd) and end.trailers == Headers({"X-Trailer": "t"})


@pytest.mark.parametrize("method, status", [("HEAD", 200), ("GET", 204), ("GET", 304)])
def test_no_body_for_head_204_304(method: str, status: int) -> None:
    exchange = HttpExchange(HttpRequest(method, URL))
    length = b"" if status == 204 else b"Content-Length: 1234\r\n"
    events = feed(exchange, b"HTTP/1.1 %d X\r\n" % status + length + b"\r\n")
    assert [type(e) for e in events] == [ResponseHead, ResponseEnd]
    assert exchange.complete


def test_informational_responses_are_skipped() -> None:
    exchange = HttpExchange(HttpRequest("POST", URL, body=b"x"))
    events = feed(exchange, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n"
                            b"Content-Length: 0\r\n\r\n")
    assert [type(e) for e in events] == [ResponseHead, ResponseEnd]
    assert events[0].status == 201  # type: ignore[union-attr]


def test_body_delimited_by_the_close() -> None:
    exchange = HttpExchange(HttpRequest("GET", URL))
    events = feed(exchange, b"HTTP/1.0 200 OK\r\n\r\nall of it", eof=True)
    assert body(events) == b"all of it" and isinstance(events[-1], ResponseEnd)
    assert events[0].http_version == "1.0"  # type: ignore[union-attr]


def test_closed_without_answering() -> None:
    exchange = HttpExchange(HttpRequest("GET", URL))
    events = feed(exchange, b"", eof=True)
    assert len(events) == 1 and isinstance(events[0], ResponseFailed)
    text = str(events[0].error)
    assert "127.0.0.1:9090 (http://127.0.0.1:9090/myhc) closed the connection without " \
           "answering" in text and "https://" in text
    assert exchange.error is events[0].error and exchange.finished
    # https:// gets no TLS advice; a lost connection's cause is quoted.
    exchange = HttpExchange(HttpRequest("GET", "https://ns/myhc"))
    exchange.receive_eof(ConnectionResetError("reset by peer"))
    (failed,) = exchange.events_received()
    assert isinstance(failed, ResponseFailed)
    assert str(failed.error) == ("ns:443 (https://ns/myhc) closed the connection without "
                                 "answering (reset by peer)")


def test_closed_mid_body() -> None:
    exchange = HttpExchange(HttpRequest("GET", URL))
    events = feed(exchange, RESPONSE[:-2], eof=True)
    assert body(events) == b"hel"
    failed = events[-1]
    assert isinstance(failed, ResponseFailed)
    assert "before the response body was complete (3 bytes received)" in str(failed.error)
    assert isinstance(failed.error, ConnectionError)


def test_not_http() -> None:
    exchange = HttpExchange(HttpRequest("GET", URL))
    events = feed(exchange, b"SSH-2.0-OpenSSH\r\n\r\n")
    assert len(events) == 1 and isinstance(events[0], ResponseFailed)
    assert "is not valid HTTP/1.1" in str(events[0].error)
    exchange.receive_data(b"more")  # ignored once failed
    assert exchange.events_received() == []


def test_an_early_answer_ends_the_upload() -> None:
    exchange = HttpExchange(HttpRequest("POST", URL, body=iter(())))
    exchange.data_to_send()
    exchange.send_body(b"part")
    events = feed(exchange, b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    assert events[0].status == 413 and exchange.finished  # type: ignore[union-attr]
    exchange.data_to_send()
    exchange.send_body(b"ignored")
    exchange.end_body()
    assert exchange.data_to_send() == []


def test_errors_name_the_address() -> None:
    request = HttpRequest("GET", "https://127.0.0.1:9443/myhc?sb-hc-token=secret")
    for stage, text in [("head", "no response from 127.0.0.1:9443"),
                        ("body", "stalled: nothing for 2 s"),
                        ("send", "took none of the request body for 2 s")]:
        error = request.timeout_error(stage, 2.0)
        assert isinstance(error, TimeoutError) and text in str(error)
        assert "secret" not in str(error)
    refused = request.connect_error(ConnectionRefusedError(111, "refused"), 5.0)
    assert isinstance(refused, ConnectionRefusedError)
    assert "127.0.0.1:9443" in str(refused)

    class NotTls(OSError):
        reason = "WRONG_VERSION_NUMBER"

    NotTls.__name__ = "SSLError"
    wrapped = ConnectionError("from the adapter")
    wrapped.__cause__ = NotTls("wrong version number")
    error = request.connect_error(wrapped, 5.0)
    assert "not speaking TLS on 9443 (use http://)" in str(error)


def test_headers_keep_every_value() -> None:
    headers = Headers([("A", "1"), ("b", "2"), ("a", "3")])
    assert headers["a"] == "3" and headers.get_all("A") == ["1", "3"]
    assert headers.get_all("missing") == [] and len(headers) == 2
    assert headers.raw_items() == (("A", "1"), ("b", "2"), ("a", "3"))
    assert Headers({"X": "1"}).raw_items() == (("X", "1"),)
