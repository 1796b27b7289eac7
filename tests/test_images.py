"""Decoding: EXIF orientation, 16-bit images scaled, JPEGs decoded reduced (never too small)."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from featcache.extract.backbones.registry import get_spec
from featcache.extract.data.images import decode, draft_scale
from featcache.extract.data.preprocess import Preprocess


def _upright(h=30, w=20):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 12, y * 8, (x + y) * 5], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_is_applied(tmp_path, suffix):
    upright = _upright()
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright)))  # display: rotate 90 cw
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / f"phone{suffix}"
    stored.save(path, exif=exif, **({"quality": 100} if suffix == ".jpg" else {}))
    img = decode(path)
    assert img.size == (20, 30) and img.mode == "RGB"
    got = np.asarray(img).astype(int)
    assert np.abs(got - upright).max() <= (0 if suffix == ".png" else 8)
    pre = Preprocess(16, 16, "bilinear", (0.5,) * 3, (0.5,) * 3, "test")
    if suffix == ".png":
        assert torch.equal(pre.views(5)(path), pre.views(5)(Image.fromarray(upright)))


def test_sixteen_bit_grey_png_is_scaled_not_clipped(tmp_path):
    wide = np.linspace(0, 65535, 24 * 32).reshape(24, 32).astype(np.uint16)
    path = tmp_path / "depth.png"
    Image.fromarray(wide).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    got = np.asarray(decode(path))
    assert got.shape == (24, 32, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[..., 0], np.rint(wide / 257.0).astype(np.uint8))
    assert got.min() == 0 and got.max() == 255 and 120 < got.mean() < 135


def test_other_modes_become_rgb():
    rgba = Image.fromarray(np.full((4, 4, 4), 200, np.uint8))
    assert decode(rgba).mode == "RGB" and decode(rgba.convert("P")).mode == "RGB"


def test_draft_scale_divides_both_sides_and_keeps_the_short_side():
    assert draft_scale((4032, 3024), 256) == 8
    assert draft_scale((1024, 1024), 256) == 4
    assert draft_scale((1000, 1000), 256) == 1  # 1/4 would be below 256; 1/2 is not used
    assert draft_scale((512, 512), 256) == 1
    assert draft_scale((1020, 1024), 128) == 4
    assert draft_scale((1022, 1024), 128) == 1  # 1022 has no factor 4
    assert draft_scale((500, 375), 256) == 1


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory):
    from skimage.data import astronaut

    path = tmp_path_factory.mktemp("jpeg") / "astronaut.jpg"
    Image.fromarray(astronaut()).save(path, quality=95)  # 512 x 512
    return path


def test_large_jpeg_decodes_reduced_but_never_below_the_resize(big_jpeg):
    assert decode(big_jpeg).size == (512, 512)
    assert decode(big_jpeg, min_side=128).size == (128, 128)
    assert decode(big_jpeg, min_side=129).size == (512, 512)
    assert decode(big_jpeg, min_side=600).size == (512, 512)


def test_draft_pixels_stay_close_to_a_full_decode(big_jpeg):
    """Measured: 1.6 grey levels mean absolute difference at 112 px (a 1/4 draft); at
    224 px the 512 px photo is under four times the resize, so it is not drafted."""
    for res, drafted in ((224, False), (112, True)):
        pre = get_spec("efficientnet_lite0").preprocess(res)
        full = dataclasses.replace(pre, jpeg_draft=False)
        diff = (pre.views(1)(big_jpeg).int() - full.views(1)(big_jpeg).int()).abs().float()
        assert (0 < diff.mean() < 3) if drafted else diff.max() == 0, res
        assert pre.describe() != full.describe()


def test_png_is_never_drafted(tmp_path):
    from skimage.data import astronaut

    path = tmp_path / "astronaut.png"
    Image.fromarray(astronaut()).save(path)
    assert decode(path, min_side=64).size == (512, 512)
