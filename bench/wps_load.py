"""Raw-socket Web PubSub clients for ``bench/test_bench_webpubsub.py`` (no WebSocket library).

Like ``bench/loadgen.py`` they do as little per message as possible, so the server is measured:

- every client does its own HTTP upgrade (``ClientHandshake``, subprotocol
  ``json.webpubsub.azure.v1``) with a token from ``create_client_token``, all before any timing;
  receivers are put in the group by the token's ``webpubsub.group`` claim (joined at connect);
- senders write pre-built, pre-masked ``sendToGroup`` text frames, several per ``sendall``;
- all receivers are read by ONE epoll loop in this thread; each socket's bytes go through the
  Cython ``Forwarder`` (a C header walker, ``masked=False`` for server frames) that counts whole
  frames and flags a close frame or a protocol error — no JSON is parsed in the timed path.

``FanOut``: ``receivers`` clients in one group, one sender (not in the group) publishing ``n``
64 B text messages; a run ends when every receiver has counted all ``n``. The sender keeps at
most ``window`` messages in flight (sent but not yet delivered to every receiver, counted over
all receivers together), written ``batch`` at a time, so the hub is kept busy without an
unbounded queue. Latency: the time of each batch's ``sendall`` is recorded; a few *sampled*
receivers record when each of their frames arrived, and keep the frames, whose ``data`` starts
with the message's 10-digit sequence number (checked after the run: every sampled receiver got
exactly messages ``first..first+n-1`` in order). Latency = arrival - send of the batch.

``AckLoad``: one client sending ``sendToGroup`` frames with ``ackId`` to a group with one
receiver; ``window`` frames in flight (1: one at a time). Acks are counted in bulk by
``"type":"ack"`` / ``"success":true`` occurrences (a carried tail so none is split); the run ends
when all are acked and the receiver has counted all the group messages.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import selectors
import socket
import time
from collections.abc import Callable
from urllib.parse import quote

from bench.loadgen import (
    HOST,
    RECV_BUFFER,
    TIMEOUT,
    LoadgenError,
    RunStats,
    _finish,
    _start,
)
from bench.wps_servers import HUB, KEY, SUBPROTOCOL
from hyco_proto._frames import OP_TEXT, Forwarder, encode_frame
from hyco_proto.handshake import ClientHandshake
from hyco_proto.webpubsub.tokens import create_client_token

__all__ = ["AckLoad", "FanOut", "connect_clients", "percentile"]

MESSAGE_SIZE = 64
_DATA_RE = re.compile(rb'"data":"(\d{10})')
_ACK = b'"type":"ack"'
_ACK_OK = b'"success":true'


def token(port: int, *, groups: list[str] = [], roles: list[str] = [],  # noqa: B006
          user_id: str | None = None) -> str:
    return create_client_token(f"http://{HOST}:{port}", HUB, KEY, user_id=user_id, roles=roles,
                               groups=groups, now=time.time())


class Client:
    """One connected client: its socket and a frame counter for what the server sends it."""

    __slots__ = ("fwd", "sock")

    def __init__(self, sock: socket.socket, pending: bytes) -> None:
        self.sock = sock
        self.fwd = Forwarder(masked=False)
        if pending:
            self.fwd.feed(pending)

    def wait_frames(self, count: int) -> None:
        """Blocking: read until ``count`` frames have been counted (setup only)."""
        while self.fwd.frames < count:
            data = self.sock.recv(65536)
            if not data:
                raise LoadgenError("the server closed a client connection")
            self.fwd.feed(data)
            self.check()

    def check(self) -> None:
        fwd = self.fwd
        if fwd.error_code or fwd.close_code >= 0:
            raise LoadgenError(f"unexpected frame: {fwd.error_reason or fwd.close_reason!r}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def connect_clients(port: int, tok: str, count: int, concurrency: int = 50) -> list[Client]:
    """``count`` clients with access token ``tok``, ``concurrency`` upgrades at a time; each has
    received its ``connected`` system message when this returns."""
    target = f"/client/hubs/{HUB}?access_token={quote(tok, safe='')}"
    clients: list[Client] = []
    try:
        while len(clients) < count:
            started = [_start(port, ClientHandshake(f"{HOST}:{port}", target,
                                                    subprotocols=[SUBPROTOCOL]))
                       for _ in range(min(concurrency, count - len(clients)))]
            for sock, handshake in started:
                clients.append(Client(sock, _finish(sock, handshake)))
        for client in clients:
            client.wait_frames(1)  # {"type":"system","event":"connected",...}
    except BaseException:
        for client in clients:
            client.close()
        raise
    return clients


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _send_to_group(group: str, data: str, ack_id: int | None = None) -> bytes:
    msg: dict[str, object] = {"type": "sendToGroup", "group": group, "dataType": "text",
                              "data": data}
    if ack_id is not None:
        msg["ackId"] = ack_id
    return encode_frame(OP_TEXT, json.dumps(msg, separators=(",", ":")).encode(), masked=True)


def _data(seq: int) -> str:
    return f"{seq:010d}".ljust(MESSAGE_SIZE, "x")


class FanOut:
    """``receivers`` clients in one group and one sender; ``run(n)`` publishes ``n`` messages.

    Every delivery is the same text frame length (fixed-width data, one group, one sender), learnt
    from one message at setup (``frame_size``); in the timed runs receivers are counted in bytes
    (one ``recv_into`` and two additions per read) and each must end with exactly ``n`` frames'
    worth. The sampled receivers also run the C frame walker, for arrival times and the check of
    what they got.
    """

    GROUP = "fanout"

    def __init__(self, port: int, receivers: int, *, window: int = 4, batch: int = 2,
                 samples: int = 4, server_cpu: Callable[[], float] | None = None) -> None:
        if batch > window:
            raise ValueError("batch must not exceed window")
        self.receivers = connect_clients(port, token(port, groups=[self.GROUP]), receivers)
        (self.sender,) = connect_clients(port, token(port, roles=["webpubsub.sendToGroup"],
                                                     user_id="sender"), 1)
        self.window, self.batch = window, batch
        step = max(1, receivers // samples)
        self.sampled = sorted({min(receivers - 1, i * step) for i in range(samples)})
        self.server_cpu = server_cpu
        self.stats = RunStats()
        self.latencies: list[list[float]] = []  # seconds, one list per run
        self.seq = 0
        self.frame_size = self._learn_frame_size()
        fds = [c.sock.fileno() for c in self.receivers]
        self.fds = fds
        self.readers: list[Callable[..., int] | None] = [None] * (max(fds) + 1)
        self.bytes_in = [0] * (max(fds) + 1)
        self.epoll = select.epoll(len(fds))
        for client, fd in zip(self.receivers, fds, strict=True):
            client.sock.setblocking(False)
            self.readers[fd] = client.sock.recv_into
            self.epoll.register(fd, select.EPOLLIN)

    def _learn_frame_size(self) -> int:
        """Publish one message; every receiver must get it as a frame of the same length."""
        before = [c.fwd.payload_bytes for c in self.receivers]
        self.sender.sock.sendall(_send_to_group(self.GROUP, _data(self.seq)))
        self.seq += 1
        sizes = set()
        for client, old in zip(self.receivers, before, strict=True):
            client.wait_frames(2)
            sizes.add(client.fwd.payload_bytes - old)
        if len(sizes) != 1:
            raise LoadgenError(f"group messages of different lengths: {sorted(sizes)}")
        (payload,) = sizes
        return payload + (2 if payload < 126 else 4 if payload < 65536 else 10)

    def _frames(self, n: int) -> list[bytes]:
        """The batches for messages ``seq..seq+n-1`` (built before timing)."""
        frames = [_send_to_group(self.GROUP, _data(self.seq + k)) for k in range(n)]
        return [b"".join(frames[i : i + self.batch]) for i in range(0, n, self.batch)]

    def prepare(self, n: int) -> tuple[int, list[bytes]]:
        return n, self._frames(n)

    def run(self, n: int, batches: list[bytes] | None = None) -> int:
        """Publish ``n`` messages; returns deliveries (``n`` x receivers) once all arrived."""
        if batches is None:
            batches = self._frames(n)
        first = self.seq
        self.seq += n
        count, size = len(self.receivers), self.frame_size
        sampled = {self.fds[i]: self.receivers[i] for i in self.sampled}
        bytes_in, readers = self.bytes_in, self.readers
        base = {fd: bytes_in[fd] for fd in self.fds}
        frames0 = {fd: c.fwd.frames for fd, c in sampled.items()}
        want = n * count * size
        arrivals: dict[int, list[tuple[float, int]]] = {fd: [] for fd in sampled}
        kept: dict[int, list[bytes]] = {fd: [] for fd in sampled}
        send_times: list[float] = []
        buffer = bytearray(RECV_BUFFER)
        view = memoryview(buffer)
        poll = self.epoll.poll
        send = self.sender.sock.sendall
        clock = time.perf_counter
        window, per = self.window * count * size, self.batch
        per_message = count * size
        total = sent = b = 0
        wall0, cpu0 = clock(), time.process_time()
        server0 = self.server_cpu() if self.server_cpu else 0.0
        while total < want:
            while b < len(batches) and sent * per_message - total < window:
                send_times.append(clock())
                send(batches[b])
                b += 1
                sent = min(n, sent + per)
            events = poll(TIMEOUT)
            if not events:
                raise LoadgenError(f"nothing arrived for {TIMEOUT}s ({total // size}/"
                                   f"{n * count} deliveries)")
            for fd, _ in events:
                got = readers[fd](buffer)  # type: ignore[misc]
                if not got:
                    raise LoadgenError("the server closed a receiver")
                total += got
                bytes_in[fd] += got
                if fd in sampled:
                    client = sampled[fd]
                    kept[fd].append(client.fwd.feed(view[:got]))
                    client.check()
                    arrivals[fd].append((clock(), client.fwd.frames - frames0[fd]))
        wall = clock() - wall0
        self.stats.loadgen.append((time.process_time() - cpu0) / wall)
        if self.server_cpu:
            self.stats.relay.append((self.server_cpu() - server0) / wall)
        for i, fd in enumerate(self.fds):
            if bytes_in[fd] - base[fd] != n * size:
                raise LoadgenError(f"receiver {i} got {bytes_in[fd] - base[fd]} bytes, not "
                                   f"{n} frames of {size}")
        latencies: list[float] = []
        for fd in sampled:
            seqs = [int(s) for s in _DATA_RE.findall(b"".join(kept[fd]))]
            if seqs != list(range(first, first + n)):
                raise LoadgenError("a sampled receiver got the wrong messages or order")
            j = 0
            for at, upto in arrivals[fd]:
                while j < upto:
                    latencies.append(at - send_times[j // per])
                    j += 1
        self.latencies.append(latencies)
        return total // size

    def latency_summary(self) -> dict[str, float]:
        """Median over runs of each run's p50 / p99 latency, in milliseconds."""
        def mid(values: list[float]) -> float:
            return sorted(values)[len(values) // 2] if values else float("nan")

        return {"latency_p50_ms": round(mid([percentile(r, 0.5) for r in self.latencies]) * 1e3,
                                        2),
                "latency_p99_ms": round(mid([percentile(r, 0.99) for r in self.latencies]) * 1e3,
                                        2),
                "latency_samples": sum(len(r) for r in self.latencies)}

    def close(self) -> None:
        self.epoll.close()
        for client in [*self.receivers, self.sender]:
            client.close()


class AckLoad:
    """One client sending ``sendToGroup`` with ``ackId`` to a group with one receiver."""

    GROUP = "acks"

    def __init__(self, port: int, *, window: int,
                 server_cpu: Callable[[], float] | None = None) -> None:
        (self.receiver,) = connect_clients(port, token(port, groups=[self.GROUP]), 1)
        (self.sender,) = connect_clients(port, token(port, roles=["webpubsub.sendToGroup"],
                                                     user_id="acker"), 1)
        self.window = window
        self.server_cpu = server_cpu
        self.stats = RunStats()
        self.next_ack = 1
        self.selector = selectors.EpollSelector()
        for client in (self.sender, self.receiver):
            client.sock.setblocking(False)
        self.selector.register(self.sender.sock, selectors.EVENT_READ, 0)
        self.selector.register(self.receiver.sock, selectors.EVENT_READ, 1)

    def prepare(self, n: int) -> tuple[int, tuple[bytes, list[int]]]:
        """``n`` frames with fresh ack ids in one buffer, and where each one starts."""
        frames = [_send_to_group(self.GROUP, _data(k), self.next_ack + k) for k in range(n)]
        self.next_ack += n
        offsets = [0]
        for frame in frames:
            offsets.append(offsets[-1] + len(frame))
        return n, (b"".join(frames), offsets)

    def run(self, n: int, prepared: tuple[bytes, list[int]] | None = None) -> int:
        """Send ``n`` acked messages, ``window`` in flight; returns the acks counted."""
        blob, offsets = prepared if prepared is not None else self.prepare(n)[1]
        data = memoryview(blob)
        send = self.sender.sock.send
        receiver = self.receiver.fwd
        base = receiver.frames
        buffer = bytearray(RECV_BUFFER)
        view = memoryview(buffer)
        select = self.selector.select
        acks = ok = 0
        tail = tail_ok = b""
        keep, keep_ok = len(_ACK) - 1, len(_ACK_OK) - 1
        sent = 0  # messages whose bytes are all written
        written = 0  # bytes written
        limit = 0  # bytes we may write (frames up to the window)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        server0 = self.server_cpu() if self.server_cpu else 0.0
        while acks < n or receiver.frames - base < n:
            allowed = min(n, acks + self.window)
            if allowed > sent:
                limit = offsets[allowed]
                while written < limit:
                    try:
                        written += send(data[written:limit])
                    except BlockingIOError:
                        break
                sent = allowed if written >= limit else sent
            ready = select(TIMEOUT)
            if not ready:
                raise LoadgenError(f"nothing arrived for {TIMEOUT}s ({acks}/{n} acks)")
            for key, _ in ready:
                got = key.fileobj.recv_into(view)  # type: ignore[union-attr]
                if not got:
                    raise LoadgenError("the server closed a client")
                if key.data == 0:
                    # Each pattern counted with its own carried tail (one byte short of it),
                    # so a match split across reads is found once and never twice.
                    chunk = bytes(view[:got])
                    acks += (tail + chunk).count(_ACK)
                    ok += (tail_ok + chunk).count(_ACK_OK)
                    tail = (tail + chunk)[-keep:]
                    tail_ok = (tail_ok + chunk)[-keep_ok:]
                else:
                    receiver.feed(view[:got])
                    self.receiver.check()
        wall = time.perf_counter() - wall0
        self.stats.loadgen.append((time.process_time() - cpu0) / wall)
        if self.server_cpu:
            self.stats.relay.append((self.server_cpu() - server0) / wall)
        if acks != n or ok != n:
            raise LoadgenError(f"{acks} acks ({ok} successful) for {n} messages")
        return acks

    def close(self) -> None:
        self.selector.close()
        for client in (self.sender, self.receiver):
            client.close()
