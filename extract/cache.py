"""The HDF5 feature-cache format: the one contract between stage one and stage two.

Layout of a finished cache file::

    /                       attrs: format_version, complete, fingerprint, provenance (see CacheKey
                            and the writer's ``meta``), class_names
    /<split>/labels         int64 [N]
    /<split>/ids            utf-8 strings [N]   (relative file path or "<split>/<index>")
    /<split>/features/<layer>
                            float16|float32 [N, D] or [N, V, D] when the split holds V views;
                            attrs: node, pool, tap_shape
    /<split>                attrs: view_names (JSON list), skipped (JSON list of ids)

Crash safety: a file at its final path is always complete. Writers put each shard of rows
into ``<path>.parts/`` with an atomic rename, so an interrupted run (Ctrl-C, ``kill -9``,
power loss) resumes from the last whole shard; ``finalize`` assembles ``<path>.tmp`` from the
shards and renames it into place. A second writer of the same path fails on a lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from filelock import FileLock, Timeout

from .errors import CacheError

FORMAT_VERSION = 1
SUFFIX = ".h5"
READ_ROWS = 16384
_RESERVED = ("labels", "ids", "features")


DATA_DIR_ENV = "FEATCACHE_DATA_DIR"


def default_data_dir() -> Path:
    """Where both stages keep caches, downloads and runs unless told otherwise.

    ``$FEATCACHE_DATA_DIR`` if set; else ``data/`` of the source checkout the packages run
    from (a ``pyproject.toml`` beside them); else ``~/.cache/featcache``. Never the working
    directory, so both stages find the same files from anywhere.
    """
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return checkout / "data"
    return Path.home() / ".cache" / "featcache"


@dataclass(frozen=True)
class CacheKey:
    """Everything that changes the numbers in a cache; its hash names the file."""

    dataset: str
    source: str
    backbone: str
    weights: str
    resolution: int
    views: str
    pool: str
    dtype: str
    split_rule: str

    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def path(self, root: Path | str) -> Path:
        """``<root>/cache/<dataset>/<backbone>-r<res>-<views>-<pool>-<dtype>-<hash>.h5``."""
        name = (
            f"{_slug(self.backbone)}-r{self.resolution}-{self.views}-{self.pool}-{self.dtype}"
            f"-{self.digest()[:10]}{SUFFIX}"
        )
        return Path(root) / "cache" / _slug(self.dataset) / name


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("._") or "dataset"


def find_caches(root: Path | str, dataset: str | None = None) -> list[Path]:
    """Finished cache files under ``<root>/cache``, newest first, optionally for one dataset."""
    base = Path(root) / "cache"
    pattern = f"{_slug(dataset)}/*{SUFFIX}" if dataset else f"*/*{SUFFIX}"
    files = [p for p in base.glob(pattern) if p.is_file()]
    return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)


def _json_attr(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool, np.integer, np.floating)):
        return value
    return json.dumps(value, sort_keys=True)


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        with contextlib.suppress(json.JSONDecodeError):
            return json.loads(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


class FeatureCache:
    """Read-only view of a finished cache; refuses incomplete or foreign files."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CacheError(f"no cache file at {self.path}")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise CacheError(f"{self.path} is not a readable HDF5 cache ({exc})") from None
        attrs = self._file.attrs
        version = attrs.get("format_version")
        if version != FORMAT_VERSION:
            self.close()
            raise CacheError(
                f"{self.path} has cache format {version!r}; this tool reads {FORMAT_VERSION}"
            )
        if not attrs.get("complete", False):
            self.close()
            raise CacheError(f"{self.path} is incomplete; re-run the extraction to finish it")
        self.meta: dict[str, Any] = {k: _decode_attr(v) for k, v in attrs.items()}
        self.class_names: list[str] = list(self.meta["class_names"])
        self.fingerprint: str = self.meta["fingerprint"]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def splits(self) -> list[str]:
        return sorted(self._file.keys())

    def _split(self, split: str) -> h5py.Group:
        if split not in self._file:
            raise CacheError(f"split {split!r} not in {self.path.name}; valid: {self.splits}")
        return self._file[split]

    def layers(self, split: str = "train") -> list[str]:
        return sorted(self._split(split)["features"].keys())

    def labels(self, split: str) -> np.ndarray:
        return self._split(split)["labels"][()].astype(np.int64)

    def ids(self, split: str) -> np.ndarray:
        return self._split(split)["ids"].asstr()[()]

    def view_names(self, split: str) -> list[str]:
        return list(_decode_attr(self._split(split).attrs["view_names"]))

    def skipped(self, split: str) -> list[str]:
        return list(_decode_attr(self._split(split).attrs.get("skipped", "[]")))

    def shape(self, split: str, layer: str) -> tuple[int, ...]:
        return tuple(self._dataset(split, layer).shape)

    def layer_attrs(self, split: str, layer: str) -> dict[str, Any]:
        ds = self._dataset(split, layer)
        return {k: _decode_attr(v) for k, v in ds.attrs.items()}

    def _dataset(self, split: str, layer: str) -> h5py.Dataset:
        feats = self._split(split)["features"]
        if layer not in feats:
            raise CacheError(
                f"layer {layer!r} not in {self.path.name} [{split}]; valid: {sorted(feats)}"
            )
        return feats[layer]

    def features(
        self,
        split: str,
        layers: str | Sequence[str],
        rows: np.ndarray | Sequence[int] | None = None,
    ) -> np.ndarray:
        """float32 features of ``layers`` (concatenated on the last axis), of ``rows`` in the
        order given (all rows when None).

        Reads in blocks, so memory peaks at one float32 result plus one stored-dtype block.
        """
        names = [layers] if isinstance(layers, str) else list(layers)
        sets = [self._dataset(split, name) for name in names]
        n = sets[0].shape[0]
        idx = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64).ravel()
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise CacheError(f"row index out of range for split {split!r} with {n} rows")
        order = np.argsort(idx, kind="stable")
        ordered = idx[order]
        mid = sets[0].shape[1:-1]
        widths = [ds.shape[-1] for ds in sets]
        out = np.empty((idx.size, *mid, sum(widths)), dtype=np.float32)
        col = 0
        for ds, width in zip(sets, widths, strict=True):
            if ds.shape[1:-1] != mid:
                raise CacheError(f"layers {names} have different view counts in {split!r}")
            for lo in range(0, n, READ_ROWS):
                if rows is None:  # contiguous fast path: no fancy indexing
                    out[lo : lo + READ_ROWS, ..., col : col + width] = ds[lo : lo + READ_ROWS]
                    continue
                a, b = np.searchsorted(ordered, [lo, lo + READ_ROWS])
                if a == b:
                    continue
                block = ds[lo : min(lo + READ_ROWS, n)]
                out[order[a:b], ..., col : col + width] = block[ordered[a:b] - lo]
            col += width
        return out


