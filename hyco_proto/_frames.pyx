# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython frame kernel: masking, header codec and the streaming decoder (RFC 6455 §5).

Same API as the pure-Python twin ``_frames_py``; contract in ``_frames.pyi``. Entry points take
plain objects and use the buffer protocol (no typed memoryviews: their per-call cost dwarfs small
frames). Large buffers are masked with the GIL released.
"""

from cpython.buffer cimport (
    PyBUF_FORMAT,
    PyBUF_ND,
    PyBUF_SIMPLE,
    PyBUF_STRIDES,
    PyBUF_WRITABLE,
    PyBuffer_Release,
    PyObject_GetBuffer,
)
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from cpython.object cimport PyObject
cimport cython
from libc.string cimport memcpy, memmove

import os

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

# Masking at or above this size releases the GIL (below it, releasing costs more than it frees).
cdef Py_ssize_t NOGIL_THRESHOLD = 262144


cdef extern from *:
    """
    /* XOR kernel: dst[i] = src[i] ^ key[(phase + i) % 4]; dst may equal src.
       GCC/Clang vector extensions give 32-byte blocks (two SSE2 ops on baseline x86-64); on
       x86 with GNU C and glibc, target_clones adds an AVX2 build picked at load time (ifunc;
       musl has no ifunc, and GCC refuses target_clones there: musllinux wheels). */
    #include <stdint.h>
    #include <string.h>
    #if defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)
    #if defined(__x86_64__) || defined(__i386__)
    #define HYCO_CLONES __attribute__((target_clones("avx2", "default")))
    #endif
    #endif
    #ifndef HYCO_CLONES
    #define HYCO_CLONES
    #endif
    /* The key rotated to the phase, as 4 bytes and as one 32-bit word. */
    static inline uint32_t hyco_key_word(const uint8_t *key, Py_ssize_t phase, uint8_t r[4]) {
        uint32_t k4;
        r[0] = key[phase & 3]; r[1] = key[(phase + 1) & 3];
        r[2] = key[(phase + 2) & 3]; r[3] = key[(phase + 3) & 3];
        memcpy(&k4, r, 4);
        return k4;
    }
    static inline void hyco_xor_small(uint8_t *dst, const uint8_t *src, Py_ssize_t n,
                                      const uint8_t *key, Py_ssize_t phase) {
        uint8_t r[4];
        uint32_t k4 = hyco_key_word(key, phase, r);
        uint64_t k8 = ((uint64_t)k4 << 32) | k4, w;  /* same bytes twice, either endianness */
        Py_ssize_t i = 0;
        for (; i + 8 <= n; i += 8) {
            memcpy(&w, src + i, 8); w ^= k8; memcpy(dst + i, &w, 8);
        }
        for (; i < n; i++) dst[i] = src[i] ^ r[i & 3];
    }
    #if defined(__GNUC__)
    typedef uint8_t hyco_v32 __attribute__((vector_size(32)));
    typedef uint32_t hyco_v8w __attribute__((vector_size(32)));
    HYCO_CLONES
    static void hyco_xor_big(uint8_t *dst, const uint8_t *src, Py_ssize_t n,
                             const uint8_t *key, Py_ssize_t phase) {
        uint8_t r[4];
        uint32_t k4 = hyco_key_word(key, phase, r);
        hyco_v8w kw = {k4, k4, k4, k4, k4, k4, k4, k4};
        hyco_v32 kv, a, b, c, d;
        Py_ssize_t i = 0;
        memcpy(&kv, &kw, 32);
        for (; i + 128 <= n; i += 128) {
            memcpy(&a, src + i, 32); memcpy(&b, src + i + 32, 32);
            memcpy(&c, src + i + 64, 32); memcpy(&d, src + i + 96, 32);
            a ^= kv; b ^= kv; c ^= kv; d ^= kv;
            memcpy(dst + i, &a, 32); memcpy(dst + i + 32, &b, 32);
            memcpy(dst + i + 64, &c, 32); memcpy(dst + i + 96, &d, 32);
        }
        for (; i + 32 <= n; i += 32) {
            memcpy(&a, src + i, 32); a ^= kv; memcpy(dst + i, &a, 32);
        }
        /* i is a multiple of 4 here, so the phase is unchanged for the tail. */
        hyco_xor_small(dst + i, src + i, n - i, key, phase);
    }
    #else
    #define hyco_xor_big hyco_xor_small
    #endif
    #if defined(__GNUC__) && defined(__x86_64__)
    #include <emmintrin.h>
    #include <unistd.h>
    #define HYCO_STREAM 1
    /* Copies that do not fit the last-level cache (source and destination together): measured on
       a 32 MiB-L3 EPYC, streaming wins from about 3/8 of L3. Set once at import. */
    static Py_ssize_t hyco_stream_min = 12 << 20;
    static void hyco_init_stream_min(void) {
    #ifdef _SC_LEVEL3_CACHE_SIZE
        long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
        if (l3 > 0) hyco_stream_min = (Py_ssize_t)l3 / 8 * 3;
        if (hyco_stream_min < (2 << 20)) hyco_stream_min = 2 << 20;
    #endif
    }
    /* Non-temporal stores skip reading each destination line before writing it (SSE2,
       baseline on x86-64). dst must be 16-byte aligned. */
    static void hyco_xor_stream(uint8_t *dst, const uint8_t *src, Py_ssize_t n,
                                const uint8_t *key, Py_ssize_t phase) {
        uint8_t r[4];
        __m128i kv = _mm_set1_epi32((int)hyco_key_word(key, phase, r));
        Py_ssize_t i = 0;
        for (; i + 64 <= n; i += 64) {
            __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
            __m128i b = _mm_loadu_si128((const __m128i *)(src + i + 16));
            __m128i c = _mm_loadu_si128((const __m128i *)(src + i + 32));
            __m128i d = _mm_loadu_si128((const __m128i *)(src + i + 48));
            _mm_stream_si128((__m128i *)(dst + i), _mm_xor_si128(a, kv));
            _mm_stream_si128((__m128i *)(dst + i + 16), _mm_xor_si128(b, kv));
            _mm_stream_si128((__m128i *)(dst + i + 32), _mm_xor_si128(c, kv));
            _mm_stream_si128((__m128i *)(dst + i + 48), _mm_xor_si128(d, kv));
        }
        _mm_sfence();
        hyco_xor_small(dst + i, src + i, n - i, key, phase);
    }
    #endif
    /* Small buffers skip the 32-byte key expansion and the dispatched call. Big ones first
       bring dst to a 32-byte boundary: a bytes object's data sits 16 bytes off one, and
       32-byte stores that straddle cache lines cost more than the XOR itself. */
    static inline void hyco_xor(uint8_t *dst, const uint8_t *src, Py_ssize_t n,
                                const uint8_t *key, Py_ssize_t phase) {
        Py_ssize_t head;
        if (n < 128) {
            hyco_xor_small(dst, src, n, key, phase);
            return;
        }
        head = (Py_ssize_t)((32 - ((uintptr_t)dst & 31)) & 31);
        if (head) hyco_xor_small(dst, src, head, key, phase);
    #ifdef HYCO_STREAM
        /* Not in place, nor overlapping (Forwarder.feed_into writes a little below what it
           reads): the output is read again soon, so it should stay in cache. */
        if (n >= hyco_stream_min && (dst + n <= src || src + n <= dst)) {
            hyco_xor_stream(dst + head, src + head, n - head, key, (phase + head) & 3);
            return;
        }
    #endif
        hyco_xor_big(dst + head, src + head, n - head, key, (phase + head) & 3);
    }
    #ifndef HYCO_STREAM
    static void hyco_init_stream_min(void) {}
    #endif
    /* The relay's hot run: consecutive whole masked frames that end a binary message (or a
       text one when allow_text), FIN, no RSV, 7-bit length (at most max_len), re-framed
       unmasked from src into dst, which may be src itself or behind it (in place: each
       frame's key and every 16- or 8-byte block is read before anything is written over it, and
       output never gets ahead of input, headers only shrink). Stops at the first frame that
       is anything else or not whole. Returns the bytes consumed; adds to *written, *frames and
       *payload. */
    static Py_ssize_t hyco_small_run(uint8_t *dst, const uint8_t *src, Py_ssize_t n,
                                     int allow_text, Py_ssize_t max_len, Py_ssize_t *written,
                                     Py_ssize_t *frames, Py_ssize_t *payload) {
        Py_ssize_t pos = 0, w = 0, count = 0, bytes = 0, len, i;
        uint32_t k4;
        uint64_t k8, v;
        uint8_t b0, b1, r[4];
        while (n - pos >= 6) {
            b0 = src[pos];
            b1 = src[pos + 1];
            if (b0 != 0x82 && !(b0 == 0x81 && allow_text)) break;
            if (b1 < 0x80 || b1 >= 0x80 + 126) break;
            len = b1 & 0x7F;
            if (len > max_len || n - pos < 6 + len) break;
            memcpy(r, src + pos + 2, 4);
            memcpy(&k4, r, 4);
            k8 = ((uint64_t)k4 << 32) | k4;
            dst[w] = b0;
            dst[w + 1] = (uint8_t)len;
            i = 0;
    #if defined(__GNUC__)
            {
                typedef uint64_t hyco_v2 __attribute__((vector_size(16)));
                hyco_v2 kv = {k8, k8}, a;
                for (; i + 16 <= len; i += 16) {
                    memcpy(&a, src + pos + 6 + i, 16); a ^= kv; memcpy(dst + w + 2 + i, &a, 16);
                }
            }
    #endif
            for (; i + 8 <= len; i += 8) {
                memcpy(&v, src + pos + 6 + i, 8); v ^= k8; memcpy(dst + w + 2 + i, &v, 8);
            }
            for (; i < len; i++) dst[w + 2 + i] = src[pos + 6 + i] ^ r[i & 3];
            w += 2 + len;
            pos += 6 + len;
            count++;
            bytes += len;
        }
        *written += w;
        *frames += count;
        *payload += bytes;
        return pos;
    }
    """
    Py_ssize_t _small_run "hyco_small_run" (uint8_t* dst, const uint8_t* src, Py_ssize_t n,
                                             int allow_text, Py_ssize_t max_len,
                                             Py_ssize_t* written, Py_ssize_t* frames,
                                             Py_ssize_t* payload) noexcept nogil
    void _xor_into "hyco_xor" (uint8_t* dst, const uint8_t* src, Py_ssize_t n,
                               const uint8_t* key, Py_ssize_t phase) noexcept nogil
    void _xor_small "hyco_xor_small" (uint8_t* dst, const uint8_t* src, Py_ssize_t n,
                                      const uint8_t* key, Py_ssize_t phase) noexcept nogil
    void _init_stream_min "hyco_init_stream_min" () noexcept


_init_stream_min()


cdef extern from *:
    """
    /* Incremental UTF-8 validation (RFC 3629; RFC 6455 §8.1). The state between calls is 0
       between code points, else (bytes still needed << 16) | (highest << 8) | lowest allowed
       value of the next byte: E0 needs A0..BF next (no overlongs), ED 80..9F (no surrogates),
       F0 90..BF, F4 80..8F (nothing above U+10FFFF); C0, C1 and F5..FF never start one.
       tail >= 0: the message ends tail bytes after s[n - 1], so a lead byte whose sequence
       cannot be completed before that is invalid itself (fail fast at the final frame).
       Returns the index of the first invalid byte, or n when all n bytes are valid so far.
       ASCII runs are skipped 16 bytes, then 8, at a time; a sequence that lies whole in the
       buffer is checked in one step (it completes, so the tail rule cannot apply to it). */
    static Py_ssize_t hyco_utf8_check(const uint8_t *s, Py_ssize_t n, uint32_t *state,
                                      Py_ssize_t tail) {
        uint32_t need = *state >> 16, lo = *state & 0xFF, hi = (*state >> 8) & 0xFF;
        Py_ssize_t i = 0;
        uint64_t a, b;
        uint8_t c;
        while (i < n) {
            c = s[i];
            if (need) {
                if (c < lo || c > hi) return i;
                need--; lo = 0x80; hi = 0xBF; i++;
                continue;
            }
            if (c < 0x80) {
                i++;
                for (; i + 16 <= n; i += 16) {
                    memcpy(&a, s + i, 8); memcpy(&b, s + i + 8, 8);
                    if ((a | b) & 0x8080808080808080ULL) break;
                }
                for (; i + 8 <= n; i += 8) {
                    memcpy(&a, s + i, 8);
                    if (a & 0x8080808080808080ULL) break;
                }
                continue;
            }
            lo = 0x80; hi = 0xBF;
            if (c < 0xC2) return i;
            else if (c < 0xE0) {
                if (i + 1 < n) {  /* whole 2-byte sequence in the buffer */
                    if ((s[i + 1] & 0xC0) != 0x80) return i + 1;
                    i += 2;
                    continue;
                }
                need = 1;
            } else if (c < 0xF0) {
                if (c == 0xE0) lo = 0xA0; else if (c == 0xED) hi = 0x9F;
                if (i + 2 < n) {
                    if (s[i + 1] < lo || s[i + 1] > hi) return i + 1;
                    if ((s[i + 2] & 0xC0) != 0x80) return i + 2;
                    i += 3;
                    continue;
                }
                need = 2;
            } else if (c < 0xF5) {
                if (c == 0xF0) lo = 0x90; else if (c == 0xF4) hi = 0x8F;
                if (i + 3 < n) {
                    if (s[i + 1] < lo || s[i + 1] > hi) return i + 1;
                    if ((s[i + 2] & 0xC0) != 0x80) return i + 2;
                    if ((s[i + 3] & 0xC0) != 0x80) return i + 3;
                    i += 4;
                    continue;
                }
                need = 3;
            } else return i;
            if (tail >= 0 && (Py_ssize_t)need > n - 1 - i + tail) return i;
            i++;
        }
        *state = need ? (need << 16) | (hi << 8) | lo : 0;
        return n;
    }
    """
    Py_ssize_t _utf8_check "hyco_utf8_check" (const uint8_t* s, Py_ssize_t n,
                                               uint32_t* state, Py_ssize_t tail) noexcept nogil


# A text payload chunk is unmasked and validated in blocks of this size (while it is in cache).
cdef Py_ssize_t UTF8_BLOCK = 65536


cdef inline void _mask(uint8_t* dst, const uint8_t* src, Py_ssize_t n,
                       const uint8_t* key, Py_ssize_t phase) noexcept:
    if n >= NOGIL_THRESHOLD:
        with nogil:
            _xor_into(dst, src, n, key, phase)
    else:
        _xor_into(dst, src, n, key, phase)


cdef inline const uint8_t* _key_ptr(bytes key) except NULL:
    if key is None or PyBytes_GET_SIZE(key) != 4:
        raise ValueError(f"mask key must be 4 bytes, got {0 if key is None else len(key)}")
    return <const uint8_t*>PyBytes_AS_STRING(key)


def apply_mask(data, bytes key, Py_ssize_t offset=0):
    """XOR ``data`` with ``key`` starting at phase ``offset`` (mod 4); return new bytes."""
    cdef const uint8_t* k = _key_ptr(key)
    cdef Py_buffer view
    cdef Py_ssize_t n
    if type(data) is bytes:
        # The common case, without the buffer protocol's cost.
        n = PyBytes_GET_SIZE(data)
        out = PyBytes_FromStringAndSize(NULL, n)
        _mask(<uint8_t*>PyBytes_AS_STRING(out), <const uint8_t*>PyBytes_AS_STRING(data), n, k,
              offset & 3)
        return out
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        out = PyBytes_FromStringAndSize(NULL, view.len)
        _mask(<uint8_t*>PyBytes_AS_STRING(out), <const uint8_t*>view.buf, view.len, k, offset & 3)
    finally:
        PyBuffer_Release(&view)
    return out


def apply_mask_inplace(buffer, bytes key, Py_ssize_t offset=0):
    """XOR a writable buffer in place with ``key`` starting at phase ``offset`` (mod 4)."""
    cdef const uint8_t* k = _key_ptr(key)
    cdef Py_buffer view
    cdef uint8_t* p
    if type(buffer) is bytearray:
        # The common case, without the buffer protocol's cost.
        p = <uint8_t*>PyByteArray_AS_STRING(buffer)
        _mask(p, p, PyByteArray_GET_SIZE(buffer), k, offset & 3)
        return
    try:
        PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE)
    except BufferError:
        raise TypeError(
            "apply_mask_inplace needs a writable buffer (bytearray, writable memoryview)"
        ) from None
    try:
        _mask(<uint8_t*>view.buf, <const uint8_t*>view.buf, view.len, k, offset & 3)
    finally:
        PyBuffer_Release(&view)


# A pool of os.urandom bytes for mask keys (RFC 6455 §5.3: keys must be unpredictable).
cdef bytes _pool = b""
cdef Py_ssize_t _pool_pos = 0


cdef inline const uint8_t* _random_key_ptr() except NULL:
    global _pool, _pool_pos
    if _pool_pos + 4 > len(_pool):
        _pool = os.urandom(8192)
        _pool_pos = 0
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(_pool) + _pool_pos
    _pool_pos += 4
    return p


cdef inline Py_ssize_t _write_header(uint8_t* out, int opcode, unsigned long long length,
                                     bint fin, int rsv, const uint8_t* key) noexcept:
    cdef Py_ssize_t size
    cdef int i
    cdef uint8_t mbit = 0x80 if key != NULL else 0
    out[0] = (0x80 if fin else 0) | (rsv << 4) | opcode
    if length < 126:
        out[1] = mbit | <uint8_t>length
        size = 2
    elif length < 65536:
        out[1] = mbit | 126
        out[2] = <uint8_t>(length >> 8)
        out[3] = <uint8_t>length
        size = 4
    else:
        out[1] = mbit | 127
        for i in range(8):
            out[2 + i] = <uint8_t>(length >> (56 - 8 * i))
        size = 10
    if key != NULL:
        memcpy(out + size, key, 4)
        size += 4
    return size


cdef inline int _check_header_args(int opcode, long long length, int rsv) except -1:
    if opcode < 0 or opcode > 15:
        raise ValueError(f"opcode must be 0..15, got {opcode}")
    if rsv < 0 or rsv > 7:
        raise ValueError(f"rsv must be 0..7, got {rsv}")
    if length < 0:
        raise ValueError(f"payload length out of range: {length}")
    return 0


def encode_header(int opcode, long long length, bint fin=True, int rsv=0, bytes mask_key=None):
    """The frame header for a payload of ``length`` bytes (mask key appended when given)."""
    cdef uint8_t buf[14]
    cdef const uint8_t* k = NULL
    _check_header_args(opcode, length, rsv)
    if mask_key is not None:
        k = _key_ptr(mask_key)
    cdef Py_ssize_t size = _write_header(buf, opcode, <unsigned long long>length, fin, rsv, k)
    return PyBytes_FromStringAndSize(<char*>buf, size)


def encode_frame(int opcode, payload, bint fin=True, int rsv=0, bint masked=False):
    """A whole frame. ``masked=True`` (client role) masks with a fresh random key."""
    cdef Py_buffer view
    cdef uint8_t header[14]
    cdef const uint8_t* k = NULL
    cdef Py_ssize_t hsize
    cdef uint8_t* dst
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        _check_header_args(opcode, view.len, rsv)
        if masked:
            k = _random_key_ptr()
        hsize = _write_header(header, opcode, <unsigned long long>view.len, fin, rsv, k)
        out = PyBytes_FromStringAndSize(NULL, hsize + view.len)
        dst = <uint8_t*>PyBytes_AS_STRING(out)
        memcpy(dst, header, hsize)
        if masked:
            _mask(dst + hsize, <const uint8_t*>view.buf, view.len, k, 0)
        else:
            memcpy(dst + hsize, view.buf, view.len)
    finally:
        PyBuffer_Release(&view)
    return out


def encode_masked(int opcode, payload, bint fin=True):
    """A masked frame (fresh random key) as its header and its masked payload, the payload's
    size (``_frames.pyi``: why large client messages go out this way)."""
    cdef Py_buffer view
    cdef uint8_t header[14]
    cdef const uint8_t* k
    cdef Py_ssize_t hsize
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        _check_header_args(opcode, view.len, 0)
        k = _random_key_ptr()
        hsize = _write_header(header, opcode, <unsigned long long>view.len, fin, 0, k)
        out = PyBytes_FromStringAndSize(NULL, view.len)
        _mask(<uint8_t*>PyBytes_AS_STRING(out), <const uint8_t*>view.buf, view.len, k, 0)
    finally:
        PyBuffer_Release(&view)
    return PyBytes_FromStringAndSize(<char*>header, hsize), out


def decode_header(data, Py_ssize_t offset=0):
    """Parse a header at ``offset``: ``(fin, rsv, opcode, mask_key, payload_length,
    header_length)``, or ``None`` when ``data`` does not hold the whole header yet."""
    cdef Py_buffer view
    cdef const uint8_t* p
    cdef Py_ssize_t avail, size
    cdef unsigned long long length
    cdef int i
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if offset < 0 or offset > view.len:
            raise ValueError("offset out of range")
        p = <const uint8_t*>view.buf + offset
        avail = view.len - offset
        if avail < 2:
            return None
        length = p[1] & 0x7F
        size = 2
        if length == 126:
            size = 4
            if avail < size:
                return None
            length = (<unsigned long long>p[2] << 8) | p[3]
        elif length == 127:
            size = 10
            if avail < size:
                return None
            length = 0
            for i in range(8):
                length = (length << 8) | p[2 + i]
        key = None
        if p[1] & 0x80:
            if avail < size + 4:
                return None
            key = PyBytes_FromStringAndSize(<const char*>p + size, 4)
            size += 4
        return bool(p[0] & 0x80), (p[0] >> 4) & 7, p[0] & 0x0F, key, length, size
    finally:
        PyBuffer_Release(&view)


cdef inline str _header_problem(uint8_t b0, uint8_t b1, bint expect_masked, int allowed_rsv,
                                bint in_message):
    """What is wrong with a frame whose first two bytes are b0 b1, or None (RFC 6455 §5.1,
    §5.2, §5.4, §5.5). Needs only two bytes, so violations show as early as possible."""
    cdef int rsv = (b0 >> 4) & 7
    cdef int opcode = b0 & 0x0F
    if rsv & ~allowed_rsv:
        return f"reserved bits set (RSV={rsv}) but no extension negotiated"
    if not (opcode <= 2 or 8 <= opcode <= 10):
        return f"reserved opcode {opcode}"
    if ((b1 & 0x80) != 0) != expect_masked:
        if expect_masked:
            return "client frames must be masked (RFC 6455 §5.1)"
        return "server frames must not be masked (RFC 6455 §5.1)"
    if opcode >= 8:
        if not (b0 & 0x80):
            return "control frames must not be fragmented (RFC 6455 §5.5)"
        if (b1 & 0x7F) > 125:
            return "control frame payload longer than 125 bytes (RFC 6455 §5.5)"
    elif opcode == 0:
        if not in_message:
            return "continuation frame without a message in progress"
    elif in_message:
        return "new data frame while a fragmented message is in progress"
    return None


cdef inline Py_ssize_t _length_field(const uint8_t* p, Py_ssize_t avail,
                                     unsigned long long* length) noexcept:
    """Header size up to the mask key (2, 4 or 10) and the payload length, from a header at p
    with ``avail`` bytes; 0 when the length field is incomplete, -1 when its 64-bit form has the
    most significant bit set (RFC 6455 §5.2)."""
    cdef int len7 = p[1] & 0x7F
    cdef int i
    if len7 < 126:
        length[0] = len7
        return 2
    if len7 == 126:
        if avail < 4:
            return 0
        length[0] = (<unsigned long long>p[2] << 8) | p[3]
        return 4
    if avail < 10:
        return 0
    length[0] = 0
    for i in range(8):
        length[0] = (length[0] << 8) | p[2 + i]
    return -1 if length[0] >> 63 else 10


cdef class _Slot:
    """A writable window on the bytes object a whole frame is assembled in (``whole_slot``).
    Live from ``whole_slot`` until ``whole_received``, ``feed`` or a failure takes it back;
    then it exports nothing more, and it cannot be taken back while a view of it is open: the
    object becomes a message nobody may write to."""

    cdef object _owner
    cdef char* _ptr
    cdef Py_ssize_t _len
    cdef Py_ssize_t _one
    cdef Py_ssize_t _exports
    cdef bint _live

    def __len__(self):
        return self._len if self._live else 0

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        if not self._live:
            raise BufferError("this payload buffer was used up (received into and reported, "
                              "or taken back by feed): ask for a new one after every read")
        self._one = 1
        buffer.buf = self._ptr
        buffer.obj = self
        buffer.len = self._len
        buffer.readonly = 0
        buffer.itemsize = 1
        buffer.format = NULL
        if (flags & PyBUF_FORMAT) == PyBUF_FORMAT:
            buffer.format = b"B"
        buffer.ndim = 1
        buffer.shape = &self._len if (flags & PyBUF_ND) == PyBUF_ND else NULL
        buffer.strides = &self._one if (flags & PyBUF_STRIDES) == PyBUF_STRIDES else NULL
        buffer.suboffsets = NULL
        buffer.internal = NULL
        self._exports += 1

    def __releasebuffer__(self, Py_buffer* buffer):
        self._exports -= 1


cdef int _retire(_Slot slot) except -1:
    """Take a slot back (its bytes are the decoder's again); refused while a view is open."""
    if slot._exports:
        raise BufferError("a memoryview of the payload buffer is still open: release it "
                          "before the decoder goes on (its bytes become the message)")
    slot._live = False
    slot._owner = None  # a slot kept by its caller does not keep the message alive
    slot._ptr = NULL
    slot._len = 0
    return 0


cdef class FrameDecoder:
    """Streaming RFC 6455 frame decoder; see ``_frames.pyi`` for the contract."""

    cdef bytearray _buf
    cdef bint _masked
    cdef long long _max_frame
    cdef long long _max_message
    cdef int _allowed_rsv
    cdef unsigned long long _remaining
    cdef int _opcode
    cdef bint _fin
    cdef uint8_t _key[4]
    cdef Py_ssize_t _phase
    cdef bint _in_message
    cdef unsigned long long _message_size
    cdef long long _whole_limit
    cdef object _whole  # bytes: a whole binary frame's payload, filled as it arrives; or None
    cdef Py_ssize_t _filled
    cdef _Slot _slot  # whole_slot()'s window, live until taken back; or None
    cdef public int error_code
    cdef public str error_reason

    def __init__(self, *, bint masked, long long max_frame_size=0, long long max_message_size=0,
                 int allowed_rsv=0, long long whole_binary=0):
        self._buf = bytearray()
        self._masked = masked
        self._max_frame = max_frame_size
        self._max_message = max_message_size
        self._allowed_rsv = allowed_rsv
        self._remaining = 0
        self._opcode = 0
        self._fin = False
        self._phase = 0
        self._in_message = False
        self._message_size = 0
        self._whole_limit = whole_binary
        self._whole = None
        self._filled = 0
        self._slot = None
        self.error_code = 0
        self.error_reason = ""

    @property
    def buffered(self):
        return len(self._buf) + (self._filled if self._whole is not None else 0)

    cdef int _fail(self, int code, str reason) except -1:
        self.error_code = code
        self.error_reason = reason
        self._buf = bytearray()
        self._remaining = 0
        self._whole = None
        if self._slot is not None:
            self._slot._live = False  # (a view still open writes into a dropped object)
            self._slot = None
        return 0

    cdef Py_ssize_t _parse(self, const uint8_t* p, Py_ssize_t n, list out) except -1:
        """Decode from p[0:n]; append chunks to out; return the number of bytes consumed."""
        cdef Py_ssize_t pos = 0, head, take
        cdef unsigned long long length, size
        cdef uint8_t b0, b1
        cdef int opcode
        cdef str problem
        cdef bint fin, control
        cdef object chunk
        cdef uint8_t* dst
        while True:
            if self._remaining:
                take = n - pos
                if <unsigned long long>take > self._remaining:
                    take = <Py_ssize_t>self._remaining
                if take == 0:
                    break
                if self._whole is not None:
                    # Unmasked into the frame's one bytes object, where its next bytes go.
                    dst = <uint8_t*>PyBytes_AS_STRING(self._whole) + self._filled
                    self._filled += take
                else:
                    chunk = PyBytes_FromStringAndSize(NULL, take)
                    dst = <uint8_t*>PyBytes_AS_STRING(chunk)
                if self._masked:
                    _mask(dst, p + pos, take, self._key, self._phase)
                    self._phase = (self._phase + take) & 3
                else:
                    memcpy(dst, p + pos, take)
                self._remaining -= take
                pos += take
                if self._whole is not None:
                    if self._remaining:
                        continue
                    chunk = self._whole
                    self._whole = None
                out.append((self._opcode, chunk, self._fin and self._remaining == 0))
                continue
            if n - pos < 2:
                break
            b0 = p[pos]
            b1 = p[pos + 1]
            fin = (b0 & 0x80) != 0
            opcode = b0 & 0x0F
            problem = _header_problem(b0, b1, self._masked, self._allowed_rsv, self._in_message)
            if problem is not None:
                self._fail(1002, problem)
                return pos
            control = opcode >= 8
            head = _length_field(p + pos, n - pos, &length)
            if head == 0:
                break
            if head < 0:
                self._fail(1002, "64-bit payload length has its most significant bit set")
                return pos
            if self._masked:
                head += 4
            size = 0
            if not control:
                if self._max_frame and length > <unsigned long long>self._max_frame:
                    self._fail(1009, f"frame of {length} bytes exceeds the limit of {self._max_frame}")
                    return pos
                size = self._message_size + length if opcode == 0 else length
                if self._max_message and size > <unsigned long long>self._max_message:
                    self._fail(1009, f"message of {size}+ bytes exceeds the limit of {self._max_message}")
                    return pos
            if n - pos < head:
                break
            if control:
                if <unsigned long long>(n - pos - head) < length:
                    break
                chunk = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>length)
                if self._masked:
                    _xor_into(<uint8_t*>PyBytes_AS_STRING(chunk), p + pos + head, <Py_ssize_t>length,
                              p + pos + head - 4, 0)
                else:
                    memcpy(PyBytes_AS_STRING(chunk), p + pos + head, <Py_ssize_t>length)
                pos += head + <Py_ssize_t>length
                out.append((opcode, chunk, True))
                continue
            if self._masked:
                memcpy(self._key, p + pos + head - 4, 4)
            pos += head
            self._message_size = size
            self._in_message = not fin
            self._opcode = opcode
            self._fin = fin
            self._phase = 0
            self._remaining = length
            if length == 0:
                out.append((opcode, b"", fin))
            elif opcode == 2 and length <= <unsigned long long>self._whole_limit:
                try:
                    self._whole = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>length)
                except (MemoryError, OverflowError):
                    pass  # no room to reserve it whole: it streams in pieces, as bigger ones
                self._filled = 0
        return pos

    def feed(self, data):
        cdef list out = []
        cdef Py_buffer view
        cdef Py_ssize_t used
        if self._slot is not None:
            _retire(self._slot)
            self._slot = None
        if self.error_code:
            return out
        if PyByteArray_GET_SIZE(self._buf) == 0:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                used = self._parse(<const uint8_t*>view.buf, view.len, out)
                if used < view.len and not self.error_code:
                    self._buf += (<const char*>view.buf)[used:view.len]
            finally:
                PyBuffer_Release(&view)
        else:
            self._buf += data
            used = self._parse(<const uint8_t*>PyByteArray_AS_STRING(self._buf),
                               PyByteArray_GET_SIZE(self._buf), out)
            if used and not self.error_code:
                del self._buf[:used]
        return out

    def whole_slot(self, Py_ssize_t at_least=1):
        """A writable buffer of the rest of the whole binary frame being assembled, or None
        (see ``_frames.pyi``)."""
        cdef _Slot slot
        if (self._whole is None or self.error_code or not self._remaining
                or at_least > 0 and <unsigned long long>at_least > self._remaining
                or PyByteArray_GET_SIZE(self._buf)):
            return None
        if self._slot is not None:
            return self._slot  # asked twice for one read: the same window
        slot = _Slot.__new__(_Slot)
        slot._owner = self._whole
        slot._ptr = PyBytes_AS_STRING(self._whole) + self._filled
        slot._len = <Py_ssize_t>self._remaining
        slot._live = True
        self._slot = slot
        return slot

    def whole_received(self, Py_ssize_t nbytes):
        """Unmask the ``nbytes`` written into the slot in place (see ``_frames.pyi``)."""
        cdef list out = []
        cdef uint8_t* dst
        if self._slot is None:
            raise ValueError("no receive buffer is out: ask for one (whole_slot, "
                             "payload_buffer) and receive into it first; feeding data takes "
                             "it back")
        if nbytes < 0 or nbytes > self._slot._len:
            raise ValueError(f"{nbytes} bytes reported, but the receive buffer holds "
                             f"{self._slot._len}: pass what recv_into returned")
        _retire(self._slot)
        self._slot = None
        if nbytes == 0:
            return out
        dst = <uint8_t*>PyBytes_AS_STRING(self._whole) + self._filled
        if self._masked:
            _mask(dst, dst, nbytes, self._key, self._phase)
            self._phase = (self._phase + nbytes) & 3
        self._filled += nbytes
        self._remaining -= <unsigned long long>nbytes
        if not self._remaining:
            chunk = self._whole
            self._whole = None
            out.append((self._opcode, chunk, self._fin))
        return out

    def feed_message(self, data):
        """``feed(data)``, or the message itself (see ``_frames.pyi``)."""
        cdef Py_buffer view
        cdef const uint8_t* p
        cdef Py_ssize_t n, head
        cdef unsigned long long length = 0
        cdef uint8_t b0
        cdef object payload
        if (self.error_code or self._remaining or self._in_message
                or PyByteArray_GET_SIZE(self._buf)):
            return self.feed(data)
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            p = <const uint8_t*>view.buf
            n = view.len
            if n < 2:
                return self.feed(data)
            b0 = p[0]
            # FIN, no RSV, text or binary; the mask bit as the role requires.
            if (b0 != 0x81 and b0 != 0x82) or ((p[1] & 0x80) != 0) != self._masked:
                return self.feed(data)
            head = _length_field(p, n, &length)
            if head <= 0:
                return self.feed(data)
            if self._masked:
                head += 4
            if n < head or <unsigned long long>(n - head) != length:
                return self.feed(data)  # not exactly one frame
            if ((self._max_frame and length > <unsigned long long>self._max_frame)
                    or (self._max_message and length > <unsigned long long>self._max_message)):
                return self.feed(data)  # fails there
            payload = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>length)
            if self._masked:
                _mask(<uint8_t*>PyBytes_AS_STRING(payload), p + head, <Py_ssize_t>length,
                      p + head - 4, 0)
            else:
                memcpy(PyBytes_AS_STRING(payload), p + head, <Py_ssize_t>length)
        finally:
            PyBuffer_Release(&view)
        # The state feed() leaves after one whole frame.
        self._opcode = b0 & 0x0F
        self._fin = True
        self._message_size = length
        self._phase = length & 3
        if b0 == 0x82:
            return payload
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            return [(1, payload, True)]


