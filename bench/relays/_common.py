"""What every relay process shares: arguments, the port announcement, the parent watchdog, and
parsing relay targets (``/$hc/{hc}[/suffix]?sb-hc-action=…&sb-hc-id=…``)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
from urllib.parse import parse_qsl, urlsplit

HOST = "127.0.0.1"


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    return parser.parse_args()


def prepare_process() -> None:
    """Allow many sockets (the idle-pair benchmark opens ~1000) and exit when the parent does:
    the parent holds our stdin open; EOF means it is gone, so no relay outlives a benchmark."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def watch() -> None:
        try:
            sys.stdin.buffer.read()
        finally:
            os._exit(0)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def announce(port: int) -> None:
    print(f"PORT {port}", flush=True)


def parse_target(target: str) -> tuple[str, str, str] | None:
    """``(hc, action, id)`` for a relay target, or None when the path is not ``/$hc/…``.
    A missing action means connect (hybrid-connections-wire §1.2)."""
    parts = urlsplit(target)
    if not parts.path.lower().startswith("/$hc/"):
        return None
    hc = parts.path[5:].strip("/").split("/", 1)[0].lower()
    if not hc:
        return None
    action, ident = "connect", ""
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        key = key.lower()
        if key == "sb-hc-action":
            action = value.lower()
        elif key == "sb-hc-id":
            ident = value
    return hc, action, ident


def accept_message(port: int, hc: str, ident: str) -> str:
    """The control-channel ``accept`` command (hybrid-connections-wire §3.1)."""
    address = f"ws://{HOST}:{port}/$hc/{hc}?sb-hc-action=accept&sb-hc-id={ident}"
    return json.dumps(
        {"accept": {"address": address, "id": ident, "connectHeaders": {},
                    "remoteEndpoint": {"address": "127.0.0.1", "port": 0}}},
        separators=(",", ":"),
    )


class IdSource:
    """Accept ids: the sender's ``sb-hc-id`` when given and unused, else a counter."""

    def __init__(self) -> None:
        self._next = 0

    def new(self, wanted: str, taken: object) -> str:
        if wanted and wanted not in taken:  # type: ignore[operator]
            return wanted
        self._next += 1
        return f"{wanted or 'c'}_{self._next}"
