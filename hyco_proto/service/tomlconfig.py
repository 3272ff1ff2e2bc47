"""The emulator's TOML configuration file → :class:`EmulatorConfig` (a ``ServiceConfig`` plus
where to serve it).

The format is documented, with an example, in ``docs/emulator.md``::

    [server]
    host = "127.0.0.1"
    port = 9090                 # default 9090, or 9443 with [tls]; 0 picks a free port
    strict = true               # unknown hybrid connections get 404 (default: created on use)
    token_grace = 60            # seconds a listener may stay after its token expired
    max_listeners = 25
    max_control_message = 262144  # bytes; bigger control-channel messages are closed with 1009
    validate_text = true        # relayed text must be UTF-8, else 1007 (false: unchecked)

    [tls]                       # optional: serve wss:// instead of ws://
    self_signed = true          # or cert = "cert.pem" and key = "key.pem"

    [[rules]]                   # namespace rules (default: RootManageSharedAccessKey)
    name = "RootManageSharedAccessKey"
    key = "..."
    rights = ["Manage", "Listen", "Send"]

    [hybrid_connections.myhc]
    requires_client_authorization = false
    [[hybrid_connections.myhc.rules]]
    name = "listen-only"
    key = "..."
    rights = ["Listen"]

    [webpubsub]                 # the Web PubSub hubs, on a port of their own
    port = 8080                 # default 8080; 0 picks a free port
    access_key = "..."          # default: the key of RootManageSharedAccessKey (--key)
    enabled = true

    [[webpubsub.hubs.chat.event_handlers]]
    url_template = "http://127.0.0.1:3000/eventhandler/{event}"
    user_events = "*"           # "*", "" or "name1,name2"
    system_events = ["connect", "connected", "disconnected"]

Errors raise :class:`ConfigError` naming the file, the line (when it can be found) and the dotted
key, and suggest the right spelling of a mistyped key. Parsing is pure (:func:`parse_config`);
:func:`load_config` only reads the file first.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..webpubsub.endpoints import validate_hub_name
from ..webpubsub.events import SYSTEM_EVENTS, EventHandler
from .config import (
    DEFAULT_RULE_NAME,
    DEVELOPMENT_KEY,
    HybridConnectionConfig,
    Right,
    SasRule,
    ServiceConfig,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_TLS_PORT",
    "DEFAULT_WEBPUBSUB_PORT",
    "MAX_ACCEPT_TIMEOUT",
    "MAX_AUTO_EXPIRY",
    "MAX_CONTROL_MESSAGE",
    "MAX_LISTENERS_LIMIT",
    "MAX_TOKEN_GRACE",
    "MIN_CONTROL_MESSAGE",
    "ConfigError",
    "EmulatorConfig",
    "TlsConfig",
    "WebPubSubSettings",
    "apply_default_key",
    "default_rule",
    "is_development_key",
    "load_config",
    "parse_config",
    "webpubsub_default_key",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9090
DEFAULT_TLS_PORT = 9443
#: The Web PubSub hubs' port (the official Web PubSub emulator's).
DEFAULT_WEBPUBSUB_PORT = 8080
#: Ranges of the ``[server]`` settings (the ``hyco emulator`` flags use the same ones).
MAX_LISTENERS_LIMIT = 100000
#: Seconds: more than a day for a rendezvous, or a year for the rest, is a mistake.
MAX_ACCEPT_TIMEOUT = 86400.0
MAX_AUTO_EXPIRY = MAX_TOKEN_GRACE = 365 * 86400.0
#: Bytes: the largest legitimate control message is a response head with 32 KiB of headers
#: or a 64 KiB body (docs/emulator.md); 64 MiB is room for anything sane.
MIN_CONTROL_MESSAGE = 1024
MAX_CONTROL_MESSAGE = 64 << 20


class ConfigError(ValueError):
    """The configuration file is not valid; the message names the file, line and key."""


@dataclass(slots=True)
class TlsConfig:
    """How to serve ``wss://``: a certificate and key, or a generated development certificate."""

    cert: Path | None = None
    key: Path | None = None
    self_signed: bool = False
    #: Where a self-signed certificate is written (None: ``~/.hyco_proto``).
    state_dir: Path | None = None


