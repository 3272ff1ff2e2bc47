"""Relay service configuration: namespaces' SAS rules and hybrid connections.

Development defaults follow the Azurite habit: a fixed, documented key for the default rule
``RootManageSharedAccessKey`` (never use it outside local development), hybrid connections created
on first use unless ``strict`` is set.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_RULE_NAME",
    "DEVELOPMENT_KEY",
    "HybridConnectionConfig",
    "Right",
    "SasRule",
    "ServiceConfig",
]

#: The default namespace rule, named like Azure's.
DEFAULT_RULE_NAME = "RootManageSharedAccessKey"
#: The documented development key of the default rule (like Azurite's well-known account key).
DEVELOPMENT_KEY = "hyco-proto-development-key-do-not-use-in-production="


class Right(str, enum.Enum):
    """SAS rule rights (hybrid-connections-wire §2.4). Manage implies Listen and Send."""

    LISTEN = "Listen"
    SEND = "Send"
    MANAGE = "Manage"


@dataclass(frozen=True, slots=True)
class SasRule:
    """A shared access rule: a name, a key (UTF-8 text, not base64-decoded) and rights."""

    name: str
    key: str
    rights: frozenset[Right] = frozenset({Right.MANAGE, Right.LISTEN, Right.SEND})

    def grants(self, right: Right) -> bool:
        return right in self.rights or Right.MANAGE in self.rights


@dataclass(frozen=True, slots=True)
class HybridConnectionConfig:
    """One hybrid connection; ``rules`` are entity-scoped rules in addition to namespace rules."""

    name: str
    requires_client_authorization: bool = True
    rules: tuple[SasRule, ...] = ()


@dataclass(slots=True)
class ServiceConfig:
    """What the relay service serves and how strictly."""

    rules: tuple[SasRule, ...] = (SasRule(DEFAULT_RULE_NAME, DEVELOPMENT_KEY),)
    hybrid_connections: dict[str, HybridConnectionConfig] = field(default_factory=dict)
    #: Refuse unknown hybrid connections with 404 instead of creating them on first use.
    strict: bool = False
    #: At most this many listeners per hybrid connection (the service's limit is 25).
    max_listeners: int = 25
    #: An accept address is valid this long (hybrid-connections-wire §3.1: about 30 s).
    accept_timeout: float = 30.0
    #: After a listener token's expiry, wait this long before closing with 1008 (§2.6).
    token_grace: float = 60.0
    #: Namespace name used in tracking descriptions.
    namespace: str = "localhost"
    #: Largest message (text or binary, all fragments together) a listener may send on its
    #: control channel; a bigger one is refused with 1009 as soon as its frame header (or a
    #: fragment) says so, before it is buffered. The biggest legitimate ones are a response
    #: body (≤ 64 KiB, larger ones go on a rendezvous) and a ``response`` head with up to
    #: 32 KiB of headers, which JSON escaping at most doubles: 256 KiB leaves room for both.
    max_control_message: int = 256 * 1024
    #: Validate the UTF-8 of relayed text messages as they stream (the pair's Forwarders): the
    #: first invalid byte fails the sending leg with 1007; the other leg hears 1001 (only a TCP
    #: close when the failure fell inside a frame already begun on its side). A listener that
    #: does not check UTF-8 (hyco-ws) would otherwise echo it. Binary messages are never looked
    #: at. The real service does not decode text; False relays it unchecked.
    validate_text: bool = True
    #: A hybrid connection created on first use (not strict, not declared) is forgotten after
    #: this many idle seconds: no listener, no sender waiting, no request in flight.
    auto_expiry: float = 300.0

    @classmethod
    def with_hybrid_connections(cls, names: Iterable[str], **kwargs: object) -> ServiceConfig:
        config = cls(**kwargs)  # type: ignore[arg-type]
        for name in names:
            config.hybrid_connections[name.lower()] = HybridConnectionConfig(name)
        return config

    def lookup(self, path: str, *, create: bool = True) -> HybridConnectionConfig | None:
        """Resolve a hybrid connection from a path ``hc[/suffix]`` by longest configured prefix
        (names may contain '/', hybrid-connections-wire §8), else the first segment when not
        strict (created on first use; with ``create=False`` it is returned but not kept, so
        that :meth:`adopt` can keep it once the request is authorized)."""
        if path and "/" not in path:  # one segment (the usual): the loop's first look only
            found = self.hybrid_connections.get(path.lower())
            if found is not None:
                return found
        segments = [s for s in path.strip("/").split("/") if s]
        if not segments:
            return None
        for count in range(len(segments), 0, -1):
            candidate = "/".join(segments[:count]).lower()
            found = self.hybrid_connections.get(candidate)
            if found is not None:
                return found
        if self.strict:
            return None
        created = HybridConnectionConfig(segments[0])
        if create:
            self.hybrid_connections[segments[0].lower()] = created
        return created

    def adopt(self, hc: HybridConnectionConfig) -> bool:
        """Keep ``hc`` (from ``lookup(create=False)``); True if it was not kept before."""
        key = hc.name.lower()
        if key in self.hybrid_connections:
            return False
        self.hybrid_connections[key] = hc
        return True

    def rules_for(self, hc: HybridConnectionConfig) -> Mapping[str, SasRule]:
        """Rules that may sign for ``hc``; an entity rule wins over a namespace rule of its name."""
        found = {rule.name: rule for rule in self.rules}
        found.update({rule.name: rule for rule in hc.rules})
        return found
