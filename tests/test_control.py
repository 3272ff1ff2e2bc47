"""Control-channel messages: parse, serialize, strict validation (hybrid-connections-wire §3)."""

from __future__ import annotations

import json

import pytest

from hyco_proto.control import (
    AcceptCommand,
    RemoteEndpoint,
    RenewTokenCommand,
    RequestCommand,
    ResponseCommand,
    UnknownCommand,
    parse_command,
    serialize_command,
)
from hyco_proto.errors import RemoteProtocolError

ACCEPT_TEXT = (
    '{"accept":{"address":"wss://g1.example:443/$hc/myhc/suffix?foo=bar&sb-hc-action=accept'
    '&sb-hc-id=4cb5_G0_G1","id":"4cb5_G0_G1","connectHeaders":{"Sec-WebSocket-Key":'
    '"l8fWd829IrZbEqUcLejv+Q==","Sec-WebSocket-Version":"13","Sec-WebSocket-Protocol":'
    '"wssubprotocol, other","X-App":"1"},"remoteEndpoint":{"address":"10.0.0.1","port":1234}}}'
)
REQUEST_TEXT = (
    '{"request":{"address":"wss://g1.example:443/$hc/myhc?sb-hc-action=request&sb-hc-id=42_G10",'
    '"id":"42_G10","requestTarget":"/myhc/abc/def?myarg=value","method":"POST",'
    '"remoteEndpoint":{"address":"10.0.0.1","port":1234},'
    '"requestHeaders":{"Content-Type":"text/plain","Via":"1.1 relay"},"body":true}}'
)
POINTER_TEXT = '{"request":{"address":"wss://g1.example/$hc/myhc?sb-hc-action=request","id":"7"}}'
RESPONSE_TEXT = (
    '{"response":{"requestId":"42_G10","statusCode":200,"statusDescription":"OK",'
    '"responseHeaders":{"content-type":"text/plain"},"body":true}}'
)
RENEW_TEXT = '{"renewToken":{"token":"SharedAccessSignature sr=a&sig=b&se=1&skn=k"}}'


class TestParseValid:
    def test_accept(self) -> None:
        cmd = parse_command(ACCEPT_TEXT)
        assert isinstance(cmd, AcceptCommand)
        assert cmd.id == "4cb5_G0_G1"
        assert cmd.address.startswith("wss://g1.example:443/$hc/myhc/suffix?")
        assert cmd.connect_headers["Sec-WebSocket-Version"] == "13"
        assert cmd.remote_endpoint == RemoteEndpoint("10.0.0.1", 1234)
        assert cmd.requested_subprotocols == ["wssubprotocol", "other"]

    def test_accept_bytes_input(self) -> None:
        assert parse_command(ACCEPT_TEXT.encode()) == parse_command(ACCEPT_TEXT)

    def test_accept_without_optional_maps(self) -> None:
        cmd = parse_command('{"accept":{"address":"wss://h/$hc/x","id":"1"}}')
        assert cmd == AcceptCommand("wss://h/$hc/x", "1", {}, RemoteEndpoint("", 0))
        assert isinstance(cmd, AcceptCommand)
        assert cmd.requested_subprotocols == []

    def test_subprotocol_header_case_insensitive(self) -> None:
        cmd = AcceptCommand("a", "1", {"sec-websocket-protocol": " p1 ,, p2"})
        assert cmd.requested_subprotocols == ["p1", "p2"]

    def test_full_request(self) -> None:
        cmd = parse_command(REQUEST_TEXT)
        assert isinstance(cmd, RequestCommand)
        assert not cmd.is_pointer
        assert cmd.method == "POST"
        assert cmd.request_target == "/myhc/abc/def?myarg=value"
        assert cmd.request_headers == {"Content-Type": "text/plain", "Via": "1.1 relay"}
        assert cmd.remote_endpoint == RemoteEndpoint("10.0.0.1", 1234)
        assert cmd.body is True

    def test_full_request_without_address_on_rendezvous(self) -> None:
        doc = json.loads(REQUEST_TEXT)
        del doc["request"]["address"]
        cmd = parse_command(json.dumps(doc))
        assert isinstance(cmd, RequestCommand)
        assert cmd.address is None and not cmd.is_pointer

    def test_pointer_request(self) -> None:
        cmd = parse_command(POINTER_TEXT)
        assert isinstance(cmd, RequestCommand)
        assert cmd.is_pointer
        assert cmd.id == "7"
        assert cmd.method is None and cmd.body is None and cmd.request_target is None

    def test_response(self) -> None:
        cmd = parse_command(RESPONSE_TEXT)
        assert cmd == ResponseCommand("42_G10", 200, "OK", {"content-type": "text/plain"}, True)

    @pytest.mark.parametrize("code", ['"201"', "201", '" 201 "'])
    def test_response_status_as_number_or_string(self, code: str) -> None:
        cmd = parse_command('{"response":{"requestId":"1","statusCode":' + code + "}}")
        assert isinstance(cmd, ResponseCommand)
        assert cmd.status_code == 201
        assert cmd.body is False  # missing body means false
        assert cmd.status_description is None
        assert cmd.response_headers == {}

    def test_renew_token(self) -> None:
        cmd = parse_command(RENEW_TEXT)
        assert cmd == RenewTokenCommand("SharedAccessSignature sr=a&sig=b&se=1&skn=k")

    def test_unknown_command_is_returned_not_raised(self) -> None:
        cmd = parse_command('{"injectFault":{"delay":"00:01:00"}}')
        assert cmd == UnknownCommand("injectFault", {"delay": "00:01:00"})

    def test_extra_fields_are_ignored(self) -> None:
        cmd = parse_command('{"accept":{"address":"a","id":"1","future":42}}')
        assert isinstance(cmd, AcceptCommand)


