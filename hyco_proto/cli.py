"""``hyco``: the local relay emulator, SAS tokens, and netcat over a hybrid connection.

    hyco emulator [--port 9090] [--config emulator.toml] [--tls-self-signed] ...
    hyco token URI [--rule NAME] [--key KEY] [--ttl SECONDS]
    hyco listen --path myhc          # received messages -> stdout, stdin -> messages
    hyco send --path myhc            # the other end
    hyco http --asgi myapp:app --path myhc   # serve an ASGI (or --wsgi) app through the relay
    hyco status                      # the emulator's /$status document

Without a connection string, ``listen`` / ``send`` / ``token`` talk to a default emulator on
``ws://127.0.0.1:9090`` with the development key, so ``hyco emulator`` in one terminal and
``hyco listen --path myhc --no-stdin`` / ``echo hi | hyco send --path myhc -N`` in two others
just work (``-N`` closes when stdin ends; without it, like netcat, the connection stays open).
See docs/emulator.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import re
import select
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from ._progress import TransferMeter
from ._syntax import is_token
from ._text import printable
from ._version import __version__
from .errors import (
    ConnectionLostError,
    ProtocolError,
    RelayError,
    describe_connect_error,
    host_port,
)
from .frames import describe as describe_frames
from .sas import create_relay_token
from .service.config import DEFAULT_RULE_NAME, DEVELOPMENT_KEY, HybridConnectionConfig
from .service.devcert import DevCertError, ensure_dev_cert, node_hint
from .service.router import RelayService
from .service.tomlconfig import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_WEBPUBSUB_PORT,
    MAX_ACCEPT_TIMEOUT,
    MAX_AUTO_EXPIRY,
    MAX_CONTROL_MESSAGE,
    MAX_LISTENERS_LIMIT,
    MAX_TOKEN_GRACE,
    MIN_CONTROL_MESSAGE,
    ConfigError,
    EmulatorConfig,
    TlsConfig,
    apply_default_key,
    default_rule,
    is_development_key,
    load_config,
    webpubsub_default_key,
)
from .service.webpubsub import WebPubSubService
from .uris import (
    ConnectionString,
    create_relay_listen_uri,
    create_relay_send_uri,
    default_scheme,
    parse_connection_string,
)
from .webpubsub.endpoints import validate_hub_name
from .webpubsub.events import SYSTEM_EVENTS, EventHandler

if TYPE_CHECKING:
    from .adapters.asyncio import RelayedWebSocket, RelayServiceServer
    from .control import RemoteEndpoint

__all__ = ["build_parser", "main"]

PROG = "hyco"


class CliError(Exception):
    """A user-facing error: printed as ``hyco <command>: error: <message>``, exit status 1."""


# -------------------------------------------------------------------------------------------
# TLS helpers (the I/O half of hyco_proto.service.devcert)


def _run_quiet(argv: Sequence[str]) -> int:
    """Run a helper command (openssl); its error output is shown only when it fails."""
    try:
        done = subprocess.run(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"{PROG}: {argv[0]} failed: {exc}", file=sys.stderr)
        return 127
    if done.returncode != 0 and done.stderr and "-checkend" not in argv:
        sys.stderr.write(done.stderr.decode("utf-8", "replace"))
    return done.returncode


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side TLS context from PEM files; ``CliError`` names the file that is wrong."""
    for what, path in (("certificate", cert), ("key", key)):
        if not path.is_file():
            raise CliError(f"TLS {what} file {path} does not exist")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise CliError(f"cannot load the TLS certificate {cert} with key {key}: {exc}") from None
    return context


def client_ssl_context(cafile: str | None, insecure: bool) -> ssl.SSLContext | None:
    """The context for ``wss://`` clients: system trust, plus ``cafile`` (e.g. the emulator's
    development certificate); ``insecure`` turns verification off."""
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if cafile is None:
        return None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (ssl.SSLError, OSError) as exc:
        raise CliError(f"cannot load CA file {cafile}: {exc}") from None


# -------------------------------------------------------------------------------------------
# hyco emulator


def _emulator_config(args: argparse.Namespace) -> EmulatorConfig:
    config = load_config(args.config) if args.config else EmulatorConfig()
    service = config.service
    if args.host is not None:
        config.host = args.host
    if args.port is not None:
        config.port = args.port
    if args.strict:
        service.strict = True
    if args.token_grace is not None:
        service.token_grace = args.token_grace
    if args.max_listeners is not None:
        service.max_listeners = args.max_listeners
    if args.accept_timeout is not None:
        service.accept_timeout = args.accept_timeout
    if args.auto_expiry is not None:
        service.auto_expiry = args.auto_expiry
    if args.max_control_message is not None:
        service.max_control_message = args.max_control_message
    if args.validate_text is not None:
        service.validate_text = args.validate_text
    if args.namespace is not None:
        service.namespace = args.namespace
    apply_default_key(service, args.key)
    for name in args.hc or ():
        clean = name.strip("/")
        if not clean:
            raise CliError(f"--hc {name!r} is not a hybrid connection name")
        service.hybrid_connections.setdefault(clean.lower(), HybridConnectionConfig(clean))
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise CliError("--tls-cert and --tls-key go together")
        if args.tls_self_signed:
            raise CliError("use either --tls-cert/--tls-key or --tls-self-signed, not both")
        config.tls = TlsConfig(cert=Path(args.tls_cert).expanduser(),
                               key=Path(args.tls_key).expanduser())
    elif args.tls_self_signed:
        config.tls = TlsConfig(self_signed=True)
    if args.state_dir is not None and config.tls is not None:
        config.tls.state_dir = Path(args.state_dir).expanduser()
    _webpubsub_flags(args, config)
    if not service.rules:
        raise CliError("the configuration defines no SAS rules: nobody could connect")
    return config


def _webpubsub_flags(args: argparse.Namespace, config: EmulatorConfig) -> None:
    """Apply the Web PubSub flags over the config file's [webpubsub] section."""
    wps = config.webpubsub
    asked = [flag for flag, value in (("--webpubsub-port", args.webpubsub_port),
                                      ("--webpubsub-key", args.webpubsub_key),
                                      ("--event-handler", args.event_handler))
             if value is not None]
    if args.no_webpubsub:
        if asked:
            raise CliError(f"--no-webpubsub turns the Web PubSub hubs off, but {asked[0]} "
                           "configures them: drop one of the two")
        wps.enabled = False
        return
    if asked:
        wps.enabled = True  # asked for by flag: serve them (an error if that is impossible)
        wps.required = True
    if args.webpubsub_port is not None:
        wps.port = args.webpubsub_port
    if args.webpubsub_key is not None:
        wps.access_key = args.webpubsub_key
    by_flag: dict[str, list[EventHandler]] = {}
    for spec in args.event_handler or ():
        hub, sep, url = spec.partition("=")
        if not sep or not hub.strip() or not url.strip():
            raise CliError(f"--event-handler {spec!r}: expected HUB=URL, e.g. "
                           "chat=http://127.0.0.1:3000/eventhandler")
        try:
            validate_hub_name(hub.strip())
            handler = EventHandler(url.strip(), "*", frozenset(SYSTEM_EVENTS))
        except ValueError as exc:
            raise CliError(f"--event-handler {spec!r}: {exc}") from None
        by_flag.setdefault(hub.strip().lower(), []).append(handler)
    for hub, handlers in by_flag.items():  # flags override the file's handlers of that hub
        wps.event_handlers[hub] = tuple(handlers)
    relay_port = config.port if config.port is not None else config.effective_port
    if wps.port is not None and wps.port != 0 and wps.port == relay_port:
        raise CliError(f"the relay and the Web PubSub hubs cannot share port {wps.port}: "
                       "pass another --webpubsub-port")


def _tls_context(config: EmulatorConfig, out: IO[str]) -> tuple[ssl.SSLContext | None,
                                                                 Path | None]:
    tls = config.tls
    if tls is None:
        return None, None
    if tls.self_signed:
        try:
            made = ensure_dev_cert(tls.state_dir, run=_run_quiet, now=time.time())
        except DevCertError as exc:
            raise CliError(str(exc)) from None
        verb = "generated" if made.created else "using"
        print(f"TLS: {verb} the development certificate {made.cert} (localhost, 127.0.0.1, "
              "::1)", file=out)
        return server_ssl_context(made.cert, made.key), made.cert
    assert tls.cert is not None and tls.key is not None
    return server_ssl_context(tls.cert, tls.key), tls.cert


