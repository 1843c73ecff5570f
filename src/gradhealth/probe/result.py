"""What a probe returns: frozen records of numbers, JSON-safe, printable and plottable.

The report layer (:mod:`gradhealth.report.probe_view`) draws these records; it never looks at
the model. ``None`` means *not measured* (the reason is in ``LayerReport.note`` or
``ProbeResult.notes``); ``nan``/``inf`` are measurements.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from ..events import jsonable

__all__ = ["LayerReport", "JacobianSpectrum", "ResidualBlock", "ResidualSummary", "TimeSeries",
           "MeanFieldCheck", "ProbeResult", "VERDICT_ORDER"]

#: Verdicts from most to least severe; the overall verdict is the first one any layer has.
VERDICT_ORDER = ("nonfinite", "exploding", "vanishing", "dead_units", "saturated", "healthy")


def _plain(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


@dataclass(frozen=True)
class LayerReport:
    """One layer: a module that owns parameters, in forward execution order.

    Attributes:
        index: position in forward execution order (0 = first layer to run).
        name: qualified module name (``"encoder.layers.3.linear1"``).
        type: class name (``"Linear"``).
        calls: how many times its forward ran (> 1: shared weights or a recurrent cell).
        out_shape: shape of its (first) output on the first call.
        n_params: number of parameters it owns directly (including folded ones, see ``note``).
        trainable: ``"all"``, ``"partial"`` or ``"frozen"``.
        out_mean, out_std, out_nonfinite: forward statistics of its output.
        activation: elementwise nonlinearity applied to its output (``"relu"``, ``"tanh"``...),
            detected from the forward pass, or ``None``.
        act_zero_frac: fraction of exact zeros after the activation.
        act_dead_frac: fraction of units that are 0 on the whole batch (relu family).
        act_saturated_frac: fraction of entries in the flat tails (tanh/sigmoid family).
        weight_norm: 2-norm of its parameters.
        grad_norm: 2-norm of ``dL/dtheta`` for its trainable parameters (``None``: frozen or
            no gradient reaches them).
        grad_to_weight: ``grad_norm / weight_norm``.
        out_grad_norm: 2-norm of ``dL/d(output)`` under the loss.
        gain: backward gain from the model output to this layer's output,
            ``||J^T w|| / ||w||`` for Gaussian ``w`` at the output (root mean square over
            probes); 1 at the output itself. For a module called several times, the gain of
            its last call (per-call gains are in ``ProbeResult.recurrent``).
        gain_ratio: ``gain / gain`` of the layer nearest the output (how much stronger the
            backward signal is here than at the top).
        growth: ``gain / gain`` of the next layer towards the output (per-layer growth factor).
        gsc: gradient scale coefficient relative to the output (Philipp et al. 2018).
        verdict: one of :data:`VERDICT_ORDER`.
        evidence: the numbers behind the verdict.
        note: what could not be measured and why, or anything unusual.
    """

    index: int
    name: str
    type: str
    calls: int
    out_shape: tuple
    n_params: int
    trainable: str
    out_mean: float | None = None
    out_std: float | None = None
    out_nonfinite: int | None = None
    activation: str | None = None
    act_zero_frac: float | None = None
    act_dead_frac: float | None = None
    act_saturated_frac: float | None = None
    weight_norm: float | None = None
    grad_norm: float | None = None
    grad_to_weight: float | None = None
    out_grad_norm: float | None = None
    gain: float | None = None
    gain_ratio: float | None = None
    growth: float | None = None
    gsc: float | None = None
    verdict: str = "healthy"
    evidence: dict = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict:
        return jsonable(_plain(self))


@dataclass(frozen=True)
class JacobianSpectrum:
    """Top singular values of the input-output Jacobian (Pennington et al. 2017).

    Attributes:
        top: the largest singular values, descending (Lanczos Ritz values).
        rms: root mean square singular value, ``sqrt(||J||_F^2 / min(m, n))`` (Hutchinson).
        spread: ``top[0] / rms``: 1 for an isometry; large when a few directions dominate.
        wrt: what "input" means here (``"input[0]"`` or the first layer's output for integer
            inputs).
        examples: number of examples the Jacobian was measured on.
        shape: ``(m, n)`` of the (sub-batch) Jacobian.
        steps: Lanczos steps taken.
        operator: ``"J^T J"`` or ``"J J^T"`` (the smaller side).
        converged: whether the top value's last Lanczos change was below 1%.
    """

    top: tuple
    rms: float
    spread: float
    wrt: str
    examples: int
    shape: tuple
    steps: int
    operator: str
    converged: bool

    def to_dict(self) -> dict:
        return jsonable(_plain(self))


@dataclass(frozen=True)
class ResidualBlock:
    """One residual addition ``out = skip + branch`` found in the forward pass.

    Attributes:
        index: 0-based order of the addition.
        after: the last layer of the branch (qualified name), for orientation.
        branch_layers: the parameter-owning layers inside the branch.
        forward_ratio: ``||branch|| / ||skip||`` (1/k for a k-diluted block, Philipp et al.).
        backward_ratio: ``||J_branch^T g|| / ||g||``: gradient through the branch relative to
            the skip path, for the probe cotangent ``g`` at the block output.
    """

    index: int
    after: str
    branch_layers: tuple
    forward_ratio: float
    backward_ratio: float | None

    def to_dict(self) -> dict:
        return jsonable(_plain(self))


@dataclass(frozen=True)
class ResidualSummary:
    """Residual structure and effective depth.

    Attributes:
        blocks: the residual additions in forward order.
        effective_depth: expected number of residual branches on a gradient path, each path
            weighted by its squared contribution: ``sum_i r_i^2 / (1 + r_i^2)`` with ``r_i`` the
            backward branch-to-skip ratio (see ``docs/probe.md``).
        effective_layers: the same in parameter layers (each branch counted with its layers).
        compositional_depth: number of residual blocks.
    """

    blocks: tuple
    effective_depth: float
    effective_layers: float
    compositional_depth: int

    def to_dict(self) -> dict:
        d = _plain(self)
        d["blocks"] = [b.to_dict() for b in self.blocks]
        return jsonable(d)


@dataclass(frozen=True)
class TimeSeries:
    """Gradient with respect to the hidden state at each time step (time is depth).

    Attributes:
        layer: the recurrent module's name (``"rnn"``), with ``" (layer k, reverse)"`` for a
            stacked/bidirectional one.
        kind: ``"unrolled"`` (nn.RNN/LSTM/GRU replayed step by step with its own weights) or
            ``"calls"`` (a module called once per step, e.g. an RNNCell in a loop).
        gains: ``||dL/dh_t|| / ||w||`` per step, in forward time order.
        growth_per_step: geometric-mean factor per step towards the past.
        ratio: gain at the worst step / gain at the last step.
        worst_step: the step (0-based) where the gradient is most extreme.
        spectral_radius: of the recurrent weight matrix, when it has one.
        verdict: the verdict of this series.
    """

    layer: str
    kind: str
    gains: tuple
    growth_per_step: float | None
    ratio: float | None
    worst_step: int | None
    spectral_radius: float | None
    verdict: str = "healthy"

    def to_dict(self) -> dict:
        return jsonable(_plain(self))


@dataclass(frozen=True)
class MeanFieldCheck:
    """Measured per-layer growth against the mean-field prediction for a plain FC stack.

    Attributes:
        layers: the stack (first and last names).
        depth: number of layers in the stack.
        activation: the stack's activation.
        sigma_w2, sigma_b2: estimated from the weights: ``fan_in * mean(W^2)``, ``mean(b^2)``.
        chi_1_measured: median over the stack of ``(gain_l / gain_{l+1})^2``.
        chi_1_theory: :func:`gradhealth.theory.meanfield.chi_1` at those values (None if the
            theory is unavailable for the activation).
        critical_sigma_w2: the critical weight variance at ``sigma_b2`` (None if unknown).
        phase: ``"ordered"``, ``"critical"`` or ``"chaotic"`` from the measurement.
    """

    layers: tuple
    depth: int
    activation: str
    sigma_w2: float
    sigma_b2: float
    chi_1_measured: float
    chi_1_theory: float | None
    critical_sigma_w2: float | None
    phase: str

    def to_dict(self) -> dict:
        return jsonable(_plain(self))


@dataclass(frozen=True)
class ProbeResult:
    """The diagnosis of one model on one batch.

    Attributes:
        verdict: overall verdict, the most severe of the findings (see :data:`VERDICT_ORDER`).
        worst_layer: where the overall problem is worst (``None`` when healthy).
        layers: one :class:`LayerReport` per parameter-owning module, forward order.
        findings: :class:`~gradhealth.events.Event` records (``step=None``), most severe first.
        prescriptions: ranked :class:`~gradhealth.events.Prescription` records.
        jacobian: input-output Jacobian spectrum, or ``None`` (see ``notes``).
        residual: residual blocks and effective depth, or ``None`` (no residual additions).
        recurrent: per-time-step gradient series, one per recurrent layer/direction.
        meanfield: mean-field comparison for the longest plain fully connected stack, or None.
        loss: ``{"kind": "surrogate" | "user" | "mse" | "ce", "value": float}``.
        settings: the probe's settings (mode, seed, probes, batch size...).
        notes: what could not be measured, and why.
    """

    verdict: str
    worst_layer: str | None
    layers: tuple
    findings: tuple = ()
    prescriptions: tuple = ()
    jacobian: JacobianSpectrum | None = None
    residual: ResidualSummary | None = None
    recurrent: tuple = ()
    meanfield: MeanFieldCheck | None = None
    loss: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    notes: tuple = ()

    # -- access ---------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        """True when no finding reached a verdict other than healthy."""
        return self.verdict == "healthy"

    def layer(self, name: str) -> LayerReport:
        """The :class:`LayerReport` of the module called ``name`` (KeyError if none)."""
        for lr in self.layers:
            if lr.name == name:
                return lr
        raise KeyError(f"no layer named {name!r}; layers: {', '.join(l.name for l in self.layers)}")

    @property
    def summary(self) -> str:
        """One sentence: the verdict and the main evidence."""
        if self.verdict == "healthy":
            n = len(self.layers)
            return f"healthy: {n} layer{'s' if n != 1 else ''}, no vanishing, exploding, dead or saturated layer found"
        top = self.findings[0] if self.findings else None
        return top.message if top is not None else self.verdict

    # -- output ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Everything as plain JSON types; NaN/Inf become ``"nan"``/``"inf"`` strings."""
        return {
            "verdict": self.verdict,
            "worst_layer": self.worst_layer,
            "summary": self.summary,
            "loss": jsonable(self.loss),
            "settings": jsonable(self.settings),
            "layers": [lr.to_dict() for lr in self.layers],
            "findings": [e.to_dict() for e in self.findings],
            "prescriptions": [jsonable(p.to_dict()) for p in self.prescriptions],
            "jacobian": self.jacobian.to_dict() if self.jacobian else None,
            "residual": self.residual.to_dict() if self.residual else None,
            "recurrent": [t.to_dict() for t in self.recurrent],
            "meanfield": self.meanfield.to_dict() if self.meanfield else None,
            "notes": list(self.notes),
        }

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as a JSON string (``allow_nan=False``: nothing non-standard)."""
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)

    def __rich__(self):
        from ..report.probe_view import render

        return render(self)

    def __str__(self) -> str:
        from ..report.probe_view import render_text

        return render_text(self)

    def __repr__(self) -> str:
        return (f"ProbeResult(verdict={self.verdict!r}, worst_layer={self.worst_layer!r}, "
                f"layers={len(self.layers)}, findings={len(self.findings)}, "
                f"prescriptions={len(self.prescriptions)})")

    def _repr_html_(self) -> str:
        from ..report.probe_view import render_html

        return render_html(self)

    def plot(self, ax=None, what: str = "auto"):
        """Gradient flow by depth on a log scale, coloured by verdict (NaN/Inf marked).

        Args:
            ax: a matplotlib Axes to draw on; a new figure when ``None``.
            what: ``"layers"``, ``"time"`` (per-time-step series of recurrent layers) or
                ``"auto"`` (time when a recurrent series carries the verdict).

        Returns:
            The Axes.
        """
        from ..report.probe_view import plot

        return plot(self, ax=ax, what=what)
