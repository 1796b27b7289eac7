"""Any timm model as ``timm/<name>``: timm's preprocessing, feature taps and HF-cached weights."""

import hashlib

import pytest
import timm
import torch
from safetensors.torch import save_file

from featcache.extract.backbones.registry import (
    UnknownNameError,
    WeightsUnavailableError,
    get_spec,
    load_backbone,
    make_feature_extractor,
    resolve_layers,
    weights_sha256,
)
from featcache.extract.pipeline import describe_layers

SMALL = "timm/mobilenetv3_small_100.lamb_in1k"  # 2.5 M parameters, 10 MB of weights


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline (the constants are read at import, so set both)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _place(cache, repo, tensors):
    """``models--<org>--<name>/snapshots/<rev>/model.safetensors`` + ``refs/main``."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    (folder / "snapshots" / revision).mkdir(parents=True)
    path = folder / "snapshots" / revision / "model.safetensors"
    save_file(tensors, str(path))
    return path


def test_timm_weights_load_from_the_hugging_face_cache(hf_cache):
    spec = get_spec(SMALL)
    assert weights_sha256(spec) is None
    with pytest.raises(WeightsUnavailableError) as err:
        load_backbone(SMALL)
    message = str(err.value)
    assert "timm/mobilenetv3_small_100.lamb_in1k" in message and "model.safetensors" in message
    assert str(hf_cache) in message
    state = {k: v.contiguous() for k, v in
             timm.create_model(SMALL[5:], pretrained=False).state_dict().items()}
    path = _place(hf_cache, "timm/mobilenetv3_small_100.lamb_in1k", state)
    assert weights_sha256(spec) == hashlib.sha256(path.read_bytes()).hexdigest()
    model, spec = load_backbone(SMALL)
    for key in ("conv_stem.weight", "classifier.weight"):
        assert torch.equal(model.state_dict()[key], state[key])
    taps = make_feature_extractor(model, spec, resolve_layers(spec, ["stage3", "pool"]))
    with torch.inference_mode():
        out = taps(torch.randn(1, 3, 64, 64))
    assert out["stage3"].shape[1] == 48 and out["pool"].shape == (1, 1024)


@pytest.mark.parametrize("name", [SMALL, "timm/resnet18.a1_in1k"])
def test_taps_are_timms_feature_stages_and_pre_logits(name):
    model, spec = load_backbone(name, pretrained=False)
    x = torch.randn(2, 3, 64, 64)
    stages = [a for a in spec.layers if a.startswith("stage")]
    taps = make_feature_extractor(model, spec, resolve_layers(spec, [*stages, "pool", "logits"]))
    with torch.inference_mode():
        out = taps(x)
        want = model.forward_intermediates(x, intermediates_only=True)
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model(x)
    assert len(stages) == len(want) == len(model.feature_info)
    for alias, ref in zip(stages, want, strict=True):
        torch.testing.assert_close(out[alias], ref)
        assert spec.layers[alias].channels == ref.shape[1]
    torch.testing.assert_close(out["pool"], pre_logits)
    torch.testing.assert_close(out["logits"], logits)


def test_name_without_tag_means_timms_default_and_its_config():
    spec = get_spec("timm/convnext_tiny")
    cfg = timm.models.get_pretrained_cfg("convnext_tiny")
    assert spec.name == f"timm/convnext_tiny.{cfg.tag}" and cfg.tag
    assert spec.input_size == cfg.input_size[-1] and spec.interpolation == cfg.interpolation
    assert spec.preprocess().mean == cfg.mean


def test_make_layers_lists_timm_taps():
    rows = describe_layers("timm/convnext_tiny.fb_in22k_ft_in1k", 64)
    shapes = {alias: shape for alias, _, shape in rows}
    assert shapes["stage0"] == (96, 16, 16) and shapes["stage3"] == (768, 2, 2)
    assert shapes["pool"] == (768,) and shapes["logits"] == (1000,)


def test_unknown_timm_names_suggest_close_ones():
    with pytest.raises(UnknownNameError, match=r"unknown timm model 'convnext_tiny.fb_in22'.*"
                                               r"close: .*convnext_tiny.fb_in22k"):
        get_spec("timm/convnext_tiny.fb_in22")
