"""GradHealthCallback under Lightning (CPU): the planted NaN (layer net.2, step 5) is diagnosed with
the same step, kind and layer as in the plain loop under gradhealth.watch (the oracle), with and
without gradient accumulation; on_nonfinite='raise' stops the fit instead of crashing it."""

from __future__ import annotations

import warnings

import pytest
from integration_common import (
    BATCH,
    N_STEPS,
    NAN_LAYER,
    NAN_STEP,
    Net,
    assert_close,
    assert_same_store,
    first_nonfinite,
    make_data,
    plain_loop,
    plant_nan,
)

from gradhealth.store import load_run

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")


class Module(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = Net().net    # the same initial weights as the oracle's Net()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def loader_of(n_batches: int):
    """``make_data(n_batches)`` as a loader of BATCH-sized batches, in order."""
    x, y = make_data(n_batches)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def quiet_trainer(callbacks: list, steps: int, **options):
    """A CPU Trainer of ``steps`` steps without logger, progress bar, model summary or
    checkpoints, unless ``options`` say otherwise."""
    kw = dict(max_steps=steps, callbacks=callbacks, logger=False, enable_progress_bar=False,
              enable_checkpointing=False, enable_model_summary=False, accelerator="cpu")
    kw.update(options)
    return pl.Trainer(**kw)


def fit(tmp_path, accumulate=1, steps=N_STEPS, **options):
    from gradhealth.integrations.lightning import GradHealthCallback

    module = Module()
    plant_nan(module.get_submodule(NAN_LAYER), lambda: module.trainer.global_step)
    loader = loader_of(steps * accumulate)
    cb = GradHealthCallback(run_dir=tmp_path / "run", **options)
    trainer = quiet_trainer([cb], steps, accumulate_grad_batches=accumulate,
                            logger=pl.loggers.CSVLogger(tmp_path / "logs"), log_every_n_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader)
    return cb, trainer


@pytest.mark.parametrize("accumulate", [1, 2, 4])
def test_nan_is_diagnosed_as_in_a_plain_loop(tmp_path, accumulate):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oracle = plain_loop(accumulate=accumulate)
    assert first_nonfinite(oracle.events) == (NAN_STEP, "nonfinite", NAN_LAYER)
    cb, trainer = fit(tmp_path, accumulate)
    assert first_nonfinite(cb.watcher.events) == first_nonfinite(oracle.events)
    assert cb.watcher.replays[0].module == oracle.replays[0].module == NAN_LAYER
    assert cb.watcher.replays[0].step == oracle.replays[0].step == NAN_STEP
    # the statistics of the steps before the NaN are the oracle's: same gradients, not one step late
    for ours, theirs in zip(list(cb.watcher.history)[:NAN_STEP], list(oracle.history)[:NAN_STEP]):
        assert ours.step == theirs.step
        assert ours.global_grad_norm == pytest.approx(theirs.global_grad_norm, rel=1e-5)
        assert ours.loss == pytest.approx(theirs.loss, rel=1e-5)
    assert not cb.watcher.active          # removed at fit end
    stored = load_run(tmp_path / "run")
    assert first_nonfinite(stored.events) == first_nonfinite(oracle.events)
    assert stored.finished
    # the events reached Lightning's logger
    assert trainer.logged_metrics["gradhealth/nonfinite"] >= 1


def test_raise_stops_the_fit_at_the_nan_step(tmp_path):
    from gradhealth.errors import NonFiniteError

    cb, trainer = fit(tmp_path, on_nonfinite="raise")
    assert isinstance(cb.error, NonFiniteError)
    assert trainer.global_step == NAN_STEP + 1 < N_STEPS      # stopped after the NaN batch
    assert first_nonfinite(cb.watcher.events) == (NAN_STEP, "nonfinite", NAN_LAYER)
    # the bad step was not applied: the weights are finite
    assert all(torch.isfinite(p).all() for p in trainer.lightning_module.parameters())


def test_a_run_resumed_from_a_checkpoint_continues_its_steps(tmp_path):
    # oracle: the steps the uninterrupted fit would have logged (0..N-1); the second fit resumes
    # from the checkpoint written at step 4 and must log 4..N-1, not restart at 0
    from gradhealth.integrations.lightning import GradHealthCallback

    loader = loader_of(N_STEPS)

    def trainer(cb, steps):
        return quiet_trainer([cb], steps)

    cut = 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cb1 = GradHealthCallback()
        t1 = trainer(cb1, cut)
        t1.fit(Module(), loader)
        ckpt = tmp_path / "cut.ckpt"
        t1.save_checkpoint(ckpt)
        assert [s.step for s in cb1.watcher.history] == list(range(cut))
        cb2 = GradHealthCallback()
        t2 = trainer(cb2, N_STEPS)
        t2.fit(Module(), loader, ckpt_path=ckpt)
    steps = [s.step for s in cb2.watcher.history]
    assert steps and steps[0] == cut and steps == list(range(cut, cut + len(steps)))


def test_a_checkpoint_saved_during_the_fit_resumes_at_the_next_step(tmp_path):
    # Lightning's ModelCheckpoint saves after the step's optimizer.step and before the next
    # forward, where the watcher has not yet counted the step: the callback's state_dict must
    # count it (else the resumed fit numbers its first step one too low). The interrupted fit
    # stops 2 steps after the checkpoint; the resumed one re-does them into the same run store.
    # Oracle: the uninterrupted fit's step counter, detector state, per-step numbers and store.
    from gradhealth.integrations.lightning import GradHealthCallback

    cut = 4
    loader = loader_of(cut)   # an epoch of `cut` batches: Lightning restarts a resumed epoch's loader

    class StopAt(pl.Callback):   # the interruption, after the checkpoint (as a crash would be)
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == cut + 2:
                trainer.should_stop = True

    def run(cb, ckpt_path=None, every=None):
        callbacks = [cb]
        if every:
            callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="{step}", save_top_k=-1,
                                                          every_n_train_steps=every))
            callbacks.append(StopAt())
        t = quiet_trainer(callbacks, N_STEPS, enable_checkpointing=bool(every))
        t.fit(Module(), loader, ckpt_path=ckpt_path)
        return cb.watcher

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oracle = run(GradHealthCallback(tmp_path / "oracle"))
        first = run(GradHealthCallback(tmp_path / "run"), every=cut)
        resumed = run(GradHealthCallback(tmp_path / "run"), ckpt_path=tmp_path / f"step={cut}.ckpt")
    assert [s.step for s in first.history] == list(range(cut + 2))
    assert [s.step for s in resumed.history] == list(range(cut, N_STEPS))
    assert resumed.step == oracle.step == N_STEPS
    want = {s.step: s.global_grad_norm for s in oracle.history}
    assert all(s.global_grad_norm == pytest.approx(want[s.step], rel=1e-5) for s in resumed.history)
    assert_close(resumed.state_dict(), oracle.state_dict())
    # the resumed fit continued the interrupted one's run store (steps 4, 5 re-done, not doubled)
    stored = load_run(tmp_path / "run")
    assert_same_store(stored, load_run(tmp_path / "oracle"))
    assert stored.meta["resumed_from_step"] == cut


