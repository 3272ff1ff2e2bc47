"""TLS for the blocking adapters: ``ssl.SSLObject`` over memory BIOs on a plain socket.

OpenSSL forbids using one ``SSL`` object from two threads at once, and a reader blocked in
``SSLSocket.recv`` while another thread calls ``sendall`` does exactly that (corrupted records,
hangs, crashes). Here the socket's bytes move outside OpenSSL: the reader reads raw bytes and
feeds them in, writers encrypt into the outgoing BIO; every call on the ``SSLObject`` is short
and made under one lock, and the outgoing BIO is drained by one writer at a time, so records go
out in the order they were made. The same code serves threads and greenlets.
"""

from __future__ import annotations

import contextlib
import ssl as _ssl
from typing import Any

from .runtime import Runtime

__all__ = ["TlsSocket"]

#: The most raw bytes :meth:`TlsSocket.recv_into` reads at once (a slot may be megabytes).
_RAW_READ = 65536
#: A TLS record's bytes beyond its plaintext, at most (header, MAC or tag, padding).
_RECORD_OVERHEAD = 256


class TlsSocket:
    """The socket methods the adapters use (``recv``, ``recv_into``, ``sendall``, ``settimeout``,
    ``shutdown``, ``close``, ``do_handshake``), with TLS in between."""

    def __init__(self, rt: Runtime, sock: Any, context: _ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None) -> None:
        self._sock = sock
        self._incoming = _ssl.MemoryBIO()
        self._outgoing = _ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                     server_hostname=server_hostname)
        self._lock = rt.lock()  # every use of the SSLObject and the BIOs
        self._send_lock = rt.lock()  # one writer drains the outgoing BIO at a time
        self._notified = False

    def do_handshake(self) -> None:
        """Run the TLS handshake (bounded by the socket's timeout)."""
        while True:
            try:
                with self._lock:
                    self._tls.do_handshake()
            except _ssl.SSLWantReadError:
                self._drain(True)
                data = self._sock.recv(65536)
                if not data:
                    raise _ssl.SSLEOFError("the peer closed the connection during the TLS "
                                           "handshake") from None
                with self._lock:
                    self._incoming.write(data)
                continue
            self._drain(True)
            return

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes of plaintext; ``b""`` at the end (close_notify or TCP EOF)."""
        buffer = bytearray(size)
        del buffer[self.recv_into(buffer):]
        return bytes(buffer)

    def recv_into(self, buffer: Any) -> int:
        """Plaintext into ``buffer`` (writable, bytes-like), as much as is decrypted at once up
        to its size; the count, 0 at the end (close_notify or TCP EOF)."""
        with memoryview(buffer).cast("B") as view:
            size = view.nbytes
            while True:
                got = 0
                ended = False
                with self._lock:
                    try:
                        while got < size:
                            # (with a buffer, read returns the count: typeshed says bytes)
                            n: int = self._tls.read(size - got, view[got:])  # type: ignore
                            if not n:  # the peer's close_notify came
                                ended = True
                                break
                            got += n
                    except _ssl.SSLWantReadError:
                        pass
                    except (_ssl.SSLZeroReturnError, _ssl.SSLEOFError):
                        ended = True
                    pending = self._outgoing.pending > 0  # TLS 1.3 key updates and the like
                if pending:
                    self._drain(False)
                if got:
                    return got
                if ended:
                    return 0
                data = self._sock.recv(min(size + _RECORD_OVERHEAD, _RAW_READ))
                with self._lock:
                    if data:
                        self._incoming.write(data)
                    else:
                        self._incoming.write_eof()

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[self._tls.write(view):]
        self._drain(True)

    def close_notify(self) -> None:
        """Send TLS close_notify (RFC 8446 §6.1) before TCP is ended; once."""
        with self._lock:
            if self._notified:
                return
            self._notified = True
            with contextlib.suppress(_ssl.SSLError):  # incl. SSLWantReadError: the peer's
                self._tls.unwrap()  # close_notify is not waited for
        self._drain(True)

    def _drain(self, wait: bool) -> None:
        """Write what the outgoing BIO holds, in order. ``wait=False``: only if no writer is
        busy (a writer re-checks the BIO after releasing the lock)."""
        lock = self._send_lock
        while lock.acquire(wait):
            try:
                while True:
                    with self._lock:
                        data = self._outgoing.read()
                    if not data:
                        break
                    self._sock.sendall(data)
            finally:
                lock.release()
            with self._lock:
                if not self._outgoing.pending:
                    return

    # -- the plain socket's -----------------------------------------------------------------

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def close(self) -> None:
        self._sock.close()

    def getsockname(self) -> Any:
        return self._sock.getsockname()

    def getpeername(self) -> Any:
        return self._sock.getpeername()