cdef extern from "Python.h":
    # Raw-pointer forms, so the output bytes object can be shrunk in place (it has one owner).
    PyObject* _bytes_new "PyBytes_FromStringAndSize" (const char* v, Py_ssize_t n)
    char* _bytes_data "PyBytes_AS_STRING" (PyObject* o)
    int _PyBytes_Resize(PyObject** o, Py_ssize_t n) except -1
    void _decref "Py_DECREF" (PyObject* o)


cdef extern from *:
    """
    /* Forwarder.relay's two system calls on non-blocking sockets: bytes moved, or -errno.
       MSG_NOSIGNAL: a peer gone is EPIPE, never SIGPIPE, whatever the embedding program set. */
    #ifndef _WIN32
    #include <errno.h>
    #include <sys/types.h>
    #include <sys/socket.h>
    #ifndef MSG_NOSIGNAL
    #define MSG_NOSIGNAL 0
    #endif
    static Py_ssize_t hyco_recv(int fd, void* p, Py_ssize_t n) {
        Py_ssize_t k = (Py_ssize_t)recv(fd, p, (size_t)n, 0);
        return k < 0 ? -(Py_ssize_t)errno : k;
    }
    static Py_ssize_t hyco_send(int fd, const void* p, Py_ssize_t n) {
        Py_ssize_t k = (Py_ssize_t)send(fd, p, (size_t)n, MSG_NOSIGNAL);
        return k < 0 ? -(Py_ssize_t)errno : k;
    }
    static int hyco_retry(Py_ssize_t r) {
        return r == -EAGAIN || r == -EWOULDBLOCK || r == -EINTR;
    }
    #else
    /* Sockets are not file descriptors there: Forwarder.relay is for POSIX only. */
    #define HYCO_NOSYS 40
    static Py_ssize_t hyco_recv(int fd, void* p, Py_ssize_t n) { return -HYCO_NOSYS; }
    static Py_ssize_t hyco_send(int fd, const void* p, Py_ssize_t n) { return -HYCO_NOSYS; }
    static int hyco_retry(Py_ssize_t r) { return 0; }
    #endif
    """
    Py_ssize_t _sock_recv "hyco_recv" (int fd, void* p, Py_ssize_t n) nogil
    Py_ssize_t _sock_send "hyco_send" (int fd, const void* p, Py_ssize_t n) nogil
    bint _sock_retry "hyco_retry" (Py_ssize_t r) noexcept nogil


