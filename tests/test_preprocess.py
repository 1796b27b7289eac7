"""Preprocessing: the weights' own resize and crop, views from one resized image, normalisation.

The library comparisons run on a real photo (scikit-image's ``chelsea``, 451 x 300): our
uint8 view, normalised, equals torchvision's ``weights.transforms()`` and timm's eval
transform to float tolerance.
"""

import json
import pickle
from fractions import Fraction

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from timm.data import create_transform, resolve_data_config

from featcache.errors import UsageError
from featcache.extract.backbones.registry import get_spec
from featcache.extract.data.preprocess import (
    TEN_CROP_NAMES,
    Preprocess,
    crop_box,
    normalize,
    resize_for,
)


@pytest.fixture(scope="module")
def photo():
    from skimage.data import chelsea

    return Image.fromarray(chelsea())


def _ours(spec, img, res=None):
    pre = spec.preprocess(res)
    return normalize(pre.views(1)(img), pre.mean, pre.std)[0]


@pytest.mark.parametrize("name", ["resnet50", "inception_v3", "efficientnet_b0"])
def test_torchvision_backbones_see_what_weights_transforms_give(photo, name):
    want = torchvision.models.get_model_weights(name).DEFAULT.transforms()(photo)
    torch.testing.assert_close(_ours(get_spec(name), photo), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("name", "arch"),
    [
        ("efficientnet_lite0", "tf_efficientnet_lite0.in1k"),
        ("efficientnet_lite1", "tf_efficientnet_lite1.in1k"),
        ("efficientnet_lite2", "tf_efficientnet_lite2.in1k"),
        ("timm/resnet18.a1_in1k", "resnet18.a1_in1k"),
    ],
)
def test_timm_architectures_see_what_timms_eval_transform_gives(photo, name, arch):
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
    config = resolve_data_config({}, model=model)
    want = create_transform(**config)(photo)
    spec = get_spec(name)
    assert spec.input_size == config["input_size"][-1]
    assert float(spec.crop_pct) == pytest.approx(config["crop_pct"])
    torch.testing.assert_close(_ours(spec, photo), want, atol=1e-5, rtol=0)


def test_lite_crop_pct_is_timms_published_value():
    assert [get_spec(f"efficientnet_lite{i}").crop_pct for i in range(3)] == [
        Fraction("0.875"), Fraction("0.882"), Fraction("0.89")
    ]


def test_other_resolutions_scale_the_resize_with_the_crop_ratio(photo):
    spec = get_spec("efficientnet_lite0")
    pre = spec.preprocess(112)
    assert (pre.crop_size, pre.resize_size) == (112, 128)
    with torch.device("meta"):
        model = timm.create_model("tf_efficientnet_lite0.in1k", pretrained=False)
    config = {**resolve_data_config({}, model=model), "input_size": (3, 112, 112)}
    torch.testing.assert_close(_ours(spec, photo, 112), create_transform(**config)(photo),
                               atol=1e-5, rtol=0)
    resnet = get_spec("resnet50")  # crop 224 of 232: the exact ratio, so 224 gives 232 back
    assert resnet.preprocess().resize_size == 232 == resize_for(224, resnet.crop_pct)
    assert resnet.preprocess(112).resize_size == 116


def _resize_then_crop(pre, img):
    """The reference: torchvision's resize of the whole image, then its centre crop."""
    s = pre.crop_size
    return np.asarray(torchvision.transforms.functional.center_crop(pre.resized(img), [s, s]))


@pytest.mark.parametrize(
    ("size", "pre", "shortcut"),
    [
        ((32, 32), (112, 128, "bicubic"), True),  # CIFAR-10 at 112 px: scale 1/4
        ((28, 28), (224, 256, "bicubic"), True),  # MNIST: 7/64
        ((256, 256), (224, 256, "bicubic"), True),  # UC Merced at 224 px: a plain crop
        ((64, 48), (40, 48, "bilinear"), True),  # non-square, both sides kept: a crop
        ((16, 24), (30, 32, "bilinear"), True),  # upscaled by 2, non-square
        ((64, 64), (24, 32, "bilinear"), False),  # sides longer than the crop: Pillow picks
        ((16, 96), (15, 32, "bilinear"), False),  # the order of its passes by them
        ((247, 256), (224, 256, "bicubic"), False),  # 256/247
        ((451, 300), (224, 256, "bicubic"), False),
        ((256, 200), (224, 256, "bicubic"), False),  # one side at its size, one resized
    ],
)
def test_centre_view_straight_from_the_crop_region_is_resize_then_crop(size, pre, shortcut):
    rng = np.random.default_rng(sum(size))
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    pre = Preprocess(*pre, (0.5,) * 3, (0.5,) * 3, "test")
    resample = torchvision.transforms.functional.pil_modes_mapping[
        torchvision.transforms.InterpolationMode(pre.interpolation)]
    assert (crop_box(size, pre.resized_size(*size), pre.crop_size, resample) is not None) \
        == shortcut
    assert np.array_equal(pre.views(1)(img)[0].permute(1, 2, 0).numpy(),
                          _resize_then_crop(pre, img))


