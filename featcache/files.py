"""Files both stages write: whole or absent (atomic replace), their sha256, safe name parts."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

BLOCK = 1 << 20


def fsync_dir(folder: Path | str) -> None:
    """Make a rename or a new entry in ``folder`` survive a crash of the machine."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path | str) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def publish(tmp: Path | str, target: Path | str) -> None:
    """Put the finished file ``tmp`` at ``target``: fsync it, ``os.replace``, fsync the folder."""
    fsync_file(tmp)
    os.replace(tmp, target)
    fsync_dir(Path(target).parent)


def atomic_write(target: Path | str, write: Callable[[BinaryIO], object]) -> None:
    """``write(fh)`` into a unique temporary file beside ``target``, then :func:`publish` it.

    Readers see the old file or the new one; if ``write`` raises, ``target`` is untouched and
    the temporary file is removed.
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(target.parent)


def sha256_file(path: Path | str) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def slug(text: str) -> str:
    """``text`` as a file-name part: each character outside letters, digits and ``-_.`` becomes
    ``_``; leading and trailing ``.``/``_`` go; never empty. Cache file names are built with it,
    so changing the rule would orphan every cache."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("._") or "x"
