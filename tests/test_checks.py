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


def test_check_int_fix_names_the_bound_that_was_broken():
    # oracle: the fix, followed literally, passes the check
    import re

    from gradhealth._checks import check_int
    from gradhealth.errors import ParameterError

    for value, lo, hi in [(50, 1, 10), (0, 1, 10), (-3, 0, None), (10 ** 9, None, 1000), ("7", 1, 10)]:
        with pytest.raises(ParameterError) as e:
            check_int(value, "depth", "owner", min_value=lo, max_value=hi)
        fix = e.value.fix
        m = re.search(r"depth=(-?\d+)", fix) or re.search(r"between (-?\d+) and", fix)
        assert m, fix
        assert check_int(int(m.group(1)), "depth", "owner", min_value=lo, max_value=hi) == int(m.group(1))
    with pytest.raises(ParameterError, match=r"depth=10 or smaller"):
        check_int(50, "depth", "owner", min_value=1, max_value=10)
