"""Dataset registry: a name, an ImageFolder directory or a CSV manifest becomes labelled splits.

Registered names (digits, MNIST, CIFAR) are arrays, fingerprinted by hashing the arrays;
folders and manifests (:mod:`featcache.extract.data.layouts`) are fingerprinted per file, by
path + size +
mtime_ns (``fingerprint="stat"``, fast) or by every file's bytes (``"content"``, for file
systems whose mtimes cannot be trusted). ``ImageDataset.fingerprint_mode`` says which.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from featcache.errors import UsageError
from featcache.extract.data.images import Source
from featcache.extract.data.layouts import (
    FINGERPRINT_MODES,
    SPLIT_NAMES,
    FileList,
    read_manifest,
    scan_folder,
)
from featcache.extract.data.layouts import fingerprint as layout_fingerprint
from featcache.stratified import stratified_split

log = logging.getLogger(__name__)


class FileImages:
    """Picklable loader by index: the file's path (decoded later, so JPEGs can decode reduced)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __call__(self, i: int) -> str:
        return self.paths[i]


class ArrayImages:
    """Picklable loader of images held in a uint8 array [N, H, W] or [N, H, W, 3]."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __call__(self, i: int) -> Image.Image:
        return Image.fromarray(np.asarray(self.array[i])).convert("RGB")


@dataclass(frozen=True)
class Split:
    """One split: identifiers, integer labels and ``load(i) -> source`` (a path or PIL image).

    A source becomes pixels through ``spec.preprocess(res).views(n)(source)``, or
    :func:`featcache.extract.data.images.decode`.
    """

    ids: list[str]
    labels: np.ndarray
    load: Callable[[int], Source]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray) -> Split:
        loader = self.load
        return Split(
            [self.ids[i] for i in rows],
            self.labels[rows],
            _Reindexed(loader, np.asarray(rows)),
        )


class _Reindexed:
    def __init__(self, load: Callable[[int], Source], rows: np.ndarray) -> None:
        self.load, self.rows = load, rows

    def __call__(self, i: int) -> Source:
        return self.load(int(self.rows[i]))


@dataclass(frozen=True)
class ImageDataset:
    """What stage one iterates: labelled splits plus the provenance the cache records."""

    name: str
    source: str
    fingerprint: str
    class_names: list[str]
    split_rule: str
    splits: Mapping[str, Split]
    native_size: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    fingerprint_mode: str = "arrays"

    def limited(self, limit: int | None, seed: int) -> ImageDataset:
        """A stratified, seeded subset of at most ``limit`` items per split (tests, benchmarks).

        Its name gains ``-limit<N>``, so its caches live apart from the full dataset's.
        """
        if limit is None:
            return self
        splits = {
            k: s.subset(_stratified_rows(s.labels, limit, seed)) for k, s in self.splits.items()
        }
        fp = hashlib.sha256(f"{self.fingerprint}|limit={limit}|seed={seed}".encode()).hexdigest()
        return ImageDataset(
            f"{self.name}-limit{limit}",
            self.source,
            fp,
            self.class_names,
            f"{self.split_rule}; limit={limit}",
            splits,
            self.native_size,
            {**self.extra, "limit": str(limit)},
            self.fingerprint_mode,
        )


def _stratified_rows(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    if limit >= len(labels):
        return np.arange(len(labels))
    return stratified_split(labels, train=limit, seed=seed)[0]


def _hash_arrays(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _split_once(
    ids: list[str],
    labels: np.ndarray,
    load: Callable[[int], Source],
    test_fraction: float,
    seed: int,
) -> tuple[dict[str, Split], str]:
    if not 0.0 < test_fraction < 1.0:
        raise UsageError(f"test fraction {test_fraction} must be in (0, 1)")
    counts = np.bincount(labels)
    if counts[counts > 0].min() < 2:
        raise UsageError("every class needs at least 2 images to split into train and test")
    try:
        train, test = stratified_split(labels, test=test_fraction, seed=seed)
    except UsageError as exc:
        raise UsageError(
            f"cannot split {len(ids)} images with test fraction {test_fraction}: {exc}"
        ) from None
    whole = Split(ids, labels, load)
    splits = {"train": whole.subset(train), "test": whole.subset(test)}
    return splits, f"stratified test={test_fraction} seed={seed}"


def _digits(data_dir: Path, test_fraction: float, seed: int) -> ImageDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    ids = [f"digits/{i:04d}" for i in range(len(labels))]
    splits, rule = _split_once(ids, labels, ArrayImages(images), test_fraction, seed)
    return ImageDataset(
        "digits",
        "sklearn.datasets.load_digits",
        _hash_arrays(images, labels),
        [str(c) for c in bunch.target_names],
        rule,
        splits,
        native_size=8,
    )


def _torchvision(cls_name: str, native: int) -> Callable[[Path, float, int], ImageDataset]:
    def build(data_dir: Path, test_fraction: float, seed: int) -> ImageDataset:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        splits, hashes, classes = {}, [], None
        for split in ("train", "test"):
            ds = _open_torchvision(cls, data_dir, split == "train")
            data = ds.data.numpy() if hasattr(ds.data, "numpy") else np.asarray(ds.data)
            labels = np.asarray(ds.targets, dtype=np.int64)
            ids = [f"{split}/{i:05d}" for i in range(len(labels))]
            splits[split] = Split(ids, labels, ArrayImages(data))
            hashes.append(_hash_arrays(data, labels))
            classes = [str(c) for c in ds.classes]
        fp = hashlib.sha256("".join(hashes).encode()).hexdigest()
        return ImageDataset(
            cls_name.lower(),
            f"torchvision.datasets.{cls_name}",
            fp,
            classes or [],
            "official",
            splits,
            native_size=native,
        )

    return build


def _open_torchvision(cls: type, data_dir: Path, train: bool) -> object:
    """An existing copy under ``data_dir`` (or ``data_dir/downloads``), else download."""
    for root in (data_dir, data_dir / "downloads"):
        try:
            return cls(root=str(root), train=train, download=False)
        except RuntimeError:
            continue
    root = data_dir / "downloads"
    try:
        return cls(root=str(root), train=train, download=True)
    except (OSError, RuntimeError) as exc:
        raise UsageError(
            f"cannot download {cls.__name__} ({type(exc).__name__}: {exc}); place the files "
            f"torchvision expects under {root} (see torchvision.datasets.{cls.__name__}) "
            f"or pass DATA_DIR=<dir holding them>"
        ) from None


def _class_order(names: set[str]) -> list[str]:
    """Sorted class names; numerically where every name is an integer (CSV labels 2 < 10)."""
    if all(re.fullmatch(r"-?[0-9]+", n) for n in names):  # not isdigit: "²" is a digit
        return sorted(names, key=int)
    return sorted(names)


def _check_classes(files: FileList, classes: list[str], where: str) -> dict[str, str]:
    """A class missing from train is an error; from val or test, a named warning."""
    if files.splits is None:
        return {}
    present = {s: {c for c, t in zip(files.labels, files.splits, strict=True) if t == s}
               for s in dict.fromkeys(files.splits)}
    missing = {s: [c for c in classes if c not in have] for s, have in present.items()}
    if missing.get("train"):
        found = [f"{c} (in {'/'.join(s for s in present if c in present[s])})"
                 for c in missing["train"]]
        raise UsageError(
            f"class(es) {', '.join(found)} of {where} have no train images; add training "
            "images or remove them"
        )
    notes = {f"missing_classes_{s}": ", ".join(m) for s, m in missing.items() if m}
    for key, names in notes.items():
        log.warning("%s: no %s images of class(es) %s", where, key.rsplit("_", 1)[1], names)
    return notes


def _from_files(
    name: str,
    source: Path,
    files: FileList,
    fingerprint: str,
    fingerprint_mode: str,
    test_fraction: float,
    seed: int,
) -> ImageDataset:
    """Splits from a file list: as given, with test carved from train where none is given."""
    classes = _class_order(set(files.labels))
    extra = _check_classes(files, classes, str(source))
    index = {c: i for i, c in enumerate(classes)}
    labels = np.asarray([index[c] for c in files.labels], dtype=np.int64)
    given = files.splits or ["train"] * len(files.ids)
    splits = {}
    for split in (s for s in SPLIT_NAMES if s in given):
        rows = np.asarray([i for i, s in enumerate(given) if s == split])
        splits[split] = Split([files.ids[i] for i in rows], labels[rows],
                              FileImages([files.paths[i] for i in rows]))
    if "test" in splits:
        rule = "official"
    else:
        carved, rule = _split_once(
            splits["train"].ids, splits["train"].labels, splits["train"].load,
            test_fraction, seed,
        )
        if files.splits is not None:
            rule = f"{' and '.join(splits)} given ({files.layout}); test carved from train: {rule}"
        splits = {**splits, **carved}
    return ImageDataset(
        name, str(source), fingerprint, classes, rule, splits,
        extra=extra, fingerprint_mode=fingerprint_mode,
    )


def _where(path: Path, mode: str) -> bytes:
    """In ``stat`` mode the location is part of the identity: another folder with the same
    names, sizes and mtimes is another dataset. ``content`` identifies by bytes alone."""
    return f"root={path}\n".encode() if mode == "stat" else b""


def _folder(path: Path, test_fraction: float, seed: int, mode: str,
            skip_bad: bool = False) -> ImageDataset:
    path = path.resolve()
    files = scan_folder(path, skip_bad=skip_bad)
    fp = layout_fingerprint(files.ids, files.paths, mode, header=_where(path, mode))
    return _from_files(path.name, path, files, fp, mode, test_fraction, seed)


def _manifest(path: Path, test_fraction: float, seed: int, mode: str) -> ImageDataset:
    path = path.resolve()
    files = read_manifest(path)
    fp = layout_fingerprint(files.ids, files.paths, mode,
                            header=_where(path, mode) + path.read_bytes())
    return _from_files(path.stem, path, files, fp, mode, test_fraction, seed)


@dataclass(frozen=True)
class DatasetEntry:
    build: Callable[[Path, float, int], ImageDataset]
    description: str


DATASETS: Mapping[str, DatasetEntry] = {
    "digits": DatasetEntry(_digits, "scikit-learn's bundled 8x8 digits (offline, 1,797 images)"),
    "mnist": DatasetEntry(_torchvision("MNIST", 28), "MNIST via torchvision (60k/10k)"),
    "cifar10": DatasetEntry(_torchvision("CIFAR10", 32), "CIFAR-10 via torchvision (50k/10k)"),
    "cifar100": DatasetEntry(_torchvision("CIFAR100", 32), "CIFAR-100 via torchvision (50k/10k)"),
}


def open_dataset(
    name: str,
    data_dir: Path | str = "data",
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    fingerprint: str = "stat",
    skip_bad: bool = False,
) -> ImageDataset:
    """A registered dataset by name, an ImageFolder directory, or a ``.csv`` manifest.

    ``fingerprint`` (``stat`` or ``content``) applies to folders and manifests; registered
    datasets always hash their arrays (``fingerprint_mode == "arrays"``). ``skip_bad`` skips
    a folder's links that lead nowhere or loop (else an error names them).
    """
    if fingerprint not in FINGERPRINT_MODES:
        raise UsageError(
            f"unknown fingerprint mode {fingerprint!r}; valid: {', '.join(FINGERPRINT_MODES)}"
        )
    if name in DATASETS:
        return DATASETS[name].build(Path(data_dir), test_fraction, seed)
    path = Path(name).expanduser()
    if path.is_dir():
        return _folder(path, test_fraction, seed, fingerprint, skip_bad)
    if path.suffix.lower() == ".csv" and path.is_file():
        return _manifest(path, test_fraction, seed, fingerprint)
    raise UsageError(
        f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}, a directory in ImageFolder "
        "layout, or a .csv manifest (path,label[,split])"
    )
