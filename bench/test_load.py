"""Load on one emulator process (``bench/load.py``), at sizes ``make bench`` can afford (about a
minute): 1,000 idle relayed pairs, 1,000 idle Web PubSub clients, the two bursts of 1,000, and a
20 s soak (relay and hub traffic). ``make load`` runs the full sizes (as many pairs as the
open-file limit allows, 10,000 clients, a 10-minute soak) and prints the table for
``bench/RESULTS.md``.

These are measurements: only correctness is asserted (every pair, client, rendezvous and request
succeeded, every message arrived); the numbers are printed, and kept as test properties.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench import load

PAIRS = 1000
CLIENTS = 1000
BURST = 1000
HTTP_BURST = 1000
SOAK_SECONDS = 20.0


def _report(capsys: pytest.CaptureFixture[str], record: Any, name: str,
            result: dict[str, Any]) -> None:
    shown = {k: v for k, v in result.items() if k != "samples_kib"}
    for key, value in shown.items():
        record(key, json.dumps(value))
    with capsys.disabled():
        print(f"\nload {name}: {json.dumps(shown)}")


def test_load_idle_pairs(capsys: pytest.CaptureFixture[str], record_property: Any) -> None:
    result = load.phase_pairs(PAIRS)
    _report(capsys, record_property, "pairs", result)
    assert result["held"] == PAIRS, result["open"]
    assert result["verify"]["verified"] == PAIRS, result["verify"]
    assert result["control_failures"] == 0
    assert not result["emulator_log_problems"]


def test_load_idle_webpubsub_clients(capsys: pytest.CaptureFixture[str],
                                     record_property: Any) -> None:
    result = load.phase_wps(CLIENTS)
    _report(capsys, record_property, "wps", result)
    assert result["connected"] == CLIENTS, result["connect"]
    assert result["broadcast_status"] == 202
    assert result["broadcast"]["received"] == CLIENTS, result["broadcast"]
    assert not result["emulator_log_problems"]


def test_load_bursts(capsys: pytest.CaptureFixture[str], record_property: Any) -> None:
    result = load.phase_bursts(BURST, HTTP_BURST)
    _report(capsys, record_property, "bursts", result)
    rendezvous, http = result["rendezvous"], result["http"]
    assert rendezvous["failures"] == 0, rendezvous["reasons"]
    assert rendezvous["opened"] == BURST
    assert rendezvous["verified"]["verified"] == BURST
    assert http["failures"] == 0, http["reasons"]
    assert http["ok"] == HTTP_BURST
    assert result["control_failures"] == 0, result["control_reasons"]
    assert not result["emulator_log_problems"]


def test_load_soak(capsys: pytest.CaptureFixture[str], record_property: Any) -> None:
    result = load.phase_soak(SOAK_SECONDS)
    _report(capsys, record_property, "soak", result)
    assert result["failures"] == 0, result["reasons"]
    assert result["control_failures"] == 0
    assert result["echoes"] and result["rendezvous"] and result["http"]
    assert not result["emulator_log_problems"]