def test_a_checkpoint_without_the_callbacks_state_still_continues_the_steps(tmp_path):
    # a checkpoint saved without GradHealthCallback's state (another callback list): the resumed
    # fit continues at the restored global_step in the same run store, with empty detector
    # windows, and says so (before: steps from 0 and the run store replaced)
    from gradhealth.integrations.lightning import GradHealthCallback
    from gradhealth.watch import WatchWarning

    loader = loader_of(N_STEPS)

    def trainer(cb, steps):
        return quiet_trainer([cb], steps)

    cut = 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t1 = trainer(GradHealthCallback(tmp_path / "run"), cut)
        t1.fit(Module(), loader)
        t1.save_checkpoint(tmp_path / "cut.ckpt")
    ckpt = torch.load(tmp_path / "cut.ckpt", weights_only=True)
    assert any("GradHealthCallback" in k for k in ckpt["callbacks"])
    ckpt["callbacks"] = {}
    torch.save(ckpt, tmp_path / "cut.ckpt")
    cb = GradHealthCallback(tmp_path / "run")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trainer(cb, N_STEPS).fit(Module(), loader, ckpt_path=tmp_path / "cut.ckpt")
    assert any(issubclass(w.category, WatchWarning) and "empty detector windows" in str(w.message) for w in seen)
    assert [s.step for s in cb.watcher.history] == list(range(cut, N_STEPS))
    assert [r["step"] for r in load_run(tmp_path / "run").steps] == list(range(N_STEPS))


