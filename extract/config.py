"""Typed configuration of one extraction, validated at the boundary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .cache import default_data_dir
from .errors import UsageError
from .preprocess import VIEW_NAMES

POOLS = ("avg", "max", "none")
DTYPES = ("float16", "float32")
DEVICES = ("auto", "cpu", "cuda")
FLATTEN_LIMIT = 100_000


@dataclass(frozen=True)
class ExtractConfig:
    dataset: str = "digits"
    backbone: str = "efficientnet_lite0"
    layers: tuple[str, ...] = ("pool",)
    pool: str = "avg"
    resolution: int | None = None
    crops: str = "1"
    dtype: str = "float16"
    batch_size: int = 32
    workers: int | None = None
    device: str = "auto"
    data_dir: Path = field(default_factory=default_data_dir)
    skip_bad: bool = False
    force: bool = False
    test_fraction: float = 0.2
    seed: int = 0
    limit: int | None = None

    def __post_init__(self) -> None:
        _choice("pool", self.pool, POOLS)
        _choice("dtype", self.dtype, DTYPES)
        _choice("device", self.device, DEVICES)
        if not self.layers:
            raise UsageError("layers: give at least one layer name")
        for name, value, low in (
            ("batch size", self.batch_size, 1),
            ("resolution", self.resolution, 16),
            ("limit", self.limit, 1),
            ("workers", self.workers, 0),
        ):
            if value is not None and value < low:
                raise UsageError(f"{name} {value} is out of range; it must be >= {low}")
        self.views_per_split({"train": None, "test": None})

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
