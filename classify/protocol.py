"""Choose hyperparameters on validation rows, refit on all training rows, test once.

``choose`` sees only the training rows it is given. It validates on a stratified hold-out, or
by stratified k-fold where the hold-out would be small (``classify.splits.validation_plan``);
rows are images, so all views of an image stay on one side. A head with a ``fit_path`` fits a
whole line of its grid at once (the linear heads every C in one stacked pass, the MLP every
epoch count in one training run). Where the best value sits at the edge of the grid, the grid
grows in that direction until it does not, or until the parameter's bound. ``refit`` fits the
transform and the head on all training rows; ``evaluate`` is the only function that reads test
rows. None of them modifies the arrays it is given, unless told ``copy=False``.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import ParameterGrid
from sklearn.pipeline import Pipeline

from featcache.classify.engines import Engine, LocalEngine
from featcache.classify.features import Block
from featcache.classify.heads.registry import SWEPT
from featcache.classify.splits import ValidationPlan, validation_plan
from featcache.classify.transforms import transform_in_place

logger = logging.getLogger(__name__)

SCORE_BLOCK = 4096
EXTEND_STEPS = 2  # grid values added per round where the best sits at an edge


@dataclass
class Selection:
    """What the validation sweep found (empty grid when every value was fixed).

    ``method`` is how candidates were scored (``holdout 10%``, ``5-fold CV``); ``n_val`` the
    validation scores behind each candidate's mean (held-out rows, or every row once under
    k-fold); ``not_converged`` the candidates whose fit stopped before its tolerance in some
    fold; ``edge`` a note where the best value stayed at the edge of the grid at its bound;
    ``warm`` the chosen candidate's weights in the first fold (``coef_init`` and
    ``intercept_init`` for a head whose ``fit`` takes them; else empty), a start for the refit.
    """

    params: dict[str, Any] = field(default_factory=dict)
    grid: list[dict[str, Any]] = field(default_factory=list)
    val_scores: list[float] = field(default_factory=list)
    method: str | None = None
    n_val: int = 0
    not_converged: list[dict[str, Any]] = field(default_factory=list)
    edge: str | None = None
    seconds: float = 0.0
    warm: dict[str, np.ndarray] = field(default_factory=dict)


def class_scores(model: BaseEstimator, X: np.ndarray) -> np.ndarray:
    """Per-view class scores (n, views, classes): probabilities where the head has them.

    A binary ``decision_function`` (one score per row) becomes ``[-score, score]``.
    """
    n, views, dim = X.shape
    score = model.predict_proba if hasattr(model, "predict_proba") else model.decision_function
    parts = []
    for lo in range(0, n, SCORE_BLOCK):
        part = score(X[lo : lo + SCORE_BLOCK].reshape(-1, dim))
        parts.append(np.stack([-part, part], axis=1) if part.ndim == 1 else part)
    return np.concatenate(parts).reshape(n, views, -1)


def _accuracy(model: BaseEstimator, block: Block) -> float:
    predicted = model.classes_[class_scores(model, block.X).mean(axis=1).argmax(axis=1)]
    return float(np.mean(predicted == block.y))


@dataclass(frozen=True)
class _Fold:
    """Transformed fit rows (one row per view) and validation rows of one split."""

    X: np.ndarray
    y: np.ndarray
    val: Block


@dataclass(frozen=True)
class _Unit:
    """One independent piece of a sweep: ``head`` with ``fixed`` set, fitted once, or along
    its path through ``path`` (values of ``head.path_param``)."""

    head: BaseEstimator
    fixed: dict[str, Any]
    path: tuple[Any, ...] = ()


def _take(block: Block, rows: np.ndarray) -> Block:
    """A copy of some images of ``block``."""
    return Block(block.X[rows], block.y[rows], block.view_names)


def _folds(transform: TransformerMixin, train: Block,
           folds: Sequence[tuple[np.ndarray, np.ndarray]]) -> Iterator[_Fold]:
    """Each fold's copies of its rows, transformed by ``transform`` fitted on its fit rows."""
    for fit_rows, val_rows in folds:
        fit, val = _take(train, fit_rows), _take(train, val_rows)
        fitted = clone(transform).fit(fit.flat)
        X = transform_in_place(fitted, fit.flat)
        val_X = transform_in_place(fitted, val.flat).reshape(*val.X.shape[:2], -1)
        yield _Fold(X, fit.flat_labels, Block(val_X, val.y, val.view_names))


def _warm(model: BaseEstimator) -> dict[str, np.ndarray]:
    """A fitted model's weights as ``fit``'s starting point, where its ``fit`` takes one."""
    if "coef_init" not in inspect.signature(model.fit).parameters:
        return {}
    return {"coef_init": model.coef_, "intercept_init": model.intercept_}