cdef int _raise_errno(Py_ssize_t r) except -1:
    """OSError for -errno ``r``, of the subclass the errno maps to (as socket calls raise)."""
    cdef int code = <int>-r
    raise OSError(code, os.strerror(code))


cdef inline bint _close_code_valid(int code) noexcept:
    # RFC 6455 §7.4; 1012-1014 were registered with IANA after the RFC.
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def check_close_payload(payload):
    """Parse a close frame body: ``(code, reason, error_code, error_reason)``; see ``_frames.pyi``."""
    cdef bytes body = bytes(payload)
    cdef Py_ssize_t n = len(body)
    cdef int code
    if n == 0:
        return 1005, "", 0, ""
    if n == 1:
        return 0, "", 1002, "close frame with a 1-byte payload"
    code = (<uint8_t>body[0] << 8) | <uint8_t>body[1]
    if not _close_code_valid(code):
        return code, "", 1002, f"invalid close code {code}"
    try:
        reason = body[2:].decode("utf-8")
    except UnicodeDecodeError:
        return code, "", 1007, "close reason is not valid UTF-8"
    return code, reason, 0, ""


cdef Py_ssize_t _text_blocks(uint8_t* dst, const uint8_t* src, Py_ssize_t n, const uint8_t* key,
                             Py_ssize_t* phase, uint32_t* state, bint masked,
                             Py_ssize_t tail) noexcept nogil:
    """Unmask (or copy) src into dst a block at a time, validating each block while it is in
    cache; return the number of valid bytes (n when all are). ``tail``: as for
    ``hyco_utf8_check``, the bytes of the final frame after src[n - 1] (-1: not final)."""
    cdef Py_ssize_t done = 0, block, ok
    while done < n:
        block = n - done
        if block > UTF8_BLOCK:
            block = UTF8_BLOCK
        if masked:
            _xor_into(dst + done, src + done, block, key, phase[0])
            phase[0] = (phase[0] + block) & 3
        else:
            memmove(dst + done, src + done, block)  # dst may overlap src (feed_into)
        ok = _utf8_check(dst + done, block, state,
                         tail + (n - done - block) if tail >= 0 else -1)
        done += ok
        if ok < block:
            break
    return done


