"""The blocking adapters' ``open_timeout`` names the stage it ran out in, as the asyncio adapter
does (new-user trial, issue 14 session 7): "could not connect (TCP, or TLS) to HOST:PORT (URL)
within N s" while TCP or TLS never connected, "no answer to the WebSocket upgrade from HOST:PORT
(URL) within N s" once the upgrade was sent. The URL is shown without its query (a token may
travel there). ``connect`` and ``relayed_connect`` of threads and gevent, over loopback:

* a listening socket that accepts (kernel backlog) and never answers: the upgrade stage for
  ``ws://``, the TLS stage for ``wss://`` (TCP connects, no ServerHello ever comes);
* a listener whose accept queue is full: the TCP connect itself never completes.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from types import ModuleType

import pytest

from hyco_proto.errors import open_timeout_failure
from tests.adapters import test_blocking_adapters

#: The adapter module, threads then gevent; fails a test that leaves a thread or greenlet running.
adapter = test_blocking_adapters.adapter
unanswered_port = test_blocking_adapters.unanswered_port  # accept queue full: connect() hangs

SECRET = "SECRET-TOKEN-x1"
UPGRADE = "no answer to the WebSocket upgrade from"
CONNECT = "could not connect (TCP, or TLS) to"


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (kernel backlog) and never sends a byte."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield int(sock.getsockname()[1])


def expected(what: str, port: int, url: str) -> str:
    return re.escape(f"{what} 127.0.0.1:{port} ({url}) within 0.2 s") + "$"


def check_no_secret(error: pytest.ExceptionInfo[TimeoutError]) -> None:
    assert SECRET not in str(error.value)
    assert type(error.value) is TimeoutError


@pytest.mark.parametrize(("scheme", "what"), [("ws", UPGRADE), ("wss", CONNECT)])
def test_connect_to_a_silent_server(adapter: ModuleType, silent_port: int, scheme: str,
                                    what: str) -> None:
    base = f"{scheme}://127.0.0.1:{silent_port}/x"
    with pytest.raises(TimeoutError, match=expected(what, silent_port, base)) as error:
        adapter.connect(f"{base}?access_token={SECRET}", open_timeout=0.2)
    check_no_secret(error)


@pytest.mark.parametrize(("scheme", "what"), [("ws", UPGRADE), ("wss", CONNECT)])
def test_relayed_connect_to_a_silent_server(adapter: ModuleType, silent_port: int,
                                            scheme: str, what: str) -> None:
    base = f"{scheme}://127.0.0.1:{silent_port}/$hc/x"
    with pytest.raises(TimeoutError, match=expected(what, silent_port, base)) as error:
        adapter.relayed_connect(f"{base}?app=1", SECRET, token_in_query=True, open_timeout=0.2)
    check_no_secret(error)
    with pytest.raises(TimeoutError, match=expected(what, silent_port, base)) as error:
        adapter.relayed_connect(f"{base}?sb-hc-token={SECRET}", open_timeout=0.2)
    check_no_secret(error)


def test_a_tcp_connect_that_never_completes(adapter: ModuleType) -> None:
    with unanswered_port() as port:
        url = f"ws://127.0.0.1:{port}/x"
        with pytest.raises(TimeoutError, match=expected(CONNECT, port, url)):
            adapter.connect(url, open_timeout=0.2)
        uri = f"ws://127.0.0.1:{port}/$hc/x"
        with pytest.raises(TimeoutError, match=expected(CONNECT, port, uri)) as error:
            adapter.relayed_connect(uri, SECRET, token_in_query=True, open_timeout=0.2)
        check_no_secret(error)


def test_the_message_itself() -> None:
    error = open_timeout_failure(host="::1", port=443, url="wss://[::1]/$hc/x?sb-hc-token=t#f",
                                 timeout=2.5, connected=False)
    assert type(error) is TimeoutError
    assert str(error) == "could not connect (TCP, or TLS) to [::1]:443 (wss://[::1]/$hc/x) " \
                         "within 2.5 s"
    error = open_timeout_failure(host="relay.example", port=80, url="ws://relay.example/a#frag",
                                 timeout=None, connected=True)
    assert str(error) == "no answer to the WebSocket upgrade from relay.example:80 " \
                         "(ws://relay.example/a) (timed out)"
