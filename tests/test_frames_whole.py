"""``FrameDecoder(whole_binary=N)`` (issue 14): a binary frame (opcode 2) of at most N bytes comes
out as one chunk once complete, in one bytes object filled as it arrives; everything else, and
every error, as without it. Run against every frame kernel (``fmod``)."""

from __future__ import annotations

import random
from types import ModuleType

from tests.test_frames import masked_frame

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING = 0, 1, 2, 8, 9


def decode(fmod: ModuleType, reads: list[bytes], **options: int
           ) -> tuple[list[tuple[int, bytes, bool]], int, int]:
    dec = fmod.FrameDecoder(masked=True, **options)
    chunks: list[tuple[int, bytes, bool]] = []
    for data in reads:
        chunks += dec.feed(data)
    return chunks, dec.error_code, dec.buffered


def cut(stream: bytes, rng: random.Random) -> list[bytes]:
    reads, pos = [], 0
    while pos < len(stream):
        step = rng.choice([1, 2, 7, 100, 4096, 70_000, len(stream)])
        reads.append(stream[pos:pos + step])
        pos += step
    return reads


def test_a_binary_frame_comes_out_whole_however_it_is_cut(fmod: ModuleType) -> None:
    payload = random.Random(1).randbytes(300_000)
    frame = masked_frame(OP_BINARY, payload)
    for step in (1, 7, 1000, 65_536, 256 * 1024, len(frame)):
        reads = [frame[i:i + step] for i in range(0, len(frame), step)]
        chunks, error, buffered = decode(fmod, reads, whole_binary=1 << 20)
        assert chunks == [(OP_BINARY, payload, True)] and not error and buffered == 0
        streamed, _, _ = decode(fmod, reads)
        assert b"".join(c[1] for c in streamed) == payload  # the same bytes, in pieces
        if step < len(frame) - 20:
            assert len(streamed) > 1


def test_held_back_bytes_are_counted(fmod: ModuleType) -> None:
    frame = masked_frame(OP_BINARY, bytes(1000))
    dec = fmod.FrameDecoder(masked=True, whole_binary=1000)
    assert dec.feed(frame[:508]) == []
    assert dec.buffered == 500  # 8 header bytes consumed, 500 payload bytes held
    assert dec.feed(frame[508:]) == [(OP_BINARY, bytes(1000), True)]
    assert dec.buffered == 0


def test_what_is_not_a_small_enough_binary_frame_streams_as_before(fmod: ModuleType) -> None:
    rng = random.Random(2)
    big, first, rest, last = (rng.randbytes(n) for n in (5000, 900, 900, 1000))
    stream = b"".join([
        masked_frame(OP_BINARY, big),                   # over the limit: pieces
        masked_frame(OP_TEXT, "é".encode() * 3000),     # text: pieces
        masked_frame(OP_BINARY, first, fin=False),      # a first fragment: whole, fin False
        masked_frame(OP_PING, b"between"),
        masked_frame(OP_CONT, rest),                    # a continuation: pieces
        masked_frame(OP_BINARY, b""),
        masked_frame(OP_BINARY, last),                  # at the limit: whole
    ])
    reads = [stream[i:i + 333] for i in range(0, len(stream), 333)]
    whole, error, _ = decode(fmod, reads, whole_binary=1000)
    streamed, error2, _ = decode(fmod, reads)
    assert not error and not error2
    assert (OP_BINARY, first, False) in whole and (OP_BINARY, last, True) in whole
    assert (OP_BINARY, first, False) not in streamed and (OP_BINARY, last, True) not in streamed
    assert max(len(c[1]) for c in whole if c[0] == OP_BINARY) == 1000  # big came in pieces
    assert len([c for c in whole if c[0] == OP_CONT]) > 1
    assert b"".join(c[1] for c in whole) == b"".join(c[1] for c in streamed)
    assert [c for c in whole if c[0] >= 8] == [c for c in streamed if c[0] >= 8]


def test_random_streams_agree_with_streaming(fmod: ModuleType) -> None:
    rng = random.Random(3)
    for _ in range(200):
        parts, sizes = [], []
        for _ in range(rng.randint(1, 6)):
            kind = rng.random()
            if kind < 0.5:
                sizes.append(rng.choice([0, 5, 200, 9000]))
                parts.append(masked_frame(OP_BINARY, rng.randbytes(sizes[-1])))
            elif kind < 0.7:
                parts.append(masked_frame(OP_TEXT, b"t" * rng.randint(0, 300)))
            elif kind < 0.85:
                parts.append(masked_frame(OP_PING, b"p"))
            else:
                parts.append(b"\x82\xff" + bytes(8))  # a bad 64-bit length: 1002
        reads = cut(b"".join(parts), rng)
        limit = rng.choice([0, 100, 10_000])
        whole, error, _ = decode(fmod, reads, whole_binary=limit)
        streamed, error2, _ = decode(fmod, reads)
        assert error == error2
        # The same payload bytes and control frames; whole frames are their pieces joined.
        assert b"".join(c[1] for c in whole if c[0] < 8) == b"".join(
            c[1] for c in streamed if c[0] < 8)
        assert [c for c in whole if c[0] >= 8] == [c for c in streamed if c[0] >= 8]
        if limit == 10_000 and not error:  # every binary frame fits: one chunk each
            assert [len(c[1]) for c in whole if c[0] == OP_BINARY] == sizes


def test_a_violation_inside_drops_the_partial_frame(fmod: ModuleType) -> None:
    frame = masked_frame(OP_BINARY, bytes(100))
    dec = fmod.FrameDecoder(masked=True, whole_binary=1000, max_message_size=50)
    assert dec.feed(frame) == [] and dec.error_code == 1009
    dec = fmod.FrameDecoder(masked=True, whole_binary=1000)
    assert dec.feed(frame[:50]) == []
    assert dec.feed(frame[50:] + b"\x83\x80" + bytes(4)) == [(OP_BINARY, bytes(100), True)]
    assert dec.error_code == 1002 and dec.buffered == 0  # opcode 3 is reserved
