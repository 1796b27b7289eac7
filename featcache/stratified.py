"""Seeded stratified splits of a label vector: scikit-learn's stratified shuffle split, owned.

A split enters the cache key only as its rule (``stratified test=0.2 seed=0``), so which rows
it picks must not depend on the scikit-learn that happens to be installed. This module
reproduces ``train_test_split(rows, test_size=..., stratify=labels, random_state=seed)`` of
scikit-learn 1.x draw for draw (per-class counts by the approximate mode of the multivariate
hypergeometric with ties broken by the seeded generator, then one seeded permutation per
class), so every split made before stays what it was; a test compares the two over many
label vectors. It also keeps scikit-learn's import (0.7-1.1 s here) out of stage one.
"""

from __future__ import annotations

import math

import numpy as np

from featcache.errors import UsageError


def stratified_split(
    labels: np.ndarray, *, seed: int, test: float | int | None = None,
    train: float | int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted row indices (train, test); ``test`` / ``train``: a fraction in (0, 1) or a count,
    the other side taking the rest where only one is given."""
    labels = np.asarray(labels)
    n_train, n_test = _sizes(len(labels), test, train)
    classes, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        raise UsageError(
            f"class {classes[counts.argmin()].item()!r} has 1 sample; a stratified split needs at "
            "least 2 of every class"
        )
    for side, size in (("train", n_train), ("test", n_test)):
        if size < len(classes):
            raise UsageError(
                f"a {side} side of {size} cannot hold one sample of each of the "
                f"{len(classes)} classes"
            )
    members = np.split(np.argsort(codes, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    to_train = _approximate_mode(counts, n_train, rng)
    to_test = _approximate_mode(counts - to_train, n_test, rng)
    train_rows, test_rows = [], []
    for rows, k_train, k_test in zip(members, to_train, to_test, strict=True):
        shuffled = rows.take(rng.permutation(len(rows)), mode="clip")
        train_rows.append(shuffled[:k_train])
        test_rows.append(shuffled[k_train : k_train + k_test])
    return np.sort(np.concatenate(train_rows)), np.sort(np.concatenate(test_rows))


def _sizes(n: int, test: float | int | None, train: float | int | None) -> tuple[int, int]:
    """(n_train, n_test): a fraction of the test side rounds up, of the train side down."""
    def count(value: float | int | None, rounding) -> int | None:
        if value is None:
            return None
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if not 0 < value < n:
                raise UsageError(f"a split side of {value} rows must be in 1..{n - 1}")
            return int(value)
        if not 0.0 < value < 1.0:
            raise UsageError(f"split fraction {value} must be in (0, 1)")
        return int(rounding(value * n))

    n_test, n_train = count(test, math.ceil), count(train, math.floor)
    if n_test is None and n_train is None:
        raise UsageError("a stratified split needs a test or a train size")
    n_train = n - n_test if n_train is None else n_train
    n_test = n - n_train if n_test is None else n_test
    if n_train + n_test > n or n_train == 0:
        raise UsageError(
            f"train {n_train} + test {n_test} rows do not fit in {n} (or leave train empty)"
        )
    return n_train, n_test


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Per-class draws summing to ``draws``: proportional, floored, then the largest
    remainders first, ties broken at random."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    remainder = continuous - floored
    for value in np.sort(np.unique(remainder))[::-1]:
        if need <= 0:
            break
        (tied,) = np.where(remainder == value)
        add = min(len(tied), need)
        floored[rng.choice(tied, size=add, replace=False)] += 1
        need -= add
    return floored.astype(int)
