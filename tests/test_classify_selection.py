"""Selection that is what it says: validation plans, grouped views, stacked sweeps, grid
extension, the MLP's epochs, convergence reports, and the same choice on Ray."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import FunctionTransformer
from test_classify_synthetic import blobs, write_synthetic

from featcache.classify.engines import LocalEngine, RayEngine
from featcache.classify.experiment import FitConfig, run_experiment
from featcache.classify.features import Block
from featcache.classify.heads.linear import LinearSVM, SoftmaxRegression
from featcache.classify.heads.mlp import MLPHead
from featcache.classify.heads.registry import C_GRID, WEIGHT_DECAY_GRID
from featcache.classify.protocol import choose, refit
from featcache.classify.splits import validation_plan
from featcache.classify.transforms import Standardize
from featcache.errors import UsageError


def test_holdout_where_it_is_large_enough_else_stratified_k_fold() -> None:
    y = np.arange(20_000) % 10
    plan = validation_plan(y, 0.1, seed=0)
    assert plan.method == "holdout 10%" and len(plan.folds) == 1 and plan.n_val == 2000
    y = np.arange(500) % 10
    plan = validation_plan(y, 0.1, seed=0)
    assert plan.method == "5-fold CV" and plan.n_val == 500
    held = np.concatenate([val for _, val in plan.folds])
    assert sorted(held.tolist()) == list(range(500))
    for fit, val in plan.folds:
        assert not set(fit) & set(val)
        assert np.bincount(y[val]).tolist() == [10] * 10
    assert validation_plan(np.arange(30) % 10, 0.1, seed=0).method == "3-fold CV"
    with pytest.raises(UsageError, match="class 1 has only 1"):
        validation_plan(np.arange(11) % 10, 0.1, seed=0)


class _Spy(ClassifierMixin, BaseEstimator):
    """Predicts the first class; remembers the image ids (feature 0) it was fitted on."""

    seen: ClassVar[list[np.ndarray]] = []

    def __init__(self, C: float = 1.0) -> None:
        self.C = C

    def fit(self, X: np.ndarray, y: np.ndarray) -> _Spy:
        self.classes_ = np.unique(y)
        _Spy.seen.append(X[:, 0].copy())
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.eye(len(self.classes_))[np.zeros(len(X), dtype=int)]


@pytest.mark.parametrize("n_images", [300, 12_000], ids=["k-fold", "holdout"])
def test_all_views_of_an_image_stay_on_one_side(n_images: int) -> None:
    views = 5
    ids = np.repeat(np.arange(n_images, dtype=np.float32), views).reshape(n_images, views, 1)
    X = np.concatenate([ids, np.random.default_rng(0).random((n_images, views, 3))], axis=2)
    y = np.arange(n_images) % 3
    _Spy.seen.clear()
    selection = choose(_Spy(), FunctionTransformer(), {"C": (1.0,)},
                       Block(X.astype(np.float32), y, [f"v{i}" for i in range(views)]))
    held_out = []
    for seen in _Spy.seen:
        counts = np.bincount(seen.astype(int), minlength=n_images)
        assert set(counts.tolist()) <= {0, views}, "an image's views were split up"
        held_out.append(np.flatnonzero(counts == 0))
    everyone = np.concatenate(held_out)
    assert len(everyone) == len(set(everyone.tolist())) == selection.n_val


@pytest.mark.parametrize("head", [LinearSVM(), SoftmaxRegression()], ids=["svm", "logreg"])
def test_stacked_sweep_matches_fitting_each_value_alone(head) -> None:
    X, y = make_classification(600, 20, n_informative=6, n_classes=3, flip_y=0.1,
                               random_state=0)
    X = X.astype(np.float32)
    grid = {"C": C_GRID[::2]}
    selection = choose(head, Standardize(), grid, Block(X[:, None], y, ["full"]))
    plan = validation_plan(y, 0.1, seed=0)
    alone = []
    for params in selection.grid:
        scores = []
        for fit, val in plan.folds:
            scaler = Standardize().fit(X[fit])
            model = clone(head).set_params(**params).fit(scaler.transform(X[fit]), y[fit])
            scores.append(model.score(scaler.transform(X[val]), y[val]))
        alone.append(float(np.mean(scores)))
    assert len(set(alone)) > 1, "the grid must have something to choose"
    np.testing.assert_allclose(selection.val_scores, alone, atol=1e-12)
    assert selection.params == selection.grid[int(np.argmax(alone))]


@pytest.mark.parametrize("head", [LinearSVM(), SoftmaxRegression()], ids=["svm", "logreg"])
def test_fit_path_reaches_each_fits_optimum(head) -> None:
    """Half the path starts from its neighbours' solutions; each still meets its own test."""
    X, y = make_classification(800, 30, n_informative=10, n_classes=4, random_state=1)
    X = X.astype(np.float32)
    path = list(clone(head).fit_path(X, y, [1.0, 0.01, 0.1, 1e-3, 10.0]))
    assert [p["C"] for p, _ in path] == [1.0, 0.01, 0.1, 1e-3, 10.0]
    for params, model in path:
        alone = clone(head).set_params(**params).fit(X, y)
        assert model.converged_ and alone.converged_ and model.relative_gradient_ <= 1e-3
        np.testing.assert_allclose(model.coef_, alone.coef_, atol=2e-3)
        assert np.mean(model.predict(X) == alone.predict(X)) >= 0.995


