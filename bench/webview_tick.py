"""What the web view costs the service per timer tick, and how big its snapshot gets.

Run: ``.venv/bin/python -m bench.webview_tick [PAIRS ...]``. For each count it opens that many
relayed pairs (an echoing listener, raw senders; ``MemoryNetwork``, virtual clock), opens one
``/$events`` watcher and times the service's tick, the fastest of 20 rounds: once with the
state changed (a byte relayed on one pair) and once with nothing changed. Then 200 hubs of 200
groups each: the snapshot's size and how long it takes to build.
"""

from __future__ import annotations

import json
import sys
import time

from hyco_proto.frames import OP_BINARY, encode_frame
from hyco_proto.memory import MemoryNetwork
from hyco_proto.service.config import ServiceConfig
from hyco_proto.service.router import RelayService
from hyco_proto.service.webpubsub import WebPubSubService
from hyco_proto.service.webview import TICK, build_snapshot
from tests.relayutil import RawSender, raw_sender, start_echo_listener

KEY = "a-web-pubsub-access-key-for-tests-only-0123456789"


def _watch(net: MemoryNetwork) -> RawSender:
    client = RawSender(net)
    client.write(b"GET /$events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return client


def _tick_ms(net: MemoryNetwork, rounds: int, change: RawSender | None) -> float:
    service = net.service
    best = float("inf")  # the fastest round: the machine's other load counts least
    for _ in range(rounds):
        if change is not None:
            change.write(encode_frame(OP_BINARY, b"x", masked=True))
        net.now += TICK
        service.next_deadline()  # as a driver does before it sleeps
        started = time.perf_counter()
        service.handle_timer(net.now)
        best = min(best, time.perf_counter() - started)
        service.data_to_send()  # the watcher's bytes: dropped
    return best * 1000


def pairs(count: int, rounds: int = 20) -> None:
    net = MemoryNetwork(RelayService(ServiceConfig(), webpubsub=WebPubSubService(KEY)))
    start_echo_listener(net)
    senders = [raw_sender(net) for _ in range(count)]
    _watch(net)
    net.pump()
    changed = _tick_ms(net, rounds, senders[0])
    net.pump()
    quiet = _tick_ms(net, rounds, None)
    counts = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        net.service.connection_counts()
        counts = min(counts, time.perf_counter() - started)
    counts *= 1000
    print(f"{count:>6} pairs: tick {changed:6.2f} ms changed, {quiet:6.2f} ms unchanged; "
          f"connection_counts() alone {counts:5.2f} ms")


def hubs(count: int = 200, groups: int = 200) -> None:
    wps = WebPubSubService(KEY)
    net = MemoryNetwork(RelayService(ServiceConfig(), webpubsub=wps))
    for h in range(count):
        hub = wps.hub(f"hub-{h}")
        for g in range(groups):
            hub.connect(net.now, user_id=f"u{g}", groups=[f"group-{g}-" + "x" * 40])
    elapsed = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        data = json.dumps(build_snapshot(net.service, net.now), separators=(",", ":"),
                          ensure_ascii=False)
        elapsed = min(elapsed, (time.perf_counter() - started) * 1000)
    print(f"{count} hubs x {groups} groups: snapshot {len(data.encode()) / 1e6:.2f} MB "
          f"built in {elapsed:.1f} ms")


def main(argv: list[str]) -> None:
    for count in [int(a) for a in argv] or [1000, 10000]:
        pairs(count)
    hubs()


if __name__ == "__main__":
    main(sys.argv[1:])
