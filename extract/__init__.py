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
    """Extract (or find) the cache of ``dataset`` with ``options``; returns its path.

    Inputs are normalised as the command line's are: ``dataset`` and ``data_dir`` may be
    ``str`` or ``Path``, ``layers`` one name or several, ``crops`` a number or text."""
    from dataclasses import fields

    from featcache.errors import UsageError
    from featcache.extract.config import ExtractConfig
    from featcache.extract.pipeline import run_extraction

    valid = [f.name for f in fields(ExtractConfig) if f.name != "dataset"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UsageError(f"extract() got unknown option {unknown[0]!r}; valid: {', '.join(valid)}")
    layers = options.get("layers")
    if isinstance(layers, str):
        options["layers"] = (layers,)
    elif layers is not None:
        options["layers"] = tuple(layers)
    if options.get("data_dir") is not None:
        options["data_dir"] = Path(options["data_dir"]).expanduser()
    if isinstance(options.get("crops"), int):
        options["crops"] = str(options["crops"])
    config = ExtractConfig(dataset=str(dataset), **options)
    return run_extraction(config, progress=progress).path


class _CallablePackage(types.ModuleType):
    """``featcache.extract`` is a package and, called, :func:`extract`."""

    def __call__(self, dataset: str | Path, *, progress: bool = False, **options: Any) -> Path:
        return extract(dataset, progress=progress, **options)


sys.modules[__name__].__class__ = _CallablePackage

__all__ = ["extract"]
