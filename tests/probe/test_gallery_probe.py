"""The probe section of ``gradhealth demo``: broken vs fixed pairs with the measured numbers."""

import pytest

from gradhealth.gallery import SECTIONS, build
from gradhealth.gallery import probe as section


@pytest.mark.slow
def test_probe_section_draws_its_figures(tmp_path):
    assert "probe" in SECTIONS
    res = build(tmp_path, sections=["probe"], progress=False)
    names = sorted(p.name for p in res.files)
    assert names == ["probe_rnn_time.png", "probe_sigmoid_vs_relu.png", "probe_tanh_chaos.png"]
    for p in res.files:
        assert p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size > 5000
    index = res.index_md.read_text()
    assert "verdict **exploding**" in index and "verdict **vanishing**" in index
    assert "verdict **healthy**" in index and "critical_" in index


@pytest.mark.slow
def test_each_pair_is_broken_then_fixed():
    pairs = section._results()
    assert pairs["tanh"][0].verdict == "exploding" and pairs["tanh"][1].verdict == "healthy"
    assert pairs["sigmoid"][0].verdict == "vanishing" and pairs["sigmoid"][1].verdict == "healthy"
    assert pairs["rnn"][0].verdict == "exploding" and pairs["rnn"][1].verdict == "healthy"