@pytest.mark.parametrize("head", [LinearSVM(C=0.1), SoftmaxRegression(C=0.1)],
                         ids=["svm", "logreg"])
def test_a_warm_start_reaches_the_cold_fits_optimum(head) -> None:
    X, y = make_classification(800, 30, n_informative=10, n_classes=4, random_state=1)
    X = X.astype(np.float32)
    cold = clone(head).fit(X, y)
    near = clone(head).fit(X[:700], y[:700])
    warm = clone(head).fit(X, y, coef_init=near.coef_, intercept_init=near.intercept_)
    assert warm.converged_ and warm.relative_gradient_ <= 1e-3 and warm.n_iter_ < cold.n_iter_
    np.testing.assert_allclose(warm.coef_, cold.coef_, atol=2e-3)
    assert np.mean(warm.predict(X) == cold.predict(X)) >= 0.995
    # a start worse than zero is dropped: the fit is the cold one
    far = clone(head).fit(X, y, coef_init=100 * near.coef_, intercept_init=near.intercept_)
    np.testing.assert_array_equal(far.coef_, cold.coef_)
    with pytest.raises(ValueError, match="coef_init"):
        clone(head).fit(X, y, coef_init=near.coef_[:, :5])


def test_the_refit_starts_from_the_sweeps_solution() -> None:
    X, y = make_classification(3000, 20, n_informative=6, n_classes=3, flip_y=0.1,
                               random_state=0)
    train = Block(X.astype(np.float32)[:, None], y, ["full"])
    selection = choose(SoftmaxRegression(), Standardize(), {"C": C_GRID}, train)
    assert selection.warm["coef_init"].shape == (3, 20)
    warm = refit(SoftmaxRegression(), Standardize(), selection.params, train,
                 warm=selection.warm)
    cold = refit(SoftmaxRegression(), Standardize(), selection.params, train)
    assert warm[-1].converged_ and warm[-1].n_iter_ < cold[-1].n_iter_
    assert np.mean(warm.predict(X) == cold.predict(X)) >= 0.995
    assert choose(MLPHead(hidden=(8,), max_epochs=2), Standardize(), {"epochs": (1, 2)},
                  train).warm == {}


class _Knob(ClassifierMixin, BaseEstimator):
    """Right on a share of rows that grows with C: feature 0 is the label, 1 a uniform draw."""

    def __init__(self, C: float = 1.0) -> None:
        self.C = C

    def _share(self) -> float:
        return float(np.clip((np.log10(self.C) + 8) / 12, 0, 1))

    def fit(self, X: np.ndarray, y: np.ndarray) -> _Knob:
        self.classes_ = np.unique(y)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        labels = X[:, 0].astype(int)
        wrong = (labels + 1) % len(self.classes_)
        return np.eye(len(self.classes_))[np.where(X[:, 1] < self._share(), labels, wrong)]


class _DecayKnob(_Knob):
    """Right on a share of rows that shrinks as weight decay grows."""

    def __init__(self, weight_decay: float = 1e-4) -> None:
        self.weight_decay = weight_decay

    def _share(self) -> float:
        return float(np.clip(-np.log10(self.weight_decay) / 10, 0, 1))


def _knob_data(n: int = 2000) -> Block:
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    X = np.stack([y, rng.random(n)], axis=1).astype(np.float32)
    return Block(X[:, None], y, ["full"])


def test_grid_grows_past_its_edge_and_stops_at_the_bound(caplog) -> None:
    selection = choose(_Knob(), FunctionTransformer(), {"C": C_GRID}, _knob_data())
    tried = [p["C"] for p in selection.grid]
    assert tried[: len(C_GRID)] == list(C_GRID)
    assert max(tried) == pytest.approx(1e3) and len(tried) == len(C_GRID) + 4
    assert selection.params["C"] == pytest.approx(1e3)
    assert "C=1000" in selection.edge and "largest" in selection.edge
    assert selection.edge in caplog.text


def test_edge_hint_names_the_swept_parameter() -> None:
    selection = choose(_DecayKnob(), FunctionTransformer(), {"weight_decay": WEIGHT_DECAY_GRID},
                       _knob_data())
    assert selection.grid[0]["weight_decay"] == pytest.approx(1e-8)
    assert "WEIGHT_DECAY=1e-08" in selection.edge and "smallest" in selection.edge
    assert " C=" not in selection.edge


class _PeakKnob(_Knob):
    """Right most often at C = 0.01."""

    def _share(self) -> float:
        return float(1 - abs(np.log10(self.C) + 2) / 10)


