"""Frame kernel tests, run against every available implementation (``fmod`` fixture).

RFC 6455 §5.2 (framing), §5.3 (masking), §5.4 (fragmentation), §5.5 (control frames).
"""

from __future__ import annotations

import itertools
import os
import struct
import subprocess
import sys
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import FRAME_MODULES

KEY = b"\x37\xfa\x21\x3d"


def naive_mask(data: bytes, key: bytes, offset: int = 0) -> bytes:
    return bytes(b ^ key[(i + offset) % 4] for i, b in enumerate(data))


def masked_frame(
    opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, key: bytes = KEY
) -> bytes:
    """Build a client frame by hand (independent of the code under test)."""
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", b0, 0x80 | 127, n)
    return head + key + naive_mask(payload, key)


def plain_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", b0, 126, n) + payload
    return struct.pack("!BBQ", b0, 127, n) + payload


def collect(chunks: list[tuple[int, bytes, bool]]) -> list[tuple[int, bytes, bool]]:
    """Merge consecutive chunks of one frame so split feeds compare equal to whole feeds."""
    out: list[tuple[int, bytes, bool]] = []
    for op, data, fin in chunks:
        if out and out[-1][0] == op and op < 8 and not out[-1][2] and data and out[-1][1]:
            prev = out.pop()
            out.append((op, prev[1] + data, fin))
        else:
            out.append((op, data, fin))
    return out


def feed_all(dec: object, data: bytes, step: int | None = None) -> list[tuple[int, bytes, bool]]:
    res: list[tuple[int, bytes, bool]] = []
    if step is None:
        res.extend(dec.feed(data))  # type: ignore[attr-defined]
    else:
        for i in range(0, len(data), step):
            res.extend(dec.feed(data[i : i + step]))  # type: ignore[attr-defined]
    return res


def payload_by_message(chunks: list[tuple[int, bytes, bool]]) -> list[tuple[int, bytes]]:
    """Reassemble data messages; control frames pass through."""
    msgs: list[tuple[int, bytes]] = []
    cur_op, cur = -1, b""
    for op, data, fin in chunks:
        if op >= 8:
            msgs.append((op, data))
            continue
        if op != 0 and cur_op == -1:
            cur_op = op
        cur += data
        if fin:
            msgs.append((cur_op, cur))
            cur_op, cur = -1, b""
    return msgs


class TestMask:
    @pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 7, 8, 9, 31, 32, 33, 125, 1000, 70000])
    @pytest.mark.parametrize("offset", [0, 1, 2, 3, 6])
    def test_apply_mask_matches_naive(self, fmod: ModuleType, size: int, offset: int) -> None:
        data = os.urandom(size)
        assert fmod.apply_mask(data, KEY, offset) == naive_mask(data, KEY, offset)

    def test_apply_mask_accepts_buffers(self, fmod: ModuleType) -> None:
        data = b"hello world, masked"
        expected = naive_mask(data, KEY)
        assert fmod.apply_mask(bytearray(data), KEY) == expected
        assert fmod.apply_mask(memoryview(data), KEY) == expected
        assert fmod.apply_mask(memoryview(b"xx" + data)[2:], KEY) == expected

    @pytest.mark.parametrize("size", [0, 1, 5, 64, 1023, 100_000])
    def test_inplace_bytearray_and_memoryview(self, fmod: ModuleType, size: int) -> None:
        data = os.urandom(size)
        buf = bytearray(data)
        fmod.apply_mask_inplace(buf, KEY, 1)
        assert bytes(buf) == naive_mask(data, KEY, 1)
        whole = bytearray(b"ab" + data)
        fmod.apply_mask_inplace(memoryview(whole)[2:], KEY, 3)
        assert bytes(whole) == b"ab" + naive_mask(data, KEY, 3)

    def test_chunked_masking_with_phase(self, fmod: ModuleType) -> None:
        data = os.urandom(1001)
        parts, pos = [], 0
        for size in (1, 2, 3, 5, 8, 13, 21, 948):
            parts.append(fmod.apply_mask(data[pos : pos + size], KEY, pos))
            pos += size
        assert b"".join(parts) == naive_mask(data, KEY)

    def test_bad_key_and_readonly(self, fmod: ModuleType) -> None:
        with pytest.raises(ValueError, match="4 bytes"):
            fmod.apply_mask(b"abc", b"123")
        with pytest.raises(ValueError, match="4 bytes"):
            fmod.apply_mask_inplace(bytearray(b"abc"), b"12345")
        with pytest.raises(TypeError, match="writable"):
            fmod.apply_mask_inplace(b"read-only", KEY)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300), st.binary(min_size=4, max_size=4), st.integers(0, 7))
    def test_implementations_agree(self, data: bytes, key: bytes, offset: int) -> None:
        results = {m.apply_mask(data, key, offset) for m in FRAME_MODULES}
        assert results == {naive_mask(data, key, offset)}


