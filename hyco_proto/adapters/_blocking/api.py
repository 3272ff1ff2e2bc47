"""The functions of a blocking adapter (``connect``, ``serve``, ``relayed_connect``), bound to
its :class:`~hyco_proto.adapters._blocking.runtime.Runtime`."""

from __future__ import annotations

import ssl as _ssl
from collections.abc import Callable, Mapping, Sequence

from ...drivers.connection import ClientConnection, Refused, refusal_error
from ...drivers.stream import check_max_queue
from ...sender import SenderConnect
from .net import open_client
from .runtime import Runtime
from .server import Server, Settings, listen
from .sockets import DEFAULT_MAX_QUEUE, DEFAULT_MAX_SIZE, RelayedWebSocket, WebSocket

__all__ = ["Api", "HeadersArg"]

HeadersArg = Mapping[str, str] | Sequence[tuple[str, str]] | None


class Api:
    """``connect`` / ``serve`` / ``relayed_connect`` of one adapter (its ``runtime``)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def connect(self, url: str, *, subprotocols: Sequence[str] = (), headers: HeadersArg = None,
                open_timeout: float | None = 10.0, close_timeout: float = 10.0,
                ssl: _ssl.SSLContext | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
                max_size: int | None = DEFAULT_MAX_SIZE) -> WebSocket:
        """Open a plain WebSocket to ``url`` (``ws://`` or ``wss://``; no relay).

        Connecting, TLS and the upgrade together take at most ``open_timeout`` seconds.
        Failures raise ``OSError`` s naming the address and the cause (``TimeoutError``
        naming the stage, TCP / TLS or the upgrade; ``ConnectionRefusedError``,
        ``ssl.SSLError`` ...); an upgrade answered with another
        status raises :func:`~hyco_proto.drivers.connection.refusal_error`. The socket is a
        context manager.
        """
        check_max_queue(max_queue)
        connection = ClientConnection.from_url(url, subprotocols=subprotocols,
                                               headers=headers or (), max_message_size=max_size)
        target = connection.url
        sock, events = open_client(self.runtime, connection, url=url, host=target.host,
                                   port=target.port, secure=target.secure, ssl=ssl,
                                   timeout=open_timeout)
        first = events[0]
        if isinstance(first, Refused):
            raise refusal_error(first.response, target.url)
        return WebSocket(self.runtime, sock, connection, events=events[1:], max_queue=max_queue,
                         close_timeout=close_timeout)

    def serve(self, handler: Callable[[WebSocket], object], host: str = "127.0.0.1",
              port: int = 0, *, subprotocols: Sequence[str] = (),
              ssl: _ssl.SSLContext | None = None, open_timeout: float | None = 10.0,
              close_timeout: float = 10.0, max_queue: int = DEFAULT_MAX_QUEUE,
              max_size: int | None = DEFAULT_MAX_SIZE, backlog: int = 128) -> Server:
        """Serve plain WebSockets on ``host``:``port`` (0: a free port, see ``server.port``).

        ``handler(ws)`` runs in its own worker for each connection (``ws.request`` is the
        upgrade request); the socket is closed when it returns (1000) or raises (1011, logged).
        ``subprotocols``: the server's preference; the first one the client offered is chosen.
        ``ssl``: a server-side context for ``wss://``. Returns the running :class:`Server`.
        """
        check_max_queue(max_queue)
        settings = Settings(subprotocols=tuple(subprotocols), ssl=ssl,
                            open_timeout=open_timeout, close_timeout=close_timeout,
                            max_queue=max_queue, max_size=max_size)
        return Server(self.runtime, handler, listen(self.runtime, host, port, backlog), settings)

    def relayed_connect(self, uri: str, token: str | None = None, *, headers: HeadersArg = None,
                        subprotocols: Sequence[str] = (), open_timeout: float | None = 30.0,
                        close_timeout: float = 10.0, ssl: _ssl.SSLContext | None = None,
                        max_queue: int = DEFAULT_MAX_QUEUE,
                        max_size: int | None = DEFAULT_MAX_SIZE, token_in_query: bool = False,
                        allowed_listeners: Sequence[str] = (),
                        disallowed_listeners: Sequence[str] = ()) -> RelayedWebSocket:
        """Connect to a hybrid connection as a sender (hyco-ws ``relayedConnect``).

        ``uri`` is the send address; ``token`` goes in the ``ServiceBusAuthorization`` header
        (or the ``sb-hc-token`` query with ``token_in_query``). A refused handshake raises the
        typed error (``AuthorizationError``, ``EndpointNotFoundError``,
        ``ListenerRejectedError`` for a listener's reject ...); connecting failures raise
        ``OSError`` s naming the address, ``TimeoutError`` after ``open_timeout`` (naming the
        stage: TCP / TLS, or the relay's answer to the upgrade).
        """
        check_max_queue(max_queue)
        connect = SenderConnect(uri, token=token, token_in_query=token_in_query,
                                headers=headers or (), subprotocols=subprotocols,
                                allowed_listeners=allowed_listeners,
                                disallowed_listeners=disallowed_listeners)
        connection = ClientConnection(connect.handshake(), max_message_size=max_size)
        sock, events = open_client(self.runtime, connection, url=uri,
                                   host=connect.hostname, port=connect.port,
                                   secure=connect.secure, ssl=ssl, timeout=open_timeout)
        first = events[0]
        if isinstance(first, Refused):
            raise connect.error_for_rejection(first.response)
        return RelayedWebSocket(self.runtime, sock, connection, address=connect.url,
                                events=events[1:], max_queue=max_queue,
                                close_timeout=close_timeout)
