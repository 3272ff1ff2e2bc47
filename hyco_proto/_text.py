"""Text that came from a peer, made safe to show: the one helper for HTTP reason phrases, close
reasons and log lines built from client input.

A client controls query parameters, header values, token fields and control-channel text. Put
into a status line they can break the response (h11 refuses CR, LF and NUL); put into a log line
they can forge a line of their own. :func:`printable` escapes every character that is not
printable (C0 and C1 controls, DEL, line and paragraph separators, format characters such as
bidi overrides) as ``\\xNN`` / ``\\uNNNN`` / ``\\UNNNNNNNN`` and bounds the length, so what the
client sent stays readable and nothing of it acts on the line it lands in.
"""

from __future__ import annotations

__all__ = ["close_reason", "printable"]

def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str, limit: int = 1024, *, latin1: bool = False) -> str:
    """``text`` with every non-printable character escaped, cut to ``limit`` characters (an
    ellipsis ``…`` marks a cut; ``...`` with ``latin1``). With ``latin1`` (an HTTP reason
    phrase) characters above U+00FF are escaped too, so the result encodes as Latin-1."""
    if len(text) > 4 * limit:
        text = text[: 4 * limit]  # escaping never shrinks: no need to look further
    if text.isprintable() and (not latin1 or text.isascii() or max(text) <= "\xff"):
        out = text
    else:
        out = "".join(
            _escape(ch)
            if not ch.isprintable() or (latin1 and ord(ch) > 0xFF)
            else ch
            for ch in text
        )
    if len(out) > limit:
        mark = "..." if latin1 else "…"
        out = out[: max(0, limit - len(mark))] + mark
    return out


def close_reason(text: str) -> str:
    """``text`` as a WebSocket close reason: :func:`printable`, cut to the 123 UTF-8 bytes a
    close frame holds (RFC 6455 §5.5) without splitting a character."""
    safe = printable(text, 123)
    raw = safe.encode("utf-8")
    return safe if len(raw) <= 123 else raw[:123].decode("utf-8", "ignore")