@dataclass(slots=True)
class WebPubSubSettings:
    """The emulator's Web PubSub hubs: whether and where they are served, the access key, and
    each hub's upstream event handlers (hub name in lower case → handlers, in order)."""

    enabled: bool = True
    #: The port (0: any free port; None: 8080, or a free port when 8080 is taken).
    port: int | None = None
    #: The key client tokens and REST calls are signed with (None:
    #: :func:`webpubsub_default_key`).
    access_key: str | None = None
    event_handlers: dict[str, tuple[EventHandler, ...]] = field(default_factory=dict)
    #: Asked for explicitly (by a flag): failing to serve them is an error, not a note.
    required: bool = False


@dataclass(slots=True)
class EmulatorConfig:
    """Everything ``hyco emulator`` needs: the service configuration and where to serve it."""

    service: ServiceConfig = field(default_factory=ServiceConfig)
    host: str = DEFAULT_HOST
    #: The port (0: any free port; None: 9090, or 9443 with TLS).
    port: int | None = None
    tls: TlsConfig | None = None
    webpubsub: WebPubSubSettings = field(default_factory=WebPubSubSettings)
    #: The file this came from, if any.
    source: Path | None = None

    @property
    def effective_port(self) -> int:
        """``port``, or the default: 9090 for ``ws://``, 9443 with TLS."""
        if self.port is not None:
            return self.port
        return DEFAULT_TLS_PORT if self.tls is not None else DEFAULT_PORT


# -------------------------------------------------------------------------------------------
# error reporting


class _Reporter:
    """Builds ``ConfigError`` messages; finds the line of a key in the source text."""

    def __init__(self, text: str, source: str) -> None:
        self.lines = text.splitlines()
        self.source = source

    def _headers(self) -> list[tuple[int, list[str]]]:
        """(line index, dotted name) of every ``[table]`` / ``[[array]]`` header."""
        found = []
        for number, line in enumerate(self.lines):
            match = _HEADER_RE.match(line)
            if match:
                found.append((number, _split_dotted(match.group(1))))
        return found

    def _line_of(self, path: Sequence[str | int]) -> int | None:
        """Best-effort line number (1-based) of the key or table at ``path``."""
        names = [p for p in path if isinstance(p, str)]
        if not names:
            return None
        headers = self._headers()
        # The path names a table itself: its header line.
        if isinstance(path[-1], str):
            for number, dotted in headers:
                if dotted == names:
                    return number + 1
        # Otherwise find the enclosing table's header (the n-th one for array items)...
        table = names[:-1] if isinstance(path[-1], str) else names
        index = next((p for p in reversed(path) if isinstance(p, int)), 0)
        start, end = 0, len(self.lines)
        if table:
            matches = [n for n, dotted in headers if dotted == table]
            if index < len(matches):
                start = matches[index]
            elif matches:
                start = matches[-1]
            following = [n for n, _ in headers if n > start]
            end = following[0] if following else len(self.lines)
        if not isinstance(path[-1], str):
            return start + 1
        # ... then the key inside it.
        key = re.escape(names[-1])
        key_re = re.compile(rf"""^\s*(?:"{key}"|'{key}'|{key})\s*=""")
        for number in range(start, end):
            if key_re.match(self.lines[number]):
                return number + 1
        return start + 1 if table else None

    def error(self, path: Sequence[str | int], message: str) -> ConfigError:
        dotted = _dotted(path)
        line = self._line_of(path)
        where = f"{self.source}:{line}" if line is not None else self.source
        subject = f"{dotted}: " if dotted else ""
        return ConfigError(f"{where}: {subject}{message}")


_HEADER_RE = re.compile(r"^\s*\[\[?\s*(.*?)\s*\]\]?\s*(?:#.*)?$")


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] and name[0] in "\"'":
        return name[1:-1]
    return name


def _split_dotted(header: str) -> list[str]:
    """``hybrid_connections."a.b".rules`` → ``["hybrid_connections", "a.b", "rules"]``."""
    parts = re.findall(r'"[^"]*"|\'[^\']*\'|[^.\s]+', header)
    return [_unquote(p) for p in parts]


