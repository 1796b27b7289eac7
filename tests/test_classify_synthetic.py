"""Synthetic feature caches for the stage-two tests (helpers, plus a check of the helpers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from extract.cache import CacheKey, FeatureCache, write_cache

TEN_CROP = ["center", "top_left", "top_right", "bottom_left", "bottom_right",
            "center_flip", "top_left_flip", "top_right_flip", "bottom_left_flip",
            "bottom_right_flip"]


def blobs(
    n: int, *, classes: int = 3, dim: int = 16, spread: float = 0.3, seed: int = 0,
    views: int = 1, shift: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around fixed class centres: (features [n, views, dim] or [n, dim], labels)."""
    centres = np.random.default_rng(1234).standard_normal((classes, dim)) * 3 + shift
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    rng.shuffle(y)
    noise = rng.standard_normal((n, views, dim)) * spread
    X = (centres[y][:, None, :] + noise).astype(np.float32)
    return (X[:, 0] if views == 1 else X), y


def write_synthetic(
    root: Path,
    *,
    dataset: str = "digits",
    backbone: str = "tinynet",
    n_train: int = 300,
    n_test: int = 150,
    classes: int = 3,
    dim: int = 16,
    spread: float = 0.3,
    layers: tuple[str, ...] = ("pool",),
    train_views: int = 1,
    test_views: int = 1,
    split_rule: str = "official",
    seed: int = 0,
    test_seed: int = 1,
    shuffle_train: bool = False,
    test_override: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Write a finished cache under ``root/cache/<dataset>/`` and return its path."""
    key = CacheKey(dataset=dataset, source=f"synthetic:{seed}", backbone=backbone,
                   weights="random", resolution=32, views=f"v{test_views}", pool="avg",
                   dtype="float16", split_rule=split_rule)
    splits = {}
    for split, n, views, s in (("train", n_train, train_views, seed),
                               ("test", n_test, test_views, test_seed)):
        X, y = blobs(n, classes=classes, dim=dim, spread=spread, seed=s, views=views)
        if split == "train" and shuffle_train:
            y = np.random.default_rng(99).permutation(y)
        if split == "test" and test_override is not None:
            X, y = test_override
        features = {}
        for i, layer in enumerate(layers):
            features[layer] = X if i == 0 else np.roll(X, i, axis=-1) * 0.5
        splits[split] = {
            "labels": y,
            "ids": [f"{split}/{i}" for i in range(len(y))],
            "features": features,
            "view_names": ["full"] if views == 1 else TEN_CROP[:views],
        }
    meta = {**key.__dict__, "class_names": [f"class{i}" for i in range(classes)]}
    return write_cache(key.path(root), meta=meta, splits=splits)


def test_synthetic_cache_reads_back(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path, train_views=1, test_views=10, layers=("pool", "block5"))
    with FeatureCache(path) as cache:
        assert cache.features("train", ["pool", "block5"]).shape == (300, 32)
        assert cache.features("test", "pool").shape == (150, 10, 16)
        assert cache.view_names("test")[0] == "center"


def test_newest_cache_holding_the_layers_is_chosen(tmp_path: Path) -> None:
    import os

    from classify.features import resolve_cache

    older = write_synthetic(tmp_path, layers=("pool", "block5"), seed=3)
    newer = write_synthetic(tmp_path, layers=("pool",), seed=4)
    os.utime(older, (1, 1))
    assert resolve_cache(tmp_path, "digits", None) == newer
    assert resolve_cache(tmp_path, "dig", None, ("block5",)) == older
