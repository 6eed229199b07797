"""One escaping function for everything the CLIs print that came from a message (ids, reasons, descriptions,
bodies, properties): a producer's text must not drive the operator's terminal."""

from __future__ import annotations

__all__ = ["printable"]


def printable(text: object) -> str:
    """`text` (``str()`` of it) safe to print on one terminal line: every character that is not printable is
    escaped as ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``; the rest is left as it is.

    Not printable (Python's `str.isprintable`): C0 controls with ESC, tab and line breaks, DEL, C1 controls (CSI,
    OSC, NEL…), format characters (the bidi overrides and isolates, zero-width characters, the BOM), the Unicode
    line and paragraph separators, spaces other than U+0020, lone surrogates, private-use and unassigned code points.
    So no escape sequence (clear screen, window title, hyperlink), no reordered or hidden text and no extra line
    reaches the terminal.
    """
    value = str(text)
    if value.isprintable():
        return value
    return "".join(character if character.isprintable() else _escaped(character) for character in value)


def _escaped(character: str) -> str:
    code = ord(character)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
