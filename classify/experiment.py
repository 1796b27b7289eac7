"""One ``classify fit`` run: plan rows, choose, refit, test, and write the run directory."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from featcache import options
from featcache.classify.engines import Engine, LocalEngine, engine_session
from featcache.classify.features import DEFAULT_LAYERS, Block, Part, open_cache, read
from featcache.classify.heads.registry import DEFAULT_HEAD, HEADS, SWEPT, build_head
from featcache.classify.plots import plot_confusion
from featcache.classify.protocol import evaluate, select_and_refit
from featcache.classify.runs import METRICS, find_run, write_json, write_run
from featcache.classify.select import DEFAULT_DATASET, CacheFields, CacheQuery, resolve_cache
from featcache.classify.splits import (
    given_plan,
    per_class,
    stratified_split,
    stratified_subset,
)
from featcache.classify.stats import mean_per_class, top1_interval, top_confusions
from featcache.classify.transforms import DEFAULT_TRANSFORM, TRANSFORMS
from featcache.errors import UsageError
from featcache.extract.cache.hdf5 import FeatureCache

logger = logging.getLogger(__name__)

DEFAULT_REPEATS_WITH_SHOTS = 5
SEED_MAX = 2**32 - 1  # numpy's and scikit-learn's random_state range
NAME_MAX = 255  # bytes of one path component on Linux, macOS and Windows file systems
META_KEYS = ("dataset", "dataset_source", "dataset_fingerprint", "fingerprint_mode",
             "dataset_limit", "backbone", "weights", "weights_sha256", "resolution", "crops",
             "pool", "dtype", "views", "split_rule", "created")
# FitConfig fields that do not change a run's result (the cache enters by its fingerprint).
NOT_HASHED = ("data_dir", "dataset", "cache", "backbone", "resolution", "crops", "pool", "dtype",
              "jobs", "engine", "tag", "command", "skip_existing")


_D = options.defaults(options.FIT)


@dataclass(frozen=True)
class FitConfig(CacheFields):
    """Everything a ``fit`` run depends on; defaults and bounds from ``featcache.options``."""

    data_dir: Path
    dataset: str | None = None
    cache: Path | None = None
    model: str = DEFAULT_HEAD
    layers: tuple[str, ...] = DEFAULT_LAYERS
    transform: str = DEFAULT_TRANSFORM
    dim: int | None = _D["dim"]
    params: Mapping[str, Any] = field(default_factory=dict)
    train_size: int | None = _D["train_size"]
    shots: int | None = _D["shots"]
    repeats: int | None = _D["repeats"]
    resplit: float | None = _D["resplit"]
    val_size: float = _D["val_size"]
    seed: int = _D["seed"]
    jobs: int = _D["jobs"]
    engine: str = _D["engine"]
    tag: str | None = None
    command: str = ""
    skip_existing: bool = False

    def __post_init__(self) -> None:
        options.check(options.FIT, {f.name: getattr(self, f.name) for f in fields(self)},
                      make_names=True)
        if self.model not in HEADS:
            raise UsageError(f"unknown head {self.model!r}; valid: {', '.join(HEADS)}")
        if self.transform not in TRANSFORMS:
            raise UsageError(
                f"unknown transform {self.transform!r}; valid: {', '.join(TRANSFORMS)}"
            )
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise UsageError(f"LAYER={','.join(self.layers)!r}: give distinct layer names")
        if self.dim is not None and self.transform != "pca":
            raise UsageError(f"DIM={self.dim} applies only to TRANSFORM=pca")
        long = [p for p in Path(self.cache).parts if len(os.fsencode(p)) > NAME_MAX] \
            if self.cache is not None else []
        if long:
            raise UsageError(f"CACHE=...{long[0][:40]}...: a name of {len(long[0])} characters; "
                             f"file systems allow {NAME_MAX} bytes: give an existing .h5 file")
        if not 0 <= self.seed <= SEED_MAX - self.n_repeats:
            raise UsageError(f"SEED={self.seed} must be an integer from 0 to "
                             f"{SEED_MAX - self.n_repeats} (with {self.n_repeats} repeat(s))")
        if self.train_size is not None and self.shots is not None:
            raise UsageError("give TRAIN_SIZE or SHOTS, not both")

    @property
    def n_repeats(self) -> int:
        if self.repeats is not None:
            return self.repeats
        return DEFAULT_REPEATS_WITH_SHOTS if self.shots else 1

    @property
    def query(self) -> CacheQuery:
        """The cache this run asks for, as ``make extract`` would name it."""
        return CacheQuery(dataset=self.dataset or DEFAULT_DATASET, layers=self.layers,
                          **self.cache_fields())

    def digest(self, cache_fingerprint: str) -> str:
        """Hash of the cache's fingerprint and every option that changes the result."""
        options = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if f.name not in NOT_HASHED}
        options.update(repeats=self.n_repeats, params=dict(sorted(self.params.items())))
        blob = json.dumps({"cache": cache_fingerprint, **options}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


def _labels(cache: FeatureCache, parts: Sequence[Part]) -> np.ndarray:
    return np.concatenate([cache.labels(p.split)[p.rows] for p in parts])


def _take(parts: Sequence[Part], index: np.ndarray) -> list[Part]:
    """The rows at sorted positions ``index`` of the concatenation of ``parts``."""
    taken, offset = [], 0
    for part in parts:
        inside = index[(index >= offset) & (index < offset + len(part.rows))] - offset
        if inside.size:
            taken.append(Part(part.split, part.rows[inside]))
        offset += len(part.rows)
    return taken


def plan_rows(cache: FeatureCache, config: FitConfig, seed: int) -> tuple[list[Part], list[Part]]:
    """Training and test rows of one repeat: re-split, then subset the training side."""
    train = [Part("train", np.arange(len(cache.labels("train"))))]
    test = [Part("test", np.arange(len(cache.labels("test"))))]
    if config.resplit is not None:
        pool = train + test
        kept, held = stratified_split(_labels(cache, pool), config.resplit, seed, what="test split")
        train, test = _take(pool, kept), _take(pool, held)
    if config.train_size is not None:
        train = _take(train, stratified_subset(_labels(cache, train), config.train_size, seed))
    if config.shots is not None:
        train = _take(train, per_class(_labels(cache, train), config.shots, seed))
    classes = np.unique(_labels(cache, train))
    if len(classes) < 2:
        raise UsageError(f"the training rows hold fewer than two classes ({classes.tolist()})")
    return train, test


def given_val(cache: FeatureCache) -> list[Part]:
    """The dataset's own ``val`` split, where the cache holds one (else none): hyperparameters
    are chosen on it, and the refit uses train + val."""
    if "val" not in cache.splits:
        return []
    return [Part("val", np.arange(len(cache.labels("val"))))]


def _read(
    cache: FeatureCache, parts: Sequence[Part], layers: Sequence[str], clock: list[float]
) -> Block:
    start = time.perf_counter()
    block = read(cache, parts, layers)
    clock.append(time.perf_counter() - start)
    logger.info("read %d x %d views x %d features in %.2f s", *block.X.shape, clock[-1])
    return block


def _check_cache(cache: FeatureCache, config: FitConfig) -> None:
    """Refuse, before any fitting, options the cache's size makes impossible."""
    if config.resplit is not None and cache.meta.get("split_rule") == "official":
        raise UsageError(
            f"RESPLIT={config.resplit}: {cache.meta.get('dataset')} has an official train/test "
            "split; re-split only datasets stored with a seeded split"
        )
    train, _ = plan_rows(cache, config, config.seed)
    labels = _labels(cache, train)
    samples = len(labels) * len(cache.view_names("train"))
    if config.params.get("n_neighbors", 0) > samples:
        raise UsageError(f"NEIGHBORS={config.params['n_neighbors']} exceeds the {samples} "
                         f"training samples; give at most {samples}")
    if config.dim is not None:
        width = read(cache, [Part("train", np.arange(1))], config.layers).X.shape[-1]
        _, grid = build_head(config.model, config.params, config.seed)
        fitted = samples
        if grid and not given_val(cache):  # first fitted on the fit part of a carved split
            kept, _ = stratified_split(labels, config.val_size, config.seed,
                                       what="validation split")
            fitted = len(kept) * len(cache.view_names("train"))
        limit = min(width, fitted)
        if config.dim > limit:
            raise UsageError(
                f"DIM={config.dim} exceeds the limit {limit} = min(the {width} features of "
                f"{'+'.join(config.layers)}, the {fitted} samples PCA is fitted on)"
            )


def _one_repeat(
    read_rows: Callable[[Sequence[Part]], Block], config: FitConfig, seed: int,
    train: Sequence[Part], test: Sequence[Part], n_classes: int, engine: Engine,
    val: Sequence[Part] = (),
) -> tuple[dict[str, Any], Any]:
    """Choose, refit and test on the rows ``read_rows`` gives for ``train`` and ``test``;
    where ``val`` (a given validation split) has rows, choose on them and refit on both."""
    head, grid = build_head(config.model, config.params, seed)
    transform = TRANSFORMS[config.transform](config.dim)
    block = read_rows([*train, *val])
    n_train = len(block.y)
    n_val = sum(len(p.rows) for p in val)
    plan = given_plan(n_train - n_val, n_val) if n_val else None
    try:
        model, record = select_and_refit(head, transform, grid, block, seed=seed,
                                         val_size=config.val_size, engine=engine, copy=False,
                                         plan=plan)
    except UsageError as exc:
        fix = ", ".join(SWEPT[name].option if name in SWEPT else name for name in grid)
        raise UsageError(f"{exc}; fix {fix} to skip the sweep") from None
    del block
    result = evaluate(model, read_rows(test), n_classes)
    result.update(record, seed=seed, params={**config.params, **record["params"]},
                  n_train=n_train, head_params=model[-1].get_params())
    logger.info("seed %d: test top-1 %.4f", seed, result["top1"])
    return result, model


def _gather(features: Mapping[str, Block], parts: Sequence[Part]) -> Block:
    """A copy of the rows ``parts`` of whole-split blocks, in order."""
    return Block(np.concatenate([features[p.split].X[p.rows] for p in parts]),
                 np.concatenate([features[p.split].y[p.rows] for p in parts]),
                 features[parts[0].split].view_names)


def _repeat_task(features: Mapping[str, Block], job: tuple) -> tuple[dict[str, Any], Any]:
    config, seed, train, test, n_classes, val = job
    return _one_repeat(lambda parts: _gather(features, parts), config, seed, train, test,
                       n_classes, LocalEngine(1), val)


def _repeats(
    cache: FeatureCache, config: FitConfig, clock: list[float], engine: Engine
) -> list[tuple[dict[str, Any], Any]]:
    """Every repeat: in turn, each reading its rows from the cache; or, on Ray with several
    repeats, as Ray tasks sharing the cache's features, put in the object store once."""
    n_classes = len(cache.class_names)
    val = given_val(cache)
    plans = [(seed, *plan_rows(cache, config, seed))
             for seed in range(config.seed, config.seed + config.n_repeats)]
    if engine.name == "local" or len(plans) == 1:
        def read_rows(parts: Sequence[Part]) -> Block:
            return _read(cache, parts, config.layers, clock)

        return [_one_repeat(read_rows, config, seed, train, test, n_classes, engine, val)
                for seed, train, test in plans]
    splits = sorted({p.split for _, train, test in plans for p in [*train, *test, *val]})
    features = {s: _read(cache, [Part(s, np.arange(len(cache.labels(s))))], config.layers, clock)
                for s in splits}
    jobs = [(config, seed, train, test, n_classes, val) for seed, train, test in plans]
    return engine.map_shared(_repeat_task, [features], jobs)[0]


def _mean(results: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [r[key] for r in results if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def run_experiment(config: FitConfig) -> tuple[Path, dict[str, Any]]:
    """Run the protocol ``config.n_repeats`` times and write ``<data>/runs/<run-id>/``.

    With ``skip_existing``, a finished run of the same configuration (same cache fingerprint
    and result-changing options) is returned instead, fitting nothing.
    """
    start = time.perf_counter()
    build_head(config.model, config.params, config.seed)
    path = resolve_cache(config.data_dir, config.query, config.cache)
    logger.info("cache %s", path)
    clock: list[float] = []
    with open_cache(path, config.layers) as cache:
        config_hash = config.digest(cache.fingerprint)
        done = find_run(config.data_dir, config_hash) if config.skip_existing else None
        if done is not None:
            logger.info("same configuration already run: %s (SKIP_EXISTING)", done["run_id"])
            return Path(config.data_dir) / "runs" / done["run_id"], {**done, "reused": True}
        _check_cache(cache, config)
        with engine_session(config.engine, config.jobs) as engine:
            repeats = _repeats(cache, config, clock, engine)
        results, model = [result for result, _ in repeats], repeats[0][1]
        meta = {k: cache.meta[k] for k in META_KEYS if k in cache.meta}
        class_names = list(cache.class_names)
        fingerprint = cache.fingerprint
    for result in results:
        result["correct"] = int(np.trace(result["confusion"]))
        result["mean_per_class"] = mean_per_class(result["confusion"])
    confusion = np.sum([r["confusion"] for r in results], axis=0)
    totals = confusion.sum(axis=1)
    first = results[0]
    dataset = str(meta.get("dataset", path.parent.name))
    backbone = str(meta.get("backbone", "unknown"))
    top1 = [r["top1"] for r in results]
    interval, method = top1_interval([r["correct"] for r in results],
                                     [r["n_test"] for r in results])
    edges = sorted({r["edge_of_grid"] for r in results if r["edge_of_grid"]})
    chosen = [max(r["val_scores"]) for r in results if r["val_scores"]]
    metrics: dict[str, Any] = {
        "dataset": dataset,
        "backbone": backbone,
        "layers": list(config.layers),
        "head": config.model,
        "transform": config.transform,
        "dim": config.dim,
        "params": first["params"],
        "head_params": first["head_params"],
        "grid": first["grid"],
        "val_scores": first["val_scores"],
        "selection": first["selection"] or "fixed",
        "val_top1": float(np.mean(chosen)) if chosen else None,
        "edge_of_grid": edges,
        "top1": float(np.mean(top1)),
        "top1_std": float(np.std(top1)),
        "top1_ci": interval,
        "top1_ci_method": method,
        "mean_per_class": _mean(results, "mean_per_class"),
        "top5": _mean(results, "top5"),
        "top1_centre": _mean(results, "top1_centre"),
        "per_class": {
            name: float(confusion[i, i] / totals[i]) if totals[i] else None
            for i, name in enumerate(class_names)
        },
        "confusion": confusion.tolist(),
        "top_confusions": top_confusions(confusion, class_names),
        "class_names": class_names,
        "n_train": first["n_train"],
        "n_val": first["n_val"],
        "n_test": first["n_test"],
        "test_views": first["test_views"],
        "train_size": config.train_size,
        "shots": config.shots,
        "resplit": config.resplit,
        "val_size": config.val_size,
        "seed": config.seed,
        "repeats": config.n_repeats,
        "per_repeat": [
            {k: v for k, v in r.items() if k not in ("confusion", "head_params")}
            for r in results
        ],
        "load_seconds": float(np.sum(clock)),
        "select_seconds": _mean(results, "select_seconds"),
        "fit_seconds": _mean(results, "fit_seconds"),
        "predict_seconds": _mean(results, "predict_seconds"),
        "cache": {"path": str(path.resolve()), "fingerprint": fingerprint, **meta},
        "config_hash": config_hash,
        "command": config.command or shlex.join([sys.executable, *sys.argv]),
        "tag": config.tag,
    }
    layer = "+".join(config.layers)
    title = f"{dataset} {backbone} {layer} {config.model}: top-1 {metrics['top1']:.3f}"

    def fill(folder: Path) -> None:
        joblib.dump(model, folder / "model.joblib")
        plot_confusion(confusion, class_names, folder / "confusion.png", title)
        metrics["seconds"] = time.perf_counter() - start
        write_json(folder / METRICS, _jsonable(metrics))

    parts = [dataset, backbone, layer, config.model]
    run_dir = write_run(config.data_dir, [config.tag, *parts] if config.tag else parts, fill)
    metrics["run_id"] = run_dir.name
    logger.info("wrote %s", run_dir)
    return run_dir, metrics



def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)

