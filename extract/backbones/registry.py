"""Backbone registry: one entry maps a name to its constructor, weights, preprocessing and taps.

``load_backbone`` is the one path that builds models. Layers are tapped with torchvision's
``create_feature_extractor``; an alias names an fx node or a module (whose output is used).
Names: the registry below, any torchvision classifier (``resnet18``), or any timm model as
``timm/<arch>[.<tag>]`` (see :mod:`featcache.extract.backbones.timm_models`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from types import MappingProxyType

import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from featcache.extract.backbones.efficientnet_lite import lite_spec
from featcache.extract.backbones.spec import (
    BackboneSpec,
    LayerTap,
    UnknownNameError,
    WeightsUnavailableError,
)
from featcache.extract.backbones.timm_models import PREFIX as TIMM_PREFIX
from featcache.extract.backbones.timm_models import timm_spec
from featcache.extract.backbones.torchvision_models import torchvision_spec
from featcache.files import sha256_file

__all__ = [
    "BackboneSpec",
    "LayerTap",
    "UnknownNameError",
    "WeightsUnavailableError",
    "get_spec",
    "list_backbones",
    "load_backbone",
    "make_feature_extractor",
    "resolve_layers",
    "weights_sha256",
]
log = logging.getLogger(__name__)


def _taps(**nodes: tuple[str, int | None, int | None]) -> dict[str, LayerTap]:
    return {alias: LayerTap(*spec) for alias, spec in nodes.items()}


_ALEXNET = _taps(
    conv1=("features.1", 64, 4),
    conv2=("features.4", 192, 8),
    conv3=("features.7", 384, 16),
    conv4=("features.9", 256, 16),
    conv5=("features.11", 256, 16),
    pool5=("avgpool", 256, 32),
    fc6=("classifier.2", 4096, None),
    fc7=("classifier.5", 4096, None),
    pool=("classifier.5", 4096, None),
)
_VGG16 = _taps(
    conv1=("features.4", 64, 2),
    conv2=("features.9", 128, 4),
    conv3=("features.16", 256, 8),
    conv4=("features.23", 512, 16),
    conv5=("features.30", 512, 32),
    pool5=("avgpool", 512, 32),
    fc6=("classifier.1", 4096, None),
    fc7=("classifier.4", 4096, None),
    pool=("classifier.4", 4096, None),
)
_INCEPTION = _taps(
    pool_3=("flatten", 2048, None), pool=("flatten", 2048, None), mixed_7c=("Mixed_7c", 2048, 32)
)
_RESNET50 = _taps(
    layer1=("layer1", 256, 4),
    layer2=("layer2", 512, 8),
    layer3=("layer3", 1024, 16),
    layer4=("layer4", 2048, 32),
    pool=("flatten", 2048, None),
)

_REGISTRY: Mapping[str, Callable[[], BackboneSpec]] = MappingProxyType(
    {
        "efficientnet_lite0": lambda: lite_spec("lite0"),
        "efficientnet_lite1": lambda: lite_spec("lite1"),
        "efficientnet_lite2": lambda: lite_spec("lite2"),
        "alexnet": lambda: torchvision_spec("alexnet", _ALEXNET),
        "vgg16": lambda: torchvision_spec("vgg16", _VGG16),
        "inception_v3": lambda: torchvision_spec("inception_v3", _INCEPTION),
        "resnet50": lambda: torchvision_spec("resnet50", _RESNET50),
    }
)


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


@cache
def _torchvision_classifiers() -> frozenset[str]:
    return frozenset(torchvision.models.list_models(module=torchvision.models))


@cache
def get_spec(name: str) -> BackboneSpec:
    """The registered spec, any torchvision classifier's, or ``timm/<name>``'s."""
    if name in _REGISTRY:
        return _REGISTRY[name]()
    if name.startswith(TIMM_PREFIX):
        return timm_spec(name)
    if name in _torchvision_classifiers():
        return torchvision_spec(name)
    raise UnknownNameError(
        f"unknown backbone {name!r}; valid: {', '.join(list_backbones())}, "
        "any torchvision classification model name, or timm/<model> (timm.list_pretrained())"
    )


def load_backbone(name: str, *, pretrained: bool = True) -> tuple[nn.Module, BackboneSpec]:
    """(frozen eval-mode model, spec); ``pretrained=False`` gives random init (tests)."""
    spec = get_spec(name)
    model = spec.build(pretrained).eval()
    model.requires_grad_(False)
    return model, spec


@cache
def _graph_nodes(name: str) -> frozenset[str]:
    spec = get_spec(name)
    with torch.device("meta"):
        model = spec.build(False).eval()
    return frozenset(get_graph_node_names(model, tracer_kwargs=spec.tracer_kwargs())[1])


def _is_node_or_module(nodes: frozenset[str], name: str) -> bool:
    return name in nodes or any(n.startswith(name + ".") for n in nodes)


def resolve_layers(spec: BackboneSpec, names: Sequence[str]) -> dict[str, str]:
    """Requested name -> fx node (or module path); aliases first, then raw graph names."""
    out: dict[str, str] = {}
    for name in names:
        if name in spec.layers:
            out[name] = spec.layers[name].node
        elif _is_node_or_module(_graph_nodes(spec.name), name):
            out[name] = name
        else:
            raise UnknownNameError(
                f"unknown layer {name!r} for {spec.name}; valid aliases: "
                f"{', '.join(spec.layers)}, or a node name from `make layers BACKBONE={spec.name}`"
            )
    return out


def make_feature_extractor(
    model: nn.Module, spec: BackboneSpec, nodes: Mapping[str, str]
) -> nn.Module:
    """A module whose forward returns {alias: tensor} for the requested taps only."""
    unique = {node: node for node in nodes.values()}
    graph = create_feature_extractor(model, return_nodes=unique, tracer_kwargs=spec.tracer_kwargs())
    return _Taps(graph.eval(), dict(nodes))


class _Taps(nn.Module):
    """Renames node outputs to the requested aliases (two aliases may share one node)."""

    def __init__(self, graph: nn.Module, nodes: dict[str, str]) -> None:
        super().__init__()
        self.graph, self.nodes = graph, nodes

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.graph(x)
        return {alias: out[node] for alias, node in self.nodes.items()}


@cache
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    return sha256_file(path)  # cached per (path, size, mtime)


def weights_sha256(spec: BackboneSpec) -> str | None:
    """sha256 of the local weights file the spec loads, or None where there is none."""
    path = spec.weights_file()
    if not path or not path.is_file():
        return None
    stat = path.stat()
    return _sha256(path, stat.st_size, stat.st_mtime_ns)
