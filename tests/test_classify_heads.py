"""The heads and transforms on generated features with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC
from test_classify_synthetic import blobs

from featcache.classify.heads.knn import CosineKNN
from featcache.classify.heads.linear import LinearSVM, SoftmaxRegression
from featcache.classify.heads.mlp import MLPHead
from featcache.classify.heads.registry import HEADS, build_head
from featcache.classify.transforms import PCAWhiten, Standardize
from featcache.sklearn_compat import (
    Interval,
    InvalidParameterError,
    StrOptions,
    generate_invalid_param_val,
)

HEAD_FACTORIES = {
    "svm": lambda: LinearSVM(C=1.0),
    "logreg": lambda: SoftmaxRegression(C=1.0),
    "mlp": lambda: MLPHead(hidden=(32,), max_epochs=40, batch_size=64, random_state=0),
    "knn": lambda: CosineKNN(n_neighbors=5),
}


@pytest.mark.parametrize("name", HEAD_FACTORIES)
def test_separable_blobs_reach_100_percent(name: str) -> None:
    X, y = blobs(600, classes=4, dim=12, spread=0.3, seed=0)
    X_test, y_test = blobs(300, classes=4, dim=12, spread=0.3, seed=1)
    model = HEAD_FACTORIES[name]().fit(X, y)
    assert model.score(X_test, y_test) == 1.0


@pytest.mark.parametrize("name", HEAD_FACTORIES)
def test_shuffled_labels_stay_at_chance(name: str) -> None:
    """Labels shuffled against the features: nothing to learn, so test accuracy is ~1/3."""
    X, y = blobs(900, classes=3, dim=12, spread=3.0, seed=0)
    X_test, y_test = blobs(900, classes=3, dim=12, spread=3.0, seed=1)
    assert HEAD_FACTORIES[name]().fit(X, y).score(X_test, y_test) > 0.9  # the signal is there
    rng = np.random.default_rng(7)
    noise, noise_test = rng.standard_normal(X.shape), rng.standard_normal(X_test.shape)
    model = HEAD_FACTORIES[name]().fit(noise.astype(np.float32), rng.permutation(y))
    assert abs(model.score(noise_test.astype(np.float32), y_test) - 1 / 3) < 0.06


def _svm_objective(W: np.ndarray, b: np.ndarray, X: np.ndarray, y: np.ndarray, C: float) -> float:
    signs = np.where(y[:, None] == np.arange(W.shape[0]), 1.0, -1.0)
    slack = np.maximum(0.0, 1.0 - signs * (X.astype(np.float64) @ W.T + b))
    return 0.5 * float(np.square(W).sum()) + C * float(np.square(slack).sum())


@pytest.mark.parametrize("C", [0.01, 1.0])
def test_linear_svm_matches_liblinear(C: float) -> None:
    X, y = make_classification(1500, 30, n_informative=15, n_classes=4, random_state=0)
    X = X.astype(np.float32)
    ours = LinearSVM(C=C).fit(X, y)
    # a huge intercept_scaling makes liblinear's penalty on the intercept negligible, as in ours
    ref = LinearSVC(C=C, intercept_scaling=1000, tol=1e-8, max_iter=100_000).fit(X, y)
    assert np.mean(ours.predict(X) == ref.predict(X)) >= 0.995
    assert ours.score(X, y) == pytest.approx(ref.score(X, y), abs=0.005)
    mine = _svm_objective(ours.coef_, ours.intercept_, X, y, C)
    theirs = _svm_objective(ref.coef_, ref.intercept_, X, y, C)
    assert mine == pytest.approx(theirs, rel=1e-4)


@pytest.mark.parametrize("C", [0.01, 1.0])
def test_softmax_matches_sklearn_logistic_regression(C: float) -> None:
    X, y = make_classification(1500, 30, n_informative=15, n_classes=4, random_state=1)
    X = X.astype(np.float32)
    ours = SoftmaxRegression(C=C).fit(X, y)
    ref = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X, y)
    assert np.mean(ours.predict(X) == ref.predict(X)) >= 0.995
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=5e-3)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=5e-3)


def test_linear_heads_handle_more_features_than_preconditioner_rows(monkeypatch) -> None:
    monkeypatch.setattr("featcache.classify.heads.linear.PRECOND_ROWS", 50)
    X, y = make_classification(400, 120, n_informative=20, n_classes=3, random_state=2)
    X = X.astype(np.float32)
    ref = LogisticRegression(C=0.1, tol=1e-10, max_iter=10_000).fit(X, y)
    ours = SoftmaxRegression(C=0.1).fit(X, y)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=5e-3)


def test_fitted_attributes_and_scores() -> None:
    X, y = blobs(300, classes=3, dim=8, seed=0)
    labels = np.array(["cat", "dog", "emu"])[y]
    for head in (LinearSVM(), SoftmaxRegression()):
        with pytest.raises(NotFittedError):
            head.predict(X)
        head.fit(X, labels)
        assert head.coef_.shape == (3, 8) and head.intercept_.shape == (3,)
        assert head.coef_.dtype == np.float32
        assert head.n_features_in_ == 8 and head.n_iter_ >= 1
        assert list(head.classes_) == ["cat", "dog", "emu"]
        assert head.decision_function(X).shape == (300, 3)
        assert set(head.predict(X)) <= {"cat", "dog", "emu"}
    assert not hasattr(LinearSVM().fit(X, y), "predict_proba")
    proba = SoftmaxRegression().fit(X, y).predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    mlp = MLPHead(hidden=(16,), max_epochs=3, random_state=0).fit(X, y)
    assert isinstance(mlp.module_, torch.nn.Module)
    assert len(mlp.loss_curve_) == mlp.n_iter_ <= 3
    assert mlp.n_features_in_ == 8


def test_binary_heads_score_one_column_like_scikit_learn() -> None:
    X, y = blobs(200, classes=2, dim=6, spread=1.0, seed=0)
    for head in (LinearSVM(), SoftmaxRegression()):
        head.fit(X, np.array(["no", "yes"])[y])
        scores = head.decision_function(X)
        assert scores.shape == (200,) and scores.dtype == np.float32
        assert head.coef_.shape == (1, 6)
        np.testing.assert_array_equal(head.predict(X), np.where(scores > 0, "yes", "no"))
    proba = head.predict_proba(X)
    np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp(-scores)), rtol=1e-5)


def _estimators() -> list:
    return [LinearSVM(), SoftmaxRegression(), MLPHead(), CosineKNN(), Standardize(), PCAWhiten()]


@pytest.mark.parametrize("estimator", _estimators(), ids=lambda e: type(e).__name__)
def test_bad_hyperparameters_from_the_constraint_table(estimator) -> None:
    X, y = blobs(60, classes=3, dim=4, seed=0)
    for param, constraints in type(estimator)._parameter_constraints.items():
        checkable = [c for c in constraints if isinstance(c, (Interval, StrOptions))]
        if not checkable:
            continue
        bad = generate_invalid_param_val(checkable[0])
        with pytest.raises(InvalidParameterError) as err:
            clone(estimator).set_params(**{param: bad}).fit(X, y)
        message = str(err.value)
        assert f"'{param}'" in message and type(estimator).__name__ in message


def test_mlp_hidden_sizes_are_checked() -> None:
    X, y = blobs(60, classes=3, dim=4, seed=0)
    with pytest.raises(InvalidParameterError, match="'hidden' parameter of MLPHead"):
        MLPHead(hidden=(16, 0)).fit(X, y)


def test_heads_follow_the_estimator_contract() -> None:
    for spec in HEADS.values():
        head = spec.build()
        copy = clone(head)
        assert copy.get_params() == head.get_params()
        assert set(spec.grid) <= set(head.get_params())
        assert set(spec.options) <= set(head.get_params())


def test_build_head_fixes_values_and_removes_them_from_the_grid() -> None:
    head, grid = build_head("svm", {"C": 0.1}, seed=0)
    assert head.C == 0.1 and grid == {}
    head, grid = build_head("mlp", {"hidden": (64, 32)}, seed=3)
    assert head.hidden == (64, 32) and head.random_state == 3 and "weight_decay" in grid
    assert build_head("mlp-alexnet", {}, 0)[0].hidden == (4096, 4096)
    assert build_head("mlp-ucmerced", {}, 0)[0].hidden == (84, 63, 42)


def test_mlp_is_seeded_without_touching_the_global_generator() -> None:
    X, y = blobs(300, classes=3, dim=8, spread=1.5, seed=0)
    before = torch.random.get_rng_state()
    a = MLPHead(hidden=(16,), max_epochs=4, random_state=5).fit(X, y)
    b = MLPHead(hidden=(16,), max_epochs=4, random_state=5).fit(X, y)
    assert torch.equal(before, torch.random.get_rng_state())
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    c = MLPHead(hidden=(16,), max_epochs=4, random_state=6).fit(X, y)
    assert not np.array_equal(a.predict_proba(X), c.predict_proba(X))


def test_knn_votes_by_cosine_similarity() -> None:
    X = np.array([[1, 0], [10, 1], [0, 1], [1, 10]], dtype=np.float32)
    y = np.array([0, 0, 1, 1])
    knn = CosineKNN(n_neighbors=1).fit(X, y)
    np.testing.assert_array_equal(knn.predict(np.array([[100, 1], [1, 50]], np.float32)), [0, 1])
    proba = CosineKNN(n_neighbors=3).fit(X, y).predict_proba(np.array([[5, 1]], np.float32))
    np.testing.assert_allclose(proba, [[2 / 3, 1 / 3]])
    assert CosineKNN(n_neighbors=50).fit(X, y).predict(X).shape == (4,)


def test_standardize_in_place_and_exact() -> None:
    X = np.random.default_rng(0).standard_normal((9000, 5)).astype(np.float32) * 3 + 7
    X[:, 4] = 2.0
    expected = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1)
    scaler = Standardize().fit(X)
    out = scaler.transform(X, copy=False)
    assert np.shares_memory(out, X)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    assert not np.shares_memory(scaler.transform(X), X)


def test_pca_whiten_matches_sklearn() -> None:
    X = np.random.default_rng(0).standard_normal((5000, 10)) @ np.diag(np.arange(1, 11.0))
    X = X.astype(np.float32)
    ours = PCAWhiten(4).fit(X).transform(X)
    ref = PCA(4, whiten=True).fit(X).transform(X)
    np.testing.assert_allclose(np.abs(ours), np.abs(ref), atol=1e-2)
    np.testing.assert_allclose(np.cov(ours.T, bias=True), np.eye(4), atol=1e-3)
    with pytest.raises(ValueError, match="DIM=11"):
        PCAWhiten(11).fit(X)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_mlp_learns_in_either_precision(precision: str) -> None:
    X, y = blobs(300, classes=3, dim=8, spread=0.5, seed=0)
    mlp = MLPHead(hidden=(32,), max_epochs=20, precision=precision, random_state=0).fit(X, y)
    assert mlp.precision_ == precision and mlp.score(X, y) > 0.95
    assert MLPHead(hidden=(8,), max_epochs=1).fit(X, y).precision_ in {"float32", "bfloat16"}
