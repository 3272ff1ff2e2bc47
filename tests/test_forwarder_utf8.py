"""The Forwarder's streaming UTF-8 check of text messages (issue 12), on every frame kernel.

RFC 6455 §8.1: a text message must be UTF-8. The relay's ``Forwarder`` validates text payload
bytes as they stream: a code point may be split across reads and across the frames of a message.
It fails fast at the first byte that no valid message can continue: an invalid byte, or a lead
byte whose sequence cannot end before the final frame does (a final frame too short for a code
point begun before it fails at its header, before anything of it is forwarded). The bytes before
the failure are forwarded, ``error_code`` is 1007, unless the failing frame's header arrived in
the same read: then nothing of that frame is forwarded, so the other leg is still between frames
and the relay can tell it 1001 cleanly. The oracle below is independent of both
kernels: Python's strict UTF-8 decoder on brute-forced completions.
"""

from __future__ import annotations

import itertools
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyco_proto.service.config import ServiceConfig
from hyco_proto.service.tomlconfig import parse_config
from tests.conftest import FRAME_MODULES
from tests.test_frames import masked_frame, plain_frame

# Completions that decide whether a prefix can still become valid UTF-8: every allowed range of
# a continuation byte contains one of these endpoints.
_EDGES = (0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF)
_COMPLETIONS = [b""] + [bytes(c) for k in (1, 2, 3) for c in itertools.product(_EDGES, repeat=k)]


def can_continue(prefix: bytes, room: int) -> bool:
    """Some valid UTF-8 string starts with ``prefix`` and has at most ``room`` more bytes."""
    for tail in _COMPLETIONS:
        if len(tail) > room:
            break
        try:
            (prefix + tail).decode("utf-8")
        except UnicodeDecodeError:
            continue
        return True
    return False


def expected(parts: list[bytes], cuts: tuple[int, ...] = (), opcode: int = 1
             ) -> tuple[bytes, bool]:
    """What a validating Forwarder sends for a message in frames ``parts`` whose wire bytes
    (``wire(parts)``) arrive in reads ending at ``cuts``: (bytes, failed). A frame that fails
    in the same read that completed its header is held back whole (nothing of it is sent)."""
    payload = b"".join(parts)
    total = len(payload)
    final_start = total - len(parts[-1])
    out = b""
    offset = 0
    at_wire = 0  # where the current frame starts in the wire bytes
    for k, part in enumerate(parts):
        final = k == len(parts) - 1
        if final and not can_continue(payload[:offset], total - offset):
            return out, True  # the final frame's header is not forwarded
        head = plain_frame(opcode if k == 0 else 0, part, fin=final)
        head = head[: len(head) - len(part)]
        header_end = at_wire + len(head) + 4  # the masking key ends the header
        before = out
        out += head
        for i, byte in enumerate(part):
            at = offset + i
            room = total - at - 1 if at >= final_start else 3
            if not can_continue(payload[: at + 1], room):
                bad = header_end + i  # the wire index of the failing byte
                same_read = not any(header_end <= cut <= bad for cut in cuts)
                return (before if same_read else out), True
            out += bytes((byte,))
        offset += len(part)
        at_wire = header_end + len(part)
    return out, False


def wire(parts: list[bytes], opcode: int = 1) -> bytes:
    return b"".join(
        masked_frame(opcode if k == 0 else 0, part, fin=k == len(parts) - 1)
        for k, part in enumerate(parts)
    )


def forward(fwd: object, stream: bytes, cuts: tuple[int, ...] = ()) -> bytes:
    out = b""
    last = 0
    for cut in (*cuts, len(stream)):
        out += fwd.feed(stream[last:cut])  # type: ignore[attr-defined]
        last = cut
    return out


VALID = ["aé€😀z", "κόσμε", "\u0080\u07ff\u0800\uffff\U00010000\U0010ffff"]
INVALID = {
    "overlong-2": b"ab\xc0\xafcd",
    "overlong-3": b"ab\xe0\x80\xafcd",
    "overlong-4": b"ab\xf0\x80\x80\xafcd",
    "surrogate": b"ab\xed\xa0\x80cd",
    "surrogate-high-end": b"ab\xed\xbf\xbfcd",
    "above-10ffff": b"ab\xf4\x90\x80\x80cd",
    "f5": b"ab\xf5\x80\x80\x80cd",
    "ff": b"ab\xffcd",
    "lone-continuation": b"ab\x80cd",
    "missing-continuation": b"ab\xe2\x82cd",
    "truncated-3": b"ab\xe2\x82",
    "truncated-4": b"ab\xf0\x9f\x98",
    "truncated-lead": b"ab\xe2",
}


