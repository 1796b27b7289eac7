"""Views: full-image resize, five crops and Hertel et al.'s ten crops."""

import numpy as np
import torch
from PIL import Image

from extract.views import TEN_CROP_NAMES, MakeViews, normalize


def _image(size=40):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def test_single_view_is_the_whole_image_resized():
    out = MakeViews(16, 1, "bilinear", 0.875)(_image())
    assert out.shape == (1, 3, 16, 16) and out.dtype == torch.uint8


def test_ten_crops_are_corners_centre_and_mirrors():
    img = _image(40)
    out = MakeViews(35, 10, "bicubic", 0.875)(img)
    assert out.shape == (10, 3, 35, 35) and len(TEN_CROP_NAMES) == 10
    full = torch.from_numpy(np.array(img)).permute(2, 0, 1)  # 35 / 0.875 = 40: no resize
    assert torch.equal(out[0], full[:, :35, :35])
    assert torch.equal(out[1], full[:, :35, 5:])
    assert torch.equal(out[2], full[:, 5:, :35])
    assert torch.equal(out[3], full[:, 5:, 5:])
    assert torch.equal(out[4], full[:, 2:37, 2:37])
    for i in range(5):
        assert torch.equal(out[5 + i], out[i].flip(-1))


def test_five_crops_are_the_ten_without_mirrors():
    img = _image(40)
    five = MakeViews(35, 5, "bicubic", 0.875)(img)
    assert torch.equal(five, MakeViews(35, 10, "bicubic", 0.875)(img)[:5])


def test_normalize_matches_the_usual_definition():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    want = (x.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(normalize(x, mean, std), want)
