"""HTTP token syntax, the one check shared by header names and subprotocol names.

RFC 7230 §3.2.6 (RFC 2616 §2.2 before it): a token is one or more visible ASCII characters other
than the separators ``()<>@,;:\\"/[]?={}``, space and tab. A WebSocket subprotocol name is a token
(RFC 6455 §4.1), and so is every header name.
"""

from __future__ import annotations

import re

__all__ = ["is_token"]

# fullmatch, not match with "$": "$" would also accept a trailing newline.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def is_token(value: object) -> bool:
    """Whether ``value`` is a non-empty ``str`` made only of HTTP token characters."""
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None
