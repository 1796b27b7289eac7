"""Which cache file a ``DATASET=`` (plus options) means: chosen by the caches' metadata, never
by folder names or modification times.

A dataset is its name plus its fingerprint. ``DATASET`` may be what ``make extract``
accepted: a registered name, a folder or CSV path (its current fingerprint must equal the
cache's: a folder changed since extraction is refused), the folder's base name, or the
``NAME=`` given at extraction. ``BACKBONE=``, ``RES=``, ``CROPS=``, ``POOL=`` and ``DTYPE=``
narrow the match where given, and the layers must be present. No match, or several, is an
error naming the command or the options that settle it.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featcache.classify.features import add_layers_command
from featcache.errors import CacheError, UsageError
from featcache.extract.cache.hdf5 import FeatureCache, find_caches
from featcache.options import QUERY, options_for, views_per_split

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "digits"


@dataclass(frozen=True)
class Option:
    """A cache option a user may give to narrow the match: field, Make variable, metadata key."""

    field: str
    make: str
    key: str


METADATA_KEYS = {"crops": "views"}  # where the cache's metadata names a field otherwise
OPTIONS = tuple(Option(o.name, o.make or o.name, METADATA_KEYS.get(o.name, o.name))
                for o in options_for(QUERY))


@dataclass(frozen=True, kw_only=True)
class CacheFields:
    """The options that narrow a dataset to one of its caches (``featcache.options.QUERY``);
    ``None`` means "any". Shared by the query, ``FitConfig`` and ``TsneConfig``."""

    backbone: str | None = None
    resolution: int | None = None
    crops: str | None = None
    pool: str | None = None
    dtype: str | None = None

    def cache_fields(self) -> dict[str, Any]:
        return {o.field: getattr(self, o.field) for o in OPTIONS}


@dataclass(frozen=True)
class CacheQuery(CacheFields):
    """What a user said about the cache they want: a dataset, the narrowing options, layers."""

    dataset: str = DEFAULT_DATASET
    layers: tuple[str, ...] = ()

    def given(self) -> list[Option]:
        return [o for o in OPTIONS if getattr(self, o.field) is not None]

    def extract_command(self) -> str:
        """The ``make extract`` line that makes the cache this query asks for."""
        words = [f"DATASET={self.dataset}"]
        words += [f"{o.make}={getattr(self, o.field)}" for o in self.given()]
        if self.layers:
            words.append(f"LAYERS={','.join(self.layers)}")
        return "make extract " + " ".join(shlex.quote(w) for w in words)


@dataclass
class Candidate:
    """A finished cache file and what it says about itself."""

    path: Path
    meta: dict[str, Any]
    layers: set[str] = field(default_factory=set)

    def value(self, option: Option) -> str:
        value = self.meta.get(option.key)
        if option.field == "crops" and isinstance(value, dict):
            counts = set(value.values())
            return str(counts.pop()) if len(counts) == 1 else ",".join(
                f"{split}:{n}" for split, n in sorted(value.items()))
        return "?" if value is None else str(value)

    def describe(self, options: Sequence[Option]) -> str:
        shown = " ".join(f"{o.make}={self.value(o)}" for o in options)
        return f"{shown} (CACHE={shlex.quote(str(self.path))})".strip()


def resolve_cache(data_dir: Path, query: CacheQuery, cache: Path | None = None) -> Path:
    """``cache`` as given, or the one finished cache under ``data_dir`` that ``query`` means."""
    if cache is not None:
        if not Path(cache).is_file():
            raise UsageError(f"no cache file at {cache}")
        return Path(cache)
    root = Path(data_dir) / "cache"
    candidates, unreadable = _scan(Path(data_dir))
    found = _same_dataset(query, candidates, Path(data_dir))
    if not found:
        names = sorted({str(c.meta.get("dataset")) for c in candidates})
        have = f" (caches exist for: {', '.join(names)})" if names else ""
        skipped = (f"; skipped {len(unreadable)} unreadable: {'; '.join(unreadable)}"
                   if unreadable else "")
        raise UsageError(f"no feature cache of dataset {query.dataset!r} under {root}{have}"
                         f"{skipped}; make it with: {query.extract_command()}")
    matching = [c for c in found if all(_matches(c, o, query) for o in query.given())]
    if not matching:
        have = "; ".join(c.describe(OPTIONS) for c in found)
        raise UsageError(f"no cache of {query.dataset!r} with "
                         f"{' '.join(f'{o.make}={getattr(query, o.field)}' for o in query.given())}"
                         f" (it has: {have}); make it with: {query.extract_command()}")
    holding = [c for c in matching if set(query.layers) <= c.layers]
    if not holding:
        have = "; ".join(f"{','.join(sorted(c.layers))} (CACHE={c.path})" for c in matching)
        add = " or ".join(add_layers_command(c.meta, query.layers) for c in matching)
        raise UsageError(f"no cache of {query.dataset!r} holds layer(s) "
                         f"{','.join(query.layers)} (they hold: {have}); add them with: {add}")
    if len(holding) > 1:
        raise UsageError(f"DATASET={query.dataset} matches {len(holding)} caches; choose one "
                         f"with {_tell_apart(holding)}")
    return holding[0].path


def _scan(data_dir: Path) -> tuple[list[Candidate], list[str]]:
    candidates, unreadable = [], []
    for path in find_caches(data_dir):
        try:
            with FeatureCache(path) as cache:
                layers = set.intersection(*(set(cache.layers(s)) for s in cache.splits))
                candidates.append(Candidate(path, dict(cache.meta), layers))
        except (CacheError, OSError, KeyError, TypeError) as exc:
            logger.warning("skipping %s: %s", path, exc)
            unreadable.append(f"{path} ({' '.join(str(exc).split())})")
    return candidates, unreadable


def _named(candidate: Candidate, name: str) -> bool:
    """The cache's dataset is ``name``, or ``name`` limited to a subset (``<name>-limit<N>``)."""
    stored = candidate.meta.get("dataset")
    limit = candidate.meta.get("dataset_limit")
    return stored == name or (limit is not None and stored == f"{name}-limit{limit}")


