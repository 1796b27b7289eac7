"""Choose hyperparameters on a validation split, refit on train + validation, test once.

``choose`` never sees the test split; ``refit`` fits the transform and the head on all training
rows; ``evaluate`` is the only function that reads test rows. Each consumes its blocks: the
transform overwrites their features in place, so at most one float32 copy of the training
features is alive.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import ParameterGrid
from sklearn.pipeline import Pipeline
from tqdm.auto import tqdm

from classify.features import Block
from classify.transforms import transform_in_place

logger = logging.getLogger(__name__)

SCORE_BLOCK = 4096


@dataclass
class Selection:
    """What the validation sweep found (empty grid when every value was fixed)."""

    params: dict[str, Any] = field(default_factory=dict)
    grid: list[dict[str, Any]] = field(default_factory=list)
    val_scores: list[float] = field(default_factory=list)
    seconds: float = 0.0


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch ops with ``n`` intra-op threads, restoring the previous count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def class_scores(model: BaseEstimator, X: np.ndarray) -> np.ndarray:
    """Per-view class scores (n, views, classes): probabilities where the head has them."""
    n, views, dim = X.shape
    score = model.predict_proba if hasattr(model, "predict_proba") else model.decision_function
    parts = [
        score(X[lo : lo + SCORE_BLOCK].reshape(-1, dim)) for lo in range(0, n, SCORE_BLOCK)
    ]
    return np.concatenate(parts).reshape(n, views, -1)


def _accuracy(model: BaseEstimator, block: Block) -> float:
    predicted = model.classes_[class_scores(model, block.X).mean(axis=1).argmax(axis=1)]
    return float(np.mean(predicted == block.y))


def _fit_transform(transform: TransformerMixin, block: Block) -> Block:
    fitted = transform.fit(block.flat)
    X = transform_in_place(fitted, block.flat).reshape(*block.X.shape[:2], -1)
    return Block(X, block.y, block.view_names)


def _try(head: BaseEstimator, params: dict[str, Any], fit: Block, val: Block) -> float:
    model = clone(head).set_params(**params).fit(fit.flat, fit.flat_labels)
    return _accuracy(model, val)


def choose(
    head: BaseEstimator,
    transform: TransformerMixin,
    grid: Mapping[str, Sequence[Any]],
    fit: Block,
    val: Block,
    *,
    n_jobs: int = 2,
) -> Selection:
    """Fit ``transform`` on ``fit``, try every grid point, keep the best validation top-1.

    Ties go to the earlier grid point (the smaller C of a rising grid). Candidates run in
    ``n_jobs`` threads with the torch threads shared out between them.
    """
    start = time.perf_counter()
    transform = clone(transform)
    fit = _fit_transform(transform, fit)
    val = Block(transform_in_place(transform, val.flat).reshape(*val.X.shape[:2], -1),
                val.y, val.view_names)
    candidates = list(ParameterGrid(dict(grid)))
    n_jobs = max(1, min(n_jobs, len(candidates)))
    scores: dict[int, float] = {}
    with torch_threads(torch.get_num_threads() // n_jobs), tqdm(
        total=len(candidates), desc="sweep", leave=False, disable=None
    ) as bar:
        jobs = Parallel(n_jobs=n_jobs, backend="threading", return_as="generator_unordered")(
            delayed(lambda i: (i, _try(head, candidates[i], fit, val)))(i)
            for i in range(len(candidates))
        )
        for i, score in jobs:
            scores[i] = score
            bar.update()
    val_scores = [scores[i] for i in range(len(candidates))]
    best = int(np.argmax(val_scores))
    for params, score in zip(candidates, val_scores, strict=True):
        logger.info("  %s: val top-1 %.4f", params, score)
    logger.info("chose %s (val top-1 %.4f)", candidates[best], val_scores[best])
    if len(candidates) > 2 and best in (0, len(candidates) - 1) and len(set(val_scores)) > 1:
        logger.warning("the choice %s is at the edge of the grid; the best value may lie "
                       "beyond it (fix it, e.g. C=..., to try one)", candidates[best])
    return Selection(candidates[best], candidates, val_scores, time.perf_counter() - start)


def refit(
    head: BaseEstimator, transform: TransformerMixin, params: Mapping[str, Any], train: Block
) -> Pipeline:
    """Transform and head fitted on all of ``train`` with ``params``, as one pipeline."""
    transform = clone(transform)
    train = _fit_transform(transform, train)
    model = clone(head).set_params(**params).fit(train.flat, train.flat_labels)
    return Pipeline([("transform", transform), ("head", model)])


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
