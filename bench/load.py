"""Load on ONE emulator process (issue 12): idle relayed pairs, idle Web PubSub clients, bursts of
rendezvous and of relayed HTTP requests, and a soak. Loopback only; every wait is bounded and
every phase stops by itself; the emulator and the load processes are killed on exit, failure
included.

Each phase starts a fresh emulator (``python -m bench.load_emulator``: ``hyco emulator`` with
its soft ``RLIMIT_NOFILE`` raised to the hard limit, ``--log-level WARNING``, stderr kept in
``.benchmarks/load/``), so one phase's freed memory does not hide the next one's growth. The
clients are raw asyncio streams in several *load processes* (``multiprocessing``, spawn), each
well under the per-process open-file cap: upgrade requests are built with ``ClientHandshake``
before anything is timed, frames are written pre-masked, and nothing but frame headers and the
few JSON control messages is parsed.

- ``pairs``: listeners (4 control channels per hybrid connection, one hybrid connection per load
  process) accept N senders, 16 rendezvous in flight per process. Emulator RSS (``VmRSS``) is read
  before (after a warm-up of opened, used and closed pairs), after opening (pairs never used) and
  after one message each way through EVERY pair, each checked on arrival. ``--pairs max`` is
  10,000, or as many as the emulator's open-file limit allows if fewer: (limit - fds open -
  margin) / 2, since a pair costs it two sockets (sender leg, rendezvous leg).
- ``wps``: N clients on ``json.webpubsub.azure.v1``, each must get its ``connected`` message; RSS
  per client; then one REST broadcast (``POST /api/hubs/{hub}/:send``) must reach every client.
- ``bursts``: 1,000 senders start their upgrade at the same moment (two load processes, each with
  its own listeners); then 1,000 relayed HTTP GETs at once, each on its own connection, to a
  hybrid connection whose listener answers on the control channel. Failures are counted (must be
  0), and the time of each (p50, p99, max).
- ``soak``: for ``--soak`` seconds: 4 relayed pairs echo 1 KiB messages, a new rendezvous every
  0.1 s (one message each way, orderly close) and an HTTP request every 0.1 s; on the hub, a
  ``sendToGroup`` to 10 clients every 0.1 s and a client connecting and leaving every second;
  emulator RSS every 10 s.

``python -m bench.load [--pairs max] [--clients 10000] [--burst 1000] [--http-burst 1000]
[--soak 600] [--only pairs,wps,bursts,soak] [--out FILE.md] [--json FILE.json]``
(``make load``). Measurements, not thresholds: only correctness fails a run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import selectors
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / ".benchmarks" / "load"  # ignored by git
#: Every single network wait (connect, upgrade, one message) is bounded by this (seconds).
TIMEOUT = 30.0
#: A whole command to a load process (opening thousands of pairs) is bounded by this.
COMMAND_TIMEOUT = 600.0
HUB = "load"
SUBPROTOCOL = "json.webpubsub.azure.v1"
PAIRS_PER_PROCESS = 2000
CLIENTS_PER_PROCESS = 5000
LISTENERS_PER_HC = 4
FD_MARGIN = 64
#: ``--pairs max``: the issue's 10,000, or fewer when the emulator's open-file limit is lower.
MAX_PAIRS = 10_000
TOKEN_SECONDS = 6 * 3600


class LoadError(RuntimeError):
    """The emulator refused, broke the protocol, or did not answer in time."""


# ============================================================================ the emulator


class Emulator:
    """``python -m bench.load_emulator`` on free ports; ``stop()`` (also on exit) kills it."""

    def __init__(self, name: str, *extra: str, tracemalloc: Path | None = None,
                 backlog: int | None = None) -> None:
        LOGS.mkdir(exist_ok=True)
        self.log_path = LOGS / f"emulator-{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if tracemalloc is not None:
            env["HYCO_LOAD_TRACEMALLOC"] = str(tracemalloc)
        if backlog is not None:
            env["HYCO_LOAD_BACKLOG"] = str(backlog)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.load_emulator", "--port", "0", "--webpubsub-port", "0",
             "--log-level", "WARNING", *extra],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        self.pid = self.proc.pid
        try:
            self.port, self.wps_port = self._read_banner()
        except BaseException:
            self.stop()
            raise
        threading.Thread(target=self._drain, daemon=True).start()

    def _read_banner(self) -> tuple[int, int]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()  # raw reads: select() cannot see a file object's buffer
        port = wps = 0
        text = ""
        deadline = time.monotonic() + TIMEOUT
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while not (port and wps):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise LoadError(f"the emulator did not print its ports in {TIMEOUT}s "
                                    f"(log: {self.log_path})")
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise LoadError(f"the emulator exited (log: {self.log_path})")
                text += chunk.decode(errors="replace")
                if m := re.search(r"^listening on ws://[^:]+:(\d+)", text, re.M):
                    port = int(m[1])
                if m := re.search(r"^Web PubSub hubs on http://[^:]+:(\d+)", text, re.M):
                    wps = int(m[1])
        return port, wps

    def _drain(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdout is not None
            while os.read(self.proc.stdout.fileno(), 65536):
                pass

    def _status(self) -> dict[str, str]:
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            out[key] = value.strip()
        return out

    def rss(self) -> int:
        """Resident set size in bytes (``VmRSS``)."""
        return int(self._status()["VmRSS"].split()[0]) * 1024

    def hwm(self) -> int:
        """Peak resident set size in bytes (``VmHWM``)."""
        return int(self._status()["VmHWM"].split()[0]) * 1024

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def fd_limit(self) -> int:
        for line in Path(f"/proc/{self.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
        raise LoadError("no 'Max open files' in /proc/<pid>/limits")

    def cpu(self) -> float:
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def dump_tracemalloc(self, path: Path, timeout: float = 120.0) -> None:
        """Ask for a dump (``SIGUSR1``) and wait until it is written to ``path`` (bounded)."""
        import signal

        before = path.stat().st_size if path.exists() else 0
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while (path.stat().st_size if path.exists() else 0) == before:
            if time.monotonic() > deadline:
                raise LoadError(f"no tracemalloc dump in {path} after {timeout}s")
            time.sleep(0.2)
        time.sleep(0.5)  # the rest of the dump

    def log_problems(self) -> list[str]:
        """Lines of the emulator's log that look like a crash or an error."""
        self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return [line for line in text.splitlines()
                if "Traceback" in line or "ERROR" in line or "Error" in line][:20]

    def stop(self) -> None:
        proc = self.proc
        if proc.poll() is None:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # the watchdog exits on EOF
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None and not stream.closed:
                with contextlib.suppress(OSError):
                    stream.close()
        self._log.close()


