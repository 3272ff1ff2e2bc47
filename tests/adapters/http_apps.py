"""Real applications for the ASGI / WSGI bridge tests: a Starlette app (``asgi_app``) and a Flask
app (``wsgi_app``) with the same routes, plus the switches the tests flip (``Gates``).

Routes (both apps unless noted):

* ``GET /`` → ``hello``; ``GET /echo/{rest}`` → JSON of what the app saw (path, raw path, query,
  root path / script name, method, headers, client, scheme, server);
* ``POST /sha`` → JSON ``{size, sha256}`` of the body, read as a stream;
* ``GET /big?size=N`` → N bytes (``bytes(range(256))`` repeated);
* ``GET /nocontent`` → 204; ``GET /cookies`` → two ``Set-Cookie`` headers;
* ``GET /stream`` → ``first`` chunk, then waits (bounded) for ``gates.release`` and sends
  ``second`` and whether the release came in time;
* ``GET /sse`` → three server-sent events; ``GET /forever`` → one event every 20 ms (counted
  in ``gates.produced``), ``FOREVER`` at most;
* ``POST /upload`` → reads the body with ``receive()`` until ``http.disconnect``
  (ASGI; ``gates.disconnected``), records body bytes seen in ``gates.uploaded``;
* ``GET /boom`` → raises;
* ``GET /state`` → what the lifespan startup stored (ASGI);
* ``WS /ws`` → accepts (subprotocol ``chat`` when offered), echoes text and bytes; the
  disconnect code goes to ``gates.ws_closed``; ``WS /ws-deny`` → closes before accepting.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from flask import Flask, Response, request, stream_with_context
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.responses import Response as StarletteResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

WAIT = 10.0
PATTERN = bytes(range(256))
#: Events /forever sends at most (one every 20 ms: WAIT seconds' worth).
FOREVER = int(WAIT / 0.02)


def pattern(size: int) -> bytes:
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


class Gates:
    """Switches and records shared by the apps and the tests (reset per test)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.disconnected = threading.Event()
        self.upload_started = threading.Event()
        self.uploaded = 0
        self.produced = 0  # events /forever has produced
        self.ws_closed: list[int] = []
        self.ws_closed_event = threading.Event()
        self.lifespan: list[str] = []


gates = Gates()


def reset() -> Gates:
    global gates
    gates = Gates()
    return gates


# --------------------------------------------------------------------------------------------
# ASGI: Starlette