UTF8_INVALID = "text message is not valid UTF-8"
UTF8_TRUNCATED = "text message ends inside a UTF-8 sequence"


#: Scratch bytes ``Forwarder.feed_into`` needs before ``start``: room for the bytes a forwarder
#: holds over between reads (at most a partial masked control frame, 2 + 4 + 124 bytes).
FORWARD_HEADROOM = 256
cdef Py_ssize_t _HEADROOM = FORWARD_HEADROOM


cdef class Forwarder:
    """One direction of a relayed pair: client frames in, server frames out; see ``_frames.pyi``."""

    cdef bytearray _buf
    cdef bint _masked
    cdef long long _max_frame
    cdef int _allowed_rsv
    cdef unsigned long long _remaining
    cdef uint8_t _key[4]
    cdef Py_ssize_t _phase
    cdef bint _in_message
    cdef bint _validate  # validate_utf8
    cdef bint _text  # the current message is text being validated
    cdef bint _fin  # the current data frame ends its message
    cdef uint32_t _utf8  # validator state (0: between code points)
    cdef public int close_code
    cdef public str close_reason
    cdef public int error_code
    cdef public str error_reason
    cdef public unsigned long long frames
    cdef public unsigned long long messages
    cdef public unsigned long long payload_bytes

    def __init__(self, *, bint masked=True, long long max_frame_size=0, int allowed_rsv=0,
                 bint validate_utf8=True):
        self._buf = bytearray()
        self._validate = validate_utf8
        self._text = False
        self._fin = False
        self._utf8 = 0
        self._masked = masked
        self._max_frame = max_frame_size
        self._allowed_rsv = allowed_rsv
        self._remaining = 0
        self._phase = 0
        self._in_message = False
        self.close_code = -1
        self.close_reason = ""
        self.error_code = 0
        self.error_reason = ""
        self.frames = 0
        self.messages = 0
        self.payload_bytes = 0

    @property
    def mid_frame(self):
        return self._remaining > 0

    @property
    def buffered(self):
        return len(self._buf)

    cdef int _fail(self, int code, str reason) except -1:
        self.error_code = code
        self.error_reason = reason
        return 0

    cdef Py_ssize_t _forward(self, const uint8_t* p, Py_ssize_t n, uint8_t* dst,
                             Py_ssize_t* written) except -1:
        """Re-frame p[0:n] into dst; return bytes consumed, add bytes written to *written.

        dst may be p itself (feed_into): output never gets ahead of input (headers only
        shrink), every copy is a memmove, the XOR kernel runs forward reading each block before
        writing it, and a frame's mask key is read before anything is written over it."""
        cdef Py_ssize_t pos = 0, w = 0, take, head, hlen, run_frames, run_bytes
        cdef Py_ssize_t header_w = -1  # where a data frame header emitted by this call starts
        cdef unsigned long long length, payload_before = 0
        cdef uint8_t b0, b1
        cdef int opcode
        cdef str problem
        cdef bint fin
        while pos < n:
            if self._remaining:
                take = n - pos
                if <unsigned long long>take > self._remaining:
                    take = <Py_ssize_t>self._remaining
                if self._text:
                    take = self._forward_text(p + pos, take, dst + w)
                    if self.error_code:  # take: the valid bytes before the bad one
                        if header_w >= 0:
                            # This frame's header has not left yet: hold the frame back, so
                            # the other leg stays between frames and can hear 1001 cleanly.
                            w = header_w
                            self.frames -= 1
                            self.messages -= self._fin
                            self.payload_bytes = payload_before
                            self._remaining = 0
                        else:
                            w += take
                            self._remaining -= take
                            self.payload_bytes += take
                        break
                elif self._masked:
                    _mask(dst + w, p + pos, take, self._key, self._phase)
                    self._phase = (self._phase + take) & 3
                elif dst + w != p + pos:
                    memmove(dst + w, p + pos, take)
                w += take
                pos += take
                self._remaining -= take
                self.payload_bytes += take
                continue
            if n - pos < 2:
                break
            b0 = p[pos]
            b1 = p[pos + 1]
            # Fast path: a whole small frame ending a binary message (or a text one when text
            # is not validated): FIN, no RSV, 7-bit length, no message in progress. These are
            # exactly the frames the general path below passes without comment; it does the
            # same, minus the bookkeeping such a frame leaves unchanged.
            if (b0 == 0x82 or (b0 == 0x81 and not self._validate)) and not self._in_message:
                length = b1 & 0x7F
                if self._masked:
                    if 0x80 <= b1 < 0x80 + 126:
                        # The run of such frames from here, in one C loop (hyco_small_run,
                        # under the same in-place rules as this loop).
                        run_frames = run_bytes = 0
                        take = _small_run(dst + w, p + pos, n - pos, not self._validate,
                                          125 if not self._max_frame or self._max_frame >= 125
                                          else <Py_ssize_t>self._max_frame,
                                          &w, &run_frames, &run_bytes)
                        if run_frames:
                            pos += take
                            self.frames += run_frames
                            self.messages += run_frames
                            self.payload_bytes += run_bytes
                            self._text = False
                            continue
                elif (b1 < 126 and n - pos >= 2 + <Py_ssize_t>length
                        and (not self._max_frame or length <= <unsigned long long>self._max_frame)):
                    if dst + w != p + pos:  # in place and nothing moved yet: no copy at all
                        memmove(dst + w, p + pos, 2 + <Py_ssize_t>length)
                    w += 2 + <Py_ssize_t>length
                    pos += 2 + <Py_ssize_t>length
                    self.frames += 1
                    self.messages += 1
                    self.payload_bytes += length
                    self._text = False
                    continue
            fin = (b0 & 0x80) != 0
            opcode = b0 & 0x0F
            problem = _header_problem(b0, b1, self._masked, self._allowed_rsv, self._in_message)
            if problem is not None:
                self._fail(1002, problem)
                break
            hlen = _length_field(p + pos, n - pos, &length)
            if hlen == 0:
                break
            if hlen < 0:
                self._fail(1002, "64-bit payload length has its most significant bit set")
                break
            head = hlen + 4 if self._masked else hlen
            if opcode < 8 and self._max_frame and length > <unsigned long long>self._max_frame:
                self._fail(1009, f"frame of {length} bytes exceeds the limit of {self._max_frame}")
                break
            if n - pos < head:
                break
            if opcode >= 8:
                if <unsigned long long>(n - pos - head) < length:
                    break
                dst[w] = b0
                dst[w + 1] = <uint8_t>length
                if self._masked:
                    _xor_into(dst + w + 2, p + pos + head, <Py_ssize_t>length, p + pos + hlen, 0)
                else:
                    memmove(dst + w + 2, p + pos + head, <Py_ssize_t>length)
                if opcode == 8:
                    code, reason, err, why = check_close_payload(
                        PyBytes_FromStringAndSize(<char*>dst + w + 2, <Py_ssize_t>length))
                    if err:
                        self._fail(err, why)
                        break
                w += 2 + <Py_ssize_t>length
                pos += head + <Py_ssize_t>length
                self.frames += 1
                self.payload_bytes += length
                if opcode == 8:
                    self.close_code = code
                    self.close_reason = reason
                    pos = n  # nothing after a close is forwarded (RFC 6455 §5.5.1)
                    break
                continue
            if opcode != 0 or fin:
                self._in_message = not fin
            if opcode != 0:
                # A compressed message (RSV1, permessage-deflate) is not text until inflated.
                self._text = opcode == 1 and self._validate and not (b0 & 0x40)
                self._utf8 = 0
            elif fin and self._text and (self._utf8 >> 16) > length:
                # The final frame is too short for the code point begun before it.
                self._fail(1007, UTF8_TRUNCATED)
                break
            self._fin = fin
            # The header goes out as it came (FIN, RSV, opcode, length bytes), unmasked.
            header_w = w
            payload_before = self.payload_bytes
            memmove(dst + w, p + pos, hlen)
            dst[w + 1] = b1 & 0x7F
            w += hlen
            if self._masked:
                memcpy(self._key, p + pos + hlen, 4)
            self._phase = 0
            self._remaining = length
            self.frames += 1
            self.messages += fin
            pos += head
        written[0] += w
        return pos

    cdef Py_ssize_t _forward_text(self, const uint8_t* src, Py_ssize_t n, uint8_t* dst) except -1:
        """Unmask (or copy) and validate n text payload bytes into dst; return how many are
        valid (all n, or fewer after recording the failure)."""
        cdef Py_ssize_t done, phase = self._phase
        cdef uint32_t state = self._utf8
        cdef bint masked = self._masked
        cdef Py_ssize_t tail = -1  # payload bytes of the final frame after these n
        if self._fin:
            tail = <Py_ssize_t>(self._remaining - <unsigned long long>n)
        if n >= NOGIL_THRESHOLD:
            with nogil:
                done = _text_blocks(dst, src, n, self._key, &phase, &state, masked, tail)
        else:
            done = _text_blocks(dst, src, n, self._key, &phase, &state, masked, tail)
        self._phase = phase
        self._utf8 = state
        if done < n:
            self._fail(1007, UTF8_INVALID)
        return done

    def feed_into(self, buffer, Py_ssize_t start, Py_ssize_t end=-1):
        """Re-frame ``buffer[start:end]`` in place; return ``(begin, stop)``: ``buffer[begin:stop]``
        is what to write to the other leg (see ``_frames.pyi``)."""
        cdef Py_buffer view
        cdef Py_ssize_t held, begin, used, written = 0
        cdef uint8_t* p
        if start < _HEADROOM:
            raise ValueError(f"feed_into needs start >= FORWARD_HEADROOM ({_HEADROOM}), got {start}")
        PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE)
        try:
            if end < 0:
                end = view.len
            if end > view.len or start > end:
                raise ValueError(f"feed_into: start {start} and end {end} do not fit a buffer "
                                 f"of {view.len} bytes")
            if self.error_code or self.close_code >= 0:
                return start, start
            p = <uint8_t*>view.buf
            held = PyByteArray_GET_SIZE(self._buf)
            if held > start:  # cannot happen: what is held over is shorter than the headroom
                raise ValueError(f"feed_into: {held} bytes held over exceed start {start}")
            begin = start - held
            if held:
                memcpy(p + begin, PyByteArray_AS_STRING(self._buf), held)
                del self._buf[:]
            used = self._forward(p + begin, end - begin, p + begin, &written)
            if used < end - begin and not self.error_code and self.close_code < 0:
                self._buf += (<const char*>p)[begin + used:end]
            return begin, begin + written
        finally:
            PyBuffer_Release(&view)

    def relay(self, int fd, buffer, Py_ssize_t start, int out_fd):
        """One read of socket ``fd`` into ``buffer[start:]``, re-framed in place as ``feed_into``
        and sent to socket ``out_fd``: None when all of it went (or nothing was due), else
        ``(n, begin, stop)``; see ``_frames.pyi``."""
        cdef Py_buffer view
        cdef Py_ssize_t n, held, begin, used, written = 0, sent
        cdef uint8_t* p
        PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE)
        try:
            if start < _HEADROOM or start >= view.len:
                raise ValueError(f"relay needs FORWARD_HEADROOM ({_HEADROOM}) <= start < "
                                 f"{view.len} (the buffer's size), got {start}")
            p = <uint8_t*>view.buf
            if PyByteArray_GET_SIZE(self._buf) > start:  # cannot happen (as in feed_into)
                raise ValueError(f"relay: {PyByteArray_GET_SIZE(self._buf)} bytes held over "
                                 f"exceed start {start}")
            # One read of what is there, without the GIL (as socket.recv_into): holding it for
            # the first 256 KiB and reading the rest in a second call cost a read per big
            # message (1 MiB relay: 5 % more CPU per byte).
            with nogil:
                n = _sock_recv(fd, p + start, view.len - start)
            if n < 0:
                if _sock_retry(n):  # nothing to read now (or a signal: the loop asks again)
                    return -1, start, start
                _raise_errno(n)
            if n == 0 or self.error_code or self.close_code >= 0:
                return n, start, start
            held = PyByteArray_GET_SIZE(self._buf)
            begin = start - held  # (held < FORWARD_HEADROOM: see feed_into)
            if held:
                memcpy(p + begin, PyByteArray_AS_STRING(self._buf), held)
                del self._buf[:]
            used = self._forward(p + begin, start + n - begin, p + begin, &written)
            if used < start + n - begin and not self.error_code and self.close_code < 0:
                self._buf += (<const char*>p)[begin + used:start + n]
            if self.error_code or self.close_code >= 0 or out_fd < 0:
                return n, begin, begin + written
            if not written:
                return None
            if written >= NOGIL_THRESHOLD:
                with nogil:
                    sent = _sock_send(out_fd, p + begin, written)
            else:
                sent = _sock_send(out_fd, p + begin, written)
            if sent < written:  # the socket is full or failed: the caller writes the rest
                return n, begin + (sent if sent > 0 else 0), begin + written
            return None
        finally:
            PyBuffer_Release(&view)

    def feed(self, data):
        """Bytes from the source leg in; bytes for the other leg out (``b""`` when none)."""
        cdef Py_buffer view
        cdef Py_ssize_t used = 0, written = 0, n
        cdef PyObject* out = NULL
        cdef bint direct
        if self.error_code or self.close_code >= 0:
            return b""
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            direct = PyByteArray_GET_SIZE(self._buf) == 0
            if not direct:
                self._buf += (<const char*>view.buf)[:view.len]
            n = view.len if direct else PyByteArray_GET_SIZE(self._buf)
            if n == 0:
                return b""
            # Output is never longer than input: unmasked headers are 4 bytes shorter.
            out = _bytes_new(NULL, n)
            if out == NULL:
                raise MemoryError()
            if direct:
                used = self._forward(<const uint8_t*>view.buf, n, <uint8_t*>_bytes_data(out),
                                     &written)
                if used < n and not self.error_code and self.close_code < 0:
                    self._buf += (<const char*>view.buf)[used:n]
            else:
                used = self._forward(<const uint8_t*>PyByteArray_AS_STRING(self._buf), n,
                                     <uint8_t*>_bytes_data(out), &written)
                if self.error_code or self.close_code >= 0:
                    self._buf = bytearray()
                elif used:
                    del self._buf[:used]
            if written != n:
                _PyBytes_Resize(&out, written)  # shrinks in place; frees and NULLs on error
            result = <object>out
            _decref(out)
            out = NULL
            return result
        finally:
            if out != NULL:
                _decref(out)
            PyBuffer_Release(&view)


