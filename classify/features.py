"""Reading rows of a cache as float32 ``(n, views, dim)`` blocks."""

from __future__ import annotations

import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featcache.errors import CacheError, UsageError
from featcache.extract.cache.hdf5 import FeatureCache

logger = logging.getLogger(__name__)

DEFAULT_LAYERS = ("pool",)
CENTRE_VIEWS = ("full", "center", "centre")


def add_layers_command(meta: dict, layers: Sequence[str]) -> str:
    """The command that adds ``layers`` to the cache whose metadata is ``meta``: the command
    that made it (every option, so the same file), with ``--layers`` replaced."""
    words = shlex.split(str(meta.get("rebuild", "")))
    if "--layers" not in words[:-1]:
        source = str(meta.get("dataset_source", ""))
        dataset = source if Path(source).is_absolute() else meta.get("dataset", "?")
        return f"make extract DATASET={shlex.quote(str(dataset))} LAYERS={','.join(layers)}"
    words[words.index("--layers") + 1] = ",".join(layers)
    return shlex.join(words)


def _extract_hint(cache: FeatureCache, layers: Sequence[str]) -> str:
    return add_layers_command(cache.meta, layers)


def open_cache(
    path: Path, layers: Sequence[str], splits: Sequence[str] = ("train", "test")
) -> FeatureCache:
    """Open ``path`` and check that ``splits`` exist and hold ``layers``."""
    cache = FeatureCache(path)
    for split in splits:
        have = cache.splits
        if split not in have:
            gone = f"is damaged: its {split!r} split is gone ({_rebuild_hint(cache)})" \
                if split in cache.layout else f"has no {split!r} split"
            cache.close()
            raise CacheError(f"{path} {gone}; has {', '.join(have) or 'none'}")
        broken = cache.missing_parts(split)
        if broken:
            hint = _rebuild_hint(cache)
            cache.close()
            raise CacheError(f"{path} is damaged: split {split!r} has no {broken[0]}; {hint}")
        missing = [layer for layer in layers if layer not in cache.layers(split)]
        if missing:
            valid, hint = cache.layers(split), _extract_hint(cache, layers)
            cache.close()
            raise UsageError(
                f"layer {missing[0]!r} is not in {path.name} [{split}]; valid: "
                f"{', '.join(valid)}; extract it with: {hint}"
            )
    return cache


@dataclass(frozen=True)
class Part:
    """Some rows of one split of the cache."""

    split: str
    rows: np.ndarray


@dataclass
class Block:
    """Features ``X`` float32 (n, views, dim) and labels ``y`` of some rows."""

    X: np.ndarray
    y: np.ndarray
    view_names: list[str]

    @property
    def flat(self) -> np.ndarray:
        """One row per view, (n * views, dim); a view of ``X``, not a copy."""
        return self.X.reshape(-1, self.X.shape[-1])

    @property
    def flat_labels(self) -> np.ndarray:
        return np.repeat(self.y, self.X.shape[1])

    @property
    def centre(self) -> int:
        """Index of the centre (or only) view."""
        for name in CENTRE_VIEWS:
            if name in self.view_names:
                return self.view_names.index(name)
        return 0


def _rebuild_hint(cache: FeatureCache) -> str:
    """The command that rebuilds ``cache`` (stage one moves a damaged file aside first)."""
    command = cache.meta.get("rebuild")
    return f"rebuild it with: {command}" if command else "re-run the extraction that made it"


def _read_part(cache: FeatureCache, part: Part, layers: Sequence[str]) -> np.ndarray:
    try:
        X = cache.features(part.split, list(layers), rows=part.rows)
    except (OSError, KeyError, ValueError, CacheError) as exc:
        raise CacheError(f"{cache.path} is corrupt: reading {part.split!r} failed: {exc}; "
                         f"{_rebuild_hint(cache)}") from None
    return X if X.ndim == 3 else X[:, None, :]


def read(cache: FeatureCache, parts: Sequence[Part], layers: Sequence[str]) -> Block:
    """Features and labels of ``parts``, rows in the order given, concatenated in order."""
    views = {tuple(cache.view_names(p.split)) for p in parts}
    if len(views) > 1:
        raise UsageError(f"splits {[p.split for p in parts]} hold different views {sorted(views)}")
    y = np.concatenate([cache.labels(p.split)[p.rows] for p in parts])
    if len(parts) == 1:
        X = _read_part(cache, parts[0], layers)
    else:
        first = _read_part(cache, parts[0], layers)
        X = np.empty((len(y), *first.shape[1:]), dtype=np.float32)
        X[: len(first)] = first
        del first
        lo = len(parts[0].rows)
        for part in parts[1:]:
            X[lo : lo + len(part.rows)] = _read_part(cache, part, layers)
            lo += len(part.rows)
    if not np.isfinite(np.sum(X, dtype=np.float64)):
        raise CacheError(f"{cache.path} holds non-finite features in {[p.split for p in parts]}; "
                         f"{_rebuild_hint(cache)}")
    return Block(X, y, list(views.pop()))
