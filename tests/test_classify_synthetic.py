"""Synthetic feature caches for the stage-two tests (helpers, plus a check of the helpers)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from featcache.extract.cache.hdf5 import FeatureCache, write_cache

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
    resolution: int = 32,
    source: str | None = None,
    fingerprint: str | None = None,
    class_names: list[str] | None = None,
) -> Path:
    """Write a finished cache with the contract's attributes under ``root/cache/`` and return
    its path (``<dataset>-<fingerprint8>/<options>-<key10>.h5``, as stage one names it)."""
    views = {"train": train_views, "test": test_views}
    meta = {
        "dataset": dataset,
        "dataset_source": source or f"synthetic.{dataset}",
        "dataset_fingerprint": fingerprint
        or hashlib.sha256(f"{dataset}:{seed}".encode()).hexdigest(),
        "fingerprint_mode": "stat" if source else "arrays",
        "backbone": backbone, "weights": "random", "weights_sha256": "random-init",
        "resolution": resolution,
        "crops": str(test_views) if train_views == test_views else f"test:{test_views}",
        "views": views, "pool": "avg", "dtype": "float16", "skip_bad": False,
        "split_rule": split_rule,
        "class_names": class_names or [f"class{i}" for i in range(classes)],
    }
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
    meta["fingerprint"] = key
    splits = {}
    for split, n, n_views, s in (("train", n_train, train_views, seed),
                                 ("test", n_test, test_views, test_seed)):
        X, y = blobs(n, classes=classes, dim=dim, spread=spread, seed=s, views=n_views)
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
            "view_names": ["full"] if n_views == 1 else TEN_CROP[:n_views],
        }
    folder = f"{dataset}-{meta['dataset_fingerprint'][:8]}"
    name = f"{backbone}-r{resolution}-v{test_views}-avg-float16-{key[:10]}.h5"
    return write_cache(Path(root) / "cache" / folder / name, meta=meta, splits=splits)


def test_synthetic_cache_reads_back(tmp_path: Path) -> None:
    path = write_synthetic(tmp_path, train_views=1, test_views=10, layers=("pool", "block5"))
    with FeatureCache(path) as cache:
        assert cache.features("train", ["pool", "block5"]).shape == (300, 32)
        assert cache.features("test", "pool").shape == (150, 10, 16)
        assert cache.view_names("test")[0] == "center"