# ============================================================================ wire helpers


def _frame(opcode: int, payload: bytes) -> bytes:
    from hyco_proto._frames import encode_frame

    return encode_frame(opcode, payload, masked=True)


OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 1, 2, 8, 9, 10


async def read_message(reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter | None = None) -> tuple[int, bytes]:
    """The next whole message (or Close) from a server's unmasked frames; pings are answered
    through ``writer`` (pongs skipped)."""
    parts: list[bytes] = []
    first = 0
    while True:
        head = await reader.readexactly(2)
        fin, opcode, length = head[0] & 0x80, head[0] & 0x0F, head[1] & 0x7F
        if head[1] & 0x80:
            raise LoadError("a masked frame from the server")
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await reader.readexactly(8), "big")
        payload = await reader.readexactly(length) if length else b""
        if opcode == OP_PING:
            if writer is not None:
                writer.write(_frame(OP_PONG, payload))
            continue
        if opcode == OP_PONG:
            continue
        if opcode == OP_CLOSE:
            return opcode, payload
        if opcode:
            first = opcode
        parts.append(payload)
        if fin:
            return first, b"".join(parts)


async def _upgrade(port: int, request: bytes, expected_accept: str,
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect, send a pre-built upgrade request, check the 101 (status line and accept token).
    Bytes after the head stay in the reader."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101 ") or expected_accept.encode() not in head:
            status = head.split(b"\r\n", 1)[0].decode("latin-1")
            raise LoadError(f"upgrade refused: {status}")
    except BaseException:
        writer.close()
        raise
    return reader, writer


def _prepared(port: int, target: str, headers: list[tuple[str, str]] = [],  # noqa: B006
              subprotocols: list[str] = []) -> tuple[bytes, str]:  # noqa: B006
    from hyco_proto.handshake import ClientHandshake

    hs = ClientHandshake(f"{HOST}:{port}", target, headers=headers, subprotocols=subprotocols)
    return hs.data_to_send(), hs.expected_accept


def _relay_token(port: int, path: str) -> str:
    from hyco_proto.sas import create_relay_token
    from hyco_proto.service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY

    return create_relay_token(f"http://{HOST}:{port}/{path}", DEFAULT_RULE_NAME, DEVELOPMENT_KEY,
                              TOKEN_SECONDS)


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()


def _summary(times: list[float]) -> dict[str, float]:
    if not times:
        return {}
    ordered = sorted(times)

    def q(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1e3, 1)

    return {"p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": round(ordered[-1] * 1e3, 1)}


