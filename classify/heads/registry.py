"""The head registry: one table, name -> constructor, swept grid and user-settable options;
and one table of the swept hyperparameters: their option names and how far a grid may grow."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from featcache.classify.heads.knn import CosineKNN
from featcache.classify.heads.linear import LinearSVM, SoftmaxRegression
from featcache.classify.heads.mlp import MLPHead
from featcache.errors import UsageError
from featcache.sklearn_compat import InvalidParameterError

C_GRID = tuple(float(c) for c in np.logspace(-4, 1, 11))
WEIGHT_DECAY_GRID = (1e-5, 1e-4, 1e-3)


@dataclass(frozen=True)
class Swept:
    """A swept hyperparameter: how users fix it, and the bounds its grid may be extended to
    (``None``: never extended, e.g. the MLP's epochs, bounded by its schedule)."""

    option: str
    flag: str
    bounds: tuple[float, float] | None


SWEPT: Mapping[str, Swept] = MappingProxyType({
    "C": Swept("C", "--C", (1e-6, 1e3)),
    "weight_decay": Swept("WEIGHT_DECAY", "--weight-decay", (1e-8, 1e-1)),
    "n_neighbors": Swept("NEIGHBORS", "--neighbors", (1, 1000)),
    "epochs": Swept("EPOCHS", "--epochs", None),
})


def _epochs(n: int) -> tuple[int, ...]:
    return tuple(range(1, n + 1))


@dataclass(frozen=True)
class HeadSpec:
    """A head: how to build it, what the protocol sweeps, what a user may fix."""

    name: str
    build: Callable[[], BaseEstimator]
    grid: Mapping[str, tuple[Any, ...]]
    options: tuple[str, ...]
    summary: str


_SPECS = (
    HeadSpec(
        "svm",
        LinearSVM,
        {"C": C_GRID},
        ("C",),
        "linear SVM, one-vs-rest, squared hinge, L2 (fast torch L-BFGS)",
    ),
    HeadSpec(
        "logreg",
        SoftmaxRegression,
        {"C": C_GRID},
        ("C",),
        "multinomial logistic regression, L2 (fast torch L-BFGS)",
    ),
    HeadSpec(
        "mlp",
        MLPHead,
        {"weight_decay": WEIGHT_DECAY_GRID, "epochs": _epochs(30)},
        ("hidden", "dropout", "weight_decay", "epochs"),
        "MLP 512, dropout 0.5, Adam, cosine schedule of 30 epochs; weight decay and epochs chosen",
    ),
    HeadSpec(
        "mlp-alexnet",
        lambda: MLPHead(hidden=(4096, 4096), dropout=0.5, weight_decay=5e-4, max_epochs=15),
        {},
        ("hidden", "dropout", "weight_decay", "epochs"),
        "AlexNet-style head 4096-4096, dropout 0.5, 15 epochs (Hertel et al.); slow on CPU",
    ),
    HeadSpec(
        "mlp-ucmerced",
        lambda: MLPHead(hidden=(84, 63, 42), dropout=0.5, max_epochs=15, batch_size=32),
        {"weight_decay": WEIGHT_DECAY_GRID, "epochs": _epochs(15)},
        ("hidden", "dropout", "weight_decay", "epochs"),
        "84-63-42 chain, dropout, Adam, up to 15 epochs (Iorga & Neagoe, UC Merced)",
    ),
    HeadSpec(
        "knn",
        CosineKNN,
        {"n_neighbors": (1, 3, 10, 30)},
        ("n_neighbors",),
        "k nearest neighbours by cosine similarity, majority vote",
    ),
)
HEADS: Mapping[str, HeadSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})
DEFAULT_HEAD = "svm"


def build_head(
    name: str, fixed: Mapping[str, Any], seed: int
) -> tuple[BaseEstimator, dict[str, tuple[Any, ...]]]:
    """Head ``name`` with ``fixed`` hyperparameters set and checked, and the grid left to sweep."""
    if name not in HEADS:
        raise UsageError(f"unknown head {name!r}; valid: {', '.join(HEADS)}")
    spec = HEADS[name]
    foreign = sorted(set(fixed) - set(spec.options))
    if foreign:
        raise UsageError(
            f"head {name!r} takes no {', '.join(foreign)}; it takes: {', '.join(spec.options)}"
        )
    head = spec.build()
    if "random_state" in head.get_params():
        head.set_params(random_state=seed)
    head.set_params(**fixed)
    try:
        head._validate_params()
    except InvalidParameterError as exc:
        raise UsageError(str(exc)) from None
    grid = {key: values for key, values in spec.grid.items() if key not in fixed}
    return head, grid
