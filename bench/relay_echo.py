"""Round trips THROUGH our relay, next to picows's direct echo (``bench/test_bench_relay_echo.py``).

Three processes: our relay (``bench/relays/hyco_relay.py``), our asyncio listener (this module,
``python -m bench.relay_echo --relay PORT``: a ``RelayedServer`` whose connection hook echoes
each message, written the way a user writes it) and the client process, whose one raw-socket
sender (:class:`RelayEchoClient`, the ``EchoClient`` loop: one pre-masked binary message, wait
for its whole echo, repeat) connects through the relay with a SAS token. A round trip crosses
the relay twice and the listener once, so twice the hops of a direct echo.

``python -m bench.relay_echo`` (no ``--relay``) runs the comparison without pytest: interleaved
rounds of the relayed echo and picows's direct echo per size, medians, CPU per round trip of
relay, listener and picows's server. ``--before DIR`` adds a relayed row whose listener runs
another checkout's ``hyco_proto`` (the relay is this checkout's in both), in the same rounds;
``--relay-before DIR`` one whose relay runs that checkout's (the listener is this checkout's).
``--splice`` adds picows's echo behind a ``socat`` splice (``bench/interleaved.py``'s
``SocatSplice``): the same hops as through the relay, with a middle process that only copies
bytes and a C echo server at the end, so the ratio no relay and listener can pass here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from bench.loadgen import (
    ECHO_SIZES,
    HC,
    HOST,
    ROOT,
    EchoClient,
    EchoServerProcess,
    LoadgenError,
    RelayProcess,
    ServerProcess,
    listed,
    positive,
)
from bench.relays._common import announce, prepare_process
from bench.tree import checkout
from hyco_proto.sas import create_relay_token
from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY

SIZES = ECHO_SIZES
T = TypeVar("T")
#: The label of the relayed figure and of the direct reference.
RELAYED = "hyco-relay+hyco-asyncio"
DIRECT = "picows-direct"
#: The relayed figure with ``--before``'s listener.
BEFORE = RELAYED + "@before"
#: The relayed figure with ``--relay-before``'s relay.
RELAY_BEFORE = RELAYED + "@relay-before"
#: picows's echo behind socat (``--splice``).
SPLICE = "socat+picows"


def _uri(relay_port: int) -> str:
    return f"ws://{HOST}:{relay_port}/$hc/{HC}"


# ------------------------------------------------------------------------------ the listener


async def listen(relay_port: int) -> None:
    """Our asyncio listener on the relay, echoing every message; announces once listening."""
    from hyco_proto.adapters.asyncio import RelayedServer, RelayedWebSocket

    uri = _uri(relay_port)

    async def echo(ws: RelayedWebSocket) -> None:
        async for message in ws:
            await ws.send(message)

    def token() -> str:
        return create_relay_token(uri, DEFAULT_RULE_NAME, DEVELOPMENT_KEY)

    async with RelayedServer(uri, token, connection=echo, max_size=None,
                             keepalive_interval=None):
        announce(relay_port)
        await asyncio.Event().wait()


class ListenerProcess(ServerProcess):
    """``python -m bench.relay_echo --relay PORT``; ready (``port`` read) once it listens."""

    def __init__(self, relay_port: int, root: Path = ROOT) -> None:
        super().__init__("hyco-asyncio listener", "bench.relay_echo", "--relay", str(relay_port),
                         root=root)


# ------------------------------------------------------------------------------ the sender


class RelayEchoClient(EchoClient):
    """``EchoClient`` whose connection is a relayed sender: ``sb-hc-action=connect`` with a SAS
    token in ``ServiceBusAuthorization`` (built before anything is timed), answered by the
    listener's 101 through the relay."""

    def __init__(self, relay_port: int, size: int, *,
                 server_cpu: Callable[[], float] | None = None) -> None:
        auth = [("ServiceBusAuthorization",
                 create_relay_token(_uri(relay_port), DEFAULT_RULE_NAME, DEVELOPMENT_KEY))]
        super().__init__(relay_port, size, target=f"/$hc/{HC}?sb-hc-action=connect&sb-hc-id=echo",
                         headers=auth, server_cpu=server_cpu)


class _Setup:
    """Processes and a client started in order and stopped in reverse, also when a later one
    fails to start (``started`` / ``stop``)."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()

    def started(self, thing: T, stop: Callable[[], object]) -> T:
        self._stack.callback(stop)
        return thing

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Stops what was started if the set-up fails."""
        try:
            yield
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self._stack.close()


class RelayedEcho(_Setup):
    """Relay + listener processes and one relayed sender; ``stop()`` ends all three."""

    def __init__(self, size: int, root: Path = ROOT, relay_root: Path = ROOT) -> None:
        super().__init__()
        with self.starting():
            self.relay = relay = RelayProcess("hyco_proto", relay_root)
            self.started(relay, relay.stop)
            self.listener = listener = ListenerProcess(relay.port, root)
            self.started(listener, listener.stop)
            self.client = client = RelayEchoClient(relay.port, size, server_cpu=self.cpu)
            self.started(client, client.close)

    def cpu(self) -> float:
        """CPU seconds of relay and listener together."""
        return self.relay.cpu() + self.listener.cpu()


class DirectEcho(_Setup):
    """picows's echo server (``bench/echo_servers.py``) and one direct ``EchoClient``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        with self.starting():
            self.server = server = EchoServerProcess("picows")
            self.started(server, server.stop)
            self.client = client = EchoClient(server.port, size, server_cpu=server.cpu)
            self.started(client, client.close)


class SplicedEcho(_Setup):
    """picows's echo server behind a ``socat`` splice, and one ``EchoClient`` through both."""

    def __init__(self, size: int) -> None:
        from bench.interleaved import SocatSplice

        super().__init__()
        with self.starting():
            self.server = server = EchoServerProcess("picows")
            self.started(server, server.stop)
            self.splice = splice = SocatSplice(target=server.port)
            self.started(splice, splice.stop)
            self.client = client = splice.connect(lambda port: EchoClient(port, size))
            self.started(client, client.close)


