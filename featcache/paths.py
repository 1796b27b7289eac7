"""Where both stages keep caches, downloads and runs."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "FEATCACHE_DATA_DIR"


def default_data_dir() -> Path:
    """``$FEATCACHE_DATA_DIR`` if set; else ``data/`` of the source checkout the package runs
    from (a ``pyproject.toml`` beside the ``featcache/`` folder); else ``~/.cache/featcache``.
    Never the working directory, so both stages find the same files from anywhere."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return checkout / "data"
    return Path.home() / ".cache" / "featcache"
