"""One raw-socket load generator for every relay: ours (``hyco_proto``) and the peer relays.

It must never be the bottleneck, so it does as little per message as possible:

- sockets are plain blocking sockets (bounded by timeouts); no asyncio, no WebSocket library;
- handshakes use the sans-IO ``ClientHandshake`` (HTTP only, never in a timed data path);
- the sender writes pre-built buffers of pre-masked binary frames, a batch of ~256 KiB (or one
  1 MiB frame) per ``sendall``;
- a receiver thread ``recv_into``s a 1 MiB buffer and counts whole frames in bulk with the Cython
  ``Forwarder`` (a C header walker with ``frames`` / ``payload_bytes`` counters; ``masked=False``
  for relayed, unmasked server frames), in place (``feed_into``: no copy, no allocation) — it
  checks every header, never per-frame Python code.

``loopback_pair()`` wires the same sender and receiver back to back over loopback TCP (no relay):
that rate is the generator's own ceiling, reported next to the relays.

``EchoClient`` is the same idea for round trips over one connection (``bench/test_bench_echo.py``):
one pre-masked message out, its echo counted back by parsing frame headers only, repeat.

Relays run as subprocesses (``RelayProcess``), one at a time; ``python -m bench.loadgen`` runs the
whole comparison without pytest (handy when profiling a relay).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import select
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.tree import positive
from hyco_proto._frames import (
    FORWARD_HEADROOM,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Forwarder,
    FrameDecoder,
    decode_header,
    encode_frame,
)
from hyco_proto.handshake import ClientHandshake, HandshakeRejected, parse_ws_url
from hyco_proto.sas import create_relay_token
from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY

__all__ = [
    "RELAYS",
    "Control",
    "Counter",
    "EchoClient",
    "EchoServerProcess",
    "HttpLoad",
    "LoadgenError",
    "Pair",
    "RelayProcess",
    "ServerProcess",
    "Session",
    "Stream",
    "loopback_pair",
]

HOST = "127.0.0.1"
HC = "bench"
ROOT = Path(__file__).resolve().parent.parent
#: Module names under bench.relays, by the label the report uses.
RELAYS = {"hyco_proto": "hyco_relay", "websockets": "websockets_relay", "picows": "picows_relay"}
#: Every blocking socket operation is bounded by this (seconds).
TIMEOUT = 15.0
SMALL = 64
BIG = 1 << 20
SMALL_BATCH_BYTES = 256 * 1024
#: The echo benchmarks' message sizes, by the names the tools take.
ECHO_SIZES = {"256B": 256, "8KiB": 8 * 1024, "100KiB": 100 * 1024, "1MiB": 1024 * 1024}
RECV_BUFFER = 1 << 20
#: recv flag: discard instead of copy (Linux TCP); the echo client skips payloads with it.
TRUNC = socket.MSG_TRUNC
CLK_TCK = os.sysconf("SC_CLK_TCK")


class LoadgenError(RuntimeError):
    """A relay refused, broke the protocol, or did not answer in time."""


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ------------------------------------------------------------------------------ server processes


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` used so far (``/proc/<pid>/stat``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


#: Runs module argv[2] (this checkout's bench code) with hyco_proto imported from argv[1].
_FROM_TREE = (
    "import runpy, sys; from bench.tree import import_from_tree; "
    "tree, module = sys.argv[1:3]; import_from_tree(tree); sys.argv = [module, *sys.argv[3:]]; "
    "runpy.run_module(module, run_name='__main__', alter_sys=True)"
)


class ServerProcess:
    """``python -m <module> --port 0`` on 127.0.0.1, any free port; ``stop()`` kills it.

    The process prints ``PORT <n>`` once it listens and exits when its stdin closes. With
    ``root`` (another checkout) it imports that checkout's ``hyco_proto`` (a before/after)."""

    def __init__(self, label: str, module: str, *args: str, root: Path = ROOT,
                 env: dict[str, str] | None = None) -> None:
        self.label = label
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        command = [sys.executable, "-m", module]
        if root != ROOT:  # a before/after: that checkout's hyco_proto, this one's bench code
            command = [sys.executable, "-c", _FROM_TREE, str(root), module]
        self.proc = subprocess.Popen(
            [*command, *args, "--port", "0"],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self.pid = self.proc.pid
        try:
            self.port = self._read_port()
        except BaseException:
            self.stop()
            raise

    def _read_port(self) -> int:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(TIMEOUT):
                raise LoadgenError(f"{self.label} did not announce its port in {TIMEOUT}s")
        line = self.proc.stdout.readline().decode().split()
        if not line:
            code = self.proc.wait(TIMEOUT)
            raise LoadgenError(f"{self.label} exited (status {code}) before announcing its "
                               "port; its own message is above")
        if len(line) != 2 or line[0] != "PORT":
            raise LoadgenError(f"{self.label} said {line!r} instead of PORT <n>")
        return int(line[1])

    def rss(self) -> int:
        """Resident set size in bytes (``VmRSS`` in /proc/<pid>/status)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise LoadgenError("no VmRSS line")

    def cpu(self) -> float:
        """User + system CPU seconds used so far."""
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        proc = self.proc
        if proc.poll() is None:
            if proc.stdin is not None:
                proc.stdin.close()  # the watchdog exits on EOF
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()


class RelayProcess(ServerProcess):
    """``python -m bench.relays.<module>`` for a label of ``RELAYS``."""

    def __init__(self, label: str, root: Path = ROOT, env: dict[str, str] | None = None) -> None:
        super().__init__(label, f"bench.relays.{RELAYS[label]}", root=root, env=env)


class EchoServerProcess(ServerProcess):
    """``python -m bench.echo_servers <label>`` (see ``bench/echo_servers.py``)."""

    def __init__(self, label: str) -> None:
        super().__init__(label, "bench.echo_servers", label)


# ------------------------------------------------------------------------------ handshakes


def _connect(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # no getaddrinfo per connection
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(TIMEOUT)
    sock.connect((HOST, port))
    return sock


def _handshake(port: int, target: str, headers: list[tuple[str, str]]) -> ClientHandshake:
    return ClientHandshake(f"{HOST}:{port}", target, headers=headers)


def _start(port: int, handshake: ClientHandshake,
           target: str | None = None) -> tuple[socket.socket, ClientHandshake]:
    """Connect and send the upgrade request; ``target`` replaces the prepared request's (the
    relay named another address: ours adds its rendezvous secret), same key and headers, so
    no new handshake is built while the clock runs."""
    sock = _connect(port)
    data = handshake.data_to_send()
    if target is not None:
        method, _old, rest = data.split(b" ", 2)
        data = b"%s %s %s" % (method, target.encode("ascii"), rest)
    sock.sendall(data)
    return sock, handshake


def _address(url: str) -> tuple[int, str]:
    """Port and request target of an accept address: split by hand when it is the plain
    ``ws://127.0.0.1:PORT/...`` every relay here sends (``parse_ws_url`` costs more than the
    rest of the generator's rendezvous step), by ``parse_ws_url`` otherwise."""
    prefix = f"ws://{HOST}:"
    if url.startswith(prefix) and "#" not in url:
        port, slash, rest = url[len(prefix):].partition("/")
        if slash and port.isdigit():
            return int(port), "/" + rest
    parsed = parse_ws_url(url)
    return parsed.port, parsed.target


