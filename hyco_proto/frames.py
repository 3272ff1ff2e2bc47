"""The frame kernel in use: Cython ``_frames`` when built, else the pure-Python ``_frames_py``.

``HYCO_PROTO_NO_EXTENSIONS=1`` forces the pure-Python twin; ``HYCO_PROTO_REQUIRE_EXTENSION=1``
turns a missing extension into an ImportError (CI uses it so a failed build cannot pass silently).
``IMPLEMENTATION`` is ``"cython"`` or ``"python"``; ``describe()`` says it in words, and why
(``hyco --version`` and the emulator's banner print it).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = [
    "FORWARD_HEADROOM",
    "IMPLEMENTATION",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Forwarder",
    "FrameDecoder",
    "Wakeup",
    "apply_mask",
    "apply_mask_inplace",
    "check_close_payload",
    "decode_header",
    "describe",
    "encode_frame",
    "encode_header",
    "encode_masked",
]

_NO_EXT = os.environ.get("HYCO_PROTO_NO_EXTENSIONS", "") not in ("", "0")
_REQUIRE_EXT = os.environ.get("HYCO_PROTO_REQUIRE_EXTENSION", "") not in ("", "0")


def _load() -> tuple[ModuleType, str]:
    if not _NO_EXT:
        try:
            return importlib.import_module("hyco_proto._frames"), "cython"
        except ImportError:
            if _REQUIRE_EXT:
                raise ImportError(
                    "HYCO_PROTO_REQUIRE_EXTENSION is set but hyco_proto._frames is not built; "
                    "run `make setup` (or `python setup.py build_ext --inplace`)"
                ) from None
    return importlib.import_module("hyco_proto._frames_py"), "python"


if TYPE_CHECKING:
    # Both kernels have this API (``_frames.pyi``); type checkers read the Python twin.
    from ._frames_py import (
        FORWARD_HEADROOM,
        OP_BINARY,
        OP_CLOSE,
        OP_CONTINUATION,
        OP_PING,
        OP_PONG,
        OP_TEXT,
        Forwarder,
        FrameDecoder,
        Wakeup,
        apply_mask,
        apply_mask_inplace,
        check_close_payload,
        decode_header,
        encode_frame,
        encode_header,
        encode_masked,
    )

    IMPLEMENTATION = "python"
else:
    _impl, IMPLEMENTATION = _load()
    globals().update({name: getattr(_impl, name) for name in __all__
                      if name not in ("IMPLEMENTATION", "describe")})


def describe() -> str:
    """The kernel in use, for people (short: ``hyco --version`` prints it on one line)."""
    if IMPLEMENTATION == "cython":
        return "cython (compiled extension)"
    if _NO_EXT:
        return "python (HYCO_PROTO_NO_EXTENSIONS is set)"
    return "python (pure-Python fallback; slower)"
