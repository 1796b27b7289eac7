"""featcache: frozen-CNN features cached once in HDF5, classified many times.

``featcache.extract`` is stage one (and, called, makes or finds a cache); ``featcache.classify``
is stage two. The names below are loaded on first use, so ``import featcache`` stays light::

    from featcache import extract, load_features, LinearSVM
    cache = extract("digits", resolution=32)
    X, y, groups = load_features(cache, "train")
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_features": "featcache.classify.load",
    "iter_features": "featcache.classify.load",
    "find_cache": "featcache.classify.load",
    "score_per_image": "featcache.classify.load",
    "LinearSVM": "featcache.classify.heads.linear",
    "SoftmaxRegression": "featcache.classify.heads.linear",
    "MLPHead": "featcache.classify.heads.mlp",
    "CosineKNN": "featcache.classify.heads.knn",
    "Standardize": "featcache.classify.transforms",
    "PCAWhiten": "featcache.classify.transforms",
    "FeatcacheError": "featcache.errors",
    "UsageError": "featcache.errors",
}

__all__ = ["classify", "extract", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in ("extract", "classify"):
        return importlib.import_module(f"featcache.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'featcache' has no attribute {name!r}")
