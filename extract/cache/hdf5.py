"""The HDF5 feature-cache format: the one contract between stage one and stage two.

Layout of a finished cache file::

    /                       attrs: format_version, complete, fingerprint (the CacheKey's
                            digest), layout (JSON: every split's rows and every layer's shape),
                            provenance (dataset, backbone, weights_sha256, preprocess, ...)
    /<split>/labels         int64 [N], chunked, Fletcher32
    /<split>/ids            utf-8 strings [N]   (relative file path or "<split>/<index>")
    /<split>/features/<layer>
                            float16|float32 [N, D] or [N, V, D] when the split holds V views;
                            chunked, Fletcher32; attrs: node, pool
    /<split>                attrs: view_names, skipped (JSON lists), n_source, ids_sha256

Integrity: every chunk carries a Fletcher32 checksum (HDF5 checks it on each read), the
``layout`` attribute lists what must be there, and ``ids_sha256`` pins ids and labels, so
:meth:`FeatureCache.verify` finds a deleted group, a truncated file or flipped bytes.

Crash safety: a file at its final path is always complete. Rows are computed into shards
(``extract/shards.py``); :func:`assemble` writes ``<path>.tmp`` from them in a child
interpreter (HDF5 cannot be closed cleanly after a failed write: on a full disk it crashed
the interpreter), then fsyncs and renames it into place.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import pickle
import subprocess
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from filelock import FileLock, Timeout

from featcache.errors import CacheError, EnvironmentFault, environment_fault
from featcache.extract.cache.shards import ShardSpec, ShardStore, shard_specs
from featcache.files import publish, slug
from featcache.options import SHARD_ROWS

log = logging.getLogger(__name__)
FORMAT_VERSION = 2
PIPELINE_VERSION = 2
SUFFIX = ".h5"
READ_ROWS = 16384
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class CacheKey:
    """Everything that changes a stored value; its digest names the file.

    ``preprocess`` is the canonical JSON of the preprocessing (resize rule and size, crop,
    interpolation, normalisation, decoding); ``views`` the view count per split. The layer
    set is not part of the key: new layers are added to the same file.
    """

    dataset: str
    dataset_fingerprint: str
    split_rule: str
    backbone: str
    weights_sha256: str
    preprocess: str
    resolution: int
    views: str
    pool: str
    dtype: str
    skip_bad: bool = False
    pipeline: int = PIPELINE_VERSION

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def path(self, root: Path | str) -> Path:
        """``<root>/cache/<dataset>-<fp8>/<backbone>-r<res>-<views>-<pool>-<dtype>-<hash>.h5``."""
        folder = f"{slug(self.dataset)}-{self.dataset_fingerprint[:8]}"
        name = (
            f"{slug(self.backbone)}-r{self.resolution}-{self.views}-{self.pool}-{self.dtype}"
            f"-{self.digest()[:10]}{SUFFIX}"
        )
        return Path(root) / "cache" / folder / name


def find_caches(root: Path | str) -> list[Path]:
    """Every finished-looking cache file under ``<root>/cache``, sorted by path."""
    return sorted(p for p in (Path(root) / "cache").glob(f"*/*{SUFFIX}") if p.is_file())


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


def ids_digest(ids: Sequence[str], labels: np.ndarray) -> str:
    h = hashlib.sha256("\n".join(map(str, ids)).encode())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


class FeatureCache:
    """Read-only view of a finished cache; refuses incomplete, foreign or damaged files."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CacheError(f"no cache file at {self.path}")
        try:
            open(self.path, "rb").close()
        except PermissionError as exc:
            raise EnvironmentFault(
                f"permission denied reading {self.path} ({exc.strerror}); give this user read "
                "access (chmod u+r) and re-run; the file was not touched") from None
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise CacheError(
                f"{self.path} is not a readable HDF5 cache ({exc}); re-run the extraction that "
                "made it: stage one moves a damaged file aside and rebuilds it") from None
        try:
            self.meta: dict[str, Any] = {k: _decode_attr(v) for k, v in self._file.attrs.items()}
            version = self.meta.get("format_version")
            if version != FORMAT_VERSION:
                raise CacheError(
                    f"{self.path} has cache format {version!r}; this version reads "
                    f"{FORMAT_VERSION} (re-run the extraction to rebuild it)"
                )
            if not self.meta.get("complete", False):
                raise CacheError(f"{self.path} is incomplete; re-run the extraction to finish it")
            self.layout: dict[str, Any] = self.meta.get("layout") or {}
            self.class_names: list[str] = list(self.meta.get("class_names", []))
            self.fingerprint: str = str(self.meta.get("fingerprint", ""))
        except (CacheError, OSError, KeyError, TypeError, ValueError) as exc:
            self.close()
            raise CacheError(str(exc)) from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
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

    def missing_parts(self, split: str) -> list[str]:
        """Which of ``labels``, ``ids``, ``features`` the split's group lacks (a damaged file)."""
        group = self._split(split)
        return [part for part in ("labels", "ids", "features") if part not in group]

    def n_source(self, split: str) -> int | None:
        """Images the dataset's split held when the cache was written (skipped ones too)."""
        value = self._split(split).attrs.get("n_source")
        return None if value is None else int(value)

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

    def verify(self, *, data: bool = True) -> None:
        """Raise CacheError naming what is wrong: a split, layer, shape, id or checksum.

        Checks every split and layer the ``layout`` attribute lists (present, right shape and
        dtype) and the ids and labels against their digest; with ``data``, reads every
        feature chunk, so HDF5 checks each Fletcher32 checksum, and checks the values are
        finite.
        """
        if not self.layout:
            raise CacheError(f"{self.path} has no layout record")
        try:
            for split, spec in self.layout.items():
                group = self._split(split)
                labels, ids = self.labels(split), self.ids(split)
                if len(labels) != spec["rows"] or len(ids) != spec["rows"]:
                    raise CacheError(f"split {split!r} has {len(labels)} rows, not {spec['rows']}")
                if ids_digest(ids, labels) != group.attrs.get("ids_sha256"):
                    raise CacheError(f"the ids or labels of split {split!r} were changed")
                for layer, (shape, dtype) in spec["layers"].items():
                    ds = self._dataset(split, layer)
                    if list(ds.shape) != list(shape) or ds.dtype.name != dtype:
                        raise CacheError(
                            f"layer {layer!r} [{split}] is {ds.dtype.name} {ds.shape}, "
                            f"not {dtype} {tuple(shape)}"
                        )
                    if data:
                        for lo in range(0, ds.shape[0], READ_ROWS):
                            if not np.isfinite(ds[lo : lo + READ_ROWS]).all():
                                raise CacheError(f"layer {layer!r} [{split}] holds NaN or inf")
        except (OSError, KeyError, ValueError) as exc:
            raise CacheError(f"damaged: {' '.join(str(exc).split())}") from None

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
    """What one split of the finished file holds, and the dataset's ids and labels for it."""

    ids: Sequence[str]
    labels: np.ndarray
    view_names: tuple[str, ...]
    shards: tuple[ShardSpec, ...] = field(default=())


