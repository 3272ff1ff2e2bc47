"""Representative conformance rows through the relay over real loopback sockets.

The in-memory ``tests/test_relay_conformance.py`` runs the whole checklist; this is its smaller
real-socket twin. A raw asyncio sender completes the opening handshake with ``RelayServiceServer``
(ephemeral port) and writes a row's bytes (one write, one write per frame, or one per byte;
TCP may merge writes, so only rows whose outcome does not depend on the split are used). Behind
the relay, a ``RelayedServer`` echoes every message. The sender reads until the relay closes TCP
and compares the messages, pongs and close frames it got with the row; the listener's leg must
end with the expected close code (1001 when the relay failed the sender's leg).

As in memory, bad UTF-8 (6.3.1) is detected by the relay (``validate_text``, the default): it
fails the sender's leg with 1007 and closes TCP; the listener's leg hears 1001 when the relay
held the failing frame back (it came whole in one read), else it just ends (1006). With
``validate_text=False`` (``-unchecked``) the listener detects it and the relay forwards its
1007: the relay closes the sender's TCP connection only once the sender has answered that
close, so the sender here answers it like Autobahn's client. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from hyco_proto.adapters.asyncio import (
    RelayConnectionClosed,
    RelayedServer,
    RelayedWebSocket,
    RelayServiceServer,
)
from hyco_proto.handshake import ClientHandshake, HandshakeAccepted
from hyco_proto.service.config import ServiceConfig
from tests.test_conformance import SERVER_CASES, Case
from tests.wsutil import EOF, complete_frames_length, decode_output, parse_frames, writes_for
from tests.wsutil import close as close_frame

from .asyncio_util import WAIT, async_test, bounded, token

#: Rows run over sockets. Rows the relay fails are written in one write only: written frame by
#: frame or byte by byte, the rest would reach a socket the relay has already closed.
ROWS = {
    "1.1.1": ("whole", "frames", "bytes"),
    "1.1.3": ("whole", "frames", "bytes"),
    "1.2.6": ("whole", "frames"),
    "1.1.8": ("whole", "frames"),
    "2.2": ("whole", "frames", "bytes"),
    "2.5": ("whole",),
    "2.10": ("whole", "frames", "bytes"),
    "3.1": ("whole",),
    "3.7": ("whole",),
    "5.1": ("whole",),
    "5.6": ("whole", "frames", "bytes"),
    "5.9": ("whole",),
    "5.18": ("whole",),
    "5.20": ("whole", "frames", "bytes"),
    "6.3.1": ("whole",),
    "7.1.1": ("whole", "frames"),
    "7.3.1": ("whole", "frames"),
    "7.3.6": ("whole",),
    "7.5.1": ("whole",),
    "7.7.10": ("whole", "frames"),
    "7.9.1": ("whole",),
    "7.13.2": ("whole",),
    "X.1": ("whole",),
    "X.2": ("whole",),
}
CASES = {c.id: c for c in SERVER_CASES if c.id in ROWS}
#: Rows the echoing listener fails when the relay does not check text (``validate_text=False``).
LISTENER_FAILS = {"6.3.1": ("whole", "frames", "bytes")}


def _params() -> list[object]:
    return [
        pytest.param(CASES[row], mode, True, id=f"{row}-{mode}")
        for row, modes in ROWS.items()
        for mode in modes
    ] + [
        pytest.param(CASES[row], mode, False, id=f"{row}-{mode}-unchecked")
        for row, modes in LISTENER_FAILS.items()
        for mode in modes
    ]


def test_rows_exist_and_have_no_one_write_alternative() -> None:
    assert set(CASES) == set(ROWS)
    # Rows whose result depends on how writes are split cannot run over TCP.
    assert all(c.whole is None for c in CASES.values())


@asynccontextmanager
async def echo_relay(legs: list[RelayedWebSocket], validate_text: bool = True
                     ) -> AsyncIterator[RelayServiceServer]:
    async def echo(ws: RelayedWebSocket) -> None:
        legs.append(ws)
        try:
            while True:
                await ws.send(await ws.recv())
        except RelayConnectionClosed:
            pass

    async with RelayServiceServer(port=0, config=ServiceConfig(validate_text=validate_text)) \
            as relay:
        uri = f"{relay.url}/$hc/myhc"
        async with RelayedServer(uri, lambda: token(uri), connection=echo, keepalive_interval=None):
            yield relay


async def raw_connect(
    relay: RelayServiceServer,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytearray]:
    """Open TCP to the relay and complete a sender's handshake; returns the bytes that came
    after the 101 too."""
    uri = f"{relay.url}/$hc/myhc?sb-hc-action=connect"
    hs = ClientHandshake.from_url(uri, headers=[("ServiceBusAuthorization", token(uri))])
    reader, writer = await bounded(asyncio.open_connection("127.0.0.1", relay.port))
    writer.write(hs.data_to_send())
    while (event := hs.next_event()) is None:
        data = await bounded(reader.read(65536))
        hs.receive_data(data)
        if not data:
            break
    assert isinstance(event, HandshakeAccepted), event
    assert event.subprotocol is None
    return reader, writer, bytearray(event.trailing_data)


def _frames_in(buf: bytes) -> int:
    """How many whole frames ``buf`` starts with."""
    return len(parse_frames(bytes(buf[: complete_frames_length(buf)])))


async def _read_until(reader: asyncio.StreamReader, buf: bytearray, frames: int | None) -> bool:
    """Read into ``buf`` until it holds ``frames`` whole frames (False), or until EOF (True)
    when ``frames`` is None."""
    while frames is None or _frames_in(buf) < frames:
        data = await bounded(reader.read(65536))
        if not data:
            return True
        buf += data
    return False


async def _write(writer: asyncio.StreamWriter, writes: list[bytes]) -> None:
    for data in writes:
        writer.write(data)
        await bounded(writer.drain())


@pytest.mark.parametrize(("case", "mode", "validate_text"), _params())
@async_test
async def test_row_through_relay_sockets(case: Case, mode: str, validate_text: bool) -> None:
    legs: list[RelayedWebSocket] = []
    listener_fails = case.id in LISTENER_FAILS and not validate_text
    async with echo_relay(legs, validate_text) as relay:
        reader, writer, buf = await raw_connect(relay)
        try:
            await _write(writer, writes_for(mode, case.frames))
            if case.after:
                # The peer's close goes once the replies have arrived (as in test_conformance).
                # All but the close reply and EOF; one frame each (the listener never fragments).
                replies = len(case.expect) - 2
                assert not await _read_until(reader, buf, replies)
                assert decode_output([bytes(buf)], expect_masked=False) == case.expect[:replies]
                await _write(writer, writes_for(mode, case.after))
            if listener_fails:
                # The listener's close arrives; the relay keeps TCP open for our answer.
                assert not await _read_until(reader, buf, len(case.expect) - 1)
                assert decode_output([bytes(buf)], expect_masked=False) == case.expect[:-1]
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(reader.read(1), 0.1)
                await _write(writer, [close_frame(case.code)])
            assert await _read_until(reader, buf, None)
        finally:
            writer.close()
        assert decode_output([bytes(buf), b""], expect_masked=False) == case.expect
        assert case.expect[-1] == EOF
        # The listener's leg ends: the relay's 1001, its own 1007, or the forwarded close.
        assert len(legs) == 1
        leg = legs[0]
        await bounded(leg.wait_closed())
        if listener_fails:
            want = 1007
        elif case.id.startswith("6."):
            # The relay failed the sender inside a text frame: 1001 when the whole frame came
            # in the read that failed (the relay held it back); when its start had already
            # been forwarded in an earlier read, the relay can only drop the leg (1006).
            want = leg.close_code if leg.close_code in (1001, 1006) else 1001
        elif case.failed:
            want = 1001
        else:
            want = case.code
        assert leg.close_code == want
        assert leg.transport is None or leg.transport.is_closing()


def test_wait_bound_is_sane() -> None:
    assert WAIT <= 10