def _banner(config: EmulatorConfig, server: RelayServiceServer, cert: Path | None) -> str:
    service = config.service
    url = server.url
    scheme = "wss" if server.ssl is not None else "ws"
    authority = url.split("://", 1)[1]
    rule = default_rule(service)
    names = sorted(hc.name for hc in service.hybrid_connections.values())
    example = names[0] if names else "myhc"
    # The development certificate is self-signed: the commands to paste must trust it (a
    # certificate of the user's own may chain to a CA the system trusts already).
    dev_cert = cert if cert is not None and config.tls is not None and config.tls.self_signed \
        else None
    cafile = f" --cafile {shlex.quote(str(dev_cert))}" if dev_cert is not None else ""
    cacert = f"--cacert {shlex.quote(str(dev_cert))} " if dev_cert is not None else ""
    # --scheme only where the CLI would guess otherwise (_endpoint: wss with --cafile, else
    # uris.default_scheme: ws for a loopback host on a plain port).
    host, _, port_text = authority.rpartition(":")
    guessed = "wss" if cafile else default_scheme(host.strip("[]"), int(port_text))
    scheme_flag = f" --scheme {scheme}" if scheme != guessed else ""
    lines = [
        f"hyco_proto relay emulator {__version__} (Azure Relay Hybrid Connections"
        f"{' and Web PubSub' if server.service.webpubsub is not None else ''}, for local "
        "development only)",
        f"listening on {url}",
        f"status: {'https' if scheme == 'wss' else 'http'}://{authority}/$status",
        f"web view: {'https' if scheme == 'wss' else 'http'}://{authority}/ (live, in a browser)",
        f"frames: {describe_frames()}",
    ]
    if names:
        lines.append(f"hybrid connections: {', '.join(names)}"
                     + ("" if service.strict else " (others are created on first use)"))
    elif service.strict:
        lines.append("hybrid connections: none configured, and --strict refuses unknown names")
    else:
        lines.append("hybrid connections: created on first use (any name works)")
    if rule is not None:
        connection_string = (f"Endpoint=sb://{authority}/;SharedAccessKeyName={rule.name};"
                             f"SharedAccessKey={rule.key};EntityPath={example}")
        quoted = shlex.quote(connection_string)
        lines += [
            "",
            f"connection string (rule {rule.name}):",
            f"  {connection_string}",
            "",
            "try it, in two more terminals:",
            f"  {PROG} listen --connection-string {quoted}{scheme_flag}{cafile} --no-stdin",
            f"  echo hello | {PROG} send --connection-string {quoted}{scheme_flag}{cafile} -N",
            "",
            "hyco-ws (Node): build the URL by hand (its helpers force wss://…:443):",
            f"  const uri = '{url}/$hc/{example}?sb-hc-action=listen';",
            f"  WebSocket.createRelayedServer({{ server: uri, token: () => "
            f"WebSocket.createRelayToken(uri, '{rule.name}', '{rule.key}') }}, (ws) => {{ … }});",
        ]
        http_url = f"{'https' if scheme == 'wss' else 'http'}://{authority}/{example}"
        lines += [
            "",
            "relayed HTTP (answered by `hyco http --asgi|--wsgi MODULE:APP`, hyco-https or any "
            "listener that answers requests; `hyco listen` serves WebSockets only): any HTTP "
            "client sends, e.g.",
            f"  curl {cacert}-H \"ServiceBusAuthorization: "
            f"$({_token_hint(http_url, rule.name, rule.key)})\" {http_url}/",
        ]
        if is_development_key([rule]):
            lines.append(f"(the key is the documented development key of {DEFAULT_RULE_NAME}; "
                         "pass --key or a config file for anything shared)")
    hubs = server.service.webpubsub
    if hubs is not None:
        endpoint = server.webpubsub_endpoint
        lines += [
            "",
            f"Web PubSub hubs on {endpoint} (clients: {endpoint.replace('http', 'ws', 1)}"
            "/client/hubs/{hub}; REST API: /api/hubs/{hub}/...)",
            "  connection string (any hub name works):",
            f"  {server.webpubsub_connection_string}",
        ]
        for hub, handlers in sorted(config.webpubsub.event_handlers.items()):
            for handler in handlers:
                taken = sorted(handler.system_events) + (
                    [f"user events {handler.user_events}"] if handler.user_events else [])
                lines.append(f"  hub {hub}: events ({', '.join(taken)}) → "
                             f"{handler.url_template}")
        if hubs.access_key == DEVELOPMENT_KEY:
            lines.append("  (AccessKey is the development key: pass --key or "
                         "--webpubsub-key for anything shared)")
    if cert is not None:
        lines += ["", "trust the certificate in Node (hyco-ws, hyco-https):",
                  f"  export {node_hint(cert)}",
                  f"and in {PROG} listen/send: --cafile {cert}"]
    lines += ["", "press Ctrl-C to stop"]
    return "\n".join(lines)


def _webpubsub_service(config: EmulatorConfig, out: IO[str]) -> WebPubSubService | None:
    settings = config.webpubsub
    if not settings.enabled:
        return None
    try:
        import jwt  # noqa: F401  (the hubs verify and mint access tokens with PyJWT)
    except ImportError:
        if settings.required:
            raise CliError("the Web PubSub hubs need PyJWT: pip install PyJWT (hyco_proto's "
                           "webpubsub extra)"
                           " (or leave out the Web PubSub flags)") from None
        print("Web PubSub: not served: it needs PyJWT (pip install PyJWT: hyco_proto's "
              "webpubsub extra)",
              file=out, flush=True)
        return None
    key = settings.access_key
    if key is None:
        key = webpubsub_default_key(config.service)
    return WebPubSubService(key, event_handlers=settings.event_handlers)


async def _start_emulator(config: EmulatorConfig, context: ssl.SSLContext | None,
                          out: IO[str]) -> RelayServiceServer:
    """Bind the relay port and (unless disabled) the Web PubSub port. The default Web PubSub
    port, 8080, is often taken: then a free one is used and the banner says so."""
    from .adapters.asyncio import RelayServiceServer
    from .adapters.asyncio.service import BindError

    wps = _webpubsub_service(config, out)
    requested = config.webpubsub.port
    wps_port = None if wps is None else (DEFAULT_WEBPUBSUB_PORT if requested is None
                                         else requested)
    while True:
        service = RelayService(config.service, webpubsub=wps)
        server = RelayServiceServer(service, host=config.host, port=config.effective_port,
                                    ssl=context, webpubsub_port=wps_port)
        try:
            await server.start()
            return server
        except BindError as exc:
            if exc.routes == "webpubsub" and requested is None and wps_port != 0:
                print(f"Web PubSub: port {wps_port} is taken ({exc.strerror}); using a free "
                      "port instead (choose one with --webpubsub-port)", file=out, flush=True)
                wps_port = 0
                continue
            hint = (" (pass --webpubsub-port N, or --no-webpubsub)"
                    if exc.routes == "webpubsub" else " (pass --port N, or 0 for a free one)")
            raise CliError(f"{exc}{hint}") from None


async def _serve_emulator(config: EmulatorConfig, context: ssl.SSLContext | None,
                          cert: Path | None, out: IO[str]) -> None:
    server = await _start_emulator(config, context, out)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        print(_banner(config, server, cert), file=out, flush=True)
        await stop.wait()
        print("stopping", file=out, flush=True)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await server.close()


