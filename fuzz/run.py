"""Run one fuzz target under atheris (libFuzzer) for a bounded time.

    python -m fuzz.run NAME [SECONDS]       # NAME from `python -m fuzz.run --list`
    python -m fuzz.run --all [SECONDS]      # every target, a table of inputs run

``make fuzz`` runs every target for ``FUZZ_SECONDS`` (default 20) each and prints how many
inputs each ran (libFuzzer's ``number_of_executed_units``). A crash stops the run, prints the
input and leaves it as ``crash-*`` in the working directory. The targets are the same ones the
hypothesis property tests call (``fuzz/targets.py``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def _targets() -> dict[str, Callable[[bytes], None]]:
    from fuzz import targets

    out: dict[str, Callable[[bytes], None]] = {}
    for target in targets.TEXT_TARGETS:
        def text(data: bytes, target: Callable[[str], None] = target) -> None:
            target(data.decode("utf-8", "surrogatepass") if _utf8ish(data)
                   else data.decode("latin-1"))
        out[f"text:{target.__name__}"] = text
    for index, btarget in enumerate(targets.BYTE_TARGETS):
        out[f"bytes:{btarget.__name__}:{index}"] = btarget
    for kernel in targets.kernels():
        short = kernel.__name__.rsplit(".", 1)[-1]

        def decoder(data: bytes, kernel: object = kernel) -> None:
            masked = bool(data[:1]) and data[0] & 1 == 1
            targets.frame_decoder(kernel, _chunks(data[1:]), masked)

        def forwarder(data: bytes, kernel: object = kernel) -> None:
            targets.forwarder(kernel, _chunks(data))

        out[f"frames:{short}:decoder"] = decoder
        out[f"frames:{short}:forwarder"] = forwarder
    for starget in targets.SESSION_TARGETS:
        out[f"session:{starget.__name__}"] = starget
    # Both kernels' UTF-8 validation (and the WebSocket connection's) against Python's decoder.
    out["utf8:differential"] = targets.utf8
    return out


def _utf8ish(data: bytes) -> bool:
    try:
        data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return False
    return True


def _chunks(data: bytes) -> list[bytes]:
    """Split at the first byte's value, so the fuzzer also explores where reads end."""
    if not data:
        return [b""]
    step = max(1, data[0])
    body = data[1:]
    return [body[i:i + step] for i in range(0, len(body), step)] or [b""]


def run_all(seconds: str) -> int:
    """Every target in its own process, one after another; a table of inputs run; non-zero
    exit when any target crashed (its output is shown)."""
    import re
    import subprocess

    failed = []
    print(f"{'target':40} {'inputs':>12} {'new units':>10} {'cov':>6} {'ft':>6} {'corpus':>7}"
          "  result")
    for name in _targets():
        # A session of its own: libFuzzer kills its process group when a target crashes.
        done = subprocess.run([sys.executable, "-m", "fuzz.run", name, seconds],
                              capture_output=True, text=True, timeout=float(seconds) + 120,
                              start_new_session=True)
        runs = re.search(r"number_of_executed_units: (\d+)", done.stderr)
        units = re.search(r"new_units_added: +(\d+)", done.stderr)
        # libFuzzer's last status line: "#N DONE cov: C ft: F corp: U/Sb ..."
        stats = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)/", done.stderr)
        cov, ft, corp = stats[-1] if stats else ("?", "?", "?")
        ok = done.returncode == 0
        print(f"{name:40} {runs.group(1) if runs else '?':>12} "
              f"{units.group(1) if units else '?':>10} {cov:>6} {ft:>6} {corp:>7}"
              f"  {'ok' if ok else 'CRASH'}", flush=True)
        if not ok:
            failed.append(name)
            print(done.stderr[-4000:], file=sys.stderr)
    if failed:
        print(f"crashed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    table = _targets()
    if len(argv) < 2 or argv[1] == "--list":
        print("\n".join(table))
        return 0
    if argv[1] == "--all":
        return run_all(argv[2] if len(argv) > 2 else "20")
    name = argv[1]
    if name not in table:
        print(f"unknown target {name!r}; --list shows them", file=sys.stderr)
        return 2
    seconds = argv[2] if len(argv) > 2 else "20"
    import os
    import re
    import shutil
    import tempfile

    import atheris  # the `fuzz` extra; make fuzz installs it

    from fuzz.seeds import seeds

    target = table[name]
    # The corpus starts as the seeds (well-formed examples, fuzz/seeds.py) in a directory of its
    # own, emptied first (libFuzzer exits the process, so it cannot clean up after itself).
    corpus = os.path.join(tempfile.gettempdir(), "hyco-fuzz-corpus", re.sub(r"\W", "_", name))
    shutil.rmtree(corpus, ignore_errors=True)
    os.makedirs(corpus)
    for index, seed in enumerate(seeds(name)):
        with open(os.path.join(corpus, f"seed-{index}"), "wb") as file:
            file.write(seed)
    atheris.instrument_all()  # coverage feedback from every module loaded (hyco_proto's)
    atheris.Setup([argv[0], f"-max_total_time={seconds}", "-print_final_stats=1",
                   "-rss_limit_mb=2048", corpus], target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
