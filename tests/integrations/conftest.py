"""The fixtures of the integration tests (the helpers are in integration_common.py)."""

from __future__ import annotations

import pytest
from integration_common import plain_loop


@pytest.fixture(scope="session")
def nan_run(tmp_path_factory):
    """A run store of the plain loop with the planted NaN."""
    import warnings

    d = tmp_path_factory.mktemp("nan_run") / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = plain_loop(run_dir=d)
    return d, w
