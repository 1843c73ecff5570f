"""The runner on tiny grids: trains where theory says it should, caches, resumes, runs in 2 processes."""

import math

import numpy as np
import pytest
import torch

from gradhealth.errors import ParameterError
from gradhealth.experiments import RunOptions, TrainabilityResult, trainability, trainability_of
from gradhealth.theory.meanfield import analyze

GRID = dict(activation="tanh", sigma_w2_grid=[1.0, 1.75, 4.0], depth_grid=[4, 48], steps=100)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cells")
    return trainability(**GRID, options=RunOptions(cache_dir=cache)), cache


def test_ordered_and_chaotic_deep_cells_fail_and_near_critical_shallow_trains(tiny):
    r, _ = tiny
    acc = r.accuracy
    assert acc[0, 1] > 0.9                          # depth 4 at sigma_w2 = 1.75 (critical 1.76)
    assert acc[1, 0] < 0.3 and acc[1, 2] < 0.3      # depth 48: ordered (1.0) and chaotic (4.0)
    assert acc[1, 1] > acc[1, 0] and acc[1, 1] > acc[1, 2]   # the deep cell trains best near critical
    assert r.trainable.tolist() == [[True, True, True], [False, True, False]]
    # the prediction agrees: 48 > 6 xi_c at 1.0 and 4.0, 48 < 6 xi_c near critical
    assert r.fit.agreement == 1.0 and r.fit.k_low < r.fit.k < r.fit.k_high


def test_measured_gain_per_layer_is_sqrt_chi_1(tiny):
    r, _ = tiny
    for j, w in enumerate(r.spec.sigma_w2):           # deep cells: 48 layers average the noise
        assert r.gain[1, j] == pytest.approx(math.sqrt(analyze("tanh", w, 0.05).chi_1), rel=0.1)


def test_cache_resumes_and_gives_the_same_numbers(tiny):
    r, cache = tiny
    calls = []
    again = trainability(**GRID, options=RunOptions(cache_dir=cache, on_cell=lambda *a: calls.append(a)))
    assert calls == [] and again.cached == 6
    np.testing.assert_array_equal(again.accuracy, r.accuracy)


def test_interrupted_run_resumes_from_its_cells(tmp_path):
    grid = dict(activation="relu", sigma_w2_grid=[1.0, 2.0, 3.0], depth_grid=[2, 3], steps=5)
    whole = trainability(**grid)                      # oracle: the uninterrupted, uncached run

    def stop(done, total, rec):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainability(**grid, options=RunOptions(cache_dir=tmp_path, on_cell=stop))
    assert len(list(tmp_path.glob("*.json"))) == 2
    resumed = trainability(**grid, options=RunOptions(cache_dir=tmp_path))
    assert resumed.cached == 2
    np.testing.assert_array_equal(resumed.accuracy, whole.accuracy)
    np.testing.assert_array_equal(resumed.loss_final, whole.loss_final)


def test_two_processes_match_one(tmp_path):
    grid = dict(activation="tanh", sigma_w2_grid=[1.5, 3.0], depth_grid=[2, 6], steps=10)
    one = trainability(**grid)
    two = trainability(**grid, options=RunOptions(jobs=2))
    assert two.jobs == 2
    np.testing.assert_array_equal(one.accuracy, two.accuracy)
    np.testing.assert_array_equal(one.loss_final, two.loss_final)


def test_json_round_trip_and_plot(tiny, tmp_path):
    import json

    import matplotlib

    matplotlib.use("Agg")
    r, _ = tiny
    back = TrainabilityResult.from_dict(json.loads(json.dumps(r.to_dict())))
    np.testing.assert_array_equal(back.accuracy, r.accuracy)
    assert back.fit == r.fit and back.spec == r.spec
    np.testing.assert_allclose(back.curve.xi_c, r.curve.xi_c)
    ax = back.plot()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("fitted k" in t for t in labels) and any("critical" in t for t in labels)
    ax.figure.savefig(tmp_path / "t.png")


