"""Datasets on disk as users have them: class folders, split folders, or a CSV manifest.

* ``<root>/<class>/<image>``: one pool of labelled images (the caller carves a test split).
* ``<root>/train/<class>/..`` with ``val/`` and/or ``test/`` beside it: those splits. A root
  that mixes split folders with other folders is ambiguous and an error.
* ``<file>.csv`` with a header ``path,label`` or ``path,label,split``: paths relative to
  the CSV's folder; ``split`` is ``train``, ``val`` or ``test``.

Hidden files and folders (``.*``, which covers macOS ``._*`` resource forks and
``.DS_Store``) and ``__MACOSX`` folders are skipped; class names are folder names.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from featcache.errors import UsageError
from featcache.files import sha256_file
from featcache.options import FINGERPRINTS as FINGERPRINT_MODES

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"
)
SPLIT_NAMES = ("train", "val", "test")
MANIFEST_HEADERS = (("path", "label"), ("path", "label", "split"))
_SKIPPED_DIRS = ("__MACOSX",)


@dataclass(frozen=True)
class FileList:
    """Labelled image files: ``ids`` (relative paths), ``paths``, class names, splits.

    ``splits`` is None where the layout names no split; ``layout`` says which layout it was.
    """

    ids: list[str]
    paths: list[str]
    labels: list[str]
    splits: list[str] | None
    layout: str


def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in _SKIPPED_DIRS


def _is_image(name: str) -> bool:
    return _visible(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def _subdirs(folder: Path, warn: bool = True) -> list[str]:
    """Visible sub-folders; a linked one that leads back to ``folder`` or above it (a loop:
    every image again under another name) is skipped, with a warning where ``warn``."""
    here = os.path.realpath(folder)
    out = []
    for e in os.scandir(folder):
        if not (e.is_dir() and _visible(e.name)):
            continue
        target = os.path.realpath(e.path)
        if e.is_symlink() and (here + os.sep).startswith(target.rstrip(os.sep) + os.sep):
            if warn:
                log.warning("skipped %s: a link to %s, which holds it (a loop)", e.path, target)
            continue
        out.append(e.name)
    return sorted(out)


def _loose_images(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and _is_image(e.name))


def _walk_images(root: str, folder: str) -> list[str]:
    """Images under ``root/folder``, as ``/``-joined paths relative to ``root``, sorted per
    folder. Strings, not ``pathlib``: building a ``Path`` per file took most of a 0.3 s scan
    of 10,000 files."""
    out = []
    for here, dirs, files in os.walk(os.path.join(root, folder)):
        dirs[:] = sorted(d for d in dirs if _visible(d))
        rel = os.path.relpath(here, root).replace(os.sep, "/")
        out += [f"{rel}/{f}" for f in sorted(files) if _is_image(f)]
    return out


def _class_folders(folder: Path, root: Path) -> dict[str, list[str]]:
    """``{class: image ids}`` under ``folder``; loose images beside class folders are an
    error."""
    classes = _subdirs(folder, warn=folder != root)  # the root's were warned of once
    loose = _loose_images(folder)
    if loose:
        where = folder.relative_to(root).as_posix() if folder != root else str(root)
        raise UsageError(
            f"{len(loose)} image(s) lie directly in {where} ({', '.join(loose[:3])}), not in a "
            f"class folder (found class folders: {', '.join(classes) or 'none'}); move them "
            "into <class>/ folders or list them in a CSV manifest (path,label[,split])"
        )
    return {c: _walk_images(str(root), os.path.join(os.path.relpath(folder, root), c))
            for c in classes}


def scan_folder(root: Path, *, skip_bad: bool = False) -> FileList:
    """The images of an ImageFolder directory, with split folders taken as splits; links
    that lead nowhere or loop are an error naming them, or with ``skip_bad`` skipped."""
    top = _subdirs(root)
    split_dirs = [d for d in top if d in SPLIT_NAMES]
    others = [d for d in top if d not in SPLIT_NAMES]
    if split_dirs and others:
        raise UsageError(
            f"{root} mixes split folders ({', '.join(split_dirs)}) with other folders "
            f"({', '.join(others[:5])}); use either <class>/ folders or "
            f"{'/, '.join(SPLIT_NAMES)}/ folders holding <class>/ folders, or a CSV manifest"
        )
    if split_dirs and "train" not in split_dirs:
        raise UsageError(
            f"{root} has {', '.join(d + '/' for d in split_dirs)} but no train/ folder"
        )
    groups = {s: _class_folders(root / s, root) for s in split_dirs} or {
        None: _class_folders(root, root)
    }
    if not any(groups.values()):
        raise UsageError(
            f"no class folders in {root} (expected <class>/<image>, or train/ with val/ "
            "and/or test/ holding <class>/ folders)"
        )
    empty = [
        f"{s + '/' if s else ''}{c}" for s, cls in groups.items() for c, files in cls.items()
        if not files
    ]
    if empty:
        raise UsageError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class folder(s) {', '.join(empty)} "
            f"under {root}; add images or remove the folder(s)"
        )
    groups = _without_broken_links(root, groups, skip_bad)
    ids = [i for cls in groups.values() for files in cls.values() for i in files]
    labels = [c for cls in groups.values() for c, files in cls.items() for _ in files]
    splits = [s for s, cls in groups.items() for files in cls.values() for _ in files]
    layout = f"{'/, '.join(split_dirs)}/ folders" if split_dirs else "class folders"
    paths = [os.path.join(root, i) for i in ids]
    check_distinct(root, ids, paths)
    return FileList(
        ids,
        paths,
        labels,
        splits if split_dirs else None,
        layout,
    )


def _without_broken_links(root: Path, groups: dict, skip_bad: bool) -> dict:
    """``groups`` less the image names that are links leading nowhere or looping."""
    paths = {i: os.path.join(root, i) for cls in groups.values() for f in cls.values() for i in f}
    broken = {i for i, p in paths.items() if os.path.islink(p) and not os.path.exists(p)}
    if not broken:
        return groups
    if not skip_bad:
        raise UsageError(
            f"{len(broken)} link(s) under {root} lead nowhere or loop (first: "
            f"{sorted(broken)[0]}); remove them, or pass SKIP_BAD=1 (--skip-bad) to skip them"
        )
    log.warning("skipping %d link(s) that lead nowhere or loop: %s", len(broken),
                ", ".join(sorted(broken)[:5]))
    return {s: {c: [i for i in files if i not in broken] for c, files in cls.items()}
            for s, cls in groups.items()}


def read_manifest(manifest: Path) -> FileList:
    """The images a CSV lists (``path,label[,split]``, header row, paths relative to it)."""
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"cannot read manifest {manifest}: {exc}") from None
    if not rows or tuple(c.strip().lower() for c in rows[0]) not in MANIFEST_HEADERS:
        raise UsageError(
            f"{manifest}: the first row must be the header path,label or path,label,split; "
            f"found {','.join(rows[0]) if rows else 'an empty file'}"
        )
    width = len(rows[0])
    ids, labels, splits = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        cells = [c.strip() for c in row]
        if len(cells) != width or not all(cells):
            raise UsageError(
                f"{manifest} line {line}: expected {width} non-empty values "
                f"({','.join(rows[0])}), found {row}"
            )
        if width == 3 and cells[2] not in SPLIT_NAMES:
            raise UsageError(
                f"{manifest} line {line}: unknown split {cells[2]!r}; valid: "
                f"{', '.join(SPLIT_NAMES)}"
            )
        ids.append(cells[0])
        labels.append(cells[1])
        splits.append(cells[2] if width == 3 else None)
    if not ids:
        raise UsageError(f"{manifest} lists no images")
    _check_unique(manifest, ids)
    paths = [os.path.join(manifest.parent, p) for p in ids]
    missing = [i for i, p in zip(ids, paths, strict=True) if not os.path.isfile(p)]
    if missing:
        raise UsageError(
            f"{len(missing)} file(s) listed in {manifest} do not exist (relative to "
            f"{manifest.parent}): {', '.join(missing[:5])}"
        )
    check_distinct(manifest, ids, paths)
    given = splits if width == 3 else None
    if given is not None and "train" not in given:
        raise UsageError(f"{manifest} assigns no row to the train split")
    return FileList(ids, paths, labels, given, "CSV manifest")


def _check_unique(manifest: Path, ids: Sequence[str]) -> None:
    seen: set[str] = set()
    twice = [i for i in ids if i in seen or seen.add(i)]
    if twice:
        raise UsageError(f"{manifest} lists {len(twice)} path(s) twice: {', '.join(twice[:5])}")


def check_distinct(where: Path, ids: Sequence[str], paths: Sequence[str]) -> None:
    """Refuse one file under two names (links, ``//``, ``./``, ``..``): resolved paths must
    differ, or one image could sit in train under one name and in test under another. Names
    that are not UTF-8 (which the cache's ids cannot store) are refused too. Holds one
    resolved path per file (and per folder)."""
    undecodable = [i for i in ids if not i.isprintable() and _not_utf8(i)]
    if undecodable:
        raise UsageError(
            f"{where} holds {len(undecodable)} file name(s) that are not valid UTF-8 (first: "
            f"{os.fsencode(undecodable[0])!r}); rename them (e.g. convmv -f latin1 -t utf8)"
        )
    first: dict[str, str] = {}
    folders: dict[str, str] = {}
    twice = []
    for i, p in zip(ids, paths, strict=True):
        folder, name = os.path.split(p)
        if folder not in folders:  # one realpath a folder, not a file (7x faster)
            folders[folder] = os.path.realpath(folder)
        real = os.path.realpath(p) if os.path.islink(p) else os.path.join(folders[folder], name)
        if first.setdefault(real, i) != i:
            twice.append(f"{first[real]!r} and {i!r}")
    if twice:
        raise UsageError(
            f"{where} holds {len(twice)} file(s) twice under two names ({'; '.join(twice[:3])}"
            f"{', ...' if len(twice) > 3 else ''}); remove one of each pair (or the link)"
        )


def _not_utf8(name: str) -> bool:
    try:
        name.encode()
    except UnicodeEncodeError:
        return True
    return False


def fingerprint(
    ids: Sequence[str], paths: Sequence[str], mode: str, header: bytes = b""
) -> str:
    """sha256 over every file: ``stat`` = path + size + mtime_ns; ``content`` = its bytes."""
    if mode not in FINGERPRINT_MODES:
        raise UsageError(
            f"unknown fingerprint mode {mode!r}; valid: {', '.join(FINGERPRINT_MODES)}"
        )
    h = hashlib.sha256(f"mode={mode}\n".encode() + header)
    for i, p in sorted(zip(ids, paths, strict=True)):
        if mode == "stat":
            st = os.stat(p)
            h.update(f"{i}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        else:
            h.update(f"{i}|{sha256_file(p)}\n".encode())
    return h.hexdigest()
