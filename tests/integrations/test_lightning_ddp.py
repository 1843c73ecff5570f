"""GradHealthCallback under Lightning DDP on CPU (2 spawned gloo ranks, 60 s process-group
timeout): a NaN planted in rank 1's forward only at step 5 makes **both** ranks skip that step
(on_nonfinite='skip': the guard's decision is all-reduced), each rank writes its own store
(rank 0 in run_dir, rank 1 in run_dir/rank1), and the ranks end with identical parameters.

Oracles: each rank's store read back independently, and the parameters each rank saved at the
end (a rank that applied the NaN step would hold NaN, or differ from the other)."""

from __future__ import annotations

import datetime
import math
import warnings

import pytest
from integration_common import BATCH, NAN_LAYER, NAN_STEP, make_data, plant_nan

from gradhealth.store import load_run

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")
dist = pytest.importorskip("torch.distributed")
from test_lightning import Module as SingleProcessModule  # noqa: E402  (after the importorskips)

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available in this torch build")

STEPS = 10


class Module(SingleProcessModule):
    """test_lightning's module, with the NaN planted on rank 1 and the parameters saved at the end."""

    def __init__(self, out_dir: str):
        super().__init__()
        self.out_dir = out_dir
        self._planted = False

    def on_fit_start(self):
        if self.global_rank == 1 and not self._planted:       # the fault on one rank only
            plant_nan(self.get_submodule(NAN_LAYER), lambda: self.trainer.global_step)
            self._planted = True

    def on_train_end(self):
        torch.save({k: v.detach().clone() for k, v in self.state_dict().items()},
                   f"{self.out_dir}/params_rank{self.global_rank}.pt")


def test_a_nan_on_one_rank_makes_both_ranks_skip(tmp_path):
    from lightning.pytorch.strategies import DDPStrategy

    from gradhealth.integrations.lightning import GradHealthCallback

    x, y = make_data(2 * STEPS)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=False)
    cb = GradHealthCallback(run_dir=str(tmp_path / "run"), on_nonfinite="skip")
    strategy = DDPStrategy(start_method="spawn", process_group_backend="gloo",
                           timeout=datetime.timedelta(seconds=60))
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=2, strategy=strategy, callbacks=[cb],
                         logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, use_distributed_sampler=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Module(str(tmp_path)), loader)
    r0, r1 = load_run(tmp_path / "run"), load_run(tmp_path / "run" / "rank1")
    for r in (r0, r1):
        assert r.finished
        assert [s["step"] for s in r.steps] == list(range(STEPS))
        assert [s["step"] for s in r.steps if s.get("skipped")] == [NAN_STEP], r.steps
    assert r0.meta.get("rank") == 0 and r1.meta.get("rank") == 1
    assert any(e.kind == "nonfinite" and e.step == NAN_STEP for e in r1.events)
    p0 = torch.load(tmp_path / "params_rank0.pt", weights_only=True)
    p1 = torch.load(tmp_path / "params_rank1.pt", weights_only=True)
    for k in p0:
        assert torch.isfinite(p0[k]).all() and torch.equal(p0[k], p1[k]), k
    assert not any(math.isnan(s["loss"]) for s in r0.steps if s.get("loss") is not None)
