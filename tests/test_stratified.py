"""The owned stratified split draws exactly the rows scikit-learn's ``train_test_split`` draws."""

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from featcache.errors import UsageError
from featcache.stratified import stratified_split


def _sklearn(labels, seed, test=None, train=None):
    rows = np.arange(len(labels))
    a, b = train_test_split(rows, test_size=test, train_size=train, stratify=labels,
                            random_state=seed)
    return np.sort(a), np.sort(b)


@pytest.mark.parametrize("case", range(60))
def test_same_rows_as_scikit_learn(case):
    rng = np.random.default_rng(case)
    classes = int(rng.integers(2, 12))
    sizes = rng.integers(2, 40, classes)
    if case % 3 == 0:
        sizes[:] = sizes[0]  # equal classes: remainders tie, the generator breaks ties
    labels = rng.permutation(np.repeat(np.arange(classes), sizes))
    if case % 4 == 1:
        labels = np.array([f"c{v}" for v in labels])  # string labels, as folders give
    n = len(labels)
    sides = [{"test": float(rng.uniform(0.05, 0.5))},
             {"test": int(rng.integers(classes, n - classes + 1))},
             {"train": int(rng.integers(classes, n - classes + 1))}]
    for side in sides:
        ours = stratified_split(labels, seed=case, **side)
        theirs = _sklearn(labels, case, **side)
        assert all(np.array_equal(o, t) for o, t in zip(ours, theirs, strict=True)), side


def test_bad_sizes_name_the_value():
    labels = np.repeat([0, 1, 2], 4)
    with pytest.raises(UsageError, match=r"fraction 1\.5"):
        stratified_split(labels, test=1.5, seed=0)
    with pytest.raises(UsageError, match="cannot hold one sample of each of the 3 classes"):
        stratified_split(labels, test=2, seed=0)
    with pytest.raises(UsageError, match="class 7 has 1 sample"):
        stratified_split(np.array([0, 0, 7]), test=0.5, seed=0)
