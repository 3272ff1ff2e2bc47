"""RelayServiceServer's accept queue holds a burst (bench/load.py found asyncio's default of 100
dropping SYNs when 1,000 clients connect at once, so those clients waited for a retransmission).

While the event loop is busy (here: this test's own synchronous code), the kernel completes
handshakes only for as many connections as the listening socket's backlog allows; the rest wait
in SYN retransmission. 300 connections must all complete with the default backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import select
import socket
import time

import pytest

from hyco_proto.adapters.asyncio import RelayServiceServer
from hyco_proto.adapters.asyncio.service import DEFAULT_BACKLOG

from .asyncio_util import async_test

BURST = 300


def completed_while_not_accepting(port: int, count: int) -> int:
    """Open ``count`` non-blocking connects without letting the loop run; how many completed
    their handshake within 1 s (they sit in the accept queue)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            err = sock.connect_ex(("127.0.0.1", port))
            assert err in (0, errno.EINPROGRESS), err
            socks.append(sock)
        done: set[socket.socket] = set()
        deadline = time.monotonic() + 1.0
        while len(done) < count and (left := deadline - time.monotonic()) > 0:
            _, writable, _ = select.select([], [s for s in socks if s not in done], [], left)
            for sock in writable:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    done.add(sock)
        return len(done)
    finally:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()


@pytest.mark.parametrize(("backlog", "least", "most"),
                         [(None, BURST, BURST), (16, 1, 40)], ids=["default", "16"])
@async_test
async def test_a_burst_fits_the_accept_queue(backlog: int | None, least: int,
                                             most: int) -> None:
    options = {} if backlog is None else {"backlog": backlog}
    async with RelayServiceServer(port=0, **options) as server:  # type: ignore[arg-type]
        assert server.backlog == (backlog or DEFAULT_BACKLOG) and DEFAULT_BACKLOG >= 1024
        # The loop does not run until this returns: nothing is accepted meanwhile.
        completed = completed_while_not_accepting(server.port, BURST)
        assert least <= completed <= most, completed
        await asyncio.sleep(0)


def test_backlog_must_be_positive() -> None:
    with pytest.raises(ValueError, match="backlog"):
        RelayServiceServer(port=0, backlog=0)
