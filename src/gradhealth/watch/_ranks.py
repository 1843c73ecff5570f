"""Which rank a non-finite step came from, under DDP.

DDP averages every rank's gradients, so a NaN from one rank's batch reaches every rank's
``.grad`` and every rank sees the bad step (the same decision everywhere). The forensic replay
then re-runs each rank's *own* step: on the rank where the fault arose it names the input or
module; on the others it reproduces nothing, which on one process would mean "transient"
(hardware, a race). :func:`merge_across_ranks` gathers the replays' findings (three integers a
rank, one ``all_gather``, on every rank at the same point: every rank replays the same step)
and gives every rank the finding of the first rank that reproduced the fault, with the list of
ranks that did.

Only for a model wrapped in ``DistributedDataParallel``, or sharded with FSDP2, on more than
one rank: there every rank handles the same bad step. (Under FSDP2 only the batch is checked:
re-running a sharded model is not possible rank by rank. In a process group without DDP or
FSDP2 the ranks' steps are independent and nothing is gathered.)
"""

from __future__ import annotations

import torch

from ..detectors.base import safe_text
from .replay import ReplayReport

__all__ = ["ddp_world", "merge_across_ranks"]

DIRECTIONS = ("input", "forward", "loss", "backward", "none")


def ddp_world(model, sharded: bool = False) -> int:
    """The world size when ``model`` is DDP-wrapped (or ``sharded``: FSDP2, whose bad-step flag
    is all-reduced, so every rank replays the same step) in an initialised group of > 1 ranks,
    else 1."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    from torch.nn.parallel import DistributedDataParallel

    if not (sharded or isinstance(model, DistributedDataParallel)):
        return 1
    return dist.get_world_size()


def _encode(report: ReplayReport | None, names: list[str]) -> torch.Tensor:
    if report is None or not report.found:
        return torch.tensor([0, DIRECTIONS.index("none"), -1], dtype=torch.int64)
    d = DIRECTIONS.index(report.direction) if report.direction in DIRECTIONS else DIRECTIONS.index("none")
    m = names.index(report.module) if report.module in names else -1
    return torch.tensor([1, d, m], dtype=torch.int64)


def merge_across_ranks(report: ReplayReport | None, step: int, names: list[str]) -> ReplayReport | None:
    """Every rank's replay finding gathered; this rank's report, or the first finding rank's.

    Call on every rank of the DDP group at the same point (it is a collective), with ``report``
    None where this rank's replay failed. ``names``: the model's module names, the same list on
    every rank (the modules are identical under DDP).
    """
    import torch.distributed as dist

    mine = _encode(report, names)
    rows = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, mine)
    found = [r for r, row in enumerate(rows) if int(row[0]) == 1]
    rank = dist.get_rank()
    if report is not None:
        report.stats = {**report.stats, "ranks_found": found}
    if not found or found[0] == rank:
        return report
    first = found[0]
    _, d, m = (int(v) for v in rows[first])
    direction, module = DIRECTIONS[d], (names[m] if m >= 0 else None)
    where = f" of {safe_text(module) if module else 'the model'}" if direction != "input" else ""
    summary = (f"the fault arose on rank {first}: its replay found the non-finite value in the "
               f"{direction}{where}" + (" (its input batch)" if direction == "input" else "")
               + f"; rank {rank}'s own batch and model reproduce nothing (DDP's all-reduce brought it here)")
    return ReplayReport(step, True, direction, module=module, cause="other_rank", summary=summary,
                        stats={"ranks_found": found, "origin_rank": first})
