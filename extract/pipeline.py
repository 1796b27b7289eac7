"""Stage one: stream a dataset through a frozen backbone into a resumable HDF5 feature cache."""

from __future__ import annotations

import importlib.metadata as md
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .backbones import BackboneSpec, get_spec, load_backbone, make_feature_extractor, resolve_layers
from .backbones import weights_sha256 as backbone_sha256
from .cache import CacheKey, CacheWriter, FeatureCache, SplitPlan
from .config import FLATTEN_LIMIT, ExtractConfig
from .datasets import ImageDataset, Split, open_dataset
from .errors import UsageError
from .preprocess import MakeViews, normalize, view_names

log = logging.getLogger(__name__)
SHARD_BATCHES = 16
PACKAGES = ("torch", "torchvision", "timm", "h5py", "numpy", "pillow", "featcache")


@dataclass(frozen=True)
class ExtractResult:
    path: Path
    cached: bool
    images: int
    seconds: float


class _Items(Dataset):
    """Rows of a split -> (row, uint8 views or None, error text); errors never raise here."""

    def __init__(self, split: Split, rows: np.ndarray, make_views: MakeViews) -> None:
        self.split, self.rows, self.make_views = split, rows, make_views

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor | None, str]:
        row = int(self.rows[k])
        try:
            return row, self.make_views(self.split.load(row)), ""
        except Exception as exc:
            return row, None, f"{type(exc).__name__}: {exc}"


def _collate(items: list[tuple[int, torch.Tensor | None, str]]) -> tuple:
    rows = [r for r, _, _ in items]
    good = [x for _, x, _ in items if x is not None]
    errors = [(r, e) for r, x, e in items if x is None]
    return rows, (torch.stack(good) if good else None), errors


def plan_cache(cfg: ExtractConfig) -> tuple[ImageDataset, BackboneSpec, CacheKey, dict[str, int]]:
    """Everything that names the cache file, without loading any weights."""
    spec = get_spec(cfg.backbone)
    dataset = open_dataset(
        cfg.dataset, cfg.data_dir, test_fraction=cfg.test_fraction, seed=cfg.seed
    ).limited(cfg.limit, cfg.seed)
    views = cfg.views_per_split(dataset.splits)
    tag = (
        "v" + "-".join(f"{s}{views[s]}" for s in sorted(views))
        if len(set(views.values())) > 1
        else f"v{next(iter(views.values()))}"
    )
    key = CacheKey(
        dataset=dataset.name,
        source=dataset.fingerprint,
        backbone=spec.name,
        weights=spec.weights,
        resolution=cfg.resolution or spec.input_size,
        views=tag,
        pool=cfg.pool,
        dtype=cfg.dtype,
        split_rule=dataset.split_rule,
    )
    return dataset, spec, key, views


def _present_layers(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    with FeatureCache(path) as cache:
        return set.intersection(*(set(cache.layers(s)) for s in cache.splits))


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "device 'cuda' requested but no CUDA device is available; valid: cpu, auto"
        )
    return torch.device(name)


def _versions() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def run_extraction(cfg: ExtractConfig, *, progress: bool = True) -> ExtractResult:
    """Extract every split, resuming an interrupted run; a cache hit loads no model."""
    start = time.perf_counter()
    dataset, spec, key, views = plan_cache(cfg)
    path = key.path(cfg.data_dir)
    nodes = resolve_layers(spec, cfg.layers)
    todo = {name: node for name, node in nodes.items() if name not in _present_layers(path)}
    if not todo:
        log.info("cache hit: %s", path)
        return ExtractResult(path, True, 0, time.perf_counter() - start)
    device = _device(cfg.device)
    model, spec = load_backbone(spec.name)
    extractor = make_feature_extractor(model, spec, todo).to(
        device, memory_format=torch.channels_last
    )
    meta = {
        "dataset": dataset.name,
        "dataset_source": dataset.source,
        "dataset_fingerprint": dataset.fingerprint,
        "split_rule": dataset.split_rule,
        "class_names": dataset.class_names,
        "backbone": spec.name,
        "weights": spec.weights,
        "weights_sha256": backbone_sha256(spec) or "random-init",
        "resolution": key.resolution,
        "interpolation": spec.interpolation,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "preprocess": spec.preprocess(key.resolution).describe(),
        "fingerprint_mode": dataset.fingerprint_mode,
        "views": views,
        "pool": cfg.pool,
        "dtype": cfg.dtype,
        "device": device.type,
        "versions": _versions(),
        "command": " ".join(sys.argv),
        "fingerprint": key.digest(),
        **{f"dataset_{k}": v for k, v in dataset.extra.items()},
    }
    layer_attrs = {name: {"node": node, "pool": cfg.pool} for name, node in todo.items()}
    runner = _Runner(extractor, spec, key.resolution, cfg, device)
    total = sum(len(s) for s in dataset.splits.values())
    with (
        CacheWriter(path, meta=meta, layers=layer_attrs, dtype=cfg.dtype) as writer,
        tqdm(total=total, unit="img", disable=not progress, desc=dataset.name) as bar,
    ):
        for name, split in dataset.splits.items():
            bar.set_postfix_str(name)
            runner.run_split(writer, name, split, views[name], dataset.native_size, bar)
        writer.finalize(
            {n: SplitPlan(len(s), view_names(views[n])) for n, s in dataset.splits.items()}
        )
    return ExtractResult(path, False, runner.images, time.perf_counter() - start)