def test_rng_and_threads_of_the_caller_are_restored():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    trainability("tanh", [1.0], [2], steps=2)
    assert torch.get_num_threads() == threads
    torch.testing.assert_close(torch.rand(3), expected)


@pytest.mark.parametrize("kwargs, param", [
    (dict(sigma_w2_grid=[]), "sigma_w2_grid"),
    (dict(depth_grid=[-1, 4]), "depth_grid"),
    (dict(depth_grid=[2.5]), "depth_grid"),
    (dict(activation="nope"), "activation"),
    (dict(activation="softsign"), "activation"),
    (dict(steps=0), "steps"),
    (dict(threshold=0.0), "threshold"),
    (dict(variant="dense"), "variant"),
    (dict(learning_rate=0.1), "learning_rate"),
])
def test_bad_input_is_a_parameter_error(kwargs, param):
    args = dict(activation="tanh", sigma_w2_grid=[1.0], depth_grid=[2], steps=1)
    args.update(kwargs)
    with pytest.raises(ParameterError) as e:
        trainability(**args)
    assert f"'{param}'" in str(e.value)


def make_mlp(depth, scale):
    """A user's model family: tanh MLP, orthogonal init with gain ``scale``."""
    layers, n = [], 64
    for _ in range(depth):
        lin = torch.nn.Linear(n, 32)
        torch.nn.init.orthogonal_(lin.weight, gain=scale)
        torch.nn.init.zeros_(lin.bias)
        layers += [lin, torch.nn.Tanh()]
        n = 32
    return torch.nn.Sequential(*layers, torch.nn.Linear(n, 10))


def test_factory_runs_on_measured_gain():
    r = trainability_of(make_mlp, [0.5, 1.0, 2.0], [3, 12], steps=60)
    g = r.column_gain
    # orthogonal weights of gain s and |tanh'| <= 1: the backward gain per layer is at most s
    assert g[0] < g[1] < g[2] and np.all(g <= np.array([0.5, 1.0, 2.0]) * 1.02)
    assert r.trainable[0, 1] and not r.trainable[1, 0]   # gain 1 at depth 3 trains; 0.5 at depth 12 vanishes
    assert r.curve is None and r.fit is None
    r.plot()


@pytest.mark.parametrize("factory, jobs, needle", [
    (42, 1, "callable"),
    (lambda d, s: 1 / 0, 1, "ZeroDivisionError"),
    (lambda d, s: torch.nn.Linear(64, 3), 1, "(4, 3)"),
    (lambda d, s: "model", 1, "str"),
    (lambda d, s: make_mlp(d, s), 2, "picklable"),
])
def test_bad_factory_is_a_parameter_error(factory, jobs, needle):
    with pytest.raises(ParameterError) as e:
        trainability_of(factory, [1.0], [2], steps=1, options=RunOptions(jobs=jobs))
    assert "'factory'" in str(e.value) and needle in str(e.value)


def test_factory_failing_at_a_later_cell_names_it():
    def fails_deep(depth, scale):
        if depth > 2:
            raise RuntimeError("too deep for me")
        return make_mlp(depth, scale)

    with pytest.raises(ParameterError, match="too deep for me") as e:
        trainability_of(fails_deep, [1.0], [2, 5], steps=1)
    assert "depth=5" in str(e.value)


def test_a_cell_trains_on_one_thread_whoever_calls_it(monkeypatch):
    """The workers and the in-process path pin one thread; a direct ``compute_cell`` (the
    gallery test's oracle) did not, and on a machine whose BLAS sums in another order on two
    threads it trained a depth-40 cell to another accuracy (0.341 against 0.401)."""
    from gradhealth.experiments import _cells, _runner
    from gradhealth.experiments._spec import TrainabilitySpec

    seen = []
    real = _cells.train_cell
    monkeypatch.setattr(_cells, "train_cell", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    spec = TrainabilitySpec(activation="tanh", sigma_w2=(1.0,), depths=(2,), steps=2)
    x, y = (torch.from_numpy(a) for a in _cells.load_data(spec.data))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _runner.compute_cell(spec, 1.0, 2, x, y)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
