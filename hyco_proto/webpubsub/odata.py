"""The OData ``filter`` of Web PubSub REST sends and ``:addToGroups`` (a small subset, sans-IO).

What is understood (Azure's "OData filter syntax" for Web PubSub, reduced):

- the subjects ``userId`` and ``connectionId`` (strings, ``null`` for an anonymous user) and
  ``groups`` (the connection's groups, only on the right of ``in``);
- string literals in single quotes (``''`` is a quote) and ``null``;
- ``eq``, ``ne``, ``lt``, ``le``, ``gt``, ``ge`` (ordinal string comparison; any comparison with
  ``null`` other than ``eq`` / ``ne`` is false), ``x in groups``, ``x in ('a', 'b')``;
- ``and``, ``or``, ``not`` and parentheses, with the usual precedence (not > and > or).

Anything else (functions, numbers, other subjects) is a :class:`ValueError` saying so, which the
REST API answers with 400: a filter is never silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["FilterSubject", "parse_filter"]

_TOKEN = re.compile(r"\s*(?:('(?:[^']|'')*')|(\()|(\))|(,)|([A-Za-z_][A-Za-z0-9_]*)|(\S))")
_COMPARE = {"eq", "ne", "lt", "le", "gt", "ge"}
_MAX_LENGTH = 4096
#: How deep parentheses and ``not`` may nest: the parser recurses once per level (three frames
#: for a parenthesis), so without a bound a 4096-character filter of ``(`` or ``not`` raised
#: RecursionError instead of ValueError.
_MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class FilterSubject:
    """What a filter sees of one connection."""

    connection_id: str
    user_id: str | None
    groups: frozenset[str]


Value = str | None
Predicate = Callable[[FilterSubject], bool]
Operand = Callable[[FilterSubject], Value]


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:  # only trailing whitespace is left
            break
        pos = m.end()
        if m.group(6) is not None:
            raise ValueError(f"unexpected character {m.group(6)!r} at {m.start(6)}")
        out.append(next(g for g in m.groups() if g is not None))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0
        self.depth = 0  # parentheses and ``not`` open around the current position

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, what: str = "more") -> str:
        """The next token; ``what`` says what was wanted when there is none."""
        tok = self.peek()
        if tok is None:
            raise ValueError(f"the filter ends early, expected {what}")
        self.pos += 1
        return tok

    def expect(self, literal: str) -> None:
        tok = self.take(repr(literal))
        if tok != literal:
            raise ValueError(f"expected {literal!r}, found {tok!r}")

    def parse_or(self) -> Predicate:
        left = self.parse_and()
        while self.peek() == "or":
            self.take()
            right = self.parse_and()
            left = (lambda a, b: lambda s: a(s) or b(s))(left, right)
        return left

    def parse_and(self) -> Predicate:
        left = self.parse_not()
        while self.peek() == "and":
            self.take()
            right = self.parse_not()
            left = (lambda a, b: lambda s: a(s) and b(s))(left, right)
        return left

    def parse_not(self) -> Predicate:
        tok = self.peek()
        if tok != "not" and tok != "(":
            return self.parse_comparison()
        self.take()
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise ValueError(f"the filter nests parentheses and 'not' more than {_MAX_DEPTH} "
                             "deep")
        if tok == "not":
            inner = self.parse_not()
            self.depth -= 1
            return lambda s: not inner(s)
        inner = self.parse_or()
        self.expect(")")
        self.depth -= 1
        return inner

    def parse_operand(self) -> Operand:
        tok = self.take("a value")
        if tok.startswith("'"):
            literal = tok[1:-1].replace("''", "'")
            return lambda s: literal
        if tok == "null":
            return lambda s: None
        if tok == "userId":
            return lambda s: s.user_id
        if tok == "connectionId":
            return lambda s: s.connection_id
        if tok == "groups":
            raise ValueError("'groups' may only follow 'in' (e.g. 'group1' in groups)")
        raise ValueError(f"unsupported filter term {tok!r}: this emulator knows userId, "
                         "connectionId, groups, string literals and null")

    def parse_comparison(self) -> Predicate:
        left = self.parse_operand()
        op = self.take("an operator")
        if op == "in":
            if self.peek() == "groups":
                self.take()
                return lambda s: (v := left(s)) is not None and v in s.groups
            self.expect("(")
            items = [self.parse_operand()]
            while self.peek() == ",":
                self.take()
                items.append(self.parse_operand())
            self.expect(")")
            return lambda s: left(s) in {item(s) for item in items}
        if op not in _COMPARE:
            raise ValueError(f"unsupported operator {op!r}: expected eq, ne, lt, le, gt, ge or in")
        right = self.parse_operand()
        return lambda s: _compare(op, left(s), right(s))


def _compare(op: str, a: Value, b: Value) -> bool:
    if op == "eq":
        return a == b
    if op == "ne":
        return a != b
    if a is None or b is None:
        return False
    return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[op]


def parse_filter(text: str) -> Predicate:
    """Compile ``text`` into a predicate on :class:`FilterSubject`; ``ValueError`` when it is
    malformed or uses more than the subset this module supports."""
    if len(text) > _MAX_LENGTH:
        raise ValueError(f"the filter is longer than {_MAX_LENGTH} characters")
    parser = _Parser(text)
    if parser.peek() is None:
        raise ValueError("the filter is empty")
    predicate = parser.parse_or()
    if parser.peek() is not None:
        raise ValueError(f"unexpected {parser.peek()!r} after a complete expression")
    return predicate
