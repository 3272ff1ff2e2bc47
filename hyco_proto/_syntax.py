"""HTTP token syntax, the one check shared by header names and subprotocol names.

RFC 7230 §3.2.6 (RFC 2616 §2.2 before it): a token is one or more visible ASCII characters other
than the separators ``()<>@,;:\\"/[]?={}``, space and tab. A WebSocket subprotocol name is a token
(RFC 6455 §4.1), and so is every header name.
"""

from __future__ import annotations

import re

__all__ = ["is_token", "split_target"]

# fullmatch, not match with "$": "$" would also accept a trailing newline.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def is_token(value: object) -> bool:
    """Whether ``value`` is a non-empty ``str`` made only of HTTP token characters."""
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def split_target(target: str) -> tuple[str, str]:
    """``(path, query)`` of an HTTP request target. The origin form (RFC 9112 §3.2.1) is split
    by hand: ``urllib.parse.urlsplit`` reads ``//x]/`` as an authority and raises. The
    absolute form goes through urlsplit; one it cannot parse keeps the whole target as its
    path (it then matches no route)."""
    from urllib.parse import urlsplit

    if target.startswith("/") or "://" not in target:
        path, _, query = target.partition("#")[0].partition("?")
        return path or "/", query
    try:
        parts = urlsplit(target)
    except ValueError:
        return target, ""
    return parts.path or "/", parts.query
