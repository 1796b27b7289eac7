"""Stage one: a frozen, pretrained CNN's activations cached once in HDF5.

The flow, one sub-package a step: ``backbones`` (which network, its weights and taps) ->
``data`` (images in, the views the weights define) -> ``plan`` (what to compute, the cache key)
-> ``compute`` (the forward pass, shard by shard) -> ``cache`` (shards, then the HDF5 file).
``pipeline.run_extraction`` runs them in that order; ``cli`` is its command line.

From Python the package is itself the entry point::

    from featcache import extract
    path = extract("../shared/data/ucmerced-jpg", layers=("pool", "block5"))

Every keyword is a field of :class:`featcache.extract.config.ExtractConfig` (the command
line's options).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any


def extract(dataset: str | Path, *, progress: bool = False, **options: Any) -> Path:
    """Extract (or find) the cache of ``dataset`` with ``options``; returns its path."""
    from featcache.extract.config import ExtractConfig
    from featcache.extract.pipeline import run_extraction

    return run_extraction(ExtractConfig(dataset=dataset, **options), progress=progress).path


class _CallablePackage(types.ModuleType):
    """``featcache.extract`` is a package and, called, :func:`extract`."""

    def __call__(self, dataset: str | Path, *, progress: bool = False, **options: Any) -> Path:
        return extract(dataset, progress=progress, **options)


sys.modules[__name__].__class__ = _CallablePackage

__all__ = ["extract"]