async def a_index(req: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def a_echo(req: Request) -> JSONResponse:
    scope = req.scope
    return JSONResponse({
        "path": scope["path"], "raw_path": scope["raw_path"].decode("latin-1"),
        "query": scope["query_string"].decode("latin-1"), "root_path": scope["root_path"],
        "method": scope["method"], "scheme": scope["scheme"],
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        "client": list(scope["client"]) if scope["client"] else None,
        "server": list(scope["server"]), "http_version": scope["http_version"],
        "rest": req.path_params["rest"], "args": dict(req.query_params),
    })


async def a_sha(req: Request) -> JSONResponse:
    digest = hashlib.sha256()
    size = 0
    async for chunk in req.stream():
        digest.update(chunk)
        size += len(chunk)
    return JSONResponse({"size": size, "sha256": digest.hexdigest()})


async def a_big(req: Request) -> StarletteResponse:
    return StarletteResponse(pattern(int(req.query_params["size"])),
                             media_type="application/octet-stream")


async def a_nocontent(req: Request) -> StarletteResponse:
    return StarletteResponse(status_code=204)


async def a_upstream(req: Request) -> PlainTextResponse:
    return PlainTextResponse("upstream down\n", status_code=502)


async def a_cookies(req: Request) -> PlainTextResponse:
    response = PlainTextResponse("cookies")
    response.set_cookie("a", "1")
    response.set_cookie("b", "2", path="/x")
    return response


async def a_stream(req: Request) -> StreamingResponse:
    release = gates.release

    async def body() -> AsyncIterator[bytes]:
        yield b"first\n"
        released = await asyncio.to_thread(release.wait, WAIT)
        yield b"second released=%d\n" % released

    return StreamingResponse(body(), media_type="text/plain")


async def a_sse(req: Request) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        for i in range(3):
            yield f"data: {i}\n\n"
            await asyncio.sleep(0.01)

    return StreamingResponse(events(), media_type="text/event-stream")


async def a_forever(req: Request) -> StreamingResponse:
    g = gates

    async def events() -> AsyncIterator[str]:
        for i in range(FOREVER):
            g.produced += 1
            yield f"data: {i}\n\n"
            await asyncio.sleep(0.02)

    return StreamingResponse(events(), media_type="text/event-stream")


class Upload:
    """A raw ASGI endpoint: reads the body with receive() until it ends (then answers with its
    size) or until http.disconnect."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        g = gates
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                g.disconnected.set()
                return
            g.uploaded += len(message.get("body", b""))
            g.upload_started.set()
            if not message.get("more_body"):
                break  # the whole body came: answer
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % g.uploaded})


async def a_boom(req: Request) -> PlainTextResponse:
    raise RuntimeError("boom (a test of the 500 path)")


async def a_state(req: Request) -> JSONResponse:
    return JSONResponse({"started": getattr(req.state, "started", None)})


async def a_ws(ws: WebSocket) -> None:
    offered = ws.scope.get("subprotocols") or []
    await ws.accept(subprotocol="chat" if "chat" in offered else None)
    g = gates
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                g.ws_closed.append(message["code"])
                g.ws_closed_event.set()
                return
            if message.get("text") is not None:
                await ws.send_text("echo:" + message["text"])
            else:
                await ws.send_bytes(message["bytes"][::-1])
    except WebSocketDisconnect as exc:
        g.ws_closed.append(exc.code)
        g.ws_closed_event.set()


async def a_ws_deny(ws: WebSocket) -> None:
    await ws.close(code=1008)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    gates.lifespan.append("startup")
    yield {"started": True}
    gates.lifespan.append("shutdown")


asgi_app = Starlette(
    routes=[
        Route("/", a_index),
        Route("/echo/{rest:path}", a_echo, methods=["GET", "POST", "PUT", "DELETE"]),
        Route("/sha", a_sha, methods=["POST", "PUT"]),
        Route("/big", a_big),
        Route("/nocontent", a_nocontent),
        Route("/cookies", a_cookies),
        Route("/upstream", a_upstream),
        Route("/stream", a_stream),
        Route("/sse", a_sse),
        Route("/forever", a_forever),
        Route("/upload", Upload(), methods=["POST"]),
        Route("/boom", a_boom),
        Route("/state", a_state),
        WebSocketRoute("/ws", a_ws),
        WebSocketRoute("/ws-deny", a_ws_deny),
    ],
    lifespan=lifespan,
)


# --------------------------------------------------------------------------------------------
# WSGI: Flask

wsgi_app = Flask(__name__)


@wsgi_app.route("/")
def w_index() -> str:
    return "hello"


@wsgi_app.route("/echo/<path:rest>", methods=["GET", "POST", "PUT", "DELETE"])
def w_echo(rest: str) -> Response:
    env = request.environ
    keys = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME",
            "SERVER_PORT", "SERVER_PROTOCOL", "REMOTE_ADDR", "REMOTE_PORT", "CONTENT_TYPE",
            "CONTENT_LENGTH", "wsgi.url_scheme", "RAW_URI")
    seen: dict[str, Any] = {key: env.get(key) for key in keys}
    seen["http"] = {k: v for k, v in env.items() if k.startswith("HTTP_")}
    seen["rest"] = rest
    seen["args"] = request.args.to_dict()
    seen["body"] = request.get_data().decode("latin-1")
    return Response(json.dumps(seen), mimetype="application/json")


@wsgi_app.route("/sha", methods=["POST", "PUT"])
def w_sha() -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    stream = request.stream
    while chunk := stream.read(65536):
        digest.update(chunk)
        size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


@wsgi_app.route("/big")
def w_big() -> Response:
    return Response(pattern(int(request.args["size"])), mimetype="application/octet-stream")


@wsgi_app.route("/nocontent")
def w_nocontent() -> tuple[str, int]:
    return "", 204


@wsgi_app.route("/upstream")
def w_upstream() -> tuple[str, int]:
    return "upstream down\n", 502


@wsgi_app.route("/cookies")
def w_cookies() -> Response:
    response = Response("cookies")
    response.set_cookie("a", "1")
    response.set_cookie("b", "2", path="/x")
    return response


@wsgi_app.route("/stream")
def w_stream() -> Response:
    release = gates.release

    def body() -> Iterator[bytes]:
        yield b"first\n"
        released = release.wait(WAIT)
        yield b"second released=%d\n" % released

    return Response(stream_with_context(body()), mimetype="text/plain")


@wsgi_app.route("/sse")
def w_sse() -> Response:
    def events() -> Iterator[bytes]:
        for i in range(3):
            yield f"data: {i}\n\n".encode()
            threading.Event().wait(0.01)

    return Response(events(), mimetype="text/event-stream")


@wsgi_app.route("/forever")
def w_forever() -> Response:
    g = gates

    def body() -> Iterator[bytes]:
        for i in range(FOREVER):
            g.produced += 1
            yield f"data: {i}\n\n".encode()
            threading.Event().wait(0.02)

    return Response(body(), mimetype="text/event-stream")


@wsgi_app.route("/boom")
def w_boom() -> str:
    raise RuntimeError("boom (a test of the 500 path)")
