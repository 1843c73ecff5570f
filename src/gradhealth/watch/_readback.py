"""Reading a step's measurements back to the host: one transfer per device.

Every pending device tensor of the records being read is flattened to float32 and
concatenated per device, and each concatenation is copied to the host once (one sync per
device per logged step). On an accelerator the values measured after the optimizer step
(update norms, the loss, output gradients, forward statistics) are not worth a sync of their
own: the record is *deferred* and rides along with the next logged step's transfer, or is
read at :meth:`ReadbackQueue.flush` (``remove()``).

The queue returns the records it completed; it never calls back into the watcher, which runs
the detectors and writes the store for them.

``gradhealth.stats`` has no host-transfer helper yet (issue 8 plans one); :func:`to_host` is
this module's own until it does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..stats.transfer import to_host
from ._record import Loss, StepRecord, absorb

__all__ = ["ReadbackQueue", "to_host", "transfer"]


def transfer(recs: Sequence[StepRecord]) -> None:
    """Move every pending tensor of ``recs`` to the host together and store the values in
    their records (``pending`` is emptied)."""
    owners: list[StepRecord] = []
    items = []
    for r in recs:
        owners.extend(r for _ in r.pending)
        items.extend(r.pending)
        r.pending = []
    if not items:
        return
    host = to_host([it.tensor for it in items])
    for r in recs:
        mine = [k for k, o in enumerate(owners) if o is r]
        if mine:
            absorb(r, [items[k] for k in mine], [host[k] for k in mine])


class ReadbackQueue:
    """The records waiting for the host, and the one rule of when to read them.

    Attributes:
        deferred: records whose last values ride along with the next transfer.
        defer_always: defer on the CPU too (tests exercise the accelerator path with it).
    """

    __slots__ = ("deferred", "defer_always")

    def __init__(self) -> None:
        self.deferred: list[StepRecord] = []
        self.defer_always = False

    def read_now(self, rec: StepRecord) -> list[StepRecord]:
        """Read ``rec``'s pending values now (the pre-step statistics the guard and the
        warning need), together with every deferred record.

        Returns:
            The deferred records, now complete (``rec`` itself is still being measured).
        """
        done, self.deferred = self.deferred, []
        transfer([*done, rec])
        return done

    def finish(self, rec: StepRecord, defer_ok: bool = True) -> list[StepRecord]:
        """``rec``'s step is over: read what is left, or defer it on an accelerator.

        Returns:
            ``[rec]`` when it was read, ``[]`` when it was deferred.
        """
        if isinstance(rec.loss, torch.Tensor):
            if not rec.pending and not self.defer_always and rec.loss.device.type == "cpu":
                rec.loss = float(rec.loss.float())   # (what the transfer reads: the float32 value)
                return [rec]
            rec.pending.append(Loss(rec.loss))
            rec.loss = None
        if defer_ok and (self.defer_always or any(it.tensor.device.type != "cpu" for it in rec.pending)):
            # on an accelerator, ride along with the next logged step's transfer (one sync per
            # logged step); the step's events come out then, or at remove()
            self.deferred.append(rec)
            return []
        transfer([rec])
        return [rec]

    def flush(self) -> list[StepRecord]:
        """Read every deferred record; returns them, complete, oldest first."""
        done, self.deferred = self.deferred, []
        if done:
            transfer(done)
        return done
