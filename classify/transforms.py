"""Feature transforms fitted on training rows only; they work blockwise on float32.

scikit-learn's ``StandardScaler`` builds a float64 temporary the size of its input while it
fits. ``PCA(whiten=True, svd_solver="covariance_eigh")`` makes no centred copy either, but on
float32 input it forms the uncentred ``X.T @ X`` in float32 and subtracts the mean's outer
product, which loses the small-variance axes when the features' mean is large beside their
spread; ``PCAWhiten`` centres each block before accumulating in float64 (measured:
docs/classify.md, "PCAWhiten or scikit-learn's PCA"). Output is float32 whatever the input
dtype (the ``preserves_dtype`` tag says so); ``Standardize(copy=False)`` transforms in place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from numbers import Integral
from types import MappingProxyType
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.preprocessing import FunctionTransformer, Normalizer
from sklearn.utils import Tags
from sklearn.utils.validation import check_is_fitted, validate_data

from featcache.sklearn_compat import Interval

BLOCK = 4096


def _blocks(n: int) -> Iterator[slice]:
    for lo in range(0, n, BLOCK):
        yield slice(lo, min(lo + BLOCK, n))


def _mean(X: np.ndarray) -> np.ndarray:
    total = np.zeros(X.shape[1])
    for rows in _blocks(len(X)):
        total += X[rows].sum(axis=0, dtype=np.float64)
    return total / len(X)


class _Float32Transform(TransformerMixin, BaseEstimator):
    """Computes in float32 and returns float32."""

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


class Standardize(_Float32Transform):
    """Zero mean, unit variance per feature (constant features are only centred)."""

    _parameter_constraints: ClassVar[dict] = {"copy": ["boolean"]}

    def __init__(self, *, copy: bool = True) -> None:
        self.copy = copy

    def fit(self, X: np.ndarray, y: object = None) -> Standardize:
        self._validate_params()
        X = validate_data(self, X, dtype=np.float32)
        mean = _mean(X)
        sq = np.zeros(X.shape[1])
        for rows in _blocks(len(X)):
            sq += np.square(X[rows] - mean.astype(np.float32), dtype=np.float64).sum(axis=0)
        std = np.sqrt(sq / len(X))
        self.mean_ = mean.astype(np.float32)
        self.scale_ = np.where(std > 1e-12, std, 1.0).astype(np.float32)
        return self

    def transform(self, X: np.ndarray, copy: bool | None = None) -> np.ndarray:
        check_is_fitted(self)
        copy = self.copy if copy is None else copy
        X = validate_data(self, X, dtype=np.float32, reset=False, copy=copy)
        for rows in _blocks(len(X)):
            X[rows] -= self.mean_
            X[rows] /= self.scale_
        return X


class PCAWhiten(_Float32Transform):
    """Centre, project on the top ``n_components`` principal axes (all ``min(n_samples,
    n_features)`` by default), scale each to unit variance.

    Memory beyond the input: the float64 ``n_features`` x ``n_features`` covariance, one
    block of ``BLOCK`` rows, and the float32 output (``n_samples`` x ``n_components``).
    """

    _parameter_constraints: ClassVar[dict] = {
        "n_components": [Interval(Integral, 1, None, closed="left"), None]
    }

    def __init__(self, n_components: int | None = None) -> None:
        self.n_components = n_components

    def fit(self, X: np.ndarray, y: object = None) -> PCAWhiten:
        self._validate_params()
        X = validate_data(self, X, dtype=np.float32)
        limit = min(X.shape)
        k = limit if self.n_components is None else self.n_components
        if k > limit:
            raise ValueError(
                f"PCA to DIM={k} needs at most min(n_samples, n_features)={limit} components"
            )
        mean = _mean(X)
        cov = np.zeros((X.shape[1], X.shape[1]))
        for rows in _blocks(len(X)):
            centred = X[rows] - mean.astype(np.float32)
            cov += centred.T @ centred
        variances, axes = np.linalg.eigh(cov / len(X))
        top = np.argsort(variances)[::-1][:k]
        self.n_components_ = k
        self.mean_ = mean.astype(np.float32)
        self.explained_variance_ = variances[top]
        self.components_ = axes[:, top].T.astype(np.float32)
        scale = np.sqrt(np.maximum(variances[top], 1e-12 * variances.max()))
        self.projection_ = (axes[:, top] / scale).astype(np.float32)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        out = np.empty((len(X), self.n_components_), dtype=np.float32)
        for rows in _blocks(len(X)):
            out[rows] = (X[rows] - self.mean_) @ self.projection_
        return out


TRANSFORMS: Mapping[str, Callable[[int | None], TransformerMixin]] = MappingProxyType({
    "standardize": lambda dim: Standardize(),
    "l2": lambda dim: Normalizer(),
    "pca": lambda dim: PCAWhiten(dim or 256),
    "none": lambda dim: FunctionTransformer(),
})
DEFAULT_TRANSFORM = "standardize"


def transform_in_place(transform: TransformerMixin, X: np.ndarray) -> np.ndarray:
    """``transform.transform(X)`` overwriting ``X`` where the output has its shape."""
    if isinstance(transform, (Standardize, Normalizer)):
        return transform.transform(X, copy=False)
    return transform.transform(X)
