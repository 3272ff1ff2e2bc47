"""``make demo``: Hybrid Connections and Web PubSub end to end on the embedded local service.

Starts the relay service on a free loopback port, a listener (``RelayedServer``) that echoes, and
a sender (``relayed_connect``); exchanges messages and prints round-trip latency and throughput;
then sends relayed HTTP requests (``relayed_request``) that the same listener answers. Then the
service's Web PubSub hub: two ``WebPubSubClient`` s share a group, one publishes and the other
receives, and the REST API broadcasts to both.
``python -m hyco_proto.demo --in-memory`` runs the same story on the sans-IO cores alone (virtual
clock, no sockets) and prints every protocol step.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import urllib.request

from .adapters.asyncio import (
    RelayedRequest,
    RelayedServer,
    RelayedWebSocket,
    RelayServiceServer,
    Response,
    WebPubSubClient,
    relayed_connect,
    relayed_request,
)
from .listener import ConnectionRequested, Listener, TokenRenewed
from .memory import MemoryNetwork
from .sas import create_relay_token
from .service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY, ServiceConfig
from .service.router import RelayService
from .service.webpubsub import WebPubSubService
from .webpubsub.client import GroupMessage


async def _answer(request: RelayedRequest) -> Response:
    """Relayed HTTP requests to the same listener: echo what arrived."""
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return Response(200, {"Content-Type": "text/plain"},
                    f"{request.method} {request.path}?{request.query}: {size} bytes")


def _say(step: str, text: str) -> None:
    print(f"  [{step:>8}] {text}", flush=True)


async def _echo(ws: RelayedWebSocket) -> None:
    async for message in ws:
        await ws.send(message)


async def run_sockets(*, round_trips: int = 2000, small: int = 20000, big: int = 64) -> int:
    print("hyco_proto demo: Hybrid Connections over the embedded local relay (loopback sockets)")
    print("  (relay, listener and sender share this one Python process and one core; bench/ has")
    print("   the relay measured alone with a load generator)")
    async with RelayServiceServer(port=0) as relay:
        base = relay.url
        _say("relay", f"listening on {base}  (rule {DEFAULT_RULE_NAME}, development key)")
        print(
            f"             connection string: Endpoint=sb://127.0.0.1:{relay.port}/;"
            f"SharedAccessKeyName={DEFAULT_RULE_NAME};SharedAccessKey={DEVELOPMENT_KEY};"
            "EntityPath=demo"
        )
        listen_uri = f"{base}/$hc/demo"
        send_uri = f"{base}/$hc/demo/orders?region=eu"

        def listener_token() -> str:
            return create_relay_token(listen_uri, DEFAULT_RULE_NAME, DEVELOPMENT_KEY)

        async with RelayedServer(listen_uri, listener_token, connection=_echo,
                                 request_handler=_answer) as server:
            _say("listener", f"control channel open ({server.state.value})")
            token = create_relay_token(send_uri, DEFAULT_RULE_NAME, DEVELOPMENT_KEY)
            ws = await relayed_connect(send_uri, token, subprotocols=["orders.v1"])
            _say("sender", f"connected through the relay, subprotocol {ws.subprotocol!r}")

            await ws.send("hello")
            _say("sender", f"sent 'hello', got back {await ws.recv()!r}")

            # Latency: one 64-byte message at a time, waiting for each echo.
            payload = b"x" * 64
            samples = []
            for _ in range(round_trips):
                start = time.perf_counter()
                await ws.send(payload)
                await ws.recv()
                samples.append(time.perf_counter() - start)
            samples.sort()
            p50 = statistics.median(samples) * 1e6
            p99 = samples[int(len(samples) * 0.99)] * 1e6
            _say(
                "latency", f"{round_trips} round trips of 64 B: p50 {p50:.0f} µs, p99 {p99:.0f} µs"
            )

            # Throughput: many 64-byte messages in flight, echoed back.
            async def reader(count: int) -> int:
                total = 0
                for _ in range(count):
                    total += len(await ws.recv())
                return total

            start = time.perf_counter()
            task = asyncio.create_task(reader(small))
            for _ in range(small):
                await ws.send(payload)
            await task
            elapsed = time.perf_counter() - start
            _say(
                "small",
                f"{small} messages of 64 B echoed: {small / elapsed:,.0f} messages/s each way",
            )

            blob = bytes(1024 * 1024)
            start = time.perf_counter()
            task = asyncio.create_task(reader(big))
            for _ in range(big):
                await ws.send(blob)
            received = await task
            elapsed = time.perf_counter() - start
            _say(
                "large",
                f"{big} messages of 1 MiB echoed: {received / elapsed / 1e6:,.0f} MB/s each way",
            )

            await ws.close(1000, "done")
            _say("sender", f"closed: {ws.close_code} {ws.close_reason!r}")
            # The same listener answers plain HTTP requests relayed to it (hyco-https style).
            url = f"http://127.0.0.1:{relay.port}/demo/orders?region=eu"
            http_token = create_relay_token(url, DEFAULT_RULE_NAME, DEVELOPMENT_KEY)
            async with relayed_request("GET", url, http_token) as response:
                _say("http", f"GET {url} -> {response.status} "
                     f"{(await response.read()).decode()!r}")
            upload = bytes(8 << 20)
            start = time.perf_counter()
            async with relayed_request("POST", url, http_token, body=upload) as response:
                answer = (await response.read()).decode()
            elapsed = time.perf_counter() - start
            _say("http", f"POST 8 MiB through the relay: {response.status} {answer!r}, "
                 f"{len(upload) / elapsed / 1e6:,.0f} MB/s")
        stats = relay.service.counters()
        print(
            f"relay stats: {stats.relayed_pairs} relayed pair(s), {stats.messages_relayed:,} "
            f"messages in {stats.frames_relayed:,} frames, {stats.bytes_relayed:,} payload "
            f"bytes relayed; {stats.http_requests} "
            f"HTTP request(s), {stats.http_bytes_relayed:,} body bytes"
        )
    return 0


async def run_webpubsub(*, messages: int = 5000) -> int:
    """Two of our Web PubSub clients and the REST API on the service's hub."""
    from .webpubsub.tokens import create_client_access, create_service_token

    print("hyco_proto demo: Web PubSub on the same service's hub (its own port)")
    service = RelayService(ServiceConfig(), webpubsub=WebPubSubService(DEVELOPMENT_KEY))
    async with RelayServiceServer(service, port=0, webpubsub_port=0) as hub:
        endpoint = hub.webpubsub_endpoint
        _say("hub", f"serving on {endpoint}")
        print(f"             connection string: {hub.webpubsub_connection_string}")
        roles = ["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"]

        def url_for(user: str) -> str:
            return create_client_access(endpoint, "demo", DEVELOPMENT_KEY, user_id=user,
                                        roles=roles, now=time.time()).url

        alice = WebPubSubClient(lambda: url_for("alice"))
        bob = WebPubSubClient(lambda: url_for("bob"))
        async with alice, bob:
            _say("clients", f"alice {alice.connection_id} and bob {bob.connection_id} "
                 "connected (json.reliable.webpubsub.azure.v1)")
            inbox = bob.messages(timeout=10)
            await bob.join_group("room")
            await alice.join_group("room")
            await alice.send_to_group("room", "hello", no_echo=True)
            first = await inbox.__anext__()
            assert isinstance(first, GroupMessage)
            _say("bob", f"got {first.value!r} from {first.from_user_id} in {first.group} "
                 f"(sequence id {first.sequence_id})")
            await alice.send_to_group("room", {"price": 42}, "json", no_echo=True)
            second = await inbox.__anext__()
            _say("bob", f"got JSON {second.value!r}")

            # Batches of 200: the hub keeps at most 1,000 messages a reliable client has not
            # acknowledged (sequenceAck) and closes a client that falls further behind.
            start = time.perf_counter()
            expected = 0
            for lowest in range(0, messages, 200):
                batch = range(lowest, min(lowest + 200, messages))
                for n in batch:
                    await alice.send_to_group("room", str(n), no_echo=True, ack=False)
                for n in batch:
                    got = await inbox.__anext__()
                    if got.value != str(n):
                        raise RuntimeError(f"bob got {got.value!r}, expected {n}")
                    expected += 1
            elapsed = time.perf_counter() - start
            _say("group", f"{expected} messages alice -> bob, in order: "
                 f"{expected / elapsed:,.0f} messages/s (batches of 200, no acks)")

            # The REST API, as the server SDKs call it (a bearer token for the request URL).
            rest = f"{endpoint}/api/hubs/demo/:send?api-version=2024-12-01"
            token = create_service_token(rest, DEVELOPMENT_KEY, now=time.time())
            request = urllib.request.Request(rest, data=b"to everyone", method="POST", headers={
                "Authorization": f"Bearer {token}", "Content-Type": "text/plain"})

            def post() -> int:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return int(response.status)

            status = await asyncio.to_thread(post)
            third = await inbox.__anext__()
            _say("rest", f"POST /api/hubs/demo/:send -> {status}; bob got {third.value!r} "
                 "from the server")
            inbox.close()
    return 0


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
    second = net.connect(send_uri, headers=[("ServiceBusAuthorization", token)])
    net.pump()
    assert second.rejected is not None
    _say("sender2", f"refused: {second.rejected.status} {second.rejected.reason}")
    net.advance(900)  # 15 virtual minutes: the 600 s token is renewed ahead of expiry
    renewals = sum(isinstance(e, TokenRenewed) for e in runner.events)
    _say("listener", f"15 minutes later: {renewals} token renewals, still listening")
    sender.close(1000, "done")
    net.pump()
    _say("sender", f"closed: {sender.closed}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hyco_proto.demo", description=__doc__)
    parser.add_argument(
        "--in-memory",
        action="store_true",
        help="run on the sans-IO cores with a virtual clock, no sockets",
    )
    args = parser.parse_args(argv)
    if args.in_memory:
        return run_in_memory()
    code = asyncio.run(run_sockets())
    print()
    return code or asyncio.run(run_webpubsub())


if __name__ == "__main__":
    raise SystemExit(main())