def test_grid_stays_put_where_the_best_is_inside() -> None:
    selection = choose(_PeakKnob(), FunctionTransformer(), {"C": C_GRID}, _knob_data())
    assert [p["C"] for p in selection.grid] == list(C_GRID)
    assert selection.params["C"] == pytest.approx(0.01) and selection.edge is None


def test_mlp_epochs_are_chosen_and_the_refit_trains_exactly_that_many(monkeypatch) -> None:
    X, y = blobs(300, classes=3, dim=8, spread=2.0, seed=0)
    head = MLPHead(hidden=(16,), max_epochs=6, batch_size=64, precision="float32",
                   random_state=0)
    path = [(p["epochs"], m.predict_proba(X)) for p, m in clone(head).fit_path(X, y, range(1, 7))]
    assert [e for e, _ in path] == [1, 2, 3, 4, 5, 6]
    for epochs, proba in path[::2]:
        alone = clone(head).set_params(epochs=epochs).fit(X, y)
        np.testing.assert_array_equal(alone.predict_proba(X), proba)
    train = Block(X[:, None], y, ["full"])
    selection = choose(head, Standardize(), {"epochs": tuple(range(1, 7))}, train)
    assert [p["epochs"] for p in selection.grid] == [1, 2, 3, 4, 5, 6]
    rows_seen: list[int] = []
    forward = type(head)._train

    def counting(self, X, y, epochs):
        rows_seen.append(len(X))
        return forward(self, X, y, epochs)

    monkeypatch.setattr(MLPHead, "_train", counting)
    model = refit(head, Standardize(), selection.params, train)
    assert model[-1].n_iter_ == selection.params["epochs"] == len(model[-1].loss_curve_)
    assert rows_seen == [300], "the refit trains on every row it is given, no hold-out"


def test_lbfgs_that_stops_before_its_tolerance_says_so() -> None:
    X, y = make_classification(3000, 60, n_informative=30, n_classes=5, random_state=0)
    X = X.astype(np.float32)
    with pytest.warns(ConvergenceWarning, match="tol=1e-08"):
        svm = LinearSVM(tol=1e-8).fit(X, y)
    assert not svm.converged_ and svm.relative_gradient_ > 1e-8
    assert svm.stop_ in {"no progress", "max_iter"}
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        short = LinearSVM(max_iter=2).fit(X, y)
    assert short.stop_ == "max_iter" and short.n_iter_ == 2 and not short.converged_
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fine = SoftmaxRegression().fit(X, y)
    assert fine.converged_ and fine.stop_ == "tolerance" and fine.relative_gradient_ <= 1e-3


def test_run_records_selection_and_convergence(tmp_path: Path) -> None:
    write_synthetic(tmp_path, n_train=300)
    _, m = run_experiment(FitConfig(data_dir=tmp_path, model="logreg"))
    run = m["per_repeat"][0]
    assert run["selection"] == "5-fold CV" and run["n_val"] == 300
    assert run["converged"] is True and run["stopped"] == "tolerance"
    assert run["iterations"] >= 1 and run["relative_gradient"] <= 1e-3
    assert run["sweep_not_converged"] == []


@pytest.fixture(scope="module")
def ray_engine():
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'featcache[ray]'")
    from featcache.raysession import ray_session

    with ray_session(2) as ray:
        yield RayEngine(ray)


@pytest.mark.slow
@pytest.mark.parametrize("head", [LinearSVM(), MLPHead(hidden=(16,), max_epochs=4)],
                         ids=["svm", "mlp"])
def test_ray_sweep_chooses_what_the_local_sweep_chooses(ray_engine, head) -> None:
    X, y = make_classification(500, 20, n_informative=6, n_classes=3, flip_y=0.1,
                               random_state=0)
    train = Block(X.astype(np.float32)[:, None], y, ["full"])
    grid = {"C": C_GRID[::3]} if "C" in head.get_params() else {
        "weight_decay": (1e-4, 1e-2), "epochs": (2, 4)}
    head = clone(head).set_params(random_state=0) if "random_state" in head.get_params() else head
    local = choose(head, Standardize(), grid, train, engine=LocalEngine(1))
    remote = choose(head, Standardize(), grid, train, engine=ray_engine)
    assert remote.method == local.method == "5-fold CV"
    assert remote.params == local.params and remote.val_scores == local.val_scores


@pytest.mark.slow
def test_ray_repeats_match_the_local_run(tmp_path: Path, ray_engine) -> None:
    write_synthetic(tmp_path, n_train=300, spread=3.0)
    runs = [run_experiment(FitConfig(data_dir=tmp_path, model="svm", shots=5, repeats=3,
                                     engine=engine))[1] for engine in ("local", "ray")]
    keep = ("seed", "params", "val_scores", "top1", "selection", "n_train")
    local, remote = ([{k: r[k] for k in keep} for r in m["per_repeat"]] for m in runs)
    assert local == remote and len(local) == 3
    assert runs[0]["config_hash"] == runs[1]["config_hash"]  # the engine changes no result
