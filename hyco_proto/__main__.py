"""``python -m hyco_proto``: the ``hyco`` command line (see :mod:`hyco_proto.cli`)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