def _other(target: str, handshake: ClientHandshake) -> str | None:
    """``target`` if it is not the one ``handshake`` was prepared for (a request target that
    can go on the request line as it is: printable ASCII, no space, starting with "/")."""
    if target == handshake.target:
        return None
    if not (target.startswith("/") and target.isascii() and target.isprintable()
            and " " not in target):
        raise LoadgenError(f"the relay named an accept address the generator cannot send as "
                           f"a request target: {target!r}")
    return target


def _finish(sock: socket.socket, handshake: ClientHandshake) -> bytes:
    """Read the answer to an upgrade request; returns the bytes after the 101.

    Fast path (the rendezvous benchmark must not measure h11): a complete head that starts with
    ``HTTP/1.1 101`` and carries the expected ``Sec-WebSocket-Accept`` token is taken as is;
    anything else goes through ``ClientHandshake`` for a full check and a precise error."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        data += chunk
        end = data.find(b"\r\n\r\n")
        if end >= 0 or not chunk:
            break
    if (end >= 0 and data.startswith(b"HTTP/1.1 101 ")
            and handshake.expected_accept.encode() in data[:end]):
        return data[end + 4 :]
    handshake.receive_data(data)
    while True:
        event = handshake.next_event()
        if event is not None:
            break
        handshake.receive_data(sock.recv(65536))
    if isinstance(event, HandshakeRejected):
        raise LoadgenError(f"handshake refused: {event.status} {event.reason}")
    return event.trailing_data


class Control:
    """The listener's control channel: collects ``accept`` messages by id."""

    def __init__(self, port: int, auth: list[tuple[str, str]]) -> None:
        self.sock, handshake = _start(port, _handshake(
            port, f"/$hc/{HC}?sb-hc-action=listen&sb-hc-id=bench-listener", auth))
        self.decoder = FrameDecoder(masked=False)
        self.accepts: dict[str, str] = {}
        self._text = bytearray()
        self._feed(_finish(self.sock, handshake))

    def _feed(self, data: bytes) -> None:
        for opcode, payload, fin in self.decoder.feed(data):
            if opcode == 8:
                raise LoadgenError(f"the relay closed the control channel: {payload!r}")
            if opcode in (0, 1):
                self._text += payload
                if fin:
                    accept = json.loads(bytes(self._text))["accept"]
                    self._text.clear()
                    self.accepts[accept["id"]] = accept["address"]
        if self.decoder.error_code:
            raise LoadgenError(f"bad control channel frame: {self.decoder.error_reason}")

    def wait_accept(self, ident: str) -> str:
        while ident not in self.accepts:
            data = self.sock.recv(65536)
            if not data:
                raise LoadgenError("the relay closed the control channel")
            self._feed(data)
        return self.accepts.pop(ident)

    def close(self) -> None:
        self.sock.close()


