"""CPU per rendezvous of the sans-IO relay core alone (no sockets, no event loop), A/B.

One ``RelayService`` in memory, one listener; each rendezvous is what the asyncio adapter feeds the
core for one relayed connection (``bench/loadgen.py``'s ``Session.rendezvous``): the sender's
upgrade request (``sb-hc-action=connect`` with a SAS token), the ``accept`` message read from the
control channel's output, the listener's rendezvous upgrade, both 101s, both connections ending
(EOF, then lost) — with ``next_deadline()`` after every call, as the adapter re-arms its timer.
Only the CPU time inside the core's calls is counted (``time.process_time``).

``python bench/rdv_core.py --tree before=/path/a --tree after=/path/b`` runs each tree's core in
its own process, interleaved (A, B, B, A, ...), and prints the medians in µs per rendezvous;
``--profile`` prints the cProfile top entries of one run of each tree instead. ``--phases``
times each part apart instead (a connection made, the sender's request up to the queued
``accept``, the listener's rendezvous up to both 101s, an EOF, a connection lost, and all the
``next_deadline()`` calls), in µs per rendezvous: more clock reads, so its total runs a little
above the plain run's. ``--idle N`` opens N connections first that never send a byte (spare or
slow clients in their handshake: each has a deadline the core keeps track of throughout).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _accept_request(out: list[tuple[int, Any]], control: int, decoder: Any,
                    accept_template: bytes) -> bytes:
    """The listener's rendezvous request for the ``accept`` the control channel got in
    ``out`` (the core's output after the sender's request)."""
    address = ""
    for conn, data in out:
        if conn == control:
            for _, payload, _ in decoder.feed(data):
                address = json.loads(bytes(payload))["accept"]["address"]
    target = address[address.index("/$hc/"):]
    return accept_template.replace(b"/$hc/bench?XXX", target.encode())


#: The parts ``--phases`` times.
PHASES = ("made", "connect", "accept", "eof", "lost", "deadline")


def _phases(svc: Any, control: int, decoder: Any, senders: list[bytes], accept_template: bytes,
            clock: float) -> dict[str, float]:
    """The rendezvous of ``_run``, each part timed apart: µs per rendezvous by part."""
    import time

    perf = time.process_time
    parts = dict.fromkeys(PHASES, 0.0)

    def deadline() -> None:
        t0 = perf()
        svc.next_deadline()
        parts["deadline"] += perf() - t0

    for i, sender_request in enumerate(senders):
        now = clock + (len(senders) + i) * 1e-4
        t0 = perf()
        s = svc.connection_made(now, ("127.0.0.1", 2000 + i % 60000))
        parts["made"] += perf() - t0
        deadline()
        t0 = perf()
        svc.receive_data(now, s, sender_request)
        out = svc.data_to_send()
        parts["connect"] += perf() - t0
        deadline()
        accept_request = _accept_request(out, control, decoder, accept_template)
        t0 = perf()
        a = svc.connection_made(now, ("127.0.0.1", 3000 + i % 60000))
        parts["made"] += perf() - t0
        deadline()
        t0 = perf()
        svc.receive_data(now, a, accept_request)
        svc.data_to_send()
        parts["accept"] += perf() - t0
        deadline()
        for phase, step in (("eof", svc.receive_eof), ("lost", svc.connection_lost)):
            for conn in (s, a):
                t0 = perf()
                step(now, conn)
                svc.data_to_send()
                parts[phase] += perf() - t0
                deadline()
    return {phase: spent / len(senders) * 1e6 for phase, spent in parts.items()}


def _run(root: str, count: int, profile: bool, phases: bool = False,
         idle: int = 0) -> float | dict[str, float]:
    """µs per rendezvous (core only); with ``phases``, one more run timed by part."""
    sys.path.insert(0, str(HERE.parent))
    from bench.tree import import_from_tree

    import_from_tree(root)  # or exit saying why (not a checkout, its kernel not built)
    import time

    from hyco_proto._frames import FrameDecoder
    from hyco_proto.handshake import ClientHandshake
    from hyco_proto.sas import create_relay_token
    from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY
    from hyco_proto.service.router import RelayService

    host = "127.0.0.1:9999"
    token = create_relay_token(f"ws://{host}/$hc/bench", DEFAULT_RULE_NAME, DEVELOPMENT_KEY)
    auth = [("ServiceBusAuthorization", token)]

    def request(target: str, headers: list[tuple[str, str]]) -> bytes:
        return ClientHandshake(host, target, headers=headers).data_to_send()

    svc = RelayService()
    clock = time.time()
    control = svc.connection_made(clock, ("127.0.0.1", 1))
    svc.receive_data(clock, control, request("/$hc/bench?sb-hc-action=listen&sb-hc-id=l1", auth))
    svc.data_to_send()
    for k in range(idle):  # (they never send: the handshake timeout, 10 s, is not reached)
        svc.connection_made(clock, ("127.0.0.1", 10000 + k))
    decoder = FrameDecoder(masked=False)
    senders = [request(f"/$hc/bench?sb-hc-action=connect&sb-hc-id=s{i}", auth)
               for i in range(count)]
    # The listener's request differs only in its target: built once, the target swapped in.
    accept_template = request("/$hc/bench?XXX", [])
    perf = time.process_time  # CPU time: a descheduled process is not charged
    spent = 0.0
    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
    for i, sender_request in enumerate(senders):
        now = clock + i * 1e-4
        t0 = perf()
        s = svc.connection_made(now, ("127.0.0.1", 2000 + i % 60000))
        svc.next_deadline()
        svc.receive_data(now, s, sender_request)
        out = svc.data_to_send()
        svc.next_deadline()
        spent += perf() - t0
        accept_request = _accept_request(out, control, decoder, accept_template)
        t0 = perf()
        a = svc.connection_made(now, ("127.0.0.1", 3000 + i % 60000))
        svc.next_deadline()
        svc.receive_data(now, a, accept_request)
        out = svc.data_to_send()
        svc.next_deadline()
        for conn in (s, a):
            svc.receive_eof(now, conn)
            svc.data_to_send()
            svc.next_deadline()
        for conn in (s, a):
            svc.connection_lost(now, conn)
            svc.data_to_send()
            svc.next_deadline()
        spent += perf() - t0
        if sum(data.startswith(b"HTTP/1.1 101 ") for _, data in out) != 2:
            raise RuntimeError(f"rendezvous {i}: no two 101s: {out!r}")
    if phases:
        return _phases(svc, control, decoder, senders, accept_template, clock)
    if profile:
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return spent / count * 1e6


def main() -> int:
    sys.path.insert(0, str(HERE.parent))
    from bench.tree import positive  # (not from bench.loadgen: no hyco_proto before the tree's)

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tree", action="append",
                        help="LABEL=PATH, a checkout with its extension built; repeat it for "
                             "an A/B (none given: this checkout, labelled 'this')")
    parser.add_argument("--rounds", type=positive, default=7,
                        help="interleaved rounds (default: 7)")
    parser.add_argument("--count", type=positive, default=3000,
                        help="rendezvous per round (default: 3000)")
    parser.add_argument("--profile", action="store_true",
                        help="one run per tree under cProfile: its top entries instead")
    parser.add_argument("--phases", action="store_true",
                        help="time each part apart (µs per rendezvous: a connection made, "
                             "the sender's request, the listener's rendezvous, EOF, lost, "
                             "next_deadline)")
    parser.add_argument("--idle", type=int, default=0,
                        help="connections open throughout that never send a byte (default: 0)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_run(args.child, args.count, args.profile, args.phases, args.idle)))
        return 0
    trees = [t.split("=", 1) for t in (args.tree or [f"this={HERE.parent}"])]
    results: dict[str, list[float]] = {label: [] for label, _ in trees}
    by_phase: dict[str, dict[str, list[float]]] = {label: {} for label, _ in trees}
    for rnd in range(1 if args.profile else args.rounds):
        order = trees if rnd % 2 == 0 else trees[::-1]
        for label, root in order:
            done = subprocess.run(
                [sys.executable, str(HERE / "rdv_core.py"), "--child", root,
                 "--count", str(args.count), *(["--profile"] if args.profile else []),
                 *(["--phases"] if args.phases else []), "--idle", str(args.idle)],
                capture_output=True, text=True, timeout=600)
            if done.returncode:
                sys.exit(f"{label} ({root}): {done.stderr.strip().splitlines()[-1:] or done}")
            out = done.stdout
            if args.profile:
                print(f"== {label}\n{out}")
            value = json.loads(out.strip().splitlines()[-1])
            if isinstance(value, dict):
                for phase, us in value.items():
                    by_phase[label].setdefault(phase, []).append(us)
                us = sum(value.values())
            else:
                us = value
            results[label].append(us)
            print(f"round {rnd} {label:8} {us:7.1f} µs per rendezvous", flush=True)
    for label, values in results.items():
        print(f"{label:8} median {statistics.median(values):7.1f} µs per rendezvous "
              f"(core only, median of {len(values)} "
              f"round{'s' if len(values) != 1 else ''} of {args.count})")
        if by_phase[label]:
            print(" " * 9 + "  ".join(f"{phase} {statistics.median(v):.1f}"
                                      for phase, v in by_phase[label].items()) + "  (µs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
