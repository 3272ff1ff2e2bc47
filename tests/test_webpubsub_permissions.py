"""Web PubSub roles: which groups a client may join and publish to."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyco_proto.webpubsub.permissions import (
    GroupPattern,
    Permissions,
    is_valid_group_name,
    join_leave_group_role,
    send_to_group_role,
)

GROUPS = ["g1", "g2", "chat.room", "x"]

# role -> (groups it may join, groups it may send to), among GROUPS
MATRIX: list[tuple[list[str], set[str], set[str]]] = [
    ([], set(), set()),
    (["webpubsub.joinLeaveGroup"], set(GROUPS), set()),
    (["webpubsub.sendToGroup"], set(), set(GROUPS)),
    (["webpubsub.joinLeaveGroup.g1"], {"g1"}, set()),
    (["webpubsub.sendToGroup.g1"], set(), {"g1"}),
    (["webpubsub.sendToGroup.chat.room"], set(), {"chat.room"}),
    (["webpubsub.joinLeaveGroup.g1", "webpubsub.sendToGroup.g2"], {"g1"}, {"g2"}),
    (["webpubsub.joinLeaveGroups.g?"], {"g1", "g2"}, set()),
    (["webpubsub.sendToGroups.**"], set(), set(GROUPS)),
    (["webpubsub.sendToGroups.*"], set(), {"g1", "g2", "x"}),
    (["webpubsub.joinLeaveGroups.chat.*", "webpubsub.sendToGroup"], {"chat.room"}, set(GROUPS)),
    # Case-sensitive role names and groups; malformed roles grant nothing.
    (["WebPubSub.JoinLeaveGroup", "webpubsub.joinleavegroup.g1"], set(), set()),
    (["webpubsub.joinLeaveGroup.G1"], set(), set()),
    (["webpubsub.joinLeaveGroup.", "webpubsub.sendToGroups.", "webpubsub.sendToGroups"],
     set(), set()),
    (["webpubsub.joinLeaveGroups.******"], set(), set()),
    (["webpubsub.sendToGroup.x.", "webpubsub.sendToGroupx"], set(), set()),
]


@pytest.mark.parametrize("roles,join,send", MATRIX, ids=[" ".join(m[0]) or "none"
                                                        for m in MATRIX])
def test_permission_matrix(roles: list[str], join: set[str], send: set[str]) -> None:
    perms = Permissions.from_roles(roles)
    assert {g for g in GROUPS if perms.can_join(g)} == join
    assert {g for g in GROUPS if perms.can_send(g)} == send


def test_ignored_roles_are_reported() -> None:
    perms = Permissions.from_roles(["webpubsub.sendToGroup", "admin", "webpubsub.joinLeaveGroup.",
                                    "webpubsub.joinLeaveGroups.a\\b"])
    assert perms.ignored == ("admin", "webpubsub.joinLeaveGroup.",
                             "webpubsub.joinLeaveGroups.a\\b")
    assert perms.send_any and not perms.join_any


def test_single_string_is_one_role() -> None:
    assert Permissions.from_roles("webpubsub.joinLeaveGroup").can_join("a")
    with pytest.raises(TypeError):
        Permissions.from_roles([1])  # type: ignore[list-item]


def test_invalid_group_names_are_never_allowed() -> None:
    perms = Permissions.from_roles(["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"])
    for bad in ["", "   ", "x" * 1025]:
        assert not perms.can_join(bad)
        assert not perms.can_send(bad)
    assert perms.can_join("x" * 1024)
    assert is_valid_group_name("a b") and not is_valid_group_name(None)


def test_role_builders() -> None:
    assert join_leave_group_role() == "webpubsub.joinLeaveGroup"
    assert join_leave_group_role("g") == "webpubsub.joinLeaveGroup.g"
    assert send_to_group_role() == "webpubsub.sendToGroup"
    assert send_to_group_role("a.b") == "webpubsub.sendToGroup.a.b"
    with pytest.raises(ValueError):
        send_to_group_role(" ")


# The examples of the wildcard group roles documentation.
@pytest.mark.parametrize("pattern,yes,no", [
    ("chat-*", ["chat-1", "chat-room", "chat-"], ["chat.1", "xchat-1"]),
    ("clientA.*", ["clientA.alpha", "clientA.1"], ["clientA.alpha.room1", "clientB.alpha"]),
    ("clientA.**", ["clientA.alpha", "clientA.alpha.room1"], ["clientB.anything"]),
    ("clientA.rooms.?1", ["clientA.rooms.a1", "clientA.rooms.11"],
     ["clientA.rooms.1", "clientA.rooms.a.1"]),
    ("literal\\*star", ["literal*star"], ["literalXstar"]),
    ("a\\?b\\\\", ["a?b\\"], ["axb\\"]),
    ("**.end", ["x.end", "a.b.end", ".end"], ["end", "xend"]),
    ("?", ["a"], [".", "", "ab"]),
    ("a*b*c", ["abc", "aXbYc", "abbc"], ["ab", "a.b.c"]),
])
def test_pattern_examples(pattern: str, yes: list[str], no: list[str]) -> None:
    compiled = GroupPattern.parse(pattern)
    for group in yes:
        assert compiled.matches(group), group
    for group in no:
        assert not compiled.matches(group), group


@pytest.mark.parametrize("bad", ["", "a\\", "a\\b", "******", "** ** **", "*\\**.*.*.*.*"])
def test_bad_patterns(bad: str) -> None:
    with pytest.raises(ValueError):
        GroupPattern.parse(bad)


def test_five_stars_are_allowed_and_matching_does_not_backtrack() -> None:
    pattern = GroupPattern.parse("*a*a*a*a*b")
    assert not pattern.matches("a" * 1024)  # instant; a backtracking regex would not be
    assert pattern.matches("a" * 1023 + "b")
    assert GroupPattern.parse("**.**.*").matches("a.b.c")
    assert GroupPattern.parse("*\\**.*.*.*").matches("x*y.a.b.c")  # an escaped * is no star


def to_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif ch == "*":
            out.append("[^.]*")
            i += 1
        elif ch == "?":
            out.append("[^.]")
            i += 1
        else:
            out.append(re.escape(ch))
            i += 1
    return re.compile("".join(out), re.DOTALL)


@given(pattern=st.lists(st.sampled_from(["a", "b", ".", "?", "*", "**", "\\*"]),
                        min_size=1, max_size=6).map("".join),
       group=st.text(alphabet="ab.*", max_size=8))
def test_pattern_agrees_with_a_regex(pattern: str, group: str) -> None:
    try:
        compiled = GroupPattern.parse(pattern)
    except ValueError:
        return
    assert compiled.matches(group) == bool(to_regex(pattern).fullmatch(group))
