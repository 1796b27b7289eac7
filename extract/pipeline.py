"""Stage one: plan, find or verify the cache, compute the missing shards, assemble the file."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

from featcache.errors import CacheError, UsageError
from featcache.extract.backbones.registry import (
    get_spec,
    load_backbone,
    make_feature_extractor,
    resolve_layers,
)
from featcache.extract.cache.hdf5 import (
    Assembler,
    FeatureCache,
    assemble,
    missing_shards,
    writer_lock,
)
from featcache.extract.cache.shards import ShardSpec, ShardStore
from featcache.extract.compute.runtimes import resolve_runtime
from featcache.extract.compute.worker import ShardWorker, resolve_device
from featcache.extract.config import ExtractConfig
from featcache.extract.plan import ExtractPlan, plan_extraction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractResult:
    path: Path
    cached: bool
    images: int
    seconds: float
    shards: int = 0
    worker: str | None = None  # runtime and batch size of the workers, where any ran
    engine: str = "local"


def _inspect(plan: ExtractPlan) -> tuple[tuple[int, int] | None, set[str], str | None]:
    """(file identity, layers of every split, problem): a finished cache checked in full,
    and checked to be the requested one (its stored key, dataset, splits), not its name."""
    path = plan.path
    seen = _identity(path)
    if seen is None:
        return None, set(), None
    try:
        with FeatureCache(path) as cache:
            foreign = _foreign(cache, plan)
            if foreign:
                return seen, set(), foreign
            cache.verify()
            return seen, set.intersection(*(set(cache.layers(s)) for s in cache.splits)), None
    except CacheError as exc:
        return seen, set(), str(exc)


def _foreign(cache: FeatureCache, plan: ExtractPlan) -> str | None:
    """What the file holds, where it is not the cache ``plan`` asks for; else None."""
    meta, splits = cache.meta, plan.dataset.splits
    held = {s: cache.n_source(s) for s in cache.splits}
    wanted = {s: len(split) for s, split in splits.items()}
    if (meta.get("fingerprint") == plan.key.digest()
            and meta.get("dataset_fingerprint") == plan.key.dataset_fingerprint
            and held == wanted):
        return None
    link = f" (a link to {os.path.realpath(cache.path)})" if cache.path.is_symlink() else ""
    return (f"it is not the requested cache{link}: it holds {meta.get('dataset')!r} "
            f"({meta.get('backbone')}, {meta.get('resolution')} px, splits {held}), "
            f"not {plan.key.dataset!r} ({plan.key.backbone}, {plan.key.resolution} px, "
            f"splits {wanted})")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _move_aside(path: Path, problem: str) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    path.replace(aside)
    log.warning("%s failed its check (%s); moved it to %s and rebuilding", path, problem, aside)


def _todo_layers(plan: ExtractPlan, present: set[str]) -> list[str]:
    """Requested layers the file lacks; a resumable shard folder's layer set when it has them."""
    todo = [name for name in plan.cfg.layers if name not in present]
    found = plan.existing_manifest()
    if todo and found and found.get("key") == plan.key.digest():
        earlier = [name for name in found.get("layers", []) if name in plan.taps]
        if set(todo) <= set(earlier) and len(earlier) == len(found["layers"]):
            return earlier
    return todo


def run_extraction(cfg: ExtractConfig, *, progress: bool = True) -> ExtractResult:
    """Extract every split, resuming an interrupted run; a cache hit loads no model."""
    start = time.perf_counter()
    plan = plan_extraction(cfg)
    seen, present, problem = _inspect(plan)
    if seen and not problem and set(cfg.layers) <= present:
        log.info("cache hit: %s", plan.path)
        return ExtractResult(plan.path, True, 0, time.perf_counter() - start)
    with writer_lock(plan.path), Assembler() as assembler:
        if _identity(plan.path) != seen:
            seen, present, problem = _inspect(plan)
        if problem:
            _move_aside(plan.path, problem)
            present = set()
        todo = _todo_layers(plan, present)
        found = plan.existing_manifest()
        rows = found["shard_rows"] if found and found.get("key") == plan.key.digest() else None
        store = ShardStore.open(plan.parts, plan.manifest(todo, rows or cfg.shard_rows))
        plans = plan.split_plans(store.shard_rows)
        missing = missing_shards(store, plans)
        if missing and cfg.engine == "local":
            check_batch_memory(plan)
        total = sum(len(s) for s in plan.dataset.splits.values())
        done = total - sum(s.end - s.start for s in missing)
        with tqdm(total=total, initial=done, unit="img", disable=not progress,
                  desc=plan.dataset.name) as bar:
            images, about = _run_local(plan, store, missing, bar.update) if cfg.engine == "local" \
                else _run_ray(plan, store, missing, bar.update)
        runtime = about[0] if about else resolve_runtime(cfg.runtime, resolve_device(cfg.device))
        log.info("assembling %s from %d shards", plan.path.name, sum(len(p.shards)
                                                                     for p in plans.values()))
        assemble(plan.path, store, plans, plan.layer_attrs(list(store.layers)),
                 {**plan.meta, "runtime": runtime}, assembler)
    return ExtractResult(plan.path, False, images, time.perf_counter() - start,
                         len(missing), about[1] if about else None, cfg.engine)


def available_memory() -> int | None:
    """Bytes of memory the kernel says are available (``MemAvailable``), where it says."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_batch_memory(plan: ExtractPlan) -> None:
    """Refuse, before any model loads, a given batch whose forward pass cannot fit in this
    machine's memory: its uint8 and float32 input plus a first activation at least 4x the
    input (every backbone's stem widens it so: 32 channels at half size, or more) is a lower
    bound of what the pass holds. Only on the CPU, where the kernel would kill the process."""
    batch, size = plan.cfg.batch_size, plan.preprocess.crop_size
    if batch is None or resolve_device(plan.cfg.device).type != "cpu":
        return
    views = max(plan.views.values())
    need = batch * 3 * size * size * (views + 4 + 4 * 4)
    free = available_memory()
    if free is not None and need > free:
        raise UsageError(
            f"BATCH={batch} (--batch-size) at RES={size} needs at least {need / 2**30:.1f} GiB "
            f"for one forward pass; this machine has {free / 2**30:.1f} GiB available: lower "
            f"BATCH (below {max(1, batch * free // need)}) or RES"
        )


def _run_local(plan: ExtractPlan, store: ShardStore, shards: list[ShardSpec],
               on_rows: Callable[[int], object]) -> tuple[int, tuple[str, str] | None]:
    if not shards:
        return 0, None
    worker = ShardWorker(plan, store, device=plan.cfg.device)
    try:
        return worker.compute_all(shards, on_rows), worker.describe()
    finally:
        worker.close()


def _run_ray(plan: ExtractPlan, store: ShardStore, shards: list[ShardSpec],
             on_rows: Callable[[int], object]) -> tuple[int, tuple[str, str] | None]:
    from featcache.extract.compute.distributed import run_shards

    return run_shards(plan, store, shards, on_rows)


def describe_layers(backbone: str, resolution: int | None = None) -> list[tuple[str, str, tuple]]:
    """(alias, fx node, output shape) for every alias of a backbone, on random weights."""
    spec = get_spec(backbone)
    model, spec = load_backbone(backbone, pretrained=False)
    nodes = resolve_layers(spec, list(spec.layers))
    size = resolution or spec.input_size
    with torch.inference_mode():
        out = make_feature_extractor(model, spec, nodes)(torch.zeros(1, 3, size, size))
    return [(name, nodes[name], tuple(out[name].shape[1:])) for name in nodes]
