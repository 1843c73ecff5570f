"""The string options of watch() and probe() are Literal types: a type checker catches a
misspelling at the call site (issue 8). Oracle: mypy itself, on a snippet with known typos."""

from __future__ import annotations

import textwrap

import pytest

api = pytest.importorskip("mypy.api")

BAD = textwrap.dedent('''
    import torch
    from torch import nn
    from gradhealth.probe import probe
    from gradhealth.watch import watch

    m = nn.Linear(2, 2)
    o = torch.optim.SGD(m.parameters(), lr=0.1)
    watch(m, o, on_nonfinite="skp")
    watch(m, o, rollback_storage="dsk")
    probe(m, torch.randn(2, 2), mode="evl")
''')


def test_misspelled_string_options_are_type_errors(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text(BAD)
    out, err, code = api.run([str(f), "--follow-imports=silent", "--ignore-missing-imports",
                              "--no-error-summary", "--cache-dir", str(tmp_path / ".mypy")])
    assert code == 1, out + err
    lines = [ln for ln in out.splitlines() if ": error:" in ln]
    assert len(lines) == 3, out
    for typo in ("'skp'", "'dsk'", "'evl'"):
        assert any(typo in ln for ln in lines), (typo, out)