@dataclass
class Pair:
    """A relayed connection: ``sender`` writes client frames, ``listener`` reads them."""

    sender: socket.socket
    listener: socket.socket
    listener_pending: bytes = b""  # frames that arrived with the rendezvous 101
    sender_pending: bytes = b""

    def close(self) -> None:
        for sock in (self.sender, self.listener):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # also wakes a thread blocked in recv
            sock.close()


class Session:
    """One listener on one relay; opens relayed pairs through it."""

    def __init__(self, port: int) -> None:
        self.port = port
        # Token creation happens here, before anything is timed (the peers ignore it).
        token = create_relay_token(f"ws://{HOST}:{port}/$hc/{HC}", DEFAULT_RULE_NAME,
                                   DEVELOPMENT_KEY)
        self.auth = [("ServiceBusAuthorization", token)]
        self.control = Control(port, self.auth)
        self._ids = 0

    def prepare(self, count: int) -> list[tuple[str, ClientHandshake, ClientHandshake]]:
        """Upgrade requests for ``count`` pairs, built ahead of any timing: the sender's, and
        the rendezvous for the accept address we expect (used only if the relay names it)."""
        prepared = []
        for _ in range(count):
            self._ids += 1
            ident = f"s{self._ids}"
            sender = _handshake(
                self.port, f"/$hc/{HC}?sb-hc-action=connect&sb-hc-id={ident}", self.auth)
            accept = _handshake(self.port, f"/$hc/{HC}?sb-hc-action=accept&sb-hc-id={ident}", [])
            prepared.append((ident, sender, accept))
        return prepared

    def open_pairs(self, count: int, prepared: list[tuple[str, ClientHandshake,
                                                          ClientHandshake]] | None = None,
                   ) -> list[Pair]:
        """``count`` senders connect at once; each accept opens its rendezvous; both 101s."""
        if prepared is None:
            prepared = self.prepare(count)
        senders = [_start(self.port, sender) for _, sender, _ in prepared]
        rendezvous = []
        for ident, _, accept in prepared:
            port, target = _address(self.control.wait_accept(ident))
            if port != self.port:
                accept = _handshake(port, target, [])
            rendezvous.append(_start(port, accept, _other(target, accept)))
        pairs = []
        for (s_sock, s_hs), (l_sock, l_hs) in zip(senders, rendezvous, strict=True):
            l_pending = _finish(l_sock, l_hs)
            s_pending = _finish(s_sock, s_hs)
            pairs.append(Pair(s_sock, l_sock, l_pending, s_pending))
        return pairs

    def rendezvous(self, prepared: list[tuple[str, ClientHandshake, ClientHandshake]],
                   concurrency: int = 1) -> int:
        """Open and close one relayed connection per prepared entry, ``concurrency`` in flight
        (a new one starts as soon as one is done: a window, not batches); returns how many."""
        if concurrency == 1:
            for entry in prepared:
                for pair in self.open_pairs(0, [entry]):
                    pair.sender.close()  # close() sends the FIN: no shutdown() call needed
                    pair.listener.close()
            return len(prepared)
        return self._window(prepared, concurrency)

    def _window(self, prepared: list[tuple[str, ClientHandshake, ClientHandshake]],
                window: int) -> int:
        """Rendezvous with up to ``window`` in flight, one thread, one selector: senders'
        answers, the control channel's accepts and the rendezvous' answers as they come."""
        todo = list(reversed(prepared))
        flight: dict[str, _InFlight] = {}
        done = 0
        # A bare poll object and a dict by descriptor: the selectors module's bookkeeping per
        # register / unregister would be the generator's biggest cost after the syscalls.
        poller = select.poll()
        control = self.control.sock.fileno()
        poller.register(control, select.POLLIN)
        waiting: dict[int, tuple[_InFlight, _Upgrade]] = {}

        def watch(entry: _InFlight, side: _Upgrade) -> None:
            fd = side.sock.fileno()
            waiting[fd] = (entry, side)
            poller.register(fd, select.POLLIN)

        def start() -> None:
            ident, sender, accept = todo.pop()
            sock, _ = _start(self.port, sender)
            entry = flight[ident] = _InFlight(ident, accept, _Upgrade(sock, sender))
            watch(entry, entry.sender)

        while todo and len(flight) < window:
            start()
        while flight:
            events = poller.poll(TIMEOUT * 1000)
            if not events:
                raise LoadgenError(f"{len(flight)} rendezvous made no progress in {TIMEOUT}s")
            for fd, _ in events:
                if fd == control:  # the control channel: accepts
                    data = self.control.sock.recv(65536)
                    if not data:
                        raise LoadgenError("the relay closed the control channel")
                    self.control._feed(data)
                    for ident in [i for i in self.control.accepts if i in flight]:
                        entry = flight[ident]
                        port, target = _address(self.control.accepts.pop(ident))
                        accept = entry.accept
                        if port != self.port:
                            accept = _handshake(port, target, [])
                        sock, _ = _start(port, accept, _other(target, accept))
                        entry.listener = _Upgrade(sock, accept)
                        watch(entry, entry.listener)
                    continue
                entry, side = waiting[fd]
                if side.read():
                    poller.unregister(fd)
                    del waiting[fd]
                    if entry.sender.done and entry.listener is not None \
                            and entry.listener.done:
                        entry.sender.sock.close()  # close() sends the FIN
                        entry.listener.sock.close()
                        del flight[entry.ident]
                        done += 1
                        if todo:
                            start()
        return done

    def close(self) -> None:
        self.control.close()