class Failures:
    """A count and the first few reasons."""

    def __init__(self) -> None:
        self.count = 0
        self.reasons: dict[str, int] = {}

    def add(self, what: str, exc: BaseException | str) -> None:
        self.count += 1
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        key = f"{what}: {text}"[:200]
        if key in self.reasons or len(self.reasons) < 10:
            self.reasons[key] = self.reasons.get(key, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {"failures": self.count, "reasons": self.reasons}


# ============================================================================ load processes


@dataclass(slots=True)
class Pair:
    ident: str
    sender: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    listener: tuple[asyncio.StreamReader, asyncio.StreamWriter]

    def close(self) -> None:
        _close(self.sender[1])
        _close(self.listener[1])


HTTP_BODY = b"hello from a raw listener\n"


class RelayWorker:
    """One load process's relay clients: listeners on hybrid connection ``hc`` (raw control
    channels that open every rendezvous they are offered and answer relayed HTTP requests), and
    senders: WebSocket senders to ``hc``, HTTP senders to any hybrid connection."""

    def __init__(self, port: int, hc: str, name: str) -> None:
        self.port, self.hc, self.name = port, hc, name
        self.token = _relay_token(port, hc)
        self.auth = [("ServiceBusAuthorization", self.token)]
        self.controls: list[asyncio.StreamWriter] = []
        self.waiting: dict[str, asyncio.Future[tuple[asyncio.StreamReader,
                                                     asyncio.StreamWriter]]] = {}
        self.pairs: list[Pair] = []
        self.seq = 0
        self.control_failures = Failures()
        self.http_served = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------------- listeners

    async def listen(self, count: int = LISTENERS_PER_HC) -> int:
        for k in range(count):
            request, accept = _prepared(
                self.port, f"/$hc/{self.hc}?sb-hc-action=listen&sb-hc-id={self.name}-l{k}",
                self.auth)
            reader, writer = await asyncio.wait_for(_upgrade(self.port, request, accept),
                                                    TIMEOUT)
            self.controls.append(writer)
            self._spawn(self._control(reader, writer))
        return len(self.controls)

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pending_body: dict[str, Any] | None = None
        try:
            while True:
                opcode, payload = await read_message(reader, writer)
                if opcode == OP_CLOSE:
                    raise LoadError(f"the relay closed a control channel: {payload!r}")
                if opcode == OP_BINARY:
                    if pending_body is not None:  # the request's body: answer now
                        self._respond(writer, pending_body)
                        pending_body = None
                    continue
                message = json.loads(payload)
                if "accept" in message:
                    self._spawn(self._rendezvous(message["accept"]))
                elif "request" in message:
                    request = message["request"]
                    if "method" not in request:
                        self.control_failures.add("request", "a rendezvous pointer (unexpected "
                                                  "for a small GET)")
                    elif request.get("body"):
                        pending_body = request
                    else:
                        self._respond(writer, request)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.control_failures.add("control channel", exc)
        except LoadError as exc:
            self.control_failures.add("control channel", exc)

    def _respond(self, writer: asyncio.StreamWriter, request: dict[str, Any]) -> None:
        head = json.dumps({"response": {
            "requestId": request["id"], "statusCode": 200, "statusDescription": "OK",
            "responseHeaders": {"Content-Type": "text/plain"}, "body": True}},
            separators=(",", ":")).encode()
        writer.write(_frame(OP_TEXT, head) + _frame(OP_BINARY, HTTP_BODY))
        self.http_served += 1

    async def _rendezvous(self, accept: dict[str, Any]) -> None:
        ident = accept["id"]
        future = self.waiting.get(ident)
        try:
            url = urlsplit(accept["address"])
            target = f"{url.path}?{url.query}"
            request, expected = _prepared(url.port or self.port, target)
            legs = await asyncio.wait_for(_upgrade(url.port or self.port, request, expected),
                                          TIMEOUT)
        except Exception as exc:
            if future is not None and not future.done():
                future.set_exception(LoadError(f"rendezvous failed: {exc!r}"))
            else:
                self.control_failures.add("rendezvous", exc)
            return
        if future is None or future.done():
            _close(legs[1])
            self.control_failures.add("rendezvous", f"an accept for an unknown id {ident!r}")
            return
        future.set_result(legs)

    # ---------------------------------------------------------------------- pairs

    def _prepare(self, count: int) -> list[tuple[str, bytes, str]]:
        out = []
        for _ in range(count):
            self.seq += 1
            ident = f"{self.name}-s{self.seq}"
            request, accept = _prepared(
                self.port, f"/$hc/{self.hc}?sb-hc-action=connect&sb-hc-id={ident}", self.auth)
            out.append((ident, request, accept))
        return out

    async def _open_one(self, ident: str, request: bytes, accept: str, gate: asyncio.Semaphore,
                        failures: Failures, times: list[float]) -> Pair | None:
        async with gate:
            loop = asyncio.get_running_loop()
            future = self.waiting[ident] = loop.create_future()
            t0 = time.perf_counter()
            sender = None
            try:
                sender = await asyncio.wait_for(_upgrade(self.port, request, accept), TIMEOUT)
                listener = await asyncio.wait_for(future, TIMEOUT)
            except Exception as exc:
                failures.add("rendezvous", exc)
                if sender is not None:
                    _close(sender[1])
                if future.done() and not future.cancelled() and future.exception() is None:
                    _close(future.result()[1])
                return None
            finally:
                self.waiting.pop(ident, None)
            times.append(time.perf_counter() - t0)
            return Pair(ident, sender, listener)

    async def open_pairs(self, count: int, concurrency: int = 16, keep: bool = True,
                         ) -> dict[str, Any]:
        """Open ``count`` relayed pairs, ``concurrency`` upgrades in flight (``count``: all at
        once); the requests are built before the clock starts."""
        prepared = self._prepare(count)
        gate = asyncio.Semaphore(concurrency)
        failures, times = Failures(), list[float]()
        t0, cpu0 = time.perf_counter(), time.process_time()
        opened = await asyncio.gather(*(self._open_one(i, r, a, gate, failures, times)
                                        for i, r, a in prepared))
        elapsed = time.perf_counter() - t0
        pairs = [p for p in opened if p is not None]
        if keep:
            self.pairs += pairs
        else:
            for pair in pairs:
                pair.close()
        return {"opened": len(pairs), "seconds": elapsed, "cpu_s": time.process_time() - cpu0,
                **failures.as_dict(),
                **_summary(times), "times": times}

    async def _exchange(self, pair: Pair, size: int = 0) -> None:
        """One message sender→listener and one back, each checked byte for byte."""
        body = pair.ident.encode().ljust(size, b".")
        pair.sender[1].write(_frame(OP_BINARY, body))
        opcode, got = await asyncio.wait_for(read_message(*pair.listener), TIMEOUT)
        if opcode != OP_BINARY or got != body:
            raise LoadError(f"the listener got {opcode} {got[:40]!r}")
        back = b"back:" + body
        pair.listener[1].write(_frame(OP_BINARY, back))
        opcode, got = await asyncio.wait_for(read_message(*pair.sender), TIMEOUT)
        if opcode != OP_BINARY or got != back:
            raise LoadError(f"the sender got {opcode} {got[:40]!r}")

    async def verify(self, concurrency: int = 256) -> dict[str, Any]:
        """One message each way through every pair held."""
        gate = asyncio.Semaphore(concurrency)
        failures = Failures()

        async def one(pair: Pair) -> bool:
            async with gate:
                try:
                    await self._exchange(pair)
                    return True
                except Exception as exc:
                    failures.add("exchange", exc)
                    return False

        t0 = time.perf_counter()
        ok = sum(await asyncio.gather(*(one(p) for p in self.pairs)))
        return {"verified": ok, "of": len(self.pairs), "seconds": time.perf_counter() - t0,
                **failures.as_dict()}

    async def close_pairs(self) -> int:
        for pair in self.pairs:
            pair.close()
        count, self.pairs = len(self.pairs), []
        return count

    async def serve(self, requests: int, timeout: float = TIMEOUT + 10) -> dict[str, Any]:
        """Run this process's loop (its control channels answer relayed HTTP requests) until
        ``requests`` more have been answered, or ``timeout`` (every sender gives up by then)."""
        target = self.http_served + requests
        deadline = time.monotonic() + timeout
        while self.http_served < target and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return {"served": self.http_served - target + requests}

    async def state(self) -> dict[str, Any]:
        return {"pairs": len(self.pairs), "controls": len(self.controls),
                "http_served": self.http_served, **self.control_failures.as_dict()}

    # ---------------------------------------------------------------------- HTTP senders

    def _http_request(self, hc: str, path: str = "x") -> bytes:
        token = _relay_token(self.port, hc)
        return (f"GET /{hc}/{path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
                f"ServiceBusAuthorization: {token}\r\nConnection: close\r\n\r\n").encode()

    async def _http_once(self, request: bytes) -> None:
        import h11

        reader, writer = await asyncio.open_connection(HOST, self.port)
        try:
            writer.write(request)
            client = h11.Connection(h11.CLIENT)
            client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
            client.send(h11.EndOfMessage())
            body = b""
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Response):
                    if event.status_code != 200:
                        raise LoadError(f"HTTP {event.status_code} {event.reason!r}")
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
            if body != HTTP_BODY:
                raise LoadError(f"unexpected body {body[:60]!r}")
        finally:
            _close(writer)

    async def http_burst(self, hc: str, count: int) -> dict[str, Any]:
        """``count`` GETs at once, each on its own connection."""
        request = self._http_request(hc)
        failures, times = Failures(), list[float]()

        async def one() -> bool:
            t0 = time.perf_counter()
            try:
                await asyncio.wait_for(self._http_once(request), TIMEOUT)
            except Exception as exc:
                failures.add("http", exc)
                return False
            times.append(time.perf_counter() - t0)
            return True

        t0, cpu0 = time.perf_counter(), time.process_time()
        ok = sum(await asyncio.gather(*(one() for _ in range(count))))
        return {"ok": ok, "seconds": time.perf_counter() - t0,
                "cpu_s": time.process_time() - cpu0, **failures.as_dict(),
                **_summary(times), "times": times}

    # ---------------------------------------------------------------------- soak

    async def soak(self, seconds: float, echo_pairs: int = 4, interval: float = 0.1,
                   ) -> dict[str, Any]:
        """Steady traffic for ``seconds``; see the module docstring."""
        await self.open_pairs(echo_pairs)
        echo_pairs_ = list(self.pairs)
        self.pairs = []
        deadline = time.monotonic() + seconds
        counts = {"echoes": 0, "rendezvous": 0, "http": 0}
        failures = Failures()
        http_request = self._http_request(self.hc, "soak")

        async def echo(pair: Pair) -> None:
            while time.monotonic() < deadline:
                try:
                    await self._exchange(pair, 1024)
                    counts["echoes"] += 1
                except Exception as exc:
                    failures.add("echo", exc)
                    return
                await asyncio.sleep(0.005)

        async def new_pair() -> None:
            (ident, request, accept), = self._prepare(1)
            pair = await self._open_one(ident, request, accept, asyncio.Semaphore(1), failures,
                                        [])
            if pair is None:
                return
            try:
                await self._exchange(pair, 64)
                pair.sender[1].write(_frame(OP_CLOSE, b"\x03\xe8"))
                opcode, _ = await asyncio.wait_for(read_message(*pair.listener), TIMEOUT)
                if opcode != OP_CLOSE:
                    raise LoadError(f"the listener got {opcode} instead of the close")
                pair.listener[1].write(_frame(OP_CLOSE, b"\x03\xe8"))
                opcode, _ = await asyncio.wait_for(read_message(*pair.sender), TIMEOUT)
                if opcode != OP_CLOSE:
                    raise LoadError(f"the sender got {opcode} instead of the close reply")
                for reader in (pair.sender[0], pair.listener[0]):  # the relay closes TCP
                    if await asyncio.wait_for(reader.read(1), TIMEOUT):
                        raise LoadError("bytes after the close")
                counts["rendezvous"] += 1
            except Exception as exc:
                failures.add("rendezvous", exc)
            finally:
                pair.close()

        async def http() -> None:
            try:
                await asyncio.wait_for(self._http_once(http_request), TIMEOUT)
                counts["http"] += 1
            except Exception as exc:
                failures.add("http", exc)

        async def ticker() -> None:
            running: set[asyncio.Task[None]] = set()
            while time.monotonic() < deadline:
                for coro in (new_pair(), http()):
                    task = asyncio.ensure_future(coro)
                    running.add(task)
                    task.add_done_callback(running.discard)
                await asyncio.sleep(interval)
            if running:
                await asyncio.wait(running, timeout=2 * TIMEOUT)

        t0 = time.perf_counter()
        await asyncio.gather(ticker(), *(echo(p) for p in echo_pairs_))
        for pair in echo_pairs_:
            pair.close()
        return {**counts, "seconds": time.perf_counter() - t0, **failures.as_dict()}


