"""Our relay: ``hyco_proto``'s ``RelayServiceServer`` (sans-IO service core, Cython forwarder) on
plain asyncio, with the development SAS rule (clients need valid tokens)."""

from __future__ import annotations

import asyncio

from hyco_proto.adapters.asyncio import RelayServiceServer

from ._common import HOST, announce, parse_args, prepare_process


async def serve(port: int) -> None:
    async with RelayServiceServer(host=HOST, port=port) as server:
        announce(server.port)
        await asyncio.Event().wait()


def main() -> None:
    args = parse_args(__doc__ or "")
    prepare_process()
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