def _score(fold: _Fold, unit: _Unit) -> list[tuple[dict[str, Any], float, bool, dict]]:
    """(params, validation top-1, converged, weights to warm-start from) of every fit of
    ``unit`` on ``fold``."""
    head = clone(unit.head).set_params(**unit.fixed)
    fits = (head.fit_path(fold.X, fold.y, unit.path) if unit.path
            else iter([({}, head.fit(fold.X, fold.y))]))
    return [({**unit.fixed, **params}, _accuracy(model, fold.val),
             bool(getattr(model, "converged_", True)), _warm(model)) for params, model in fits]


def _key(params: Mapping[str, Any]) -> tuple:
    return tuple(sorted(params.items()))


def _units(head: BaseEstimator, points: Sequence[dict[str, Any]]) -> list[_Unit]:
    """``points`` grouped into units: one per setting of everything but the path parameter."""
    path = getattr(head, "path_param", None)
    if not hasattr(head, "fit_path") or not points or path not in points[0]:
        return [_Unit(head, dict(p)) for p in points]
    lines: dict[tuple, list[Any]] = {}
    for p in points:
        lines.setdefault(_key({k: v for k, v in p.items() if k != path}), []).append(p[path])
    return [_Unit(head, dict(fixed), tuple(values)) for fixed, values in lines.items()]


def _beyond(values: list[Any], low_end: bool, bounds: tuple[float, float]) -> list[Any]:
    """Up to ``EXTEND_STEPS`` values past one end of a rising grid, at its spacing, in bounds."""
    integer = all(isinstance(v, (int, np.integer)) for v in values)
    end, next_in = (values[0], values[1]) if low_end else (values[-1], values[-2])
    ratio = end / next_in
    new, value = [], end
    for _ in range(EXTEND_STEPS):
        previous, value = value, value * ratio
        if integer:
            value = min(round(value), previous - 1) if low_end else max(round(value), previous + 1)
        else:
            value = float(f"{value:.12g}")  # 1000, not 1000.0000000000005
        if not bounds[0] <= value <= bounds[1]:
            break
        new.append(value)
    return new


def _extension(axes: Mapping[str, list[Any]], mean: Mapping[tuple, float]) -> tuple[
        str | None, list[Any], str | None]:
    """(parameter, values to add) where the best value sits strictly at an edge of its axis,
    else (None, [], note): note names the parameter whose edge is also its bound."""
    candidates = list(ParameterGrid(dict(axes)))
    for param, values in axes.items():
        swept = SWEPT.get(param)
        if swept is None or swept.bounds is None or len(values) < 3:
            continue
        profile = [max(mean[_key(c)] for c in candidates if c[param] == v) for v in values]
        best = int(np.argmax(profile))
        if best == 0 and profile[0] > profile[1]:
            low_end = True
        elif best == len(values) - 1 and best > 0:
            low_end = False
        else:
            continue
        new = _beyond(values, low_end, swept.bounds)
        if new:
            return param, new, None
        side = "smallest" if low_end else "largest"
        return None, [], (
            f"the best {swept.option}={values[best]:g} is the {side} value allowed "
            f"({swept.bounds[0]:g} to {swept.bounds[1]:g}); the best may lie beyond: fix "
            f"{swept.option}= ({swept.flag}) to try one"
        )
    return None, [], None


def choose(
    head: BaseEstimator,
    transform: TransformerMixin,
    grid: Mapping[str, Sequence[Any]],
    train: Block,
    *,
    seed: int = 0,
    val_size: float = 0.1,
    engine: Engine | None = None,
    plan: ValidationPlan | None = None,
) -> Selection:
    """Score every grid point on validation rows of ``train``; keep the best mean top-1.

    The transform is fitted on each fold's fit rows. Ties go to the earlier grid point (the
    smaller C of a rising grid, the fewer epochs). ``engine`` runs the independent units
    (folds, and settings of the non-path parameters); default: two local threads. ``plan``
    (a dataset's own validation split, ``splits.given_plan``) replaces the carved one.
    """
    start = time.perf_counter()
    engine = engine or LocalEngine()
    plan = plan or validation_plan(train.y, val_size, seed)
    axes = {name: sorted(values) for name, values in grid.items()}
    scores: dict[tuple, list[float]] = {}
    warm: dict[tuple, dict[str, np.ndarray]] = {}
    unconverged: set[tuple] = set()

    def run(points: list[dict[str, Any]]) -> None:
        results = engine.map_shared(_score, _folds(transform, train, plan.folds),
                                    _units(head, points))
        for per_fold in results:
            for per_unit in per_fold:
                for params, score, converged, weights in per_unit:
                    scores.setdefault(_key(params), []).append(score)
                    warm.setdefault(_key(params), weights)
                    if not converged:
                        unconverged.add(_key(params))

    run(list(ParameterGrid(axes)))
    while True:
        mean = {key: float(np.mean(values)) for key, values in scores.items()}
        param, new, edge = _extension(axes, mean)
        if param is None:
            break
        logger.info("the best %s is at the edge of %s: trying %s", param, axes[param], new)
        axes[param] = sorted(axes[param] + new)
        run([p for p in ParameterGrid(axes) if p[param] in new])
    candidates = list(ParameterGrid(axes))
    val_scores = [mean[_key(c)] for c in candidates]
    best = int(np.argmax(val_scores))
    logger.info("%s, %d validation scores per candidate", plan.method, plan.n_val)
    for params, score in zip(candidates, val_scores, strict=True):
        logger.debug("  %s: val top-1 %.4f", params, score)
    logger.info("chose %s (val top-1 %.4f)", candidates[best], val_scores[best])
    if edge:
        logger.warning(edge)
    not_converged = [c for c in candidates if _key(c) in unconverged]
    if not_converged:
        logger.warning("%d of %d candidate fits stopped before their tolerance: %s",
                       len(not_converged), len(candidates), not_converged)
    return Selection(candidates[best], candidates, val_scores, plan.method, plan.n_val,
                     not_converged, edge, time.perf_counter() - start,
                     warm[_key(candidates[best])])


