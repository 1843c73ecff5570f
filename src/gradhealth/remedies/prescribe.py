"""From a diagnosis to ranked, concrete remedies: the one prescription table of gradhealth.

The probe's verdicts and the watcher's detectors both call :func:`prescribe` with a kind
(one of :data:`gradhealth.events.KINDS`) and the numbers they measured (the *evidence*).
Each :class:`~gradhealth.events.Prescription` names a gradhealth function with concrete
arguments computed from that evidence, and says why in numbers::

    >>> prescribe("exploding", {"chi_1_estimate": 1.9, "activation": "tanh", "sigma_b2": 0.05})[0].code
    "gradhealth.remedies.critical_(model, activation='tanh', sigma_b2=0.05)"

In ``code``, ``model``, ``optimizer`` and ``inputs`` stand for the user's objects. A
prescription whose code is not a gradhealth call (an architecture change, a learning-rate
change) starts with ``#`` or is a plain Python statement.

Evidence keys (all optional; a missing or unreadable value makes the prescription less
specific, never an error):

================== ================================================================
key                meaning
================== ================================================================
growth_per_layer   factor by which the backward gradient norm changes per layer (per time
                   step for a recurrent net; ``growth_per_step`` is read as an alias)
chi_1_estimate     mean-field chi_1 (mean squared singular value of a layer Jacobian)
activation         activation name (``'tanh'``, ``'relu'``, ...)
sigma_w2, sigma_b2 current weight / bias variance (weights as ``sigma_w2 / fan_in``)
worst_layer        name of the worst layer
trend_total        the measured change of the backward signal over the ``depth`` layers
                   (time steps): quoted as is; without it, ``growth_per_layer ** depth``
gsc                gradient scale coefficient (ratio of gradient norms across depth); cited
                   only where it agrees with the direction (>= 2 exploding, <= 0.5 vanishing)
fraction           fraction of units dead / saturated
grad_norm          global gradient norm at the event
median, mad        robust running statistics of the monitored quantity (grad norm or loss)
loss               loss at the event
lr                 current learning rate
update_ratio       ``||lr * update|| / ||W||`` at the worst layer
is_recurrent       the model is (or the layer is inside) a recurrent network
cell               the recurrent cell (``'LSTM'``, ``'GRU'``, ``'RNN_TANH'``, ``'LSTMCell'``...)
spectral_radius    spectral radius of the recurrent weight matrix
has_norm           the model has normalisation layers
has_residual       the model has residual connections
depth              number of weight layers (or time steps for an RNN)
================== ================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ParameterError
from ..events import KINDS, Prescription

# Applying a prescription to a model is its own room; re-exported here (old import path).
from ._apply import MODEL_REMEDIES, _parse_model_calls, applies_to_model, apply_prescription  # noqa: F401

__all__ = ["prescribe", "apply_prescription", "applies_to_model", "MODEL_REMEDIES", "EVIDENCE_KEYS",
           "critical_sigma_w2_or_none"]

#: The evidence keys :func:`prescribe` reads (others are ignored).
EVIDENCE_KEYS = (
    "growth_per_layer", "chi_1_estimate", "activation", "sigma_w2", "sigma_b2", "worst_layer",
    "gsc", "fraction", "grad_norm", "median", "mad", "loss", "lr", "update_ratio",
    "is_recurrent", "spectral_radius", "has_norm", "has_residual", "depth", "trend_total", "cell",
    "origin_cause", "origin_module", "replay",
)

_R = "gradhealth.remedies."
#: Activations whose tails pass (almost) no gradient: a tiny update there is a vanishing signal.
_SATURATING = frozenset({"sigmoid", "hard_sigmoid", "tanh", "hard_tanh", "softsign"})

# Activations whose torch.nn.init gain is defined and whose He init is exactly critical.
_RELU_FAMILY = {"relu", "leaky_relu", "relu6"}

from ._causes import cause_remedies  # noqa: E402
from ._critical import critical_sigma_w2_or_none  # noqa: E402  (re-exported: old import path)


def _critical_point(activation: str | None, sigma_b2: float) -> tuple[float | None, float]:
    """(critical sigma_w2, the sigma_b2 it holds at): at the given sigma_b2 when known, else
    at sigma_b2 = 0 (where more closed forms exist)."""
    crit = critical_sigma_w2_or_none(activation, sigma_b2)
    if crit is None and sigma_b2 != 0:
        crit0 = critical_sigma_w2_or_none(activation, 0.0)
        if crit0 is not None:
            return crit0, 0.0
    return crit, sigma_b2


# --- reading evidence tolerantly -----------------------------------------------------------
def _num(ev: Mapping, key: str) -> float | None:
    """``ev[key]`` as a finite float, or None (missing, None, 'nan', tensor, junk)."""
    v = ev.get(key)
    if v is None or isinstance(v, bool):
        return None
    try:
        if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
            v = v.item()
        f = float(v)
    except (TypeError, ValueError, RuntimeError):
        return None
    return f if math.isfinite(f) else None


def _sigma_b2(ev: Mapping) -> float:
    """The bias variance to prescribe: the measured one, rounded to 2 significant digits;
    0 below 0.01 (torch's default bias init has variance 1 / (3 fan_in), an accident of the
    default rather than a choice worth keeping)."""
    v = _num(ev, "sigma_b2")
    if v is None or v < 0.01:
        return 0.0
    return float(f"{v:.2g}")


def _flag(ev: Mapping, key: str) -> bool | None:
    v = ev.get(key)
    if v is None:
        return None
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes")
    try:
        return bool(v)
    except Exception:
        return None


def _str(ev: Mapping, key: str) -> str | None:
    v = ev.get(key)
    if v is None:
        return None
    s = str(v).strip()
    return s or None


def _act_name(activation: Any) -> str | None:
    """Canonical activation name or None; never raises."""
    if activation is None:
        return None
    name = getattr(activation, "name", activation)
    if not isinstance(name, str):
        return None
    key = name.strip().lower().replace("-", "_")
    if key.startswith("leaky_relu"):  # "leaky_relu(alpha=0.01)" as written by the init summary
        return "leaky_relu"
    try:
        from ..theory.activations import get_activation

        return get_activation(key).name
    except Exception:
        return key or None


def _g(x: float, digits: int = 3) -> str:
    """A number for a sentence: 3 significant digits, no trailing zeros."""
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def _pow(base: float, exponent: float) -> float:
    """``base ** exponent`` for a growth over depth; ``inf`` instead of an OverflowError."""
    try:
        return base ** exponent
    except OverflowError:
        return math.inf


def _total(ev: Mapping, growth: float, depth: float | None) -> float | None:
    """The change over ``depth`` layers: the measured ``trend_total`` when the evidence carries
    it (the number the verdict's headline quotes), else ``growth ** depth``; None without a depth."""
    if depth is None or depth < 1:
        return None
    measured = _num(ev, "trend_total")
    if measured is not None:
        return measured
    return _pow(growth, depth) if growth > 0 else 0.0


def _nice(x: float) -> float:
    """Round a threshold to 2 significant digits (a number a person would type)."""
    if not (x > 0 and math.isfinite(x)):
        return 1.0
    e = math.floor(math.log10(x))
    return float(f"{round(x / 10 ** e, 1) * 10 ** e:.3g}")


# --- the table ----------------------------------------------------------------------------
class _Builder:
    def __init__(self, kind: str):
        self.kind = kind
        self.items: list[tuple[str, str, str]] = []

    def add(self, action: str, code: str, reason: str) -> None:
        if all(code != c for _, c, _ in self.items):
            self.items.append((action, code, reason))

    def done(self) -> list[Prescription]:
        return [Prescription(i + 1, a, c, r, self.kind) for i, (a, c, r) in enumerate(self.items)]


def _clip_threshold(ev: Mapping) -> tuple[float, str]:
    """A max_norm from the gradient-norm statistics, with the sentence that justifies it."""
    med, mad, gn = _num(ev, "median"), _num(ev, "mad"), _num(ev, "grad_norm")
    if med is not None and med > 0:
        if mad is not None and mad > 0:
            t = _nice(med + 5 * 1.4826 * mad)
            why = f"median gradient norm {_g(med)} + 5 robust SD ({_g(1.4826 * mad)} each) = {_g(t)}"
        else:
            t = _nice(2 * med)
            why = f"twice the median gradient norm {_g(med)}"
        if gn is not None:
            why += f"; this step's norm was {_g(gn)} ({_g(gn / med)}x the median)"
        return t, why
    return 1.0, ("max_norm=1.0 is the common default; AutoClip sets it from your own history "
                 "of gradient norms" + (f" (this step's norm was {_g(gn)})" if gn is not None else ""))


def _init_remedies(b: _Builder, ev: Mapping, act: str | None, direction: str, layer: str | None) -> None:
    """Re-initialisation remedies for a feed-forward net whose signal grows or shrinks."""
    growth, chi = _num(ev, "growth_per_layer"), _num(ev, "chi_1_estimate")
    sw2 = _num(ev, "sigma_w2")
    depth = _num(ev, "depth")
    gsc = _num(ev, "gsc")
    sb2_arg = _sigma_b2(ev)
    facts = []
    if chi is not None:
        phase = "chaotic" if chi > 1 else "ordered"
        facts.append(f"chi_1 estimated {_g(chi)} ({phase} phase; critical is 1)")
    if growth is not None:
        s = f"gradient norm x{_g(growth)} per layer"
        total = _total(ev, growth, depth)
        if total is not None:
            s += f", x{_g(total)} over {int(depth)} layers"
        facts.append(s)
    # the GSC is scale-free (Philipp et al.): cited only where it says the same as the verdict
    if gsc is not None and (gsc >= 2 if direction == "exploding" else gsc <= 0.5):
        facts.append(f"gradient scale coefficient {_g(gsc)}")
    where = f" (worst at {layer})" if layer else ""
    base = "; ".join(facts) + where if facts else f"the backward signal is {direction}{where}"
    crit, sb2_arg = _critical_point(act, sb2_arg)
    # leaky_relu's slope is not in the evidence: let he_ detect it from the model's modules
    # ('leaky_relu' alone would mean alpha = 0.01)
    act_kw = f"activation={act!r}" if act and act != "leaky_relu" else None
    if act == "sigmoid" and direction == "vanishing":
        b.add("switch the hidden activations to ReLU and re-initialise with He init",
              f"{_R}replace_activation_(model, 'sigmoid', 'relu'); {_R}he_(model)",
              f"{base}: sigmoid'(x) <= 0.25, so every sigmoid layer shrinks the gradient unless "
              "|W| is large enough to saturate it; an active ReLU passes the gradient unchanged "
              "and He init keeps it at chi_1 = 1")
    if act in _RELU_FAMILY:
        now = f" (now sigma_w2 = {_g(sw2)})" if sw2 is not None else ""
        b.add("re-initialise with He (Kaiming) init",
              f"{_R}he_(model{', ' + act_kw if act_kw else ''})",
              f"{base}: for {act} He init is the critical point, sigma_w2 = "
              f"{'2' if act != 'leaky_relu' else '2 / (1 + alpha^2)'}{now}")
    elif crit is not None and act != "linear":
        now = f" (now {_g(sw2)})" if sw2 is not None else ""
        b.add("re-initialise at the edge of chaos",
              f"{_R}critical_(model, {act_kw}, sigma_b2={sb2_arg!r})",
              f"{base}: critical_ sets sigma_w2 = {_g(crit)}{now} at sigma_b2 = {_g(sb2_arg)}, "
              "where chi_1 = 1 and gradients neither vanish nor explode"
              + ("; for sigmoid that point lies deep in saturation (most units near 0 or 1)"
                 if act == "sigmoid" else ""))
    elif act is not None and act != "linear":
        b.add("re-initialise with Xavier (Glorot) init matched to the activation",
              f"{_R}xavier_(model, {act_kw})",
              f"{base}: Xavier keeps forward and backward variance near 1 for {act}"
              + (f" (now sigma_w2 = {_g(sw2)})" if sw2 is not None else ""))
    if act == "linear" or act is None:
        b.add("re-initialise orthogonally (exact isometry for linear layers)",
              f"{_R}orthogonal_(model, gain=1.0)",
              f"{base}: an orthogonal W has every singular value 1, so a linear chain keeps "
              "gradient norms exactly")
    if act is None:
        b.add("re-initialise with He (Kaiming) init, activation detected per layer",
              f"{_R}he_(model)",
              f"{base}: he_ matches each layer's gain to the activation that follows it "
              "(the activation was not in the evidence)")
    b.add("rescale each layer to unit output variance on a batch (LSUV)",
          f"{_R}lsuv_(model, inputs)",
          f"{base}: LSUV (Mishkin & Matas 2016) measures the variance on your data instead of "
          "assuming a Gaussian input")


def _arch_remedies(b: _Builder, ev: Mapping, direction: str) -> None:
    depth = _num(ev, "depth")
    d = f" ({int(depth)} layers)" if depth is not None else ""
    if _flag(ev, "has_residual") is False:
        b.add("add residual connections and zero-init the last layer of each branch",
              "# x = x + block(x) in each block, then: gradhealth.remedies.zero_init_residual_(model)",
              f"gradients {direction} through a deep plain stack{d}; a skip path gives every layer "
              "a direct gradient route, and zero-initialised branches start as the identity")
    if _flag(ev, "has_norm") is False:
        b.add("add normalisation layers (BatchNorm/LayerNorm) before the activations",
              "# nn.Linear(...) -> nn.Sequential(nn.Linear(...), nn.LayerNorm(...), activation)",
              f"no normalisation{d}: pre-activation scale is left to the initialisation alone")


def _rnn_remedies(b: _Builder, ev: Mapping, act: str | None, direction: str) -> None:
    rho = _num(ev, "spectral_radius")
    growth = _num(ev, "growth_per_layer")
    if growth is None:
        growth = _num(ev, "growth_per_step")
    depth = _num(ev, "depth")
    steps = f" over {int(depth)} steps" if depth is not None and depth >= 1 else ""
    facts = []
    if growth is not None:
        s = f"gradient x{_g(growth)} per time step"
        total = _total(ev, growth, depth)
        if total is not None:
            s += f", x{_g(total)}{steps}"
        facts.append(s)
    if rho is not None:
        facts.append(f"recurrent spectral radius {_g(rho)}")
    s = "; ".join(facts) if facts else f"gradients {direction} through time"
    cell = (_str(ev, "cell") or "").upper()
    gated = cell.startswith(("LSTM", "GRU"))
    if gated and direction == "vanish":
        _forget_gate_remedies(b, s, depth, "GRU" if cell.startswith("GRU") else "LSTM")
    sb2 = _sigma_b2(ev)
    a = act or "tanh"
    crit = critical_sigma_w2_or_none(a, sb2 + 0.1)
    if crit is not None:
        b2 = f", sigma_b2={sb2!r}" if sb2 else ""
        b.add("re-initialise at the edge of chaos through time (orthogonal, critical gain)",
              f"{_R}critical_(model{b2}, distribution='orthogonal')",
              f"{s}: critical_ makes the recurrent matrix orthogonal with gain^2 = {_g(crit)} (the "
              f"{a} critical point when the inputs add variance 0.1 per step), so the backward "
              "signal per step stays near 1 even where the units are not in their linear range")
    b.add("re-initialise recurrent weights orthogonally (spectral radius 1)",
          f"{_R}orthogonal_(model, gain=1.0)",
          f"{s}; every eigenvalue of an orthogonal matrix lies on the unit circle (saturating "
          "units still shrink the signal over long sequences)")
    if direction == "explode":
        b.add("clip the global gradient norm", f"{_R}clip_grad_norm_(model.parameters(), max_norm=1.0)",
              f"{s}; clipping bounds each step (Pascanu et al. 2013) while the cause is fixed")
    if not gated:
        b.add("use a gated cell (LSTM/GRU)",
              f"# nn.RNN(...) -> nn.LSTM(...) or nn.GRU(...), then: {_R}orthogonal_(model, gain=1.0)",
              f"{s}; gates give the cell state an additive path through time")


def _forget_gate_remedies(b: _Builder, s: str, depth: float | None, cell: str = "LSTM") -> None:
    """An LSTM (GRU) whose gradient vanishes through time: open the forget (update) gate, chrono
    init first for long sequences, where a bias of 1 still forgets within a few dozen steps."""
    steps = int(depth) if depth is not None and depth >= 3 else None
    lstm = cell == "LSTM"
    gate, bias = ("forget gate", "b_f") if lstm else ("update gate z", "b_z")
    carry = "the cell state passes" if lstm else "the state h_t = (1 - z) n + z h_(t-1) passes"
    why_one = (f"{s}: {carry} the gradient back multiplied by the {gate} "
               f"sigmoid({bias} + ...) at every step, ~0.5 at torch's default {bias} = 0; {bias} = 1 gives "
               "~0.73 (Jozefowicz et al. 2015)")
    chrono = None
    if steps is not None:
        chrono = (f"{_R}forget_gate_bias_(model, chrono={steps})",
                  f"{s}: {carry} the gradient back multiplied by the {gate} at every step; chrono "
                  f"init (Tallec & Ollivier 2018) draws {bias} = log U(1, {steps - 1})"
                  + (" and b_i = -b_f" if lstm else "") + f", so the units' memories span 1..{steps} "
                  "steps, the measured length")
    one = (f"{_R}forget_gate_bias_(model, value=1.0)", why_one)
    first, second = (chrono, one) if chrono is not None and steps is not None and steps >= 50 else (one, chrono)
    for item in (first, second):
        if item is not None:
            b.add(f"open the {cell} {gate} (chrono init)" if "chrono" in item[0]
                  else f"set the {cell} {gate} bias to 1", *item)


def prescribe(kind: str, evidence: Mapping | None = None, *, activation: Any = None,
              layer: str | None = None, model_info: Mapping | None = None) -> list[Prescription]:
    """Ranked remedies for a diagnosis, each naming a gradhealth call with concrete arguments.

    Args:
        kind: one of :data:`gradhealth.events.KINDS` (``"healthy"`` and ``"internal"`` give
            an empty list; ``"guard"`` is treated as ``"nonfinite"``).
        evidence: the numbers behind the diagnosis (keys in :data:`EVIDENCE_KEYS`; any may
            be missing, None or non-finite).
        activation: the activation of the model or layer (overrides ``evidence['activation']``).
        layer: the layer the diagnosis is about (overrides ``evidence['worst_layer']``).
        model_info: facts about the model (same keys as the evidence, e.g. ``depth``,
            ``has_norm``); evidence wins where both have a key.

    Returns:
        Prescriptions, rank 1 first.

    Raises:
        ParameterError: ``kind`` is not a known kind.
    """
    if kind not in KINDS:
        raise ParameterError("kind", "prescribe", "one of " + ", ".join(repr(k) for k in KINDS), kind,
                             "pass the kind of the Event or verdict, e.g. 'exploding'.")
    ev: dict = {}
    for src in (model_info, evidence):
        if isinstance(src, Mapping):
            ev.update(src)
    act = _act_name(activation if activation is not None else ev.get("activation"))
    layer = layer if layer is not None else _str(ev, "worst_layer")
    rule = _RULES[kind]
    if rule is None:
        return []
    b = _Builder(kind)
    rule(b, ev, act, layer)
    return b.done()


# --- one rule per kind: rule(builder, evidence, activation, layer) adds the prescriptions --------
def _rule_signal(b: _Builder, ev: Mapping, act: str | None, layer: str | None) -> None:
    """vanishing / exploding: re-initialise (through time for a recurrent net), clip when it
    explodes, and the architecture changes."""
    recurrent = bool(_flag(ev, "is_recurrent"))
    direction = "vanish" if b.kind == "vanishing" else "explode"
    rho = _num(ev, "spectral_radius")
    if recurrent or rho is not None:
        _rnn_remedies(b, ev, act, direction)
    else:
        _init_remedies(b, ev, act, "vanishing" if b.kind == "vanishing" else "exploding", layer)
    if b.kind == "exploding":
        t, why = _clip_threshold(ev)
        b.add("clip the global gradient norm",
              f"{_R}clip_grad_norm_(model.parameters(), max_norm={t!r})",
              f"bounds the step while the cause is fixed: {why}")
    if not recurrent:
        _arch_remedies(b, ev, direction)


def _rule_nonfinite(b: _Builder, ev: Mapping, act: str | None, layer: str | None) -> None:
    """nonfinite (and guard, which is read as nonfinite): the replay's cause first, then skip,
    clip (when a large gradient can be the cause), lower the learning rate."""
    gn, lr = _num(ev, "grad_norm"), _num(ev, "lr")
    where = f" first at {layer}" if layer else ""
    no_clip = cause_remedies(b, ev)
    if b.kind == "nonfinite":
        b.add("skip steps with non-finite gradients (optimizer state untouched)",
              f"{_R}skip_nonfinite(optimizer, max_consecutive_skips=10)",
              f"a NaN/Inf gradient{where}" + (f" (grad norm {_g(gn)})" if gn is not None else
                                              "") + " would corrupt every parameter and the "
              "optimizer moments in one step; skipping keeps training alive and counts the skips")
    if not no_clip:
        t, why = _clip_threshold(ev)
        b.add("clip the global gradient norm",
              f"{_R}clip_grad_norm_(model.parameters(), max_norm={t!r})",
              f"NaN usually follows an overflow of large but finite gradients: {why}")
    if lr is not None:
        new = _nice(lr / 10)
        b.add("lower the learning rate",
              f"for g in optimizer.param_groups: g['lr'] = {new!r}",
              f"lr = {_g(lr)} let the parameters overflow; a 10x smaller rate is the usual first try")
    else:
        b.add("lower the learning rate", "for g in optimizer.param_groups: g['lr'] *= 0.1",
              "non-finite values after a large step are the classic sign of a too-large learning rate")


def _rule_dead_units(b: _Builder, ev: Mapping, act: str | None, layer: str | None) -> None:
    """dead_units: He init with zero biases, LeakyReLU, LSUV, a lower learning rate."""
    frac = _num(ev, "fraction")
    lr = _num(ev, "lr")
    f = f"{_g(100 * frac)}% of units" if frac is not None else "many units"
    where = f" in {layer}" if layer else ""
    # No layers=... here: dead units are measured at an activation, whose name is not
    # the name of the weight layer before it.
    # The model's ReLU activation is named (as the init remedies name it), so that he_ also
    # re-draws layers with no activation detected after them (the output layer); leaky_relu's
    # slope is not in the evidence, so he_ detects it from the modules.
    a = f"activation={act!r}" if act in _RELU_FAMILY and act != "leaky_relu" else ""
    b.add("re-initialise with He init (zero biases)",
          f"{_R}he_(model{', ' + a if a else ''})",
          f"{f}{where} never activate on the batch, so they pass no gradient; He init with zero "
          "biases puts half of each layer's pre-activations above 0")
    b.add("use LeakyReLU so that inactive units still pass gradient",
          f"# nn.ReLU() -> nn.LeakyReLU(0.01), then: {_R}he_(model, activation='leaky_relu')",
          f"{f}{where} have gradient exactly 0; a negative slope of 0.01 keeps them trainable")
    b.add("rescale each layer to unit output variance on a batch (LSUV)", f"{_R}lsuv_(model, inputs)",
          "data-driven scaling also re-centres layers pushed negative by their inputs")
    if lr is not None:
        b.add("lower the learning rate", f"for g in optimizer.param_groups: g['lr'] = {_nice(lr / 10)!r}",
              f"units usually die after a large update pushed their bias negative (lr = {_g(lr)})")


def _rule_saturated(b: _Builder, ev: Mapping, act: str | None, layer: str | None) -> None:
    """saturated: leave the flat tails (ReLU for sigmoid, the critical point, Xavier, LSUV,
    normalisation)."""
    frac = _num(ev, "fraction")
    sw2 = _num(ev, "sigma_w2")
    f = f"{_g(100 * frac)}% of units" if frac is not None else "many units"
    where = f" in {layer}" if layer else ""
    a = act or "tanh"
    crit, sb2_arg = _critical_point(a, _sigma_b2(ev))
    now = f" (now sigma_w2 = {_g(sw2)})" if sw2 is not None else ""
    at_crit = crit is not None and sw2 is not None and abs(sw2 / crit - 1) < 0.25
    if a == "sigmoid":
        b.add("switch the activations to ReLU and re-initialise with He init",
              f"{_R}replace_activation_(model, 'sigmoid', 'relu'); {_R}he_(model)",
              f"{f}{where} sit in the flat tails of sigmoid{now}; ReLU has no upper tail, and "
              "He init keeps its backward signal at chi_1 = 1")
    if crit is not None and not at_crit:
        b.add("re-initialise at the edge of chaos",
              f"{_R}critical_(model, activation={a!r}, sigma_b2={sb2_arg!r})",
              f"{f}{where} sit in the flat tails of {a}, where its derivative is ~0; "
              f"critical_ sets sigma_w2 = {_g(crit)}{now}, keeping pre-activations in the "
              "responsive range")
    b.add("re-initialise with Xavier init matched to the activation",
          f"{_R}xavier_(model, activation={a!r})",
          f"{f}{where} are saturated{now}: pre-activation variance is too large for {a}")
    b.add("rescale each layer to unit output variance on a batch (LSUV)", f"{_R}lsuv_(model, inputs)",
          "unit pre-activation variance keeps most inputs of a saturating activation in its linear range")
    b.add("add normalisation before the activation",
          "# nn.Linear(...) -> nn.Sequential(nn.Linear(...), nn.LayerNorm(...), activation)",
          "normalisation pins the pre-activation scale during training, not only at init")


def _rule_grad_spike(b: _Builder, ev: Mapping, act: str | None, layer: str | None) -> None:
    """grad_spike: clip (global norm, AutoClip, AGC)."""
    t, why = _clip_threshold(ev)
    b.add("clip the global gradient norm",
          f"{_R}clip_grad_norm_(model.parameters(), max_norm={t!r})", f"a gradient spike: {why}")
    b.add("clip adaptively at a percentile of the gradient-norm history (AutoClip)",
          f"{_R}AutoClip(percentile=10.0)",
          "AutoClip (Seetharaman et al. 2020) tracks your own norm history, so the threshold "
          "follows the training instead of a fixed guess; call it as autoclip(model.parameters())")
    b.add("clip unit-wise relative to the weights (AGC)", f"{_R}agc_(model, clipping=0.01)",
          "AGC (Brock et al. 2021) caps each unit's ||grad|| / ||weight|| at 0.01, so one layer's "
          "spike cannot dominate")


def _rule_loss_spike(b: _Builder, ev: Mapping, act: str | None, layer: str | None) -> None:
    """loss_spike: clip, halve the learning rate, AutoClip."""
    loss, med, mad, lr = _num(ev, "loss"), _num(ev, "median"), _num(ev, "mad"), _num(ev, "lr")
    s = "the loss jumped"
    if loss is not None and med is not None:
        s = f"loss {_g(loss)} against a median of {_g(med)}"
        if mad is not None and mad > 0:
            s += f" ({_g((loss - med) / (1.4826 * mad))} robust SD above)"
    # the median / mad here are the loss's, not the gradient norm's: only grad_norm is passed on
    gev = {k: ev.get(k) for k in ("grad_norm",)}
    t, why = _clip_threshold(gev)
    b.add("clip the global gradient norm",
          f"{_R}clip_grad_norm_(model.parameters(), max_norm={t!r})",
          f"{s}; a loss spike usually follows a too-large step: {why}")
    if lr is not None:
        b.add("lower the learning rate (or warm it up)",
              f"for g in optimizer.param_groups: g['lr'] = {_nice(lr / 2)!r}",
              f"{s}; halving lr = {_g(lr)} halves the step that caused it")
    b.add("clip adaptively at a percentile of the gradient-norm history (AutoClip)",
          f"{_R}AutoClip(percentile=10.0)",
          f"{s}; AutoClip bounds steps relative to the run's own gradient-norm history")


def _rule_update_ratio(b: _Builder, ev: Mapping, act: str | None, layer: str | None) -> None:
    """update_ratio: far below ~1e-3, move faster (raise lr, He init); above, move slower (AGC,
    lower lr, clip)."""
    r, lr = _num(ev, "update_ratio"), _num(ev, "lr")
    where = f" at {layer}" if layer else ""
    target = 1e-3  # the usual healthy ||update|| / ||W|| per step (Karpathy's rule of thumb)
    if r is not None and r < target / 10:
        s = f"update/weight ratio {_g(r)}{where}, far below ~1e-3: the layer barely moves"
        gn = _num(ev, "grad_norm")
        if act in _SATURATING or (gn is not None and gn < 1e-6):
            # the gradient itself vanished (saturation): a larger lr multiplies ~0 and then
            # blows up the layers that still learn; fix the signal, not the step size
            why = (f"{s}, because its gradient vanished" + (f" through saturating {act} units" if act in
                   _SATURATING else f" (gradient norm {_g(gn)})") + ": raising the learning rate cannot help")
            if act in ("sigmoid", "hard_sigmoid"):
                b.add(f"replace {act} by relu and re-initialise with He init",
                      f"{_R}replace_activation_(model, {act!r}, 'relu'); {_R}he_(model)", why)
            b.add("re-initialise with He (Kaiming) init, activation detected per layer", f"{_R}he_(model)", why)
            return
        if lr is not None:
            new_lr = _nice(lr * (min(target / r, 10.0) if r > 0 else 10.0))
            b.add("raise the learning rate", f"for g in optimizer.param_groups: g['lr'] = {new_lr!r}",
                  s + f" (lr = {_g(lr)})")
        b.add("re-initialise with He (Kaiming) init, activation detected per layer", f"{_R}he_(model)",
              s + "; tiny updates in early layers are how vanishing gradients show up in training")
        return
    s = f"update/weight ratio {_g(r)}{where}, above ~1e-3" if r is not None else \
        f"update/weight ratio out of range{where}"
    b.add("clip unit-wise relative to the weights (AGC)", f"{_R}agc_(model, clipping=0.01)",
          s + "; AGC caps ||grad|| / ||weight|| per unit, which bounds this ratio directly")
    if lr is not None and r is not None and r > 0:
        b.add("lower the learning rate",
              f"for g in optimizer.param_groups: g['lr'] = {_nice(lr * target / r)!r}",
              s + f"; lr = {_g(lr)} scaled by 1e-3 / {_g(r)}")
    t, why = _clip_threshold(ev)
    b.add("clip the global gradient norm",
          f"{_R}clip_grad_norm_(model.parameters(), max_norm={t!r})", f"{s}: {why}")


def _rule_divergence(b: _Builder, ev: Mapping, act: str | None, layer: str | None) -> None:
    """divergence: the step is too large for the start of training: warm the learning rate up,
    lower it, and clip."""
    lr = _num(ev, "lr")
    s = "the run diverges in its first steps"
    loss, l0 = _num(ev, "loss"), _num(ev, "initial_loss")
    if loss is not None and l0:
        s += f" (loss {_g(loss)} from {_g(l0)})"
    b.add("warm the learning rate up over the first steps",
          "scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=500)"
          "  # call scheduler.step() after each optimizer.step()",
          s + "; a warm-up keeps the first, largest steps small while the statistics settle "
              "(the usual fix for Transformers)")
    if lr is not None:
        b.add("lower the learning rate", f"for g in optimizer.param_groups: g['lr'] = {_nice(lr / 10)!r}",
              f"{s} at lr = {_g(lr)}; a tenth of it is the first thing to try")
    t, why = _clip_threshold(ev)
    b.add("clip the global gradient norm", f"{_R}clip_grad_norm_(model.parameters(), max_norm={t!r})",
          f"{s}; clipping bounds each step while the learning rate is fixed: {why}")


def _rule_overflow(b: _Builder, ev: Mapping, act: str | None, layer: str | None) -> None:
    """overflow: the gradient's norm overflowed though its entries are finite: clip (overflow-safe),
    look for huge inputs, lower the learning rate. Skipping non-finite steps cannot help."""
    s = "the gradient norm overflows the float range although every entry is finite"
    b.add("clip the global gradient norm", f"{_R}clip_grad_norm_(model.parameters(), max_norm=1.0)",
          s + "; gradhealth's clipping computes the norm without overflow, so it bounds this step")
    b.add("check the batch for huge (finite) inputs",
          "# e.g. assert x.abs().max() < 1e6, x.abs().max()  before model(x); normalise the inputs",
          s + "; one input of 1e30 is enough, and it passes every isfinite check")
    lr = _num(ev, "lr")
    if lr is not None:
        b.add("lower the learning rate", f"for g in optimizer.param_groups: g['lr'] = {_nice(lr / 10)!r}",
              s + f"; after such a step Adam's second moment can itself overflow (lr = {_g(lr)})")


_Rule = Callable[[_Builder, Mapping, "str | None", "str | None"], None]  # (builder, evidence, activation, layer)

#: kind -> the rule that prescribes for it (None: nothing to prescribe). Every kind of
#: :data:`gradhealth.events.KINDS` has an entry; a new kind needs one (a test checks it).
_RULES: dict[str, _Rule | None] = {
    "healthy": None,
    "internal": None,
    "vanishing": _rule_signal,
    "exploding": _rule_signal,
    "nonfinite": _rule_nonfinite,
    "guard": _rule_nonfinite,
    "dead_units": _rule_dead_units,
    "saturated": _rule_saturated,
    "grad_spike": _rule_grad_spike,
    "loss_spike": _rule_loss_spike,
    "update_ratio": _rule_update_ratio,
    "divergence": _rule_divergence,
    "overflow": _rule_overflow,
}
