"""The selection protocol, views and row plans (run folders: test_classify_runs.py)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import joblib
import numpy as np
import pytest
from test_classify_synthetic import blobs, write_synthetic

from featcache.classify.engines import LocalEngine
from featcache.classify.experiment import FitConfig, plan_rows, run_experiment
from featcache.classify.features import Block
from featcache.classify.heads.linear import LinearSVM, SoftmaxRegression
from featcache.classify.protocol import choose, class_scores, evaluate, refit
from featcache.classify.transforms import Standardize
from featcache.errors import UsageError
from featcache.extract.cache.hdf5 import FeatureCache


def _fit(tmp: Path, **kw) -> dict:
    return run_experiment(FitConfig(data_dir=tmp, **kw))[1]


def test_the_test_split_never_chooses(tmp_path: Path) -> None:
    """Same training rows, wholly different test rows: the choice must not move."""
    common = dict(n_train=300, classes=3, dim=16, spread=4.0)
    a = write_synthetic(tmp_path / "a", **common)
    noise = np.random.default_rng(5).standard_normal((150, 16)).astype(np.float32) * 50
    labels = np.random.default_rng(6).permutation(np.arange(150) % 3)
    b = write_synthetic(tmp_path / "b", **common, test_override=(noise, labels))
    runs = [run_experiment(FitConfig(data_dir=tmp_path / d, cache=c, model="logreg"))
            for d, c in (("a", a), ("b", b))]
    (dir_a, m_a), (dir_b, m_b) = runs
    assert len(set(m_a["val_scores"])) > 1, "the sweep must have something to choose"
    assert m_a["params"] == m_b["params"]
    assert m_a["val_scores"] == m_b["val_scores"]
    assert m_a["grid"] == m_b["grid"]
    coef_a = joblib.load(dir_a / "model.joblib")[-1].coef_
    coef_b = joblib.load(dir_b / "model.joblib")[-1].coef_
    np.testing.assert_array_equal(coef_a, coef_b)
    assert m_a["top1"] > 0.8 and m_b["top1"] < 0.6


def test_choose_sees_only_what_it_is_given() -> None:
    """Same rows, one thread or two: the same choice; the caller's arrays are not touched."""
    X, y = blobs(400, classes=3, dim=8, spread=1.5, seed=0)
    original = X.copy()
    grid = {"C": (1e-4, 1.0)}
    first = choose(LinearSVM(), Standardize(), grid, Block(X[:, None], y, ["full"]),
                   engine=LocalEngine(2))
    second = choose(LinearSVM(), Standardize(), grid, Block(X[:, None], y, ["full"]),
                    engine=LocalEngine(1))
    np.testing.assert_array_equal(X, original)
    assert first.params == second.params and first.val_scores == second.val_scores
    assert first.grid == [{"C": c} for c in grid["C"]]
    assert first.method == "5-fold CV" and first.n_val == 400


def test_fixed_value_skips_the_sweep(tmp_path: Path) -> None:
    write_synthetic(tmp_path)
    m = _fit(tmp_path, model="svm", params={"C": 0.1})
    assert m["grid"] == [] and m["val_scores"] == [] and m["n_val"] == 0
    assert m["params"] == {"C": 0.1} and m["head_params"]["C"] == 0.1
    assert m["top1"] == 1.0


def test_views_average_at_test_time(tmp_path: Path) -> None:
    X, y = blobs(300, classes=3, dim=16, spread=4.0, seed=3, views=10)
    path = write_synthetic(tmp_path, spread=0.5, test_views=10, test_override=(X, y))
    m = _fit(tmp_path, cache=path, model="logreg", params={"C": 1.0})
    assert m["test_views"] == 10
    assert m["top1"] > m["top1_centre"] + 0.05


def test_training_views_stay_together(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path, train_views=10, test_views=10, n_train=120)
    m = _fit(tmp_path, cache=path, model="svm")
    assert m["n_train"] == 120
    assert m["per_repeat"][0]["selection"] == "5-fold CV" and m["n_val"] == 120
    assert m["top1"] == 1.0 and m["top1_centre"] == 1.0


def test_class_scores_average_views() -> None:
    class Fixed:
        classes_ = np.array([0, 1])

        def decision_function(self, X):
            return np.stack([X[:, 0], -X[:, 0]], axis=1)

    X = np.array([[[1.0], [-3.0]], [[2.0], [2.0]]], dtype=np.float32)
    scores = class_scores(Fixed(), X)
    assert scores.shape == (2, 2, 2)
    np.testing.assert_allclose(scores.mean(axis=1), [[-1, 1], [2, -2]])


