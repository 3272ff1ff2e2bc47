"""``RelayService.next_deadline`` keeps a heap of handler deadlines instead of asking every
watched handler after each input (issue 14): on random sequences of connections, requests
(whole, in pieces, refused, relayed HTTP with bodies), rendezvous, EOFs, losses, timers and
changed timeouts, it always equals the earliest deadline of every live handler, asked of each."""

from __future__ import annotations

import json
import random

import pytest

from hyco_proto._frames import FrameDecoder
from hyco_proto.handshake import ClientHandshake
from hyco_proto.sas import create_relay_token
from hyco_proto.service import router
from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY
from hyco_proto.service.router import RelayService

NOW = 1_700_000_000.0
HOST = "127.0.0.1:9090"


def _scan(svc: RelayService) -> float | None:
    """The earliest deadline of every live handler, asked of each (what the heap must give)."""
    found = [d for h in svc._handlers.values() if (d := h.deadline()) is not None]
    return min(found) if found else None


class _Run:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.now = NOW
        self.svc = RelayService(handshake_timeout=rng.choice([0.5, 2.0, 10.0]),
                                http_timeout=rng.choice([1.0, 5.0]), close_timeout=1.0,
                                half_close_timeout=3.0)
        self.svc.broker.config.accept_timeout = rng.choice([1.0, 4.0])
        self.token = create_relay_token(f"ws://{HOST}/$hc/hc", DEFAULT_RULE_NAME,
                                        DEVELOPMENT_KEY, 3600, now=self.now)
        self.live: list[int] = []
        self.controls: dict[int, FrameDecoder] = {}
        self.addresses: list[str] = []
        self.checks = 0

    def upgrade(self, target: str, auth: bool = True) -> bytes:
        headers = [("ServiceBusAuthorization", self.token)] if auth else []
        return ClientHandshake(HOST, target, headers=headers).data_to_send()

    def request(self) -> bytes:
        rng = self.rng
        kind = rng.randrange(9)
        if kind == 0:
            return self.upgrade("/$hc/hc?sb-hc-action=listen")
        if kind in (1, 2):
            return self.upgrade(f"/$hc/hc?sb-hc-action=connect&sb-hc-id=c{rng.randrange(99)}",
                                auth=rng.random() < 0.9)
        if self.addresses and (kind == 3 or rng.random() < 0.4):
            address = self.addresses.pop(rng.randrange(len(self.addresses)))
            return self.upgrade(address[address.index("/$hc/"):], auth=False)
        if kind == 4:  # relayed HTTP with a body that may never come whole
            length = rng.choice([0, 5, 100])
            return (f"POST /hc/x HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {length}\r\n"
                    f"ServiceBusAuthorization: {self.token}\r\n\r\n").encode() + b"b" * \
                rng.randrange(length + 1)
        if kind == 5:
            return f"GET /$status HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
        if kind == 6:
            return b"GET /$hc/hc HTTP/1.1\r\nHost: h\r\n\r\n"  # not an upgrade: 426
        if kind == 7:
            return b"\x00garbage\r\n\r\n"
        return f"GET /$hc/hc?sb-hc-action=bogus HTTP/1.1\r\nHost: {HOST}\r\n".encode()

    def settle(self) -> None:
        svc = self.svc
        for conn, data in svc.data_to_send():
            decoder = self.controls.get(conn)
            if data == b"":
                continue
            if decoder is None and data.startswith(b"HTTP/1.1 101 ") and conn in self.opened:
                self.controls[conn] = decoder = FrameDecoder(masked=False)
                data = data[data.index(b"\r\n\r\n") + 4:]
            if decoder is not None:
                for _, payload, _ in decoder.feed(bytes(data)):
                    try:
                        doc = json.loads(bytes(payload))
                    except ValueError:
                        continue
                    if "accept" in doc:
                        self.addresses.append(doc["accept"]["address"])
        svc.reading_changes()
        self.check()

    def check(self) -> None:
        svc = self.svc
        expected = _scan(svc)
        assert svc._handlers_due() == expected
        best = svc.next_deadline()  # check_deadlines: raises when heap and scan differ
        assert expected is None or (best is not None and best <= expected)
        self.checks += 1

    def step(self) -> None:
        rng, svc = self.rng, self.svc
        op = rng.randrange(10)
        if op <= 1 or not self.live:
            conn = svc.connection_made(self.now, ("127.0.0.1", rng.randrange(1, 60000)))
            self.live.append(conn)
            data = self.request()
            if op == 0 and data:
                self.opened.add(conn)
            cut = rng.randrange(len(data) + 1) if rng.random() < 0.3 else len(data)
            if cut:
                svc.receive_data(self.now, conn, data[:cut])
        elif op == 2:
            conn = rng.choice(self.live)
            svc.receive_data(self.now, conn, rng.choice([b"x", b"\r\n", b"\x81\x80abcd",
                                                          b"\x88\x82abcd\x62\xe9"]))
        elif op == 3:
            svc.receive_eof(self.now, rng.choice(self.live))
        elif op == 4:
            conn = self.live.pop(rng.randrange(len(self.live)))
            self.controls.pop(conn, None)
            svc.connection_lost(self.now, conn)
        elif op <= 7:
            due = svc.next_deadline()
            self.now = due if due is not None and rng.random() < 0.7 else self.now + 0.3
            svc.handle_timer(self.now)
        elif op == 8:
            svc.handshake_timeout = rng.choice([0.5, 2.0, 10.0])
        else:
            svc.http_timeout = rng.choice([1.0, 5.0])
        self.settle()

    opened: set[int]


@pytest.mark.parametrize("heap_from", [1, 4, router._HEAP_FROM])
@pytest.mark.parametrize("seed", range(30))
def test_next_deadline_equals_the_scan(seed: int, heap_from: int,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """From ``heap_from`` watched connections on the heap answers (1: always; 4: it comes
    and goes as connections do)."""
    monkeypatch.setattr(RelayService, "check_deadlines", True)
    monkeypatch.setattr(router, "_HEAP_FROM", heap_from)
    run = _Run(random.Random(seed))
    run.opened = set()
    for _ in range(300):
        run.step()
    assert run.checks == 300
    if heap_from != 4:  # (4: it switches back and forth)
        assert run.svc._heap_mode is (heap_from == 1)


def test_the_check_catches_a_wrong_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    """``check_deadlines`` is what the random runs rely on: it raises when the heap is off."""
    monkeypatch.setattr(RelayService, "check_deadlines", True)
    monkeypatch.setattr(router, "_HEAP_FROM", 1)
    svc = RelayService()
    svc.connection_made(NOW)
    assert svc.next_deadline() == NOW + svc.handshake_timeout
    svc._entry.clear()  # the heap forgets the door's entry
    with pytest.raises(AssertionError, match="heap None, scan"):
        svc.next_deadline()