@dataclass(frozen=True)
class _AssemblyJob:
    """Everything the assembling child process needs (picklable)."""

    tmp: Path
    old: Path | None
    store: Path
    manifest: dict
    layers: dict[str, dict]
    splits: dict[str, SplitPlan]
    meta: dict


def missing_shards(store: ShardStore, plans: Mapping[str, SplitPlan]) -> list[ShardSpec]:
    """Shards not on disk, or on disk but not exactly what their position says (deleted)."""
    return [
        spec
        for plan in plans.values()
        for spec in plan.shards
        if store.read(spec, plan.ids, plan.labels) is None
    ]


def assemble(path: Path, store: ShardStore, plans: Mapping[str, SplitPlan],
             layers: Mapping[str, Mapping], meta: Mapping[str, Any],
             assembler: Assembler | None = None) -> Path:
    """Write the finished cache at ``path`` from ``store``'s shards (plus the layers of any
    finished file already there), then remove the shards. All or nothing.

    The file is written by a child interpreter (``assembler``, started here where none is
    given)."""
    missing = missing_shards(store, plans)
    if missing:
        raise CacheError(
            f"{len(missing)} shards of {path.name} are missing (first: {missing[0].split} "
            f"rows {missing[0].start}..{missing[0].end - 1}); re-run the extraction to finish it"
        )
    old = path if path.is_file() else None
    tmp = path.with_name(path.name + ".tmp")
    job = _AssemblyJob(tmp, old, store.folder, store.manifest, {k: dict(v) for k, v in
                       layers.items()}, dict(plans), dict(meta))
    try:
        with contextlib.nullcontext(assembler) if assembler else Assembler() as child:
            child.run(job)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    store.remove()
    return path