# -- the asyncio receive waiter ---------------------------------------------------------------

cdef extern from "Python.h":
    int PyContext_Enter(object ctx) except -1
    int PyContext_Exit(object ctx) except -1
    # PYGEN_RETURN 0, PYGEN_ERROR -1 (exception set), PYGEN_NEXT 1; *presult: a new reference.
    int PyIter_Send(object it, object arg, PyObject** presult) except -1

cdef extern from *:
    """
    /* Wakeup's iteration in C: am_send (3.10+: what a coroutine's await uses to step it,
       PyIter_Send, on 3.10 and 3.11) returns the result without an exception; tp_iternext
       (3.12+'s await, next()) ends with StopIteration(value), as CPython's future iterator.
       hyco_wakeup_step is Wakeup's _step: the next yielded object (*finished 0), the result
       (*finished 1), or NULL with an exception set. */
    typedef PyObject* (*hyco_step_fn)(PyObject*, PyObject*, int*);
    static hyco_step_fn hyco_wakeup_step = NULL;

    static void hyco_set_stop(PyObject* value) {
        PyObject* e;
        if (!PyTuple_Check(value) && !PyExceptionInstance_Check(value)) {
            PyErr_SetObject(PyExc_StopIteration, value);
            return;
        }
        /* A tuple or an exception would be read as the arguments / the exception itself. */
        e = PyObject_CallOneArg(PyExc_StopIteration, value);
        if (e != NULL) {
            PyErr_SetObject(PyExc_StopIteration, e);
            Py_DECREF(e);
        }
    }

    static PyObject* hyco_wakeup_iternext(PyObject* self) {
        int finished = 0;
        PyObject* r = hyco_wakeup_step(self, Py_None, &finished);
        if (r == NULL || !finished)
            return r;
        hyco_set_stop(r);
        Py_DECREF(r);
        return NULL;
    }

    static PySendResult hyco_wakeup_am_send(PyObject* self, PyObject* arg, PyObject** result) {
        int finished = 0;
        PyObject* r = hyco_wakeup_step(self, arg, &finished);
        *result = r;
        if (r == NULL)
            return PYGEN_ERROR;
        return finished ? PYGEN_RETURN : PYGEN_NEXT;
    }

    static int hyco_wakeup_slots(PyObject* type, hyco_step_fn step) {
        PyTypeObject* t = (PyTypeObject*)type;
        if (t->tp_as_async == NULL || t->tp_as_async->am_await == NULL) {
            PyErr_SetString(PyExc_SystemError, "Wakeup has no __await__ slot");
            return -1;
        }
        hyco_wakeup_step = step;
        t->tp_as_async->am_send = hyco_wakeup_am_send;
        t->tp_iternext = hyco_wakeup_iternext;
    #ifdef Py_TPFLAGS_HAVE_AM_SEND
        t->tp_flags |= Py_TPFLAGS_HAVE_AM_SEND;
    #endif
        PyType_Modified(t);
        return 0;
    }
    """
    ctypedef PyObject* (*hyco_step_fn)(PyObject*, PyObject*, int*)
    int hyco_wakeup_slots(object type, hyco_step_fn step) except -1


