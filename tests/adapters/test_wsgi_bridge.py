"""hyco_proto.adapters.wsgi against a fake relayed request (no relay): the environ (PEP 3333),
``wsgi.input``, ``start_response`` with ``exc_info``, ``write()``, streamed iterables and their
``close()``, failures → 500. The Flask app through the relay is in ``test_http_apps.py``."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from hyco_proto.adapters._apps import AppEndpoint
from hyco_proto.adapters.wsgi import WsgiBridge, _Input
from hyco_proto.drivers.http import RequestCancelled, Response, split_target
from hyco_proto.headers import Headers

ENDPOINT = AppEndpoint.from_listen_uri("wss://ns.example/$hc/myhc")


class FakeRequest:
    def __init__(self, target: str = "/myhc/", method: str = "GET",
                 headers: tuple[tuple[str, str], ...] = (), chunks: tuple[bytes, ...] = (),
                 cancel: bool = False, remote: tuple[str, int] = ("10.1.2.3", 4567)) -> None:
        self.method = method
        self.target = target
        self.path, self.query = split_target(target, "myhc")
        self.headers = Headers(headers)
        self.remote_address = remote
        self.id = "req-1"
        self.has_body = bool(chunks) or cancel
        self._chunks = chunks
        self._cancel = cancel
        self.streams = 0

    def stream(self) -> Iterator[bytes]:
        self.streams += 1
        yield from self._chunks
        if self._cancel:
            raise RequestCancelled("request req-1 cancelled: the sender went away",
                                   close_code=1001)


def run(app: Any, request: FakeRequest | None = None) -> Response:
    return WsgiBridge(app, ENDPOINT, errors=io.StringIO())(request or FakeRequest())


def body_of(response: Response) -> bytes:
    body = response.body
    if isinstance(body, bytes):
        return body
    assert isinstance(body, Iterable)
    return b"".join(body)  # type: ignore[arg-type]


def test_environ() -> None:
    request = FakeRequest("/myhc/caf%C3%A9/a%2Fb?x=1&y=%20", "post",
                          headers=(("Content-Type", "text/plain"), ("X-Custom-Thing", "v"),
                                   ("Accept", "a"), ("Accept", "b")))
    env = WsgiBridge(None, ENDPOINT).environ(request)  # type: ignore[arg-type]
    assert isinstance(env.pop("wsgi.input"), _Input)
    assert env.pop("wsgi.errors") is sys.stderr
    assert env.pop("hyco.request") is request
    assert env == {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/café/a/b".encode().decode("latin-1"),
        "QUERY_STRING": "x=1&y=%20",
        "RAW_URI": "/caf%C3%A9/a%2Fb?x=1&y=%20",
        "REQUEST_URI": "/caf%C3%A9/a%2Fb?x=1&y=%20",
        "SERVER_NAME": "ns.example",
        "SERVER_PORT": "443",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "10.1.2.3",
        "REMOTE_PORT": "4567",
        "CONTENT_TYPE": "text/plain",
        "HTTP_X_CUSTOM_THING": "v",
        "HTTP_ACCEPT": "a,b",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https",
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "hyco.request_target": "/myhc/caf%C3%A9/a%2Fb?x=1&y=%20",
    }


def test_environ_without_remote_and_at_the_root() -> None:
    env = WsgiBridge(None, ENDPOINT).environ(  # type: ignore[arg-type]
        FakeRequest("/myhc", remote=("", 0)))
    assert (env["PATH_INFO"], env["QUERY_STRING"]) == ("/", "")
    assert "REMOTE_ADDR" not in env and "CONTENT_LENGTH" not in env


def test_input_reads_across_chunks() -> None:
    request = FakeRequest(method="POST", chunks=(b"line one\nli", b"ne two\n", b"", b"tail"))
    stream = _Input(request)
    assert request.streams == 0  # nothing read before the application asks
    assert stream.readline() == b"line one\n"
    assert stream.read(3) == b"lin"
    assert stream.readline(2) == b"e "
    assert stream.readline() == b"two\n"
    assert stream.read() == b"tail"
    assert stream.read() == b"" and stream.readline() == b""
    assert list(_Input(FakeRequest(method="POST", chunks=(b"a\nb", b"\nc")))) == [
        b"a\n", b"b\n", b"c"]
    assert _Input(FakeRequest(method="POST", chunks=(b"a\nb\n",))).readlines() == [
        b"a\n", b"b\n"]
    assert _Input(FakeRequest()).read() == b""


def test_input_raises_once_the_sender_is_gone() -> None:
    stream = _Input(FakeRequest(method="POST", chunks=(b"abc",), cancel=True))
    assert stream.read(3) == b"abc"
    with pytest.raises(RequestCancelled):
        stream.read()


def test_whole_body_and_close() -> None:
    closed: list[bool] = []

    class Result:
        def __iter__(self) -> Iterator[bytes]:
            return iter([b"", b"he", b"llo"])

        def close(self) -> None:
            closed.append(True)

    def app(environ: Any, start_response: Any) -> Any:
        start_response("201 Made", [("Content-Type", "text/plain"), ("X-A", "1")])
        return Result()

    response = run(app)
    assert (response.status, response.reason) == (201, "Made")
    assert ("X-A", "1") in response.headers
    assert response.streaming  # "he" came before the end: the rest streams
    assert body_of(response) == b"hello"
    assert closed == [True]

    def whole(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [])
        return [b""]

    response = run(whole)
    assert not response.streaming and response.body == b""


def test_known_bodies_go_whole() -> None:
    def listed(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [])
        return [b"a", b"", b"b"]

    response = run(listed)
    assert (response.streaming, response.body) == (False, b"ab")

    produced: list[int] = []
    closed: list[bool] = []

    def declared(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Length", "6")])

        def body() -> Iterator[bytes]:
            try:
                for i in range(3):
                    produced.append(i)
                    yield b"ab"
                produced.append(99)  # never asked for: the declared length came first
                yield b"extra"
            finally:
                closed.append(True)

        return body()

    response = run(declared)
    assert (response.streaming, response.body) == (False, b"ababab")
    assert produced == [0, 1, 2] and closed == [True]

    def big(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [("Content-Length", str(100_000))])
        return iter([b"x" * 50_000, b"y" * 50_000])

    response = run(big)
    assert response.streaming  # too big to wait for: streamed from the first chunk
    assert body_of(response) == b"x" * 50_000 + b"y" * 50_000


def test_write_callable() -> None:
    def app(environ: Any, start_response: Any) -> Any:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        write(b"first, ")
        return [b"then ", b"iterated"]

    assert body_of(run(app)) == b"written first, then iterated"

    def only_write(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [])(b"all of it")
        return []

    response = run(only_write)
    assert (response.streaming, response.body) == (False, b"all of it")


def test_exc_info_replaces_a_response_not_yet_sent() -> None:
    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [("X-First", "1")])
        try:
            raise ValueError("late trouble")
        except ValueError:
            start_response("503 Service Unavailable", [("Retry-After", "1")], sys.exc_info())
        return [b"try later"]

    response = run(app)
    assert (response.status, response.headers) == (503, (("Retry-After", "1"),))
    assert body_of(response) == b"try later"


def test_exc_info_after_the_head_went_out_breaks_the_stream() -> None:
    closed: list[bool] = []

    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [])

        def body() -> Iterator[bytes]:
            try:
                yield b"part"
                try:
                    raise ValueError("mid-stream")
                except ValueError:
                    start_response("500 Oops", [], sys.exc_info())
                yield b"never"
            finally:
                closed.append(True)

        return body()

    response = run(app)
    chunks = iter(response.body)  # type: ignore[arg-type]
    assert next(chunks) == b"part"
    with pytest.raises(ValueError, match="mid-stream"):
        next(chunks)
    assert closed == [True]


def test_streamed_body_closed_early_closes_the_result() -> None:
    closed: list[bool] = []
    produced: list[int] = []

    def app(environ: Any, start_response: Any) -> Any:
        start_response("200 OK", [])

        def body() -> Iterator[bytes]:
            try:
                for i in range(1000):
                    produced.append(i)
                    yield b"x"
            finally:
                closed.append(True)

        return body()

    response = run(app)
    chunks = response.body
    assert next(iter(chunks)) == b"x"  # type: ignore[call-overload]
    chunks.close()  # type: ignore[union-attr]  # the adapter gave the response up
    assert closed == [True]
    assert len(produced) < 5


@pytest.mark.parametrize("app_kind", ["raises", "no_start", "bad_chunk", "bad_status",
                                      "raises_in_iter"])
def test_failures_are_500(app_kind: str) -> None:
    closed: list[bool] = []

    class Result:
        def __init__(self, items: list[object]) -> None:
            self.items = items

        def __iter__(self) -> Iterator[object]:
            for item in self.items:
                if isinstance(item, Exception):
                    raise item
                yield item

        def close(self) -> None:
            closed.append(True)

    def app(environ: Any, start_response: Any) -> Any:
        if app_kind == "raises":
            raise RuntimeError("boom")
        if app_kind == "no_start":
            return Result([b"x"])
        status = {"bad_status": "OK"}.get(app_kind, "200 OK")
        start_response(status, [])
        if app_kind == "bad_chunk":
            return Result(["text, not bytes"])
        if app_kind == "raises_in_iter":
            return Result([RuntimeError("boom in iter")])
        return Result([b"x"])

    response = run(app)
    assert (response.status, response.body) == (500, b"Internal Server Error")
    assert closed == ([] if app_kind == "raises" else [True])


def test_reserved_502_goes_out_as_500_with_the_apps_body() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("502 Bad Gateway", [("Content-Type", "text/plain")])
        return [b"upstream down"]

    response = run(app)
    assert (response.status, response.reason) == (500, "Internal Server Error")
    body = response.body if isinstance(response.body, bytes) else b"".join(response.body)
    assert body == b"upstream down"