MALFORMED = [
    (b"\xff\xfe", "not valid UTF-8"),
    ("", "not valid JSON"),
    ("{", "not valid JSON"),
    ("[]", "must be a JSON object, not an array"),
    ('"accept"', "must be a JSON object, not a string"),
    ("{}", "exactly one top-level key, got 0"),
    ('{"accept":{},"request":{}}', "exactly one top-level key, got 2"),
    ('{"accept":null}', "accept must be an object, not null"),
    ('{"accept":[1]}', "accept must be an object, not an array"),
    ('{"accept":{"id":"1"}}', "accept.address is missing"),
    ('{"accept":{"address":"a"}}', "accept.id is missing"),
    ('{"accept":{"address":5,"id":"1"}}', "accept.address must be a string, not a number"),
    ('{"accept":{"address":"a","id":true}}', "accept.id must be a string, not a boolean"),
    ('{"accept":{"address":"a","id":"1","connectHeaders":[]}}',
     "accept.connectHeaders must be an object, not an array"),
    ('{"accept":{"address":"a","id":"1","connectHeaders":{"X":1}}}',
     "accept.connectHeaders['X'] must be a string, not a number"),
    ('{"accept":{"address":"a","id":"1","remoteEndpoint":"x"}}',
     "accept.remoteEndpoint must be an object, not a string"),
    ('{"accept":{"address":"a","id":"1","remoteEndpoint":{"port":1}}}',
     "accept.remoteEndpoint.address is missing"),
    ('{"accept":{"address":"a","id":"1","remoteEndpoint":{"address":"h"}}}',
     "accept.remoteEndpoint.port is missing"),
    ('{"accept":{"address":"a","id":"1","remoteEndpoint":{"address":"h","port":"1"}}}',
     "accept.remoteEndpoint.port must be an integer, not a string"),
    ('{"accept":{"address":"a","id":"1","remoteEndpoint":{"address":"h","port":70000}}}',
     "accept.remoteEndpoint.port 70000 is out of range"),
    ('{"request":{"address":"a"}}', "request.id is missing"),
    ('{"request":{"id":"1"}}', "request.address is missing"),
    ('{"request":{"id":"1","requestTarget":"/x","body":false}}', "request.method is missing"),
    ('{"request":{"id":"1","method":"GET","body":false}}', "request.requestTarget is missing"),
    ('{"request":{"id":"1","method":"GET","requestTarget":"/"}}', "request.body is missing"),
    ('{"request":{"id":"1","method":"GET","requestTarget":"/","body":"yes"}}',
     "request.body must be true or false, not a string"),
    ('{"request":{"id":"1","method":"","requestTarget":"/","body":false}}',
     "request.method is empty"),
    ('{"request":{"id":"1","method":"GET","requestTarget":"/","body":false,"requestHeaders":1}}',
     "request.requestHeaders must be an object, not a number"),
    ('{"response":{"statusCode":200}}', "response.requestId is missing"),
    ('{"response":{"requestId":"1"}}', "response.statusCode is missing"),
    ('{"response":{"requestId":"1","statusCode":"OK"}}', "response.statusCode must be an integer"),
    ('{"response":{"requestId":"1","statusCode":true}}', "response.statusCode must be an integer"),
    ('{"response":{"requestId":"1","statusCode":20.5}}', "response.statusCode must be an integer"),
    ('{"response":{"requestId":"1","statusCode":99}}', "99 is not a valid HTTP status"),
    ('{"response":{"requestId":"1","statusCode":200,"body":1}}',
     "response.body must be true or false, not a number"),
    ('{"response":{"requestId":"1","statusCode":200,"statusDescription":7}}',
     "response.statusDescription must be a string"),
    ('{"renewToken":{}}', "renewToken.token is missing"),
    ('{"renewToken":{"token":null}}', "renewToken.token must be a string, not null"),
]