def check_all_splits(fmod: ModuleType, payload: bytes) -> None:
    """Every split into a text frame and a continuation, each fed in two reads at every point."""
    for s in range(len(payload) + 1):
        parts = [payload[:s], payload[s:]]
        stream = wire(parts)
        for cut in range(len(stream) + 1):
            want, failed = expected(parts, (cut,))
            fwd = fmod.Forwarder()
            assert forward(fwd, stream, (cut,)) == want, (s, cut)
            assert fwd.error_code == (1007 if failed else 0), (s, cut)
            if failed:
                assert fwd.error_reason
                assert fwd.feed(masked_frame(1, b"more")) == b""


@pytest.mark.parametrize("text", VALID)
def test_valid_text_split_everywhere(fmod: ModuleType, text: str) -> None:
    payload = text.encode()
    assert expected([payload]) == (plain_frame(1, payload), False)
    check_all_splits(fmod, payload)


@pytest.mark.parametrize("payload", list(INVALID.values()), ids=list(INVALID))
def test_invalid_text_split_everywhere(fmod: ModuleType, payload: bytes) -> None:
    assert expected([payload])[1]
    check_all_splits(fmod, payload)


@pytest.mark.parametrize(
    ("payload", "forwarded"),
    [
        (b"ab\xed\xa0\x80cd", 3),  # fails at A0: ED 80..9F only (no surrogates)
        (b"ab\xf4\x90\x80\x80", 3),  # fails at 90: F4 80..8F only (nothing above U+10FFFF)
        (b"ab\xc0\xaf", 2),  # C0 never starts a sequence (overlong)
        (b"ab\xe0\x9f\xbf", 3),  # E0 A0..BF only (overlong)
        (b"ab\xe2\x82", 2),  # the lead byte cannot be completed in the final frame
        (b"ab\xe2\x82\xac", 5),
    ],
)
def test_fails_fast_at_the_first_invalid_byte(
    fmod: ModuleType, payload: bytes, forwarded: int
) -> None:
    # The header (2 bytes + the masking key) in one read, the payload in the next.
    frame = masked_frame(1, payload)
    fwd = fmod.Forwarder()
    out = fwd.feed(frame[:6]) + fwd.feed(frame[6:])
    assert out == plain_frame(1, payload)[: 2 + forwarded]
    assert fwd.payload_bytes == forwarded
    assert fwd.error_code == (1007 if forwarded < len(payload) else 0)
    assert fwd.mid_frame == (forwarded < len(payload))
    # In one read, a failing frame is held back whole: the other leg stays between frames,
    # so the relay can still tell it 1001 (issue 12), not just drop its TCP connection.
    fwd = fmod.Forwarder()
    out = fwd.feed(masked_frame(1, b"ok") + frame)
    failed = forwarded < len(payload)
    assert out == plain_frame(1, b"ok") + (b"" if failed else plain_frame(1, payload))
    assert fwd.frames == (1 if failed else 2)
    assert fwd.payload_bytes == 2 + (0 if failed else len(payload))
    assert fwd.error_code == (1007 if failed else 0)
    assert not fwd.mid_frame


def test_code_point_straddles_frames_and_a_ping(fmod: ModuleType) -> None:
    euro = "€".encode()
    stream = (
        masked_frame(1, b"x" + euro[:1], fin=False)
        + masked_frame(9, b"ping")
        + masked_frame(0, euro[1:2], fin=False)
        + masked_frame(0, euro[2:] + b"y")
    )
    want = (
        plain_frame(1, b"x" + euro[:1], fin=False)
        + plain_frame(9, b"ping")
        + plain_frame(0, euro[1:2], fin=False)
        + plain_frame(0, euro[2:] + b"y")
    )
    for cut in range(len(stream) + 1):
        fwd = fmod.Forwarder()
        assert forward(fwd, stream, (cut,)) == want and fwd.error_code == 0


def test_final_frame_too_short_fails_before_its_header(fmod: ModuleType) -> None:
    fwd = fmod.Forwarder()
    first = masked_frame(1, b"a\xf0\x9f", fin=False)
    out = fwd.feed(first + masked_frame(0, b"\x98"))
    assert out == plain_frame(1, b"a\xf0\x9f", fin=False)
    assert fwd.error_code == 1007 and not fwd.mid_frame
    # An empty final frame after an unfinished code point alike.
    fwd = fmod.Forwarder()
    assert fwd.feed(first + masked_frame(0, b"")) == plain_frame(1, b"a\xf0\x9f", fin=False)
    assert fwd.error_code == 1007 and not fwd.mid_frame


