"""merge_across_ranks with a simulated 2-rank gather (the 2-rank runs are in tests/distributed):
a rank that reproduced nothing gets the finding of the rank that did, and a hostile module
name reaches the summary escaped (it went in raw)."""

from __future__ import annotations

import torch.distributed as dist

from gradhealth.watch import _ranks
from gradhealth.watch.replay import ReplayReport

EVIL = "blk\x1b[2J\n.ok"


def test_a_rank_without_a_finding_gets_the_other_ranks_escaped(monkeypatch):
    names = sorted(["", "a", EVIL])
    theirs = _ranks._encode(ReplayReport(3, True, "forward", EVIL, "Linear", "op_output", "x"), names)

    def all_gather(rows, mine):
        rows[0].copy_(mine)
        rows[1].copy_(theirs)

    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "all_gather", all_gather)
    mine = ReplayReport(3, False, "none", cause="not_reproduced", summary="nothing here")
    got = _ranks.merge_across_ranks(mine, 3, names)
    assert (got.found, got.direction, got.module, got.cause) == (True, "forward", EVIL, "other_rank")
    assert got.stats == {"ranks_found": [1], "origin_rank": 1}
    assert "rank 1" in got.summary and "\x1b" not in got.summary and "\n" not in got.summary
