"""Typed configuration of one extraction, validated at the boundary by the option table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from featcache.errors import UsageError
from featcache.options import EXTRACT, SPLITS, check, defaults, views_per_split
from featcache.paths import default_data_dir

_D = defaults(EXTRACT)


@dataclass(frozen=True)
class ExtractConfig:
    """One extraction; field names, defaults and bounds are those of ``featcache.options``."""

    dataset: str = _D["dataset"]
    name: str | None = _D["name"]
    backbone: str = _D["backbone"]
    layers: tuple[str, ...] = _D["layers"]
    pool: str = _D["pool"]
    resolution: int | None = _D["resolution"]
    crops: str = _D["crops"]
    dtype: str = _D["dtype"]
    batch_size: int | None = _D["batch_size"]
    engine: str = _D["engine"]
    shard_rows: int = _D["shard_rows"]
    workers: int | None = _D["workers"]
    device: str = _D["device"]
    runtime: str = _D["runtime"]  # auto: openvino on a CPU where it is installed, else eager
    data_dir: Path = field(default_factory=default_data_dir)
    fingerprint: str = _D["fingerprint"]
    skip_bad: bool = _D["skip_bad"]
    force: bool = _D["force"]
    test_fraction: float = _D["test_fraction"]
    seed: int = _D["seed"]
    limit: int | None = _D["limit"]

    def __post_init__(self) -> None:
        check(EXTRACT, asdict(self))
        if not self.layers:
            raise UsageError("layers: give at least one layer name")
        if self.workers is not None and self.engine != "ray":
            raise UsageError(f"workers {self.workers} applies to ENGINE=ray only")
        if self.name is not None and (not self.name.strip() or "/" in self.name):
            raise UsageError(f"name {self.name!r} must be non-empty and hold no '/'")
        views_per_split(self.crops, SPLITS)

    def views_per_split(self, splits: Mapping[str, object]) -> dict[str, int]:
        """Views per split from ``crops``."""
        return views_per_split(self.crops, splits)