def test_each_message_starts_afresh(fmod: ModuleType) -> None:
    fwd = fmod.Forwarder()
    stream = masked_frame(1, "é".encode()) + masked_frame(2, b"\xff\xfe") + masked_frame(1, b"ok")
    assert fwd.feed(stream) == plain_frame(1, "é".encode()) + plain_frame(2, b"\xff\xfe") + \
        plain_frame(1, b"ok")
    assert fwd.error_code == 0


@pytest.mark.parametrize("payload", [b"\xff\xfe\xfd", b"ab\xed\xa0\x80", b"\xe2\x82"])
def test_binary_is_never_checked(fmod: ModuleType, payload: bytes) -> None:
    stream = masked_frame(2, payload[:1], fin=False) + masked_frame(0, payload[1:])
    fwd = fmod.Forwarder()
    assert fwd.feed(stream) == plain_frame(2, payload[:1], fin=False) + plain_frame(0, payload[1:])
    assert fwd.error_code == 0


@pytest.mark.parametrize("payload", list(INVALID.values()), ids=list(INVALID))
def test_flag_off_forwards_invalid_text_unchanged(fmod: ModuleType, payload: bytes) -> None:
    fwd = fmod.Forwarder(validate_utf8=False)
    stream = wire([payload[:3], payload[3:]])
    assert fwd.feed(stream) == plain_frame(1, payload[:3], fin=False) + plain_frame(0, payload[3:])
    assert fwd.error_code == 0


def test_compressed_text_is_not_checked(fmod: ModuleType) -> None:
    """RSV1 (permessage-deflate): the payload is deflate data, text only once inflated."""
    fwd = fmod.Forwarder(allowed_rsv=4)
    frame = masked_frame(1, b"\xff\x00\xc0", rsv=4)
    out = fwd.feed(frame)
    assert out[0] == 0xC1 and out[2:] == b"\xff\x00\xc0" and fwd.error_code == 0


def test_unmasked_source_is_checked_too(fmod: ModuleType) -> None:
    fwd = fmod.Forwarder(masked=False)
    frame = plain_frame(1, b"ok\xed\xa0\x80")
    assert fwd.feed(frame[:2]) + fwd.feed(frame[2:]) == frame[:5]
    assert fwd.error_code == 1007 and fwd.mid_frame
    fwd = fmod.Forwarder(masked=False)
    assert fwd.feed(frame) == b""
    assert fwd.error_code == 1007 and not fwd.mid_frame


@pytest.mark.parametrize("step", [None, 65536, 100_003])
def test_big_text_message(fmod: ModuleType, step: int | None) -> None:
    """1 MiB of mixed text (blocks, GIL release) with one surrogate far in."""
    chars = "aé€😀" * 105_000
    good = chars.encode()  # 1.05 MB
    bad_at = len(chars[:280_001].encode())  # on a code point boundary, about 700 KB in
    payload = good[:bad_at] + b"\xed\xa0\x80" + good[bad_at:]
    for data, failed in ((good, False), (payload, True)):
        stream = masked_frame(1, data)
        cuts = tuple(range(step, len(stream), step)) if step else ()
        fwd = fmod.Forwarder()
        out = forward(fwd, stream, cuts)
        if failed and step is None:  # failed in the read that held its header: held back
            assert fwd.error_code == 1007 and fwd.payload_bytes == 0 and out == b""
            assert not fwd.mid_frame
        elif failed:
            assert fwd.error_code == 1007 and fwd.payload_bytes == bad_at + 1
            assert out == plain_frame(1, data)[: len(out)] and len(out) == 10 + bad_at + 1
        else:
            assert fwd.error_code == 0 and out == plain_frame(1, data)


_text_bytes = st.one_of(
    st.text(max_size=12).map(lambda t: t.encode()),
    st.binary(max_size=4),
    st.sampled_from(list(INVALID.values())),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_text_bytes, min_size=1, max_size=4).map(b"".join),
    st.lists(st.integers(0, 40), max_size=3),
    st.integers(1, 9),
)
def test_kernels_agree_with_the_oracle(payload: bytes, splits: list[int], step: int) -> None:
    bounds = sorted({min(s, len(payload)) for s in splits})
    edges = [0, *bounds, len(payload)]
    parts = [payload[a:b] for a, b in itertools.pairwise(edges)]
    stream = wire(parts)
    for mod in FRAME_MODULES:
        for cuts in ((), tuple(range(step, len(stream), step))):
            want, failed = expected(parts, cuts)
            fwd = mod.Forwarder()
            assert forward(fwd, stream, cuts) == want
            assert fwd.error_code == (1007 if failed else 0)


def test_service_config_switch() -> None:
    assert ServiceConfig().validate_text is True
    assert parse_config("[server]\nvalidate_text = false\n").service.validate_text is False
    assert parse_config("[server]\n").service.validate_text is True
