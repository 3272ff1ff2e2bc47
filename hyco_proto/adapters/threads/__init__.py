"""threads adapter: blocking WebSockets and the Hybrid Connections listener and sender.

Every call blocks the calling thread; the adapter runs one reader thread per socket and one
runner thread per listener (see :mod:`hyco_proto.adapters._blocking`)::

    with RelayedServer(listen_uri, token) as server:           # a listener
        with relayed_connect(send_uri, token) as ws:           # a sender
            ws.send("hello")
            accepted = server.accept(timeout=10)
            print(accepted.recv(timeout=10))

    with serve(handler, "127.0.0.1", 0) as server:             # a plain WebSocket server
        with connect(f"ws://127.0.0.1:{server.port}/") as ws:  # a plain client
            ws.send("hi")

Works in a gevent monkey-patched program too: every primitive is looked up when it is used.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable

from .._blocking import listener as _listener
from .._blocking import webpubsub as _webpubsub
from .._blocking.api import Api
from .._blocking.http import HttpApi, HttpResponse
from .._blocking.public import *  # noqa: F403
from .._blocking.public import __all__ as _shared
from .._blocking.runtime import Runtime

__all__ = [*_shared, "RUNTIME", "HttpResponse", "RelayedServer", "connect",
           "WebPubSubClient", "create_relayed_server", "relayed_connect", "relayed_request",
           "serve"]


def _start(fn: Callable[[], None], name: str) -> threading.Thread:
    thread = threading.Thread(target=fn, name=name, daemon=True)
    thread.start()
    return thread


#: Threads, the ``socket`` module, ``queue``; looked up at each use (monkey-patching works).
RUNTIME = Runtime(
    name="threads", socket=socket, start=_start,
    alive=lambda thread: thread.is_alive(), current=lambda: threading.current_thread(),
    lock=lambda: threading.Lock(), event=lambda: threading.Event(),
    queue=lambda: queue.Queue(), empty=queue.Empty, sleep=lambda seconds: time.sleep(seconds))


class RelayedServer(_listener.RelayedServer):
    __doc__ = _listener.RelayedServer.__doc__
    runtime = RUNTIME


class WebPubSubClient(_webpubsub.WebPubSubClient):
    __doc__ = _webpubsub.WebPubSubClient.__doc__
    runtime = RUNTIME


_api = Api(RUNTIME)
connect, serve, relayed_connect = _api.connect, _api.serve, _api.relayed_connect
create_relayed_server = RelayedServer.create
relayed_request = HttpApi(RUNTIME).relayed_request