def _same_dataset(
    query: CacheQuery, candidates: list[Candidate], data_dir: Path
) -> list[Candidate]:
    path = Path(query.dataset).expanduser()
    if not path.exists():
        return [c for c in candidates if _named(c, query.dataset)]
    source = str(path.resolve())
    same = [c for c in candidates if c.meta.get("dataset_source") == source]
    if not same:
        return []
    current: dict[tuple, str] = {}
    fresh = []
    for c in same:
        key = (c.meta.get("fingerprint_mode"), c.meta.get("dataset_limit"))
        if key not in current:
            current[key] = _fingerprint(str(path), data_dir, c.meta)
        if current[key] == c.meta.get("dataset_fingerprint"):
            fresh.append(c)
    if not fresh:
        now = ", ".join(sorted({fp[:8] for fp in current.values()}))
        then = ", ".join(sorted({str(c.meta.get("dataset_fingerprint"))[:8] for c in same}))
        raise CacheError(
            f"{source} has changed since its features were extracted (fingerprint now {now}, "
            f"cached {then}); the old features are not used; re-extract with: "
            f"{query.extract_command()}"
        )
    return fresh


def _fingerprint(path: str, data_dir: Path, meta: dict[str, Any]) -> str:
    """The dataset's fingerprint as extraction computes it today, in the cache's mode."""
    from featcache.extract.data.datasets import open_dataset

    dataset = open_dataset(path, data_dir, fingerprint=meta.get("fingerprint_mode", "stat"),
                           test_fraction=float(meta.get("test_fraction", 0.2)),
                           seed=int(meta.get("seed", 0)), skip_bad=bool(meta.get("skip_bad")))
    if meta.get("dataset_limit") is not None:
        dataset = dataset.limited(int(meta["dataset_limit"]), int(meta.get("seed", 0)))
    return dataset.fingerprint


def _matches(candidate: Candidate, option: Option, query: CacheQuery) -> bool:
    wanted = getattr(query, option.field)
    if option.field == "crops":
        return _views(wanted, candidate.meta.get("views") or {}) == candidate.meta.get("views")
    return str(candidate.meta.get(option.key)) == str(wanted)


def _views(crops: str, stored: dict[str, int]) -> dict[str, int]:
    """``CROPS`` text as views per split, parsed by stage one's own rule."""
    return views_per_split(crops, stored or {"train": 1, "test": 1})


def _tell_apart(matches: list[Candidate]) -> str:
    """Each match with the option values that differ between them, and its CACHE= path."""
    differ = [o for o in OPTIONS if len({c.value(o) for c in matches}) > 1]
    if differ:
        hint = ", ".join(f"{o.make}=" for o in differ) + " or CACHE="
        return hint + ": " + "; ".join(c.describe(differ) for c in matches)
    key = "dataset" if len({c.meta.get("dataset") for c in matches}) > 1 else "dataset_source"
    return "DATASET= or CACHE=: " + "; ".join(_identity(c, key) for c in matches)


def _identity(c: Candidate, key: str) -> str:
    return (f"DATASET={shlex.quote(str(c.meta.get(key)))} (data "
            f"{str(c.meta.get('dataset_fingerprint'))[:8]}, CACHE={shlex.quote(str(c.path))})")
