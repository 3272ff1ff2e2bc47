"""Web PubSub client roles and the group permissions they grant (sans-IO).

A client's roles come from its access token's ``role`` claim, a ``connect`` handler's answer or
the REST permission API. Two permissions exist, each in three forms:

- ``webpubsub.joinLeaveGroup`` / ``webpubsub.sendToGroup``: any group;
- ``webpubsub.joinLeaveGroup.<group>`` / ``webpubsub.sendToGroup.<group>``: that one group (the
  rest of the string, dots included, case-sensitive);
- ``webpubsub.joinLeaveGroups.<pattern>`` / ``webpubsub.sendToGroups.<pattern>``: every group
  the wildcard pattern matches (:class:`GroupPattern`).

Role names are case-sensitive; unknown or malformed roles grant nothing and are kept in
:attr:`Permissions.ignored`. A client without roles may still send ``event`` requests; groups
from the token's ``webpubsub.group`` claim are joined without any permission.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

__all__ = [
    "JOIN_LEAVE_GROUP",
    "MAX_GROUP_NAME_LENGTH",
    "MAX_PATTERN_STARS",
    "PERMISSION_NAMES",
    "SEND_TO_GROUP",
    "GroupPattern",
    "Permissions",
    "is_valid_group_name",
    "join_leave_group_role",
    "send_to_group_role",
]

#: Role that lets a client join and leave any group (``.<group>`` narrows it to one group).
JOIN_LEAVE_GROUP = "webpubsub.joinLeaveGroup"
#: Role that lets a client publish to any group (``.<group>`` narrows it to one group).
SEND_TO_GROUP = "webpubsub.sendToGroup"
_JOIN_PATTERN_PREFIX = "webpubsub.joinLeaveGroups."
_SEND_PATTERN_PREFIX = "webpubsub.sendToGroups."

#: The permissions of the REST permission API (``/permissions/{name}/connections/{id}``).
PERMISSION_NAMES = ("joinLeaveGroup", "sendToGroup")

#: Longest group name the official emulator accepts.
MAX_GROUP_NAME_LENGTH = 1024
#: At most this many ``*`` characters (those of ``**`` included) in one wildcard pattern.
MAX_PATTERN_STARS = 5


def is_valid_group_name(name: object) -> bool:
    """Whether ``name`` is a usable group name: a string that is not empty or only whitespace,
    at most 1024 characters (the official emulator's rule; group names are case-sensitive)."""
    return (isinstance(name, str) and 0 < len(name) <= MAX_GROUP_NAME_LENGTH
            and not name.isspace())


def join_leave_group_role(group: str | None = None) -> str:
    """``webpubsub.joinLeaveGroup`` (any group), or ``webpubsub.joinLeaveGroup.<group>``."""
    return _role(JOIN_LEAVE_GROUP, group)


def send_to_group_role(group: str | None = None) -> str:
    """``webpubsub.sendToGroup`` (any group), or ``webpubsub.sendToGroup.<group>``."""
    return _role(SEND_TO_GROUP, group)


def _role(base: str, group: str | None) -> str:
    if group is None:
        return base
    if not is_valid_group_name(group):
        raise ValueError(f"invalid group name {group!r}: expected 1 to {MAX_GROUP_NAME_LENGTH} "
                         "characters, not only whitespace")
    return f"{base}.{group}"


# Pattern tokens: a literal character, or one of these markers.
_ONE = 0      # ?  one character except "."
_STAR = 1     # *  zero or more characters except "."
_DSTAR = 2    # ** zero or more characters, "." included


@dataclass(frozen=True, slots=True)
class GroupPattern:
    """A wildcard group pattern of a ``webpubsub.joinLeaveGroups.`` / ``sendToGroups.`` role.

    ``?`` matches one character except ``.``; ``*`` zero or more characters except ``.``;
    ``**`` zero or more characters including ``.``; ``\\`` escapes ``\\``, ``*`` and ``?``.
    ``.`` separates levels and is only ever matched by ``**`` (or a literal ``.``). At most five
    ``*`` in all. Matching is case-sensitive and runs in time linear in the group name times the
    pattern length (no backtracking).
    """

    text: str
    _tokens: tuple[str | int, ...]

    @classmethod
    def parse(cls, text: str) -> GroupPattern:
        """Compile ``text``; ``ValueError`` says what is wrong with it."""
        if not isinstance(text, str) or not text:
            raise ValueError("a group pattern must be a non-empty string")
        tokens: list[str | int] = []
        stars = 0
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "\\":
                if i + 1 >= len(text) or text[i + 1] not in "\\*?":
                    raise ValueError(f"group pattern {text!r}: '\\' may only escape '\\', '*' "
                                     "or '?'")
                tokens.append(text[i + 1])
                i += 2
                continue
            if ch == "*":
                if i + 1 < len(text) and text[i + 1] == "*":
                    tokens.append(_DSTAR)
                    stars += 2
                    i += 2
                else:
                    tokens.append(_STAR)
                    stars += 1
                    i += 1
                continue
            tokens.append(_ONE if ch == "?" else ch)
            i += 1
        if stars > MAX_PATTERN_STARS:
            raise ValueError(f"group pattern {text!r} has {stars} '*', at most "
                             f"{MAX_PATTERN_STARS} are allowed")
        return cls(text, tuple(tokens))

    def _closure(self, states: set[int]) -> set[int]:
        # A star can match nothing: from a star token, the next token is reachable too.
        todo = list(states)
        while todo:
            i = todo.pop()
            if i < len(self._tokens) and self._tokens[i] in (_STAR, _DSTAR) \
                    and i + 1 not in states:
                states.add(i + 1)
                todo.append(i + 1)
        return states

    def matches(self, group: str) -> bool:
        """Whether the whole of ``group`` matches this pattern."""
        tokens = self._tokens
        end = len(tokens)
        states = self._closure({0})
        for ch in group:
            nxt: set[int] = set()
            for i in states:
                if i == end:
                    continue
                tok = tokens[i]
                if tok == _DSTAR or (tok == _STAR and ch != "."):
                    nxt.add(i)
                elif (tok == _ONE and ch != ".") or tok == ch:
                    nxt.add(i + 1)
            if not nxt:
                return False
            states = self._closure(nxt)
        return end in states


@dataclass(frozen=True, slots=True)
class Permissions:
    """What a set of roles allows; build it with :meth:`from_roles`."""

    join_any: bool = False
    send_any: bool = False
    join_groups: frozenset[str] = frozenset()
    send_groups: frozenset[str] = frozenset()
    join_patterns: tuple[GroupPattern, ...] = ()
    send_patterns: tuple[GroupPattern, ...] = ()
    #: The roles that granted nothing (unknown, an empty group, a bad pattern), in order.
    ignored: tuple[str, ...] = ()
    #: Groups revoked one by one through the REST API: denied whatever else would allow them.
    join_denied: frozenset[str] = frozenset()
    send_denied: frozenset[str] = frozenset()

    @classmethod
    def from_roles(cls, roles: Iterable[str] | str) -> Permissions:
        """Parse role strings (a single string counts as one role, as a JWT ``role`` may be)."""
        if isinstance(roles, str):
            roles = (roles,)
        join_any = send_any = False
        join_groups: set[str] = set()
        send_groups: set[str] = set()
        join_patterns: list[GroupPattern] = []
        send_patterns: list[GroupPattern] = []
        ignored: list[str] = []
        for role in roles:
            if not isinstance(role, str):
                raise TypeError(f"roles must be strings, not {type(role).__name__}")
            if role == JOIN_LEAVE_GROUP:
                join_any = True
            elif role == SEND_TO_GROUP:
                send_any = True
            elif role.startswith(JOIN_LEAVE_GROUP + ".") and \
                    is_valid_group_name(role[len(JOIN_LEAVE_GROUP) + 1:]):
                join_groups.add(role[len(JOIN_LEAVE_GROUP) + 1:])
            elif role.startswith(SEND_TO_GROUP + ".") and \
                    is_valid_group_name(role[len(SEND_TO_GROUP) + 1:]):
                send_groups.add(role[len(SEND_TO_GROUP) + 1:])
            elif role.startswith((_JOIN_PATTERN_PREFIX, _SEND_PATTERN_PREFIX)):
                join = role.startswith(_JOIN_PATTERN_PREFIX)
                prefix = _JOIN_PATTERN_PREFIX if join else _SEND_PATTERN_PREFIX
                try:
                    pattern = GroupPattern.parse(role[len(prefix):])
                except ValueError:
                    ignored.append(role)
                    continue
                (join_patterns if join else send_patterns).append(pattern)
            else:
                ignored.append(role)
        return cls(join_any, send_any, frozenset(join_groups), frozenset(send_groups),
                   tuple(join_patterns), tuple(send_patterns), tuple(ignored))

    def can_join(self, group: str) -> bool:
        """Whether the client may join (and leave) ``group``."""
        return group not in self.join_denied and _allowed(
            group, self.join_any, self.join_groups, self.join_patterns)

    def can_send(self, group: str) -> bool:
        """Whether the client may publish to ``group``."""
        return group not in self.send_denied and _allowed(
            group, self.send_any, self.send_groups, self.send_patterns)

    # -- the REST permission API (grant / revoke / check) -----------------------------------
    #
    # ``permission`` is ``joinLeaveGroup`` or ``sendToGroup`` (PERMISSION_NAMES); ``group`` is
    # the request's ``targetName``, ``None`` meaning every group.

    def granted(self, permission: str, group: str | None = None) -> Permissions:
        """These permissions plus ``permission`` on ``group`` (every group when ``None``; that
        also lifts the earlier revocations of single groups)."""
        join = _is_join(permission)
        if group is None:
            if join:
                return replace(self, join_any=True, join_denied=frozenset())
            return replace(self, send_any=True, send_denied=frozenset())
        _check_group(group)
        if join:
            return replace(self, join_groups=self.join_groups | {group},
                           join_denied=self.join_denied - {group})
        return replace(self, send_groups=self.send_groups | {group},
                       send_denied=self.send_denied - {group})

    def revoked(self, permission: str, group: str | None = None) -> Permissions:
        """These permissions without ``permission`` on ``group``; ``None`` revokes it on every
        group (the any-group role, single groups and patterns alike)."""
        join = _is_join(permission)
        if group is None:
            if join:
                return replace(self, join_any=False, join_groups=frozenset(), join_patterns=(),
                               join_denied=frozenset())
            return replace(self, send_any=False, send_groups=frozenset(), send_patterns=(),
                           send_denied=frozenset())
        _check_group(group)
        # A group covered by the any-group role or a pattern stays denied until granted again.
        if join:
            return replace(self, join_groups=self.join_groups - {group},
                           join_denied=self.join_denied | {group})
        return replace(self, send_groups=self.send_groups - {group},
                       send_denied=self.send_denied | {group})

    def has(self, permission: str, group: str | None = None) -> bool:
        """Whether ``permission`` is held on ``group``; with ``None``, on every group."""
        join = _is_join(permission)
        if group is None:
            return (self.join_any and not self.join_denied) if join else (
                self.send_any and not self.send_denied)
        return self.can_join(group) if join else self.can_send(group)


def _allowed(group: str, any_group: bool, groups: frozenset[str],
             patterns: tuple[GroupPattern, ...]) -> bool:
    if not is_valid_group_name(group):
        return False
    return any_group or group in groups or any(p.matches(group) for p in patterns)


def _is_join(permission: str) -> bool:
    if permission not in PERMISSION_NAMES:
        raise ValueError(f"unknown permission {permission!r}: expected one of "
                         f"{', '.join(PERMISSION_NAMES)}")
    return permission == "joinLeaveGroup"


def _check_group(group: str) -> None:
    if not is_valid_group_name(group):
        raise ValueError(f"invalid group name {group!r}: expected 1 to {MAX_GROUP_NAME_LENGTH} "
                         "characters, not only whitespace")
