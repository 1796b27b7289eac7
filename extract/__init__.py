"""Stage one: a frozen, pretrained CNN's activations cached once in HDF5.

From Python::

    from extract import extract
    path = extract("../shared/data/ucmerced-jpg", layers=("pool", "block5"))

Every keyword is a field of :class:`extract.config.ExtractConfig` (the command line's options).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def extract(dataset: str, *, progress: bool = False, **options: Any) -> Path:
    """Extract (or find) the cache of ``dataset`` with ``options``; returns its path."""
    from .config import ExtractConfig
    from .pipeline import run_extraction

    return run_extraction(ExtractConfig(dataset=dataset, **options), progress=progress).path


__all__ = ["extract"]
