"""Case-insensitive header maps, and what a ``headers`` hook sees of a connection request."""

from __future__ import annotations

from hyco_proto import ConnectionRequested, Headers
from hyco_proto.control import AcceptCommand, RemoteEndpoint, parse_command, serialize_command


def test_headers_lookup_ignores_case_and_keeps_spelling() -> None:
    headers = Headers({"X-Trace": "1", "Sec-WebSocket-Protocol": "a, b"})
    assert headers["x-trace"] == headers["X-TRACE"] == "1"
    assert "sec-websocket-protocol" in headers and "nope" not in headers and 3 not in headers
    assert list(headers) == ["X-Trace", "Sec-WebSocket-Protocol"]
    assert headers == {"X-Trace": "1", "Sec-WebSocket-Protocol": "a, b"}
    assert headers.get("missing") is None and len(headers) == 2
    assert Headers([("A", "1")])["a"] == "1"


def test_connection_request_exposes_what_a_hook_needs() -> None:
    command = AcceptCommand(
        address="wss://ns.example/$hc/hc/orders?region=eu&sb-hc-action=accept&sb-hc-id=x",
        id="x", connect_headers={"sec-websocket-protocol": "chat, json", "X-User": "ann"},
        remote_endpoint=RemoteEndpoint("10.0.0.1", 5000))
    request = ConnectionRequested(command, 0.0)
    assert isinstance(command.connect_headers, Headers)
    assert request.headers["x-user"] == "ann" and request.headers["X-USER"] == "ann"
    assert request.subprotocols == ["chat", "json"]
    assert request.path == "/hc/orders?region=eu"
    assert request.remote_endpoint == RemoteEndpoint("10.0.0.1", 5000)
    # Parsed from the wire, the headers are case-insensitive as well and round-trip.
    parsed = parse_command(serialize_command(command))
    assert isinstance(parsed, AcceptCommand)
    assert parsed.connect_headers["SEC-WEBSOCKET-PROTOCOL"] == "chat, json"
    assert parsed == command
