"""Microsoft's Web PubSub clients recover through TCP cuts against our hub, losing nothing.

Each receiver (the Node client, the Python sync client, the Python aio client) connects to our
hub through a loopback proxy (``CuttingProxy``) that breaks every connection on demand, with a
TCP reset or a FIN (no WebSocket closing handshake either way). A Node client connected directly
publishes numbered messages to the group the whole time. The receiver must see every number
exactly once and in order, with contiguous sequence ids, on the same connection id: the client
recovers (``awps_connection_id`` / ``awps_reconnection_token``) without a new ``connected``
event and without a new URL, and our hub replays what was not acknowledged.

When recovery is refused (the hub's recovery window has passed while the proxy turned the
client away), the client gets a new connection from a fresh URL, with a new connection id, and
rejoins its groups by itself (only a 1008 close ends the SDKs' 30 s of recovery attempts this
early). A Node client on the plain JSON subprotocol (no recovery) does the same after a cut.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from tests.interop.wps_proxy import WAIT, CuttingProxy, NodeWps, PyWps, serve_hub

pytestmark = pytest.mark.node

GROUP = "feed"
COUNT = 150  # numbered messages published while cutting
INTERVAL_MS = 10  # between two of them (each also waits for its ack)
TAIL = 10  # numbered messages published after the stream
CUTS = 3


@contextlib.contextmanager
def receiver(kind: str, port: int) -> Iterator[NodeWps | PyWps]:
    """A receiver of ``kind`` connecting to ``port``, joined to :data:`GROUP`."""
    peer: NodeWps | PyWps
    if kind == "node":
        with NodeWps(port, "receiver") as peer:
            peer.event("connected")
            peer.ok("join", group=GROUP)
            yield peer
    else:
        with PyWps(port, "receiver", aio=kind == "aio") as peer:
            peer.event("connected")
            peer.join(GROUP)
            yield peer


def received_numbers(peer: NodeWps | PyWps) -> list[int]:
    return [int(m["data"]) for m in peer.messages() if m["group"] == GROUP]


@pytest.mark.parametrize("mode", ["rst", "fin"])
@pytest.mark.parametrize("kind", ["node", "sync", "aio"])
def test_client_recovers_through_cuts_without_losing_or_repeating(kind: str, mode: str) -> None:
    with serve_hub() as (hub_port, _), CuttingProxy(hub_port) as proxy, \
            NodeWps(hub_port, "publisher") as publisher, receiver(kind, proxy.port) as peer:
        publisher.event("connected")
        connection_id = peer.event("connected")["connectionId"]
        job = publisher.command("publish", group=GROUP, **{"from": 1}, count=COUNT,
                                intervalMs=INTERVAL_MS)
        for cut in range(CUTS):
            # Cut once recovered and messages are flowing again.
            before = len(received_numbers(peer))
            peer.until(lambda e, n=before: proxy.open_connections == 1
                       and len(received_numbers(peer)) >= n + 10,
                       f"10 more messages before cut {cut + 1} ({proxy.log})")
            assert proxy.cut(mode) == 1, f"cut {cut + 1}: no connection through the proxy"
        assert publisher.result(job, timeout=WAIT + COUNT * 0.05)["ok"], publisher.describe()
        # More once the stream is over: the receiver must recover from the last cut too.
        publisher.ok("publish", group=GROUP, **{"from": COUNT + 1}, count=TAIL)
        total = COUNT + TAIL
        peer.until(lambda e: len(received_numbers(peer)) >= total,
                   f"all {total} messages ({proxy.log})")
        time.sleep(0.3)  # a duplicate would come now
        got = received_numbers(peer)
        assert got == list(range(1, total + 1)), (got, proxy.log, peer.describe())
        assert [m["sequenceId"] for m in peer.messages()] == list(range(1, total + 1))
        # Recovered, not reconnected: the same connection, no new URL, no new "connected".
        assert [e["connectionId"] for e in peer.events if e["event"] == "connected"] == [
            connection_id]
        assert not [e for e in peer.events if e["event"] == "disconnected"], peer.describe()
        assert [e["n"] for e in peer.events if e["event"] == "token"] == [1]
        for node in (publisher, peer):
            if isinstance(node, NodeWps):
                assert not node.named("error"), node.describe()
        # Each recovery came back through the proxy.
        assert proxy.accepted >= 1 + CUTS, (proxy.log, peer.describe())


@pytest.mark.parametrize("kind", ["node", "sync", "aio"])
def test_refused_recovery_gets_a_new_connection_that_rejoins(kind: str) -> None:
    # Sessions wait 0.3 s for recovery here; the proxy turns the client away for 1.5 s.
    with serve_hub(recovery_window=0.3) as (hub_port, _), CuttingProxy(hub_port) as proxy, \
            NodeWps(hub_port, "publisher") as publisher, receiver(kind, proxy.port) as peer:
        publisher.event("connected")
        first_id = peer.event("connected")["connectionId"]
        publisher.ok("send", group=GROUP, dataType="text", data="before")
        peer.until(lambda e: e.get("data") == "before", "the message before the cut")
        assert proxy.cut("rst", block_for=1.5) == 1
        # Recovery fails (reset by the proxy, then 1008 from the hub): disconnected, then a
        # new connection from a fresh URL.
        peer.until(lambda e: e.get("event") == "disconnected", "disconnected", timeout=WAIT)
        second = peer.until(lambda e: e.get("event") == "connected"
                            and e["connectionId"] != first_id, "a new connection",
                            timeout=WAIT)
        assert second["userId"] == "receiver"
        assert proxy.refused >= 1, "the client never tried to recover"
        # The client rejoins the group itself: probes reach it without a new join.
        deadline = time.monotonic() + WAIT
        probe = 0
        while not [m for m in peer.messages() if str(m["data"]).startswith("probe")]:
            assert time.monotonic() < deadline, peer.describe()
            probe += 1
            publisher.ok("send", group=GROUP, dataType="text", data=f"probe{probe}")
            time.sleep(0.1)
        assert [e["n"] for e in peer.events if e["event"] == "token"] == [1, 2]
        assert len([e for e in peer.events if e["event"] == "connected"]) == 2
        # The new connection's sequence ids start again from 1.
        first_probe = next(m for m in peer.messages() if str(m["data"]).startswith("probe"))
        assert first_probe["sequenceId"] == 1, peer.describe()


def test_plain_json_client_reconnects_after_a_cut_and_rejoins() -> None:
    with serve_hub() as (hub_port, _), CuttingProxy(hub_port) as proxy, \
            NodeWps(hub_port, "publisher") as publisher, \
            NodeWps(proxy.port, "receiver", protocol="json") as peer:
        publisher.event("connected")
        first_id = peer.event("connected")["connectionId"]
        peer.ok("join", group=GROUP)
        publisher.ok("send", group=GROUP, dataType="text", data="before")
        before = peer.until(lambda e: e.get("data") == "before", "the message before the cut")
        assert before["sequenceId"] is None  # no sequence ids without the reliable protocol
        assert proxy.cut("rst") == 1
        peer.event("disconnected")
        second = peer.until(lambda e: e.get("event") == "connected"
                            and e["connectionId"] != first_id, "a new connection")
        assert second["userId"] == "receiver"
        deadline = time.monotonic() + WAIT
        probe = 0
        while not [m for m in peer.messages() if str(m["data"]).startswith("probe")]:
            assert time.monotonic() < deadline, peer.describe()
            probe += 1
            publisher.ok("send", group=GROUP, dataType="text", data=f"probe{probe}")
            time.sleep(0.1)
        assert [e["n"] for e in peer.events if e["event"] == "token"] == [1, 2]
        assert proxy.refused == 0 and proxy.accepted == 2
