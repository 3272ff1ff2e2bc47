"""``make demo``: a whole Hybrid Connections exchange, printed step by step.

Runs the relay service core, a listener core and a sender on the in-memory network (virtual
clock, no sockets): the listener opens its control channel, a sender connects, the relay sends
``accept``, the listener connects the rendezvous, messages flow both ways, a second sender is
rejected, the listener renews its token, and everything closes cleanly.
"""

from __future__ import annotations

import sys

from .listener import ConnectionRequested, Listener, TokenRenewed
from .memory import MemoryNetwork
from .sas import create_relay_token
from .service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY


def _say(step: str, text: str) -> None:
    print(f"  [{step:>8}] {text}")


def run_in_memory() -> int:
    print("hyco_proto demo: Hybrid Connections on the in-memory relay (sans-IO cores only)")
    net = MemoryNetwork()
    base = "ws://127.0.0.1:9090"
    listen_uri = f"{base}/$hc/demo"

    def listener_token() -> str:
        return create_relay_token(listen_uri, DEFAULT_RULE_NAME, DEVELOPMENT_KEY, 600, now=net.now)

    decisions = iter([None, (403, "Only one sender today")])

    def on_request(request: ConnectionRequested) -> object:
        decision = next(decisions, None)
        verdict = "accept" if decision is None else f"reject {decision}"
        _say("listener", f"accept message for {request.command.address} -> {verdict}")
        return decision

    runner = net.listen(
        Listener(listen_uri, listener_token, keepalive_interval=60.0), on_request=on_request
    )
    _say("listener", f"control channel open: {runner.attempts[-1][1]}")

    send_uri = f"{base}/$hc/demo/orders?region=eu&sb-hc-action=connect"
    token = create_relay_token(send_uri, DEFAULT_RULE_NAME, DEVELOPMENT_KEY, now=net.now)
    sender = net.connect(
        send_uri, headers=[("ServiceBusAuthorization", token)], subprotocols=["orders.v1"]
    )
    net.pump()
    if sender.accepted is None:
        print("demo failed: the sender was not accepted", file=sys.stderr)
        return 1
    _say("sender", f"connected, subprotocol {sender.subprotocol!r}")
    leg = runner.connections[0]
    for text in ("hello", "how are you?"):
        sender.send(text)
        net.pump()
        for message in leg.messages:
            leg.send(f"echo:{message!s}" if isinstance(message, str) else message)
        leg.messages.clear()
        net.pump()
        _say("sender", f"sent {text!r}, got back {sender.messages[-1]!r}")
    sender.send(b"\x00" * 100_000)
    net.pump()
    _say("listener", f"received a binary message of {len(leg.messages[-1])} bytes")

    second = net.connect(send_uri, headers=[("ServiceBusAuthorization", token)])
    net.pump()
    assert second.rejected is not None
    _say("sender2", f"refused: {second.rejected.status} {second.rejected.reason}")

    net.advance(900)  # 15 virtual minutes: the 600 s token is renewed ahead of expiry
    renewals = sum(isinstance(e, TokenRenewed) for e in runner.events)
    _say(
        "listener",
        f"15 minutes later: {renewals} token renewals, still listening "
        f"({net.service.broker.listener_count('demo')} listener)",
    )

    sender.close(1000, "done")
    net.pump()
    _say("sender", f"closed: {sender.closed}")
    runner.listener.close(net.now)
    net.advance(1)
    stats = net.service.stats
    print(
        f"relay stats: {stats.relayed_pairs} relayed pair(s), {stats.messages_relayed} "
        f"messages, {stats.bytes_relayed} bytes relayed, {stats.rejects} reject(s)"
    )
    return 0


def main() -> int:
    return run_in_memory()


if __name__ == "__main__":
    raise SystemExit(main())
