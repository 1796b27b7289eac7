"""The resumable part of a cache: fixed-size shards of rows in ``<cache>.parts/``.

A shard holds the features of source items ``[start, end)`` of one split, written once,
atomically (a uniquely named temporary file, fsynced, then renamed), so any number of
workers on any number of machines can write into one folder and a crash leaves either a
whole shard or none. Shard boundaries come from the manifest (``shard_rows``, fixed when the
folder is started), never from a batch size or a worker count; a manifest that does not
match the extraction being run (another cache key, layer set, dtype or split) is discarded
with its shards. A shard is trusted only if it covers exactly its items, in order, with
the ids and labels its position says; anything else is deleted and computed again.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featcache.errors import UsageError
from featcache.files import atomic_write

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ShardSpec:
    """Items ``[start, end)`` of ``split``: the unit of work of every engine."""

    split: str
    start: int
    end: int

    @property
    def name(self) -> str:
        return f"{self.start:010d}-{self.end:010d}.npz"


@dataclass(frozen=True)
class Shard:
    """A verified shard: kept item indices, their ids and labels, the skipped items.

    Features stay on disk until :meth:`ShardStore.layer` reads them.
    """

    rows: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    skipped: np.ndarray


def _npy_header(z: np.lib.npyio.NpzFile, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one array of an .npz without reading its data."""
    with z.zip.open(f"{key}.npy") as fh:
        major, _ = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if major == 1 else (
            np.lib.format.read_array_header_2_0)
        shape, _, dtype = read(fh)
    return shape, dtype


def shard_specs(split: str, n: int, shard_rows: int) -> list[ShardSpec]:
    return [ShardSpec(split, lo, min(lo + shard_rows, n)) for lo in range(0, n, shard_rows)]


def finite_or_raise(layer: str, values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` cast to ``dtype``; an error naming the layer if any value is not finite."""
    with np.errstate(over="ignore"):
        stored = np.asarray(values).astype(dtype, copy=False)
    if np.isfinite(stored).all():
        return stored
    if not np.isfinite(values).all():
        raise UsageError(f"the backbone produced NaN or inf in layer {layer!r}")
    peak = float(np.abs(values).max())
    raise UsageError(
        f"layer {layer!r} has activations up to {peak:.4g}, beyond {dtype.name}'s range "
        f"({float(np.finfo(dtype).max):.6g}); store it with DTYPE=float32 (--dtype float32)"
    )


class ShardStore:
    """``<cache>.parts/``: its manifest, and shards written, verified and listed."""

    def __init__(self, folder: Path, manifest: Mapping) -> None:
        self.folder = Path(folder)
        self.manifest = dict(manifest)
        self.shard_rows = int(self.manifest["shard_rows"])
        self.dtype = np.dtype(self.manifest["dtype"])
        self.layers = tuple(self.manifest["layers"])

    @classmethod
    def open(cls, folder: Path, manifest: Mapping) -> ShardStore:
        """The store for ``manifest``; an existing folder started for anything else is wiped."""
        folder = Path(folder)
        found = cls.read_manifest(folder)
        if found is not None and found != dict(manifest):
            count = sum(1 for _ in folder.glob("*/*.npz"))
            log.warning("discarding %d shards in %s: they were made for another extraction",
                        count, folder)
            shutil.rmtree(folder)
            found = None
        if found is None:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(folder / MANIFEST, lambda fh: fh.write(json.dumps(manifest).encode()))
        return cls(folder, manifest)

    @staticmethod
    def read_manifest(folder: Path) -> dict | None:
        try:
            return json.loads((Path(folder) / MANIFEST).read_text())
        except (OSError, ValueError):
            return None

    def path(self, spec: ShardSpec) -> Path:
        return self.folder / spec.split / spec.name

    def write(
        self,
        spec: ShardSpec,
        *,
        rows: Sequence[int],
        ids: Sequence[str],
        labels: np.ndarray,
        features: Mapping[str, np.ndarray],
        skipped: Sequence[int] = (),
    ) -> Path:
        """Store the shard ``spec`` atomically; refuses non-finite values.

        ``rows`` are the kept source items, ``skipped`` the unreadable ones (``SKIP_BAD``).
        """
        n = len(rows)
        if set(features) != set(self.layers) and n:
            raise ValueError(f"shard layers {sorted(features)} != store layers {self.layers}")
        if any(len(a) != n for a in (ids, labels, *features.values())):
            raise ValueError("rows, ids, labels and every layer must have the same length")
        arrays = {f"layer/{k}": finite_or_raise(k, v, self.dtype) for k, v in features.items()}
        arrays |= {
            "rows": np.asarray(rows, dtype=np.int64),
            "ids": np.asarray(ids, dtype=str),
            "labels": np.asarray(labels, dtype=np.int64),
            "skipped": np.asarray(list(skipped), dtype=np.int64),
        }
        target = self.path(spec)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda fh: np.savez(fh, **arrays))
        return target

    def read(self, spec: ShardSpec, ids: Sequence[str], labels: np.ndarray) -> Shard | None:
        """The shard if it is exactly what its position says, else None (a bad one is deleted).

        ``ids`` and ``labels`` are the whole split's, as the dataset lists them now.
        """
        path = self.path(spec)
        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                shard = Shard(z["rows"], z["ids"], z["labels"], z["skipped"])
                layers = {k: _npy_header(z, f"layer/{k}") for k in self.layers if len(shard.rows)}
        except (OSError, ValueError, KeyError) as exc:
            return self._reject(path, f"unreadable ({type(exc).__name__}: {exc})")
        problem = self._check(spec, shard, ids, labels, layers)
        return shard if problem is None else self._reject(path, problem)

    def layer(self, spec: ShardSpec, name: str) -> np.ndarray:
        with np.load(self.path(spec)) as z:
            return z[f"layer/{name}"]

    def _check(self, spec: ShardSpec, shard: Shard, ids: Sequence[str], labels: np.ndarray,
               layers: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> str | None:
        rows = shard.rows
        covered = np.sort(np.concatenate([rows, shard.skipped]))
        if not np.array_equal(covered, np.arange(spec.start, spec.end)) or np.any(
            np.diff(rows) <= 0
        ):
            return f"it covers other rows than {spec.start}..{spec.end - 1}"
        if [ids[i] for i in rows] != shard.ids.tolist():
            return "its ids are not the dataset's ids at its rows"
        if not np.array_equal(np.asarray(labels)[rows], shard.labels):
            return "its labels are not the dataset's labels at its rows"
        for name, (shape, dtype) in layers.items():
            if shape[:1] != (len(rows),) or dtype != self.dtype:
                return f"layer {name!r} is {dtype} {shape} for {len(rows)} rows"
        return None

    @staticmethod
    def _reject(path: Path, why: str) -> None:
        log.warning("discarding shard %s: %s; it will be computed again", path.name, why)
        path.unlink(missing_ok=True)
        return None

    def done(self, spec: ShardSpec) -> bool:
        return self.path(spec).is_file()

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