class TestHeader:
    @pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536, 2**32 + 5])
    @pytest.mark.parametrize("key", [None, KEY])
    def test_roundtrip(self, fmod: ModuleType, length: int, key: bytes | None) -> None:
        head = fmod.encode_header(2, length, True, 0, key)
        assert fmod.decode_header(head) == (True, 0, 2, key, length, len(head))
        # Any prefix is incomplete.
        for cut in range(len(head)):
            assert fmod.decode_header(head[:cut]) is None
        # Trailing data and an offset do not change the result.
        assert fmod.decode_header(b"zz" + head + b"payload", 2) == (
            True,
            0,
            2,
            key,
            length,
            len(head),
        )

    def test_header_bytes(self, fmod: ModuleType) -> None:
        assert fmod.encode_header(1, 5) == b"\x81\x05"
        assert fmod.encode_header(0, 5, False) == b"\x00\x05"
        assert fmod.encode_header(2, 126, True, 4) == b"\xc2\x7e\x00\x7e"
        assert fmod.encode_header(2, 65536) == b"\x82\x7f" + (65536).to_bytes(8, "big")
        assert fmod.encode_header(9, 0, mask_key=KEY) == b"\x89\x80" + KEY

    @pytest.mark.parametrize("args", [(16, 0), (-1, 0), (1, -1), (1, 0, True, 8)])
    def test_bad_arguments(self, fmod: ModuleType, args: tuple[object, ...]) -> None:
        with pytest.raises((ValueError, OverflowError)):
            fmod.encode_header(*args)

    def test_encode_frame(self, fmod: ModuleType) -> None:
        assert fmod.encode_frame(1, b"hi") == b"\x81\x02hi"
        frame = fmod.encode_frame(2, b"payload", masked=True)
        fin, rsv, op, key, length, size = fmod.decode_header(frame)
        assert (fin, rsv, op, length, size) == (True, 0, 2, 7, 6)
        assert naive_mask(frame[size:], key) == b"payload"
        keys = {fmod.encode_frame(2, b"x", masked=True)[2:6] for _ in range(50)}
        assert len(keys) > 45, "mask keys must be fresh per frame"


