"""The HF GradHealthCallback across ``trainer.train(resume_from_checkpoint=...)`` (issue 13, resume).

Oracle: the same 8 steps without the interruption. The interrupted run saves checkpoint-4 and
stops at step 6 (as a crash would, after the checkpoint); the resumed run continues from
checkpoint-4. Its watcher must number the steps 4..7, end with the uninterrupted run's step
counter and detector state (windows and baselines), and find the same events."""

from __future__ import annotations

import os
import warnings

import pytest
from integration_common import assert_close, assert_same_store

from gradhealth.store import load_run

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from test_transformers import Tokens  # noqa: E402  (the same generated tokens; after the importorskips)

STEPS, SAVE, NAN, STOP = 8, 4, 5, 6
BLOCK = "transformer.h.1"


class StopAt(transformers.TrainerCallback):
    """Ends train() at ``step`` (the interruption; on_train_end still runs, like a clean kill)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def train(out, run_dir=None, stop=None, save=True, resume=None, nan_at=None):
    """A 2-layer GPT-2 from a config (no dropout: the resumed run can match to the bit) on
    generated tokens, default max_grad_norm, on_nonfinite='skip'; with ``nan_at`` a NaN in
    BLOCK's output at that step. Returns the GradHealthCallback."""
    from gradhealth.integrations.transformers import GradHealthCallback

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config)
    args = transformers.TrainingArguments(output_dir=str(out), max_steps=STEPS, report_to=[], use_cpu=True,
                                          logging_steps=1, save_strategy="steps" if save else "no",
                                          save_steps=SAVE, per_device_train_batch_size=8, disable_tqdm=True,
                                          seed=0, learning_rate=1e-3)
    cb = GradHealthCallback(run_dir=run_dir, on_nonfinite="skip")
    callbacks = [cb] + ([StopAt(stop)] if stop else [])
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=callbacks)

    def plant(_mod, _inp, out):
        if model.training and trainer.state.global_step == nan_at:
            h = (out[0] if isinstance(out, tuple) else out).clone()
            h[0, 0, 0] = float("nan")
            return (h, *out[1:]) if isinstance(out, tuple) else h
        return out

    model.get_submodule(BLOCK).register_forward_hook(plant)
    trainer.train(resume_from_checkpoint=resume)
    return cb


def events(w, since=0):
    return [(e.step, e.kind, e.layer) for e in w.events if e.step is not None and e.step >= since]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("hf_resume")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oracle = train(base / "oracle", base / "oracle_run", save=False, nan_at=NAN)
        first = train(base / "cut", base / "cut_run", stop=STOP, nan_at=NAN)
        resumed = train(base / "cut", base / "cut_run", resume=str(base / "cut" / f"checkpoint-{SAVE}"), nan_at=NAN)
    return base, oracle.watcher, first.watcher, resumed.watcher


def test_a_resumed_trainer_continues_steps_and_detector_state(runs):
    base, oracle, first, resumed = runs
    assert [s.step for s in first.history] == list(range(STOP))
    assert os.path.isfile(base / "cut" / f"checkpoint-{SAVE}" / "gradhealth_watch.json")
    assert [s.step for s in resumed.history] == list(range(SAVE, STEPS))
    assert resumed.step == oracle.step == STEPS
    # the numbers after the resume are the uninterrupted run's (same weights, same batches)
    want = {s.step: s for s in oracle.history}
    for s in resumed.history:
        assert_close([s.global_grad_norm, s.loss], [want[s.step].global_grad_norm, want[s.step].loss])
    # the detectors' windows and baselines end where the uninterrupted run's end
    assert_close(resumed.state_dict(), oracle.state_dict())
    assert (NAN, "nonfinite", BLOCK) in events(oracle)
    assert events(resumed) == events(oracle, since=SAVE)
    assert resumed.state_dict()["skipped"] == oracle.state_dict()["skipped"] == 1


def test_the_resumed_run_continues_the_same_run_store(runs):
    # the interrupted process stored steps 0..5 (the NaN of step 5 included) and stopped; the
    # resumed one re-does 4..7 into the same run_dir. Oracle: the uninterrupted run's store
    base = runs[0]
    want, got = load_run(base / "oracle_run"), load_run(base / "cut_run")
    assert_same_store(got, want)
    nonfinite = [e for e in want.events if e.kind == "nonfinite"]
    assert nonfinite and [e for e in got.events if e.kind == "nonfinite"] == nonfinite   # step 5's not doubled
    assert got.meta["resumed_from_step"] == SAVE and got.meta["steps"] == STEPS
    assert got.meta["n_events"] == want.meta["n_events"] == len(want.events)


def test_a_resume_without_the_state_file_continues_the_steps_and_says_so(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(tmp_path, tmp_path / "run", stop=STOP)
    os.remove(tmp_path / f"checkpoint-{SAVE}" / "gradhealth_watch.json")
    with pytest.warns(UserWarning, match="could not be read") as seen:
        cb = train(tmp_path, tmp_path / "run", resume=str(tmp_path / f"checkpoint-{SAVE}"))
    assert any("gradhealth_watch.json" in str(w.message) and "empty detector windows" in str(w.message)
               for w in seen)
    # the Trainer's step numbers and the run store continue; only the baselines start again
    assert [s.step for s in cb.watcher.history] == list(range(SAVE, STEPS))
    assert [r["step"] for r in load_run(tmp_path / "run").steps] == list(range(STEPS))
