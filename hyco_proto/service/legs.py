"""Relayed pairs: the two :class:`RelayLeg` handlers a rendezvous joins.

Each leg's bytes go through its Forwarder to the other leg: frames are re-framed, not
interpreted (the service relays frames "with no interpretation", hybrid-connections-wire
§3.1), so pings, pongs and closes travel end to end. A close passes like any frame and the
pair is torn down only when both closes have passed (port bridges carry TCP half-close as a
one-sided close). The relay speaks for itself only when a leg breaks the protocol or drops.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from ..frames import OP_CLOSE, Forwarder, encode_frame
from .events import log_event
from .handler import Connection, ConnectionKind, Handler, ServiceCore

__all__ = ["RelayLeg", "close_frame"]


@lru_cache(maxsize=64)  # the same few (code, reason) pairs, one per relayed pair's end
def close_frame(code: int, reason: str) -> bytes:
    return encode_frame(OP_CLOSE, code.to_bytes(2, "big") + reason.encode("utf-8")[:123])


class RelayLeg(Handler):
    """One leg of a joined pair: its frames go, re-framed, to the other leg (``peer``)."""

    kind = ConnectionKind.RELAY

    def __init__(self, svc: ServiceCore, conn: Connection, peer: int) -> None:
        super().__init__(svc, conn)
        self.peer = peer
        self.fwd = Forwarder(masked=True, max_frame_size=svc.max_frame_size,
                             validate_utf8=svc.broker.config.validate_text)
        self.close_in = False  # this leg's close frame has passed to the peer
        self.eof = False  # this leg's TCP connection has ended
        self.closing_deadline: float | None = None  # tear the pair down by then
        # For the web view: the pair's hybrid connection, listener, when it was joined, and
        # whether this is the sender's leg (its forwarder's payload_bytes count sender →
        # listener; the other leg's, listener → sender).
        self.hc_name = ""
        self.listener_id = ""
        self.joined = conn.opened
        self.from_sender = False
        # The forwarder's payload bytes, frames and messages already added to the service's
        # counters (``count``): a driver's lane (RelayService.lane) forwards without counting.
        self._counted_bytes = self._counted_frames = self._counted_messages = 0

    def other(self) -> RelayLeg | None:
        """The other leg, while it is still relaying."""
        other = self.svc.handler(self.peer) if self.peer is not None else None
        return other if isinstance(other, RelayLeg) and other.kind is ConnectionKind.RELAY \
            else None

    def receive_data(self, now: float, data: bytes | memoryview) -> None:
        out = self.fwd.feed(data)
        peer = self.other()
        if out and peer is not None:
            self.svc.send(peer.id, out)
        self._forwarded(now, peer)

    def receive_into(self, now: float, buffer: memoryview, start: int, end: int) -> None:
        # The frames are re-framed where they were read and the peer gets a view of them: no
        # copy of the payload in the relay (the driver copies only what a socket refuses).
        fast = self.forward_into(now, buffer, start, end)
        if fast is not None:
            self.svc.send(*fast)

    def forward_into(self, now: float, buffer: memoryview, start: int,
                     end: int) -> tuple[int, memoryview] | None:
        """``receive_into`` for plain relayed data: ``(peer id, view of the re-framed bytes)``
        when that is all that happened (nothing queued, no close, no violation, so no deadline
        and no broker step); otherwise ``None`` after the usual handling (output queued)."""
        fwd = self.fwd
        begin, stop = fwd.feed_into(buffer, start, end)
        peer = self.other()
        if peer is None or fwd.error_code or (fwd.close_code >= 0 and not self.close_in):
            self.fed(now, peer, buffer, begin, stop)
            return None
        self.count()
        return peer.id, buffer[begin:stop]

    def fed(self, now: float, peer: RelayLeg | None, buffer: memoryview, begin: int,
            stop: int) -> None:
        """The usual handling of a read whose frames the forwarder has re-framed into
        ``buffer[begin:stop]``: queue them for ``peer`` and act on what passed."""
        if stop > begin and peer is not None:
            self.svc.send(peer.id, buffer[begin:stop])
        self._forwarded(now, peer)

    def count(self) -> None:
        """Add what passed since the last count to the service's counters."""
        fwd = self.fwd
        stats = self.svc.stats
        payload, frames, messages = fwd.payload_bytes, fwd.frames, fwd.messages
        stats.bytes_relayed += payload - self._counted_bytes
        stats.frames_relayed += frames - self._counted_frames
        stats.messages_relayed += messages - self._counted_messages
        self._counted_bytes, self._counted_frames, self._counted_messages = (
            payload, frames, messages)

    def _forwarded(self, now: float, peer: RelayLeg | None) -> None:
        """After a read: count what passed, and act on a violation or a close that passed."""
        fwd = self.fwd
        self.count()
        if fwd.error_code:
            self._failed(now, fwd.error_code, fwd.error_reason)
        elif fwd.close_code >= 0 and not self.close_in:
            self.close_in = True
            if peer is None or peer.close_in or peer.eof:
                self._finish(peer)
            elif self.closing_deadline is None:
                self.closing_deadline = now + self.svc.half_close_timeout
                peer.closing_deadline = self.closing_deadline
                self.svc.watch(self.id)
                self.svc.watch(peer.id)

    def receive_eof(self, now: float) -> None:
        """This leg's TCP connection ended (with or without its close frame)."""
        if self.eof:
            return
        self.eof = True
        peer = self.other()
        if self.kind is ConnectionKind.RELAY:
            self._close_tcp()
        if peer is None:
            return
        if self.close_in and (peer.close_in or peer.eof):
            self._finish(peer)
        elif not self.close_in:
            # One leg dropped: the other gets 1001 (hybrid-connections-wire §4.4).
            peer.gone(now, self, "The other side of the relayed connection went away.")

    def connection_lost(self, now: float) -> None:
        self.count()
        self.receive_eof(now)

    def can_inject(self, source: RelayLeg | None) -> bool:
        """A frame may be written to this leg only between frames of the stream it gets from
        ``source``, and not after a close has already gone its way."""
        if self.kind is not ConnectionKind.RELAY or self.eof:
            return False
        if source is None:
            return True
        return not source.fwd.mid_frame and not source.close_in

    def _failed(self, now: float, code: int, reason: str) -> None:
        """This leg broke the protocol: fail it with ``code`` (RFC 6455 §7.1.7); its peer hears
        1001 and gets a short time to answer the close."""
        log_event(logging.INFO, "protocol-close", f"relayed leg {code}",
                  remote=self.conn.remote, tracking=self.tracking, why=reason[:200],
                  code=code)
        peer = self.other()
        if self.can_inject(peer):
            self.svc.send(self.id, close_frame(code, reason))
        self._close_tcp()
        if peer is not None:
            peer.gone(now, self, "The other side of the relayed connection failed.")

    def gone(self, now: float, gone: RelayLeg, reason: str) -> None:
        """``gone`` can no longer carry this leg's traffic: say 1001, let this leg close."""
        if self.can_inject(gone):
            self.svc.send(self.id, close_frame(1001, reason))
            gone.close_in = True
            if self.close_in:
                self._close_tcp()
            else:
                self.closing_deadline = now + self.svc.close_timeout
                self.svc.watch(self.id)
        elif self.kind is ConnectionKind.RELAY:
            self._close_tcp()  # mid-frame: nothing clean can be said any more

    def _finish(self, peer: RelayLeg | None) -> None:
        """Both closes have passed: the server closes TCP first (RFC 6455 §7.1.1)."""
        for leg in (self, peer):
            if leg is not None and leg.kind is ConnectionKind.RELAY:
                leg._close_tcp()

    def _close_tcp(self) -> None:
        self.kind = ConnectionKind.CLOSED
        self.svc.close(self.id)

    def deadline(self) -> float | None:
        return self.closing_deadline if self.kind is ConnectionKind.RELAY else None

    def handle_timer(self, now: float) -> None:
        # A relayed leg whose close never completed is torn down (its peer has its own deadline).
        self._close_tcp()

    def shutdown(self, now: float, code: int, reason: str) -> None:
        if self.kind is not ConnectionKind.RELAY:
            return
        if self.can_inject(self.other()):
            self.svc.send(self.id, close_frame(code, reason))
        self._close_tcp()