def test_a_checkpoint_right_after_a_scaler_skipped_step_resumes_at_the_next_step(tmp_path):
    # fp16 on CPU with a GradScaler: the NaN step 5 is skipped by the scaler (no optimizer step,
    # but Lightning's global_step counts it) and the checkpoint is taken right after it, at
    # global_step 6. The saved state must count the skipped step, as the next forward would.
    # Oracle: the uninterrupted fit's step numbers, skipped steps and run store.
    from lightning.pytorch.plugins.precision import MixedPrecision

    from gradhealth.integrations.lightning import GradHealthCallback

    cut = NAN_STEP + 1
    loader = loader_of(cut)   # an epoch of `cut` batches: Lightning restarts a resumed epoch's loader

    def run(cb, ckpt_path=None, every=None, steps=N_STEPS):
        module = Module()
        plant_nan(module.get_submodule(NAN_LAYER), lambda: module.trainer.global_step)
        callbacks = [cb]
        if every:
            callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="{step}", save_top_k=-1,
                                                          every_n_train_steps=every))
        plugin = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
        t = quiet_trainer(callbacks, steps, plugins=[plugin], enable_checkpointing=bool(every))
        t.fit(module, loader, ckpt_path=ckpt_path)
        return cb.watcher

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oracle = run(GradHealthCallback(tmp_path / "oracle"))
        first = run(GradHealthCallback(tmp_path / "run"), every=cut, steps=cut + 2)
        resumed = run(GradHealthCallback(tmp_path / "run"), ckpt_path=tmp_path / f"step={cut}.ckpt")
    assert [(s.step, s.skip_reason) for s in oracle.history if s.skipped] == [(NAN_STEP, "scaler")]
    assert [s.step for s in first.history] == list(range(cut + 2))
    assert [s.step for s in resumed.history] == list(range(cut, N_STEPS))
    assert resumed.step == oracle.step == N_STEPS
    assert resumed.state_dict()["skipped"] == oracle.state_dict()["skipped"] == 1
    assert_same_store(load_run(tmp_path / "run"), load_run(tmp_path / "oracle"))


def test_events_reach_the_logger_though_steps_settle_a_few_at_a_time(tmp_path):
    # the callback does not make the watcher settle every step (it assembles logged steps a few
    # at a time); an ordinary (not urgent) event of a step close to the end must still reach
    # the logger. Oracle: the watcher's own events of that kind.
    from gradhealth.detectors import Detector, chain, default_detectors
    from gradhealth.events import Event
    from gradhealth.integrations.lightning import GradHealthCallback

    late = N_STEPS - 2   # completes at the last step's forward, settled with nothing else

    def update(stats, state):
        if stats.step != late:
            return [], state
        return [Event(step=stats.step, kind="grad_spike", layer=None, severity="warning", message="planted")], state

    planted = Detector(lambda: None, update, "planted")
    cb = GradHealthCallback(run_dir=tmp_path / "run", detectors=chain(default_detectors(), planted))
    trainer = quiet_trainer([cb], N_STEPS, logger=pl.loggers.CSVLogger(tmp_path / "logs"), log_every_n_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Module(), loader_of(N_STEPS))
    spikes = [e for e in cb.watcher.events if e.kind == "grad_spike" and e.message == "planted"]
    assert [e.step for e in spikes] == [late]
    assert trainer.logged_metrics["gradhealth/grad_spike"] == len([e for e in cb.watcher.events
                                                                   if e.kind == "grad_spike"])