class TestDecoder:
    def test_messages_whole_and_split(self, fmod: ModuleType) -> None:
        stream = (
            masked_frame(1, b"fragment1", fin=False)
            + masked_frame(9, b"ping payload")
            + masked_frame(0, b"fragment2")
            + masked_frame(2, b"\xfe" * 70000)
            + masked_frame(2, b"")
            + masked_frame(8, b"\x03\xe8")
        )
        expected = [
            (9, b"ping payload"),
            (1, b"fragment1fragment2"),
            (2, b"\xfe" * 70000),
            (2, b""),
            (8, b"\x03\xe8"),
        ]
        for step in (None, 1, 3, 997, 65536):
            dec = fmod.FrameDecoder(masked=True)
            got = feed_all(dec, stream, step)
            assert payload_by_message(got) == expected, step
            assert dec.error_code == 0 and dec.buffered == 0

    def test_streams_partial_payload(self, fmod: ModuleType) -> None:
        dec = fmod.FrameDecoder(masked=True)
        frame = masked_frame(2, b"abcdefghij")
        assert dec.feed(frame[:8]) == [(2, b"ab", False)]
        assert dec.feed(frame[8:12]) == [(2, b"cdef", False)]
        assert dec.feed(frame[12:]) == [(2, b"ghij", True)]

    def test_client_role(self, fmod: ModuleType) -> None:
        dec = fmod.FrameDecoder(masked=False)
        data = plain_frame(1, b"hello") + plain_frame(10, b"") + plain_frame(2, b"x" * 300)
        assert dec.feed(data) == [(1, b"hello", True), (10, b"", True), (2, b"x" * 300, True)]

    def test_trailing_partial_frame_is_kept(self, fmod: ModuleType) -> None:
        dec = fmod.FrameDecoder(masked=True)
        frame = masked_frame(9, b"ping")
        assert dec.feed(masked_frame(1, b"a") + frame[:3]) == [(1, b"a", True)]
        assert dec.buffered == 3
        assert dec.feed(frame[3:]) == [(9, b"ping", True)]
        assert dec.buffered == 0

    VIOLATIONS = [
        ("rsv1", masked_frame(1, b"hello", rsv=4), 1002, "reserved bits"),
        ("rsv7 close", masked_frame(8, b"\x03\xe8", rsv=7), 1002, "reserved bits"),
        ("opcode 3", masked_frame(3, b""), 1002, "reserved opcode 3"),
        ("opcode 11", masked_frame(11, b""), 1002, "reserved opcode 11"),
        ("unmasked", plain_frame(1, b"hello"), 1002, "must be masked"),
        ("ping 126", masked_frame(9, b"\xfe" * 126), 1002, "125"),
        ("pong 126", masked_frame(10, b"\xfe" * 126), 1002, "125"),
        ("fragmented ping", masked_frame(9, b"fragment1", fin=False), 1002, "fragmented"),
        ("fragmented close", masked_frame(8, b"\x03\xe8", fin=False), 1002, "fragmented"),
        ("stray continuation", masked_frame(0, b"x"), 1002, "continuation"),
        ("stray continuation nofin", masked_frame(0, b"x", fin=False), 1002, "continuation"),
        (
            "text inside message",
            masked_frame(1, b"a", fin=False) + masked_frame(1, b"b"),
            1002,
            "in progress",
        ),
        (
            "binary inside text",
            masked_frame(1, b"a", fin=False) + masked_frame(2, b"b"),
            1002,
            "in progress",
        ),
        ("64-bit msb", b"\x82\xff" + b"\x80" + b"\x00" * 7 + KEY, 1002, "most significant"),
    ]

    @pytest.mark.parametrize("name,data,code,reason", VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
    @pytest.mark.parametrize("step", [None, 1])
    def test_violations(
        self, fmod: ModuleType, name: str, data: bytes, code: int, reason: str, step: int | None
    ) -> None:
        dec = fmod.FrameDecoder(masked=True)
        feed_all(dec, data, step)
        assert dec.error_code == code
        assert reason in dec.error_reason
        assert dec.feed(masked_frame(1, b"after")) == []

    def test_violation_reported_early(self, fmod: ModuleType) -> None:
        # Two bytes are enough to see a reserved opcode; no need to wait for the payload.
        dec = fmod.FrameDecoder(masked=True)
        assert dec.feed(b"\x83\xfe") == []
        assert dec.error_code == 1002

    def test_server_frames_must_not_be_masked(self, fmod: ModuleType) -> None:
        dec = fmod.FrameDecoder(masked=False)
        dec.feed(masked_frame(1, b"x"))
        assert dec.error_code == 1002 and "must not be masked" in dec.error_reason

    def test_allowed_rsv(self, fmod: ModuleType) -> None:
        dec = fmod.FrameDecoder(masked=True, allowed_rsv=4)
        assert dec.feed(masked_frame(1, b"x", rsv=4)) == [(1, b"x", True)]

    def test_size_limits(self, fmod: ModuleType) -> None:
        dec = fmod.FrameDecoder(masked=True, max_frame_size=10)
        assert dec.feed(masked_frame(2, b"x" * 10)) == [(2, b"x" * 10, True)]
        dec.feed(masked_frame(2, b"x" * 11)[:4])
        assert dec.error_code == 1009 and "limit" in dec.error_reason
        dec = fmod.FrameDecoder(masked=True, max_message_size=10)
        out = dec.feed(masked_frame(2, b"x" * 6, fin=False) + masked_frame(0, b"y" * 5))
        assert out == [(2, b"x" * 6, False)] and dec.error_code == 1009
        # Control frames are not counted against the message size.
        dec = fmod.FrameDecoder(masked=True, max_message_size=4)
        assert dec.feed(masked_frame(9, b"x" * 100)) == [(9, b"x" * 100, True)]

    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(st.tuples(st.sampled_from([1, 2, 9, 10]), st.binary(max_size=200)), max_size=6),
        st.integers(1, 50),
    )
    def test_every_split_agrees_across_implementations(
        self, frames: list[tuple[int, bytes]], step: int
    ) -> None:
        stream = b"".join(masked_frame(op, data[:125] if op >= 8 else data) for op, data in frames)
        whole = None
        for mod in FRAME_MODULES:
            for s in (None, step):
                got = collect(feed_all(mod.FrameDecoder(masked=True), stream, s))
                if whole is None:
                    whole = got
                assert got == whole

    def test_every_split_point_small_input(self, fmod: ModuleType) -> None:
        stream = masked_frame(1, b"ab", fin=False) + masked_frame(9, b"p") + masked_frame(0, b"cd")
        expected = payload_by_message(fmod.FrameDecoder(masked=True).feed(stream))
        for i in range(len(stream) + 1):
            for j in range(i, len(stream) + 1):
                dec = fmod.FrameDecoder(masked=True)
                got = dec.feed(stream[:i]) + dec.feed(stream[i:j]) + dec.feed(stream[j:])
                assert payload_by_message(got) == expected