@cython.final
@cython.auto_pickle(False)  # holds a loop and callbacks: nothing to pickle
cdef class Wakeup:
    """What a waiting asyncio ``recv`` awaits: a one-shot future that resumes its task at once.

    The Python twin's docstring (``_frames_py.Wakeup``) says what and why; here the await and
    its steps are C (``__await__`` returns the waiter itself, stepped by ``am_send`` /
    ``tp_iternext``, with ``send`` / ``throw`` / ``close`` for callers that step it by hand):
    no generator and no Python frame per wait. One task awaits it at a time.

    ``Wakeup(loop, current_task, cancelled_error, then=None)``: ``current_task(loop)`` says
    whether a task runs (then a wake goes through ``loop.call_soon``), ``cancelled_error`` is
    the class ``cancel`` makes the await raise, and ``then()``, when given, is what the await
    awaits instead when woken without a value (``wake()``; kept on the waiter meanwhile).
    """

    cdef readonly object _loop
    cdef public bint _asyncio_future_blocking
    cdef readonly bint pending
    cdef bint _cancelled
    cdef bint _reusable
    cdef bint _yielded          # this await has yielded the waiter (its next step resumes)
    cdef object _current_task
    cdef object _cancelled_error
    cdef object _cancel_message  # cancel(msg)
    cdef object _then
    cdef object _error
    cdef object _value
    cdef object _first
    cdef object _context
    cdef object _inner          # then()'s iterator while this await delegates to it
    cdef list _more

    def __init__(self, loop, current_task, cancelled_error, then=None):
        self._loop = loop
        self._current_task = current_task
        self._cancelled_error = cancelled_error
        self._then = then
        self.pending = True

    def done(self):
        return not self.pending

    def cancelled(self):
        return self._cancelled

    def add_done_callback(self, fn, *, context=None):
        if not self.pending:
            self._loop.call_soon(fn, self, context=context)
        elif self._first is None:
            self._first = fn
            self._context = context
        else:
            if self._more is None:
                self._more = []
            self._more.append((fn, context))

    def remove_done_callback(self, fn):
        callbacks = self._take_callbacks()
        kept = [(f, c) for f, c in callbacks if f != fn]
        for f, c in kept:
            self.add_done_callback(f, context=c)
        return len(callbacks) - len(kept)

    def result(self):
        if self._cancelled:
            raise self._cancel_error()
        if self._error is not None:
            raise self._error
        return self._value

    def exception(self):
        if self._cancelled:
            raise self._cancel_error()
        return self._error

    cdef _cancel_error(self):
        # As asyncio.Future: the message given to cancel() is the error's argument.
        if self._cancel_message is None:
            return self._cancelled_error()
        return self._cancelled_error(self._cancel_message)

    def cancel(self, msg=None):
        if not self.pending:
            return False
        self.pending = False
        self._cancelled = True
        self._cancel_message = msg
        self._schedule()
        return True

    def wake(self, error=None, value=None):
        """Resolve (with ``error`` raised by the await, or ``value`` its result) and resume the
        waiting task: in place outside any task when it is the only callback, else through
        ``call_soon``. No effect once resolved."""
        if not self.pending:
            return
        self.pending = False
        self._error = error
        self._value = value
        fn = self._first
        if fn is not None and not self._more and self._current_task(self._loop) is None:
            self._first = None
            context = self._context
            self._context = None
            # The task's wake-up reads the result before it runs the task any further, so the
            # task may already rearm this waiter while we are still in fn. Only a task that
            # awaited it (the await yielded it) does that; a callback added otherwise (gather,
            # wait_for given the waiter itself) may read the result later: no reuse then.
            self._reusable = self._yielded
            if context is None:
                fn(self)
            else:
                PyContext_Enter(context)  # context.run(fn, self) without the call
                try:
                    fn(self)
                finally:
                    PyContext_Exit(context)
        else:
            self._schedule()

    def rearm(self, then):
        """Pending again for the next wait (woken by ``then()`` when empty) and returned, if it
        was woken in place (its task has the outcome); else None: make a new one."""
        if not self._reusable:
            return None
        self.pending = True
        self._reusable = False
        self._yielded = False
        self._then = then
        self._error = None
        self._value = None
        return self

    cdef list _take_callbacks(self):
        callbacks = self._more if self._more is not None else []
        self._more = None
        if self._first is not None:
            callbacks.insert(0, (self._first, self._context))
            self._first = None
            self._context = None
        return callbacks

    cdef _schedule(self):
        call_soon = self._loop.call_soon
        for fn, context in self._take_callbacks():
            call_soon(fn, self, context=context)

    def __await__(self):
        self._yielded = False
        self._inner = None
        return self

    def __iter__(self):
        self._yielded = False
        self._inner = None
        return self

    def __next__(self):
        # The slot is hyco_wakeup_iternext (module init); this is the method's name only.
        cdef int finished = 0
        result = _wakeup_step(self, None, &finished)
        if finished:
            raise StopIteration(result)
        return result

    def send(self, value):
        cdef int finished = 0
        result = _wakeup_step(self, value, &finished)
        if finished:
            raise StopIteration(result)
        return result

    def throw(self, typ, val=None, tb=None):
        """Raise ``typ`` (an exception or its class, with ``val`` and ``tb`` the old way) at
        the await; while delegating to ``then()``'s awaitable, into that."""
        cdef int finished = 0
        inner = self._inner
        self._inner = None
        if inner is not None:
            throw = getattr(inner, "throw", None)
            if throw is not None:
                try:
                    got = throw(typ) if val is None and tb is None else throw(typ, val, tb)
                except StopIteration as stop:
                    raise StopIteration(stop.value) from None
                self._inner = inner  # it yielded: still delegating
                return got
        if val is None and isinstance(typ, BaseException):
            exc = typ
        elif isinstance(val, BaseException):
            exc = val
        else:
            exc = typ() if val is None else typ(val)
        if tb is not None:
            exc = exc.with_traceback(tb)
        raise exc

    def close(self):
        inner = self._inner
        self._inner = None
        if inner is not None:
            close = getattr(inner, "close", None)
            if close is not None:
                close()