def raise_open_file_limit() -> tuple[int, int] | None:
    """Raise this process's soft open-file limit to its hard limit, so the emulator can hold as
    many connections as the system lets it (a common soft default of 1,024 is about 500
    relayed pairs). Returns (old soft, new soft), or None where there is no such limit."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # No hard limit (macOS by default): the kernel still caps a process, at OPEN_MAX there.
    target = 10240 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft


def cmd_emulator(args: argparse.Namespace) -> int:
    config = _emulator_config(args)
    out = sys.stdout
    context, cert = _tls_context(config, out)
    _setup_logging(args.log_level, args.log_format)
    raise_open_file_limit()  # RelayServiceServer's max_connections follows the soft limit
    try:
        asyncio.run(_serve_emulator(config, context, cert, out))
    except KeyboardInterrupt:  # platforms without loop signal handlers
        print("stopped", file=out, flush=True)
    return 0


# -------------------------------------------------------------------------------------------
# endpoints for token / listen / send


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """Where a command connects and how it signs."""

    namespace: str  # host[:port]
    path: str
    scheme: str
    rule: str | None
    key: str | None
    token: str | None  # a fixed SAS token (--token or SharedAccessSignature)

    def token_for(self, uri: str, ttl: float) -> Callable[[], str] | str | None:
        if self.token is not None:
            return self.token
        if self.rule is None or self.key is None:
            return None
        rule, key = self.rule, self.key
        return lambda: create_relay_token(uri, rule, key, ttl)


def _split_host_port(namespace: str) -> tuple[str, int | None]:
    if namespace.startswith("["):
        host, _, rest = namespace[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port else None
    if namespace.count(":") == 1:
        host, _, port = namespace.partition(":")
        return host, int(port) if port else None
    return namespace, None


def _endpoint(args: argparse.Namespace) -> _Endpoint:
    cs: ConnectionString | None = None
    if args.connection_string:
        try:
            cs = parse_connection_string(args.connection_string)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    if cs is not None and args.namespace:
        raise CliError("use either --connection-string or --namespace, not both")
    namespace = cs.namespace if cs is not None else (
        args.namespace or f"{DEFAULT_HOST}:{DEFAULT_PORT}")
    try:
        host, port = _split_host_port(namespace)
    except ValueError:
        raise CliError(f"--namespace {namespace!r}: expected host or host:port") from None
    if args.port is not None:
        port = args.port
    shown_host = f"[{host}]" if ":" in host else host
    namespace = f"{shown_host}:{port}" if port is not None else shown_host
    path = args.path or (cs.entity_path if cs is not None else None)
    if not path:
        raise CliError("which hybrid connection? pass --path NAME (or EntityPath in the "
                       "connection string)")
    scheme = args.scheme
    if scheme is None:
        # uris.default_scheme: plain ws:// for a local emulator on a plain port, TLS everywhere
        # else; and TLS whenever TLS options are given.
        tls_options = getattr(args, "cafile", None) or getattr(args, "insecure", False)
        scheme = "wss" if tls_options else default_scheme(host, port)
    rule = args.rule or (cs.shared_access_key_name if cs is not None else None)
    key = args.key or (cs.shared_access_key if cs is not None else None)
    token = args.token or (cs.shared_access_signature if cs is not None else None)
    if cs is None:
        rule = rule or DEFAULT_RULE_NAME
        key = key or DEVELOPMENT_KEY
    return _Endpoint(namespace, path.strip("/"), scheme, rule, key, token)


def _add_endpoint_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where to connect")
    group.add_argument("--connection-string", "-c", metavar="CS",
                       default=os.environ.get("HYCO_CONNECTION_STRING"),
                       help="Endpoint=sb://…;SharedAccessKeyName=…;SharedAccessKey=…"
                            "[;EntityPath=…] (default: $HYCO_CONNECTION_STRING)")
    group.add_argument("--namespace", "-n", metavar="HOST[:PORT]",
                       help=f"relay namespace (default: {DEFAULT_HOST}:{DEFAULT_PORT}, "
                            "the local emulator)")
    group.add_argument("--path", "-p", metavar="HC[/SUFFIX]",
                       help="hybrid connection name (default: EntityPath)")
    group.add_argument("--port", type=_port, help="override the namespace's port")
    group.add_argument("--scheme", choices=("ws", "wss"),
                       help="ws for a plain local emulator; default: ws for a loopback "
                            "host (localhost, 127.0.0.0/8, ::1) on a port other than 443/9443 "
                            "(without --cafile/--insecure), else wss")
    group.add_argument("--rule", "-r", metavar="NAME",
                       help=f"SAS rule name (default: {DEFAULT_RULE_NAME})")
    group.add_argument("--key", "-k", metavar="KEY",
                       help="SAS rule key (default: the emulator's development key)")
    group.add_argument("--token", metavar="SAS", help="use this SAS token instead of signing")
    group.add_argument("--ttl", type=_lifetime, default=3600.0, metavar="SECONDS",
                       help="lifetime of the tokens we sign (default 3600)")
    group.add_argument("--cafile", metavar="PEM",
                       help="trust this CA/certificate for wss:// (e.g. the emulator's "
                            "development certificate)")
    group.add_argument("--insecure", action="store_true",
                       help="do not verify the relay's TLS certificate")


# -------------------------------------------------------------------------------------------
# hyco token


def cmd_token(args: argparse.Namespace) -> int:
    from .sas import append_relay_token

    ttl = args.ttl
    if args.connection_string:
        try:
            cs = parse_connection_string(args.connection_string)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        if args.uri:
            if cs.shared_access_key_name is None or cs.shared_access_key is None:
                raise CliError("the connection string has no SharedAccessKeyName/"
                               "SharedAccessKey to sign with")
            rule, key = args.rule or cs.shared_access_key_name, args.key or cs.shared_access_key
        else:
            if args.append and not (args.path or cs.entity_path):
                raise CliError("--append needs a hybrid connection to append to: EntityPath "
                               "in the connection string, --path NAME, or a URI")
            try:
                token = cs.create_token(args.path, ttl)
                # --append without a URI: the hybrid connection's send URI, token appended.
                print(cs.send_uri(args.path, token=token) if args.append else token)
            except ValueError as exc:
                raise CliError(str(exc)) from None
            return 0
    else:
        if not args.uri:
            raise CliError("give the URI to sign (e.g. http://127.0.0.1:9090/myhc) or "
                           "--connection-string")
        rule, key = args.rule or DEFAULT_RULE_NAME, args.key or DEVELOPMENT_KEY
    try:
        if args.append:
            print(append_relay_token(args.uri, rule, key, ttl))
        else:
            print(create_relay_token(args.uri, rule, key, ttl))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return 0


# -------------------------------------------------------------------------------------------
# hyco listen / hyco send: netcat over a relayed WebSocket


class _StdinNotText(Exception):
    """A stdin line that is not UTF-8 in text mode: nothing from it on is sent."""


class _Stdin:
    """Reads stdin on a daemon thread (portable, never blocks interpreter exit) into a bounded
    queue: binary chunks, or lines (without the newline) in text mode. ``None`` marks EOF and
    is returned forever after. In text mode a line that is not UTF-8 ends the input: ``get``
    raises :class:`_StdinNotText` (a text message must be UTF-8, RFC 6455 §5.6; replacing
    the bytes would send something else than was given, without a word)."""

    def __init__(self, stream: IO[bytes] | None, *, text: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[str | bytes | _StdinNotText | None] = asyncio.Queue(16)
        self._eof = False
        self._text = text
        self._stream = stream
        threading.Thread(target=self._read, name="hyco-stdin", daemon=True).start()

    def _put(self, item: str | bytes | _StdinNotText | None) -> bool:
        future = asyncio.run_coroutine_threadsafe(self._queue.put(item), self._loop)
        try:
            future.result()
        except Exception:  # the loop is gone: stop reading
            return False
        return True

    def _chunks(self) -> Iterator[bytes]:
        # Read the file descriptor, not the buffered object: a thread blocked inside
        # BufferedReader.read holds its lock, and interpreter shutdown then aborts waiting
        # for it (exit 134) when stdin is a terminal or a pipe still open.
        stream = self._stream
        if stream is None:
            return
        try:
            fd = stream.fileno()
        except (OSError, ValueError, AttributeError):
            read = getattr(stream, "read1", stream.read)  # not a real file (tests)
            while chunk := read(65536):
                yield bytes(chunk)
            return
        while chunk := os.read(fd, 65536):
            yield chunk

    def _read(self) -> None:
        try:
            if self._text:
                pending, number = b"", 0
                for chunk in self._chunks():
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        number += 1
                        if not self._put(_text_line(line, number)):
                            return
                if pending:
                    self._put(_text_line(pending, number + 1))
            else:
                for chunk in self._chunks():
                    if not self._put(chunk):
                        return
        except (OSError, ValueError):
            pass
        self._put(None)

    async def get(self) -> str | bytes | None:
        """The next message from stdin; None at its end (``_StdinNotText`` in text mode for a
        line that is not UTF-8, then None)."""
        if self._eof:
            return None
        item = await self._queue.get()
        if item is None or isinstance(item, _StdinNotText):
            self._eof = True
        if isinstance(item, _StdinNotText):
            raise item
        return item


def _text_line(line: bytes, number: int) -> str | _StdinNotText:
    """Stdin line ``number`` (its newline and a CR before it removed) as a text message, or
    the error saying why it cannot be one."""
    try:
        return line.rstrip(b"\r").decode("utf-8")
    except UnicodeDecodeError as exc:
        return _StdinNotText(
            f"stdin line {number} is not UTF-8 (byte {exc.start + 1} of the line): --text sends "
            "each line as a text message, which must be UTF-8; nothing from that line on was "
            "sent (leave out --text to send stdin's bytes as they are)")


def _write_message(out: IO[bytes], message: str | bytes, *, text: bool) -> int:
    """Write one received message; the number of bytes it carried."""
    data = message.encode("utf-8") if isinstance(message, str) else message
    out.write(data + b"\n" if text else data)
    out.flush()
    return len(data)


#: The meters of the connections being served (``_note`` ends their drawn lines first).
_drawn_meters: set[TransferMeter] = set()


def _note(args: argparse.Namespace, message: str, level: int = logging.INFO) -> None:
    """One status line on stderr: ``hyco: message``, or under ``--log-format json`` a JSON
    object like the log lines' (logger ``hyco``), so stderr stays one format."""
    for meter in _drawn_meters:
        meter.break_line()  # a status line drawn in place would run into this one
    if getattr(args, "log_format", "text") == "json":
        record = logging.LogRecord(PROG, level, __file__, 0, message, None, None)
        line = _JsonFormatter().format(record)
    else:
        line = f"{PROG}: {message}"
    print(line, file=sys.stderr, flush=True)


