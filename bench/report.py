"""Turn a pytest-benchmark JSON file into bench/RESULTS.md (tables) and bench/results.png (chart).

Usage: python -m bench.report .benchmarks/latest.json
Each benchmark's ``extra_info`` says how many frames and bytes one call moves; rates come from the
median time. Ratios compare every row with ours (``hyco-cython``, or ``hyco_proto`` for the relay
groups) in the same group (same run). When the relay benchmarks ran (``bench/test_bench_relay.py``),
a summary table comes first: ours against the websockets and picows relays, the targets, and the
load generator's own ceiling. When the echo benchmarks ran (``bench/test_bench_echo.py``), an
"Echo, one connection" table follows: round trips/s per server and message size, with the ratio to
picows, the client's ceiling (raw TCP echo), CPU per round trip, and our adapters that were absent.
"""

from __future__ import annotations

import json
import platform
import re
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _impl(name: str) -> str:
    match = re.search(r"\[(.+)\]", name)
    label = match.group(1) if match else name
    label = re.sub(r"^\d+(B|KiB|MiB)-", "", label)  # size-first ids (mask benchmarks)
    label = re.sub(r"^(small|upload|download)-", "", label)  # case-first ids (HTTP benchmarks)
    return re.sub(r"-(\d+(B|KiB|MiB)|seq|x\d+)$", "", label)


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


# Written as escapes: ruff (RUF001) flags these characters in string literals.
TIMES = "\u00d7"
DASH = "\u2013"
OURS = ("hyco-cython", "hyco_proto", "relay+hyco_proto")
RELAY_PEERS = ("hyco_proto", "websockets", "picows")


def _ours(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    for name in OURS:
        found = next((r for r in rows if r["impl"] == name), None)
        if found is not None:
            return found
    return None


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


#: Sections written by hand from other runs (``make load``): kept as they are in the file.
KEPT_SECTIONS = ("## Load on one emulator process",)


def kept_sections(path: Path) -> list[str]:
    """The lines of ``KEPT_SECTIONS`` in the current ``path``, each up to the next ``## ``."""
    if not path.exists():
        return []
    kept: list[str] = []
    keep = False
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            keep = line.startswith(KEPT_SECTIONS)
        if keep:
            kept.append(line)
    return kept


def write_markdown(groups: dict[str, list[dict[str, Any]]], machine: dict[str, Any],
                   out: Path, echo_absent: dict[str, str] | None = None) -> None:
    kept = kept_sections(out)
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (pytest-benchmark, one run; every peer measured in the same run).",
        f"Machine: {machine.get('cpu', {}).get('brand_raw', platform.processor())}, "
        f"{machine.get('cpu', {}).get('count', '?')} cores, Python "
        f"{machine.get('python_version', platform.python_version())}.",
        "Ratios are against ours (`hyco-cython`; `hyco_proto` in relay groups) in the same group "
        "(>1 means faster than ours).",
        "",
    ]
    lines += relay_summary(groups)
    lines += interleaved_summary(groups)
    lines += rendezvous_interleaved(groups)
    lines += echo_summary(groups, echo_absent or {})
    lines += echo_interleaved(groups)
    lines += relay_echo_summary(groups)
    lines += http_summary(groups)
    lines += wps_summary(groups)
    lines += kept
    for group in sorted(groups):
        if group.startswith(INTERLEAVED_GROUP):
            continue  # one call holding every round: its table is above
        rows = sorted(groups[group], key=lambda r: r["median"])
        ours = _ours(rows)
        lines += [f"## {group}", "", "| implementation | median per call | per second | "
                  "throughput | vs ours |", "|---|---|---|---|---|"]
        for r in rows:
            # Rates, not times: relay runs are sized per relay, so calls move different amounts.
            ratio = f"{r['frames_s'] / ours['frames_s']:.2f}{TIMES}" if ours else DASH
            unit = r["info"].get("unit", "frames" if r["info"].get("frames", 1) > 1 else "ops")
            per = _rate(r["frames_s"], f"{unit}/s")
            thr = _rate(r["bytes_s"], "B/s") if r["bytes_s"] else DASH
            lines.append(f"| {r['impl']} | {_time(r['median'])} | {per} | {thr} | {ratio} |")
        lines.append("")
    lines += ["![chart](results.png)", ""]
    out.write_text("\n".join(lines))


def _relay_rows(groups: dict[str, list[dict[str, Any]]], prefix: str) -> dict[str, dict[str, Any]]:
    for group, rows in groups.items():
        if group.startswith(prefix):
            return {r["impl"]: r for r in rows}
    return {}


