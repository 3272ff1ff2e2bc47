"""The front door's caps on a request head, whatever the reads (issue 12: caps on header size
and count).

A new-user trial found that a head above ``MAX_HEAD`` arriving whole in one read was relayed (a
120,000-byte header reached the listener's app), or got 401 without a token, while the same
bytes in 4 KiB pieces got 431: h11 only bounds a head still incomplete in its buffer. Every
route (relayed HTTP, ``/$hc/`` upgrades, the service's own endpoints) must answer 431 before
anything else, for any split, and close the connection.
"""

from __future__ import annotations

import logging

import pytest

from hyco_proto.service.front import MAX_HEAD, MAX_HEADER_FIELDS
from hyco_proto.service.router import RelayService

TARGETS = ["/apphc/big", "/$hc/hc?sb-hc-action=connect", "/$status"]
SPLITS = {"one-read": None, "4KiB": 4096, "64KiB": 65536}


def answer(data: bytes, split: int | None, *, closes: bool = True) -> bytes:
    service = RelayService()
    conn = service.connection_made(0.0)
    pieces = [data] if split is None else [data[i:i + split] for i in range(0, len(data), split)]
    out = b""
    closed = False
    for piece in pieces:
        if service.kind(conn) is None:
            break
        service.receive_data(0.0, conn, piece)
        for cid, chunk in service.data_to_send():
            assert cid == conn
            if chunk == b"":
                closed = True
            out += chunk
    assert closed or not closes, out[:200]
    return out


def request(target: str, extra: list[tuple[str, str]]) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize("split", list(SPLITS.values()), ids=list(SPLITS))
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("size", [MAX_HEAD + 1, 100_000, 120_000])
def test_a_head_over_the_limit_is_431_whatever_the_reads(target: str, split: int | None,
                                                         size: int) -> None:
    data = request(target, [("X-Big", "")])
    data = request(target, [("X-Big", "b" * (size - len(data)))])
    assert len(data) == size
    assert answer(data, split).startswith(b"HTTP/1.1 431 ")


@pytest.mark.parametrize("target", TARGETS)
def test_a_head_at_the_limit_is_not_refused_for_its_size(target: str) -> None:
    data = request(target, [("X-Big", "")])
    data = request(target, [("X-Big", "b" * (MAX_HEAD - len(data)))])
    assert len(data) == MAX_HEAD
    status = answer(data, None, closes=False)[:12]  # the route answers (401, 400, 200 …), not 431
    assert status.startswith(b"HTTP/1.1 ") and not status.startswith(b"HTTP/1.1 431")


@pytest.mark.parametrize("split", list(SPLITS.values()), ids=list(SPLITS))
@pytest.mark.parametrize("target", TARGETS)
def test_too_many_header_fields_is_431(target: str, split: int | None) -> None:
    fields = [(f"X-F{i}", "v") for i in range(MAX_HEADER_FIELDS)]  # plus Host: one too many
    assert answer(request(target, fields), split).startswith(b"HTTP/1.1 431 ")
    ok = answer(request(target, fields[:-1]), None, closes=False)
    assert not ok.startswith(b"HTTP/1.1 431")


@pytest.mark.parametrize(("extra", "reason"), [
    ([(f"X-F{i}", "v") for i in range(MAX_HEADER_FIELDS)], "more than 100 header fields"),
    ([("X-Big", "b" * 100_000)], f"more than {MAX_HEAD}"),
])
def test_the_431_is_logged_with_its_reason(caplog: pytest.LogCaptureFixture,
                                          extra: list[tuple[str, str]], reason: str) -> None:
    with caplog.at_level(logging.INFO, logger="hyco_proto"):
        assert answer(request("/apphc/x", extra), None).startswith(b"HTTP/1.1 431 ")
    [line] = [r.getMessage() for r in caplog.records if "431" in r.getMessage()]
    assert "request head too large: " in line and reason in line, line