class Assembler:
    """A fresh interpreter (not multiprocessing, which would re-import a user's ``__main__``)
    waiting for one assembly job. Started ahead of the extraction, its start-up (0.1 s of
    imports) overlaps the work instead of following it; one that is never given a job is
    stopped by :meth:`close`, and exits by itself when its parent dies (end of its input)."""

    def __init__(self) -> None:
        self._child = subprocess.Popen(
            [sys.executable, "-c",
             "from featcache.extract.cache.hdf5 import _assembly_main; _assembly_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )

    def __enter__(self) -> Assembler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._child.returncode is None:  # never given its job
            self._child.kill()
            self._child.communicate()

    def run(self, job: _AssemblyJob) -> None:
        """Run :func:`_write_file` in the child; its outcome as the right error."""
        stdout, stderr = self._child.communicate(pickle.dumps(job))
        try:
            kind, code, message = pickle.loads(stdout)
        except (pickle.UnpicklingError, EOFError, ValueError):
            kind, code, message = "bug", None, stderr.decode(errors="replace")[-4000:]
        if kind == "ok":
            return
        if kind == "cache":
            raise CacheError(message)
        if kind == "bug":
            raise RuntimeError(
                f"assembling {job.tmp} failed (exit code {self._child.returncode}):\n{message}"
            )
        raise environment_fault(OSError(code, message, str(job.tmp.with_suffix(""))),
                                note="the computed shards are kept")


def _assembly_main() -> None:
    """The child: a job on stdin, the outcome on stdout, then exit without HDF5's handlers
    (after a failed write, tearing HDF5 down printed tracebacks and crashed)."""
    job = pickle.loads(sys.stdin.buffer.read())
    try:
        _write_file(job)
        outcome = ("ok", None, "")
    except CacheError as exc:
        outcome = ("cache", None, str(exc))
    except OSError as exc:
        outcome = ("os", exc.errno or errno.EIO, exc.strerror or str(exc))
    except Exception as exc:
        outcome = ("bug", None, "".join(traceback.format_exception(exc)).strip())
    sys.stdout.buffer.write(pickle.dumps(outcome))
    sys.stdout.flush()
    os._exit(0 if outcome[0] == "ok" else 1)


def _write_file(job: _AssemblyJob) -> None:
    store = ShardStore(job.store, job.manifest)
    old = FeatureCache(job.old) if job.old else None
    layout: dict[str, Any] = {}
    try:
        with h5py.File(job.tmp, "w") as out:
            for split, plan in job.splits.items():
                layout[split] = _write_split(out, store, split, plan, old, job.layers)
            meta = {**(old.meta if old else {}), **job.meta}
            meta.update(
                format_version=FORMAT_VERSION,
                layout=layout,
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            )
            for key, value in meta.items():
                if key != "complete":
                    out.attrs[key] = _json_attr(value)
            out.attrs["complete"] = True
    finally:
        if old:
            old.close()


def _write_split(out: h5py.File, store: ShardStore, split: str, plan: SplitPlan,
                 old: FeatureCache | None, layers: Mapping[str, Mapping]) -> dict:
    shards = [store.read(spec, plan.ids, plan.labels) for spec in plan.shards]
    if any(s is None for s in shards):
        raise CacheError(f"a shard of split {split!r} vanished or changed during assembly")
    rows = np.concatenate([s.rows for s in shards])
    skipped = np.concatenate([s.skipped for s in shards]).astype(np.int64)
    labels = np.asarray(plan.labels)[rows]
    ids = [plan.ids[i] for i in rows]
    if not len(rows):
        raise CacheError(f"split {split!r} has no readable image")
    group = out.create_group(split)
    group.create_dataset("labels", data=labels, chunks=True, fletcher32=True)
    group.create_dataset("ids", data=ids, dtype=h5py.string_dtype())
    group.attrs.update(
        view_names=json.dumps(list(plan.view_names)),
        skipped=json.dumps([plan.ids[i] for i in np.sort(skipped)]),
        n_source=len(plan.ids),
        ids_sha256=ids_digest(ids, labels),
    )
    feats = group.create_group("features")
    shapes: dict[str, tuple[list[int], str]] = {}
    if old is not None and split in old.splits:
        if not np.array_equal(old.ids(split), ids):
            raise CacheError(f"the rows of split {split!r} changed since {old.path} was written")
        for layer in old.layers(split):
            if layer not in layers:
                out.copy(old._file[split]["features"][layer], feats, name=layer)
                shapes[layer] = (list(feats[layer].shape), feats[layer].dtype.name)
    for layer, attrs in layers.items():
        ds, lo = None, 0
        for spec, shard in zip(plan.shards, shards, strict=True):
            if not len(shard.rows):
                continue
            block = store.layer(spec, layer)
            if ds is None:
                shape = (len(rows), *block.shape[1:])
                chunk = max(1, min(len(rows), CHUNK_BYTES // max(1, block[:1].nbytes)))
                ds = feats.create_dataset(layer, shape=shape, dtype=store.dtype,
                                          chunks=(chunk, *shape[1:]), fletcher32=True)
            ds[lo : lo + len(block)] = block
            lo += len(block)
        for name, value in attrs.items():
            ds.attrs[name] = _json_attr(value)
        shapes[layer] = (list(shape), store.dtype.name)
    return {"rows": len(rows), "layers": shapes}


def write_cache(
    path: Path | str,
    *,
    meta: Mapping[str, Any],
    splits: Mapping[str, Mapping[str, Any]],
    dtype: str = "float16",
) -> Path:
    """Write a whole cache in one go (tests, benchmarks, small tools).

    ``splits[name]`` holds ``labels``, ``ids``, ``features`` ({layer: array}) and optionally
    ``view_names``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    first = next(iter(splits.values()))
    layers = {name: {"node": name, "pool": meta.get("pool", "avg")} for name in first["features"]}
    manifest = {"shard_rows": SHARD_ROWS, "dtype": dtype, "layers": sorted(layers), "key": "-"}
    store = ShardStore.open(path.with_name(path.name + ".parts"), manifest)
    plans = {}
    for split, data in splits.items():
        labels = np.asarray(data["labels"], dtype=np.int64)
        specs = tuple(shard_specs(split, len(labels), SHARD_ROWS))
        for spec in specs:
            rows = np.arange(spec.start, spec.end)
            store.write(spec, rows=rows, ids=[data["ids"][i] for i in rows], labels=labels[rows],
                        features={k: np.asarray(v)[rows] for k, v in data["features"].items()})
        plans[split] = SplitPlan(list(data["ids"]), labels,
                                 tuple(data.get("view_names", ("full",))), specs)
    return assemble(path, store, plans, layers, {"fingerprint": hashlib.sha256(
        json.dumps(dict(meta), sort_keys=True, default=str).encode()).hexdigest(), **meta})



@contextlib.contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """Only one process extracts into ``path`` at a time; a second one gets a clear error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise CacheError(
            f"another process is writing {path} (lock {lock.lock_file}); wait for it to finish"
        ) from None
    try:
        yield
    finally:
        lock.release()
