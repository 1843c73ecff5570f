import os

os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state (numpy and torch)."""
    import numpy as np

    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:  # theory tests run without torch too
        pass
    yield
