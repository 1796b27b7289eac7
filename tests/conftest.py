"""Shared fixtures: tiny generated image folders and the location of the real data."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_image_folder(root, classes=("cat", "dog", "eel"), per_class=6, size=20, splits=None):
    """Tiny generated JPEGs in ImageFolder layout (optionally under train/ and test/)."""
    rng = np.random.default_rng(0)
    for split in splits or [""]:
        for label, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                arr[..., label % 3] = 255 - (arr[..., label % 3] // 4)
                Image.fromarray(arr).save(d / f"{i:03d}.jpg")
    return root


@pytest.fixture
def image_folder(tmp_path):
    """Factory: ``image_folder(**kw)`` writes a folder under tmp_path and returns its path."""

    def make(name="imgs", **kw):
        return write_image_folder(tmp_path / name, **kw)

    return make


@pytest.fixture
def shared_data():
    """``../shared/data`` from the project root; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (only present on the project machines)")
    return SHARED_DATA
