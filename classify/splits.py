"""Seeded, stratified choices of rows from label vectors (no features involved)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold

from featcache.errors import UsageError
from featcache.stratified import stratified_split as _split

MIN_HOLDOUT = 1000
CV_FOLDS = 5


def stratified_split(
    y: np.ndarray, held: float | int, seed: int, *, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held) of ``y``; ``held`` is a fraction or a count, at least one per class."""
    _, sizes = np.unique(y, return_counts=True)
    n_classes = len(sizes)
    count = max(held if isinstance(held, int) else round(held * len(y)), n_classes)
    if sizes.min() < 2 or count > len(y) - n_classes:
        raise UsageError(
            f"cannot carve a stratified {what} of {count} from {len(y)} samples of "
            f"{n_classes} classes (every class needs at least 2 samples)"
        )
    return _split(y, test=count, seed=seed)


def stratified_subset(
    y: np.ndarray, size: int, seed: int, *, what: str = "TRAIN_SIZE"
) -> np.ndarray:
    """Sorted indices of a stratified subset of ``size`` rows of ``y``."""
    if size > len(y):
        raise UsageError(f"{what}={size} exceeds the {len(y)} samples available")
    if size == len(y):
        return np.arange(len(y))
    n_classes = len(np.unique(y))
    if size < n_classes:
        raise UsageError(f"{what}={size} is smaller than the number of classes ({n_classes})")
    return _split(y, train=size, seed=seed)[0]


def per_class(y: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Sorted indices of ``shots`` random samples of every class in ``y``."""
    rng = np.random.default_rng(seed)
    picks = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        if len(members) < shots:
            raise UsageError(
                f"SHOTS={shots} but class {label} has only {len(members)} training samples"
            )
        picks.append(rng.choice(members, size=shots, replace=False))
    return np.sort(np.concatenate(picks))


@dataclass(frozen=True)
class ValidationPlan:
    """How hyperparameters are chosen: the method's name and its (fit, validation) folds."""

    method: str
    folds: list[tuple[np.ndarray, np.ndarray]]

    @property
    def n_val(self) -> int:
        """Validation scores per candidate: held-out rows, or every row once under k-fold."""
        return sum(len(val) for _, val in self.folds)


def validation_plan(
    y: np.ndarray, val_size: float, seed: int, *, min_holdout: int = MIN_HOLDOUT,
    folds: int = CV_FOLDS,
) -> ValidationPlan:
    """A stratified hold-out of ``val_size`` of the rows where that is at least ``min_holdout``
    rows, else stratified ``folds``-fold cross-validation (fewer folds where a class is
    smaller). Rows are images: all views of one stay on one side."""
    held = round(val_size * len(y))
    if held >= min_holdout:
        fit, val = stratified_split(y, val_size, seed, what="validation split")
        return ValidationPlan(f"holdout {100 * val_size:g}%", [(fit, val)])
    labels, sizes = np.unique(y, return_counts=True)
    k = min(folds, int(sizes.min()))
    if k < 2:
        raise UsageError(
            f"cannot carve a validation split from {len(y)} training samples: class "
            f"{labels[sizes.argmin()]} has only {sizes.min()} (stratified k-fold "
            "cross-validation needs at least 2 per class)"
        )
    splitter = StratifiedKFold(k, shuffle=True, random_state=seed)
    return ValidationPlan(f"{k}-fold CV", list(splitter.split(np.zeros(len(y)), y)))


def given_plan(n_fit: int, n_val: int) -> ValidationPlan:
    """The dataset's own validation split: the first ``n_fit`` rows fit, the next ``n_val``
    validate (a ``val`` split stored in the cache, appended to the training rows)."""
    return ValidationPlan("given val", [(np.arange(n_fit), np.arange(n_fit, n_fit + n_val))])
