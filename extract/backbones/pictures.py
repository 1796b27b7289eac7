"""What the frozen network sees: first-layer filters and activation maps of one image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from featcache.errors import UsageError
from featcache.extract.backbones.registry import (
    BackboneSpec,
    load_backbone,
    make_feature_extractor,
    resolve_layers,
)
from featcache.extract.data.preprocess import normalize

MAPS_PER_LAYER = 8


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first 2-D convolution, in module order (the stem)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise UsageError(f"{type(model).__name__} has no Conv2d layer to show")


def filter_grid(conv: nn.Conv2d) -> np.ndarray:
    """The conv's RGB kernels, each min-max scaled to [0, 1]: ``[out_channels, k, k, 3]``."""
    if conv.in_channels != 3:
        raise UsageError(f"first conv takes {conv.in_channels} channels, not RGB")
    w = conv.weight.detach().float().permute(0, 2, 3, 1)
    low = w.amin(dim=(1, 2, 3), keepdim=True)
    high = w.amax(dim=(1, 2, 3), keepdim=True)
    return ((w - low) / (high - low).clamp_min(1e-12)).numpy()


def activation_maps(
    model: nn.Module, spec: BackboneSpec, image: Path, layers: Sequence[str]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The image as the network sees it, and each layer's ``[C, H, W]`` activations."""
    extractor = make_feature_extractor(model, spec, resolve_layers(spec, layers))
    try:
        view = spec.preprocess().views(1)(image)
    except OSError as exc:
        raise UsageError(f"cannot read image {image}: {exc}") from None
    with torch.inference_mode():
        out = extractor(normalize(view, spec.mean, spec.std))
    maps = {name: tensor[0].float().numpy() for name, tensor in out.items()}
    bad = {name: m.shape for name, m in maps.items() if m.ndim != 3}
    if bad:
        raise UsageError(f"layers without a spatial map: {bad}; choose convolutional taps")
    return view[0].permute(1, 2, 0).numpy(), maps


def plot_filters(kernels: np.ndarray, path: Path, title: str) -> Path:
    cols = int(np.ceil(np.sqrt(len(kernels))))
    rows = int(np.ceil(len(kernels) / cols))
    fig = Figure(figsize=(cols * 0.6, rows * 0.6 + 0.4))
    axes = fig.subplots(rows, cols)
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, kernel in zip(np.ravel(axes), kernels, strict=False):
        ax.imshow(kernel, interpolation="nearest")
    fig.suptitle(title, fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_activations(
    image: np.ndarray, maps: dict[str, np.ndarray], path: Path, title: str
) -> Path:
    """The input, then per layer the channels with the highest mean activation."""
    fig = Figure(figsize=(1.4 * (MAPS_PER_LAYER + 1), 1.55 * len(maps)))
    axes = fig.subplots(len(maps), MAPS_PER_LAYER + 1, squeeze=False)
    for row, (name, m) in zip(axes, maps.items(), strict=True):
        for ax in row:
            ax.axis("off")
        row[0].imshow(image)
        row[0].set_title("input", fontsize=7)
        strongest = np.argsort(-m.mean(axis=(1, 2)))[:MAPS_PER_LAYER]
        for ax, c in zip(row[1:], strongest, strict=False):
            ax.imshow(m[c], cmap="viridis")
            ax.set_title(f"{name} ch {c} ({m.shape[1]}x{m.shape[2]})", fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def show(
    backbone: str, image: Path, layers: Sequence[str], out_dir: Path, *, pretrained: bool = True
) -> list[Path]:
    """Write ``<backbone>-filters.png`` and ``<backbone>-activations.png`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model, spec = load_backbone(backbone, pretrained=pretrained)
    conv = first_conv(model)
    kernels = filter_grid(conv)
    picture, maps = activation_maps(model, spec, image, layers)
    size = "x".join(map(str, conv.kernel_size))
    return [
        plot_filters(kernels, out_dir / f"{spec.name}-filters.png",
                     f"{spec.name}: the {len(kernels)} first-layer filters ({size}, RGB)"),
        plot_activations(picture, maps, out_dir / f"{spec.name}-activations.png",
                         f"{spec.name} activations of {image.name}"),
    ]
