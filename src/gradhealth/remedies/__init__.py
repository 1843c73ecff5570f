"""The cure pillar: remedies for vanishing and exploding gradients, each one call.

* initialisers (in place, matched per layer to the activation that follows, returning an
  :class:`InitSummary`): :func:`he_`, :func:`xavier_`, :func:`lecun_`, :func:`orthogonal_`,
  :func:`critical_`, :func:`gaussian_`, :func:`lsuv_`, :func:`zero_init_residual_`;
* :func:`replace_activation_` (e.g. sigmoid -> relu, then :func:`he_`);
* :func:`forget_gate_bias_`: an LSTM's forget-gate bias (1, or chrono init for long sequences);
* clipping (in place, fused, sync-free, returning the pre-clip norms):
  :func:`clip_by_value_`, :func:`clip_grad_norm_`, :func:`clip_by_layer_norm_`, :func:`agc_`,
  :class:`AutoClip`;
* guards: :func:`skip_nonfinite` (skip a step whose gradients are NaN/Inf);
* :func:`prescribe`: from a diagnosis to ranked remedies naming the calls above;
  :func:`apply_prescription` applies one that changes the model.
"""

from .arch import replace_activation_
from .clip import AutoClip, agc_, clip_by_layer_norm_, clip_by_value_, clip_grad_norm_
from .guards import OVERFLOW_NORM, StepGuard, bad_grads, nonfinite_grads, skip_nonfinite
from .init import InitSummary, critical_, gaussian_, he_, lecun_, lsuv_, orthogonal_, xavier_, zero_init_residual_
from .prescribe import apply_prescription, prescribe
from .recurrent import forget_gate_bias_

__all__ = [
    "he_", "xavier_", "lecun_", "orthogonal_", "critical_", "gaussian_", "lsuv_", "zero_init_residual_",
    "InitSummary", "replace_activation_", "forget_gate_bias_",
    "clip_by_value_", "clip_grad_norm_", "clip_by_layer_norm_", "agc_", "AutoClip",
    "skip_nonfinite", "StepGuard", "nonfinite_grads", "bad_grads", "OVERFLOW_NORM",
    "prescribe", "apply_prescription",
]
