"""What one backbone entry says: constructor, weights, preprocessing numbers and layer taps."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import torch
from torch import nn
from torchvision.models.feature_extraction import NodePathTracer

from featcache.errors import EnvironmentFault, UsageError
from featcache.extract.data.preprocess import Preprocess, resize_for


class UnknownNameError(UsageError):
    """An unknown backbone or layer name; the message lists the valid ones."""


class WeightsUnavailableError(EnvironmentFault):
    """Pretrained weights could not be fetched or read; the message says which file goes where."""


@dataclass(frozen=True)
class LayerTap:
    node: str
    channels: int | None = None
    stride: int | None = None


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone: how to build it, where its weights live, how its inputs are made.

    ``input_size`` is the weights' crop; ``crop_pct`` (crop / resize) gives the resize
    before the crop at any resolution (:func:`featcache.extract.data.preprocess.resize_for`).
    """

    name: str
    weights: str
    input_size: int
    crop_pct: Fraction
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    preprocess_source: str
    layers: Mapping[str, LayerTap]
    build: Callable[[bool], nn.Module] = field(repr=False, compare=False)
    weights_file: Callable[[], Path | None] = field(repr=False, compare=False)
    tracer_kwargs: Callable[[], dict] = field(repr=False, compare=False, default=dict)
    resize_mode: str = "shorter_side"
    default_layer: str = "pool"

    def preprocess(self, resolution: int | None = None) -> Preprocess:
        """The preprocessing at ``resolution`` (the crop side; default: the weights' own)."""
        crop = self.input_size if resolution is None else resolution
        if crop < 1:
            raise UsageError(f"resolution {crop} must be a positive number of pixels")
        return Preprocess(
            crop_size=crop,
            resize_size=resize_for(crop, self.crop_pct),
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
            source=self.preprocess_source,
            resize_mode=self.resize_mode,
        )


def penultimate_node(model: nn.Module, tracer_kwargs: dict, classifier: str | None = None) -> str:
    """The fx node feeding the classifier (a named module, else the last Linear), past Dropout."""
    tracer = NodePathTracer(**tracer_kwargs)
    graph = tracer.trace(model.eval())

    def module(node: torch.fx.Node) -> nn.Module | None:
        return model.get_submodule(node.target) if node.op == "call_module" else None

    if classifier is not None:
        names = tracer.node_to_qualname
        inside = {
            n for n in graph.nodes
            if names.get(n) == classifier or names.get(n, "").startswith(classifier + ".")
        }
        feeds = [a for n in inside for a in n.all_input_nodes
                 if a not in inside and a.op != "get_attr"]
    else:
        feeds = [n.args[0] for n in graph.nodes if isinstance(module(n), nn.Linear)][-1:]
    if not feeds:
        what = f"classifier {classifier!r}" if classifier else "Linear classifier"
        raise UnknownNameError(f"{type(model).__name__} has no {what} to tap as 'pool'")
    node = feeds[-1]
    while isinstance(module(node), nn.Dropout) or node.target is torch.nn.functional.dropout:
        node = node.args[0]
    return tracer.node_to_qualname[node]