def test_implementation_selection() -> None:
    code = "import hyco_proto.frames as f; print(f.IMPLEMENTATION)"
    env = dict(os.environ, HYCO_PROTO_NO_EXTENSIONS="1")
    env.pop("HYCO_PROTO_REQUIRE_EXTENSION", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "python"
    if len(FRAME_MODULES) > 1:
        env.pop("HYCO_PROTO_NO_EXTENSIONS")
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "cython"


def forward_all(fwd: object, data: bytes, step: int | None = None) -> bytes:
    if step is None:
        return fwd.feed(data)  # type: ignore[attr-defined,no-any-return]
    return b"".join(fwd.feed(data[i : i + step]) for i in range(0, len(data), step))  # type: ignore[attr-defined]


class TestForwarder:
    """The relay's byte path: masked client frames in, the same frames unmasked out."""

    STREAM = (
        masked_frame(1, b"fragment1", fin=False)
        + masked_frame(9, b"ping payload")
        + masked_frame(0, b"fragment2")
        + masked_frame(2, bytes(range(256)) * 300)
        + masked_frame(2, b"")
        + masked_frame(10, b"")
        + masked_frame(1, b"x" * 126, rsv=0)
    )

    def expected(self) -> bytes:
        return (
            plain_frame(1, b"fragment1", fin=False)
            + plain_frame(9, b"ping payload")
            + plain_frame(0, b"fragment2")
            + plain_frame(2, bytes(range(256)) * 300)
            + plain_frame(2, b"")
            + plain_frame(10, b"")
            + plain_frame(1, b"x" * 126)
        )

    @pytest.mark.parametrize("step", [None, 1, 2, 7, 1000, 65536])
    def test_reframes_unmasked(self, fmod: ModuleType, step: int | None) -> None:
        fwd = fmod.Forwarder()
        assert forward_all(fwd, self.STREAM, step) == self.expected()
        assert fwd.frames == 7 and fwd.error_code == 0 and fwd.close_code == -1
        assert fwd.payload_bytes == 9 + 12 + 9 + 76800 + 126
        assert not fwd.mid_frame and fwd.buffered == 0

    def test_streams_partial_frames_with_bounded_memory(self, fmod: ModuleType) -> None:
        payload = os.urandom(3 * 1024 * 1024)
        frame = masked_frame(2, payload)
        fwd = fmod.Forwarder()
        out = []
        for i in range(0, len(frame), 65536):
            out.append(fwd.feed(frame[i : i + 65536]))
            assert fwd.buffered < 14, "payload bytes must stream, never accumulate"
            if i + 65536 < len(frame):
                assert fwd.mid_frame
        assert b"".join(out) == plain_frame(2, payload)
        # The header goes out before the payload has arrived.
        fwd = fmod.Forwarder()
        assert fwd.feed(frame[:14]) == b"\x82\x7f" + len(payload).to_bytes(8, "big")

    def test_preserves_rsv_when_allowed_and_header_encoding(self, fmod: ModuleType) -> None:
        fwd = fmod.Forwarder(allowed_rsv=4)
        assert fwd.feed(masked_frame(1, b"hi", rsv=4)) == b"\xc1\x02hi"
        # A non-minimal 16-bit length is passed through as it came.
        frame = b"\x82\xfe\x00\x03" + KEY + naive_mask(b"abc", KEY)
        assert fmod.Forwarder().feed(frame) == b"\x82\x7e\x00\x03abc"

    def test_close_is_forwarded_and_ends_the_direction(self, fmod: ModuleType) -> None:
        fwd = fmod.Forwarder()
        data = (
            masked_frame(1, b"last") + masked_frame(8, b"\x03\xe8bye") + masked_frame(1, b"after")
        )
        out = fwd.feed(data)
        assert out == plain_frame(1, b"last") + plain_frame(8, b"\x03\xe8bye")
        assert (fwd.close_code, fwd.close_reason) == (1000, "bye")
        assert fwd.feed(masked_frame(1, b"more")) == b""
        empty = fmod.Forwarder()
        assert empty.feed(masked_frame(8, b"")) == b"\x88\x00" and empty.close_code == 1005

    BAD_CLOSES = [
        (b"\x03", 1002),
        (b"\x03\xe7", 1002),  # 999
        (b"\x03\xed", 1002),  # 1005
        (b"\x03\xee", 1002),  # 1006
        (b"\x03\xf7", 1002),  # 1015
        (b"\x07\xd0", 1002),  # 2000
        (b"\x13\x88", 1002),  # 5000
        (b"\x03\xe8\xce\xba\xed\xa0\x80", 1007),  # reason with a surrogate
    ]

    @pytest.mark.parametrize("payload,code", BAD_CLOSES)
    def test_bad_close_bodies(self, fmod: ModuleType, payload: bytes, code: int) -> None:
        fwd = fmod.Forwarder()
        assert fwd.feed(masked_frame(8, payload)) == b""
        assert fwd.error_code == code and fwd.close_code == -1

    @pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 1012, 1014, 3000, 4999])
    def test_good_close_codes(self, fmod: ModuleType, code: int) -> None:
        fwd = fmod.Forwarder()
        fwd.feed(masked_frame(8, code.to_bytes(2, "big")))
        assert fwd.close_code == code and fwd.error_code == 0

    @pytest.mark.parametrize(
        "name,data,code,reason", TestDecoder.VIOLATIONS, ids=[v[0] for v in TestDecoder.VIOLATIONS]
    )
    def test_violations_stop_after_good_frames(
        self, fmod: ModuleType, name: str, data: bytes, code: int, reason: str
    ) -> None:
        fwd = fmod.Forwarder()
        out = forward_all(fwd, masked_frame(2, b"ok") + data, 1)
        assert out.startswith(plain_frame(2, b"ok"))
        assert fwd.error_code == code and reason in fwd.error_reason
        assert fwd.feed(masked_frame(2, b"later")) == b""

    def test_frame_size_limit(self, fmod: ModuleType) -> None:
        fwd = fmod.Forwarder(max_frame_size=100)
        assert fwd.feed(masked_frame(2, b"x" * 100)) == plain_frame(2, b"x" * 100)
        fwd.feed(masked_frame(2, b"x" * 101)[:4])
        assert fwd.error_code == 1009

    def test_client_role_passthrough(self, fmod: ModuleType) -> None:
        fwd = fmod.Forwarder(masked=False)
        data = plain_frame(1, b"abc") + plain_frame(8, b"\x03\xe8")
        assert fwd.feed(data) == data and fwd.close_code == 1000

    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(st.tuples(st.sampled_from([1, 2, 9, 10]), st.binary(max_size=300)), max_size=6),
        st.integers(1, 64),
    )
    def test_implementations_agree_and_match_decoder(
        self, frames: list[tuple[int, bytes]], step: int
    ) -> None:
        stream = b"".join(masked_frame(op, d[:125] if op >= 8 else d) for op, d in frames)
        expected = b"".join(plain_frame(op, d[:125] if op >= 8 else d) for op, d in frames)
        for mod in FRAME_MODULES:
            for s in (None, step):
                # Random text payloads are framing here: UTF-8 is tests/test_forwarder_utf8.py.
                assert forward_all(mod.Forwarder(validate_utf8=False), stream, s) == expected

    def test_every_split_point_small_input(self, fmod: ModuleType) -> None:
        stream = masked_frame(1, b"ab", fin=False) + masked_frame(9, b"p") + masked_frame(0, b"cd")
        expected = fmod.Forwarder().feed(stream)
        for i in range(len(stream) + 1):
            for j in range(i, len(stream) + 1):
                fwd = fmod.Forwarder()
                assert (
                    fwd.feed(stream[:i]) + fwd.feed(stream[i:j]) + fwd.feed(stream[j:]) == expected
                )


