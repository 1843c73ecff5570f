"""Non-finite values: the loss, the gradients, the parameters.

Emits one event when a condition starts (not one per step while it lasts): a run that keeps
producing NaN gradients under a skip guard gets one ``nonfinite`` event here and one
``guard`` event per skipped step from the guard. After the condition clears, a new onset
is a new event.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..events import Event
from .base import Detector, StepStats, quoted

__all__ = ["nonfinite"]

_REMEDY = "gradhealth.watch(model, optimizer, on_nonfinite='skip')"


def _layer_list(stats: StepStats, counts: np.ndarray) -> list[str]:
    bad = counts > 0
    order = stats.layers.forward_order(bad)
    return [stats.layers.names[i] for i in order]


def nonfinite(*, max_listed: int = 8) -> Detector:
    """Detector of NaN/Inf in the loss, the gradients and the parameters.

    The event's ``layer`` is the module forensic replay named as the origin when replay ran
    (``stats.origin``); otherwise the first layer in forward order with a non-finite
    gradient (which, once a NaN loss has flowed back, is every layer: the replay is what
    tells them apart). Steps that the AMP GradScaler skipped are not alarms: overflow at a
    too-high loss scale is how the scaler calibrates itself -- unless the observed loss is
    non-finite too, which an overflow of the scaled gradients never makes it: then a NaN came
    from the forward, and the step is reported like any other.

    Args:
        max_listed: how many layer names to list in the evidence.
    """

    def init():
        return frozenset()

    def update(stats: StepStats, state):
        if stats.skip_reason == "scaler" and not stats.loss_nonfinite:
            return [], state    # the scaler calibrating itself (an overflow leaves the loss finite)
        if (not state and not stats.loss_nonfinite and stats.nonfinite_grad.max(initial=0) <= 0
                and stats.nonfinite_param.max(initial=0) <= 0):
            return [], state    # the usual step: nothing non-finite now or before (no event, same state)
        active: dict[str, tuple] = {}
        nf_grad = np.where(stats.nonfinite_grad > 0, stats.nonfinite_grad, 0)
        nf_param = np.where(stats.nonfinite_param > 0, stats.nonfinite_param, 0)
        origin = stats.origin or {}
        o_layer = origin.get("module")
        o_text = ""
        if origin.get("found"):
            o_text = f" Replay: {origin.get('summary', '')}".rstrip()
        if stats.loss_nonfinite:
            active["loss"] = ()
        if nf_grad.sum() > 0:
            active["grad"] = tuple(_layer_list(stats, nf_grad))
        if nf_param.sum() > 0:
            active["param"] = tuple(_layer_list(stats, nf_param))
        events: list[Event] = []
        base_ev: dict[str, Any] = {"lr": stats.lr, "grad_norm": stats.global_grad_norm}
        if origin:
            base_ev.update({"origin_module": o_layer, "origin_direction": origin.get("direction"),
                           "origin_cause": origin.get("cause")})
        for key in ("param", "grad", "loss"):
            if key not in active or key in state:
                continue
            if key == "loss":
                msg = f"The loss became non-finite ({stats.loss}) at step {stats.step}."
                ev = dict(base_ev, loss=stats.loss)
                layer = o_layer
                sev = "error"
            else:
                names = active[key]
                counts = nf_grad if key == "grad" else nf_param
                what = "gradients" if key == "grad" else "parameters"
                if key == "grad" and origin.get("found"):
                    layer = o_layer      # None when the batch or the loss function is to blame
                else:
                    layer = names[0]
                shown = ", ".join(quoted(n) for n in names[:3])
                more = f" and {len(names) - 3} more" if len(names) > 3 else ""
                msg = (f"Non-finite {what} (NaN/Inf) in {len(names)} of {len(stats.layers)} layers "
                       f"at step {stats.step}: {shown}{more}.")
                ev = dict(base_ev, layers=list(names[:max_listed]), n_layers=len(names),
                          count=int(counts.sum()))
                sev = "critical" if key == "param" else "error"
            events.append(Event(step=stats.step, kind="nonfinite", layer=layer, severity=sev,
                                message=msg + o_text, evidence=ev, remedy=_REMEDY,
                                since=stats.step))
        # Conditions not measured at this step (no gradients at all, e.g.) keep their state.
        measured = {"loss": stats.loss is not None,
                    "grad": bool((stats.nonfinite_grad >= 0).any()),
                    "param": bool((stats.nonfinite_param >= 0).any())}
        new_state = frozenset(k for k in ("loss", "grad", "param")
                              if k in active or (k in state and not measured[k]))
        return events, new_state

    return Detector(init, update, "nonfinite")