def _dotted(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            shown = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"'
            out += ("." if out else "") + shown
    return out


# -------------------------------------------------------------------------------------------
# typed getters


class _Table:
    """One TOML table with its path; getters check types and report unknown keys."""

    def __init__(self, rep: _Reporter, path: Sequence[str | int], data: Any) -> None:
        self.rep = rep
        self.path = list(path)
        if not isinstance(data, dict):
            raise rep.error(path, f"expected a table, got {_type_name(data)}")
        self.data: dict[str, Any] = data

    def check_keys(self, allowed: Sequence[str]) -> None:
        for key in self.data:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = (f"; did you mean '{close[0]}'?" if close
                        else f" (known keys: {', '.join(allowed)})")
                raise self.rep.error([*self.path, key], f"unknown key{hint}")

    def _get(self, key: str, kind: type | tuple[type, ...], what: str) -> Any:
        value = self.data.get(key)
        if value is None:
            return None
        # bool is an int in Python, but not in TOML.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.rep.error([*self.path, key], f"expected {what}, got a boolean")
        if not isinstance(value, kind):
            raise self.rep.error([*self.path, key], f"expected {what}, got {_type_name(value)}")
        return value

    def string(self, key: str, *, required: bool = False, non_empty: bool = True) -> str | None:
        value = self._get(key, str, "a string")
        if value is None and required:
            raise self.rep.error([*self.path, key], "is required")
        if value is not None and non_empty and not value.strip():
            raise self.rep.error([*self.path, key], "must not be empty")
        return value  # type: ignore[no-any-return]

    def boolean(self, key: str) -> bool | None:
        return self._get(key, bool, "true or false")  # type: ignore[no-any-return]

    def integer(self, key: str, *, low: int, high: int) -> int | None:
        value = self._get(key, int, "an integer")
        if value is not None and not low <= value <= high:
            raise self.rep.error([*self.path, key], f"must be between {low} and {high}, "
                                 f"got {value}")
        return value  # type: ignore[no-any-return]

    def seconds(self, key: str, *, high: float, positive: bool = False) -> float | None:
        value = self._get(key, (int, float), "a number of seconds")
        if value is None:
            return None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            kind = "positive" if positive else "non-negative"
            raise self.rep.error([*self.path, key], f"must be a {kind} number of seconds, "
                                 f"got {value}")
        if value > high:
            raise self.rep.error([*self.path, key], f"must be at most {int(high)} seconds, "
                                 f"got {value}")
        return float(value)

    def table(self, key: str) -> _Table | None:
        value = self.data.get(key)
        return None if value is None else _Table(self.rep, [*self.path, key], value)

    def array_of_tables(self, key: str) -> list[_Table] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self.rep.error([*self.path, key],
                                 f"expected an array of tables ([[{_dotted([*self.path, key])}]]),"
                                 f" got {_type_name(value)}")
        return [_Table(self.rep, [*self.path, key, i], item) for i, item in enumerate(value)]


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


# -------------------------------------------------------------------------------------------
# sections

_TOP_KEYS = ("server", "tls", "rules", "hybrid_connections", "webpubsub")
_WPS_KEYS = ("enabled", "port", "access_key", "hubs")
_HUB_KEYS = ("event_handlers",)
_HANDLER_KEYS = ("url_template", "user_events", "system_events")
_SERVER_KEYS = ("host", "port", "namespace", "strict", "token_grace", "auto_expiry",
                "max_listeners",
                "accept_timeout", "max_control_message", "validate_text")
_TLS_KEYS = ("cert", "key", "self_signed", "state_dir")
_RULE_KEYS = ("name", "key", "rights")
_HC_KEYS = ("requires_client_authorization", "rules")
_RIGHTS = {right.value.lower(): right for right in Right}


def _rules(tables: list[_Table]) -> tuple[SasRule, ...]:
    rules: list[SasRule] = []
    seen: set[str] = set()
    for table in tables:
        table.check_keys(_RULE_KEYS)
        name = table.string("name", required=True)
        key = table.string("key", required=True)
        assert name is not None and key is not None
        if name in seen:
            raise table.rep.error([*table.path, "name"], f"rule '{name}' is defined twice")
        seen.add(name)
        raw = table.data.get("rights")
        rights: frozenset[Right]
        if raw is None:
            rights = frozenset(Right)
        else:
            if not isinstance(raw, list) or not raw:
                raise table.rep.error([*table.path, "rights"],
                                      'expected a non-empty array such as ["Listen", "Send"]')
            found: set[Right] = set()
            for item in raw:
                right = _RIGHTS.get(item.lower()) if isinstance(item, str) else None
                if right is None:
                    raise table.rep.error([*table.path, "rights"],
                                          f"unknown right {item!r} (expected Listen, Send or "
                                          "Manage)")
                found.add(right)
            rights = frozenset(found)
        rules.append(SasRule(name, key, rights))
    return tuple(rules)


def _resolve_path(value: str, base: Path | None) -> Path:
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return path


def parse_config(text: str, *, source: str = "<config>", base_dir: Path | None = None,
                 ) -> EmulatorConfig:
    """Parse the TOML ``text``; relative file paths (TLS cert/key) are taken from ``base_dir``.

    Raises :class:`ConfigError`.
    """
    rep = _Reporter(text, source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already says "(at line L, column C)".
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    top = _Table(rep, [], data)
    top.check_keys(_TOP_KEYS)
    result = EmulatorConfig()
    service = result.service

    server = top.table("server")
    if server is not None:
        server.check_keys(_SERVER_KEYS)
        # Each key that is present overrides the default on its target object.
        settings_found: list[tuple[object, str, object]] = [
            (result, "host", server.string("host")),
            (result, "port", server.integer("port", low=0, high=65535)),
            (service, "namespace", server.string("namespace")),
            (service, "strict", server.boolean("strict")),
            (service, "token_grace", server.seconds("token_grace", high=MAX_TOKEN_GRACE)),
            # 0 s would expire every accept address, or forget a hybrid connection at once.
            (service, "accept_timeout", server.seconds("accept_timeout", positive=True,
                                                       high=MAX_ACCEPT_TIMEOUT)),
            (service, "auto_expiry", server.seconds("auto_expiry", positive=True,
                                                    high=MAX_AUTO_EXPIRY)),
            (service, "max_listeners", server.integer("max_listeners", low=1,
                                                      high=MAX_LISTENERS_LIMIT)),
            (service, "max_control_message",
             server.integer("max_control_message", low=MIN_CONTROL_MESSAGE,
                            high=MAX_CONTROL_MESSAGE)),
            (service, "validate_text", server.boolean("validate_text")),
        ]
        for target, name, value in settings_found:
            if value is not None:
                setattr(target, name, value)

    tls = top.table("tls")
    if tls is not None:
        tls.check_keys(_TLS_KEYS)
        settings = TlsConfig()
        cert = tls.string("cert")
        key = tls.string("key")
        settings.self_signed = bool(tls.boolean("self_signed"))
        if (cert is None) != (key is None):
            missing = "key" if key is None else "cert"
            raise rep.error([*tls.path, missing], "is required when "
                            f"{'cert' if missing == 'key' else 'key'} is set")
        if cert is not None and settings.self_signed:
            raise rep.error([*tls.path, "self_signed"],
                            "cannot be combined with cert/key: use one or the other")
        if cert is None and not settings.self_signed:
            raise rep.error(tls.path, 'needs cert and key, or self_signed = true')
        if cert is not None and key is not None:
            settings.cert = _resolve_path(cert, base_dir)
            settings.key = _resolve_path(key, base_dir)
        state_dir = tls.string("state_dir")
        if state_dir is not None:
            settings.state_dir = _resolve_path(state_dir, base_dir)
        result.tls = settings

    rules = top.array_of_tables("rules")
    if rules is not None:
        service.rules = _rules(rules)

    hcs = top.table("hybrid_connections")
    if hcs is not None:
        for name, _ in hcs.data.items():
            hc = _Table(rep, [*hcs.path, name], hcs.data[name])
            if not name.strip("/") or any(not part for part in name.strip("/").split("/")):
                raise rep.error(hc.path, "is not a valid hybrid connection name")
            hc.check_keys(_HC_KEYS)
            requires = hc.boolean("requires_client_authorization")
            hc_rules = hc.array_of_tables("rules")
            clean = name.strip("/")
            if clean.lower() in service.hybrid_connections:
                raise rep.error(hc.path, "is defined twice (names are case-insensitive)")
            service.hybrid_connections[clean.lower()] = HybridConnectionConfig(
                clean,
                requires_client_authorization=True if requires is None else requires,
                rules=_rules(hc_rules) if hc_rules is not None else (),
            )
    wps = top.table("webpubsub")
    if wps is not None:
        _webpubsub(wps, result.webpubsub)
    return result


def _webpubsub(table: _Table, settings: WebPubSubSettings) -> None:
    table.check_keys(_WPS_KEYS)
    enabled = table.boolean("enabled")
    if enabled is not None:
        settings.enabled = enabled
    settings.port = table.integer("port", low=0, high=65535)
    settings.access_key = table.string("access_key")
    hubs = table.table("hubs")
    if hubs is None:
        return
    for name in hubs.data:
        hub = _Table(table.rep, [*hubs.path, name], hubs.data[name])
        try:
            validate_hub_name(name)
        except ValueError as exc:
            raise table.rep.error(hub.path, str(exc)) from None
        hub.check_keys(_HUB_KEYS)
        handlers: list[EventHandler] = []
        for item in hub.array_of_tables("event_handlers") or []:
            item.check_keys(_HANDLER_KEYS)
            template = item.string("url_template", required=True)
            assert template is not None
            user_events = item.string("user_events", non_empty=False)
            raw = item.data.get("system_events", [])
            if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
                names = ", ".join(SYSTEM_EVENTS)
                raise table.rep.error([*item.path, "system_events"],
                                      f"expected an array of event names ({names})")
            try:
                handlers.append(EventHandler(template, "*" if user_events is None
                                             else user_events, frozenset(raw)))
            except ValueError as exc:
                raise table.rep.error(item.path, str(exc)) from None
        settings.event_handlers[name.lower()] = tuple(handlers)


def load_config(path: str | Path) -> EmulatorConfig:
    """Read and parse a TOML configuration file (see :func:`parse_config`)."""
    file = Path(path).expanduser()
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the configuration file: "
                          f"{exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    config = parse_config(text, source=str(file), base_dir=file.parent)
    config.source = file
    return config


def apply_default_key(service: ServiceConfig, key: str | None) -> None:
    """Give the default rule ``RootManageSharedAccessKey`` the key ``key`` (``--key``), adding
    the rule (with every right) when the configuration does not define it."""
    if key is None:
        return
    rules = list(service.rules)
    for index, rule in enumerate(rules):
        if rule.name == DEFAULT_RULE_NAME:
            rules[index] = SasRule(rule.name, key, rule.rights)
            break
    else:
        rules.append(SasRule(DEFAULT_RULE_NAME, key))
    service.rules = tuple(rules)


def webpubsub_default_key(service: ServiceConfig) -> str:
    """The Web PubSub access key when none is configured: the key of the namespace rule
    ``RootManageSharedAccessKey`` (``--key``), else of the first rule with Manage, else the
    development key — never a Listen- or Send-only key."""
    for rule in service.rules:
        if rule.name == DEFAULT_RULE_NAME:
            return rule.key
    managing = [r for r in service.rules if Right.MANAGE in r.rights]
    return managing[0].key if managing else DEVELOPMENT_KEY


def default_rule(service: ServiceConfig) -> SasRule | None:
    """The namespace rule to print connection strings for: the default rule if defined, else
    the first namespace rule granting Manage (or any)."""
    for rule in service.rules:
        if rule.name == DEFAULT_RULE_NAME:
            return rule
    managing = [r for r in service.rules if Right.MANAGE in r.rights]
    if managing:
        return managing[0]
    return service.rules[0] if service.rules else None


def is_development_key(rules: Mapping[str, SasRule] | Sequence[SasRule]) -> bool:
    """Whether any rule still uses the documented development key."""
    items = rules.values() if isinstance(rules, Mapping) else rules
    return any(rule.key == DEVELOPMENT_KEY for rule in items)