#: How often the progress line may redraw, and after how long a transfer first shows it.
_PROGRESS_INTERVAL = 0.25
_PROGRESS_DELAY = 1.0


def _isatty(stream: IO[Any] | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False


def _show_progress(args: argparse.Namespace) -> bool:
    """The in-place progress line: on a terminal, not in JSON log mode, and not while a
    terminal is read for typed input (stdin a terminal, without --no-stdin), where it would
    draw over what is typed."""
    if getattr(args, "log_format", "text") == "json" or not _isatty(sys.stderr):
        return False
    return bool(getattr(args, "no_stdin", False)) or not _isatty(sys.stdin)


async def _redraw(meter: TransferMeter) -> None:
    """Redraw ``meter`` on a timer (the byte path only counts, it never renders)."""
    while True:
        await asyncio.sleep(_PROGRESS_INTERVAL)
        meter.tick()


async def _session(ws: RelayedWebSocket, stdin: _Stdin, args: argparse.Namespace,
                   out: IO[bytes]) -> int:
    """Pump stdin → ``ws`` and ``ws`` → stdout until the peer closes; the exit status."""
    from .adapters.asyncio import RelayConnectionClosed

    meter = TransferMeter(sys.stderr, time.monotonic, prefix=PROG,
                          interval=_PROGRESS_INTERVAL, delay=_PROGRESS_DELAY,
                          columns=lambda: shutil.get_terminal_size().columns)

    refused_input = ""

    async def outgoing() -> None:
        nonlocal refused_input
        while True:
            try:
                item = await stdin.get()
            except _StdinNotText as exc:
                refused_input = str(exc)
                await ws.close(1000, "input ended: a stdin line was not UTF-8")
                return
            if item is None:
                if args.close_on_eof:
                    await ws.close()
                return
            await ws.send(item)
            meter.sent(len(item.encode("utf-8")) if isinstance(item, str) else len(item))

    sender = asyncio.create_task(outgoing())
    redraw = asyncio.create_task(_redraw(meter)) if _show_progress(args) else None
    if redraw is not None:
        _drawn_meters.add(meter)
    # Messages printed to the terminal the line is drawn on take their own lines.
    shared_terminal = redraw is not None and _isatty(out)
    status = 0
    failure = ""
    try:
        async for message in ws:
            if shared_terminal:
                meter.clear()  # the message takes the line; the progress is drawn below it
            meter.received(_write_message(out, message, text=args.text))
    except RelayConnectionClosed as exc:
        failure = f"connection closed with {exc.code} {exc.reason}".rstrip()
        status = 1
    finally:
        if refused_input:
            failure, status = refused_input, 1
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, RelayError, OSError):
            await sender
        with contextlib.suppress(RelayError, OSError):
            await ws.close()
        if redraw is not None:
            redraw.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await redraw
            _drawn_meters.discard(meter)
            meter.finish()
        if failure:
            _note(args, failure, logging.ERROR)
        if args.verbose:  # also when SIGTERM or Ctrl-C ends the connection
            reason = f" {ws.close_reason}" if ws.close_reason else ""
            _note(args, f"connection closed ({ws.close_code}{reason}): {meter.summary()}")
    return status


#: How ``errors.describe_connect_error`` begins: the relay was not reached.
_UNREACHED = ("nothing is listening at ", "cannot resolve host ", "the relay is not speaking TLS",
              "no answer from ", "cannot connect to ")


def _listener_error_text(error: BaseException) -> str:
    """A listener's error as its cause. A reconnect that could not reach the relay comes as a
    1006 close whose reason is the connect failure: that is "cannot reconnect: nothing is
    listening at …", not "relay closed the connection with 1006: …"."""
    if isinstance(error, RelayError) and error.close_code == 1006 and error.description \
            and error.description.startswith(_UNREACHED):
        return f"cannot reconnect: {error.description}"
    return str(error)


def _scheme_hint(ep: _Endpoint, error: BaseException) -> str:
    """``--scheme`` advice, only when the failure looks like a ws/wss mismatch: never for an
    HTTP status (401, 404 ...) or a close code, which the relay answered in the right scheme."""
    if isinstance(error, RelayError) and (error.status is not None
                                          or error.close_code is not None):
        return ""
    text = str(error)
    if "use ws://" in text or "use wss://" in text:
        return " (try --scheme " + ("ws)" if "use ws://" in text else "wss)")
    if ep.scheme == "ws" and "without answering" in text:
        return " (is the relay serving wss://? try --scheme wss)"
    if ep.scheme == "wss" and "TLS" in text and "certificate" not in text:
        return " (is the relay serving ws://? try --scheme ws)"
    return ""


def _token_advice(ep: _Endpoint, error: BaseException) -> str:
    """What to check when the relay refused our token (401): the key or the rule name."""
    if not isinstance(error, RelayError) or error.status != 401:
        return ""
    text = str(error).lower()
    if ep.token is not None:
        return " (check the SAS token given with --token or in the connection string)"
    if "bad signature" in text:
        return (f" (the key does not match rule {ep.rule}: check --key or the connection "
                "string's SharedAccessKey)")
    if "unknown key name" in text:
        return f" (the relay has no rule named {ep.rule}: check --rule or SharedAccessKeyName)"
    return ""


def _failure(what: str, address: str, error: BaseException, ep: _Endpoint) -> CliError:
    """``what ADDRESS: cause`` once (errors that already name the address are not wrapped)."""
    text = str(error) or type(error).__name__
    if text.startswith(address):
        message = f"{what} {text}"
    elif address in text:
        message = text
    else:
        message = f"{what} {address}: {text}"
    hint = _scheme_hint(ep, error) or _token_advice(ep, error)
    if not hint and "nothing is listening at " in text:
        hint = (" (is `hyco emulator` running there? give its address with -n HOST:PORT, "
                "--port or -c)")
    # The library's own advice, "(is it serving wss://? then use wss://)", becomes the flag to
    # pass rather than a second hint after it.
    found = re.search(r"(?:then )?use (wss?)://\)", message)
    if found is not None and hint.startswith(" (try --scheme "):
        return CliError(f"{message[:found.start()]}try --scheme {found.group(1)})"
                        f"{message[found.end():]}")
    return CliError(message + hint)


def _parse_headers(values: Sequence[str] | None) -> list[tuple[str, str]]:
    headers = []
    for value in values or ():
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise CliError(f"--header {value!r}: expected 'Name: value'")
        headers.append((name.strip(), content.strip()))
    return headers


