"""safe_text: the oracle is Python's own Unicode database, over every code point."""

from __future__ import annotations

import sys
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from gradhealth._text import UNSAFE, safe_markup, safe_text

_CATS = {"Cc", "Cf", "Zl", "Zp", "Cs"}


def test_the_pattern_is_exactly_the_unsafe_categories():
    # characters assigned after Unicode 14 are allowed to differ (newer Pythons): only check
    # those whose category the table we were generated from already knew
    wrong = []
    for cp in range(sys.maxunicode + 1):
        c = chr(cp)
        cat = unicodedata.category(c)
        if cat == "Cn":
            continue
        if (cat in _CATS) != bool(UNSAFE.match(c)):
            wrong.append((hex(cp), cat))
    assert wrong == [] or unicodedata.unidata_version > "14.0.0" and all(w[1] == "Cf" for w in wrong)


@given(st.text())
def test_output_has_no_unsafe_character_and_is_reversible_in_length(s):
    out = safe_text(s)
    assert not any(unicodedata.category(c) in _CATS for c in out)
    assert out == s or len(out) > len(s)
    assert "\n" not in out and "\x1b" not in out


def test_known_attacks():
    assert safe_text("a\nhealthy: no pathology found") == "a\\nhealthy: no pathology found"
    assert safe_text("\x1b]0;pwned\x07x") == "\\x1b]0;pwned\\x07x"
    assert safe_text("x\u2028y\u2029z\u0085") == "x\\u2028y\\u2029z\\x85"
    assert safe_text("ab\u202ecd\u2066e\u2069") == "ab\\u202ecd\\u2066e\\u2069"
    assert safe_text("zero\u200bwidth\ufeff") == "zero\\u200bwidth\\ufeff"
    assert safe_text("tag\U000e0041") == "tag\\U000e0041"
    assert safe_text("plain.layers.0") == "plain.layers.0"
    assert safe_text("çafé.层.🙂") == "çafé.层.🙂"


def test_markup_is_escaped_after_controls():
    assert safe_markup("[red]x\n") == "\\[red]x\\n"


def test_unprintable_object():
    class Bad:
        def __str__(self):
            raise RuntimeError("no")
    assert safe_text(Bad()) == "<unprintable Bad>"


def test_keep_newlines_keeps_only_newline_and_tab():
    assert safe_text("a\nb\tc\x1b\u2028", keep_newlines=True) == "a\nb\tc\\x1b\\u2028"
    assert safe_text("a\r\nb", keep_newlines=True) == "a\\r\nb"
