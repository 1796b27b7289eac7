"""Cosine k-nearest-neighbour baseline: torch matmul and top-k over blocks of queries and of
training rows, sized from the one memory budget (:mod:`featcache.memory`)."""

from __future__ import annotations

from numbers import Integral
from typing import ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featcache.memory import chunk_rows
from featcache.sklearn_compat import Interval

QUERY_BLOCK = 1024


class CosineKNN(ClassifierMixin, BaseEstimator):
    """Majority vote of the ``n_neighbors`` training rows most cosine-similar to a query.

    ``fit`` keeps a reference to ``X`` (no copy) and its row norms. ``predict_proba`` is the
    fraction of neighbour votes per class; ``n_neighbors`` is capped at the training size.
    """

    _parameter_constraints: ClassVar[dict] = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")]
    }

    def __init__(self, n_neighbors: int = 10) -> None:
        self.n_neighbors = n_neighbors

    def fit(self, X: np.ndarray, y: np.ndarray) -> CosineKNN:
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float32, order="C")
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        self.X_fit_ = X
        self.codes_ = codes
        self.inv_norms_ = 1.0 / np.maximum(np.linalg.norm(X, axis=1), 1e-12).astype(np.float32)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Vote fractions per class. Holds, beside the inputs and the output, a block of
        similarities of at most the memory budget (``QUERY_BLOCK`` queries x a chunk of
        training rows) and the running top ``k`` of each query."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        codes = torch.from_numpy(self.codes_)
        k = min(self.n_neighbors, len(self.X_fit_))
        out = np.empty((len(X), len(self.classes_)), dtype=np.float32)
        for lo in range(0, len(X), QUERY_BLOCK):
            nearest = self._nearest(torch.from_numpy(X[lo : lo + QUERY_BLOCK]), k)
            votes = torch.zeros(len(nearest), len(self.classes_))
            votes.scatter_add_(1, codes[nearest], torch.full(nearest.shape, 1.0 / k))
            out[lo : lo + len(nearest)] = votes.numpy()
        return out

    def _nearest(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """Indices of each query's ``k`` most similar training rows, over training chunks."""
        step = max(k, chunk_rows(4 * len(queries)))
        best_sims = best_rows = None
        for start in range(0, len(self.X_fit_), step):
            train = torch.from_numpy(self.X_fit_[start : start + step])
            inv_norms = torch.from_numpy(self.inv_norms_[start : start + step])
            sims = (queries @ train.T) * inv_norms
            top = sims.topk(min(k, len(train)), dim=1)
            rows = top.indices + start
            if best_sims is not None:
                sims_k = torch.cat([best_sims, top.values], dim=1)
                merged = sims_k.topk(k, dim=1)
                best_sims = merged.values
                best_rows = torch.cat([best_rows, rows], dim=1).gather(1, merged.indices)
            else:
                best_sims, best_rows = top.values, rows
        return best_rows

    def predict(self, X: np.ndarray) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]
