"""Our relay's flow-control settings measured against each other, in interleaved rounds.

``python -m bench.relay_settings [--size 1MiB|64B] [--rounds N]`` starts one relay process per
setting (each ``write_high_water`` with each read size, through ``bench/relays/hyco_relay.py``'s
``HYCO_BENCH_*`` variables), opens one relayed pair on each and streams through them in turn
(``bench/interleaved.py``); it prints the median MB/s and the relay's CPU per MB for each. The
defaults in ``hyco_proto/adapters/asyncio/service.py`` were chosen from this.
"""

from __future__ import annotations

import argparse
import contextlib

from bench import interleaved, loadgen
from bench.loadgen import BIG, SMALL

HIGH_WATERS = [64 << 10, 256 << 10, 1 << 20, 4 << 20]
READ_SIZES = [256 << 10, 1 << 20, 2 << 20, 4 << 20]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size", choices=["64B", "1MiB"], default="1MiB")
    parser.add_argument("--rounds", type=loadgen.positive, default=5)
    parser.add_argument("--high-waters", type=loadgen.listed((), numbers=True),
                        default=[str(h) for h in HIGH_WATERS],
                        help="write_high_water values, bytes, comma-separated")
    parser.add_argument("--read-sizes", type=loadgen.listed((), numbers=True),
                        default=[str(r) for r in READ_SIZES],
                        help="read sizes, bytes, comma-separated")
    args = parser.parse_args(argv)
    size = BIG if args.size == "1MiB" else SMALL
    loadgen.raise_fd_limit()
    found = []
    with contextlib.ExitStack() as stack:
        for high in (int(h) for h in args.high_waters):
            for read in (int(r) for r in args.read_sizes):
                env = {"HYCO_BENCH_HIGH_WATER": str(high), "HYCO_BENCH_READ_BUFFER": str(read)}
                stream = interleaved.relay_stream(
                    stack, loadgen.RelayProcess("hyco_proto", env=env), size)
                stack.callback(stream.close)
                found.append(interleaved.Contender(
                    f"high water {high >> 10:>5} KiB, read {read >> 10:>5} KiB", stream))
        interleaved.run_rounds(found, args.rounds)
        for contender in found:
            cpu = contender.stream.stats.summary()["relay_cpu"]
            mbs = contender.median() * size / 1e6
            rate = f"{mbs:8,.0f} MB/s" if size == BIG else f"{contender.median():14,.0f} msg/s"
            print(f"{contender.label}: {rate}  relay {cpu:.2f} cores, "
                  f"{cpu / mbs * 1e6:6.1f} µs CPU per MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