# ------------------------------------------------------------------------------ standalone


def _round(kind: str, size: int, seconds: float, before: Path | None = None,
           relay_before: Path | None = None) -> dict[str, float]:
    """One round: fresh processes, a warm-up, then round trips for ``seconds``."""
    relayed = kind in (RELAYED, BEFORE, RELAY_BEFORE)
    setup: Any = (RelayedEcho(size, before if kind == BEFORE and before else ROOT,
                              relay_before if kind == RELAY_BEFORE and relay_before else ROOT)
                  if relayed else SplicedEcho(size) if kind == SPLICE else DirectEcho(size))
    try:
        client = setup.client
        client.run(50)
        parts: list[Callable[[], float]] = (
            [setup.relay.cpu, setup.listener.cpu] if relayed
            else [setup.splice.cpu, setup.server.cpu] if kind == SPLICE else [setup.server.cpu])
        before = [part() for part in parts]
        step = 10 if size >= 100 * 1024 else 200
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            count += client.run(step)
        wall = time.perf_counter() - t0
        cpu = [(part() - b) / count * 1e6 for part, b in zip(parts, before, strict=True)]
        return {"rate": count / wall, "cpu_us": sum(cpu), **{f"cpu{i}": c
                                                             for i, c in enumerate(cpu)}}
    finally:
        setup.stop()


def measure(size: int, kinds: list[str], rounds: int, seconds: float,
            before: Path | None = None, relay_before: Path | None = None
            ) -> dict[str, dict[str, Any]]:
    """Interleaved rounds (every kind in turn, round after round, fresh processes each time):
    per kind, the median round trips/s and CPU µs per round trip of each part (``cpu0``,
    ``cpu1``: relay and listener, socat and picows, or picows's server alone), and every
    round's rate."""
    got: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    for _ in range(rounds):
        for kind in kinds:
            got[kind].append(_round(kind, size, seconds, before, relay_before))
    return {kind: {"rate": statistics.median(r["rate"] for r in runs),
                   **{key: statistics.median(r[key] for r in runs)
                      for key in runs[0] if key.startswith("cpu")},
                   "rounds": [round(r["rate"]) for r in runs]}
            for kind, runs in got.items()}


def compare(sizes: list[str], rounds: int, seconds: float, before: Path | None = None,
            splice: bool = False, relay_before: Path | None = None) -> None:
    """Interleaved rounds (relayed, direct, relayed, direct ...), medians, one line per size;
    with ``before``, a relayed row whose listener is that checkout's, and with
    ``relay_before`` one whose relay is, in the same rounds; with ``splice``, picows's echo
    behind socat."""
    kinds = ([RELAYED, DIRECT] + ([BEFORE] if before is not None else [])
             + ([RELAY_BEFORE] if relay_before is not None else [])
             + ([SPLICE] if splice else []))
    for label in sizes:
        result = measure(SIZES[label], kinds, rounds, seconds, before, relay_before)
        direct = result[DIRECT]
        for kind in kinds:
            if kind == DIRECT:
                continue
            med = result[kind]
            ratio = med["rate"] / direct["rate"]
            if kind == SPLICE:
                print(f"{label:>7}: {kind} {med['rate']:8,.0f} rt/s (socat "
                      f"{med['cpu0']:.1f} + picows {med['cpu1']:.1f} µs/rt); ratio "
                      f"to picows direct {ratio:.2f}x: the bound for any relay and listener "
                      f"(median of {rounds} interleaved rounds of {seconds:g} s)", flush=True)
                continue
            print(f"{label:>7}: {kind} {med['rate']:8,.0f} rt/s "
                  f"(relay {med['cpu0']:.1f} + listener {med['cpu1']:.1f} µs/rt); "
                  f"picows direct {direct['rate']:8,.0f} rt/s "
                  f"(server {direct['cpu0']:.1f} µs/rt); ratio {ratio:.2f}x "
                  f"(median of {rounds} interleaved rounds of {seconds:g} s)", flush=True)


def seconds(text: str) -> float:
    """An ``argparse`` type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # The listener process's own arguments (ServerProcess passes --port): not for users.
    parser.add_argument("--relay", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="256B,1MiB", type=listed(SIZES),
                        help=f"comma-separated, of {','.join(SIZES)}")
    parser.add_argument("--rounds", type=positive, default=5,
                        help="interleaved rounds (fresh processes each)")
    parser.add_argument("--seconds", type=seconds, default=1.0, help="per round")
    parser.add_argument("--before", type=checkout,
                        help="also a relayed row with this checkout's hyco_proto in the listener")
    parser.add_argument("--relay-before", type=checkout,
                        help="also a relayed row with this checkout's hyco_proto in the relay")
    parser.add_argument("--splice", action="store_true",
                        help="also picows's echo behind a socat splice (the hops of the relay "
                             "path, nothing done in them)")
    args = parser.parse_args()
    if args.relay is not None:
        prepare_process()
        asyncio.run(listen(args.relay))
        return
    try:
        compare(args.sizes, args.rounds, args.seconds,
                Path(args.before) if args.before is not None else None, args.splice,
                Path(args.relay_before) if args.relay_before is not None else None)
    except LoadgenError as exc:  # a process that did not start: its own message is above
        raise SystemExit(f"relay_echo: error: {exc}") from None


if __name__ == "__main__":
    main()
