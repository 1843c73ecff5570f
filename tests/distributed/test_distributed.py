"""2 gloo ranks on the CPU vs one process (issue 12): same numbers, same diagnosis, one decision."""

from __future__ import annotations

import math

import pytest
import torch.distributed as dist

from dist_harness import run_ranks
from dist_workers import close, ddp_worker, fsdp_worker, single_process

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available in this torch build")


def test_ddp_global_and_layer_norms_equal_the_single_process_truth(tmp_path):
    truth = single_process()
    ranks = run_ranks(ddp_worker, out_dir=tmp_path)
    for r in ranks:
        for (s, g, layers), (s0, g0, layers0) in zip(r["norms"], truth["norms"]):
            assert s == s0 and close(g, g0), (s, g, g0)
            assert all(close(a, b) for a, b in zip(layers, layers0))


def test_fsdp2_watch_does_not_crash_and_norms_are_global(tmp_path):
    truth = single_process()
    ranks = run_ranks(fsdp_worker, out_dir=tmp_path)
    for r in ranks:
        assert not [m for m in r["msgs"] if "failed" in m], r["msgs"]
        assert [n[0] for n in r["norms"]] == [n[0] for n in truth["norms"]]
        for (s, g, layers), (_, g0, layers0) in zip(r["norms"], truth["norms"]):
            assert close(g, g0), (s, g, g0)
            assert all(close(a, b) for a, b in zip(layers, layers0))   # per layer: whole tensors


def test_fsdp2_a_nan_on_one_rank_makes_every_rank_skip(tmp_path):
    ranks = run_ranks(fsdp_worker, 2, 1, "skip", out_dir=tmp_path)
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == [2]
    assert ranks[0]["params"] == ranks[1]["params"]


def test_a_nan_on_one_rank_makes_every_rank_skip(tmp_path):
    ranks = run_ranks(ddp_worker, 2, 1, out_dir=tmp_path)
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == [2]
    assert ranks[0]["params"] == ranks[1]["params"]   # never silently diverged


def test_every_rank_is_told_which_rank_the_nan_came_from(tmp_path):
    """A NaN in rank 1's batch at step 2: DDP brings it to rank 0's gradients too, where a
    replay of rank 0's own step reproduces nothing (on one process: "transient"). Both ranks'
    replays now say the fault arose on rank 1, in its input (the oracle: where it was planted),
    and rank 0's is not taken for a transient fault. Rank 1's own replay is its own finding."""
    ranks = run_ranks(ddp_worker, 2, 1, out_dir=tmp_path)
    for r in ranks:
        (step, found, direction, _module, cause, transient, found_on), = r["replays"]
        assert (step, found, direction, found_on, transient) == (2, True, "input", [1], False), r["replays"]
    assert ranks[0]["replays"][0][4] == "other_rank" and ranks[1]["replays"][0][4] != "other_rank"
    assert any("rank 1" in m for m in ranks[0]["messages"]), ranks[0]["messages"]


def test_fsdp2_ranks_are_told_the_nan_came_from_rank_1s_batch(tmp_path):
    """Under FSDP2 the model cannot be replayed rank by rank, but the batch is checked and the
    ranks' findings gathered: both ranks say input, on rank [1] (where it was planted), as the
    single process and DDP do; before, both said only "not replayed"."""
    ranks = run_ranks(fsdp_worker, 2, 1, "skip", out_dir=tmp_path)
    for r in ranks:
        (step, found, direction, _module, _cause, found_on), = r["replays"]
        assert (step, found, direction, found_on) == (2, True, "input", [1]), r["replays"]
    assert ranks[0]["replays"][0][4] == "other_rank" and ranks[1]["replays"][0][4] == "nonfinite_input"


def test_fsdp2_a_nan_made_inside_the_model_is_named_on_every_rank(tmp_path):
    """The NaN comes from layer 4's forward on rank 1 at step 2 (not from a batch). Every rank
    replays the forward to its end in lockstep (no early stop, so the all-gathers match) and
    the findings are gathered: both ranks name module 4, on rank [1] (before: "not replayed");
    both skip the step and keep identical, finite parameters."""
    ranks = run_ranks(fsdp_worker, None, None, "skip", (2, 1, 4), out_dir=tmp_path)
    for r in ranks:
        (step, found, direction, module, _cause, found_on), = r["replays"]
        assert (step, found, direction, module, found_on) == (2, True, "forward", "4", [1]), r["replays"]
        assert r["skipped"] == [2]
        assert [2, "nonfinite", "4"] in r["events"], r["events"]
    assert ranks[0]["params"] == ranks[1]["params"] and all(map(math.isfinite, ranks[0]["params"]))


def test_each_rank_writes_its_own_store_and_rank0_is_the_run_dir(tmp_path):
    from gradhealth.store import load_run

    run_dir = tmp_path / "run"
    ranks = run_ranks(ddp_worker, None, None, str(run_dir), out_dir=tmp_path)
    r0, r1 = load_run(run_dir), load_run(run_dir / "rank1")
    assert r0.meta["rank"] == 0 and r1.meta["rank"] == 1 and r0.meta["world_size"] == 2
    # the oracle: what each rank's watcher had in memory
    for run, r in zip((r0, r1), ranks):
        got = [(row["step"], row["global_grad_norm"]) for row in run.steps]
        assert [(n[0], n[1]) for n in r["norms"]] == got


def test_ddp_under_fp16_amp_records_the_scalers_skip_on_every_rank(tmp_path):
    """fp16 autocast + GradScaler under 2-rank DDP: an overflow of rank 1's scaled gradients at
    step 1 is a scaler skip on both ranks (not a NaN pathology: no nonfinite or guard event),
    the ranks' parameters stay identical, and the other steps' gradient norms are the unscaled
    ones: equal to the same DDP run without a scaler (the oracle, fp16 tolerance)."""
    from dist_workers import ddp_amp_worker

    (tmp_path / "amp").mkdir()
    (tmp_path / "plain").mkdir()
    ranks = run_ranks(ddp_amp_worker, 1, 1, out_dir=tmp_path / "amp")
    plain = run_ranks(ddp_amp_worker, None, None, False, out_dir=tmp_path / "plain")
    for r in ranks:
        assert r["skipped"] == [[1, "scaler"]], r["skipped"]
        assert not [e for e in r["events"] if e[1] in ("nonfinite", "guard")], r["events"]
    assert ranks[0]["params"] == ranks[1]["params"]
    assert [n[1] for n in ranks[0]["norms"]] == [n[1] for n in ranks[1]["norms"]]
    # step 0 (before the skip) against the run without a scaler: the watcher unscaled the norms
    (s0, g0, layers0), (p0, q0, players0) = ranks[0]["norms"][0], plain[0]["norms"][0]
    assert s0 == p0 == 0 and close(g0, q0, rel=1e-2) and all(close(a, b, rel=1e-2) for a, b in zip(layers0, players0))
