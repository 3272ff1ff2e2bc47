"""``FrameDecoder.feed_message`` (issue 14): a read that is exactly one whole text or binary
frame (FIN, no RSV) while nothing is held comes back as its message (bytes, or str when valid
UTF-8); anything else exactly as ``feed`` gives it, with the same state after. Run against
every frame kernel (``fmod``)."""

from __future__ import annotations

import random
from types import ModuleType
from typing import Any

from hyco_proto.frames import encode_frame, encode_header
from tests.test_frames import masked_frame

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING = 0, 1, 2, 8, 9


def as_chunks(got: Any, data: bytes) -> list[tuple[int, bytes, bool]]:
    """feed_message's answer in feed's form."""
    if isinstance(got, list):
        return got
    assert data[0] in (0x81, 0x82)
    if isinstance(got, str):
        return [(OP_TEXT, got.encode("utf-8"), True)]
    return [(OP_BINARY, got, True)]


def decode_both(fmod: ModuleType, reads: list[bytes], **options: Any) -> None:
    """feed_message and feed over the same reads: the same chunks, errors and state."""
    by_message = fmod.FrameDecoder(**options)
    by_feed = fmod.FrameDecoder(**options)
    for n, data in enumerate(reads):
        view = memoryview(bytearray(data)) if n % 2 else data  # any buffer
        got = by_message.feed_message(view)
        assert as_chunks(got, data) == by_feed.feed(view)
        if not isinstance(got, list):  # a message only from a read that held nothing else
            assert not by_message.error_code and not by_message.buffered
        assert (by_message.error_code, by_message.buffered) == (by_feed.error_code,
                                                                by_feed.buffered)


def test_one_whole_frame_is_its_message(fmod: ModuleType) -> None:
    dec = fmod.FrameDecoder(masked=True)
    for size in (0, 1, 125, 126, 65_535, 65_536, 300_000):
        payload = random.Random(size).randbytes(size)
        got = dec.feed_message(masked_frame(OP_BINARY, payload))
        assert type(got) is bytes and got == payload
    assert dec.feed_message(masked_frame(OP_TEXT, "héllo".encode())) == "héllo"
    client = fmod.FrameDecoder(masked=False)
    assert client.feed_message(encode_frame(OP_BINARY, b"plain")) == b"plain"
    assert client.feed_message(memoryview(encode_frame(OP_TEXT, b"t"))) == "t"


def test_everything_else_comes_as_feed_gives_it(fmod: ModuleType) -> None:
    one = masked_frame(OP_BINARY, b"one")
    text = masked_frame(OP_TEXT, b"two")
    first = masked_frame(OP_TEXT, b"fra", fin=False)
    rest = masked_frame(OP_CONT, b"gment")
    ping = masked_frame(OP_PING, b"p")
    cases: list[tuple[list[bytes], dict[str, Any]]] = [
        ([one + text], {}),  # two frames in one read
        ([one[:3], one[3:]], {}),  # a frame across reads, then
        ([one[:3], one[3:] + one, one], {}),  # a partial one before a whole one
        ([first, ping, rest, one], {}),  # fragments, a control frame between them
        ([first, one], {}),  # a new data frame inside a fragmented message: 1002
        ([ping, masked_frame(OP_CLOSE, (1000).to_bytes(2, "big"))], {}),
        ([masked_frame(OP_TEXT, b"\xff\xfe"), one], {}),  # bad UTF-8 stays feed's to judge
        ([masked_frame(OP_TEXT, b"a\xed\xa0\x80b")], {}),  # a surrogate
        ([masked_frame(OP_BINARY, b"x" * 100)], {"max_frame_size": 99}),  # 1009
        ([masked_frame(OP_BINARY, b"x" * 100)], {"max_message_size": 99}),
        ([masked_frame(OP_BINARY, b"x" * 100)], {"max_message_size": 100}),
        ([encode_frame(OP_BINARY, b"unmasked")], {}),  # wrong mask bit for the role: 1002
        ([bytes([0xC2]) + masked_frame(OP_BINARY, b"r")[1:], one], {"allowed_rsv": 4}),
        ([bytes([0xC2]) + masked_frame(OP_BINARY, b"r")[1:], one], {}),  # RSV: 1002
        ([encode_header(OP_BINARY, 5, mask_key=b"\0\0\0\0") + b"abc"], {}),  # short
        ([masked_frame(OP_BINARY, b"abc") + b"\x82"], {}),  # and a byte of the next
        ([b"\x82", b""], {}),
        ([text + ping[:1], ping[1:]], {}),  # the held byte's frame, its rest begins 0x82
        ([one, b"\x83\x80\0\0\0\0", one], {}),  # reserved opcode: 1002, then nothing
        ([one + b"\x83\x80\0\0\0\0"], {}),  # a whole frame, then a bad one: the list
        ([text + bytes([0xA1]) + masked_frame(OP_TEXT, b"r")[1:]], {}),  # then RSV 2
    ]
    for reads, options in cases:
        decode_both(fmod, reads, masked=True, **options)
    decode_both(fmod, [encode_frame(OP_BINARY, b"a") + encode_frame(OP_TEXT, b"b"),
                       encode_frame(OP_TEXT, b"c")], masked=False)


def test_random_streams_cut_anywhere(fmod: ModuleType) -> None:
    rng = random.Random(14)
    for _ in range(200):
        frames = []
        for _ in range(rng.randrange(1, 6)):
            kind = rng.choice(["bin", "text", "badtext", "ping", "frag"])
            size = rng.choice([0, 3, 125, 126, 1000, 70_000])
            if kind == "bin":
                frames.append(masked_frame(OP_BINARY, rng.randbytes(size)))
            elif kind == "text":
                frames.append(masked_frame(OP_TEXT, ("é" * size).encode()))
            elif kind == "badtext":
                frames.append(masked_frame(OP_TEXT, b"ok\xc3"))
            elif kind == "ping":
                frames.append(masked_frame(OP_PING, rng.randbytes(min(size, 125))))
            else:
                frames += [masked_frame(OP_BINARY, b"a" * size, fin=False),
                           masked_frame(OP_CONT, b"b")]
        stream = b"".join(frames)
        if rng.random() < 0.5:  # frame by frame, some of them in two reads
            reads = []
            for frame in frames:
                cut = rng.randrange(len(frame) + 1) if rng.random() < 0.3 else len(frame)
                reads += [frame[:cut], frame[cut:]]
        else:
            reads, pos = [], 0
            while pos < len(stream):
                step = rng.choice([1, 5, 200, 70_000, len(stream)])
                reads.append(stream[pos:pos + step])
                pos += step
        decode_both(fmod, [r for r in reads if r], masked=True,
                    whole_binary=rng.choice([0, 128 * 1024]))