class TestForwarderInPlace:
    """``feed_into``: the same re-framing as ``feed``, written over the bytes it read."""

    HEAD = 256

    @staticmethod
    def into(fwd: object, data: bytes, head: int = 256, tail: int = 0) -> bytes:
        buffer = bytearray(b"\xee" * head + data + b"\xdd" * tail)
        begin, stop = fwd.feed_into(buffer, head, head + len(data))  # type: ignore[attr-defined]
        assert head - 131 <= begin <= head and stop <= head + len(data)
        return bytes(buffer[begin:stop])

    @staticmethod
    def run(count: int, text_every: int = 0, text: bytes = b"ok") -> tuple[bytes, bytes]:
        """``count`` whole small frames (lengths 0..125 in turn, each its own key), every
        ``text_every``-th a text frame carrying ``text``: (masked stream, expected output)."""
        stream, out = [], []
        for i in range(count):
            opcode, payload = 2, bytes((i + j) % 256 for j in range(i % 126))
            if text_every and i % text_every == 0:
                opcode, payload = 1, text
            key = bytes((i * 7 + k) % 256 for k in range(4))
            stream.append(masked_frame(opcode, payload, key=key))
            out.append(plain_frame(opcode, payload))
        return b"".join(stream), b"".join(out)

    def test_a_long_run_of_small_frames_in_one_read(self, fmod: ModuleType) -> None:
        stream, expected = self.run(400)
        fwd = fmod.Forwarder()
        assert self.into(fwd, stream) == expected
        assert (fwd.frames, fwd.messages) == (400, 400)
        assert fwd.payload_bytes == sum(i % 126 for i in range(400))

    def test_a_run_after_a_held_over_partial_header(self, fmod: ModuleType) -> None:
        """The held-over bytes go in front of the new read: the output starts before it and
        every frame of the run moves further down than its header shrank."""
        stream, expected = self.run(200)
        fwd = fmod.Forwarder()
        got = self.into(fwd, stream[:3]) + self.into(fwd, stream[3:])
        assert got == expected and fwd.frames == 200

    def test_a_frame_limit_stops_a_run_where_it_is_broken(self, fmod: ModuleType) -> None:
        good = [masked_frame(2, bytes([i]) * (i % 41), key=bytes([i, 1, 2, 3])) for i in range(60)]
        stream = b"".join(good) + masked_frame(2, b"y" * 41) + masked_frame(2, b"never")
        fwd = fmod.Forwarder(max_frame_size=40)
        got = self.into(fwd, stream)
        assert got == b"".join(plain_frame(2, bytes([i]) * (i % 41)) for i in range(60))
        assert fwd.error_code == 1009 and fwd.frames == 60

    @pytest.mark.parametrize("validate", [True, False])
    def test_text_in_a_run_is_checked_only_when_validated(self, fmod: ModuleType,
                                                          validate: bool) -> None:
        stream, expected = self.run(90, text_every=7, text="é".encode())
        fwd = fmod.Forwarder(validate_utf8=validate)
        assert self.into(fwd, stream) == expected and fwd.frames == 90
        bad, _ = self.run(30, text_every=10, text=b"\xff")
        fwd = fmod.Forwarder(validate_utf8=validate)
        got = self.into(fwd, bad)
        if validate:  # the first text frame (the very first frame) is invalid UTF-8
            assert fwd.error_code == 1007 and got == b""
        else:
            assert fwd.error_code == 0 and fwd.frames == 30

    def test_headroom_is_required(self, fmod: ModuleType) -> None:
        assert fmod.FORWARD_HEADROOM == 256
        with pytest.raises(ValueError, match="FORWARD_HEADROOM"):
            fmod.Forwarder().feed_into(bytearray(300), 255)
        with pytest.raises(ValueError, match="do not fit"):
            fmod.Forwarder().feed_into(bytearray(300), 256, 301)

    def test_read_only_buffer_is_refused(self, fmod: ModuleType) -> None:
        with pytest.raises(BufferError):
            fmod.Forwarder().feed_into(bytes(300), 256)

    def test_unmasks_in_place_and_moves_down(self, fmod: ModuleType) -> None:
        stream = masked_frame(2, b"x" * 70_000) + masked_frame(1, b"hi") + masked_frame(9, b"p")
        expected = plain_frame(2, b"x" * 70_000) + plain_frame(1, b"hi") + plain_frame(9, b"p")
        buffer = bytearray(self.HEAD) + bytearray(stream) + bytearray(10)
        begin, stop = fmod.Forwarder().feed_into(memoryview(buffer), self.HEAD,
                                                 self.HEAD + len(stream))
        assert (begin, stop) == (self.HEAD, self.HEAD + len(expected))
        assert buffer[begin:stop] == expected

    def test_held_over_header_goes_before_start(self, fmod: ModuleType) -> None:
        stream = masked_frame(2, b"abc") + masked_frame(8, b"\x03\xe8bye")
        fwd = fmod.Forwarder()
        assert self.into(fwd, stream[:4]) == b""  # 4 of the 6 header bytes: held over
        buffer = bytearray(self.HEAD) + bytearray(stream[4:])
        begin, stop = fwd.feed_into(buffer, self.HEAD)
        assert begin == self.HEAD - 4
        assert buffer[begin:stop] == plain_frame(2, b"abc") + plain_frame(8, b"\x03\xe8bye")
        assert fwd.close_code == 1000 and fwd.close_reason == "bye"
        assert fwd.feed_into(bytearray(300), self.HEAD) == (self.HEAD, self.HEAD)  # closed

    def test_counts_frames_and_whole_messages(self, fmod: ModuleType) -> None:
        fwd = fmod.Forwarder()
        stream = (masked_frame(1, b"ab", fin=False) + masked_frame(9, b"p")
                  + masked_frame(0, b"cd") + masked_frame(2, b"x" * 200) + masked_frame(2, b"y"))
        for piece in (stream[:3], stream[3:20], stream[20:]):
            self.into(fwd, piece)
        assert (fwd.frames, fwd.messages, fwd.payload_bytes) == (5, 3, 2 + 1 + 2 + 200 + 1)
        # A final text frame held back for invalid UTF-8 counts as neither.
        bad = fmod.Forwarder()
        bad.feed(masked_frame(1, b"ok") + masked_frame(1, b"\xff"))
        assert (bad.error_code, bad.frames, bad.messages) == (1007, 1, 1)

    def test_violation_keeps_what_came_before(self, fmod: ModuleType) -> None:
        good, bad = masked_frame(2, b"ok"), b"\x83\x80abcd"  # reserved opcode 3
        fwd = fmod.Forwarder()
        assert self.into(fwd, good + bad) == plain_frame(2, b"ok")
        assert fwd.error_code == 1002 and "opcode" in fwd.error_reason

    COUNTERS = ("frames", "messages", "payload_bytes", "error_code", "error_reason",
                "close_code", "close_reason", "mid_frame", "buffered")

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(st.tuples(st.sampled_from([0, 1, 2, 8, 9, 10]), st.booleans(),
                           st.binary(max_size=300)), max_size=6),
        st.lists(st.integers(0, 2000), max_size=8),
        st.lists(st.booleans(), min_size=10, max_size=10),
        st.binary(max_size=8),
        st.sampled_from([{}, {"validate_utf8": False}, {"max_frame_size": 100},
                         {"masked": False}, {"masked": False, "validate_utf8": False}]),
    )
    def test_same_as_feed(self, frames: list[tuple[int, bool, bytes]], cuts: list[int],
                          inplace: list[bool], junk: bytes, options: dict[str, object]) -> None:
        """Any frames (fragments, bad sequences, invalid UTF-8 and closes included) and trailing
        junk, cut anywhere, fed by ``feed`` alone or by a mix of ``feed_into`` and ``feed``, in
        every kind of forwarder (client or server source, text checked or not, a frame limit):
        the same bytes out, counters, failures and close, in both kernels."""
        frame = masked_frame if options.get("masked", True) else plain_frame
        stream = b"".join(frame(op, d[:125] if op >= 8 else d, fin=fin or op >= 8)
                          for op, fin, d in frames) + junk
        points = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
        pieces = [stream[a:b] for a, b in itertools.pairwise(points)]
        results = []
        for mod in FRAME_MODULES:
            ref, fwd = mod.Forwarder(**options), mod.Forwarder(**options)
            want = b"".join(ref.feed(piece) for piece in pieces)
            got = b"".join(self.into(fwd, piece, tail=7) if inplace[i % 10] else fwd.feed(piece)
                           for i, piece in enumerate(pieces))
            assert got == want
            for name in self.COUNTERS:
                assert getattr(fwd, name) == getattr(ref, name), name
            results.append((got, [getattr(fwd, name) for name in self.COUNTERS]))
        assert all(result == results[0] for result in results), "the kernels disagree"


@pytest.mark.parametrize(
    "payload,result",
    [
        (b"", (1005, "", 0, "")),
        (b"\x03\xe8", (1000, "", 0, "")),
        (b"\x0f\xa0hi", (4000, "hi", 0, "")),
        (b"\x01", (0, "", 1002, "close frame with a 1-byte payload")),
    ],
)
def test_check_close_payload(fmod: ModuleType, payload: bytes, result: tuple[object, ...]) -> None:
    assert fmod.check_close_payload(payload) == result
