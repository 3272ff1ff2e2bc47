"""Turn a pytest-benchmark JSON file into bench/RESULTS.md (tables) and bench/results.png (chart).

Usage: python -m bench.report .benchmarks/latest.json
Each benchmark's ``extra_info`` says how many frames and bytes one call moves; rates come from the
median time. Ratios compare every row with ``hyco-cython`` in the same group (same run).
"""

from __future__ import annotations

import json
import platform
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _impl(name: str) -> str:
    match = re.search(r"\[(.+)\]", name)
    label = match.group(1) if match else name
    return re.sub(r"-\d+(B|KiB|MiB)$", "", label)


def _rate(value: float, unit: str) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def _time(seconds: float) -> str:
    for scale, unit in ((1, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if seconds >= scale:
            return f"{seconds / scale:.2f} {unit}"
    return f"{seconds * 1e9:.0f} ns"


def load(path: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    data = json.loads(path.read_text())
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for bench in data["benchmarks"]:
        median = bench["stats"]["median"]
        info = bench.get("extra_info", {})
        row = {
            "impl": _impl(bench["name"]),
            "median": median,
            "frames_s": info.get("frames", 1) / median,
            "bytes_s": info.get("bytes", 0) / median,
            "info": info,
        }
        groups[bench["group"] or bench["name"]].append(row)
    return groups, data.get("machine_info", {})


def write_markdown(groups: dict[str, list[dict[str, Any]]], machine: dict[str, Any],
                   out: Path) -> None:
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (pytest-benchmark, one run; every peer measured in the same run).",
        f"Machine: {machine.get('cpu', {}).get('brand_raw', platform.processor())}, "
        f"{machine.get('cpu', {}).get('count', '?')} cores, Python "
        f"{machine.get('python_version', platform.python_version())}.",
        "Ratios are against `hyco-cython` in the same group (>1 means faster than ours).",
        "",
    ]
    for group in sorted(groups):
        rows = sorted(groups[group], key=lambda r: r["median"])
        ours = next((r for r in rows if r["impl"] == "hyco-cython"), None)
        lines += [f"## {group}", "", "| implementation | median per call | per second | "
                  "throughput | vs hyco-cython |", "|---|---|---|---|---|"]
        for r in rows:
            ratio = f"{ours['median'] / r['median']:.2f}×" if ours else "–"
            per = _rate(r["frames_s"], "frames/s" if r["info"].get("frames", 1) > 1 else "ops/s")
            thr = _rate(r["bytes_s"], "B/s") if r["bytes_s"] else "–"
            lines.append(f"| {r['impl']} | {_time(r['median'])} | {per} | {thr} | {ratio} |")
        lines.append("")
    lines += ["![chart](results.png)", ""]
    out.write_text("\n".join(lines))


def write_chart(groups: dict[str, list[dict[str, Any]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(groups)
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 1.2 + 1.0 * sum(
        len(groups[n]) for n in names) / 2), squeeze=False)
    for ax, group in zip(axes[:, 0], names, strict=True):
        rows = sorted(groups[group], key=lambda r: r["median"], reverse=True)
        speed = [1.0 / r["median"] for r in rows]
        colors = ["tab:orange" if r["impl"].startswith("hyco") else "tab:blue" for r in rows]
        ax.barh([r["impl"] for r in rows], speed, color=colors)
        ax.set_xscale("log")
        ax.set_title(group, fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        ax.set_xlabel("calls per second (log scale; longer is faster)", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    groups, machine = load(Path(argv[0]))
    write_markdown(groups, machine, HERE / "RESULTS.md")
    write_chart(groups, HERE / "results.png")
    print(f"wrote {HERE / 'RESULTS.md'} and {HERE / 'results.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
