"""Seeded, stratified choices of rows from label vectors (no features involved)."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from extract.errors import UsageError


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
    kept, out = train_test_split(
        np.arange(len(y)), test_size=count, stratify=y, random_state=seed
    )
    return np.sort(kept), np.sort(out)


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
    subset, _ = train_test_split(np.arange(len(y)), train_size=size, stratify=y, random_state=seed)
    return np.sort(subset)


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