class _Runner:
    """Batches -> device -> extractor -> pooled numpy shards, one split at a time."""

    def __init__(
        self,
        extractor: torch.nn.Module,
        spec: BackboneSpec,
        resolution: int,
        cfg: ExtractConfig,
        device: torch.device,
    ) -> None:
        self.extractor, self.spec, self.res, self.cfg, self.device = (
            extractor,
            spec,
            resolution,
            cfg,
            device,
        )
        self.images = 0

    def _loader(self, split: Split, rows: np.ndarray, views: int, native: int | None) -> DataLoader:
        on_gpu = self.device.type == "cuda"
        make = self.spec.preprocess(self.res).views(views)
        workers = self.cfg.workers
        if workers is None:
            workers = min(8, torch.get_num_threads()) if on_gpu else 1
        return DataLoader(
            _Items(split, rows, make),
            batch_size=self.cfg.batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=on_gpu,
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
        )

    def run_split(
        self,
        writer: CacheWriter,
        name: str,
        split: Split,
        views: int,
        native: int | None,
        bar: tqdm,
    ) -> None:
        shard = self.cfg.batch_size * SHARD_BATCHES
        done = writer.done_shards(name)
        starts = [s for s in range(0, len(split), shard) if s not in done]
        bar.update(len(split) - sum(min(shard, len(split) - s) for s in starts))
        if not starts:
            return
        rows = np.concatenate([np.arange(s, min(s + shard, len(split))) for s in starts])
        buffers: dict[int, list] = {}
        for batch_rows, x, errors in self._loader(split, rows, views, native):
            start = batch_rows[0] // shard * shard
            bad = self._check_errors(split, errors)
            keep = [r for r in batch_rows if r not in bad]
            feats = self._forward(x) if x is not None else {}
            buffers.setdefault(start, []).append((keep, feats, [split.ids[r] for r in bad]))
            bar.update(len(batch_rows))
            self.images += len(keep)
            end = min(start + shard, len(split))
            if batch_rows[-1] == end - 1:
                self._flush(writer, name, split, start, buffers.pop(start))

    def _check_errors(self, split: Split, errors: list[tuple[int, str]]) -> set[int]:
        for row, err in errors:
            if not self.cfg.skip_bad:
                raise UsageError(
                    f"cannot read image {split.ids[row]!r} ({err}); fix or remove it, "
                    "or pass SKIP_BAD=1 (--skip-bad) to skip and record it"
                )
            log.warning("skipping unreadable image %s (%s)", split.ids[row], err)
        return {row for row, _ in errors}

    def _flush(self, writer: CacheWriter, name: str, split: Split, start: int, parts: list) -> None:
        rows = [r for keep, _, _ in parts for r in keep]
        layers = {k for _, f, _ in parts for k in f}
        writer.write_shard(
            name,
            start,
            labels=split.labels[rows] if rows else np.zeros(0, np.int64),
            ids=[split.ids[r] for r in rows],
            features={k: np.concatenate([f[k] for _, f, _ in parts if k in f]) for k in layers},
            skipped=[i for _, _, s in parts for i in s],
        )

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """uint8 [images, views, 3, H, W] -> each tap's features, ``batch_size`` views a pass.

        Ten views make a batch ten times larger; on a CPU (one thread) a pass over 320
        views ran at a third of the per-view speed of 32 (activations outgrow the caches),
        so the views go through the model in slices of the configured batch size.
        """
        b, v = x.shape[:2]
        parts = [self._features(chunk) for chunk in x.flatten(0, 1).split(self.cfg.batch_size)]
        return {
            k: torch.cat([p[k] for p in parts]).view(b, v, -1).squeeze(1).cpu().numpy()
            for k in parts[0]
        }

    def _features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        if x.shape[-1] != self.res:
            x = F.interpolate(
                x.float(),
                size=(self.res, self.res),
                mode=self.spec.interpolation,
                align_corners=False,
            ).clamp_(0, 255)
        x = normalize(x, self.spec.mean, self.spec.std).contiguous(
            memory_format=torch.channels_last
        )
        with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            out = self.extractor(x)
        return {k: self._reduce(k, t.float()) for k, t in out.items()}

    def _reduce(self, name: str, t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 4 and self.cfg.pool != "none":
            return t.mean((2, 3)) if self.cfg.pool == "avg" else t.amax((2, 3))
        if t.ndim == 3 and self.cfg.pool != "none":
            return t.mean(1) if self.cfg.pool == "avg" else t.amax(1)
        flat = t.flatten(1)
        if flat.shape[1] > FLATTEN_LIMIT and not self.cfg.force:
            raise UsageError(
                f"layer {name!r} flattens to {flat.shape[1]:,} values per image "
                f"(limit {FLATTEN_LIMIT:,}); use POOL=avg or max, or FORCE=1 (--force)"
            )
        return flat


def describe_layers(backbone: str, resolution: int | None = None) -> list[tuple[str, str, tuple]]:
    """(alias, fx node, output shape) for every alias of a backbone, on random weights."""
    spec = get_spec(backbone)
    model, spec = load_backbone(backbone, pretrained=False)
    nodes = resolve_layers(spec, list(spec.layers))
    size = resolution or spec.input_size
    with torch.inference_mode():
        out = make_feature_extractor(model, spec, nodes)(torch.zeros(1, 3, size, size))
    return [(name, nodes[name], tuple(out[name].shape[1:])) for name in nodes]