def refit(
    head: BaseEstimator, transform: TransformerMixin, params: Mapping[str, Any], train: Block,
    *, copy: bool = True, warm: Mapping[str, np.ndarray] | None = None,
) -> Pipeline:
    """Transform and head fitted on all of ``train`` with ``params``, as one pipeline.

    ``copy=False`` transforms ``train``'s features in place (one float32 copy fewer); only
    for a block the caller owns and drops afterwards. ``warm`` (``Selection.warm``) goes to
    the head's ``fit``: the sweep's weights in its fold's coordinates, which the refit's
    transform, fitted on nine tenths the same rows, barely moves.
    """
    transform = clone(transform).fit(train.flat)
    X = transform.transform(train.flat) if copy else transform_in_place(transform, train.flat)
    model = clone(head).set_params(**params).fit(X, train.flat_labels, **(warm or {}))
    return Pipeline([("transform", transform), ("head", model)])


def select_and_refit(
    head: BaseEstimator, transform: TransformerMixin, grid: Mapping[str, Sequence[Any]],
    train: Block, *, seed: int, val_size: float, engine: Engine | None = None,
    copy: bool = True, plan: ValidationPlan | None = None,
) -> tuple[Pipeline, dict[str, Any]]:
    """``choose`` (where ``grid`` has something to sweep) then ``refit``: the model, and what
    the run records about both (chosen values, validation method and scores, convergence)."""
    selection = choose(head, transform, grid, train, seed=seed, val_size=val_size,
                       engine=engine, plan=plan) if grid else Selection()
    start = time.perf_counter()
    model = refit(head, transform, selection.params, train, copy=copy, warm=selection.warm)
    fitted = model[-1]
    record = {
        "params": selection.params,
        "grid": selection.grid,
        "val_scores": selection.val_scores,
        "selection": selection.method,
        "n_val": selection.n_val,
        "sweep_not_converged": selection.not_converged,
        "edge_of_grid": selection.edge,
        "select_seconds": selection.seconds,
        "fit_seconds": time.perf_counter() - start,
        "converged": getattr(fitted, "converged_", None),
        "iterations": getattr(fitted, "n_iter_", None),
        "relative_gradient": getattr(fitted, "relative_gradient_", None),
        "stopped": getattr(fitted, "stop_", None),
    }
    return model, record


def evaluate(model: Pipeline, test: Block, n_classes: int) -> dict[str, Any]:
    """Top-1 (views averaged), top-1 of the centre view, top-5 and the confusion matrix."""
    start = time.perf_counter()
    per_view = class_scores(model, test.X)
    seconds = time.perf_counter() - start
    classes = model.classes_
    averaged = per_view.mean(axis=1)
    ranked = classes[np.argsort(-averaged, axis=1)]
    predicted = ranked[:, 0]
    confusion = confusion_matrix(test.y, predicted, labels=np.arange(n_classes))
    metrics: dict[str, Any] = {
        "top1": float(np.mean(predicted == test.y)),
        "top5": float(np.mean((ranked[:, :5] == test.y[:, None]).any(axis=1)))
        if len(classes) > 5
        else None,
        "confusion": confusion.tolist(),
        "predict_seconds": seconds,
        "n_test": len(test.y),
        "test_views": len(test.view_names),
    }
    if len(test.view_names) > 1:
        centre = classes[per_view[:, test.centre].argmax(axis=1)]
        metrics["top1_centre"] = float(np.mean(centre == test.y))
    return metrics
