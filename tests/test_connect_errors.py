"""describe_connect_error: connect failures in one sentence naming the address and the cause."""

from __future__ import annotations

import errno
import socket
import ssl
import threading

import pytest

from hyco_proto.errors import connect_failure, describe_connect_error


def describe(exc: BaseException, *, host: str = "relay.example", port: int = 9090,
             secure: bool = False, timeout: float | None = None) -> str:
    return describe_connect_error(exc, host=host, port=port, secure=secure, timeout=timeout)


def test_refused() -> None:
    exc = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    assert describe(exc) == "nothing is listening at relay.example:9090 (connection refused)"


def test_refused_ipv6_address_is_bracketed() -> None:
    exc = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    assert describe(exc, host="::1") == "nothing is listening at [::1]:9090 (connection refused)"


def test_unresolvable_host() -> None:
    exc = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert describe(exc, host="nope.invalid") == (
        "cannot resolve host nope.invalid (Name or service not known)")


def test_unresolvable_host_recognised_by_name() -> None:
    class gaierror(OSError):
        pass

    assert describe(gaierror("no such host"), host="h").startswith("cannot resolve host h")


@pytest.mark.parametrize("exc", [
    ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)"),
    ssl.SSLError(1, "[SSL] record layer failure (_ssl.c:1000)"),
])
def test_not_tls_by_text(exc: ssl.SSLError) -> None:
    assert describe(exc, secure=True) == "the relay is not speaking TLS on 9090 (use ws://)"


@pytest.mark.parametrize("reason", ["WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE",
                                    "HTTP_REQUEST", "record layer failure"])
def test_not_tls_by_reason(reason: str) -> None:
    class SSLError(OSError):
        pass

    exc = SSLError(1, "handshake failed")
    exc.reason = reason  # type: ignore[attr-defined]
    assert describe(exc, secure=True, port=443) == (
        "the relay is not speaking TLS on 443 (use ws://)")


def test_other_ssl_error_is_named_as_tls() -> None:
    exc = ssl.SSLError(1, "[SSL: SSLV3_ALERT_HANDSHAKE_FAILURE] sslv3 alert handshake failure")
    assert describe(exc, secure=True) == (
        "cannot connect to relay.example:9090: TLS handshake failed: [SSL: "
        "SSLV3_ALERT_HANDSHAKE_FAILURE] sslv3 alert handshake failure")


def test_certificate_not_accepted() -> None:
    exc = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate")
    assert describe(exc, secure=True) == (
        "cannot connect to relay.example:9090: its TLS certificate was not accepted "
        "([SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate)")


def test_timeout() -> None:
    assert describe(TimeoutError(), timeout=10) == "no answer from relay.example:9090 within 10 s"
    assert describe(TimeoutError("timed out"), timeout=2.5) == (
        "no answer from relay.example:9090 within 2.5 s")
    assert describe(TimeoutError()) == "no answer from relay.example:9090 (timed out)"
    etimedout = OSError(errno.ETIMEDOUT, "Connection timed out")  # becomes TimeoutError
    assert describe(etimedout, timeout=1) == "no answer from relay.example:9090 within 1 s"


def test_anything_else() -> None:
    exc = OSError(errno.EHOSTUNREACH, "No route to host")
    assert describe(exc) == "cannot connect to relay.example:9090: [Errno 113] No route to host"
    assert describe(OSError()) == "cannot connect to relay.example:9090: OSError"


# ---- real sockets -----------------------------------------------------------------------


def test_real_tls_to_a_plain_listener() -> None:
    """A wss:// client meets a plain HTTP server (e.g. the emulator without TLS)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)
    port = server.getsockname()[1]

    def plain_http() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(10)
            conn.recv(4096)  # the ClientHello
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")

    thread = threading.Thread(target=plain_http)
    thread.start()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                pytest.raises(ssl.SSLError) as info:
            context.wrap_socket(raw, server_hostname="127.0.0.1")
    finally:
        thread.join(10)
        server.close()
    assert not thread.is_alive()
    assert describe_connect_error(info.value, host="127.0.0.1", port=port, secure=True) == (
        f"the relay is not speaking TLS on {port} (use ws://)")


def test_real_connection_refused() -> None:
    # A bound socket that does not listen: the kernel refuses connections to its port.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        with pytest.raises(ConnectionRefusedError) as info:
            socket.create_connection(("127.0.0.1", port), timeout=10)
    assert describe_connect_error(info.value, host="127.0.0.1", port=port, secure=False) == (
        f"nothing is listening at 127.0.0.1:{port} (connection refused)")


@pytest.mark.parametrize(("exc", "cls"), [
    (TimeoutError(), TimeoutError),
    (ConnectionRefusedError(111, "Connection refused"), ConnectionRefusedError),
    (ConnectionResetError(104, "reset"), ConnectionResetError),
    (OSError(113, "No route to host"), ConnectionError),
])
def test_connect_failure_class_is_the_same_in_every_adapter(exc: OSError,
                                                            cls: type[OSError]) -> None:
    error = connect_failure(exc, host="127.0.0.1", port=9, secure=False, timeout=2.0)
    assert type(error) is cls and error.__cause__ is exc
    assert "127.0.0.1:9" in str(error) and not str(error).startswith("(")
