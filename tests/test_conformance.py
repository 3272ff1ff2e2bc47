"""WebSocket conformance rows (Autobahn categories 1-7, 9 sized down, 10, X; handshake rows 0.x).

Each row of the checklist is a table entry run against ``WebSocketConnection`` with an echoing
application, fed in one write, frame by frame and byte by byte. The same table runs in the client
role with the peer's frames unmasked (the mirror rows): a client must see unmasked frames, masks
what it sends, and waits for the server to close TCP instead of closing it first.

Outputs are compared exactly, including that nothing is answered after a violation and that the
server ends with ``b""`` (close TCP). Rows whose valid message precedes a violation in the same
write have a documented one-write alternative (Autobahn NON-STRICT): a sans-IO connection parses
the whole write before the application can echo, so only the failure is sent.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from hyco_proto.errors import RemoteProtocolError
from hyco_proto.websocket import (
    CloseReceived,
    ConnectionClosed,
    Ping,
    Pong,
    Role,
    State,
    TextMessage,
    WebSocketConnection,
)
from tests.wsutil import (
    EOF,
    MODES,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    EchoRun,
    Item,
    binary,
    close_payload,
    closed,
    fragmented,
    pong,
    split_every,
    text,
    writes_for,
)
from tests.wsutil import close as close_frame
from tests.wsutil import frame as raw_frame

HELLO = "Hello, world!"
KOSME = bytes.fromhex("cebae1bdb9cf83cebcceb5")
SURROGATE = bytes.fromhex("eda080")
EDITED = b"edited"


@dataclass
class Case:
    id: str
    frames: list[bytes]  # the peer's writes in "frames" mode
    expect: list[Item]  # the connection's output (server role; EOF dropped for clients)
    code: int  # ConnectionClosed.code
    whole: list[Item] | None = None  # one-write alternative (NON-STRICT, see module docstring)
    failed: bool = False  # a RemoteProtocolError is expected
    after: list[bytes] | None = None  # sent once the replies have arrived (the peer's close)


def build_cases(peer_masks: bool) -> list[Case]:
    """The checklist as data. ``peer_masks`` is True for the server role (client frames are
    masked) and False for the mirror rows in the client role."""

    def F(opcode: int, payload: bytes | str = b"", **kw: object) -> bytes:
        return raw_frame(opcode, payload, mask=peer_masks, **kw)  # type: ignore[arg-type]

    def C(code: int | None = 1000, reason: bytes | str = b"") -> bytes:
        return close_frame(code, reason, mask=peer_masks)

    cases: list[Case] = []

    def ok(id_: str, frames: list[bytes], replies: list[Item],
           whole: list[Item] | None = None) -> None:
        """Valid traffic, then the peer's close 1000: replies, close reply 1000, TCP close."""
        tail = [closed(1000), EOF]
        cases.append(Case(id_, frames, [*replies, *tail], 1000,
                          None if whole is None else [*whole, *tail], after=[C(1000)]))

    def fail(id_: str, frames: list[bytes], replies: list[Item] | None = None, code: int = 1002,
             whole: list[Item] | None = None) -> None:
        """Fail the connection with ``code`` after ``replies``; nothing answered afterwards."""
        tail = [closed(code), EOF]
        cases.append(Case(id_, frames, [*(replies or []), *tail], code,
                          None if whole is None else [*whole, *tail], failed=True))

    def reply(id_: str, frames: list[bytes], code: int | None, got: int) -> None:
        """The peer closes: one close reply with ``code``, TCP close; ConnectionClosed(got)."""
        cases.append(Case(id_, frames, [closed(code), EOF], got))

    # -- 1 Framing ----------------------------------------------------------------------
    for i, n in enumerate((0, 125, 126, 127, 128, 65535, 65536), start=1):
        ok(f"1.1.{i}", [F(OP_TEXT, "*" * n)], [text("*" * n)])
        ok(f"1.2.{i}", [F(OP_BINARY, b"\xfe" * n)], [binary(b"\xfe" * n)])
    ok("1.1.8", split_every(F(OP_TEXT, "*" * 65536), 997), [text("*" * 65536)])
    ok("1.2.8", split_every(F(OP_BINARY, b"\xfe" * 65536), 997), [binary(b"\xfe" * 65536)])

    # -- 2 Pings and pongs --------------------------------------------------------------
    ok("2.1", [F(OP_PING)], [pong()])
    ok("2.2", [F(OP_PING, HELLO)], [pong(HELLO)])
    raw8 = bytes.fromhex("00fffefdfcfb00ff")
    ok("2.3", [F(OP_PING, raw8)], [pong(raw8)])
    ok("2.4", [F(OP_PING, b"\xfe" * 125)], [pong(b"\xfe" * 125)])
    fail("2.5", [F(OP_PING, b"\xfe" * 126)])
    ok("2.6", [F(OP_PING, b"\xfe" * 125)], [pong(b"\xfe" * 125)])
    ok("2.7", [F(OP_PONG)], [])
    ok("2.8", [F(OP_PONG, "unsolicited pong payload")], [])
    ok("2.9", [F(OP_PONG, "unsolicited"), F(OP_PING, "ping payload")], [pong("ping payload")])
    pings = [F(OP_PING, f"payload-{i}") for i in range(10)]
    ok("2.10", pings, [pong(f"payload-{i}") for i in range(10)])
    ok("2.11", [F(OP_PING, f"payload-{i}") for i in range(10)],
       [pong(f"payload-{i}") for i in range(10)])

    # -- 3 Reserved bits ----------------------------------------------------------------
    fail("3.1", [F(OP_TEXT, HELLO, rsv=1)])
    for id_, rsv in (("3.2", 2), ("3.3", 3), ("3.4", 4)):
        fail(id_, [F(OP_TEXT, HELLO), F(OP_TEXT, HELLO, rsv=rsv), F(OP_PING)], [text(HELLO)],
             whole=[])
    fail("3.5", [F(OP_BINARY, b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff", rsv=5)])
    fail("3.6", [F(OP_PING, HELLO, rsv=6)])
    fail("3.6-binary", [F(OP_BINARY, b"\xfe" * 8, rsv=6)])
    fail("3.7", [F(OP_CLOSE, close_payload(1000), rsv=7)])

    # -- 4 Opcodes ----------------------------------------------------------------------
    for base, (op_a, op_b, op_c, op_d, op_e) in (("4.1", (3, 4, 5, 6, 7)),
                                                 ("4.2", (11, 12, 13, 14, 15))):
        fail(f"{base}.1", [F(op_a)])
        fail(f"{base}.2", [F(op_b, b"*" * 23)])
        fail(f"{base}.3", [F(OP_TEXT, HELLO), F(op_c), F(OP_PING)], [text(HELLO)], whole=[])
        fail(f"{base}.4", [F(OP_TEXT, HELLO), F(op_d, b"*" * 23), F(OP_PING)], [text(HELLO)],
             whole=[])
        fail(f"{base}.5", [F(OP_TEXT, HELLO), F(op_e, b"*" * 23), F(OP_PING)], [text(HELLO)],
             whole=[])

    # -- 5 Fragmentation ----------------------------------------------------------------
    f1, f2, f3, f4, f5 = (f"fragment{i}" for i in range(1, 6))
    fail("5.1", [F(OP_PING, f1, fin=False), F(OP_CONT, f2)])
    fail("5.2", [F(OP_PONG, f1, fin=False), F(OP_CONT, f2)])
    for id_ in ("5.3", "5.4", "5.5"):
        ok(id_, [F(OP_TEXT, f1, fin=False), F(OP_CONT, f2)], [text(f1 + f2)])
    for id_ in ("5.6", "5.7", "5.8"):
        ok(id_, [F(OP_TEXT, f1, fin=False), F(OP_PING, "ping payload"), F(OP_CONT, f2)],
           [pong("ping payload"), text(f1 + f2)])
    for id_ in ("5.9", "5.10", "5.11"):
        fail(id_, [F(OP_CONT, f1), F(OP_TEXT, HELLO)])
    for id_ in ("5.12", "5.13", "5.14"):
        fail(id_, [F(OP_CONT, f1, fin=False), F(OP_TEXT, HELLO)])
    fail("5.15", [F(OP_TEXT, f1, fin=False), F(OP_CONT, f2), F(OP_CONT, f3, fin=False),
                  F(OP_TEXT, f4)], [text(f1 + f2)], whole=[])
    twice = [F(OP_CONT, f1, fin=False), F(OP_TEXT, f2, fin=False), F(OP_CONT, f3)]
    fail("5.16", [*twice, F(OP_CONT, f1, fin=False), F(OP_TEXT, f2, fin=False), F(OP_CONT, f3)])
    fail("5.17", [F(OP_CONT, f1), F(OP_TEXT, f2, fin=False), F(OP_CONT, f3),
                  F(OP_CONT, f1), F(OP_TEXT, f2, fin=False), F(OP_CONT, f3)])
    fail("5.18", [F(OP_TEXT, f1, fin=False), F(OP_TEXT, f2)])
    for id_ in ("5.19", "5.20"):
        ok(id_, [F(OP_TEXT, f1, fin=False), F(OP_CONT, f2, fin=False), F(OP_PING, "pongme 1!"),
                 F(OP_CONT, f3, fin=False), F(OP_CONT, f4, fin=False), F(OP_PING, "pongme 2!"),
                 F(OP_CONT, f5)],
           [pong("pongme 1!"), pong("pongme 2!"), text(f1 + f2 + f3 + f4 + f5)])

    # -- 6 UTF-8 ------------------------------------------------------------------------
    ok("6.1.1", [F(OP_TEXT)], [text("")])
    ok("6.1.2", [F(OP_TEXT, fin=False), F(OP_CONT, fin=False), F(OP_CONT)], [text("")])
    ok("6.1.3", [F(OP_TEXT, fin=False), F(OP_CONT, "middle frame payload", fin=False),
                 F(OP_CONT)], [text("middle frame payload")])
    umlauts = "Hello-µ@ßöäüàá-UTF-8!!"
    raw = umlauts.encode()
    ok("6.2.1", [F(OP_TEXT, raw)], [text(umlauts)])
    cut = len("Hello-µ@ßöäü".encode())
    ok("6.2.2", [F(OP_TEXT, raw[:cut], fin=False), F(OP_CONT, raw[cut:])], [text(umlauts)])

    def one_byte_fragments(payload: bytes) -> list[bytes]:
        if not payload:
            return [F(OP_TEXT)]
        return [F(OP_TEXT if i == 0 else OP_CONT, payload[i:i + 1], fin=i == len(payload) - 1)
                for i in range(len(payload))]

    ok("6.2.3", one_byte_fragments(raw), [text(umlauts)])
    ok("6.2.4", one_byte_fragments(KOSME), [text(KOSME.decode())])
    bad = KOSME + SURROGATE + EDITED
    fail("6.3.1", [F(OP_TEXT, bad)], code=1007)
    fail("6.3.2", one_byte_fragments(bad), code=1007)
    above = bytes.fromhex("f4908080")
    fail("6.4.1", [F(OP_TEXT, KOSME, fin=False), F(OP_CONT, above, fin=False), F(OP_CONT, EDITED)],
         code=1007)
    fail("6.4.2", [F(OP_TEXT, KOSME + b"\xf4", fin=False), F(OP_CONT, b"\x90", fin=False),
                   F(OP_CONT, b"\x80\x80" + EDITED)], code=1007)
    one = F(OP_TEXT, KOSME + above + EDITED)
    k = len(one) - len(above + EDITED)
    fail("6.4.3", [one[:k], one[k:k + 4], one[k + 4:]], code=1007)
    one = F(OP_TEXT, KOSME + above + EDITED)
    fail("6.4.4", [one[:k + 1], one[k + 1:k + 2], one[k + 2:]], code=1007)

    valid = {
        "6.5.1": b"hello$world",
        "6.5.2": "hello\u00a2world".encode(),
        "6.5.3": "hello\u20acworld".encode(),
        "6.5.4": "hello\U00024b62world".encode(),
        "6.5.5": KOSME,
        "6.7.1": b"\x00", "6.7.2": bytes.fromhex("c280"), "6.7.3": bytes.fromhex("e0a080"),
        "6.7.4": bytes.fromhex("f0908080"),
        "6.9.1": b"\x7f", "6.9.2": bytes.fromhex("dfbf"), "6.9.3": bytes.fromhex("efbfbf"),
        "6.9.4": bytes.fromhex("f48fbfbf"),
        "6.11.1": bytes.fromhex("ed9fbf"), "6.11.2": bytes.fromhex("ee8080"),
        "6.11.3": bytes.fromhex("efbfbd"), "6.11.4": bytes.fromhex("f48fbfbf"),
    }
    nonchars = [0xFFFE, 0xFFFF] + [p * 0x10000 + low for p in range(1, 17)
                                    for low in (0xFFFE, 0xFFFF)]
    for i, cp in enumerate(nonchars, start=1):
        valid[f"6.22.{i}"] = chr(cp).encode()
    for i, cp in enumerate(range(0xFFF9, 0x10000), start=1):
        valid[f"6.23.{i}"] = chr(cp).encode()
    for i in range(1, 12):
        prefix = KOSME[:i]
        if i in (2, 5, 7, 9, 11):
            valid[f"6.6.{i}"] = prefix

    def sur(*cps: int) -> bytes:
        return "".join(chr(c) for c in cps).encode("utf-8", "surrogatepass")

    invalid = {f"6.6.{i}": KOSME[:i] for i in (1, 3, 4, 6, 8, 10)}
    invalid.update({
        "6.8.1": bytes.fromhex("f888808080"), "6.8.2": bytes.fromhex("fc8480808080"),
        "6.10.1": bytes.fromhex("f7bfbfbf"), "6.10.2": bytes.fromhex("fbbfbfbfbf"),
        "6.10.3": bytes.fromhex("fdbfbfbfbfbf"),
        "6.11.5": above,
        "6.12.1": b"\x80", "6.12.2": b"\xbf",
        "6.12.3": b"\x80\xbf", "6.12.4": b"\x80\xbf\x80", "6.12.5": b"\x80\xbf\x80\xbf",
        "6.12.6": b"\x80\xbf\x80\xbf\x80", "6.12.7": b"\x80\xbf\x80\xbf\x80\xbf",
        "6.12.8": bytes(range(0x80, 0xBF)),
        "6.13.1": b"".join(bytes((b, 0x20)) for b in range(0xC0, 0xDF)),
        "6.13.2": b"".join(bytes((b, 0x20)) for b in range(0xE0, 0xEF)),
        "6.13.3": b"".join(bytes((b, 0x20)) for b in range(0xF0, 0xF7)),
        "6.13.4": b"".join(bytes((b, 0x20)) for b in range(0xF8, 0xFB)),
        "6.13.5": bytes((0xFC, 0x20)),
    })
    missing_last = ["c0", "e080", "f08080", "f8808080", "fc80808080",
                    "df", "efbf", "f7bfbf", "fbbfbfbf", "fdbfbfbfbf"]
    for i, h in enumerate(missing_last, start=1):
        invalid[f"6.14.{i}"] = bytes.fromhex(h)
    invalid["6.15.1"] = bytes.fromhex("".join(missing_last))
    invalid.update({"6.16.1": b"\xfe", "6.16.2": b"\xff", "6.16.3": b"\xfe\xfe\xff\xff"})
    for group, seqs in (
        ("6.17", ["c0af", "e080af", "f08080af", "f8808080af", "fc80808080af"]),
        ("6.18", ["c1bf", "e09fbf", "f08fbfbf", "f887bfbfbf", "fc83bfbfbfbf"]),
        ("6.19", ["c080", "e08080", "f0808080", "f880808080", "fc8080808080"]),
    ):
        for i, h in enumerate(seqs, start=1):
            invalid[f"{group}.{i}"] = bytes.fromhex(h)
    for i, cp in enumerate((0xD800, 0xDB7F, 0xDB80, 0xDBFF, 0xDC00, 0xDF80, 0xDFFF), start=1):
        invalid[f"6.20.{i}"] = sur(cp)
    pairs = [(hi, lo) for hi in (0xD800, 0xDB7F, 0xDB80, 0xDBFF) for lo in (0xDC00, 0xDFFF)]
    for i, (hi, lo) in enumerate(pairs, start=1):
        invalid[f"6.21.{i}"] = sur(hi, lo)

    for id_, payload in valid.items():
        ok(id_, [F(OP_TEXT, payload)], [text(payload.decode())])
        ok(f"{id_}-fragmented", one_byte_fragments(payload), [text(payload.decode())])
    for id_, payload in invalid.items():
        fail(id_, [F(OP_TEXT, payload)], code=1007)
        fail(f"{id_}-fragmented", one_byte_fragments(payload), code=1007)

    # -- 7 Close handling ---------------------------------------------------------------
    ok("7.1.1", [F(OP_TEXT, "Hello World!")], [text("Hello World!")])
    reply("7.1.2", [C(1000), C(None)], 1000, 1000)
    reply("7.1.3", [C(1000), F(OP_PING, "ping")], 1000, 1000)
    reply("7.1.4", [C(1000), F(OP_TEXT, HELLO)], 1000, 1000)
    reply("7.1.5", [F(OP_TEXT, f1, fin=False), C(1000), F(OP_CONT, f2)], 1000, 1000)
    big = "*" * (256 * 1024)
    cases.append(Case("7.1.6", [F(OP_TEXT, big), F(OP_TEXT, "Hello World!"), C(1000),
                                F(OP_PING, "ping")],
                      [text(big), text("Hello World!"), closed(1000), EOF], 1000,
                      whole=[closed(1000), EOF]))
    reply("7.3.1", [C(None)], None, 1005)
    fail("7.3.2", [F(OP_CLOSE, b"\x03")])
    reply("7.3.3", [C(1000)], 1000, 1000)
    reply("7.3.4", [C(1000, "Hello World!")], 1000, 1000)
    reply("7.3.5", [C(1000, "*" * 123)], 1000, 1000)
    fail("7.3.6", [C(1000, "*" * 124)])
    fail("7.5.1", [C(1000, bad)], code=1007)
    for i, code in enumerate((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999,
                              4000, 4999), start=1):
        reply(f"7.7.{i}", [C(code)], code, code)
    for i, code in enumerate((0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999), start=1):
        fail(f"7.9.{i}", [C(code)])
    fail("7.13.1", [C(5000)])
    fail("7.13.2", [C(65535)])

    # -- 10 Miscellaneous ---------------------------------------------------------------
    payload = b"*" * 65536
    pieces = split_every(payload, 1300)
    ok("10.1.1", [F(OP_TEXT if i == 0 else OP_CONT, p, fin=i == len(pieces) - 1)
                  for i, p in enumerate(pieces)], [text(payload.decode())])

    # -- X Rules Autobahn does not exercise ---------------------------------------------
    fail("X.1", [raw_frame(OP_TEXT, HELLO, mask=not peer_masks)])
    fail("X.2", [F(OP_BINARY, b"", length=1 << 63)])
    fail("X.3", [F(OP_TEXT, f1, fin=False), F(OP_BINARY, f2), F(OP_CONT, f3)])
    fail("X.4", [F(OP_PONG, b"*" * 126)])
    fail("X.5", [F(OP_CLOSE, close_payload(1000), fin=False), F(OP_CONT, b"")])
    fail("X.6", [C(1015)])
    for id_, code in (("X.7", 1012), ("X.8", 1013), ("X.9", 1014)):
        reply(id_, [C(code)], code, code)
    return cases


SERVER_CASES = build_cases(peer_masks=True)
CLIENT_CASES = build_cases(peer_masks=False)


def _params(cases: list[Case]) -> list[object]:
    return [pytest.param(c, mode, id=f"{c.id}-{mode}") for c in cases for mode in MODES]


def _check(run: EchoRun, case: Case, mode: str, *, client: bool) -> None:
    expect = case.whole if (mode == "whole" and case.whole is not None) else case.expect
    if client:
        # A client never closes TCP first after sending a close frame: it waits for the server.
        expect = [item for item in expect if item != EOF]
    assert run.output() == expect
    end = run.closed_event()
    assert end.code == case.code
    assert run.conn.state is State.CLOSED
    assert run.conn.close_code == case.code
    if case.failed:
        assert isinstance(end.error, RemoteProtocolError)
        assert end.error.close_code == case.code
        assert run.conn.error is end.error
    else:
        assert end.error is None
        assert any(isinstance(e, CloseReceived) for e in run.events)


@pytest.mark.parametrize(("case", "mode"), _params(SERVER_CASES))
def test_server_row(case: Case, mode: str) -> None:
    run = EchoRun(WebSocketConnection(Role.SERVER))
    run.feed_all(writes_for(mode, case.frames))
    if case.after:
        run.feed_all(writes_for(mode, case.after))
    _check(run, case, mode, client=False)
    # The peer's own TCP close afterwards changes nothing.
    before = list(run.out)
    run.eof()
    assert run.out == before
    assert not run.conn.close_expected()


@pytest.mark.parametrize(("case", "mode"), _params(CLIENT_CASES))
def test_client_mirror_row(case: Case, mode: str) -> None:
    run = EchoRun(WebSocketConnection(Role.CLIENT))
    run.feed_all(writes_for(mode, case.frames))
    if case.after:
        run.feed_all(writes_for(mode, case.after))
    _check(run, case, mode, client=True)
    # The client waits for the server to close TCP, then closes its side.
    assert run.conn.close_expected()
    assert b"" not in run.out
    run.eof()
    assert run.out[-1] == b""
    assert not run.conn.close_expected()


def test_tables_cover_every_row() -> None:
    ids = {c.id for c in SERVER_CASES}
    expected = (
        [f"1.{t}.{i}" for t in (1, 2) for i in range(1, 9)]
        + [f"2.{i}" for i in range(1, 12)] + [f"3.{i}" for i in range(1, 8)]
        + [f"4.{g}.{i}" for g in (1, 2) for i in range(1, 6)] + [f"5.{i}" for i in range(1, 21)]
        + ["6.1.1", "6.1.2", "6.1.3", "6.2.1", "6.2.2", "6.2.3", "6.2.4", "6.3.1", "6.3.2"]
        + [f"6.4.{i}" for i in range(1, 5)] + [f"6.5.{i}" for i in range(1, 6)]
        + [f"6.6.{i}" for i in range(1, 12)] + [f"6.7.{i}" for i in range(1, 5)]
        + ["6.8.1", "6.8.2"] + [f"6.9.{i}" for i in range(1, 5)]
        + [f"6.10.{i}" for i in range(1, 4)] + [f"6.11.{i}" for i in range(1, 6)]
        + [f"6.12.{i}" for i in range(1, 9)] + [f"6.13.{i}" for i in range(1, 6)]
        + [f"6.14.{i}" for i in range(1, 11)] + ["6.15.1"]
        + [f"6.16.{i}" for i in range(1, 4)]
        + [f"6.{g}.{i}" for g in (17, 18, 19) for i in range(1, 6)]
        + [f"6.20.{i}" for i in range(1, 8)] + [f"6.21.{i}" for i in range(1, 9)]
        + [f"6.22.{i}" for i in range(1, 35)] + [f"6.23.{i}" for i in range(1, 8)]
        + ["7.1.1", "7.1.2", "7.1.3", "7.1.4", "7.1.5", "7.1.6"]
        + [f"7.3.{i}" for i in range(1, 7)] + ["7.5.1"]
        + [f"7.7.{i}" for i in range(1, 14)] + [f"7.9.{i}" for i in range(1, 10)]
        + ["7.13.1", "7.13.2", "10.1.1"] + [f"X.{i}" for i in range(1, 10)]
    )
    assert set(expected) <= ids, sorted(set(expected) - ids)


# -- Rows with a pause: what has been answered before the rest arrives --------------------

def _steps_server(steps: list[tuple[bytes, list[Item]]], split: bool) -> None:
    run = EchoRun(WebSocketConnection(Role.SERVER))
    seen = 0
    for data, new in steps:
        if split:
            run.feed_all(data[i:i + 1] for i in range(len(data)))
        else:
            run.feed(data)
        out = run.output()
        assert out[seen:] == new
        seen = len(out)


@pytest.mark.parametrize("split", [False, True], ids=["writes", "bytes"])
def test_5_19_pong_during_pause(split: bool) -> None:
    F = raw_frame
    _steps_server([
        (F(OP_TEXT, "fragment1", fin=False) + F(OP_CONT, "fragment2", fin=False)
         + F(OP_PING, "pongme 1!"), [pong("pongme 1!")]),
        (F(OP_CONT, "fragment3", fin=False) + F(OP_CONT, "fragment4", fin=False)
         + F(OP_PING, "pongme 2!"), [pong("pongme 2!")]),
        (F(OP_CONT, "fragment5"), [text("fragment1fragment2fragment3fragment4fragment5")]),
        (close_frame(1000), [closed(1000), EOF]),
    ], split)


def _utf8_pause_steps(row: str) -> list[tuple[bytes, list[Item]]]:
    F = raw_frame
    above = bytes.fromhex("f4908080")
    fail = [closed(1007), EOF]
    if row == "6.4.1":
        return [(F(OP_TEXT, KOSME, fin=False), []), (F(OP_CONT, above, fin=False), fail),
                (F(OP_CONT, EDITED), [])]
    if row == "6.4.2":
        return [(F(OP_TEXT, KOSME + b"\xf4", fin=False), []),
                (F(OP_CONT, b"\x90", fin=False), fail),
                (F(OP_CONT, b"\x80\x80" + EDITED), [])]
    one = F(OP_TEXT, KOSME + above + EDITED)
    k = len(one) - len(above + EDITED)
    if row == "6.4.3":
        return [(one[:k], []), (one[k:k + 4], fail), (one[k + 4:], [])]
    return [(one[:k + 1], []), (one[k + 1:k + 2], fail), (one[k + 2:], [])]


@pytest.mark.parametrize("split", [False, True], ids=["writes", "bytes"])
@pytest.mark.parametrize("row", ["6.4.1", "6.4.2", "6.4.3", "6.4.4"])
def test_6_4_fail_fast_on_invalid_utf8(row: str, split: bool) -> None:
    """Strict: fail as soon as the invalid byte is visible, even inside an unfinished frame."""
    _steps_server(_utf8_pause_steps(row), split)


def test_2_10_all_pings_answered_in_order_in_one_write() -> None:
    run = EchoRun(WebSocketConnection(Role.SERVER))
    run.feed(b"".join(raw_frame(OP_PING, f"payload-{i}") for i in range(10)))
    assert run.output() == [pong(f"payload-{i}") for i in range(10)]
    assert [e for e in run.events if isinstance(e, Ping)] == [
        Ping(f"payload-{i}".encode()) for i in range(10)]


def test_2_7_unsolicited_pong_reported_not_answered() -> None:
    run = EchoRun(WebSocketConnection(Role.SERVER))
    run.feed(raw_frame(OP_PONG, b"x"))
    assert run.events == [Pong(b"x")]
    assert run.out == []


def test_7_1_1_close_after_echo() -> None:
    run = EchoRun(WebSocketConnection(Role.SERVER))
    run.feed(raw_frame(OP_TEXT, "Hello World!"))
    assert run.output() == [text("Hello World!")]
    assert run.events == [TextMessage("Hello World!")]
    run.feed(close_frame(1000))
    assert run.output() == [text("Hello World!"), closed(1000), EOF]
    assert run.events[1:] == [CloseReceived(1000, ""), ConnectionClosed(1000, "", None)]


# -- 9 Limits and performance, sized down (delivery only; speed lives in bench/) -----------

def _echo_one(writes: list[bytes], expect: Item) -> None:
    run = EchoRun(WebSocketConnection(Role.SERVER))
    run.feed_all(writes)
    run.feed(close_frame(1000))
    assert run.output() == [expect, closed(1000), EOF]


SIZES_9_1 = [64 * 1024, 256 * 1024, 1024 * 1024]


@pytest.mark.parametrize("size", SIZES_9_1, ids=lambda n: f"{n // 1024}KiB")
@pytest.mark.parametrize("kind", ["9.1-text", "9.2-binary"])
def test_9_1_9_2_one_big_frame(kind: str, size: int) -> None:
    if kind == "9.1-text":
        _echo_one([raw_frame(OP_TEXT, "*" * size)], text("*" * size))
    else:
        data = bytes(range(256)) * (size // 256)
        _echo_one([raw_frame(OP_BINARY, data)], binary(data))


@pytest.mark.parametrize("fragment", [64, 256, 1024, 4096, 16384, 65536, 256 * 1024])
@pytest.mark.parametrize("kind", ["9.3-text", "9.4-binary"])
def test_9_3_9_4_message_in_fragments(kind: str, fragment: int) -> None:
    size = 256 * 1024  # 4 MiB in the suite
    data = ("*" * size).encode() if kind == "9.3-text" else bytes(range(256)) * (size // 256)
    op = OP_TEXT if kind == "9.3-text" else OP_BINARY
    frames = fragmented(op, data, fragment)
    _echo_one([frames], text(data.decode()) if op == OP_TEXT else binary(data))


@pytest.mark.parametrize("piece", [64, 128, 256, 512, 1024, 2048])
@pytest.mark.parametrize("kind", ["9.5-text", "9.6-binary"])
def test_9_5_9_6_big_frame_in_small_writes(kind: str, piece: int) -> None:
    size = 128 * 1024  # 1 MiB in the suite
    if kind == "9.5-text":
        _echo_one(split_every(raw_frame(OP_TEXT, "*" * size), piece), text("*" * size))
    else:
        data = bytes(range(256)) * (size // 256)
        _echo_one(split_every(raw_frame(OP_BINARY, data), piece), binary(data))


@pytest.mark.parametrize("size", [0, 16, 64, 256, 1024, 4096])
@pytest.mark.parametrize("kind", ["9.7-text", "9.8-binary"])
def test_9_7_9_8_many_round_trips(kind: str, size: int) -> None:
    run = EchoRun(WebSocketConnection(Role.SERVER))
    for i in range(200):  # 1000 in the suite
        if kind == "9.7-text":
            msg = (str(i % 10) * size)
            run.feed(raw_frame(OP_TEXT, msg))
            want: Item = text(msg)
        else:
            blob = bytes((i % 256,)) * size
            run.feed(raw_frame(OP_BINARY, blob))
            want = binary(blob)
        assert run.output()[-1] == want  # each echo before the next message is sent
    assert len(run.output()) == 200


def test_9_limit_refused_cleanly_with_1009() -> None:
    run = EchoRun(WebSocketConnection(Role.SERVER, max_message_size=64 * 1024))
    run.feed(raw_frame(OP_TEXT, "*" * (64 * 1024)))
    run.feed(raw_frame(OP_TEXT, "*" * (64 * 1024 + 1)))
    run.feed(raw_frame(OP_PING))
    assert run.output() == [text("*" * (64 * 1024)), closed(1009), EOF]
    assert run.closed_event().code == 1009


# -- 0 Opening handshake (ServerHandshake) --------------------------------------------------

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _request(version: str = "13", key: str | None = "dGhlIHNhbXBsZSBub25jZQ==",
             extra: str = "") -> bytes:
    lines = ["GET /chat HTTP/1.1", "Host: server.example.com", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Version: {version}"]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def _parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    assert lines[0].startswith("HTTP/1.1 ")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


HandshakeFeed = Callable[[bytes], object]


@pytest.mark.parametrize("mode", ["whole", "bytes"])
def test_0_1_accept_and_close(mode: str) -> None:
    from hyco_proto.handshake import HandshakeRequest, ServerHandshake

    key = base64.b64encode(bytes(range(16))).decode()
    hs = ServerHandshake()
    data = _request(key=key) + close_frame(1000)
    event = None
    for chunk in ([data] if mode == "whole" else [data[i:i + 1] for i in range(len(data))]):
        hs.receive_data(chunk)
        event = event or hs.next_event()
    assert isinstance(event, HandshakeRequest)
    status, headers, body = _parse_response(hs.accept())
    assert status == 101 and body == b""
    assert headers["upgrade"].lower() == "websocket"
    assert headers["connection"].lower() == "upgrade"
    want = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    assert headers["sec-websocket-accept"] == want
    run = EchoRun(WebSocketConnection(Role.SERVER, trailing_data=hs.trailing_data))
    run.feed(b"")
    assert run.output() == [closed(1000), EOF]


def test_0_2_wrong_version_gets_426_with_version_header() -> None:
    from hyco_proto.handshake import ServerHandshake

    hs = ServerHandshake()
    hs.receive_data(_request(version="12"))
    assert hs.next_event() is None
    assert hs.rejection is not None
    status, headers, _ = _parse_response(hs.rejection)
    assert status == 426
    assert headers["sec-websocket-version"] == "13"


def test_0_3_no_extension_no_subprotocol_selected() -> None:
    from hyco_proto.handshake import ServerHandshake

    hs = ServerHandshake()
    hs.receive_data(_request(extra="Sec-WebSocket-Extensions: permessage-deflate\r\n"))
    assert hs.next_event() is not None
    _, headers, _ = _parse_response(hs.accept())
    assert "sec-websocket-extensions" not in headers
    assert "sec-websocket-protocol" not in headers


@pytest.mark.parametrize(
    "key", [None, "", "dGhlIHNhbXBsZQ==", "not base64!!", "AAAAAAAAAAAAAAAAAAAAAAA="])
def test_0_4_missing_or_bad_key_gets_400(key: str | None) -> None:
    from hyco_proto.handshake import ServerHandshake

    hs = ServerHandshake()
    hs.receive_data(_request(key=key))
    assert hs.next_event() is None
    assert hs.rejection is not None
    assert _parse_response(hs.rejection)[0] == 400
