"""``python -m featcache.extract show`` (backbones/pictures.py): filters and activation maps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from featcache.errors import UsageError
from featcache.extract.backbones.pictures import activation_maps, filter_grid, first_conv, show
from featcache.extract.backbones.registry import load_backbone
from featcache.extract.cli import main


@pytest.fixture(scope="module")
def lite0():
    return load_backbone("efficientnet_lite0", pretrained=False)


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(path)
    return path


def test_filters_are_the_stem_kernels_scaled_to_unit_range(lite0) -> None:
    model, _ = lite0
    conv = first_conv(model)
    grid = filter_grid(conv)
    assert grid.shape == (conv.out_channels, *conv.kernel_size, 3)
    assert grid.min() == 0.0 and np.allclose(grid.max(axis=(1, 2, 3)), 1.0)


def test_activation_maps_have_the_taps_spatial_shapes(lite0, photo) -> None:
    model, spec = lite0
    image, maps = activation_maps(model, spec, photo, ["block1", "block7"])
    assert image.shape == (spec.input_size, spec.input_size, 3)
    assert maps["block1"].shape == (16, 112, 112)
    assert maps["block7"].shape == (320, 7, 7)


def test_pooled_tap_is_refused_by_name(lite0, photo) -> None:
    model, spec = lite0
    with pytest.raises(UsageError, match="pool"):
        activation_maps(model, spec, photo, ["pool"])


def test_show_writes_both_pictures(photo, tmp_path) -> None:
    paths = show("efficientnet_lite0", photo, ["block1", "block7"], tmp_path / "out",
                 pretrained=False)
    assert [p.name for p in paths] == ["efficientnet_lite0-filters.png",
                                       "efficientnet_lite0-activations.png"]
    for path in paths:
        with Image.open(path) as img:
            assert min(img.size) > 100


def test_show_cli_names_an_unreadable_image(tmp_path, capsys) -> None:
    bad = tmp_path / "not-an-image.jpg"
    bad.write_text("text")
    assert main(["show", "--image", str(bad), "--out", str(tmp_path)]) == 2
    assert "not-an-image.jpg" in capsys.readouterr().err
