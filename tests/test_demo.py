"""`make demo` must keep working: both demos run to completion and report what they did."""

from __future__ import annotations

import asyncio

import pytest

from hyco_proto import demo


def test_socket_demo_runs(capsys: pytest.CaptureFixture[str]) -> None:
    code = asyncio.run(asyncio.wait_for(demo.run_sockets(round_trips=20, small=200, big=2), 60))
    out = capsys.readouterr().out
    assert code == 0
    assert "got back 'hello'" in out and "subprotocol 'orders.v1'" in out
    assert "messages/s" in out and "MB/s" in out
    assert "1 relayed pair(s)" in out
    assert "-> 200 'GET /orders?region=eu: 0 bytes'" in out
    assert "200 'POST /orders?region=eu: 8388608 bytes'" in out and "2 HTTP request(s)" in out


def test_in_memory_demo_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.run_in_memory() == 0
    out = capsys.readouterr().out
    assert "refused: 403 Only one sender today" in out
    assert "token renewals, still listening" in out


def test_webpubsub_demo_runs(capsys: pytest.CaptureFixture[str]) -> None:
    code = asyncio.run(asyncio.wait_for(demo.run_webpubsub(messages=400), 60))
    out = capsys.readouterr().out
    assert code == 0
    assert "got 'hello' from alice in room (sequence id 1)" in out
    assert "got JSON {'price': 42}" in out
    assert "400 messages alice -> bob, in order" in out
    assert "POST /api/hubs/demo/:send -> 202; bob got 'to everyone' from the server" in out