cdef object _wakeup_step(object waiter, object arg, int* finished):
    """One step of an await on ``waiter`` (see hyco_wakeup_step)."""
    cdef Wakeup self = <Wakeup>waiter
    if self._inner is not None:
        return _delegate(self, self._inner, arg, finished)
    if not self._yielded:
        self._yielded = True
        if self.pending:
            self._asyncio_future_blocking = True
            finished[0] = 0
            return self
    finished[0] = 1
    if not self.pending and not self._cancelled and self._error is None:
        value = self._value
        if value is None and self._then is not None:
            awaitable = self._then()
            if awaitable is self:  # rearmed by then(): a new wait on this waiter
                self._yielded = False
                return _wakeup_step(self, None, finished)
            return _delegate(self, awaitable.__await__(), None, finished)
        return value
    return self.result()  # raises


cdef object _delegate(Wakeup self, object inner, object arg, int* finished):
    """Step ``inner`` (``then()``'s iterator) as ``yield from`` does."""
    cdef PyObject* got = NULL
    cdef int status
    self._inner = None
    status = PyIter_Send(inner, arg, &got)  # raises on PYGEN_ERROR
    result = <object>got
    _decref(got)
    if status == 1:  # PYGEN_NEXT: it yielded
        self._inner = inner
    finished[0] = status != 1
    return result


hyco_wakeup_slots(Wakeup, <hyco_step_fn>_wakeup_step)