#: (user, system) CPU seconds of a relay process so far.
CpuClock = Callable[[], tuple[float, float]]


def rendezvous_rounds(sessions: dict[str, Session], rounds: int, count: int,
                      concurrencies: Sequence[int], cpu: dict[str, CpuClock] | None = None,
                      ) -> Iterator[tuple[int, int, str, float, float, float]]:
    """Rendezvous on several relays in interleaved rounds: per concurrency a warm-up, then
    ``rounds`` rounds of ``count`` rendezvous on each relay in turn (the order reversed every
    other round, so none always goes first). Yields ``(round, concurrency, label, per second,
    user µs, system µs)``, the CPU per rendezvous from ``cpu[label]`` (0 without it)."""
    for conc in concurrencies:
        for session in sessions.values():
            session.rendezvous(session.prepare(100), conc)
        for rnd in range(rounds):
            order = list(sessions.items())
            if rnd % 2:
                order.reverse()
            for label, session in order:
                clock = (cpu or {}).get(label, lambda: (0.0, 0.0))
                prepared = session.prepare(count)
                (u0, s0), t0 = clock(), time.perf_counter()
                done = session.rendezvous(prepared, conc)
                wall = time.perf_counter() - t0
                u1, s1 = clock()
                yield (rnd, conc, label, done / wall, (u1 - u0) / done * 1e6,
                       (s1 - s0) / done * 1e6)


class _Upgrade:
    """One upgrade request's answer being read (``_finish``'s checks, without blocking)."""

    def __init__(self, sock: socket.socket, handshake: ClientHandshake) -> None:
        self.sock = sock
        self.handshake = handshake
        self.data = b""
        self.done = False

    def read(self) -> bool:
        """Read what is there; True once the whole 101 is in (raises on anything else)."""
        chunk = self.sock.recv(65536)
        if not chunk:
            raise LoadgenError(f"the relay closed an upgrade without answering: {self.data!r}")
        self.data += chunk
        end = self.data.find(b"\r\n\r\n")
        if end < 0:
            return False
        if not (self.data.startswith(b"HTTP/1.1 101 ")
                and self.handshake.expected_accept.encode() in self.data[:end]):
            self.handshake.receive_data(self.data)
            event = self.handshake.next_event()
            if isinstance(event, HandshakeRejected) or event is None:
                why = f"{event.status} {event.reason}" if event is not None else "incomplete"
                raise LoadgenError(f"handshake refused: {why}")
        self.done = True
        return True


@dataclass
class _InFlight:
    """A rendezvous in a window: the sender's upgrade, then the listener's."""

    ident: str
    accept: ClientHandshake
    sender: _Upgrade
    listener: _Upgrade | None = None


def loopback_pair() -> Pair:
    """Sender and receiver joined directly over loopback TCP: the generator without a relay."""
    with socket.create_server((HOST, 0)) as server:
        sender = _connect(server.getsockname()[1])
        listener, _ = server.accept()
    listener.settimeout(TIMEOUT)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return Pair(sender, listener)


# ------------------------------------------------------------------------------ data path


class Counter(threading.Thread):
    """Counts the frames arriving on a socket in bulk (C header walker), signals targets."""

    def __init__(self, sock: socket.socket, initial: bytes = b"", *, masked: bool = False):
        super().__init__(name="loadgen-counter", daemon=True)
        self.sock = sock
        self.fwd = Forwarder(masked=masked)
        self.target = 0
        self.reached = threading.Event()
        self.failure: str | None = None
        self._stopping = False
        if initial:
            self.fwd.feed(initial)

    @property
    def frames(self) -> int:
        return int(self.fwd.frames)

    def expect(self, frames: int) -> None:
        self.reached.clear()
        self.target = frames
        if self.fwd.frames >= frames:
            self.reached.set()

    def run(self) -> None:
        # Counted in place (``feed_into``): no copy, no allocation per read.
        buffer = bytearray(FORWARD_HEADROOM + RECV_BUFFER)
        view = memoryview(buffer)[FORWARD_HEADROOM:]
        recv_into = self.sock.recv_into
        feed_into = self.fwd.feed_into
        fwd = self.fwd
        try:
            while not self._stopping:
                try:
                    n = recv_into(view)
                except TimeoutError:
                    continue
                if not n:
                    self.failure = "the relay closed the connection"
                    break
                feed_into(buffer, FORWARD_HEADROOM, FORWARD_HEADROOM + n)
                if fwd.frames >= self.target:
                    self.reached.set()
                if fwd.error_code or fwd.close_code >= 0:
                    self.failure = f"unexpected frame: {fwd.error_reason or fwd.close_reason}"
                    break
        except OSError as exc:
            if not self._stopping:
                self.failure = f"receive failed: {exc}"
        finally:
            self.reached.set()

    def stop(self) -> None:
        self._stopping = True


