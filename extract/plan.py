"""What one extraction computes and where it goes: the plan every engine executes."""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featcache.errors import UsageError
from featcache.extract.backbones.registry import (
    get_spec,
    load_backbone,
    resolve_layers,
    weights_sha256,
)
from featcache.extract.cache.hdf5 import PIPELINE_VERSION, CacheKey, SplitPlan
from featcache.extract.cache.shards import ShardStore, shard_specs
from featcache.extract.config import ExtractConfig
from featcache.extract.data.datasets import ImageDataset, open_dataset
from featcache.extract.data.preprocess import view_names
from featcache.options import EXTRACT, options_for

PACKAGES = ("torch", "torchvision", "timm", "h5py", "numpy", "pillow", "featcache")


@dataclass(frozen=True)
class ExtractPlan:
    """A picklable description of an extraction (Ray ships it to every worker once)."""

    cfg: ExtractConfig
    dataset: ImageDataset
    key: CacheKey
    path: Path
    views: dict[str, int]
    taps: dict[str, str]
    preprocess: Any
    meta: dict[str, Any]

    @property
    def parts(self) -> Path:
        return self.path.with_name(self.path.name + ".parts")

    def manifest(self, layers: list[str], shard_rows: int) -> dict[str, Any]:
        """What the shard folder is for; a folder started for anything else is discarded."""
        return {
            "key": self.key.digest(),
            "shard_rows": shard_rows,
            "dtype": self.cfg.dtype,
            "layers": sorted(layers),
            "splits": {name: len(split) for name, split in self.dataset.splits.items()},
        }

    def split_plans(self, shard_rows: int) -> dict[str, SplitPlan]:
        return {
            name: SplitPlan(split.ids, split.labels, view_names(self.views[name]),
                            tuple(shard_specs(name, len(split), shard_rows)))
            for name, split in self.dataset.splits.items()
        }

    def layer_attrs(self, layers: list[str]) -> dict[str, dict[str, str]]:
        return {name: {"node": self.taps[name], "pool": self.cfg.pool} for name in layers}

    def existing_manifest(self) -> dict[str, Any] | None:
        return ShardStore.read_manifest(self.parts)


def _views_tag(views: dict[str, int]) -> str:
    if len(set(views.values())) == 1:
        return f"v{next(iter(views.values()))}"
    return "v" + "-".join(f"{s}{views[s]}" for s in sorted(views))


def _weights_sha256(backbone: str) -> str:
    """sha256 of the weights file; loads (downloads) the weights first where not on disk."""
    spec = get_spec(backbone)
    digest = weights_sha256(spec)
    if digest is None:
        load_backbone(backbone)
        digest = weights_sha256(spec)
    return digest or "unknown"


def _versions() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _rebuild_command(cfg: ExtractConfig) -> str:
    """The command line that makes this cache again, from any folder: every keyed option of
    the table, with the dataset and the data directory as absolute paths."""
    given = Path(cfg.dataset).expanduser()
    values = {"dataset": str(given.resolve()) if given.exists() else cfg.dataset,
              "data_dir": str(Path(cfg.data_dir).resolve())}
    args = ["python", "-m", "featcache.extract", "run"]
    for o in options_for(EXTRACT):
        value = values.get(o.name, getattr(cfg, o.name))
        if not (o.keyed or o.name == "data_dir") or value is None or value is False:
            continue
        if o.type is bool:
            args.append(o.flag)
        else:
            args += [o.flag, ",".join(value) if o.type is tuple else str(value)]
    return shlex.join(args)


def plan_extraction(cfg: ExtractConfig) -> ExtractPlan:
    """Everything that names the cache file; loads no model unless its weights must be fetched."""
    spec = get_spec(cfg.backbone)
    dataset = open_dataset(cfg.dataset, cfg.data_dir, test_fraction=cfg.test_fraction,
                           seed=cfg.seed, fingerprint=cfg.fingerprint, skip_bad=cfg.skip_bad)
    try:
        dataset = dataset.limited(cfg.limit, cfg.seed)
    except ValueError as exc:
        raise UsageError(
            f"limit {cfg.limit} cannot keep every one of the {len(dataset.class_names)} classes "
            f"of {dataset.name} ({exc}); give at least that many"
        ) from None
    if cfg.name:
        dataset = dataclasses.replace(dataset, name=cfg.name)
    views = cfg.views_per_split(dataset.splits)
    taps = resolve_layers(spec, cfg.layers)
    preprocess = spec.preprocess(cfg.resolution)
    resolution = cfg.resolution or spec.input_size
    sha = _weights_sha256(spec.name)
    key = CacheKey(
        dataset=dataset.name,
        dataset_fingerprint=dataset.fingerprint,
        split_rule=dataset.split_rule,
        backbone=spec.name,
        weights_sha256=sha,
        preprocess=json.dumps(preprocess.describe(), sort_keys=True),
        resolution=resolution,
        views=_views_tag(views),
        pool=cfg.pool,
        dtype=cfg.dtype,
        skip_bad=cfg.skip_bad,
    )
    meta = {
        "dataset": dataset.name,
        "dataset_source": dataset.source,
        "dataset_fingerprint": dataset.fingerprint,
        "fingerprint_mode": dataset.fingerprint_mode,
        "split_rule": dataset.split_rule,
        "class_names": dataset.class_names,
        "backbone": spec.name,
        "weights": spec.weights,
        "weights_sha256": sha,
        "resolution": resolution,
        "preprocess": preprocess.describe(),
        "crops": cfg.crops,
        "views": views,
        "pool": cfg.pool,
        "dtype": cfg.dtype,
        "skip_bad": cfg.skip_bad,
        "seed": cfg.seed,
        "test_fraction": cfg.test_fraction,
        "pipeline_version": PIPELINE_VERSION,
        "versions": _versions(),
        "command": shlex.join(sys.argv),
        "rebuild": _rebuild_command(cfg),
        "fingerprint": key.digest(),
        **{f"dataset_{k}": v for k, v in dataset.extra.items()},
    }
    for name, split in dataset.splits.items():
        if len(split) == 0:
            raise UsageError(f"split {name!r} of {dataset.name} holds no image")
    return ExtractPlan(cfg, dataset, key, key.path(cfg.data_dir), views, taps, preprocess, meta)
