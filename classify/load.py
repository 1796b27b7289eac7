"""The Python API of stage two: a cache as ``X, y, groups`` for any scikit-learn estimator.

``load_features`` reads the rows asked for into memory as float32 (a cache stores float16
by default and HDF5 chunks carry checksums, so the file cannot be memory-mapped as float32);
``iter_features`` yields the same arrays ``chunk_rows`` images at a time, for caches larger
than memory (e.g. with ``SGDClassifier.partial_fit``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featcache.classify.features import DEFAULT_LAYERS, Block, Part, open_cache, read
from featcache.classify.select import DEFAULT_DATASET, CacheQuery, resolve_cache
from featcache.errors import UsageError
from featcache.extract.cache.hdf5 import READ_ROWS
from featcache.paths import default_data_dir

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def find_cache(
    dataset: str = DEFAULT_DATASET,
    *,
    data_dir: Path | str | None = None,
    layers: str | Sequence[str] = (),
    backbone: str | None = None,
    resolution: int | None = None,
    crops: str | None = None,
    pool: str | None = None,
    dtype: str | None = None,
) -> Path:
    """The one cache file of ``dataset`` (name or path) with these options, as ``make classify``
    finds it; an error lists the candidates when several match."""
    names = (layers,) if isinstance(layers, str) else tuple(layers)  # () : any layers
    query = CacheQuery(dataset=dataset, backbone=backbone, resolution=resolution, crops=crops,
                       pool=pool, dtype=dtype, layers=names)
    return resolve_cache(Path(data_dir or default_data_dir()), query)


def load_features(
    source: str | Path,
    split: str = "train",
    layers: str | Sequence[str] = DEFAULT_LAYERS,
    *,
    rows: Sequence[int] | np.ndarray | None = None,
    data_dir: Path | str | None = None,
    **options: str | int | None,
) -> Arrays:
    """``X`` float32 (rows x views, features), ``y`` and ``groups`` (the image row of each).

    ``source`` is a cache file (``.h5``) or a dataset as ``find_cache`` takes it, with its
    ``options`` (backbone, resolution, crops, pool, dtype). Several layers are concatenated.
    Several views of an image become consecutive rows with the same ``groups`` value, so
    ``GroupKFold`` keeps them on one side of a split.
    """
    path = _path(source, layers, data_dir, options)
    names = _layers(layers)
    with open_cache(path, names, splits=(split,)) as cache:
        n = len(cache.labels(split))
        index = np.arange(n) if rows is None else _rows(rows, n, split)
        return _flatten(read(cache, [Part(split, index)], names), index)


def _rows(rows: Sequence[int] | np.ndarray, n: int, split: str) -> np.ndarray:
    """``rows`` as row indices, each checked to lie in ``0..n-1``."""
    index = np.asarray(rows)
    if index.ndim != 1 or (index.size and index.dtype.kind not in "iu"):
        raise UsageError(f"rows= must be a list of integer row indices, got {rows!r}")
    bad = index[(index < 0) | (index >= n)]
    if bad.size:
        raise UsageError(f"rows= holds {bad[0]}: split {split!r} has rows 0 to {n - 1}")
    return index.astype(np.int64)


def iter_features(
    source: str | Path,
    split: str = "train",
    layers: str | Sequence[str] = DEFAULT_LAYERS,
    *,
    chunk_rows: int = READ_ROWS,
    data_dir: Path | str | None = None,
    **options: str | int | None,
) -> Iterator[Arrays]:
    """``load_features`` of ``chunk_rows`` images at a time, in row order."""
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)) \
            or chunk_rows < 1:
        raise UsageError(f"chunk_rows={chunk_rows!r} must be a positive integer (images a chunk)")
    path = _path(source, layers, data_dir, options)
    names = _layers(layers)
    with open_cache(path, names, splits=(split,)) as cache:
        n = len(cache.labels(split))
        for lo in range(0, n, chunk_rows):
            index = np.arange(lo, min(lo + chunk_rows, n))
            yield _flatten(read(cache, [Part(split, index)], names), index)


def _layers(layers: str | Sequence[str]) -> tuple[str, ...]:
    """One layer name, or several: at least one."""
    names = (layers,) if isinstance(layers, str) else tuple(layers)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise UsageError(f"layers={layers!r}: give a layer name or a list of them, e.g. 'pool'")
    return names


def _path(
    source: str | Path, layers: str | Sequence[str], data_dir: Path | str | None, options: dict
) -> Path:
    if Path(source).suffix == ".h5":
        if not Path(source).is_file():
            raise UsageError(f"no cache file at {source}; pass an existing .h5 file, or the "
                             "dataset as extract() was given it")
        return Path(source)
    return find_cache(str(source), data_dir=data_dir, layers=layers, **options)


def _flatten(block: Block, index: np.ndarray) -> Arrays:
    views = block.X.shape[1]
    return block.flat, block.flat_labels, np.repeat(index.astype(np.int64), views)


def score_per_image(model: Any, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    """Top-1 accuracy per image, as ``make classify`` reports it: each view's class scores
    (``predict_proba`` where the model has it, else ``decision_function``) averaged over the
    views sharing a ``groups`` value, then the best class. ``model.score(X, y)`` is instead
    the accuracy per view (the same number where every image has one view). Holds one row
    of class scores per view."""
    groups = np.asarray(groups)
    if not len(X) == len(y) == len(groups):
        raise UsageError(f"X, y and groups must have as many rows; got {len(X)}, {len(y)}, "
                         f"{len(groups)} (pass what load_features returned)")
    images, inverse = np.unique(groups, return_inverse=True)
    labels = np.empty(len(images), dtype=np.asarray(y).dtype)
    labels[inverse] = y
    if not np.array_equal(labels[inverse], y):
        raise UsageError("the views of one image (one groups value) hold different labels in y")
    score = model.predict_proba if hasattr(model, "predict_proba") else model.decision_function
    scores = np.asarray(score(X), dtype=np.float64)
    if scores.ndim == 1:  # a binary decision_function: one score per row
        scores = np.stack([-scores, scores], axis=1)
    summed = np.zeros((len(images), scores.shape[1]))
    np.add.at(summed, inverse, scores)
    predicted = np.asarray(model.classes_)[summed.argmax(axis=1)]
    return float(np.mean(predicted == labels))

