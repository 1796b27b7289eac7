"""timm models by name (``timm/<arch>[.<tag>]``): preprocessing, taps and weights as timm says.

* Preprocessing: ``timm.data.resolve_data_config`` of the model's ``pretrained_cfg``.
* Taps: ``stage0``.. from the model's ``feature_info`` (timm's feature API: the modules,
  channels and reductions ``features_only`` would return, indexed like ``out_indices``),
  ``pool`` = the pre-logits features (the classifier's input), ``logits``.
* Weights: ``timm.create_model(name, pretrained=True)``, i.e. the Hugging Face cache on
  first use (or torch.hub for the few configs with only a URL).
"""

from __future__ import annotations

import difflib
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType

import timm
import torch
from timm.data import resolve_data_config
from timm.layers import get_notrace_functions, get_notrace_modules
from timm.models import PretrainedCfg, get_pretrained_cfg
from torch import nn

from featcache.errors import UsageError
from featcache.extract.backbones.spec import (
    BackboneSpec,
    LayerTap,
    UnknownNameError,
    WeightsUnavailableError,
    penultimate_node,
)

PREFIX = "timm/"
HF_FILES = ("model.safetensors", "pytorch_model.bin")
_RESIZE_MODES = {"center": "shorter_side", "squash": "squash"}


def timm_tracer_kwargs() -> dict:
    """timm's untraceable modules and functions, kept as fx leaves (as its FeatureGraphNet does)."""
    return {"leaf_modules": get_notrace_modules(), "autowrap_functions": get_notrace_functions()}


def pretrained_cfg(name: str) -> PretrainedCfg:
    """timm's pretrained config of ``arch[.tag]``; an unknown name lists close valid ones."""
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        close = difflib.get_close_matches(name, timm.list_pretrained(), n=5, cutoff=0.5)
        hint = f"close: {', '.join(close)}; " if close else ""
        raise UnknownNameError(
            f"unknown timm model {name!r} (or one without pretrained weights); {hint}valid: "
            "any name in timm.list_pretrained(), e.g. timm/convnext_tiny.fb_in22k_ft_in1k"
        )
    return cfg


def full_name(cfg: PretrainedCfg) -> str:
    return f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture


def preprocessing_fields(cfg: PretrainedCfg) -> dict:
    """BackboneSpec's preprocessing fields from ``resolve_data_config`` of the config."""
    data = resolve_data_config(pretrained_cfg=cfg.to_dict())
    _, h, w = data["input_size"]
    mode = data.get("crop_mode") or "center"
    if h != w or mode not in _RESIZE_MODES:
        raise UsageError(
            f"timm model {full_name(cfg)} wants input {h}x{w} with crop mode {mode!r}; "
            f"supported: square inputs, crop modes {', '.join(_RESIZE_MODES)}"
        )
    return {
        "input_size": h,
        "crop_pct": Fraction(str(data["crop_pct"])),
        "interpolation": data["interpolation"],
        "mean": tuple(data["mean"]),
        "std": tuple(data["std"]),
        "resize_mode": _RESIZE_MODES[mode],
        "preprocess_source": f"timm resolve_data_config({full_name(cfg)})",
    }


def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_weights(cfg: PretrainedCfg) -> Path | None:
    """The local weights file timm would load, or None when it is not on disk yet."""
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        for filename in (cfg.hf_hub_filename, *HF_FILES):
            found = filename and try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
        return None
    path = Path(torch.hub.get_dir()) / "checkpoints" / cfg.url.rsplit("/", 1)[-1]
    return path if path.is_file() else None


def _where(cfg: PretrainedCfg) -> str:
    """Where the weights come from and where they go, for the offline error."""
    if cfg.hf_hub_id:
        repo = cfg.hf_hub_id.partition("@")[0]
        filename = cfg.hf_hub_filename or HF_FILES[0]
        folder = hf_cache_dir() / f"models--{repo.replace('/', '--')}"
        return (
            f"on a connected machine run `hf download {repo} {filename}` (Hugging Face repo "
            f"{repo}, file {filename}) and copy {folder.name} into {folder.parent} "
            "(HF_HUB_CACHE or HF_HOME sets the folder)"
        )
    path = Path(torch.hub.get_dir()) / "checkpoints" / cfg.url.rsplit("/", 1)[-1]
    return f"on a connected machine download {cfg.url} and place it as {path} (TORCH_HOME)"


def build_timm(cfg: PretrainedCfg, pretrained: bool) -> nn.Module:
    name = full_name(cfg)
    if not pretrained:
        return timm.create_model(name, pretrained=False)
    present = cached_weights(cfg)
    try:
        return timm.create_model(name, pretrained=True)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {str(exc).split('. ')[0]}"
        if present is not None:
            raise WeightsUnavailableError(
                f"cannot load timm weights {present} ({reason}); delete it to download again"
            ) from None
        raise WeightsUnavailableError(
            f"cannot get timm weights for {name} ({reason}); {_where(cfg)}"
        ) from None


def timm_layers(model: nn.Module, classifier: str | None) -> dict[str, LayerTap]:
    """``stage<i>`` per ``feature_info`` entry, ``pool`` (pre-logits) and ``logits``."""
    layers = {
        f"stage{i}": LayerTap(info["module"], info["num_chs"], info["reduction"])
        for i, info in enumerate(model.feature_info)
    }
    width = getattr(model, "head_hidden_size", None) or model.num_features
    head = classifier if isinstance(classifier, str) else None
    layers["pool"] = LayerTap(penultimate_node(model, timm_tracer_kwargs(), head), width)
    if head is not None:
        layers["logits"] = LayerTap(head, getattr(model, "num_classes", None) or None)
    return layers


def timm_spec(name: str) -> BackboneSpec:
    """The spec of ``timm/<arch>[.<tag>]`` (the default tag when none is given)."""
    cfg = pretrained_cfg(name.removeprefix(PREFIX))
    with torch.device("meta"):
        model = timm.create_model(full_name(cfg), pretrained=False)
    return BackboneSpec(
        name=PREFIX + full_name(cfg),
        weights=f"{cfg.hf_hub_id} (Hugging Face)" if cfg.hf_hub_id else cfg.url,
        layers=MappingProxyType(timm_layers(model, cfg.classifier)),
        build=lambda pretrained: build_timm(cfg, pretrained),
        weights_file=lambda: cached_weights(cfg),
        tracer_kwargs=timm_tracer_kwargs,
        **preprocessing_fields(cfg),
    )