@dataclass
class RunStats:
    """CPU use per timed run, as a fraction of one core (1.0: one core fully busy)."""

    loadgen: list[float] = field(default_factory=list)
    relay: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        def median(values: list[float]) -> float:
            ordered = sorted(values)
            return ordered[len(ordered) // 2] if ordered else 0.0

        return {"loadgen_cpu": round(median(self.loadgen), 3),
                "relay_cpu": round(median(self.relay), 3)}


class Stream:
    """Moves pre-masked frames sender→listener over a pair and waits until all are counted."""

    def __init__(self, pair: Pair, size: int, *, masked_receiver: bool = False,
                 relay_cpu: Callable[[], float] | None = None, text: str | None = None) -> None:
        self.pair = pair
        self.size = size
        if text is None:
            frame = encode_frame(OP_BINARY, os.urandom(size), masked=True)
        else:  # a text message: ``text`` repeated to ``size`` bytes (cut on a code point)
            raw = (text * (size // len(text.encode()) + 1)).encode()[:size]
            raw = raw[: len(raw.decode("utf-8", "ignore").encode())]
            frame = encode_frame(OP_TEXT, raw.ljust(size, b" "), masked=True)
        self.per_batch = max(1, SMALL_BATCH_BYTES // len(frame))
        self.batch = frame * self.per_batch
        self.counter = Counter(pair.listener, pair.listener_pending, masked=masked_receiver)
        self.counter.start()
        self.relay_cpu = relay_cpu
        self.stats = RunStats()

    def batches_for(self, messages: int) -> int:
        return max(1, messages // self.per_batch)

    def run(self, batches: int) -> int:
        """Send ``batches`` batches; return the messages counted at the far end."""
        counter = self.counter
        start_frames = counter.frames
        wanted = start_frames + batches * self.per_batch
        counter.expect(wanted)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        relay0 = self.relay_cpu() if self.relay_cpu else 0.0
        send = self.pair.sender.sendall
        batch = self.batch
        for _ in range(batches):
            send(batch)
        if not counter.reached.wait(TIMEOUT * 4) or counter.failure:
            raise LoadgenError(counter.failure or f"only {counter.frames - start_frames} of "
                               f"{wanted - start_frames} messages arrived in time")
        wall = time.perf_counter() - wall0
        self.stats.loadgen.append((time.process_time() - cpu0) / wall)
        if self.relay_cpu:
            self.stats.relay.append((self.relay_cpu() - relay0) / wall)
        return counter.frames - start_frames

    def close(self) -> None:
        self.counter.stop()
        self.pair.close()
        self.counter.join(TIMEOUT)


class EchoClient:
    """Round trips over one connection: send one pre-masked binary message, read until its whole
    echo is back, repeat (``run(n)``). Single-threaded, blocking socket.

    Reads go into a 1 MiB buffer and only frame headers are parsed (``decode_header``, in C): a
    payload is never unmasked or looked at; what arrived with its header is skipped by
    arithmetic, the rest is discarded in the kernel (``MSG_TRUNC``, no copy), so a 1 MiB echo
    costs one header parse and a few ``recv_into`` calls. The echo may come back in any number of
    frames; it is complete at the data frame with FIN. Pings are answered (same payload), a close
    frame is an error. ``websocket=False`` skips the handshake for a raw TCP echo: the masked
    frames come back as sent, and the same parser reads them (the client's ceiling). ``target``
    and ``headers``: the upgrade request's (a relayed sender's, ``bench/relay_echo.py``).
    """

    def __init__(self, port: int, size: int, *, websocket: bool = True, target: str = "/",
                 headers: list[tuple[str, str]] | None = None,
                 server_cpu: Callable[[], float] | None = None) -> None:
        if websocket:
            self.sock, handshake = _start(port, _handshake(port, target, headers or []))
            pending = _finish(self.sock, handshake)
        else:
            self.sock, pending = _connect(port), b""
        self.websocket = websocket
        self.size = size
        self.frame = encode_frame(OP_BINARY, os.urandom(size), masked=True)
        self.buffer = bytearray(RECV_BUFFER)
        self.view = memoryview(self.buffer)
        self.view[: len(pending)] = pending
        self.carry = len(pending)  # unparsed bytes at the front of the buffer
        self.server_cpu = server_cpu
        self.stats = RunStats()

    def _read(self, pos: int, end: int) -> tuple[int, int]:
        """Move the unparsed tail ``[pos:end]`` to the front and read once after it."""
        rest = end - pos
        if rest and pos:
            self.view[:rest] = self.view[pos:end]
        n = self.sock.recv_into(self.view[rest:])
        if not n:
            raise LoadgenError("the server closed the connection")
        return 0, rest + n

    def _await_echo(self) -> int:
        """Read until one whole data message has come back; return its payload length."""
        view, recv_into = self.view, self.sock.recv_into
        pos, end = 0, self.carry
        got = 0
        while True:
            header = decode_header(view[pos:end]) if end > pos else None
            if header is None:  # no whole header buffered
                pos, end = self._read(pos, end)
                continue
            fin, _rsv, opcode, _mask, length, header_length = header
            pos += header_length
            if opcode >= 8:  # control frame: small, read it whole
                while end - pos < length:
                    pos, end = self._read(pos, end)
                if opcode == OP_CLOSE:
                    raise LoadgenError(f"the server closed: {bytes(view[pos:pos + length])!r}")
                if opcode == OP_PING:
                    self.sock.sendall(encode_frame(OP_PONG, bytes(view[pos:pos + length]),
                                                   masked=True))
                pos += length
                continue
            got += length
            if end - pos < length:
                # Skip the rest of the payload in the kernel: MSG_TRUNC on TCP (Linux) discards
                # up to the bytes asked for without copying them, never past this frame.
                length -= end - pos
                pos = end = 0
                while length:
                    n = recv_into(view, min(length, RECV_BUFFER), TRUNC)
                    if not n:
                        raise LoadgenError("the server closed the connection")
                    length -= n
            pos += length
            if fin:
                self.carry = end - pos
                if self.carry:  # bytes after the echo (rare): keep them for the next one
                    view[: self.carry] = view[pos:end]
                return got

    def run(self, count: int) -> int:
        """``count`` round trips; returns how many came back whole."""
        send, frame, wait, size = self.sock.sendall, self.frame, self._await_echo, self.size
        wall0, cpu0 = time.perf_counter(), time.process_time()
        server0 = self.server_cpu() if self.server_cpu else 0.0
        for _ in range(count):
            send(frame)
            if wait() != size:
                raise LoadgenError(f"an echo of {size} bytes came back with another length")
        wall = time.perf_counter() - wall0
        self.stats.loadgen.append((time.process_time() - cpu0) / wall)
        if self.server_cpu:
            self.stats.relay.append((self.server_cpu() - server0) / wall)
        return count

    def close(self) -> None:
        """A WebSocket close handshake (send close, read to EOF, bounded), then the socket."""
        if self.websocket:
            with contextlib.suppress(OSError):
                self.sock.sendall(encode_frame(OP_CLOSE, b"\x03\xe8", masked=True))
                self.sock.settimeout(2.0)
                while self.sock.recv_into(self.view):
                    pass
        self.sock.close()


# ------------------------------------------------------------------------------ memory


def idle_pairs_memory(relay: RelayProcess, session: Session, count: int,
                      batch: int = 50) -> tuple[list[Pair], dict[str, float]]:
    """Open ``count`` idle pairs (each carried one 64 B message, then stays idle); returns them
    and the relay's RSS growth per pair. The baseline is taken after a warm-up of opened, used and
    closed pairs, so one-time allocations are not charged to the pairs."""
    message = encode_frame(OP_BINARY, b"x" * SMALL, masked=True)

    def open_used(n: int) -> list[Pair]:
        pairs = session.open_pairs(n)
        for pair in pairs:
            pair.sender.sendall(message)
        for pair in pairs:
            got = len(pair.listener_pending)
            while got < SMALL + 2:
                data = pair.listener.recv(4096)
                if not data:
                    raise LoadgenError("the relay closed an idle pair")
                got += len(data)
        return pairs

    for _ in range(2):
        for pair in open_used(batch):
            pair.close()
    time.sleep(0.3)
    baseline = relay.rss()
    t0 = time.perf_counter()
    pairs: list[Pair] = []
    while len(pairs) < count:
        pairs += open_used(min(batch, count - len(pairs)))
    elapsed = time.perf_counter() - t0
    time.sleep(0.3)
    after = relay.rss()
    return pairs, {
        "pairs": count,
        "rss_baseline_kib": baseline / 1024,
        "rss_after_kib": after / 1024,
        "kib_per_pair": (after - baseline) / 1024 / count,
        "open_seconds": elapsed,
    }


# ------------------------------------------------------------------------------ HTTP


_STATUS_LINE = b"HTTP/1.1 "
_OK_LINE = b"HTTP/1.1 200 "


class HttpLoad:
    """Relayed (or direct) HTTP/1.1 requests from raw keep-alive sockets.

    ``small(n)``: ``n`` pre-built GETs spread over ``connections`` sockets, ``depth`` in flight
    per socket (pipelined), counted in bulk by their status lines (``bytes.count`` over what
    arrives, carrying 12 bytes across reads so no status line is split or counted twice); any
    status other than 200 fails the run. ``upload(n)`` / ``download(n)``: ``n`` 8 MiB POSTs (the
    pre-built body in one ``sendall``) or GETs over one socket, responses parsed with h11 (lengths
    or chunked, as the server chose).
    """

    def __init__(self, port: int, *, path: str = "/bench", token: str | None = None,
                 connections: int = 8, depth: int = 1, body_size: int = 8 << 20) -> None:
        self.port = port
        auth = f"ServiceBusAuthorization: {token}\r\n" if token else ""
        host = f"Host: {HOST}:{port}\r\n"
        self._small = f"GET {path}/small HTTP/1.1\r\n{host}{auth}\r\n".encode()
        self._upload_head = (f"POST {path}/upload HTTP/1.1\r\n{host}{auth}"
                             f"Content-Length: {body_size}\r\n\r\n").encode()
        self._download = f"GET {path}/download HTTP/1.1\r\n{host}{auth}\r\n".encode()
        self.body = b"\xa5" * body_size
        self.body_size = body_size
        self.connections = connections
        self.depth = depth
        self._socks: list[socket.socket] = []
        self._big: socket.socket | None = None

    def _socket(self) -> socket.socket:
        sock = _connect(self.port)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def small(self, count: int) -> int:
        if not self._socks:
            self._socks = [self._socket() for _ in range(self.connections)]
        socks = self._socks[:max(1, min(self.connections, count))]
        sent = dict.fromkeys(range(len(socks)), 0)
        done = dict.fromkeys(range(len(socks)), 0)
        tails = dict.fromkeys(range(len(socks)), b"")
        share = [count // len(socks) + (1 if i < count % len(socks) else 0)
                 for i in range(len(socks))]
        with selectors.DefaultSelector() as sel:
            for i, sock in enumerate(socks):
                n = min(self.depth, share[i])
                if n:
                    sock.sendall(self._small * n)
                    sent[i] = n
                    sel.register(sock, selectors.EVENT_READ, i)
            total = 0
            while total < count:
                ready = sel.select(TIMEOUT)
                if not ready:
                    raise LoadgenError(f"no HTTP response for {TIMEOUT}s ({total}/{count})")
                for key, _ in ready:
                    i = key.data
                    data = key.fileobj.recv(RECV_BUFFER)  # type: ignore[union-attr]
                    if not data:
                        raise LoadgenError("the server closed a keep-alive connection")
                    window = tails[i] + data
                    answers = window.count(_STATUS_LINE)
                    if window.count(_OK_LINE) != answers:
                        raise LoadgenError(f"a response was not 200: {window[:200]!r}")
                    tails[i] = window[-12:]
                    done[i] += answers
                    total += answers
                    more = min(answers, share[i] - sent[i])
                    if more > 0:
                        key.fileobj.sendall(self._small * more)  # type: ignore[union-attr]
                        sent[i] += more
        return total

    def _exchange(self, payload: bytes | None) -> int:
        import h11

        if self._big is None:
            self._big = self._socket()
        sock = self._big
        client = h11.Connection(h11.CLIENT)
        if payload is None:
            sock.sendall(self._download)
            client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        else:
            sock.sendall(self._upload_head)
            sock.sendall(payload)
            client.send(h11.Request(method="POST", target="/",
                                    headers=[("Host", "x"), ("Content-Length", "0")]))
        client.send(h11.EndOfMessage())
        received = 0
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                data = sock.recv(RECV_BUFFER)
                if not data:
                    raise LoadgenError("the server closed the connection mid-response")
                client.receive_data(data)
            elif isinstance(event, h11.Response):
                if event.status_code != 200:
                    raise LoadgenError(f"HTTP {event.status_code} {event.reason!r}")
            elif isinstance(event, h11.Data):
                received += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return received

    def upload(self, count: int) -> int:
        for _ in range(count):
            if self._exchange(self.body) != len(str(self.body_size)):
                raise LoadgenError("unexpected upload answer")
        return count

    def download(self, count: int) -> int:
        for _ in range(count):
            if self._exchange(None) != self.body_size:
                raise LoadgenError("a download came back short")
        return count

    def close(self) -> None:
        for sock in [*self._socks, *([self._big] if self._big else [])]:
            with contextlib.suppress(OSError):
                sock.close()
        self._socks, self._big = [], None


# ------------------------------------------------------------------------------ CLI


def listed(allowed: object, *, numbers: bool = False) -> Callable[[str], list[str]]:
    """An ``argparse`` type: a comma-separated list whose items are in ``allowed`` (or, with
    ``numbers``, positive whole numbers, e.g. byte counts)."""
    def parse(text: str) -> list[str]:
        items = [item for item in text.split(",") if item]
        for item in items:
            if numbers:
                positive(item)
            elif item not in allowed:  # type: ignore[operator]
                raise argparse.ArgumentTypeError(
                    f"{item!r} is not one of {', '.join(allowed)}")  # type: ignore[call-overload]
        if not items:
            raise argparse.ArgumentTypeError("give at least one")
        return items
    return parse


def calibrated(run: Callable[[int], object], *, warmup: int, start: int, limit: int,
               seconds: float) -> int:
    """Warm the path up with ``run(warmup)``, then pick a count for ``run`` that takes about
    ``seconds`` (doubling from ``start`` until a quarter of that is reached, or ``limit``)."""
    run(warmup)
    count = start
    while True:
        t0 = time.perf_counter()
        run(count)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds / 4 or count >= limit:
            break
        count *= 2
    return max(1, round(count * seconds / elapsed))


def run_once(benchmark: Any, group: str, measure: Callable[[], dict[str, Any]]
             ) -> dict[str, Any]:
    """``measure()`` (interleaved rounds of its own) as ONE pytest-benchmark round in
    ``group``; returns what it measured, for ``extra_info``."""
    result: dict[str, Any] = {}
    benchmark.group = group
    benchmark.pedantic(lambda: result.update(measure()), rounds=1, iterations=1)
    return result


def _rate(messages: int, seconds: float) -> float:
    return messages / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Relay comparison without pytest.")
    parser.add_argument("--relays", default=",".join(RELAYS))
    parser.add_argument("--small", type=int, default=400_000, help="64 B messages per run")
    parser.add_argument("--big", type=int, default=300, help="1 MiB messages per run")
    parser.add_argument("--rendezvous", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="small,big,rendezvous,memory,ceiling")
    args = parser.parse_args(argv)
    raise_fd_limit()
    only = set(args.only.split(","))
    rows: dict[str, dict[str, str]] = {}

    def best(run: Callable[[], float]) -> float:
        run()  # warm-up
        return max(run() for _ in range(args.runs))

    if "ceiling" in only:
        for size, count, label in ((SMALL, args.small, "small"), (BIG, args.big, "big")):
            stream = Stream(loopback_pair(), size, masked_receiver=True)
            batches = stream.batches_for(count)

            def once(stream: Stream = stream, batches: int = batches) -> float:
                t0 = time.perf_counter()
                moved = stream.run(batches)
                return _rate(moved, time.perf_counter() - t0)

            rate = best(once)
            stream.close()
            rows.setdefault("loadgen ceiling", {})[label] = (
                f"{rate:,.0f} msg/s" if size == SMALL else f"{rate * size / 1e6:,.0f} MB/s")
    for label in args.relays.split(","):
        relay = RelayProcess(label)
        row = rows.setdefault(label, {})
        try:
            session = Session(relay.port)
            for size, count, key in ((SMALL, args.small, "small"), (BIG, args.big, "big")):
                if key not in only:
                    continue
                (pair,) = session.open_pairs(1)
                stream = Stream(pair, size, relay_cpu=relay.cpu)
                batches = stream.batches_for(count)

                def once(stream: Stream = stream, batches: int = batches) -> float:
                    t0 = time.perf_counter()
                    moved = stream.run(batches)
                    return _rate(moved, time.perf_counter() - t0)

                rate = best(once)
                cpu = stream.stats.summary()
                stream.close()
                shown = (f"{rate:,.0f} msg/s" if size == SMALL
                         else f"{rate * size / 1e6:,.0f} MB/s")
                row[key] = (f"{shown} (relay cpu {cpu['relay_cpu']:.2f}, "
                            f"generator {cpu['loadgen_cpu']:.2f})")
            if "rendezvous" in only:
                for conc in (1, 16):
                    gen_us: list[float] = []

                    def rdv(conc: int = conc, session: Session = session,
                            gen_us: list[float] = gen_us) -> float:
                        prepared = session.prepare(args.rendezvous)
                        t0, c0 = time.perf_counter(), time.process_time()
                        session.rendezvous(prepared, conc)
                        elapsed = time.perf_counter() - t0
                        gen_us.append((time.process_time() - c0) / args.rendezvous * 1e6)
                        return args.rendezvous / elapsed

                    rate = best(rdv)
                    row[f"rendezvous x{conc}"] = (
                        f"{rate:,.0f}/s (generator {min(gen_us):.0f} us cpu each)")
            if "memory" in only:
                pairs, info = idle_pairs_memory(relay, session, args.pairs)
                row["memory"] = f"{info['kib_per_pair']:.1f} KiB/pair"
                for pair in pairs:
                    pair.close()
            session.close()
        finally:
            relay.stop()
    for label, row in rows.items():
        print(f"{label:16} " + " | ".join(f"{k}: {v}" for k, v in row.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
