"""Dataset registry: a name (or an ImageFolder directory) becomes labelled splits of images."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


class FileImages:
    """Picklable loader of image files by index."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __call__(self, i: int) -> Image.Image:
        with Image.open(self.paths[i]) as im:
            return im.convert("RGB")


class ArrayImages:
    """Picklable loader of images held in a uint8 array [N, H, W] or [N, H, W, 3]."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __call__(self, i: int) -> Image.Image:
        return Image.fromarray(np.asarray(self.array[i])).convert("RGB")


@dataclass(frozen=True)
class Split:
    """One split: identifiers, integer labels and a loader ``load(i) -> RGB PIL image``."""

    ids: list[str]
    labels: np.ndarray
    load: Callable[[int], Image.Image]

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
    def __init__(self, load: Callable[[int], Image.Image], rows: np.ndarray) -> None:
        self.load, self.rows = load, rows

    def __call__(self, i: int) -> Image.Image:
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
        )


def _stratified_rows(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    if limit >= len(labels):
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    rows, _ = train_test_split(
        np.arange(len(labels)), train_size=limit, stratify=labels, random_state=seed
    )
    return np.sort(rows)


def _hash_arrays(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _split_once(
    ids: list[str],
    labels: np.ndarray,
    load: Callable[[int], Image.Image],
    test_fraction: float,
    seed: int,
) -> tuple[dict[str, Split], str]:
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise UsageError(f"test fraction {test_fraction} must be in (0, 1)")
    counts = np.bincount(labels)
    if counts[counts > 0].min() < 2:
        raise UsageError("every class needs at least 2 images to split into train and test")
    try:
        train, test = train_test_split(
            np.arange(len(ids)), test_size=test_fraction, stratify=labels, random_state=seed
        )
    except ValueError as exc:
        raise UsageError(
            f"cannot split {len(ids)} images with test fraction {test_fraction}: {exc}"
        ) from None
    whole = Split(ids, labels, load)
    splits = {"train": whole.subset(np.sort(train)), "test": whole.subset(np.sort(test))}
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


def _list_classes(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _list_images(folder: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    paths, labels = [], []
    for label, name in enumerate(classes):
        cdir = folder / name
        if not cdir.is_dir():
            continue
        for root, dirs, files in os.walk(cdir):
            dirs.sort()
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(Path(root) / f)
                    labels.append(label)
    return paths, np.asarray(labels, dtype=np.int64)


def _folder(path: Path, test_fraction: float, seed: int) -> ImageDataset:
    path = path.resolve()
    has_splits = (path / "train").is_dir() and (path / "test").is_dir()
    classes = _list_classes(path / "train" if has_splits else path)
    if not classes:
        raise UsageError(
            f"no class folders in {path} (expected <class>/<image> or train/ and test/)"
        )
    fp = hashlib.sha256()
    splits: dict[str, Split] = {}
    for split in ("train", "test") if has_splits else ("all",):
        folder = path / split if has_splits else path
        paths, labels = _list_images(folder, classes)
        if not paths:
            raise UsageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
        ids = [str(p.relative_to(path)) for p in paths]
        for p, i in zip(paths, ids, strict=True):
            fp.update(f"{i}|{p.stat().st_size}\n".encode())
        splits[split] = Split(ids, labels, FileImages(paths))
    rule = "official"
    if not has_splits:
        whole = splits.pop("all")
        splits, rule = _split_once(whole.ids, whole.labels, whole.load, test_fraction, seed)
    return ImageDataset(path.name, str(path), fp.hexdigest(), classes, rule, splits)


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
    name: str, data_dir: Path | str = "data", *, test_fraction: float = 0.2, seed: int = 0
) -> ImageDataset:
    """A registered dataset by name, or any ImageFolder directory by path."""
    if name in DATASETS:
        return DATASETS[name].build(Path(data_dir), test_fraction, seed)
    path = Path(name).expanduser()
    if path.is_dir():
        return _folder(path, test_fraction, seed)
    raise UsageError(
        f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}, "
        "or a directory in ImageFolder layout"
    )
