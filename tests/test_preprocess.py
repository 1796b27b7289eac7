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

from extract.backbones import get_spec
from extract.errors import UsageError
from extract.preprocess import TEN_CROP_NAMES, Preprocess, normalize, resize_for


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
