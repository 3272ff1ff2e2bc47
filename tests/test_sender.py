"""Sender connect parameters and error mapping (hybrid-connections-wire §1.2, §2.5, §4.3, §4.6)."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest

from hyco_proto.errors import (
    AuthorizationError,
    ConnectionLostError,
    EndpointNotFoundError,
    ForbiddenError,
    ListenerRejectedError,
    QuotaExceededError,
    RelayError,
)
from hyco_proto.handshake import HandshakeRejected
from hyco_proto.sender import (
    ALLOWED_LISTENERS_HEADER,
    DISALLOWED_LISTENERS_HEADER,
    REJECTED_BY_HEADER,
    SenderConnect,
    error_for_close,
    error_for_rejection,
    error_for_status,
)

NS = "contoso.servicebus.windows.net"
TOKEN = "SharedAccessSignature sr=http%3A%2F%2Fcontoso%2Fmyhc&sig=a%2Bb%3D&se=1&skn=k"


class TestParameters:
    def test_minimal(self) -> None:
        conn = SenderConnect(f"wss://{NS}/$hc/myhc", token=TOKEN)
        assert conn.scheme == "wss" and conn.secure
        assert conn.host == NS and conn.hostname == NS and conn.port == 443
        assert conn.target == "/$hc/myhc?sb-hc-action=connect"
        assert conn.url == f"wss://{NS}/$hc/myhc?sb-hc-action=connect"
        assert conn.headers == (("ServiceBusAuthorization", TOKEN),)
        assert conn.subprotocols == ()

    def test_suffix_and_app_query_are_kept(self) -> None:
        conn = SenderConnect(f"wss://{NS}:443/$hc/myhc/some/suffix?foo=bar&x")
        assert conn.host == NS  # default port is not written into Host
        assert conn.target == "/$hc/myhc/some/suffix?foo=bar&x&sb-hc-action=connect"
        assert conn.headers == ()

    def test_existing_connect_action_is_not_duplicated(self) -> None:
        conn = SenderConnect(f"wss://{NS}/$hc/myhc?sb-hc-action=connect&sb-hc-id=me")
        assert conn.target == "/$hc/myhc?sb-hc-action=connect&sb-hc-id=me"

    def test_other_action_is_refused(self) -> None:
        with pytest.raises(ValueError, match="sb-hc-action='listen'"):
            SenderConnect(f"wss://{NS}/$hc/myhc?sb-hc-action=listen")

    def test_plain_ws_and_custom_port(self) -> None:
        conn = SenderConnect("ws://127.0.0.1:9090/$hc/myhc")
        assert not conn.secure
        assert conn.host == "127.0.0.1:9090" and conn.port == 9090
        assert SenderConnect("ws://localhost/$hc/x").port == 80
        assert SenderConnect("ws://localhost:80/$hc/x").host == "localhost"

    def test_ipv6_host(self) -> None:
        conn = SenderConnect("ws://[::1]:9090/$hc/x")
        assert conn.hostname == "::1" and conn.host == "[::1]:9090"

    def test_token_in_query(self) -> None:
        conn = SenderConnect(f"wss://{NS}/$hc/myhc?a=1&sb-hc-token=old", token=TOKEN,
                             token_in_query=True)
        assert conn.headers == ()
        pairs = parse_qsl(conn.target.split("?", 1)[1])
        assert pairs == [("a", "1"), ("sb-hc-action", "connect"), ("sb-hc-token", TOKEN)]
        assert "sb-hc-token=SharedAccessSignature%20sr%3Dhttp%253A" in conn.target

    def test_token_in_query_needs_token(self) -> None:
        with pytest.raises(ValueError, match="needs a token"):
            SenderConnect(f"wss://{NS}/$hc/myhc", token_in_query=True)

    def test_repr_hides_token(self) -> None:
        conn = SenderConnect(f"wss://{NS}/$hc/myhc", token=TOKEN, token_in_query=True)
        assert "sig=" not in repr(conn) and "sig%3D" not in repr(conn)
        assert "***" in repr(conn)

    def test_headers_mapping_or_pairs_and_listener_pinning(self) -> None:
        conn = SenderConnect(f"wss://{NS}/$hc/myhc", token=TOKEN,
                             headers={"X-Custom": "hello"},
                             allowed_listeners=["guid1", "guid2"],
                             disallowed_listeners=("guid3",))
        assert conn.headers == (("X-Custom", "hello"), ("ServiceBusAuthorization", TOKEN),
                                (ALLOWED_LISTENERS_HEADER, "guid1,guid2"),
                                (DISALLOWED_LISTENERS_HEADER, "guid3"))
        assert ALLOWED_LISTENERS_HEADER == "Microsoft-Relay-AllowedListeners"
        assert DISALLOWED_LISTENERS_HEADER == "Microsoft-Relay-DisallowedListeners"
        pairs = SenderConnect(f"wss://{NS}/$hc/myhc", headers=[("A", "1"), ("A", "2")])
        assert pairs.headers == (("A", "1"), ("A", "2"))

    def test_own_auth_header_without_token(self) -> None:
        conn = SenderConnect(f"wss://{NS}/$hc/myhc", headers={"ServiceBusAuthorization": "t"})
        assert conn.headers == (("ServiceBusAuthorization", "t"),)

    def test_subprotocols(self) -> None:
        conn = SenderConnect(f"wss://{NS}/$hc/myhc", subprotocols=["chat", "superchat"])
        assert conn.subprotocols == ("chat", "superchat")

    @pytest.mark.parametrize(("kwargs", "message"), [
        ({"headers": {"Sec-WebSocket-Protocol": "x"}}, "written by the WebSocket handshake"),
        ({"headers": {"host": "x"}}, "written by the WebSocket handshake"),
        ({"headers": {"ServiceBusAuthorization": "x"}, "token": "t"}, "not both"),
        ({"headers": {"Microsoft-Relay-AllowedListeners": "a"}}, "allowed_listeners"),
        ({"headers": {"X-Bad": "a\r\nInjected: 1"}}, "CR, LF"),
        ({"subprotocols": ["a b"]}, "not a valid token"),
        ({"subprotocols": ["a,b"]}, "not a valid token"),
        ({"allowed_listeners": ["a,b"]}, "without commas"),
        ({"disallowed_listeners": [""]}, "non-empty"),
    ])
    def test_invalid_arguments(self, kwargs: dict[str, object], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            SenderConnect(f"wss://{NS}/$hc/myhc", **kwargs)  # type: ignore[arg-type]

    @pytest.mark.parametrize("kwargs", [{"subprotocols": "chat"}, {"allowed_listeners": "g1"}])
    def test_single_string_instead_of_sequence(self, kwargs: dict[str, object]) -> None:
        with pytest.raises(TypeError, match="not a single string"):
            SenderConnect(f"wss://{NS}/$hc/myhc", **kwargs)  # type: ignore[arg-type]

    @pytest.mark.parametrize(("address", "message"), [
        (f"https://{NS}/myhc", "ws:// or wss://"),
        ("wss:///$hc/x", "no host"),
        (f"wss://{NS}/$hc/x#frag", "fragment"),
        (f"wss://{NS}:99999/$hc/x", "invalid port"),
    ])
    def test_invalid_address(self, address: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            SenderConnect(address)

    def test_empty_path_becomes_slash(self) -> None:
        assert SenderConnect(f"wss://{NS}").target == "/?sb-hc-action=connect"


class TestErrors:
    @pytest.mark.parametrize(("status", "reason", "cls"), [
        (401, "ExpiredToken: . TrackingId:t-401, SystemTracker:x", AuthorizationError),
        (403, "Unauthorized access. 'Send' claim(s) are required", ForbiddenError),
        (403, "QuotaExceeded: too many connections", QuotaExceededError),
        (404, "Endpoint does not exist. TrackingId:t-404, SystemTracker:sb://ns/x",
         EndpointNotFoundError),
        (400, "Rejected by user code", RelayError),  # a listener's reject, passed through
        (502, "The Listener's custom AcceptHandler threw an exception", RelayError),
        (504, "timeout", RelayError),
    ])
    def test_handshake_status(self, status: int, reason: str, cls: type[RelayError]) -> None:
        error = error_for_status(status, reason)
        assert type(error) is cls
        assert error.status == status and error.close_code is None
        assert error.description == reason
        assert reason in str(error)
        assert SenderConnect("ws://h/$hc/x").error_for_status(status, reason).status == status

    def test_tracking_id(self) -> None:
        assert error_for_status(404, "Endpoint does not exist. TrackingId:t-404, X").tracking_id \
            == "t-404"
        assert error_for_status(401).tracking_id is None
        assert error_for_status(401, "").description is None

    def test_transient_follows_the_listener_rule(self) -> None:
        # RelayError.transient follows the listener rule (§4.2); senders may retry anyway.
        assert not error_for_status(404).transient
        assert error_for_status(401).transient

    @pytest.mark.parametrize(("code", "cls"), [(1001, ConnectionLostError),
                                               (1006, ConnectionLostError),
                                               (1008, AuthorizationError),
                                               (1011, ConnectionLostError)])
    def test_close_codes(self, code: int, cls: type[RelayError]) -> None:
        error = error_for_close(code, "reason")
        assert type(error) is cls
        assert error is not None and error.close_code == code

    def test_normal_close_is_not_an_error(self) -> None:
        assert error_for_close(1000) is None
        assert SenderConnect("ws://h/$hc/x").error_for_close(1000, "bye") is None


class TestHandshake:
    def test_request_carries_target_headers_and_subprotocols(self) -> None:
        conn = SenderConnect("ws://127.0.0.1:9090/$hc/myhc/sfx?foo=bar", token=TOKEN,
                             headers={"X-Custom": "hello"}, subprotocols=["chat"],
                             allowed_listeners=["g1"])
        hs = conn.handshake(key=b"0123456789abcdef")
        request = hs.data_to_send().decode("ascii")
        head, _, _ = request.partition("\r\n")
        assert head == "GET /$hc/myhc/sfx?foo=bar&sb-hc-action=connect HTTP/1.1"
        headers = {name.lower(): value for name, _, value in
                   (line.partition(": ") for line in request.split("\r\n")[1:] if line)}
        assert headers["host"] == "127.0.0.1:9090"
        assert headers["servicebusauthorization"] == TOKEN
        assert headers["x-custom"] == "hello"
        assert headers["microsoft-relay-allowedlisteners"] == "g1"
        assert headers["sec-websocket-protocol"] == "chat"

    @pytest.mark.parametrize(("status", "reason", "cls"), [
        (401, "ExpiredToken. TrackingId:t1, SystemTracker:x", AuthorizationError),
        (404, "Endpoint does not exist. TrackingId:t2", EndpointNotFoundError),
        (500, "Internal error. TrackingId:t3", RelayError),
        # No TrackingId: the Azure relay passed a listener's reject through unchanged.
        (400, "Rejected by user code", ListenerRejectedError),
        (401, "Who are you?", ListenerRejectedError),
        (404, "No such page", ListenerRejectedError),
    ])
    def test_rejection_maps_to_error(self, status: int, reason: str,
                                     cls: type[RelayError]) -> None:
        conn = SenderConnect("wss://h/$hc/x", token="t")
        event = self.rejected(conn, f"HTTP/1.1 {status} {reason}")
        error = conn.error_for_rejection(event)
        assert type(error) is cls
        assert error.status == status and error.description == reason
        if "TrackingId" in reason:
            assert error.tracking_id in ("t1", "t2", "t3")

    @staticmethod
    def rejected(conn: SenderConnect, status_line: str,
                 headers: str = "") -> HandshakeRejected:
        hs = conn.handshake()
        hs.data_to_send()
        hs.receive_data(f"{status_line}\r\n{headers}Content-Length: 0\r\n\r\n".encode())
        event = hs.next_event()
        assert isinstance(event, HandshakeRejected)
        return event

    def test_listener_rejection_error(self) -> None:
        conn = SenderConnect("wss://h/$hc/x", token="t")
        error = error_for_rejection(self.rejected(conn, "HTTP/1.1 401 Not you"))
        assert type(error) is ListenerRejectedError
        assert isinstance(error, RelayError) and not isinstance(error, AuthorizationError)
        assert (error.status, error.description, error.tracking_id) == (401, "Not you", None)
        # Unmarked (no X-Hyco-Rejected-By, no TrackingId): Azure's pass-through of a listener's
        # reject, or a web server at a mistyped address; the message claims neither.
        assert str(error) == ("rejected with 401: Not you (by the listener, or by something "
                              "that is not a relay at this address: the answer carries no "
                              "relay TrackingId)")

    def test_a_plain_web_server_404_is_not_said_to_be_a_listener(self) -> None:
        conn = SenderConnect("wss://typo.example/$hc/x?sb-hc-token=secret", token=None)
        error = conn.error_for_rejection(self.rejected(conn, "HTTP/1.1 404 Not Found"))
        assert type(error) is ListenerRejectedError  # callers' except clauses keep working
        assert (error.status, error.description) == (404, "Not Found")
        assert str(error) == ("wss://typo.example/$hc/x: rejected with 404: Not Found "
                              "(by the listener, or by something that is not a relay at this "
                              "address: the answer carries no relay TrackingId)")
        assert not str(error).startswith("wss://typo.example/$hc/x: the listener")
        bare = error_for_rejection(self.rejected(conn, "HTTP/1.1 404 "))
        assert str(bare).startswith("rejected with 404 (by the listener, or by ")

    def test_the_emulators_listener_mark_keeps_the_plain_text(self) -> None:
        conn = SenderConnect("ws://127.0.0.1:9090/$hc/x")
        marked = self.rejected(conn, "HTTP/1.1 404 Not Found",
                               f"{REJECTED_BY_HEADER}: listener\r\n")
        assert str(error_for_rejection(marked)) == \
            "the listener rejected the connection with 404: Not Found"
        bare = self.rejected(conn, "HTTP/1.1 403 ", f"{REJECTED_BY_HEADER}: listener\r\n")
        assert str(error_for_rejection(bare)) == "the listener rejected the connection with 403"

    @pytest.mark.parametrize(("reason", "by", "cls"), [
        # The emulator names who refused; the header wins over the TrackingId rule.
        ("Unauthorized. TrackingId:t9", "listener", ListenerRejectedError),
        ("Not a relay address: expected /$hc/{hybrid connection}.", "relay",
         EndpointNotFoundError),
        ("Not a relay address", " Relay ", EndpointNotFoundError),
        ("Gone", "LISTENER", ListenerRejectedError),
    ])
    def test_emulator_header_says_who_refused(self, reason: str, by: str,
                                              cls: type[RelayError]) -> None:
        conn = SenderConnect("ws://127.0.0.1:9090/$hc/x")
        event = self.rejected(conn, f"HTTP/1.1 404 {reason}",
                              f"{REJECTED_BY_HEADER.lower()}: {by}\r\n")
        error = conn.error_for_rejection(event)
        assert type(error) is cls and error.status == 404 and error.description == reason


def test_rejection_error_names_the_address_without_the_token() -> None:
    conn = SenderConnect("ws://127.0.0.1:9090/$hc/hc/sub?x=1", token="secret-token",
                         token_in_query=True)
    error = conn.error_for_rejection(HandshakeRejected(
        404, "Endpoint does not exist. TrackingId:abc_G1", [("X-Hyco-Rejected-By", "relay")],
        b""))
    assert str(error).startswith("ws://127.0.0.1:9090/$hc/hc/sub: ")
    assert "secret-token" not in str(error) and error.status == 404


def test_a_non_error_status_is_never_a_listener_rejection() -> None:
    # A web server at the wrong address answering 200: listeners reject with 400..599 only.
    error = error_for_rejection(HandshakeRejected(200, "OK", [], b""))
    assert not isinstance(error, ListenerRejectedError) and error.status == 200
