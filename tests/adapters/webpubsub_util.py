"""Our Web PubSub hub on a loopback port, client URLs for it, and a TCP proxy that can cut.

``hub_server()`` serves ``RelayService(webpubsub=WebPubSubService(KEY))`` with
``routes="webpubsub"`` on a free port; ``client_url(port, user, roles)`` mints a client URL with
our token module. ``CutProxy(port)`` forwards loopback TCP connections to ``port`` (one thread
per direction) and ``cut()`` resets every connection through it, so a client sees its socket
die without a closing handshake; with ``holding`` set it drops what the service sends (an ack
lost with the socket). ``service_close(...)`` makes the hub close a connection with a
code of our choosing, as the service would.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator

from hyco_proto.adapters.asyncio import RelayServiceThread
from hyco_proto.service.config import ServiceConfig
from hyco_proto.service.router import RelayService
from hyco_proto.service.webpubsub import WebPubSubService, apply_hub_actions
from hyco_proto.webpubsub.hub import CloseTransport
from hyco_proto.webpubsub.messages import TextData
from hyco_proto.webpubsub.tokens import create_client_access
from tests.procutil import free_port

KEY = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH"
HUB = "chat"
ROLES = ("webpubsub.joinLeaveGroup", "webpubsub.sendToGroup")


@contextlib.contextmanager
def hub_server() -> Iterator[RelayServiceThread]:
    service = RelayService(ServiceConfig(), webpubsub=WebPubSubService(KEY))
    with RelayServiceThread(service, port=free_port(), routes="webpubsub") as thread:
        yield thread


def client_url(port: int, user: str | None = None, roles: tuple[str, ...] = ROLES) -> str:
    return create_client_access(f"http://127.0.0.1:{port}", HUB, KEY, user_id=user,
                                roles=roles, now=time.time()).url


def hub_connections(thread: RelayServiceThread) -> set[str]:
    """The ids of the hub's logical connections."""
    def read() -> set[str]:
        wps = thread.service.webpubsub
        assert wps is not None
        return set(wps.hub(HUB)._connections)
    return thread.call(read)


def service_close(thread: RelayServiceThread, connection_id: str, code: int,
                  reason: str = "closed by the test") -> None:
    """Close the connection's socket with ``code`` from the service side."""
    def close() -> None:
        service = thread.service
        assert service.webpubsub is not None
        hub = service.webpubsub.hub(HUB)
        apply_hub_actions(service, hub, time.time(),
                          [CloseTransport(connection_id, code, reason)])
        thread.server._after_input(None)  # write what the service produced
    thread.call(close)


class CutProxy:
    """A loopback TCP forwarder to ``target_port``; :meth:`cut` resets all its connections."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        self.holding = False  # drop what the service sends (until the next cut)
        self._start(self._accept_loop)

    def _start(self, fn: object, *args: object) -> None:
        thread = threading.Thread(target=fn, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self.accepted += 1
                self._socks += [client, upstream]
            self._start(self._pump, client, upstream, False)
            self._start(self._pump, upstream, client, True)

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        try:
            while data := src.recv(65536):
                if not (downstream and self.holding):
                    dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        """Reset every connection now (SO_LINGER 0: an RST, no closing handshake)."""
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)  # wakes its pump without sending a FIN
            sock.close()
        # Only now: a pump still holding bytes it read before the cut has nowhere to send them
        # (clearing this first let a held ack through to the client in a race).
        self.holding = False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self._listener.close()
        self.cut()
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> CutProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def service_send(thread: RelayServiceThread, connection_id: str, text: str) -> None:
    """The application server sends ``text`` to one connection (a server message)."""
    def send() -> None:
        service = thread.service
        assert service.webpubsub is not None
        hub = service.webpubsub.hub(HUB)
        apply_hub_actions(service, hub, time.time(),
                          hub.send_to_connection(connection_id, TextData(text)))
        thread.server._after_input(None)
    thread.call(send)


def hub_groups(thread: RelayServiceThread, connection_id: str) -> frozenset[str]:
    """The groups the hub has ``connection_id`` in."""
    def read() -> frozenset[str]:
        assert thread.service.webpubsub is not None
        return thread.service.webpubsub.hub(HUB).connection_groups(connection_id)
    return thread.call(read)


def service_disconnect(thread: RelayServiceThread, connection_id: str, reason: str) -> None:
    """The service closes the logical connection (``disconnected`` message, then close 1000)."""
    def close() -> None:
        service = thread.service
        assert service.webpubsub is not None
        hub = service.webpubsub.hub(HUB)
        apply_hub_actions(service, hub, time.time(), hub.close_connection(connection_id, reason))
        thread.server._after_input(None)
    thread.call(close)