@pytest.mark.parametrize(("text", "fragment"), MALFORMED, ids=[f for _, f in MALFORMED])
def test_malformed_control_messages(text: str | bytes, fragment: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_command(text)
    assert fragment in str(info.value)
    assert info.value.close_code in (1002, 1007)


class TestSerialize:
    def test_accept_field_order_and_names(self) -> None:
        cmd = AcceptCommand("wss://h/$hc/x?sb-hc-action=accept", "id1",
                            {"Sec-WebSocket-Key": "k"}, RemoteEndpoint("10.0.0.1", 5))
        text = serialize_command(cmd)
        assert text == ('{"accept":{"address":"wss://h/$hc/x?sb-hc-action=accept","id":"id1",'
                        '"connectHeaders":{"Sec-WebSocket-Key":"k"},'
                        '"remoteEndpoint":{"address":"10.0.0.1","port":5}}}')

    def test_accept_always_carries_headers_and_endpoint(self) -> None:
        # Java throws without connectHeaders / remoteEndpoint (§3.1).
        doc = json.loads(serialize_command(AcceptCommand("a", "1")))
        assert doc == {"accept": {"address": "a", "id": "1", "connectHeaders": {},
                                  "remoteEndpoint": {"address": "", "port": 0}}}

    def test_full_request_order(self) -> None:
        cmd = RequestCommand(id="1", address="wss://a", request_target="/hc/x", method="GET",
                             remote_endpoint=RemoteEndpoint("1.2.3.4", 9),
                             request_headers={"A": "b"}, body=False)
        assert list(json.loads(serialize_command(cmd))["request"]) == [
            "address", "id", "requestTarget", "method", "remoteEndpoint", "requestHeaders", "body"]

    def test_full_request_on_rendezvous_omits_address(self) -> None:
        cmd = RequestCommand(id="1", request_target="/", method="GET", body=None)
        doc = json.loads(serialize_command(cmd))["request"]
        assert "address" not in doc
        assert doc["body"] is False and doc["requestHeaders"] == {}

    def test_pointer(self) -> None:
        assert serialize_command(RequestCommand(id="1", address="wss://a")) == (
            '{"request":{"address":"wss://a","id":"1"}}')

    def test_pointer_needs_address(self) -> None:
        with pytest.raises(ValueError, match="needs an address"):
            serialize_command(RequestCommand(id="1"))

    def test_full_request_needs_target(self) -> None:
        with pytest.raises(ValueError, match="request_target"):
            serialize_command(RequestCommand(id="1", method="GET", body=False))

    def test_response(self) -> None:
        assert serialize_command(ResponseCommand("r", 204)) == (
            '{"response":{"requestId":"r","statusCode":204,"responseHeaders":{},"body":false}}')
        assert json.loads(serialize_command(ResponseCommand("r", 200, "OK", body=True))) == {
            "response": {"requestId": "r", "statusCode": 200, "statusDescription": "OK",
                         "responseHeaders": {}, "body": True}}

    def test_renew(self) -> None:
        assert serialize_command(RenewTokenCommand("tok")) == '{"renewToken":{"token":"tok"}}'

    def test_non_ascii_round_trips(self) -> None:
        cmd = AcceptCommand("wss://h/$hc/ü", "1", {"X-Name": "Zoë"})
        assert parse_command(serialize_command(cmd).encode("utf-8")) == cmd

    def test_rejects_non_commands(self) -> None:
        with pytest.raises(TypeError, match="cannot serialize"):
            serialize_command(UnknownCommand("x"))  # type: ignore[arg-type]

    @pytest.mark.parametrize("text", [ACCEPT_TEXT, REQUEST_TEXT, POINTER_TEXT, RESPONSE_TEXT,
                                      RENEW_TEXT])
    def test_round_trip_is_byte_exact(self, text: str) -> None:
        cmd = parse_command(text)
        assert not isinstance(cmd, UnknownCommand)
        assert serialize_command(cmd) == text

    def test_dataclasses_are_frozen_with_slots(self) -> None:
        cmd = RenewTokenCommand("t")
        with pytest.raises(AttributeError):
            cmd.token = "u"  # type: ignore[misc]
        assert not hasattr(cmd, "__dict__")