def relay_summary(groups: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The relay comparison at a glance: one row per figure, ours against both peer relays."""
    small = _relay_rows(groups, "relay: 64 B")
    if not small:
        return []
    big = _relay_rows(groups, "relay: 1 MiB")
    seq = _relay_rows(groups, "relay: rendezvous, sequential")
    conc = _relay_rows(groups, "relay: rendezvous, 16")
    idle = _relay_rows(groups, "relay: 500 idle")
    ceiling_small = _relay_rows(groups, "loadgen ceiling: no relay, loopback TCP, 64 B")
    ceiling_big = _relay_rows(groups, "loadgen ceiling: no relay, loopback TCP, 1 MiB")

    def msgs(r: dict[str, Any]) -> float:
        return float(r["frames_s"])

    def mbs(r: dict[str, Any]) -> float:
        return float(r["bytes_s"]) / 1e6

    def kib(r: dict[str, Any]) -> float:
        return float(r["info"].get("kib_per_pair", float("nan")))

    # (label, rows, value, format, higher is better, target test or None, target text)
    # Targets: issue 14 (the 1 MiB ones are judged on the interleaved rounds below).
    metrics: list[tuple[str, dict[str, dict[str, Any]], Any, str, bool, Any, str]] = [
        ("64 B messages/s", small, msgs, "{:,.0f}", True,
         lambda v: v["hyco_proto"] >= 50 * v["picows"], f"≥ 50{TIMES} picows"),
        ("1 MiB messages, MB/s", big, mbs, "{:,.0f}", True, None, "see interleaved rounds"),
        ("rendezvous/s, sequential", seq, msgs, "{:,.0f}", True, None,
         "see interleaved rounds"),
        ("rendezvous/s, 16 in flight", conc, msgs, "{:,.0f}", True, None,
         "see interleaved rounds"),
        ("KiB per idle pair (RSS)", idle, kib, "{:.1f}", False,
         lambda v: v["hyco_proto"] <= 64, "≤ 64 KiB"),
    ]
    lines = [
        "## Relay comparison (loopback, one relay process at a time)",
        "",
        "Sender→listener through each relay, driven by one raw-socket load generator "
        "(`bench/loadgen.py`). MB = 10⁶ bytes. Ratios are ours ÷ peer (for memory, lower is "
        "better, so a ratio below 1 means ours uses less).",
        "",
        "| figure | hyco_proto | websockets | picows | ours ÷ websockets | ours ÷ picows "
        "| target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, rows, value, fmt, _higher, check, target in metrics:
        if not all(name in rows for name in RELAY_PEERS):
            continue
        values = {name: value(rows[name]) for name in RELAY_PEERS}
        cells = [fmt.format(values[name]) for name in RELAY_PEERS]
        ratios = [f"{values['hyco_proto'] / values[p]:.2f}{TIMES}" if values[p] else DASH
                  for p in ("websockets", "picows")]
        met = ("yes" if check(values) else "**no**") if check else ""
        lines.append(f"| {label} | {' | '.join(cells)} | {' | '.join(ratios)} | {target} "
                     f"| {met} |")
    lines.append("")
    if ceiling_small or ceiling_big:
        fastest_small = max((msgs(r) for r in small.values()), default=0.0)
        fastest_big = max((mbs(r) for r in big.values()), default=0.0)
        lines += ["Load generator alone (sender and counter joined over loopback TCP, no relay): "]
        parts = []
        for rows, value, unit, fastest in ((ceiling_small, msgs, "64 B messages/s", fastest_small),
                                           (ceiling_big, mbs, "MB/s with 1 MiB messages",
                                            fastest_big)):
            for r in rows.values():
                ratio = f" ({value(r) / fastest:.1f}{TIMES} the fastest relay)" if fastest else ""
                parts.append(f"{value(r):,.0f} {unit}{ratio}")
        lines += ["; ".join(parts) + ".", ""]
    cpu_rows = [(label, rows) for label, rows, *_ in metrics[:4]
                if all(name in rows for name in RELAY_PEERS)]
    if cpu_rows:
        lines += ["CPU use during the timed runs, in cores (relay process / load generator):", "",
                  "| figure | " + " | ".join(RELAY_PEERS) + " |",
                  "|---|" + "---|" * len(RELAY_PEERS)]
        for label, rows in cpu_rows:
            cells = [f"{rows[n]['info'].get('relay_cpu', 0):.2f} / "
                     f"{rows[n]['info'].get('loadgen_cpu', 0):.2f}" for n in RELAY_PEERS]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        efficiency = [(label, rows, value) for label, rows, value, *_ in metrics[:2]
                      if all(rows[n]["info"].get("relay_cpu") for n in RELAY_PEERS)]
        if efficiency:
            lines += ["Per relay CPU-second (rate ÷ relay cores; shows relay cost when the "
                      "machine, not the relay, limits the rate):", "",
                      "| figure | " + " | ".join(RELAY_PEERS) + " | ours ÷ websockets "
                      "| ours ÷ picows |", "|---|" + "---|" * (len(RELAY_PEERS) + 2)]
            for label, rows, value in efficiency:
                per = {n: value(rows[n]) / rows[n]["info"]["relay_cpu"] for n in RELAY_PEERS}
                cells = [f"{per[n]:,.0f}" for n in RELAY_PEERS]
                ratios = [f"{per['hyco_proto'] / per[p]:.2f}{TIMES}"
                          for p in ("websockets", "picows")]
                lines.append(f"| {label} | " + " | ".join(cells + ratios) + " |")
            lines.append("")
    return lines


INTERLEAVED_GROUP = "relay: interleaved rounds"
RDV_INTERLEAVED_GROUP = "relay: rendezvous, interleaved rounds"


def rendezvous_interleaved(groups: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Rendezvous/s of our relay and the picows relay in interleaved rounds, with issue 14's
    targets (``test_relay_rendezvous_interleaved``)."""
    rows = _relay_rows(groups, RDV_INTERLEAVED_GROUP)
    if not rows:
        return []
    info = next(iter(rows.values()))["info"]
    data = info["interleaved"]
    lines = ["### Interleaved rounds: rendezvous per second",
             "",
             f"Our relay and the picows relay, both started first; each of {info['rounds']} "
             f"rounds runs {info['per_round']} rendezvous on each in turn, one at a time and 16 "
             "in flight, so the machine's drift hits both alike (the rows above ran one relay "
             "after the other). In brackets: ours ÷ picows.",
             "",
             "| relay | sequential, median | every round | 16 in flight, median | every round |",
             "|---|---|---|---|---|"]
    ours = data["hyco_proto"]
    for name, row in data.items():
        cells = []
        for key in ("x1", "x16"):
            value = float(row[key]["median"])
            ratio = "" if name == "hyco_proto" else \
                f" ({float(ours[key]['median']) / value:.2f}{TIMES})"
            cells += [f"{value:,.0f}{ratio}",
                      ", ".join(f"{float(r):,.0f}" for r in row[key]["rounds"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    seq = float(ours["x1"]["median"]) / float(data["picows"]["x1"]["median"])
    conc_ours = float(ours["x16"]["median"])
    conc = conc_ours / float(data["picows"]["x16"]["median"])
    checks = [(f"sequential ≥ 1.5{TIMES} picows", seq >= 1.5),
              (f"16 in flight ≥ 1.5{TIMES} picows and ≥ 2,000/s",
               conc >= 1.5 and conc_ours >= 2000)]
    lines += ["", "Targets: " + "; ".join(f"{text}: {'met' if ok else '**not met**'}"
                                          for text, ok in checks) + ".", ""]
    return lines


def interleaved_summary(groups: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Medians of interleaved rounds (``bench/interleaved.py``), with issue 14's targets."""
    tables = []
    for size, title in (("1 MiB", "1 MiB messages, MB/s"), ("64 B", "64 B messages/s")):
        rows = _relay_rows(groups, f"{INTERLEAVED_GROUP}, {size}")
        if rows:
            tables.append((size, title, next(iter(rows.values()))["info"]))
    if not tables:
        return []
    lines = ["### Interleaved rounds: our relay, the picows relay, socat and the load generator",
             "",
             "Every contender set up first (its process, one relayed pair), then each round runs "
             "every one in turn for about 0.4 s (`bench/interleaved.py`); medians of the rounds, "
             "so this shared machine's drift hits all alike. `socat` (Debian's, "
             f"`-b {tables[0][2].get('socat_buffer', '?')}`) "
             "only copies the TCP byte stream between the two sockets (the load generator's "
             "counter unmasks the frames itself): the physical limit for a relay process here. "
             "`loadgen ceiling`: sender and counter joined directly, no relay (the 64 B "
             "target's yardstick). `loadgen ceiling (one core)`: the same with the generator's "
             "sender and counter threads held on one CPU while it runs; context only, it shows "
             "how far the ceiling moves with where the scheduler puts those two threads. "
             "In brackets: ours ÷ that contender.", ""]
    for size, title, info in tables:
        data = info["interleaved"]
        big = size == "1 MiB"
        ours = float(data["hyco_proto"]["median_mbs" if big else "median_msgs"])
        lines += [f"{title}, median of {info['rounds']} rounds:", "",
                  "| contender | median | every round | CPU: relay / load generator |",
                  "|---|---|---|---|"]
        for name, row in data.items():
            key = "median_mbs" if big else "median_msgs"
            value = float(row[key])
            rounds = [float(r) * (info["message_size"] / 1e6 if big else 1)
                      for r in row["rounds_msgs"]]
            ratio = "" if name == "hyco_proto" else f" ({ours / value:.2f}{TIMES})"
            relay_cpu = (DASH if name.startswith("loadgen ceiling")
                         else f"{row['relay_cpu']:.2f}")
            lines.append(f"| {name} | {value:,.0f}{ratio} | "
                         f"{', '.join(f'{r:,.0f}' for r in rounds)} | "
                         f"{relay_cpu} / {row['loadgen_cpu']:.2f} |")
        if big:
            checks = [(f"≥ 0.95{TIMES} socat", ours >= 0.95 * float(data["socat"]["median_mbs"])),
                      (f"≥ 1.2{TIMES} picows", ours >= 1.2 * float(data["picows"]["median_mbs"]))]
        else:
            checks = [(f"≥ 50{TIMES} picows", ours >= 50 * float(data["picows"]["median_msgs"])),
                      ("within 10 % of the load generator's ceiling",
                       ours >= 0.9 * float(data["loadgen ceiling"]["median_msgs"]))]
        lines += ["", "Targets: " + "; ".join(f"{text}: {'met' if ok else '**not met**'}"
                                              for text, ok in checks) + ".", ""]
    return lines


ECHO_SIZES = ("256 B", "8 KiB", "100 KiB", "1 MiB")
ECHO_GROUP = "echo, one connection: {} messages"
ECHO_CEILING = "loadgen ceiling: echo over raw TCP, {} messages"
ECHO_ORDER = ("hyco-asyncio", "hyco-threads", "hyco-gevent", "hyco-asyncio+uvloop", "picows",
              "picows+uvloop", "websockets-asyncio", "websockets-sync", "aiohttp")
ECHO_REFERENCE = "picows"


ECHO_INTERLEAVED_GROUP = "echo, one connection: interleaved rounds"
ECHO_INTERLEAVED_SIZES = {"256B": "256 B", "8KiB": "8 KiB", "100KiB": "100 KiB", "1MiB": "1 MiB"}


#: The echo targets judged on the interleaved rounds: (ours, the peer it must at least match).
ECHO_TARGETS = (("hyco-asyncio", "picows"), ("hyco-threads", "websockets-sync"),
                ("hyco-gevent", "websockets-sync"))


def echo_interleaved(groups: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The echo targets' servers in interleaved rounds (``test_echo_interleaved``), with issue
    14's targets: asyncio ``serve`` at least as fast as picows, threads and gevent at least as
    fast as websockets' sync server, at every size."""
    rows = _relay_rows(groups, ECHO_INTERLEAVED_GROUP)
    if not rows:
        return []
    info = next(iter(rows.values()))["info"]
    data = info["interleaved"]
    sizes = [(key, label) for key, label in ECHO_INTERLEAVED_SIZES.items() if key in data]
    servers = [name for name in ECHO_ORDER if any(name in data[key] for key, _ in sizes)]
    lines = ["### Interleaved rounds: the servers of the echo targets",
             "",
             f"{info['rounds']} rounds of {info['seconds']:g} s per size and server, a fresh "
             "server process each, the servers in turn (`bench/echo_ab.py`), so the machine's "
             "drift hits all alike (the tables above ran one server after the other). Round "
             "trips/s (median), then server CPU µs per round trip (median), then every round.",
             ""]
    cells: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("round trips/s", lambda row: f"{float(row['rate']):,.0f}"),
        ("CPU µs per round trip", lambda row: f"{float(row['cpu_us']):.1f}"),
        ("every round", lambda row: ", ".join(f"{float(r):,.0f}" for r in row["rounds"]))]
    for title, cell in cells:  # round trips/s, then CPU per round trip, then every round
        lines += [f"| {title} | " + " | ".join(servers) + " |",
                  "|---|" + "---|" * len(servers)]
        for key, label in sizes:
            lines.append(f"| {label} | " + " | ".join(
                cell(data[key][name]) if name in data[key] else DASH for name in servers) + " |")
        lines.append("")
    checks = []
    for ours, peer in ECHO_TARGETS:
        ratios = {label: float(data[key][ours]["rate"]) / float(data[key][peer]["rate"])
                  for key, label in sizes if ours in data[key] and peer in data[key]}
        if not ratios:
            continue
        short = [label for label, ratio in ratios.items() if ratio < 1.0]
        shown = " / ".join(f"{ratio:.2f}{TIMES}" for ratio in ratios.values())
        checks.append(f"{ours} ≥ 1.0{TIMES} {peer} at every size ({shown}): "
                      + ("met" if not short else f"**not met** at {', '.join(short)}"))
    lines += ["Targets (issue 14): " + "; ".join(checks) + ".", ""]
    return lines


def echo_summary(groups: dict[str, list[dict[str, Any]]], absent: dict[str, str]) -> list[str]:
    """Round trips/s over one connection, one row per server, one column per message size."""
    sizes = {size: _relay_rows(groups, ECHO_GROUP.format(size)) for size in ECHO_SIZES}
    if not any(sizes.values()):
        return []
    ceiling = {size: _relay_rows(groups, ECHO_CEILING.format(size)) for size in ECHO_SIZES}
    seen = {name for rows in sizes.values() for name in rows}
    servers = [n for n in ECHO_ORDER if n in seen] + sorted(seen - set(ECHO_ORDER))
    rows_by_label = [(name, {size: sizes[size].get(name) for size in ECHO_SIZES})
                     for name in servers]
    rows_by_label.append(("client ceiling (raw TCP echo)",
                          {size: next(iter(ceiling[size].values()), None)
                           for size in ECHO_SIZES}))
    header = "| server | " + " | ".join(ECHO_SIZES) + " |"
    rule = "|---|" + "---|" * len(ECHO_SIZES)
    lines = [
        "## Echo, one connection",
        "",
        "Round trips per second over ONE WebSocket connection: the client sends one binary "
        "message, waits for its whole echo, repeats. Every server runs alone in its own process "
        "(`bench/echo_servers.py`); one raw-socket client (`loadgen.EchoClient`: pre-masked "
        "frames, only frame headers parsed) drives them all, so the figure measures the server. "
        f"Median of the rounds; in brackets the ratio to {ECHO_REFERENCE} (>1 is faster). "
        "The last row is the client against a trivial TCP echo (no WebSocket): its own ceiling.",
        "",
        header,
        rule,
    ]
    for label, cells in rows_by_label:
        texts = []
        for size in ECHO_SIZES:
            row, ref = cells[size], sizes[size].get(ECHO_REFERENCE)
            if row is None:
                texts.append(DASH)
                continue
            ratio = f" ({row['frames_s'] / ref['frames_s']:.2f}{TIMES})" if ref else ""
            texts.append(f"{row['frames_s']:,.0f}{ratio}")
        lines.append(f"| {label} | " + " | ".join(texts) + " |")
    lines += ["", "CPU per round trip, µs (server process / client):", "", header, rule]
    for label, cells in rows_by_label:
        texts = []
        for size in ECHO_SIZES:
            row = cells[size]
            if row is None:
                texts.append(DASH)
                continue
            info = row["info"]
            texts.append(f"{info.get('server_cpu', 0) / row['frames_s'] * 1e6:,.1f} / "
                         f"{info.get('loadgen_cpu', 0) / row['frames_s'] * 1e6:,.1f}")
        lines.append(f"| {label} | " + " | ".join(texts) + " |")
    lines.append("")
    if absent:
        lines += ["Not measured (their module has no `serve` yet): "
                  + "; ".join(f"{name} ({why})" for name, why in absent.items()) + ".", ""]
    return lines


RELAY_ECHO_GROUP = "round trip through the relay: {} messages"
RELAY_ECHO = "hyco-relay+hyco-asyncio"
RELAY_ECHO_DIRECT = "picows-direct"


def relay_echo_summary(groups: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Round trips through our relay to our asyncio listener, against picows's direct echo."""
    sizes = {size: _relay_rows(groups, RELAY_ECHO_GROUP.format(size)) for size in ECHO_SIZES}
    sizes = {size: rows for size, rows in sizes.items() if rows}
    if not sizes:
        return relay_echo_interleaved(groups)
    lines = [
        "## Round trip through the relay",
        "",
        "One raw-socket sender (`bench/relay_echo.py`: the `EchoClient` loop, connected with a "
        "SAS token) → our relay → our asyncio `RelayedServer` echoing each message → back, "
        "relay and listener each in its own process; next to it picows's direct echo (no "
        "relay, half the hops), measured right after it. CPU per round trip in µs.",
        "",
        "| message | through the relay, round trips/s | picows direct | ratio | "
        "CPU relay + listener | CPU picows server |",
        "|---|---|---|---|---|---|",
    ]
    for size, rows in sizes.items():
        ours, ref = rows.get(RELAY_ECHO), rows.get(RELAY_ECHO_DIRECT)
        rate = f"{ours['frames_s']:,.0f}" if ours else DASH
        direct = f"{ref['frames_s']:,.0f}" if ref else DASH
        ratio = f"{ours['frames_s'] / ref['frames_s']:.2f}{TIMES}" if ours and ref else DASH
        cpu = (f"{ours['info'].get('relay_us', 0):,.1f} + "
               f"{ours['info'].get('listener_us', 0):,.1f}" if ours else DASH)
        ref_cpu = f"{ref['info'].get('server_us', 0):,.1f}" if ref else DASH
        lines.append(f"| {size} | {rate} | {direct} | {ratio} | {cpu} | {ref_cpu} |")
    lines.append("")
    return lines + relay_echo_interleaved(groups)


RELAY_ECHO_INTERLEAVED = "round trip through the relay: interleaved rounds, {}"
RELAY_ECHO_SPLICE = "socat+picows"


def relay_echo_interleaved(groups: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The relayed echo, picows direct and picows behind socat in interleaved rounds
    (``test_relay_echo_interleaved``), with issue 14's target at 256 B."""
    lines: list[str] = []
    for size in ECHO_SIZES:
        rows = _relay_rows(groups, RELAY_ECHO_INTERLEAVED.format(size))
        if not rows:
            continue
        info = next(iter(rows.values()))["info"]
        data = info["interleaved"]
        direct = float(data[RELAY_ECHO_DIRECT]["rate"])
        lines += [f"### Interleaved rounds, {size}: through the relay, picows direct, picows "
                  "behind socat",
                  "",
                  f"{info['rounds']} rounds of {info['seconds']:g} s; each round starts fresh "
                  "processes for every setup in turn, so the machine's drift hits all alike. "
                  "`socat+picows`: picows's echo behind a `socat` splice, the same hops as "
                  "through the relay with nothing done in the middle: the ratio no relay and "
                  "listener can pass here. CPU per round trip in µs (relay or socat + listener "
                  "or picows; picows's server alone for the direct echo).",
                  "",
                  "| setup | median round trips/s | ÷ picows direct | every round | CPU µs |",
                  "|---|---|---|---|---|"]
        for name, row in data.items():
            rate = float(row["rate"])
            cpu = " + ".join(f"{float(row[key]):.1f}" for key in sorted(row)
                             if key.startswith("cpu") and key != "cpu_us")
            lines.append(f"| {name} | {rate:,.0f} | {rate / direct:.2f}{TIMES} | "
                         f"{', '.join(f'{float(r):,.0f}' for r in row['rounds'])} | {cpu} |")
        if size == "256 B":
            ours = float(data[RELAY_ECHO]["rate"])
            ok = ours >= 0.6 * direct
            lines += ["", f"Target (issue 14): through the relay ≥ 0.6{TIMES} picows direct at "
                      f"256 B: {'met' if ok else '**not met**'} "
                      f"({ours / direct:.2f}{TIMES}; the splice bound: "
                      f"{float(data[RELAY_ECHO_SPLICE]['rate']) / direct:.2f}{TIMES})."]
        lines.append("")
    return lines


HTTP_GROUPS = {
    "small GETs, req/s": "HTTP: small GETs, 8 connections",
    "8 MiB uploads, MB/s": "HTTP: 8 MiB uploads, one connection",
    "8 MiB downloads, MB/s": "HTTP: 8 MiB downloads, one connection",
}
HTTP_ORDER = ("uvicorn", "relay+hyco_proto", "relay+asgi", "relay+hyco-https")


def http_summary(groups: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One row per setup: small requests/s and 8 MiB MB/s, with the ratio to uvicorn direct."""
    cols = {title: _relay_rows(groups, group) for title, group in HTTP_GROUPS.items()}
    if not any(cols.values()):
        return []
    seen = {name for rows in cols.values() for name in rows}
    setups = [n for n in HTTP_ORDER if n in seen] + sorted(seen - set(HTTP_ORDER))
    lines = [
        "## HTTP through the relay",
        "",
        "One app (`bench/http_servers.py`): served directly by uvicorn, and through our relay "
        "with our asyncio listener (`relay+hyco_proto`), with the same ASGI app behind "
        "`hyco_proto.adapters.asgi` (`relay+asgi`) and with Microsoft's hyco-https listener "
        "(Node). One raw-socket client (`loadgen.HttpLoad`). Small GETs: 8 keep-alive "
        "connections, one request in flight each; 8 MiB bodies: one connection, one at a time. "
        "MB = 10⁶ bytes. In brackets: the ratio to uvicorn direct (the relay adds two hops).",
        "",
        "| setup | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name in setups:
        cells = []
        for title, rows in cols.items():
            row, ref = rows.get(name), rows.get("uvicorn")
            if row is None:
                cells.append(DASH)
                continue
            value = row["frames_s"] if "req/s" in title else row["bytes_s"] / 1e6
            base = None
            if ref is not None:
                base = ref["frames_s"] if "req/s" in title else ref["bytes_s"] / 1e6
            ratio = f" ({value / base:.2f}{TIMES})" if base else ""
            cells.append(f"{value:,.0f}{ratio}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


WPS_FANOUT = "Web PubSub: fan-out of 64 B messages to 1,000 clients in one group, {}"
WPS_ACKS = "Web PubSub: one client's sendToGroup with ackId, {}"
WPS_COLUMNS = (
    ("fan-out deliveries/s, 16 in flight", WPS_FANOUT.format("16 messages in flight"), True),
    ("fan-out deliveries/s, 4 in flight", WPS_FANOUT.format("4 messages in flight"), True),
    ("fan-out deliveries/s, 1 at a time", WPS_FANOUT.format("one message at a time"), True),
    ("acks/s, 100 in flight", WPS_ACKS.format("100 messages in flight"), False),
    ("acks/s, 1 at a time", WPS_ACKS.format("one message at a time"), False),
)
WPS_ORDER = ("hyco_proto", "hyco_proto-unbatched", "websockets")
WPS_UNBATCHED = "hyco_proto-unbatched"
WPS_CEILING = "loadgen-ceiling"


def wps_summary(groups: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One row per server: fan-out deliveries/s with latency, acks/s; ratios to ours."""
    cols = [(title, _relay_rows(groups, group), fanout) for title, group, fanout in WPS_COLUMNS]
    if not any(rows for _, rows, _ in cols):
        return []
    seen = {name for _, rows, _ in cols for name in rows} - {WPS_CEILING}
    servers = [n for n in WPS_ORDER if n in seen] + sorted(seen - set(WPS_ORDER))
    headers = []
    for title, _, fanout in cols:
        headers += [title, "p50 / p99 ms"] if fanout else [title]
    names = {"hyco_proto": "hyco_proto (our hub route)",
             WPS_UNBATCHED: "hyco_proto, writes unbatched (same code, `batch_writes=False`)",
             "websockets": "websockets (minimal fan-out, context)"}
    lines = [
        "## Web PubSub",
        "",
        "Our emulator's hub route (`RelayServiceServer(routes=\"webpubsub\")`, the sans-IO `Hub`), "
        "as shipped (`WebPubSubService(batch_writes=True)`: within one driver call each recipient "
        "gets ONE send of all its frames, a fan-out frame encoded once) and the same code with "
        "`batch_writes=False` (one send per frame), and, for context only, a minimal group "
        "fan-out written with `websockets` (token check at connect, `json.loads` per "
        "`sendToGroup`, ONE `json.dumps` per message and "
        "`websockets.broadcast`; none of the rest of the protocol). Each server alone in its own "
        "process (`bench/wps_servers.py`); raw-socket clients (`bench/wps_load.py`) speaking "
        "`json.webpubsub.azure.v1` with tokens from `create_client_token`, all read by one epoll "
        "loop. Fan-out: 1,000 clients joined to one group by their token's `webpubsub.group` "
        f"claim, one sender publishing 64 B text messages; deliveries/s = messages {TIMES} 1,000 "
        "/ time until every client has them all, with up to 16 or 4 messages in flight (8 or 2 "
        "per write of the sender; the hub kept busy) or one at a time (nothing to batch). "
        "Latency (p50 / p99, ms) at 4 sampled clients, from the sender's write of the message "
        "to its arrival; with 16 or 4 in flight it includes the queue ahead of it. "
        "Acks: one client sending `sendToGroup` with `ackId` to a group of one receiver. "
        f"In brackets: the ratio to ours (>1 is faster than ours).",
        "",
        "| server | " + " | ".join(headers) + " |",
        "|---|" + "---|" * len(headers),
    ]
    for name in servers:
        cells = []
        for _, rows, fanout in cols:
            row, ours = rows.get(name), rows.get("hyco_proto")
            if row is None:
                cells += [DASH, DASH] if fanout else [DASH]
                continue
            text = f"{row['frames_s']:,.0f}"
            if ours is not None and name != "hyco_proto":
                text += f" ({row['frames_s'] / ours['frames_s']:.2f}{TIMES})"
            cells.append(text)
            if fanout:
                info = row["info"]
                cells.append(f"{info['latency_p50_ms']:.1f} / {info['latency_p99_ms']:.1f}"
                             if "latency_p50_ms" in info else DASH)
        lines.append(f"| {names.get(name, name)} | " + " | ".join(cells) + " |")
    lines += ["", "CPU during the timed runs, in cores (server process / load generator):", "",
              "| server | " + " | ".join(title for title, _, _ in cols) + " |",
              "|---|" + "---|" * len(cols)]
    for name in servers:
        cells = []
        for _, rows, _ in cols:
            row = rows.get(name)
            cells.append(DASH if row is None else f"{row['info'].get('server_cpu', 0):.2f} / "
                         f"{row['info'].get('loadgen_cpu', 0):.2f}")
        lines.append(f"| {names.get(name, name)} | " + " | ".join(cells) + " |")
    ceiling = [(title, rows[WPS_CEILING]) for title, rows, _ in cols if WPS_CEILING in rows]
    if ceiling:
        lines += ["", "Load generator ceiling (a trivial blocking-socket fan-out server in place "
                  "of the hub: no token check, one `sendall` of one pre-encoded frame per "
                  "member): " + "; ".join(
                      f"{r['frames_s']:,.0f} {title.replace('fan-out ', '')} (server "
                      f"{r['info'].get('server_cpu', 0):.2f} / generator "
                      f"{r['info'].get('loadgen_cpu', 0):.2f} cores)" for title, r in ceiling)
                  + "."]
        cores = max(r["info"].get("server_cpu", 0) + r["info"].get("loadgen_cpu", 0)
                    for _, r in ceiling)
        if cores >= 1.6:
            lines[-1] += (" With both processes near one core each, that is this machine's limit "
                          "for 1,000-socket fan-out over loopback with one write per frame: an "
                          "unbatched hub near it is limited by the machine, not by itself.")
        else:
            lines[-1] += (f" The two processes used at most {cores:.2f} cores together: other "
                          "work shared the machine during this run, so every figure here is "
                          "below what a quiet machine gives.")
    lines += _wps_batching(cols)
    lines += ["", "Microsoft's own Web PubSub emulator (`awps-emulator`) is a .NET tool published "
              "on NuGet only: neither .NET nor NuGet can be installed from the registries "
              "reachable here (npm has no emulator package), so it is not compared.", ""]
    return lines


def _wps_batching(cols: list[tuple[str, dict[str, dict[str, Any]], bool]]) -> list[str]:
    """Batched against unbatched writes (issue 14: fan-out \u2265 2x), with server CPU per
    delivery (cores / deliveries per second)."""
    parts = []
    for title, rows, fanout in cols:
        ours, off = rows.get("hyco_proto"), rows.get(WPS_UNBATCHED)
        if not fanout or ours is None or off is None:
            continue

        def us(row: dict[str, Any]) -> str:
            cpu = row["info"].get("server_cpu")
            return f"{cpu / row['frames_s'] * 1e6:.2f}" if cpu else DASH

        parts.append(f"{title.replace('fan-out deliveries/s, ', '')}: "
                     f"{ours['frames_s'] / off['frames_s']:.2f}{TIMES} "
                     f"(server CPU {us(ours)} vs {us(off)} \u00b5s per delivery)")
    if not parts:
        return []
    return ["", f"Batched writes against the same hub unbatched (issue-14 target \u2265 2{TIMES} "
            "the deliveries/s): " + "; ".join(parts) + ". The load generator's ceiling server "
            "writes every frame on its own, so batched writes can pass it."]


def _charted(group: str, rows: list[dict[str, Any]]) -> bool:
    """Groups with a rate to compare (not the generator's own ceiling or idle-memory runs)."""
    return not group.startswith("loadgen") and "idle" not in group and len(rows) > 1


def write_chart(groups: dict[str, list[dict[str, Any]]], out: Path) -> None:
    """One panel per group: each implementation's rate relative to the fastest (linear, from
    zero, so bar lengths compare), labelled with the rate itself. Ours in orange."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in sorted(groups) if _charted(n, groups[n])]
    if not names:  # a partial run (one benchmark file): nothing to compare
        return
    height = 1.0 + 0.32 * sum(len(groups[n]) + 1.5 for n in names)
    fig, axes = plt.subplots(len(names), 1, figsize=(9, height), squeeze=False)
    for ax, group in zip(axes[:, 0], names, strict=True):
        rows = sorted(groups[group], key=lambda r: r["frames_s"])
        best = max(r["frames_s"] for r in rows)
        colors = ["tab:orange" if r["impl"].startswith("hyco") else "tab:blue" for r in rows]
        ax.barh([r["impl"] for r in rows], [r["frames_s"] / best for r in rows], color=colors)
        for y, r in enumerate(rows):
            label = _rate(r["bytes_s"], "B/s") if r["bytes_s"] and r["info"].get("frames", 1) == 1 \
                else _rate(r["frames_s"], "/s")
            ax.text(min(r["frames_s"] / best, 1.0) + 0.01, y, label, va="center", fontsize=7)
        ax.set_xlim(0, 1.25)
        ax.set_title(group, fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        ax.set_xlabel("rate relative to the fastest (longer is faster)", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    groups, machine = load(Path(argv[0]))
    echo_absent = json.loads(Path(argv[0]).read_text()).get("echo_absent")
    write_markdown(groups, machine, HERE / "RESULTS.md", echo_absent)
    write_chart(groups, HERE / "results.png")
    print(f"wrote {HERE / 'RESULTS.md'} and {HERE / 'results.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
