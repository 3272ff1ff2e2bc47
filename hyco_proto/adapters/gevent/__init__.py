"""gevent adapter: greenlet-cooperative WebSockets and the Hybrid Connections listener and sender.

The same API as :mod:`hyco_proto.adapters.threads`, on gevent's own sockets, locks, events,
queues and greenlets; calls block only the calling greenlet. Nothing is monkey-patched (a
monkey-patched program works too). Needs gevent (the ``gevent`` extra: ``pip install gevent``).
Only importing this module imports gevent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.lock
import gevent.queue
import gevent.socket

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


def _start(fn: Callable[[], None], name: str) -> Any:
    greenlet = gevent.spawn(fn)
    greenlet.name = name
    return greenlet


#: gevent's sockets, locks, events, queues and greenlets.
RUNTIME = Runtime(
    name="gevent", socket=gevent.socket, start=_start,
    alive=lambda greenlet: not greenlet.dead, current=gevent.getcurrent,
    lock=lambda: gevent.lock.Semaphore(), event=gevent.event.Event, queue=gevent.queue.Queue,
    empty=gevent.queue.Empty, sleep=gevent.sleep)


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
