"""Importing ``hyco_proto`` from another checkout, for the benchmarks' before/after runs, and
the ``argparse`` type the tools share.

Imports nothing of ``hyco_proto`` itself (``bench.loadgen`` does), so it can run first.
"""

from __future__ import annotations

import argparse
import os
import sys


def positive(text: str) -> int:
    """An ``argparse`` type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def checkout(text: str) -> str:
    """An ``argparse`` type: the path of a hyco_proto checkout (its ``hyco_proto`` package)."""
    if not os.path.isfile(os.path.join(text, "hyco_proto", "__init__.py")):
        raise argparse.ArgumentTypeError(
            f"{text} is not a hyco_proto checkout (no hyco_proto/__init__.py there)")
    return os.path.realpath(text)


def import_from_tree(tree: str) -> None:
    """Import ``hyco_proto`` and its frame kernel from checkout ``tree`` (a before/after), or
    exit saying why not: an editable install would otherwise quietly fill in what ``tree``
    lacks (the package, or its compiled kernel) from this checkout."""
    root = os.path.realpath(tree)
    if not os.path.isfile(os.path.join(root, "hyco_proto", "__init__.py")):
        sys.exit(f"{tree} is not a hyco_proto checkout (no hyco_proto/__init__.py there)")
    sys.path.insert(0, root)
    import hyco_proto
    import hyco_proto.frames as frames

    sys.path.remove(root)
    kernel = sys.modules[f"hyco_proto._frames{'' if frames.IMPLEMENTATION == 'cython' else '_py'}"]
    for mod in (hyco_proto, kernel):
        if not os.path.realpath(mod.__file__ or "").startswith(root + os.sep):
            sys.exit(f"{mod.__name__} came from {mod.__file__}, not from {tree}: build the "
                     f"extension there first (cd {tree} && HYCO_PROTO_BUILD_EXTENSION=yes "
                     f"python setup.py -q build_ext --inplace)")
