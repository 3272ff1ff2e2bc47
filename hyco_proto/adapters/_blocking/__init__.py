"""The blocking adapters' one implementation, shared by ``threads`` and ``gevent``.

Everything here is written against a :class:`~.runtime.Runtime` (socket module, TLS wrapping,
workers, locks, events, queues); ``hyco_proto.adapters.threads`` and
``hyco_proto.adapters.gevent`` only supply one. Private: import the adapters instead.

* :mod:`.sockets` — ``WebSocket`` / ``RelayedWebSocket``: one reader worker per socket, a FIFO
  outbox written under one write lock, ``MessageStream`` flow control;
* :mod:`.listener` — ``RelayedServer``: one runner worker owns the ``ListenerDriver``;
* :mod:`.server` — the plain ``serve``; :mod:`.api` — ``connect`` / ``serve`` /
  ``relayed_connect`` bound to a runtime; :mod:`.net` — connecting, handshakes, writing.
"""