@dataclass(frozen=True)
class SplitPlan:
    """What a finished split holds: how many source items and which views."""

    n_source: int
    view_names: tuple[str, ...]


class CacheWriter:
    """Resumable, crash-safe writer for one cache path (see module docstring)."""

    def __init__(
        self,
        path: Path | str,
        *,
        meta: Mapping[str, Any],
        layers: Mapping[str, Mapping[str, Any]],
        dtype: str = "float16",
    ) -> None:
        self.path = Path(path)
        self.parts = self.path.with_name(self.path.name + ".parts")
        self.meta = dict(meta)
        self.layers = {name: dict(attrs) for name, attrs in layers.items()}
        self.dtype = np.dtype(dtype)
        self._lock = FileLock(str(self.path) + ".lock")
        bad = [n for n in self.layers if n in _RESERVED or "/" in n]
        if bad:
            raise ValueError(f"invalid layer name(s) {bad}: no '/' and not one of {_RESERVED}")

    def __enter__(self) -> CacheWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise CacheError(
                f"another process is writing {self.path} (lock {self._lock.lock_file}); "
                "wait for it to finish"
            ) from None
        self._check_manifest()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def _check_manifest(self) -> None:
        manifest = {"layers": sorted(self.layers), "dtype": self.dtype.name}
        mpath = self.parts / "manifest.json"
        if mpath.is_file():
            if json.loads(mpath.read_text()) == manifest:
                return
            shutil.rmtree(self.parts)
        self.parts.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(mpath, json.dumps(manifest).encode())

    def _shard_path(self, split: str, start: int) -> Path:
        return self.parts / split / f"{start:012d}.npz"

    def done_shards(self, split: str) -> set[int]:
        """Source start indices of the shards already on disk for ``split``."""
        folder = self.parts / split
        if not folder.is_dir():
            return set()
        return {int(p.stem) for p in folder.glob("*.npz")}

    def write_shard(
        self,
        split: str,
        start: int,
        *,
        labels: np.ndarray,
        ids: Sequence[str],
        features: Mapping[str, np.ndarray],
        skipped: Sequence[str] = (),
    ) -> None:
        """Atomically store rows that begin at source index ``start``."""
        n = len(labels)
        if n and set(features) != set(self.layers):
            raise ValueError(
                f"shard layers {sorted(features)} != writer layers {sorted(self.layers)}"
            )
        if len(ids) != n or any(len(a) != n for a in features.values()):
            raise ValueError("labels, ids and every layer must have the same number of rows")
        arrays = {
            f"layer/{k}": np.asarray(v).astype(self.dtype, copy=False) for k, v in features.items()
        }
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
        arrays["ids"] = np.asarray(ids, dtype=str)
        arrays["skipped"] = np.asarray(list(skipped), dtype=str)
        target = self._shard_path(split, start)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)

    def _read(self, split: str, keys: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        """Only ``keys`` of each shard, in row order, one shard in memory at a time."""
        for start in sorted(self.done_shards(split)):
            with np.load(self._shard_path(split, start)) as z:
                yield {k: z[k] for k in keys}

    def finalize(self, plans: Mapping[str, SplitPlan]) -> Path:
        """Assemble shards (plus any finished file's other layers) into the final file."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            with h5py.File(tmp, "w") as out:
                old = FeatureCache(self.path) if self.path.is_file() else None
                try:
                    for split, plan in plans.items():
                        self._write_split(out, split, plan, old)
                    meta = dict(old.meta) if old else {}
                finally:
                    if old:
                        old.close()
                meta.update(self.meta)
                meta.update(
                    format_version=FORMAT_VERSION,
                    created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                )
                meta.setdefault(
                    "fingerprint",
                    hashlib.sha256(
                        json.dumps(self.meta, sort_keys=True, default=str).encode()
                    ).hexdigest(),
                )
                for key, value in meta.items():
                    if key != "complete":
                        out.attrs[key] = _json_attr(value)
                out.attrs["complete"] = True
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        shutil.rmtree(self.parts, ignore_errors=True)
        return self.path

    def _write_split(
        self, out: h5py.File, split: str, plan: SplitPlan, old: FeatureCache | None
    ) -> None:
        index = list(self._read(split, ("labels", "ids", "skipped")))
        group = out.create_group(split)
        labels = np.concatenate([s["labels"] for s in index]) if index else np.zeros(0, np.int64)
        ids = np.concatenate([s["ids"] for s in index]) if index else np.zeros(0, str)
        skipped = [str(x) for s in index for x in s["skipped"]]
        n = len(labels)
        if n == 0:
            raise CacheError(f"split {split!r} has no rows to write")
        if n + len(skipped) != plan.n_source:
            raise CacheError(
                f"split {split!r}: shards cover {n + len(skipped)} of {plan.n_source} items; "
                "re-run the extraction to finish it"
            )
        group.create_dataset("labels", data=labels)
        group.create_dataset("ids", data=ids.astype(object), dtype=h5py.string_dtype())
        group.attrs["view_names"] = json.dumps(list(plan.view_names))
        group.attrs["skipped"] = json.dumps(skipped)
        feats = group.create_group("features")
        if old is not None and split in old.splits:
            if not np.array_equal(old.ids(split), ids):
                raise CacheError(f"{self.path}: rows of split {split!r} changed since last run")
            for layer in old.layers(split):
                if layer not in self.layers:
                    old._file.copy(old._file[split]["features"][layer], feats, name=layer)
        for layer, attrs in self.layers.items():
            key = f"layer/{layer}"
            ds, row = None, 0
            for start, meta in zip(sorted(self.done_shards(split)), index, strict=True):
                if not len(meta["labels"]):
                    continue
                with np.load(self._shard_path(split, start)) as z:
                    block = z[key]
                if ds is None:
                    chunk_rows = max(1, min(n, (1 << 20) // max(1, block[0].nbytes)))
                    ds = feats.create_dataset(
                        layer, shape=(n, *block.shape[1:]), dtype=self.dtype,
                        chunks=(chunk_rows, *block.shape[1:]),
                    )
                ds[row : row + len(block)] = block
                row += len(block)
            for name, value in attrs.items():
                ds.attrs[name] = _json_attr(value)


def write_cache(
    path: Path | str,
    *,
    meta: Mapping[str, Any],
    splits: Mapping[str, Mapping[str, Any]],
    dtype: str = "float16",
) -> Path:
    """Write a whole cache in one go (tests, small tools).

    ``splits[name]`` holds ``labels``, ``ids``, ``features`` ({layer: array}) and optionally
    ``view_names``.
    """
    first = next(iter(splits.values()))
    layers = {name: {"node": name, "pool": meta.get("pool", "avg")} for name in first["features"]}
    with CacheWriter(path, meta=meta, layers=layers, dtype=dtype) as writer:
        plans = {}
        for split, data in splits.items():
            writer.write_shard(
                split, 0, labels=data["labels"], ids=data["ids"], features=data["features"]
            )
            plans[split] = SplitPlan(len(data["labels"]), tuple(data.get("view_names", ("full",))))
        return writer.finalize(plans)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