class WpsWorker:
    """One load process's idle Web PubSub clients (raw WebSockets, one token for all)."""

    def __init__(self, port: int, name: str) -> None:
        from hyco_proto.service.config import DEVELOPMENT_KEY
        from hyco_proto.webpubsub.tokens import create_client_token

        self.port, self.name = port, name
        token = create_client_token(f"http://{HOST}:{port}", HUB, DEVELOPMENT_KEY,
                                    ttl=TOKEN_SECONDS, now=time.time())
        self.target = f"/client/hubs/{HUB}?access_token={quote(token, safe='')}"
        self.clients: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def connect(self, count: int, concurrency: int = 32) -> dict[str, Any]:
        prepared = [_prepared(self.port, self.target, subprotocols=[SUBPROTOCOL])
                    for _ in range(count)]
        gate = asyncio.Semaphore(concurrency)
        failures, times = Failures(), list[float]()

        async def one(request: bytes, accept: str) -> None:
            async with gate:
                t0 = time.perf_counter()
                try:
                    reader, writer = await asyncio.wait_for(
                        _upgrade(self.port, request, accept), TIMEOUT)
                except Exception as exc:
                    failures.add("connect", exc)
                    return
                try:
                    opcode, payload = await asyncio.wait_for(read_message(reader, writer),
                                                             TIMEOUT)
                    if opcode != OP_TEXT or json.loads(payload).get("event") != "connected":
                        raise LoadError(f"first message {payload[:80]!r}")
                except Exception as exc:
                    failures.add("connected message", exc)
                    _close(writer)
                    return
                times.append(time.perf_counter() - t0)
                self.clients.append((reader, writer))

        t0 = time.perf_counter()
        await asyncio.gather(*(one(r, a) for r, a in prepared))
        return {"connected": len(self.clients), "seconds": time.perf_counter() - t0,
                **failures.as_dict(), **_summary(times)}

    async def expect(self, marker: str) -> dict[str, Any]:
        """Every client's next message must be the broadcast carrying ``marker``."""
        failures = Failures()

        async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            try:
                _, payload = await asyncio.wait_for(read_message(reader, writer), TIMEOUT)
                message = json.loads(payload)
                if message.get("type") != "message" or message.get("data") != marker:
                    raise LoadError(f"got {payload[:80]!r}")
                return True
            except Exception as exc:
                failures.add("broadcast", exc)
                return False

        got = sum(await asyncio.gather(*(one(r, w) for r, w in self.clients)))
        return {"received": got, "of": len(self.clients), **failures.as_dict()}

    async def _client(self, target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """One connected client that has its ``connected`` message."""
        request, accept = _prepared(self.port, target, subprotocols=[SUBPROTOCOL])
        reader, writer = await asyncio.wait_for(_upgrade(self.port, request, accept), TIMEOUT)
        try:
            opcode, payload = await asyncio.wait_for(read_message(reader, writer), TIMEOUT)
            if opcode != OP_TEXT or json.loads(payload).get("event") != "connected":
                raise LoadError(f"first message {payload[:80]!r}")
        except BaseException:
            _close(writer)
            raise
        return reader, writer

    async def soak(self, seconds: float, members: int = 10, interval: float = 0.1,
                   ) -> dict[str, Any]:
        """Steady hub traffic for ``seconds``: every ``interval`` one ``sendToGroup`` to a group
        of ``members`` clients (each must get it, in order), and every 10th tick a new client
        connects, gets ``connected`` and leaves with an orderly close."""
        from hyco_proto.service.config import DEVELOPMENT_KEY
        from hyco_proto.webpubsub.tokens import create_client_token

        def target(**claims: Any) -> str:
            token = create_client_token(f"http://{HOST}:{self.port}", HUB, DEVELOPMENT_KEY,
                                        ttl=TOKEN_SECONDS, now=time.time(), **claims)
            return f"/client/hubs/{HUB}?access_token={quote(token, safe='')}"

        group = [await self._client(target(groups=["soak"])) for _ in range(members)]
        sender = await self._client(target(roles=["webpubsub.sendToGroup"], user_id="soaker"))
        counts = {"group_messages": 0, "deliveries": 0, "clients_cycled": 0}
        failures = Failures()
        deadline = time.monotonic() + seconds
        tick = 0
        t0 = time.perf_counter()
        while time.monotonic() < deadline:
            tick += 1
            data = f"soak-{tick}"
            sender[1].write(_frame(OP_TEXT, json.dumps(
                {"type": "sendToGroup", "group": "soak", "dataType": "text", "data": data},
                separators=(",", ":")).encode()))
            counts["group_messages"] += 1
            for reader, writer in group:
                try:
                    _, payload = await asyncio.wait_for(read_message(reader, writer), TIMEOUT)
                    if json.loads(payload).get("data") != data:
                        raise LoadError(f"expected {data}, got {payload[:80]!r}")
                    counts["deliveries"] += 1
                except Exception as exc:
                    failures.add("group message", exc)
            if tick % 10 == 0:
                try:
                    reader, writer = await self._client(target())
                    writer.write(_frame(OP_CLOSE, b"\x03\xe8"))
                    opcode, _ = await asyncio.wait_for(read_message(reader, writer), TIMEOUT)
                    if opcode != OP_CLOSE:
                        raise LoadError(f"got {opcode} instead of the close reply")
                    _close(writer)
                    counts["clients_cycled"] += 1
                except Exception as exc:
                    failures.add("client cycle", exc)
            await asyncio.sleep(interval)
        for _, writer in [*group, sender]:
            _close(writer)
        return {**counts, "seconds": time.perf_counter() - t0, **failures.as_dict()}

    async def close_all(self) -> int:
        for _, writer in self.clients:
            _close(writer)
        count, self.clients = len(self.clients), []
        return count


def _worker_main(conn: multiprocessing.connection.Connection, kind: str,
                 args: tuple[Any, ...]) -> None:
    """A load process: builds its worker, then runs one command at a time until the pipe closes
    (the parent went away) or ``None`` arrives."""
    from bench.load_emulator import raise_nofile

    raise_nofile()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    worker: Any = RelayWorker(*args) if kind == "relay" else WpsWorker(*args)
    while True:
        try:
            command = conn.recv()
        except (EOFError, OSError):
            break
        if command is None:
            break
        method, kwargs = command
        try:
            result = loop.run_until_complete(getattr(worker, method)(**kwargs))
            conn.send(("ok", result))
        except BaseException:
            conn.send(("error", traceback.format_exc()))
    os._exit(0)


class Worker:
    """The parent's handle on a load process."""

    _ctx = multiprocessing.get_context("spawn")

    def __init__(self, kind: str, *args: Any) -> None:
        self.conn, child = self._ctx.Pipe()
        self.proc = self._ctx.Process(target=_worker_main, args=(child, kind, args), daemon=True)
        self.proc.start()
        child.close()
        self.name = f"{kind}{args[1:]}"

    def send(self, method: str, **kwargs: Any) -> None:
        self.conn.send((method, kwargs))

    def result(self, timeout: float = COMMAND_TIMEOUT) -> Any:
        try:
            if not self.conn.poll(timeout):
                raise LoadError(f"load process {self.name}: no answer in {timeout}s")
            status, value = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise LoadError(f"load process {self.name} is gone (exit code "
                            f"{self.proc.exitcode}): {exc!r}") from exc
        if status != "ok":
            raise LoadError(f"load process {self.name} failed:\n{value}")
        return value

    def call(self, method: str, timeout: float = COMMAND_TIMEOUT, **kwargs: Any) -> Any:
        self.send(method, **kwargs)
        return self.result(timeout)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send(None)
        self.proc.join(2)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.conn.close()


def call_all(workers: list[Worker], method: str, args: list[dict[str, Any]] | None = None,
             timeout: float = COMMAND_TIMEOUT) -> list[Any]:
    """The same command to every worker at once; their results in order."""
    for i, worker in enumerate(workers):
        worker.send(method, **(args[i] if args else {}))
    return [worker.result(timeout) for worker in workers]


@contextlib.contextmanager
def running(name: str, *, tracemalloc: Path | None = None, backlog: int | None = None,
            ) -> Iterator[tuple[Emulator, list[Worker]]]:
    """A fresh emulator and a list to put load processes in; all stopped on the way out."""
    emulator = Emulator(name, tracemalloc=tracemalloc, backlog=backlog)
    workers: list[Worker] = []
    try:
        yield emulator, workers
    finally:
        for worker in workers:
            worker.stop()
        emulator.stop()


def _settle(seconds: float = 1.0) -> None:
    time.sleep(seconds)


def _merge(results: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Sum counts over load processes; latencies over all of them; failures' reasons merged."""
    times = [t for r in results for t in r.get("times", [])]
    reasons: dict[str, int] = {}
    for r in results:
        for reason, n in r.get("reasons", {}).items():
            reasons[reason] = reasons.get(reason, 0) + n
    merged = {key: sum(r[key] for r in results), "failures": sum(r["failures"] for r in results),
              "reasons": reasons, **_summary(times)}
    if all("cpu_s" in r for r in results):  # CPU seconds of the load processes, together
        merged["load_cpu_s"] = round(sum(r["cpu_s"] for r in results), 2)
    return merged


# ============================================================================ phases


def phase_pairs(pairs: int | str, *, tracemalloc: bool = False, backlog: int | None = None,
                ) -> dict[str, Any]:
    trace = LOGS / "tracemalloc-pairs.txt" if tracemalloc else None
    if trace is not None and trace.exists():
        trace.unlink()
    with running("pairs", tracemalloc=trace, backlog=backlog) as (emu, workers):
        limit = emu.fd_limit()
        # Enough load processes for the largest count the limit allows; fds per process stay
        # at about 2 x PAIRS_PER_PROCESS + 4.
        most = min(limit // 2, MAX_PAIRS) if pairs == "max" else int(pairs)
        nproc = max(1, math.ceil(most / PAIRS_PER_PROCESS))
        for i in range(nproc):
            workers.append(Worker("relay", emu.port, f"loadpairs{i}", f"p{i}"))
        call_all(workers, "listen")
        # Warm-up: open, use and close a few pairs per process (one-time allocations).
        for _ in range(2):
            call_all(workers, "open_pairs", [{"count": 50}] * nproc)
            call_all(workers, "verify")
            call_all(workers, "close_pairs")
        _settle()
        if trace is not None:  # the baseline the next dump is compared with
            emu.dump_tracemalloc(trace)
        fds0, rss0 = emu.fds(), emu.rss()
        count = (min(MAX_PAIRS, (limit - fds0 - FD_MARGIN) // 2) if pairs == "max"
                 else int(pairs))
        shares = [count // nproc + (1 if i < count % nproc else 0) for i in range(nproc)]
        t0 = time.perf_counter()
        opened = call_all(workers, "open_pairs", [{"count": n} for n in shares])
        open_seconds = time.perf_counter() - t0
        _settle()
        fds1, rss1 = emu.fds(), emu.rss()
        if trace is not None:
            emu.dump_tracemalloc(trace)
        t0 = time.perf_counter()
        verified = call_all(workers, "verify")
        verify_seconds = time.perf_counter() - t0
        _settle()
        rss2 = emu.rss()
        held = sum(r["opened"] for r in opened)
        states = call_all(workers, "state")
        result = {
            "requested": count, "held": held, "load_processes": nproc,
            "fd_limit": limit, "fds_before": fds0, "fds_held": fds1,
            "open": {**_merge(opened, "opened"), "seconds": round(open_seconds, 2),
                     "per_second": round(held / open_seconds)},
            "verify": {**_merge(verified, "verified"), "seconds": round(verify_seconds, 2)},
            "rss_before_kib": rss0 // 1024, "rss_idle_kib": rss1 // 1024,
            "rss_used_kib": rss2 // 1024,
            "kib_per_pair_idle": round((rss1 - rss0) / 1024 / max(held, 1), 2),
            "kib_per_pair_used": round((rss2 - rss0) / 1024 / max(held, 1), 2),
            "control_failures": sum(s["failures"] for s in states),
            "emulator_log_problems": emu.log_problems(),
        }
        if trace is not None:
            emu.dump_tracemalloc(trace)
            result["tracemalloc"] = str(trace)
        return result


def phase_wps(clients: int, *, backlog: int | None = None) -> dict[str, Any]:
    with running("wps", backlog=backlog) as (emu, workers):
        nproc = max(1, math.ceil(clients / CLIENTS_PER_PROCESS))
        for i in range(nproc):
            workers.append(Worker("wps", emu.wps_port, f"w{i}"))
        # Warm-up: connect and drop a few clients per process.
        call_all(workers, "connect", [{"count": 100}] * nproc)
        call_all(workers, "close_all")
        _settle()
        fds0, rss0 = emu.fds(), emu.rss()
        shares = [clients // nproc + (1 if i < clients % nproc else 0) for i in range(nproc)]
        t0 = time.perf_counter()
        connected = call_all(workers, "connect", [{"count": n} for n in shares])
        seconds = time.perf_counter() - t0
        _settle()
        fds1, rss1 = emu.fds(), emu.rss()
        held = sum(r["connected"] for r in connected)
        marker = f"broadcast-{time.time_ns()}"
        status = _rest_send(emu.wps_port, marker)
        got = call_all(workers, "expect", [{"marker": marker}] * nproc)
        _settle()
        rss2 = emu.rss()
        return {
            "requested": clients, "connected": held, "load_processes": nproc,
            "fds_before": fds0, "fds_held": fds1,
            "connect": {**_merge(connected, "connected"), "seconds": round(seconds, 2),
                        "per_second": round(held / seconds)},
            "broadcast_status": status,
            "broadcast": _merge(got, "received"),
            "rss_before_kib": rss0 // 1024, "rss_idle_kib": rss1 // 1024,
            "rss_after_broadcast_kib": rss2 // 1024,
            "kib_per_client": round((rss1 - rss0) / 1024 / max(held, 1), 2),
            "emulator_log_problems": emu.log_problems(),
        }


def _rest_send(port: int, text: str) -> int:
    """``POST /api/hubs/{hub}/:send`` (text/plain) with a service token; returns the status."""
    from hyco_proto.service.config import DEVELOPMENT_KEY
    from hyco_proto.webpubsub.tokens import create_service_token

    path = f"/api/hubs/{HUB}/:send?api-version=2024-01-01"
    token = create_service_token(f"http://{HOST}:{port}{path}", DEVELOPMENT_KEY,
                                 now=time.time())
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    try:
        conn.request("POST", path, body=text.encode(),
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def listen_drops() -> int:
    """The kernel's count of connections dropped at a full listen queue (``ListenDrops`` in
    /proc/net/netstat; machine-wide, so only a hint on a shared machine)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenDrops", 0))
    return 0


def phase_bursts(rendezvous: int, requests: int, *, backlog: int | None = None,
                 ) -> dict[str, Any]:
    with running("bursts", backlog=backlog) as (emu, workers):
        rdv = [Worker("relay", emu.port, f"loadburst{i}", f"b{i}") for i in range(2)]
        http_listener = Worker("relay", emu.port, "loadhttp", "h")
        senders = [Worker("relay", emu.port, f"loadhttpsend{i}", f"hs{i}") for i in range(2)]
        workers += [*rdv, http_listener, *senders]
        call_all([*rdv, http_listener], "listen")
        # Warm-up: a few of each, not counted.
        call_all(rdv, "open_pairs", [{"count": 20, "keep": False}] * 2)
        http_listener.send("serve", requests=40)
        call_all(senders, "http_burst", [{"hc": "loadhttp", "count": 20}] * 2)
        http_listener.result(TIMEOUT + 20)
        _settle()
        half = [rendezvous // 2, rendezvous - rendezvous // 2]
        drops0 = listen_drops()
        cpu0, t0 = emu.cpu(), time.perf_counter()
        opened = call_all(rdv, "open_pairs",
                          [{"count": n, "concurrency": n, "keep": True} for n in half])
        rdv_seconds = time.perf_counter() - t0
        rdv_cpu = emu.cpu() - cpu0
        rdv_drops = listen_drops() - drops0
        verified = call_all(rdv, "verify")
        call_all(rdv, "close_pairs")
        _settle()
        half = [requests // 2, requests - requests // 2]
        http_listener.send("serve", requests=requests)
        drops0 = listen_drops()
        cpu0, t0 = emu.cpu(), time.perf_counter()
        answered = call_all(senders, "http_burst",
                            [{"hc": "loadhttp", "count": n} for n in half])
        http_seconds = time.perf_counter() - t0
        http_cpu = emu.cpu() - cpu0
        http_drops = listen_drops() - drops0
        served = http_listener.result(TIMEOUT + 20)["served"]
        states = call_all([*rdv, http_listener], "state")
        return {
            "rendezvous": {**_merge(opened, "opened"), "requested": rendezvous,
                           "seconds": round(rdv_seconds, 2), "emulator_cpu_s": round(rdv_cpu, 2),
                           "listen_drops": rdv_drops,
                           "verified": _merge(verified, "verified")},
            "http": {**_merge(answered, "ok"), "requested": requests,
                     "seconds": round(http_seconds, 2), "emulator_cpu_s": round(http_cpu, 2),
                     "listener_answered": served, "listen_drops": http_drops},
            "control_failures": sum(s["failures"] for s in states),
            "control_reasons": [s["reasons"] for s in states if s["reasons"]],
            "emulator_log_problems": emu.log_problems(),
        }


def phase_soak(seconds: float, sample_every: float = 10.0, *, backlog: int | None = None,
               ) -> dict[str, Any]:
    with running("soak", backlog=backlog) as (emu, workers):
        relay = Worker("relay", emu.port, "loadsoak", "s")
        hub = Worker("wps", emu.wps_port, "ws")
        workers += [relay, hub]
        relay.call("listen")
        samples: list[tuple[float, int]] = [(0.0, emu.rss())]
        t0 = time.monotonic()
        cpu0 = emu.cpu()
        relay.send("soak", seconds=seconds)
        hub.send("soak", seconds=seconds)
        pending = {relay.conn: relay, hub.conn: hub}
        results: dict[Worker, dict[str, Any]] = {}
        while pending:
            ready = multiprocessing.connection.wait(list(pending), sample_every)
            for conn in ready:
                worker = pending.pop(conn)  # type: ignore[call-overload]
                results[worker] = worker.result(1)
            if time.monotonic() - t0 > seconds + COMMAND_TIMEOUT:
                raise LoadError("the soak did not end")
            if not emu.alive():
                raise LoadError(f"the emulator died during the soak (log: {emu.log_path})")
            if pending:
                samples.append((round(time.monotonic() - t0, 1), emu.rss()))
        cpu = emu.cpu() - cpu0
        samples.append((round(time.monotonic() - t0, 1), emu.rss()))
        kib = [(t, r // 1024) for t, r in samples]
        # "start": the first sample taken with traffic running (10 s in), not the idle process.
        start = kib[1][1] if len(kib) > 2 else kib[0][1]
        end = kib[-1][1]
        state = relay.call("state")
        counts, wps = results[relay], results[hub]
        return {
            "seconds": seconds, **counts, "control_failures": state["failures"],
            "failures": counts["failures"] + wps["failures"],
            "reasons": {**counts["reasons"], **wps["reasons"]},
            "hub": {k: wps[k] for k in ("group_messages", "deliveries", "clients_cycled")},
            "emulator_cpu_fraction": round(cpu / max(samples[-1][0], 1e-9), 2),
            "rss_idle_kib": kib[0][1], "rss_start_kib": start, "rss_end_kib": end,
            "rss_max_kib": max(r for _, r in kib), "rss_min_kib": min(r for _, r in kib[1:]),
            "end_over_start": round(end / start, 3), "samples_kib": kib,
            "emulator_log_problems": emu.log_problems(),
        }


# ============================================================================ report


def markdown(results: dict[str, Any], command: str) -> str:
    lines = [f"Command: `{command}`. Machine: {os.cpu_count()} cores, open files per process "
             f"capped at {results.get('fd_cap', '?')} (hard limit), Python "
             f"{sys.version.split()[0]}. One fresh emulator process per row group.", "",
             "| what | result |", "|---|---|"]
    p = results.get("pairs")
    if p:
        lines += [
            f"| idle relayed pairs held | {p['held']:,} of {p['requested']:,} "
            f"({p['open']['failures']} failures; emulator fds {p['fds_held']:,} of "
            f"{p['fd_limit']:,}; {p['load_processes']} load processes) |",
            f"| opening them | {p['open']['seconds']} s, {p['open']['per_second']:,}/s, "
            f"16 in flight per process (p50 {p['open'].get('p50_ms')} ms, p99 "
            f"{p['open'].get('p99_ms')} ms) |",
            f"| emulator RSS per idle pair | **{p['kib_per_pair_idle']} KiB** never used; "
            f"**{p['kib_per_pair_used']} KiB** after one message each way "
            f"(RSS {p['rss_before_kib']:,} → {p['rss_idle_kib']:,} → {p['rss_used_kib']:,} KiB) |",
            f"| every pair live at the end | {p['verify']['verified']:,} of {p['held']:,} "
            f"delivered both ways, {p['verify']['failures']} failures |",
        ]
    w = results.get("wps")
    if w:
        lines += [
            f"| idle Web PubSub clients | {w['connected']:,} of {w['requested']:,} connected, "
            f"each got `connected` ({w['connect']['failures']} failures; {w['connect']['seconds']}"
            f" s; emulator fds {w['fds_held']:,}) |",
            f"| emulator RSS per client | **{w['kib_per_client']} KiB** (RSS "
            f"{w['rss_before_kib']:,} → {w['rss_idle_kib']:,} KiB) |",
            f"| REST broadcast to all | HTTP {w['broadcast_status']}; received by "
            f"{w['broadcast']['received']:,} of {w['connected']:,} "
            f"({w['broadcast']['failures']} failures) |",
        ]
    b = results.get("bursts")
    if b:
        r, h = b["rendezvous"], b["http"]
        lines += [
            f"| burst: {r['requested']:,} simultaneous rendezvous | {r['opened']:,} opened, "
            f"**{r['failures']} failures**, {r['seconds']} s (each: p50 {r.get('p50_ms')} ms, "
            f"p99 {r.get('p99_ms')} ms, max {r.get('max_ms')} ms; kernel ListenDrops "
            f"+{r['listen_drops']}; CPU: emulator {r['emulator_cpu_s']} s, load processes "
            f"{r.get('load_cpu_s')} s); then one message each way through all: "
            f"{r['verified']['verified']:,} ok |",
            f"| burst: {h['requested']:,} simultaneous relayed HTTP GETs | {h['ok']:,} x 200 "
            f"with the body, **{h['failures']} failures**, {h['seconds']} s (each: p50 "
            f"{h.get('p50_ms')} ms, p99 {h.get('p99_ms')} ms, max {h.get('max_ms')} ms; kernel "
            f"ListenDrops +{h['listen_drops']}; CPU: emulator {h['emulator_cpu_s']} s, senders "
            f"{h.get('load_cpu_s')} s; the listener answered {h['listener_answered']:,}) |",
        ]
    s = results.get("soak")
    if s:
        lines += [
            f"| soak, {s['seconds']:.0f} s | {s['echoes']:,} 1 KiB echoes over 4 pairs, "
            f"{s['rendezvous']:,} rendezvous (each: a message both ways, orderly close), "
            f"{s['http']:,} HTTP GETs; Web PubSub: {s['hub']['group_messages']:,} group "
            f"messages to 10 clients ({s['hub']['deliveries']:,} deliveries, each checked), "
            f"{s['hub']['clients_cycled']:,} clients connected and left; "
            f"**{s['failures']} failures**; emulator CPU "
            f"{s['emulator_cpu_fraction']} core |",
            f"| soak RSS | start (10 s in) {s['rss_start_kib']:,} KiB, end "
            f"{s['rss_end_kib']:,} KiB, max {s['rss_max_kib']:,} KiB, min {s['rss_min_kib']:,} "
            f"KiB: **end/start {s['end_over_start']}** (idle before traffic: "
            f"{s['rss_idle_kib']:,} KiB) |",
        ]
    problems = [line for key in ("pairs", "wps", "bursts", "soak")
                for line in (results.get(key) or {}).get("emulator_log_problems", [])]
    lines += ["", f"Emulator log (WARNING and up): "
              f"{'nothing that looks like an error' if not problems else problems[:5]}.", ""]
    return "\n".join(lines)


def failures_of(results: dict[str, Any]) -> list[str]:
    """What makes a run fail: any failure count, anything missing."""
    bad = []
    p = results.get("pairs")
    if p and (p["held"] != p["requested"] or p["verify"]["verified"] != p["held"]
              or p["open"]["failures"] or p["verify"]["failures"] or p["control_failures"]):
        bad.append("pairs")
    w = results.get("wps")
    if w and (w["connected"] != w["requested"] or w["broadcast"]["received"] != w["connected"]
              or w["broadcast_status"] not in (200, 202)):
        bad.append("wps")
    b = results.get("bursts")
    if b and (b["rendezvous"]["failures"] or b["http"]["failures"] or b["control_failures"]
              or b["rendezvous"]["opened"] != b["rendezvous"]["requested"]
              or b["rendezvous"]["verified"]["verified"] != b["rendezvous"]["opened"]
              or b["http"]["ok"] != b["http"]["requested"]):
        bad.append("bursts")
    s = results.get("soak")
    if s and (s["failures"] or s["control_failures"] or not s["rendezvous"] or not s["http"]
              or not s["hub"]["deliveries"]):
        bad.append("soak")
    return bad


def run(*, pairs: int | str = "max", clients: int = 10_000, burst: int = 1000,
        http_burst: int = 1000, soak: float = 600.0, only: set[str] | None = None,
        tracemalloc: bool = False, backlog: int | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    from bench.load_emulator import raise_nofile

    only = only or {"pairs", "wps", "bursts", "soak"}
    results: dict[str, Any] = {"fd_cap": raise_nofile()[1]}
    phases: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("pairs", lambda: phase_pairs(pairs, tracemalloc=tracemalloc, backlog=backlog)),
        ("wps", lambda: phase_wps(clients, backlog=backlog)),
        ("bursts", lambda: phase_bursts(burst, http_burst, backlog=backlog)),
        ("soak", lambda: phase_soak(soak, backlog=backlog)),
    ]
    for name, phase in phases:
        if name not in only:
            continue
        log(f"load: {name} ...")
        t0 = time.perf_counter()
        results[name] = phase()
        shown = {k: v for k, v in results[name].items() if k != "samples_kib"}
        log(f"load: {name} done in {time.perf_counter() - t0:.1f} s: {json.dumps(shown)}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="max", help="idle relayed pairs, or max (default)")
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--http-burst", type=int, default=1000)
    parser.add_argument("--soak", type=float, default=600.0, help="soak seconds")
    parser.add_argument("--only", default="pairs,wps,bursts,soak")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="trace the emulator's allocations in the pairs phase "
                             "(.benchmarks/load/tracemalloc-pairs.txt; slows it down, skews RSS)")
    parser.add_argument("--backlog", type=int,
                        help="experiment: the emulator's listen backlog (default: 1024)")
    parser.add_argument("--out", help="write the results table (markdown) here")
    parser.add_argument("--json", help="write all results (JSON) here")
    args = parser.parse_args(argv)
    pairs: int | str = args.pairs if args.pairs == "max" else int(args.pairs)
    results = run(pairs=pairs, clients=args.clients, burst=args.burst,
                  http_burst=args.http_burst, soak=args.soak, only=set(args.only.split(",")),
                  tracemalloc=args.tracemalloc, backlog=args.backlog)
    command = "python -m bench.load " + " ".join(argv if argv is not None else sys.argv[1:])
    table = markdown(results, command.strip())
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    bad = failures_of(results)
    if bad:
        print(f"load: FAILED: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
