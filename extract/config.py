"""Typed configuration of one extraction, validated at the boundary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from featcache.errors import UsageError
from featcache.extract.cache.shards import SHARD_ROWS
from featcache.extract.compute.runtimes import RUNTIMES
from featcache.extract.data.layouts import FINGERPRINT_MODES as FINGERPRINTS
from featcache.extract.data.preprocess import VIEW_NAMES
from featcache.paths import default_data_dir
from featcache.raysession import ENGINES

POOLS = ("avg", "max", "none")
DTYPES = ("float16", "float32")
DEVICES = ("auto", "cpu", "cuda")
FLATTEN_LIMIT = 100_000
RESOLUTION_RANGE = (16, 2048)
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class ExtractConfig:
    dataset: str = "digits"
    name: str | None = None
    backbone: str = "efficientnet_lite0"
    layers: tuple[str, ...] = ("pool",)
    pool: str = "avg"
    resolution: int | None = None
    crops: str = "1"
    dtype: str = "float16"
    batch_size: int | None = None
    engine: str = "local"
    shard_rows: int = SHARD_ROWS
    workers: int | None = None
    device: str = "auto"
    runtime: str = "auto"  # auto: openvino on a CPU where it is installed, else eager
    data_dir: Path = field(default_factory=default_data_dir)
    fingerprint: str = "stat"
    skip_bad: bool = False
    force: bool = False
    test_fraction: float = 0.2
    seed: int = 0
    limit: int | None = None

    def __post_init__(self) -> None:
        _choice("pool", self.pool, POOLS)
        _choice("dtype", self.dtype, DTYPES)
        _choice("device", self.device, DEVICES)
        _choice("engine", self.engine, ENGINES)
        _choice("runtime", self.runtime, ("auto", *RUNTIMES))
        _choice("fingerprint", self.fingerprint, FINGERPRINTS)
        if not self.layers:
            raise UsageError("layers: give at least one layer name")
        low, high = RESOLUTION_RANGE
        for name, value, lo, hi in (
            ("batch size", self.batch_size, 1, 4096),
            ("resolution", self.resolution, low, high),
            ("limit", self.limit, 1, None),
            ("workers", self.workers, 1, None),
            ("seed", self.seed, 0, MAX_SEED),
            ("shard rows", self.shard_rows, 1, None),
        ):
            if value is not None and (value < lo or (hi is not None and value > hi)):
                bounds = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
                raise UsageError(f"{name} {value} is out of range; it must be {bounds}")
        if not 0.0 < self.test_fraction < 1.0:
            raise UsageError(f"test fraction {self.test_fraction} must be in (0, 1)")
        if self.workers is not None and self.engine != "ray":
            raise UsageError(f"workers {self.workers} applies to ENGINE=ray only")
        if self.name is not None and (not self.name.strip() or "/" in self.name):
            raise UsageError(f"name {self.name!r} must be non-empty and hold no '/'")
        self.views_per_split(dict.fromkeys(("train", "val", "test")))

    def views_per_split(self, splits: Mapping[str, object]) -> dict[str, int]:
        """Parse ``crops``: ``N`` for every split, or ``split:N[,split:N]`` (others get 1)."""
        text = self.crops.strip()
        if ":" not in text:
            return {s: _views(text) for s in splits}
        out = dict.fromkeys(splits, 1)
        for part in text.split(","):
            split, _, n = part.partition(":")
            if split not in splits:
                raise UsageError(f"crops: unknown split {split!r}; valid: {', '.join(splits)}")
            out[split] = _views(n)
        return out


def _views(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n not in VIEW_NAMES:
        raise UsageError(
            f"crops {text!r} is not valid; valid: {', '.join(map(str, VIEW_NAMES))} "
            "or split:N, e.g. test:10"
        )
    return n


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise UsageError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")