def test_evaluate_reports_top5_and_confusion() -> None:
    X, y = blobs(600, classes=8, dim=16, spread=0.3, seed=0)
    Xt, yt = blobs(160, classes=8, dim=16, spread=0.3, seed=1)
    model = refit(SoftmaxRegression(), Standardize(), {}, Block(X[:, None], y, ["full"]))
    m = evaluate(model, Block(Xt[:, None], yt, ["full"]), n_classes=8)
    assert m["top1"] == 1.0 and m["top5"] == 1.0 and "top1_centre" not in m
    assert np.trace(m["confusion"]) == 160


def test_train_size_and_shots(tmp_path: Path) -> None:
    write_synthetic(tmp_path, n_train=300, classes=3)
    m = _fit(tmp_path, model="svm", train_size=90, params={"C": 1.0})
    assert m["n_train"] == 90
    m = _fit(tmp_path, model="svm", shots=4)
    assert m["n_train"] == 12 and m["repeats"] == 5 and len(m["per_repeat"]) == 5
    assert {r["seed"] for r in m["per_repeat"]} == {0, 1, 2, 3, 4}
    assert m["top1_std"] >= 0.0


def test_plan_rows_are_stratified_and_seeded(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path, n_train=300, n_test=150, split_rule="stratified test=0.2")
    with FeatureCache(path) as cache:
        config = FitConfig(data_dir=tmp_path, resplit=0.1, train_size=150)
        train, test = plan_rows(cache, config, seed=0)
        again, _ = plan_rows(cache, config, seed=0)
        other, _ = plan_rows(cache, config, seed=1)
        labels = np.concatenate([cache.labels(p.split)[p.rows] for p in train])
    assert sum(len(p.rows) for p in test) == 45
    assert len(labels) == 150 and np.bincount(labels).tolist() == [50, 50, 50]
    assert {p.split for p in train} == {"train", "test"}
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(train, again, strict=True))
    assert not all(np.array_equal(a.rows, b.rows) for a, b in zip(train, other, strict=False))


def test_resplit_repeats(tmp_path: Path) -> None:
    write_synthetic(tmp_path, n_train=240, n_test=60, split_rule="stratified test=0.2 seed=0")
    m = _fit(tmp_path, model="svm", resplit=0.1, repeats=3, val_size=0.111)
    assert m["n_test"] == 30 and m["n_train"] == 270 and m["repeats"] == 3


def test_resplit_refuses_an_official_split(tmp_path: Path) -> None:
    write_synthetic(tmp_path, split_rule="official")
    with pytest.raises(UsageError, match="official"):
        _fit(tmp_path, resplit=0.2)


def test_layers_concatenate(tmp_path: Path) -> None:
    write_synthetic(tmp_path, layers=("pool", "block5"))
    m = _fit(tmp_path, model="knn", layers=("pool", "block5"))
    assert m["layers"] == ["pool", "block5"] and m["top1"] == 1.0


def test_pca_transform(tmp_path: Path) -> None:
    write_synthetic(tmp_path)
    m = _fit(tmp_path, model="svm", transform="pca", dim=4, params={"C": 1.0})
    assert m["top1"] == 1.0
    model = joblib.load(next((tmp_path / "runs").iterdir()) / "model.joblib")
    assert model[-1].coef_.shape == (3, 4)


@pytest.mark.parametrize("head", [LinearSVM(C=1.0), SoftmaxRegression(C=1.0)],
                         ids=["svm", "logreg"])
def test_refit_keeps_one_float32_copy_when_it_owns_the_block(head) -> None:
    X, y = blobs(40_000, classes=4, dim=128, spread=2.0, seed=0)
    X_test, y_test = blobs(2000, classes=4, dim=128, spread=2.0, seed=1)
    block = Block(X[:, None], y, ["full"])
    tracemalloc.start()
    model = refit(head, Standardize(), {}, block, copy=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert np.shares_memory(block.X, X)
    assert peak < 0.5 * X.nbytes, f"numpy peak {peak / X.nbytes:.2f} x the training features"
    assert model.score(X_test, y_test) > 0.9


def test_refit_leaves_the_callers_features_alone() -> None:
    X, y = blobs(300, classes=3, dim=8, seed=0)
    original = X.copy()
    model = refit(LinearSVM(), Standardize(), {"C": 1.0}, Block(X[:, None], y, ["full"]))
    np.testing.assert_array_equal(X, original)
    assert model.score(X, y) == 1.0


def test_no_transform_keeps_raw_features(tmp_path: Path) -> None:
    write_synthetic(tmp_path)
    m = _fit(tmp_path, model="svm", transform="none", params={"C": 1.0})
    assert m["top1"] == 1.0 and m["transform"] == "none"
    model = joblib.load(next((tmp_path / "runs").iterdir()) / "model.joblib")
    X = np.ones((2, 16), dtype=np.float32)
    np.testing.assert_array_equal(model[0].transform(X), X)
