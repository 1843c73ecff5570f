"""Text from the user's model or disk, made safe to show: the one place that does it.

Layer names, module types, paths and messages that quote them are *data*. A module added as
``model.add_module("x\\x1b[2J", m)`` must not clear the user's terminal, a name holding a
newline must not forge a "healthy" line inside a summary, and a bidi override must not make
a name read backwards. :func:`safe_text` shows every invisible or layout-changing character
as a visible escape (``\\x1b``, ``\\n``, ``\\u202e``): the C0/C1 control characters, the
Unicode line and paragraph separators, and every format character (Unicode category ``Cf``:
bidi embeddings, overrides and isolates, zero-width characters, the BOM, tag characters).
Printable text, accents and CJK included, passes through unchanged, so tables keep their
layout. HTML escaping and rich-markup escaping are separate steps on top of this one
(:func:`safe_markup` for rich).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["safe_text", "safe_markup", "quoted", "UNSAFE"]

#: Every code point of Unicode categories Cc, Cf, Zl, Zp and Cs (Unicode 14, generated with
#: ``unicodedata``; tests/test_text.py checks it against the running Python's table).
UNSAFE = re.compile(
    "[\u0000-\u001f\u007f-\u009f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e"
    "\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ud800-\udfff\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f]")

_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match) -> str:
    c = m.group(0)
    if c in _SHORT:
        return _SHORT[c]
    n = ord(c)
    if n <= 0xFF:
        return f"\\x{n:02x}"
    if n <= 0xFFFF:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def safe_text(value: Any, *, keep_newlines: bool = False) -> str:
    """``str(value)`` with every control, separator and format character shown as an escape.

    Args:
        value: anything; ``str()`` of it is taken (a failing ``__str__`` gives its type).
        keep_newlines: keep ``\\n`` (and ``\\t``) as they are, for multi-line messages and code
            blocks that a renderer lays out itself; every other character is still escaped.

    Returns:
        One line of printable text: ``safe_text("a\\nb") == "a\\\\nb"``.

    >>> safe_text("fc1\\x1b[2J")
    'fc1\\\\x1b[2J'
    >>> safe_text("layer\\u202egnp.exe")
    'layer\\\\u202egnp.exe'
    >>> safe_text("résumé.层")
    'résumé.层'
    """
    try:
        s = value if isinstance(value, str) else str(value)
    except Exception:
        s = f"<unprintable {type(value).__name__}>"
    if not UNSAFE.search(s):
        return s
    if keep_newlines:
        return UNSAFE.sub(lambda m: m.group(0) if m.group(0) in "\n\t" else _escape(m), s)
    return UNSAFE.sub(_escape, s)


def quoted(value: Any) -> str:
    """:func:`safe_text` in quotes, for a name inside a sentence: ``'fc1\\x1b[2J'`` shows one
    backslash per escape (``repr(safe_text(x))`` would double every one of them).

    >>> print(quoted("fc1\x1b[2J"))
    'fc1\\x1b[2J'
    >>> print(quoted("it's"))
    "it's"
    """
    s = safe_text(value)
    return f'"{s}"' if "'" in s and '"' not in s else f"'{s}'"


def safe_markup(value: Any) -> str:
    """:func:`safe_text`, then escaped for rich console markup (``[red]`` shown literally)."""
    from rich.markup import escape

    return escape(safe_text(value))
