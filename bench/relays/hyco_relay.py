"""Our relay: ``hyco_proto``'s ``RelayServiceServer`` (sans-IO service core, Cython forwarder) on
plain asyncio, with the development SAS rule (clients need valid tokens).

For measuring flow-control settings (``bench/relay_settings.py``): ``HYCO_BENCH_HIGH_WATER`` sets
``write_high_water`` and ``HYCO_BENCH_READ_BUFFER`` the read size; unset, the defaults."""

from __future__ import annotations

import asyncio
import os

from hyco_proto.adapters.asyncio import RelayServiceServer
from hyco_proto.adapters.asyncio import service as service_module

from ._common import HOST, announce, parse_args, prepare_process


async def serve(port: int) -> None:
    options = {}
    if "HYCO_BENCH_HIGH_WATER" in os.environ:
        options["write_high_water"] = int(os.environ["HYCO_BENCH_HIGH_WATER"])
    if "HYCO_BENCH_READ_BUFFER" in os.environ:
        service_module.READ_BUFFER_SIZE = int(os.environ["HYCO_BENCH_READ_BUFFER"])
    async with RelayServiceServer(host=HOST, port=port, **options) as server:
        announce(server.port)
        await asyncio.Event().wait()


def main() -> None:
    args = parse_args(__doc__ or "")
    prepare_process()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
