"""Fuzz targets: every parser of untrusted input, called so that only a result or the module's
documented error type may come out. Anything else propagates — that is a finding.

Used by the hypothesis property tests (``tests/test_fuzz_properties.py``, in ``make test``) and
by the atheris harness (``fuzz/run.py``, ``make fuzz``).
"""

from __future__ import annotations

import contextlib
import importlib
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
    target.__name__ = getattr(fn, "__name__", "target")
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
