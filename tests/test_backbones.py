"""Backbone registry: real offline weights, reference equality, every alias, clear errors."""

import hashlib
import urllib.error

import pytest
import torch
import torchvision
from PIL import Image
from torchvision.models.feature_extraction import get_graph_node_names

from featcache.extract.backbones.efficientnet_lite import lite_weights_file
from featcache.extract.backbones.registry import (
    UnknownNameError,
    WeightsUnavailableError,
    get_spec,
    list_backbones,
    load_backbone,
    make_feature_extractor,
    resolve_layers,
    weights_sha256,
)
from featcache.extract.data.preprocess import normalize

CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


def _photo(spec):
    from skimage.data import chelsea

    pre = spec.preprocess()
    return normalize(pre.views(1)(Image.fromarray(chelsea())), pre.mean, pre.std)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_offline_weights_recognise_a_cat(name):
    model, spec = load_backbone(name)
    with torch.inference_mode():
        probs = model(_photo(spec)).softmax(1)[0]
    top = probs.topk(5).indices.tolist()
    assert top[0] in CATS and probs[top[0]] > 0.3
    assert set(top) >= CATS or len(CATS & set(top)) >= 2
    assert weights_sha256(spec) == _sha(lite_weights_file(name.split("_")[1]))


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_logits_equal_the_reference_implementation():
    from efficientnet_lite_pytorch import EfficientNet

    model, spec = load_backbone("efficientnet_lite0")
    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(lite_weights_file("lite0"), map_location="cpu"))
    x = _photo(spec)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), ref.eval()(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", [*list_backbones(), "resnet18", "mobilenet_v3_small"])
def test_every_alias_is_a_graph_node_with_the_stated_width(name):
    model, spec = load_backbone(name, pretrained=False)
    nodes = set(get_graph_node_names(model, tracer_kwargs=spec.tracer_kwargs())[1])
    for alias, tap in spec.layers.items():
        assert tap.node in nodes or any(n.startswith(tap.node + ".") for n in nodes), alias
    assert "pool" in spec.layers
    size = 299 if name == "inception_v3" else 64 if name.startswith("eff") else spec.input_size
    taps = make_feature_extractor(model, spec, resolve_layers(spec, list(spec.layers)))
    with torch.inference_mode():
        out = taps(torch.randn(1, 3, size, size))
    assert out["pool"].ndim == 2
    for alias, tap in spec.layers.items():
        if tap.channels:
            assert out[alias].shape[1] == tap.channels, alias


def test_shared_nodes_and_raw_node_names():
    model, spec = load_backbone("alexnet", pretrained=False)
    nodes = resolve_layers(spec, ["fc7", "pool", "features.3"])
    assert nodes == {"fc7": "classifier.5", "pool": "classifier.5", "features.3": "features.3"}
    with torch.inference_mode():
        out = make_feature_extractor(model, spec, nodes)(torch.randn(2, 3, 224, 224))
    assert torch.equal(out["fc7"], out["pool"]) and out["features.3"].shape[1] == 192


def test_torchvision_preprocessing_comes_from_the_weights():
    spec = get_spec("inception_v3")
    assert spec.input_size == 299 and spec.layers["pool_3"].channels == 2048
    assert spec.mean == pytest.approx((0.485, 0.456, 0.406))


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownNameError, match=r"unknown backbone 'nope'; valid: alexnet, "):
        get_spec("nope")
    with pytest.raises(UnknownNameError, match=r"unknown layer 'blok5' .*block5"):
        resolve_layers(get_spec("efficientnet_lite0"), ["blok5"])


def test_offline_download_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    import torchvision.models._api as api

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        load_backbone("resnet50")
    message = str(err.value)
    assert "resnet50-11ad3fa6.pth" in message and str(tmp_path / "hub" / "checkpoints") in message


def test_models_are_frozen():
    model, _ = load_backbone("efficientnet_lite0")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert len(weights_sha256(get_spec("efficientnet_lite0"))) == 64


TORCHVISION_REGISTRY = ["alexnet", "inception_v3", "resnet50", "vgg16"]


def test_every_registry_backbone_is_covered_here():
    lite = {f"efficientnet_lite{i}" for i in range(3)}  # real weights, tested above
    assert set(list_backbones()) == lite | set(TORCHVISION_REGISTRY)


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION_REGISTRY)
def test_pretrained_path_reads_the_checkpoint_torch_hub_names(tmp_path, monkeypatch, name):
    """A random state dict under the file name torchvision looks for is what gets loaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.get_model_weights(name).DEFAULT
    extra = {"aux_logits": True, "init_weights": False} if name == "inception_v3" else {}
    state = torchvision.models.get_model(name, weights=None, **extra).state_dict()
    path = tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    first = next(k for k in state if k.endswith("weight"))
    placed = state.pop(first)
    del state
    spec = get_spec(name)
    assert weights_sha256(spec) == _sha(path)
    model, spec = load_backbone(name)
    assert torch.equal(model.state_dict()[first], placed)
    taps = make_feature_extractor(model, spec, resolve_layers(spec, ["pool"]))
    with torch.inference_mode():
        out = taps(torch.randn(1, 3, spec.input_size, spec.input_size))
    assert out["pool"].shape == (1, spec.layers["pool"].channels)
    path.unlink()


def test_inception_keeps_its_weights_input_transform_and_drops_the_aux_head():
    model, _ = load_backbone("inception_v3", pretrained=False)
    assert model.transform_input and model.AuxLogits is None and not model.aux_logits


def test_a_damaged_checkpoint_says_delete_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match=f"from {path} .*delete that file"):
        load_backbone("resnet50")
