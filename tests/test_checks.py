import math

import pytest

from gradhealth._checks import check_choice, check_int, check_real
from gradhealth.errors import ParameterError


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "2", None])
def test_check_int_rejects(bad):
    with pytest.raises(ParameterError, match="'depth' parameter of f must be an integer >= 1"):
        check_int(bad, "depth", "f", min_value=1)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "1.0", None, 0.0])
def test_check_real_rejects_nonfinite_and_out_of_range(bad):
    with pytest.raises(ParameterError, match="max_norm"):
        check_real(bad, "max_norm", "clip", low=0.0, low_inclusive=False)


def test_check_real_accepts_and_returns_float():
    assert check_real(3, "w", "f") == 3.0 and isinstance(check_real(3, "w", "f"), float)


def test_check_choice_message_lists_choices():
    with pytest.raises(ParameterError, match="one of 'a', 'b'. Got 'c'"):
        check_choice("c", "mode", "f", ["a", "b"])