def _listen_target(args: argparse.Namespace
                   ) -> tuple[_Endpoint, str, Callable[[], str] | str]:
    """Where ``hyco listen`` / ``hyco http`` listen, and the token (or its source) to use."""
    ep = _endpoint(args)
    host, port = _split_host_port(ep.namespace)
    uri = create_relay_listen_uri(host if ":" not in host else f"[{host}]", ep.path,
                                  scheme=ep.scheme, port=port)
    token = ep.token_for(uri, args.ttl)
    if token is None:
        raise CliError("no credentials: pass --key (and --rule), --token or a connection "
                       "string with a key")
    return ep, uri, token


#: Senders ``hyco listen -K`` holds while it serves another; beyond, they are refused (503).
_MAX_WAITING = 64
#: How often ``hyco listen`` may say it turned senders away (more are counted in the next line).
_TURNED_AWAY_EVERY = 5.0


def _peer(peer: RemoteEndpoint | None) -> str:
    """A sender's address (``remote_endpoint``) as ``host:port``."""
    return host_port(peer.address, peer.port) if peer is not None else "?"


async def _listen(args: argparse.Namespace) -> int:
    """Serve relayed connections one at a time. Every sender is accepted at the relay as soon
    as it arrives (the relay fails a sender with 504 when its listener does not answer within
    about 30 s, hybrid-connections-wire §3.1): with ``-K`` the ones that arrive while another
    is served wait, said on stderr, and are served in turn; without ``-K`` a second sender is
    refused with 503 at once. A lost relay connection is said on stderr; without ``-K`` the
    listener gives up (exit 1) when it has not reconnected within ``--timeout``."""
    from .adapters.asyncio import RelayedRequest, RelayedServer
    from .drivers.decisions import Reject
    from .drivers.http import NOT_IMPLEMENTED, Response
    from .listener import ConnectionRequested, ListenerState

    ep, uri, token = _listen_target(args)
    address = uri.split("?", 1)[0]
    context = client_ssl_context(args.cafile, args.insecure)
    loop = asyncio.get_running_loop()
    waiting: asyncio.Queue[RelayedWebSocket] = asyncio.Queue()
    tasks: set[asyncio.Future[Any]] = set()
    serving = taken = listening = False
    last_error = ""
    offline: Exception | None = None
    lost_at: float | None = None

    def spawn(coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def watch_reconnect() -> None:
        # Only to say so: giving up is the listener's own offline_timeout.
        nonlocal lost_at
        while lost_at is not None and not server.is_listening and not closed.done():
            await asyncio.sleep(0.2)
        if lost_at is not None and server.is_listening:
            lost_at = None
            _note(args, f"reconnected: listening on {address}")

    def on_error(error: Exception) -> None:
        nonlocal last_error, lost_at, offline
        if server.state is ListenerState.OFFLINE:
            offline = error
        last_error = _listener_error_text(error)
        if args.verbose:
            _note(args, f"listener: {last_error}", logging.WARNING)
        if listening and lost_at is None and server.state in (ListenerState.RECONNECT_WAIT,
                                                              ListenerState.CONNECTING):
            lost_at = loop.time()
            _note(args, f"relay connection lost ({last_error}); reconnecting…",
                  logging.WARNING)
            spawn(watch_reconnect())

    turned_away = 0  # senders turned away since the last line that said so
    said_at = -_TURNED_AWAY_EVERY

    def turn_away(who: str, why: str) -> None:
        # Said on stderr, at most once per _TURNED_AWAY_EVERY seconds (a crowd is one line).
        nonlocal turned_away, said_at
        turned_away += 1
        if loop.time() - said_at < _TURNED_AWAY_EVERY:
            return
        more = f" (and {turned_away - 1} more since the last such line)" if turned_away > 1 \
            else ""
        _note(args, f"turned away the sender from {who}: {why}{more}", logging.WARNING)
        turned_away, said_at = 0, loop.time()

    def decide(request: ConnectionRequested) -> Reject | None:
        who = _peer(request.remote_endpoint)
        if taken and not args.keep_open:
            turn_away(who, "serving one connection (503; -K queues them)")
            return Reject(503, "listener busy: it serves one connection (hyco listen "
                               "without --keep-open)")
        if waiting.qsize() >= _MAX_WAITING:
            turn_away(who, f"{_MAX_WAITING} senders are waiting (503)")
            return Reject(503, f"listener busy: {_MAX_WAITING} senders are waiting")
        return None  # accept

    def on_connection(ws: RelayedWebSocket) -> None:
        nonlocal taken
        if taken and not args.keep_open:  # two senders raced past decide()
            turn_away(_peer(ws.remote_endpoint), "serving one connection (1013; -K queues them)")
            spawn(ws.close(1013, "listener busy: it serves one connection"))
            return
        if waiting.qsize() >= _MAX_WAITING:  # accepted together, before any had arrived
            turn_away(_peer(ws.remote_endpoint), f"{_MAX_WAITING} senders are waiting (1013)")
            spawn(ws.close(1013, f"listener busy: {_MAX_WAITING} senders are waiting"))
            return
        taken = True
        if serving or not waiting.empty():
            _note(args, f"connection from {_peer(ws.remote_endpoint)} queued: serving one "
                        f"connection at a time; {waiting.qsize() + 1} waiting")
        waiting.put_nowait(ws)

    def on_request(request: RelayedRequest) -> Response:
        # The relay spreads a hybrid connection's HTTP requests over all its listeners: say
        # so when one lands here, or a `hyco http` on the same name fails now and then in
        # silence (new-user trial). The answer is the listener's usual one. The path only:
        # a query may carry the sender's token (sb-hc-token).
        _note(args, f"answered 501 to a relayed HTTP request ({request.method[:16]} "
                    f"{printable(request.path[:200])}): hyco listen takes WebSocket "
                    "connections only; is another listener (hyco http) meant to serve it? "
                    "The relay shares the hybrid connection's requests among its listeners",
              logging.WARNING)
        return NOT_IMPLEMENTED

    stdin = _Stdin(None if args.no_stdin else sys.stdin.buffer, text=args.text)
    out = sys.stdout.buffer
    status = 0
    # Without -K a lost relay ends the command once it has been gone --timeout seconds.
    server = RelayedServer(uri, token, headers=decide, connection=on_connection,
                           request_handler=on_request,
                           error=on_error, ssl=context, open_timeout=args.timeout,
                           offline_timeout=None if args.keep_open else args.timeout)
    try:
        await server.start()
    except (RelayError, ProtocolError, OSError) as exc:
        await server.close()
        raise _failure("cannot listen at", address, exc, ep) from None
    listening = True
    closed = asyncio.ensure_future(server.wait_closed())  # done: offline (404, token expired)
    try:
        _note(args, f"listening on {address}")
        while True:
            get = asyncio.ensure_future(waiting.get())
            try:
                await asyncio.wait({get, closed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                get.cancel()
            if get.done() and not get.cancelled():
                ws = get.result()
            elif isinstance(offline, ConnectionLostError) and offline.__cause__ is not None:
                raise CliError(f"lost the relay at {address} and could not reconnect within "
                               f"{_shown(args.timeout)} s: "
                               f"{_listener_error_text(offline.__cause__)}")
            else:
                raise CliError(f"the listener at {address} went offline: {last_error}")
            if args.verbose:
                # What the sender asked for (path and application query; .NET's request_url
                # would show sb://host without the port).
                target = urllib.parse.urlsplit(ws.request_url)
                asked = target.path + (f"?{target.query}" if target.query else "")
                _note(args, f"connection from {_peer(ws.remote_endpoint)} to {asked}")
            serving = True
            try:
                status = await _session(ws, stdin, args, out)
            finally:
                serving = False
            if not args.keep_open:
                break
    finally:
        listening = False
        closed.cancel()
        for task in list(tasks):
            task.cancel()
        await server.close()
    return status


async def _send(args: argparse.Namespace) -> int:
    from .adapters.asyncio import relayed_connect

    ep = _endpoint(args)
    host, port = _split_host_port(ep.namespace)
    uri = create_relay_send_uri(host if ":" not in host else f"[{host}]", ep.path,
                                scheme=ep.scheme, port=port, query=args.query or None)
    token = ep.token_for(uri, args.ttl)
    token_text = token() if callable(token) else token
    context = client_ssl_context(args.cafile, args.insecure)
    try:
        ws = await relayed_connect(uri, token_text, headers=_parse_headers(args.header),
                                   subprotocols=args.subprotocol or (), ssl=context,
                                   token_in_query=args.token_in_query,
                                   open_timeout=args.timeout)
    except (RelayError, ProtocolError, OSError, TimeoutError) as exc:
        raise _failure("cannot connect to", uri.split("?", 1)[0], exc, ep) from None
    if args.verbose:
        _note(args, f"connected to {uri.split('?', 1)[0]}"
              + (f" (subprotocol {ws.subprotocol})" if ws.subprotocol else ""))
    stdin = _Stdin(None if args.no_stdin else sys.stdin.buffer, text=args.text)
    return await _session(ws, stdin, args, sys.stdout.buffer)


async def _until_sigterm(coro: Coroutine[object, object, int]) -> int:
    """Run ``coro``; SIGTERM cancels it, which closes its listener or connection cleanly (the
    ``finally`` blocks), and makes the exit status 0: a requested stop is not a failure."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    terminated = False

    def on_sigterm() -> None:
        nonlocal terminated
        terminated = True
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
        return await task
    try:
        status = await task
    except asyncio.CancelledError:
        if terminated:
            return 0
        raise
    else:
        return 0 if terminated else status
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _run_client(coro_fn: Callable[[argparse.Namespace], Coroutine[object, object, int]],
                args: argparse.Namespace) -> int:
    _setup_logging(args.log_level, args.log_format)
    try:
        return asyncio.run(_until_sigterm(coro_fn(args)))
    except KeyboardInterrupt:
        return 130


def cmd_listen(args: argparse.Namespace) -> int:
    return _run_client(_listen, args)


def cmd_send(args: argparse.Namespace) -> int:
    return _run_client(_send, args)


def _add_netcat_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text", "-t", action="store_true",
                        help="text mode: each stdin line is a text message; each received "
                             "message is printed on its own line (default: binary, raw bytes)")
    parser.add_argument("--close-on-eof", "-N", action="store_true",
                        help="close the connection when stdin ends (default: keep receiving "
                             "until the other side closes, like netcat)")
    parser.add_argument("--no-stdin", action="store_true",
                        help="do not read stdin (receive only)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="report connections, errors and a summary per connection "
                             "(bytes each way, time, rate) on stderr")
    _add_log_level(parser, "WARNING",
                   "DEBUG, INFO, WARNING (default: the library's warnings) or ERROR, "
                   "case-insensitive; with --log-format json the status lines (listening, "
                   "-v, errors) are JSON objects too")


# -------------------------------------------------------------------------------------------
# hyco http: an ASGI / WSGI application behind a hybrid connection (docs/http-apps.md)


def _token_hint(url: str, rule: str | None, key: str | None) -> str:
    """The ``hyco token`` command that signs for ``url`` with this rule and key."""
    if rule is None or key is None:
        return ""
    flags = ""
    if not (rule == DEFAULT_RULE_NAME and key == DEVELOPMENT_KEY):
        flags = f" --rule {shlex.quote(rule)} --key {shlex.quote(key)}"
    return f"{PROG} token{flags} {url}"


def _http_banner(kind: str, spec: str, uri: str, out: IO[str], ep: _Endpoint) -> None:
    from .adapters._apps import AppEndpoint

    send_url = AppEndpoint.from_listen_uri(uri).send_url
    hint = _token_hint(send_url, ep.rule, ep.key)
    print(f"{PROG}: serving the {kind} application {spec}\n"
          f"{PROG}: listening on {uri.split('?', 1)[0]}\n"
          f"{PROG}: send requests to {send_url} (with a SAS token that has Send rights"
          + (f", e.g. from `{hint}`)" if hint else ")") + "\n"
          f"{PROG}: press Ctrl-C to stop", file=out, flush=True)


async def _serve_asgi(app: Any, uri: str, token: Any, args: argparse.Namespace,
                      ep: _Endpoint, on_error: Callable[[Exception], None]) -> int:
    from .adapters.asgi import AsgiServer, LifespanError

    server = AsgiServer(app, uri, token, ssl=client_ssl_context(args.cafile, args.insecure),
                        lifespan=args.lifespan, error=on_error)
    try:
        await server.start()
    except LifespanError as exc:
        raise CliError(str(exc)) from None
    except (RelayError, ProtocolError, OSError) as exc:
        raise _failure("cannot listen at", uri.split("?", 1)[0], exc, ep) from None
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    ended = asyncio.ensure_future(server.wait_closed())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        _http_banner("ASGI", args.asgi, uri, sys.stdout, ep)
        await asyncio.wait({ended, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        stopping.cancel()
        await server.close()
    error = ended.exception() if ended.done() and not ended.cancelled() else None
    ended.cancel()
    if error is not None and not stop.is_set():
        raise CliError(f"the listener stopped: {error}")
    return 0


def _serve_wsgi(app: Any, uri: str, token: Any, args: argparse.Namespace,
                ep: _Endpoint, on_error: Callable[[Exception], None]) -> int:
    from .adapters.wsgi import create_server

    server = create_server(app, uri, token, ssl=client_ssl_context(args.cafile, args.insecure),
                           error=on_error)
    try:
        server.start()
    except (RelayError, ProtocolError, OSError) as exc:
        server.close()
        raise _failure("cannot listen at", uri.split("?", 1)[0], exc, ep) from None
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _http_banner("WSGI", args.wsgi, uri, sys.stdout, ep)
        while not stop.wait(0.25) and not server.wait_closed(0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.close()
    if not stop.is_set() and server.error is not None:
        raise CliError(f"the listener stopped: {server.error}")
    return 0


def cmd_http(args: argparse.Namespace) -> int:
    from .adapters._apps import app_kind, load_app

    ep, uri, token = _listen_target(args)
    spec = args.asgi or args.wsgi
    try:
        app = load_app(spec, app_dir=args.app_dir)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if not callable(app):
        raise CliError(f"{spec} is a {type(app).__name__}, not an application")
    kind, wanted = app_kind(app), ("asgi" if args.asgi else "wsgi")
    if kind is not None and kind != wanted:
        raise CliError(f"{spec} looks like a{'n' if kind == 'asgi' else ''} {kind.upper()} "
                       f"application; serve it with --{kind} instead of --{wanted}")
    _setup_logging(args.log_level, args.log_format)

    def on_error(error: Exception) -> None:
        _note(args, f"listener: {_listener_error_text(error)}", logging.WARNING)

    if args.asgi:
        return asyncio.run(_serve_asgi(app, uri, token, args, ep, on_error))
    return _serve_wsgi(app, uri, token, args, ep, on_error)


# -------------------------------------------------------------------------------------------
# hyco status


def cmd_status(args: argparse.Namespace) -> int:
    url = args.url.rstrip("/")
    if "://" not in url:
        url = "http://" + url
    # The emulator prints its WebSocket address (ws:// or wss://) and a connection string's
    # sb:// endpoint: the same port serves HTTP. sb:// says nothing of TLS: the scheme the
    # other commands would guess for that host and port (uris.default_scheme).
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme == "sb":
        parts = urllib.parse.urlsplit("http://" + rest)
        scheme = default_scheme(parts.hostname or "", parts.port)
    url = {"ws": "http", "wss": "https"}.get(scheme, scheme) + sep + rest
    target = url if url.endswith(("/$status", "/health")) else url + "/$status"
    context = None
    if target.startswith("https:"):
        context = client_ssl_context(args.cafile, args.insecure) or ssl.create_default_context()
    try:
        with urllib.request.urlopen(target, timeout=args.timeout, context=context) as response:
            document = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        if exc.code == 403:  # the emulator's own refusal says why (the DNS rebinding guard)
            body = exc.read(2048).decode("utf-8", "replace").strip()
            raise CliError(f"cannot read {target}: 403 {printable(body or str(exc.reason))}"
                           ) from None
        raise CliError(f"cannot read {target}: {exc.code} {exc.reason} (is this a hyco "
                       "emulator's address? it prints it when it starts)") from None
    except (urllib.error.URLError, OSError) as exc:
        cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        parts = urllib.parse.urlsplit(target)
        secure = parts.scheme == "https"
        why = (describe_connect_error(cause, host=parts.hostname or "", secure=secure,
                                      port=parts.port or (443 if secure else 80),
                                      timeout=args.timeout, plain_scheme="http")
               if isinstance(cause, BaseException) else str(cause))
        hint = (" (is `hyco emulator` running there? pass its address with --url)"
                if isinstance(cause, (ConnectionRefusedError, TimeoutError)) else "")
        raise CliError(f"cannot read {target}: {why}{hint}") from None
    except ValueError as exc:
        raise CliError(f"cannot read {target}: not a status document ({exc})") from None
    print(json.dumps(document, indent=2))
    return 0


# -------------------------------------------------------------------------------------------
# plumbing


def _subprotocol(text: str) -> str:
    """A WebSocket subprotocol name: an HTTP token (RFC 6455 §4.1), like ``chat`` or ``v1.json``."""
    if not is_token(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a valid subprotocol name (letters, digits and !#$%&'*+-.^_`|~, "
            "no spaces)")
    return text


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 65535")
    return value


def _lifetime(text: str) -> float:
    """A token lifetime: > 0 (``create_relay_token`` reads 0 as hyco-ws's default 3600 s)."""
    value = _seconds(text, what="more than 0 seconds (and finite)")
    if value == 0:
        raise argparse.ArgumentTypeError(
            "must be more than 0 seconds (a token lifetime of 0 would mean the default, 3600)")
    return value


def _seconds(text: str, what: str = "a non-negative number of seconds") -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < math.inf:  # (NaN fails both)
        raise argparse.ArgumentTypeError(f"must be {what}")
    return value


_N = TypeVar("_N", int, float)


def _shown(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def _ranged(kind: Callable[[str], _N], low: float, high: float, what: str,
            low_open: bool = False) -> Callable[[str], _N]:
    """An argparse type: ``kind(text)`` within ``[low, high]`` (``(low, high]`` when
    ``low_open``); the error says what is allowed (argparse names the flag)."""

    def parse(text: str) -> _N:
        value = kind(text)
        if value != value or (value <= low if low_open else value < low) or value > high:
            bound = f"more than {_shown(low)}" if low_open else f"at least {_shown(low)}"
            raise argparse.ArgumentTypeError(f"must be {what} {bound} and at most "
                                             f"{_shown(high)}, got {text!r}")
        return value

    return parse


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1 << 20, "mb": 1 << 20,
               "mib": 1 << 20}


def _size(text: str) -> int:
    """Bytes: ``262144``, ``256K`` / ``256KiB``, ``1M`` / ``1MiB`` (binary units)."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    unit = _SIZE_UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size in bytes (e.g. 262144, 256K or 1M)")
    return int(match.group(1)) * unit


#: Ranges of the emulator's flags, the same as the config file's (tomlconfig.py).
_MAX_LISTENERS = _ranged(_integer, 1, MAX_LISTENERS_LIMIT, "a number of listeners")
_ACCEPT_TIMEOUT = _ranged(_number, 0, MAX_ACCEPT_TIMEOUT, "a number of seconds", low_open=True)
_AUTO_EXPIRY = _ranged(_number, 0, MAX_AUTO_EXPIRY, "a number of seconds", low_open=True)
_TOKEN_GRACE = _ranged(_number, 0, MAX_TOKEN_GRACE, "a number of seconds")
_CONTROL_MESSAGE = _ranged(_size, MIN_CONTROL_MESSAGE, MAX_CONTROL_MESSAGE, "a size in bytes")
_OPEN_TIMEOUT = _ranged(_number, 0, 86400, "a number of seconds", low_open=True)


#: Fields of the service's structured log lines (``hyco_proto.service.events.log_event``).
_EVENT_FIELDS = ("event", "client", "tracking", "what", "why", "status", "code", "count")


class _UtcFormatter(logging.Formatter):
    """Times in UTC, ISO 8601 with milliseconds and ``Z`` (``2026-11-30T21:02:10.123Z``), as
    the service's other times (the status page, the refusal summaries) are."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = datetime.fromtimestamp(record.created, timezone.utc)
        return f"{stamp:%Y-%m-%dT%H:%M:%S}.{int(record.msecs):03d}Z"


class _JsonFormatter(_UtcFormatter):
    """One JSON object per line: time (UTC, ISO 8601 with milliseconds and ``Z``), level,
    logger, message, and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _EVENT_FIELDS:
            if hasattr(record, name):
                doc[name] = getattr(record, name)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


#: The levels of ``--log-level`` (case-insensitive), least to most severe.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(text: str) -> str:
    """``--log-level``'s type: the name upper-cased, then checked against ``choices``."""
    return text.strip().upper()


def _add_log_level(parser: argparse.ArgumentParser, default: str, text: str) -> None:
    """``--log-level`` and ``--log-format``: every command that logs has both."""
    parser.add_argument("--log-level", type=_log_level, choices=LOG_LEVELS, default=default,
                        metavar="{" + ",".join(LOG_LEVELS) + "}", help=text)
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="text (default) or json: one JSON object per line on stderr")


def _log_handler(fmt: str = "text") -> logging.Handler:
    """The stderr handler of ``--log-format`` ``text`` or ``json``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_UtcFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def _setup_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr: ``level`` applies to the ``hyco_proto`` loggers; other libraries' (the
    root logger's) stay at WARNING or above, so DEBUG does not add asyncio's own lines."""
    if level not in LOG_LEVELS:  # argparse checked it; this is for other callers
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
    value = logging.getLevelName(level)
    logging.basicConfig(level=max(value, logging.WARNING), handlers=[_log_handler(fmt)])
    logging.getLogger("hyco_proto").setLevel(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Azure Relay Hybrid Connections and Web PubSub tools: a local emulator of "
                    "both, SAS tokens, and netcat over a hybrid connection.")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {__version__}, frames: {describe_frames()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    emu = commands.add_parser(
        "emulator", help="run the local relay service in the foreground",
        description="Run the local relay service (hyco-ws, hyco-https and hyco_proto clients "
                    "connect to it). Flags override the --config file.")
    emu.add_argument("--host", help=f"address to bind (default {DEFAULT_HOST})")
    emu.add_argument("--port", type=_port,
                     help="port (default 9090, or 9443 with TLS; 0 picks a free one)")
    emu.add_argument("--key", help=f"key of the rule {DEFAULT_RULE_NAME} (default: the "
                                   "documented development key)")
    emu.add_argument("--config", metavar="FILE", help="TOML configuration (docs/emulator.md)")
    emu.add_argument("--strict", action="store_true",
                     help="refuse unknown hybrid connections with 404 instead of creating "
                          "them on first use")
    emu.add_argument("--hc", action="append", metavar="NAME",
                     help="declare a hybrid connection (repeatable)")
    emu.add_argument("--namespace", help="namespace name used in tracking descriptions")
    emu.add_argument("--tls-cert", metavar="PEM", help="serve wss:// with this certificate")
    emu.add_argument("--tls-key", metavar="PEM", help="... and this private key")
    emu.add_argument("--tls-self-signed", action="store_true",
                     help="serve wss:// with a generated development certificate for "
                          "localhost/127.0.0.1")
    emu.add_argument("--state-dir", metavar="DIR",
                     help="where the development certificate is kept (default "
                          "~/.hyco_proto, or $HYCO_PROTO_STATE_DIR)")
    emu.add_argument("--token-grace", type=_TOKEN_GRACE, metavar="SECONDS",
                     help="keep a listener this long after its token expired before closing "
                          f"it with 1008 (default 60, 0 to {_shown(MAX_TOKEN_GRACE)}, a year)")
    emu.add_argument("--max-listeners", type=_MAX_LISTENERS, metavar="N",
                     help=f"listeners per hybrid connection (default 25, 1 to "
                          f"{MAX_LISTENERS_LIMIT})")
    emu.add_argument("--accept-timeout", type=_ACCEPT_TIMEOUT, metavar="SECONDS",
                     help="how long a sender waits for its listener's rendezvous before 504 "
                          f"(default 30, more than 0, at most {_shown(MAX_ACCEPT_TIMEOUT)})")
    emu.add_argument("--auto-expiry", type=_AUTO_EXPIRY, metavar="SECONDS",
                     help="forget a hybrid connection created on first use after this many "
                          "idle seconds: no listener, no sender waiting, no request in flight "
                          f"(default 300, more than 0, at most {_shown(MAX_AUTO_EXPIRY)}, a year)")
    emu.add_argument("--max-control-message", type=_CONTROL_MESSAGE, metavar="BYTES",
                     help="largest message a listener may send on its control channel; a "
                          "bigger one closes the channel with 1009 (default 256K; "
                          f"{MIN_CONTROL_MESSAGE} bytes to {MAX_CONTROL_MESSAGE >> 20}M; "
                          "K and M suffixes are KiB and MiB)")
    emu.add_argument("--validate-text", action=argparse.BooleanOptionalAction, default=None,
                     help="check the UTF-8 of relayed text messages, failing the sending leg "
                          "with 1007 (default: on; --no-validate-text relays text unchecked, "
                          "as Azure does)")
    emu.add_argument("--webpubsub-port", type=_port, metavar="PORT",
                     help="port of the Web PubSub hubs (default 8080, or a free port when "
                          "8080 is taken; 0 picks a free one)")
    emu.add_argument("--no-webpubsub", action="store_true",
                     help="do not serve the Web PubSub hubs")
    emu.add_argument("--webpubsub-key", metavar="KEY",
                     help="Web PubSub access key (default: the key of "
                          f"{DEFAULT_RULE_NAME}, i.e. --key)")
    emu.add_argument("--event-handler", action="append", metavar="HUB=URL",
                     help="send every event of hub HUB (connect, connected, disconnected and "
                          "user events) to this upstream URL, e.g. "
                          "chat=http://127.0.0.1:3000/eventhandler (repeatable; {event}, "
                          "{hub} and {category} in the URL are replaced)")
    _add_log_level(emu, "INFO",
                   "DEBUG (adds each sender's wait for its listener), INFO (default: "
                   "accepted listeners, relayed pairs and HTTP requests, refusals, "
                   "rejects, handshake failures and protocol closes, one line each "
                   "with the client's address and a tracking id), WARNING (problems of "
                   "the emulator itself), ERROR (its errors only); case-insensitive")
    emu.set_defaults(func=cmd_emulator)

    tok = commands.add_parser(
        "token", help="print a SAS token",
        description="Print a SAS token for URI, signed like hyco-ws createRelayToken.")
    tok.add_argument("uri", nargs="?",
                     help="resource to sign, e.g. http://127.0.0.1:9090/myhc or a listen/send "
                          "URI (optional with --connection-string)")
    tok.add_argument("--rule", "-r", help=f"SAS rule name (default {DEFAULT_RULE_NAME})")
    tok.add_argument("--key", "-k", help="rule key (default: the development key)")
    tok.add_argument("--ttl", type=_lifetime, default=3600.0, metavar="SECONDS",
                     help="lifetime (default 3600)")
    tok.add_argument("--connection-string", "-c", metavar="CS",
                     help="sign with this connection string's rule (for its EntityPath, or "
                          "--path, or the whole namespace)")
    tok.add_argument("--path", "-p", help="with --connection-string: the entity to sign for")
    tok.add_argument("--append", action="store_true",
                     help="print URI with ?sb-hc-token=… appended instead of the token "
                          "(with --connection-string and no URI: the hybrid connection's "
                          "send URI, ws(s)://NAMESPACE/$hc/HC?sb-hc-action=connect&"
                          "sb-hc-token=…)")
    tok.set_defaults(func=cmd_token)

    lst = commands.add_parser(
        "listen", help="listen on a hybrid connection: messages → stdout, stdin → messages",
        description="Accept relayed connections, one at a time: received messages go to "
                    "stdout, stdin goes to the connection. Exits after the first connection "
                    "unless --keep-open. On a terminal, stderr shows the progress of a long "
                    "transfer; -v adds a summary line per connection. A lost relay "
                    "connection is said on stderr and retried.")
    _add_endpoint_options(lst)
    lst.add_argument("--keep-open", "-K", action="store_true",
                     help="accept further connections after one closes. Senders that arrive "
                          "while one is served are accepted at once and wait their turn "
                          f"(stderr says so; up to {_MAX_WAITING}, more are turned away: 503, "
                          "or 1013 when they arrive together); without -K a "
                          "second sender gets 503 at once. With -K a lost relay is retried "
                          "until it is back")
    lst.add_argument("--timeout", type=_OPEN_TIMEOUT, default=10.0, metavar="SECONDS",
                     help="give up (exit 1) when the relay has not accepted the listener after "
                          "this long, at the start or, without -K, after the relay connection "
                          "was lost (default 10)")
    _add_netcat_options(lst)
    lst.set_defaults(func=cmd_listen)

    snd = commands.add_parser(
        "send", help="connect to a hybrid connection: stdin → messages, messages → stdout",
        description="Connect as a sender: stdin goes to the listener, its messages to stdout. "
                    "On a terminal, stderr shows the progress of a long transfer; -v adds a "
                    "summary line at the end.")
    _add_endpoint_options(snd)
    snd.add_argument("--subprotocol", action="append", metavar="NAME", type=_subprotocol,
                     help="offer this WebSocket subprotocol (repeatable)")
    snd.add_argument("--header", "-H", action="append", metavar="'NAME: VALUE'",
                     help="extra connect header, visible to the listener (repeatable)")
    snd.add_argument("--query", "-q", metavar="A=1&B=2",
                     help="application query string, visible to the listener")
    snd.add_argument("--token-in-query", action="store_true",
                     help="send the token as sb-hc-token in the query instead of the "
                          "ServiceBusAuthorization header")
    snd.add_argument("--timeout", type=_seconds, default=30.0, metavar="SECONDS",
                     help="give up connecting after this long (default 30)")
    _add_netcat_options(snd)
    snd.set_defaults(func=cmd_send)

    htp = commands.add_parser(
        "http", help="serve an ASGI or WSGI application through a hybrid connection",
        description="Listen on a hybrid connection and answer its relayed HTTP requests (and, "
                    "for ASGI, WebSockets) with an application, like uvicorn or gunicorn "
                    "would: senders call http(s)://NAMESPACE/HC/PATH. See docs/http-apps.md.")
    which = htp.add_mutually_exclusive_group(required=True)
    which.add_argument("--asgi", metavar="MODULE:APP",
                       help="an ASGI 3 application (Starlette, FastAPI, Django's asgi ...)")
    which.add_argument("--wsgi", metavar="MODULE:APP",
                       help="a WSGI application (Flask, Django's wsgi ...)")
    htp.add_argument("--app-dir", default=".", metavar="DIR",
                     help="import the application with DIR first on sys.path (default: the "
                          "current directory)")
    htp.add_argument("--lifespan", choices=("auto", "on", "off"), default="auto",
                     help="ASGI lifespan startup/shutdown: auto (if the application supports "
                          "it, the default), on (required), off")
    _add_endpoint_options(htp)
    _add_log_level(htp, "INFO", "DEBUG, INFO (default), WARNING or ERROR (case-insensitive)")
    htp.set_defaults(func=cmd_http)

    sta = commands.add_parser(
        "status", help="print the emulator's /$status document",
        description="Print a running emulator's /$status document (its settings, connections "
                    "by kind, counters and hybrid connections) as JSON. Exit 1, saying why, "
                    "when it cannot be read.")
    sta.add_argument("--url", default=f"http://{DEFAULT_HOST}:{DEFAULT_PORT}",
                     help=f"emulator address, http(s)://, the ws(s):// one it prints or "
                          f"a connection string's sb:// endpoint "
                          f"(default http://{DEFAULT_HOST}:{DEFAULT_PORT})")
    sta.add_argument("--cafile", metavar="PEM", help="trust this certificate for https://")
    sta.add_argument("--insecure", action="store_true", help="do not verify TLS")
    sta.add_argument("--timeout", type=_seconds, default=10.0, help=argparse.SUPPRESS)
    sta.set_defaults(func=cmd_status)
    return parser


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports POLLERR on its write end);
    True when that cannot be told (no poll on Windows pipes)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hyco`` command (and ``python -m hyco_proto``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError as exc:
        if _stdout_reader_gone():
            # The reader of our stdout went away (`hyco status | head`): like cat, stop
            # quietly. stdout now points at nothing, so the final flush cannot fail again.
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            return 141  # 128 + SIGPIPE, what a shell reports for a command its pipe ended
        error: Exception = exc  # a socket's EPIPE: an error like any other
    except (CliError, ConfigError) as exc:
        error = exc
    if getattr(args, "log_format", "text") == "json":
        _note(args, f"{args.command}: error: {error}", logging.ERROR)
    else:
        print(f"{PROG} {args.command}: error: {error}", file=sys.stderr)
    return 1
