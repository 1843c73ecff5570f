"""GradHealthCallback under the Hugging Face Trainer (CPU, a 2-layer GPT-2 built from a config in
code, generated tokens, default max_grad_norm=1.0). A NaN planted by a forward hook in one block
at step k: the watcher names that block and that step, although the Trainer's clip has made every
gradient NaN before any callback runs. Oracle: where and when the NaN was planted; the stored
loss of step k is NaN while the Trainer's own log shows a finite one."""

from __future__ import annotations

import math
import warnings

import pytest

from gradhealth.store import load_run

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

K = 3
BLOCK = "transformer.h.1"


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=96, length=12, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 64, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def train(tmp_path, **options):
    from gradhealth.integrations.transformers import GradHealthCallback

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
    model = transformers.GPT2LMHeadModel(config)
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=8, report_to=[], use_cpu=True,
                                          logging_steps=1, save_strategy="no", per_device_train_batch_size=8,
                                          disable_tqdm=True, seed=0)
    cb = GradHealthCallback(run_dir=tmp_path / "run", **options)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[cb])

    def plant(_mod, _inp, out):
        if model.training and trainer.state.global_step == K:
            h = out[0] if isinstance(out, tuple) else out
            h = h.clone()
            h[0, 0, 0] = float("nan")
            return (h, *out[1:]) if isinstance(out, tuple) else h
        return out

    model.get_submodule(BLOCK).register_forward_hook(plant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    return cb, trainer


def test_nan_source_is_named_before_the_clip_spreads_it(tmp_path):
    cb, trainer = train(tmp_path)
    w = cb.watcher
    first = next(e for e in w.events if e.kind == "nonfinite")
    assert (first.step, first.layer) == (K, BLOCK)
    assert w.replays[0].step == K and w.replays[0].module == BLOCK
    run = load_run(tmp_path / "run")
    assert run.finished and run.meta["steps"] == 8
    by_step = {r["step"]: r for r in run.steps}
    assert math.isnan(by_step[K]["loss"]) and math.isfinite(by_step[K - 1]["loss"])
    # the Trainer's own log of that step: its NaN filter shows a finite loss
    logged = {h["step"]: h for h in trainer.state.log_history if "loss" in h}
    assert math.isfinite(logged[K + 1]["loss"])
    # the events reach the Trainer's logs (a step's events are complete when the next step starts)
    assert logged[K + 2]["gradhealth/nonfinite"] >= 2 and "gradhealth/nonfinite" not in logged[K]
    # the clip spread the NaN: nearly every layer's gradient is non-finite at step k, yet one is named
    nonfinite_layers = [r for r in run.layer_stats if r["step"] == K and r["nonfinite"]]
    assert len(nonfinite_layers) > len(run.layers) // 2
    assert not w.active


def test_raise_stops_training_at_the_nan_step(tmp_path):
    from gradhealth.errors import NonFiniteError

    cb, trainer = train(tmp_path, on_nonfinite="raise")
    assert isinstance(cb.error, NonFiniteError)
    assert trainer.state.global_step == K + 1 < 8
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert next(e for e in cb.watcher.events if e.kind == "nonfinite").layer == BLOCK


def test_skip_drops_the_nan_step_and_training_goes_on(tmp_path):
    """on_nonfinite='skip' under the Trainer (its optimizer is accelerate's wrapper): the NaN
    step is not applied, training runs to max_steps, the parameters stay finite, and the store
    records exactly step K as skipped. Oracle: the same training without the callback ends with
    NaN parameters (the Trainer itself would apply the step)."""
    cb, trainer = train(tmp_path, on_nonfinite="skip")
    assert trainer.state.global_step == 8
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    run = load_run(tmp_path / "run")
    assert [r["step"] for r in run.steps if r.get("skipped")] == [K]
    assert next(e for e in cb.watcher.events if e.kind == "nonfinite").layer == BLOCK


def test_without_the_callback_the_nan_step_poisons_the_model(tmp_path, monkeypatch):
    """The negative control of the skip test: the same run with a callback that does nothing."""
    import gradhealth.integrations.transformers as hf

    class Inert(transformers.TrainerCallback):
        def __init__(self, **_kw):
            self.watcher = None

    monkeypatch.setattr(hf, "GradHealthCallback", Inert)
    _, trainer = train(tmp_path)
    assert not all(torch.isfinite(p).all() for p in trainer.model.parameters())


class _PlainLM(torch.nn.Module):
    """A model without **kwargs: the Trainer does not hand it num_items_in_batch, so each
    micro-batch's loss is its own mean."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(64, 16)
        self.out = torch.nn.Linear(16, 64)

    def forward(self, input_ids, labels=None):
        logits = self.out(torch.tanh(self.emb(input_ids)))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), labels.reshape(-1))
        return {"loss": loss, "logits": logits}


@pytest.mark.parametrize("kind", ["gpt2", "plain"])
def test_the_stored_loss_of_an_accumulated_window_is_the_trainers(tmp_path, kind):
    """With gradient accumulation, a transformers model takes num_items_in_batch and divides
    each micro-batch's loss by the whole window's token count; the callback averaged those
    again and stored half the window's loss (with 2 micro-batches). Oracle: the loss the
    Trainer itself logs for each step (logging_steps=1)."""
    from gradhealth.integrations.transformers import GradHealthCallback

    torch.manual_seed(0)
    if kind == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64,
                                                                     n_positions=16))
    else:
        model = _PlainLM()
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=3, report_to=[], use_cpu=True,
                                          logging_steps=1, save_strategy="no", per_device_train_batch_size=4,
                                          gradient_accumulation_steps=2, disable_tqdm=True, seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(n=32),
                                   callbacks=[GradHealthCallback(run_dir=tmp_path / "run")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    stored = [r["loss"] for r in load_run(tmp_path / "run").steps]
    assert len(logged) == len(stored) == 3
    assert stored == pytest.approx(logged, rel=1e-4)