def test_resize_rule_and_shortcut_agree_with_torchvision_over_many_sizes():
    """Random sizes, resizes and filters: the same pixels whichever route is taken."""
    rng = np.random.default_rng(7)
    routes = set()
    for i in range(200):
        w, h = (int(v) for v in rng.choice([8, 16, 24, 28, 32, 48, 64, 96, 100, 128], 2))
        crop = int(rng.integers(4, 40))
        resize = crop + int(rng.choice([0, 4, 8, 16, 17]))
        if i % 2:  # an upscale by 2 or 4 of a small image: where the shortcut may apply
            w, h = (int(v) for v in rng.choice([4, 6, 8, 12, 16], 2))
            resize = min(w, h) * int(rng.choice([2, 4]))
            crop = int(rng.integers(max(w, h), resize + 1)) if max(w, h) <= resize else resize
        pre = Preprocess(crop, resize, str(rng.choice(["bicubic", "bilinear", "lanczos"])),
                         (0.5,) * 3, (0.5,) * 3, "test",
                         resize_mode=str(rng.choice(["shorter_side", "squash"])))
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert pre.resized(img).size == pre.resized_size(w, h)
        assert np.array_equal(np.asarray(pre.centre(img)), _resize_then_crop(pre, img))
        resample = torchvision.transforms.functional.pil_modes_mapping[
            torchvision.transforms.InterpolationMode(pre.interpolation)]
        routes.add(crop_box((w, h), pre.resized_size(w, h), crop, resample) is not None)
    assert routes == {True, False}


def test_views_are_channels_last_uint8():
    img = Image.fromarray(np.zeros((40, 30, 3), np.uint8))
    for n in (1, 5, 10):
        views = Preprocess(16, 20, "bicubic", (0.5,) * 3, (0.5,) * 3, "test").views(n)(img)
        assert views.shape == (n, 3, 16, 16) and views.dtype == torch.uint8
        assert views.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("n", [5, 10])
def test_centre_of_five_and_ten_views_is_the_single_view(photo, n):
    pre = get_spec("efficientnet_lite0").preprocess(64)
    one, many = pre.views(1)(photo), pre.views(n)(photo)
    assert many.shape == (n, 3, 64, 64) and many.dtype == torch.uint8
    assert torch.equal(many[TEN_CROP_NAMES.index("centre")], one[0])


def test_views_are_corners_centre_and_mirrors_of_one_resized_image():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    pre = Preprocess(35, 40, "bicubic", (0.5,) * 3, (0.5,) * 3, "test")  # 40 -> 40: no resize
    out = pre.views(10)(img)
    full = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    assert torch.equal(out[0], full[:, :35, :35])
    assert torch.equal(out[1], full[:, :35, 5:])
    assert torch.equal(out[2], full[:, 5:, :35])
    assert torch.equal(out[3], full[:, 5:, 5:])
    assert torch.equal(out[4], full[:, 2:37, 2:37])
    for i in range(5):
        assert torch.equal(out[5 + i], out[i].flip(-1))
    assert torch.equal(pre.views(5)(img), out[:5])


def test_squash_mode_ignores_the_aspect_ratio():
    img = Image.fromarray(np.zeros((20, 60, 3), np.uint8))
    pre = Preprocess(16, 16, "bilinear", (0.5,) * 3, (0.5,) * 3, "test", resize_mode="squash")
    assert pre.resized(img).size == (16, 16)
    assert Preprocess(16, 16, "bilinear", (0.5,) * 3, (0.5,) * 3, "test").resized(img).size == (
        48, 16
    )


def test_describe_is_json_and_names_what_changes_pixels():
    pre = get_spec("efficientnet_lite1").preprocess()
    text = json.dumps(pre.describe())
    for needle in ('"resize_size": 272', '"crop_size": 240', '"bicubic"', '"jpeg_draft": true'):
        assert needle in text
    assert pre.describe() != get_spec("efficientnet_lite1").preprocess(200).describe()


def test_views_pickle_for_worker_processes(photo):
    make = get_spec("resnet50").preprocess(32).views(10)
    assert torch.equal(pickle.loads(pickle.dumps(make))(photo), make(photo))


def test_bad_values_are_named():
    with pytest.raises(UsageError, match="views must be one of"):
        get_spec("resnet50").preprocess().views(3)
    with pytest.raises(UsageError, match=r"resize mode 'border'.*valid: shorter_side, squash"):
        Preprocess(16, 16, "bilinear", (0.5,) * 3, (0.5,) * 3, "test", resize_mode="border")
    with pytest.raises(UsageError, match="resolution 0"):
        get_spec("resnet50").preprocess(0)


def test_normalize_matches_the_usual_definition():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    want = (x.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(normalize(x, mean, std), want)
