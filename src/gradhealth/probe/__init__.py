"""The probe pillar: is *this* model healthy at this point, before a week of training?

>>> import torch, gradhealth
>>> from gradhealth.probe import probe
>>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> result = probe(net, torch.randn(16, 8))
>>> result.verdict
'healthy'

See :func:`probe` for what is measured, and ``docs/probe.md`` for the thresholds.
"""

from ._analysis import DEFAULT_THRESHOLDS, Thresholds
from .core import probe
from .jacobian import jacobian_spectrum
from .result import (
    VERDICT_ORDER,
    JacobianSpectrum,
    LayerReport,
    MeanFieldCheck,
    ProbeResult,
    ResidualBlock,
    ResidualSummary,
    TimeSeries,
)

__all__ = [
    "probe",
    "ProbeResult",
    "LayerReport",
    "JacobianSpectrum",
    "ResidualBlock",
    "ResidualSummary",
    "TimeSeries",
    "MeanFieldCheck",
    "Thresholds",
    "DEFAULT_THRESHOLDS",
    "VERDICT_ORDER",
    "jacobian_spectrum",
]
