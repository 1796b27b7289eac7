"""torchvision classifiers: preprocessing from ``weights.transforms()``, weights via torch.hub."""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from featcache.extract.backbones.spec import (
    BackboneSpec,
    LayerTap,
    WeightsUnavailableError,
    penultimate_node,
)

# What torchvision itself sets when it loads these weights (``_ovewrite_named_param``), so a
# randomly initialised model has the same graph; the auxiliary heads are dropped after loading.
_ARCH_KWARGS = {
    "inception_v3": {"aux_logits": True, "transform_input": True, "init_weights": False},
    "googlenet": {"aux_logits": True, "transform_input": True, "init_weights": False},
}
_AUX_HEADS = ("AuxLogits", "aux1", "aux2")


def checkpoint_path(weights: WeightsEnum) -> Path:
    """Where ``torch.hub`` keeps (and looks first for) this weights file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]


def build_torchvision(name: str, weights: WeightsEnum | None) -> nn.Module:
    """The model as ``weights`` define it (random init when None), auxiliary heads removed."""
    kwargs = _ARCH_KWARGS.get(name, {})
    if weights is None:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    else:
        model = _load(name, weights, kwargs)
    for head in _AUX_HEADS:
        if hasattr(model, head):
            setattr(model, head, None)
    if hasattr(model, "aux_logits"):
        model.aux_logits = False
    return model


def _load(name: str, weights: WeightsEnum, kwargs: dict) -> nn.Module:
    path = checkpoint_path(weights)
    try:
        return torchvision.models.get_model(name, weights=weights, **kwargs)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        if path.is_file():
            raise WeightsUnavailableError(
                f"cannot load {name} weights {weights} from {path} ({reason}); delete that "
                "file to download it again"
            ) from None
        raise WeightsUnavailableError(
            f"cannot download {name} weights {weights} ({reason}); on a connected machine "
            f"download {weights.url} and place it as {path} (TORCH_HOME sets the folder)"
        ) from None


def torchvision_spec(name: str, layers: Mapping[str, LayerTap] | None = None) -> BackboneSpec:
    """A spec from the model's DEFAULT weights; without ``layers``, only ``pool`` is tapped."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    tf = weights.transforms()
    crop, resize = tf.crop_size[0], tf.resize_size[0]
    if layers is None:
        with torch.device("meta"):
            model = build_torchvision(name, None)
        layers = {"pool": LayerTap(penultimate_node(model, {}))}
    return BackboneSpec(
        name=name,
        weights=str(weights),
        input_size=crop,
        crop_pct=Fraction(crop, resize),
        interpolation=tf.interpolation.value,
        mean=tuple(tf.mean),
        std=tuple(tf.std),
        preprocess_source=f"torchvision {weights}.transforms()",
        layers=MappingProxyType(dict(layers)),
        build=lambda pretrained: build_torchvision(name, weights if pretrained else None),
        weights_file=lambda: checkpoint_path(weights),
    )
